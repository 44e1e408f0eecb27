"""The accepted layouts: which one a record is in, and how it becomes a canonical record.

========== ==================================================================================
seed       the seed guide: ``image`` + ``conversations`` with ``from: user/assistant`` and
           ``<img></img>`` (or ``<img>path</img>``) in the text
official   Qwen's fine-tuning layout and LLaVA: ``image`` (string or list) + ``conversations``
           with ``from: human/gpt`` and ``<image>`` placeholders
sharegpt   ShareGPT / LLaMA-Factory: ``messages`` (or ``conversations``) with ``role``/``content``
           strings holding ``<image>``, plus an ``images`` list
messages   the canonical layout (content as parts, or a plain string)
csv        columns ``image``, ``prompt``, ``response`` and optionally ``id``
========== ==================================================================================
"""

from __future__ import annotations

from typing import Any

from .records import VIDEO_MESSAGE, Finding, image_part, split_placeholders, text_part

FORMATS = ("seed", "official", "sharegpt", "messages", "csv")
#: Role names of the other layouts, mapped to the canonical ones.
ROLE_MAP = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
            "system": "system", "bot": "assistant", "model": "assistant"}


def detect_format(obj: Any) -> str | None:
    """The layout of one record (None when no layout fits)."""
    if not isinstance(obj, dict):
        return None
    if obj.get("__csv__"):
        return "csv"
    turns = obj.get("messages", obj.get("conversations"))
    if not isinstance(turns, list) or not turns or not isinstance(turns[0], dict):
        return None
    first = turns[0]
    if "from" in first:
        froms = {str(t.get("from")) for t in turns if isinstance(t, dict)}  # any JSON value
        values = " ".join(str(t.get("value", "")) for t in turns if isinstance(t, dict))
        if "<img" in values or froms <= {"user", "assistant", "system"}:
            return "seed"
        return "official"
    if "role" in first:
        contents = [t.get("content") for t in turns if isinstance(t, dict)]
        has_strings_with_images = any(isinstance(c, str) and "<image>" in c for c in contents)
        if "images" in obj or has_strings_with_images:
            return "sharegpt"
        return "messages"
    return None


# ---------------------------------------------------------------------------- conversion


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _from_turns(turns: list[tuple[str, str]], images: list[Any]) -> tuple[list[dict] | None,
                                                                           list[Finding]]:
    """Build canonical messages from (role, text-with-placeholders) turns and an image list.

    Placeholders are matched to ``images`` in order; ``<img>path</img>`` carries its own path.
    Without any placeholder the images go before the first user text (the LLaVA/Qwen
    convention). Any other mismatch is reported, never guessed.
    """
    if any(not isinstance(i, str) or not i.strip() for i in images):
        return None, [("missing_field", "every entry of the image list must be a non-empty path")]
    split = [(role, list(split_placeholders(text))) for role, text in turns]
    slots = [(role, inline) for role, pieces in split for kind, inline in pieces if kind == "image"]
    if any(role != "user" for role, _ in slots):
        return None, [("placeholder_mismatch", "an image placeholder is in a non-user turn; "
                                               "images belong in user turns")]
    empty = sum(1 for _, inline in slots if inline is None)
    queue = list(images)
    if slots and empty != len(images):
        return None, [("placeholder_mismatch", f"{len(slots)} image placeholder(s) "
                       f"({empty} without a path) but {len(images)} image(s) listed; make them "
                       "match one to one")]
    messages = []
    for role, pieces in split:
        content = []
        for kind, value in pieces:
            if kind == "text":
                content.append(text_part(value))
            else:
                content.append(image_part(value if value is not None else queue.pop(0)))
        messages.append({"role": role, "content": content})
    if not slots and images:
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if first_user is None:
            return None, [("bad_roles", "images are listed but there is no user turn")]
        first_user["content"][:0] = [image_part(p) for p in images]
    return messages, []


def _turns_from(obj: dict, key: str, role_key: str, text_key: str) -> tuple[list, list[Finding]]:
    turns = obj.get(key)
    if not isinstance(turns, list) or not turns:
        return [], [("missing_field", f"'{key}' must be a non-empty list of turns")]
    out = []
    for i, turn in enumerate(turns, 1):
        if not isinstance(turn, dict) or not isinstance(turn.get(text_key), str):
            return [], [("missing_field", f"turn {i} needs a string '{text_key}'")]
        raw_role = turn.get(role_key)
        role = ROLE_MAP.get(str(raw_role).strip().lower()) if raw_role is not None else None
        if role is None:
            return [], [("bad_roles", f"turn {i} has {role_key} {raw_role!r}; use user/human, "
                                      "assistant/gpt or system")]
        out.append((role, turn[text_key]))
    return out, []


VIDEO_KEYS = ("video", "videos")


def _holds_video(value: Any) -> bool:
    """A ``<video>`` placeholder in a turn's text, or a ``{"type": "video…"}`` content part."""
    if isinstance(value, str):
        return "<video>" in value
    if isinstance(value, list):
        return any(_holds_video(v) for v in value)
    if isinstance(value, dict):
        kind = value.get("type")
        if isinstance(kind, str) and kind.startswith("video"):
            return True
        return any(_holds_video(value.get(k)) for k in ("value", "content", "text"))
    return False


def video_finding(obj: dict[str, Any]) -> Finding | None:
    """The one finding for a record with video, in any layout (the course trains on images)."""
    listed = any(obj.get(key) not in (None, "", []) for key in VIDEO_KEYS)
    turns = obj.get("messages", obj.get("conversations"))
    if listed or _holds_video(turns):
        return ("missing_field", VIDEO_MESSAGE)
    return None


def to_canonical(obj: Any, fmt: str) -> tuple[list[dict] | None, list[Finding]]:
    """Canonical messages of one input record in layout ``fmt`` (None plus findings if it
    cannot be converted)."""
    if not isinstance(obj, dict):
        return None, [("missing_field", "a record must be a JSON object")]
    video = video_finding(obj)
    if video is not None:
        return None, [video]
    if fmt in ("seed", "official"):
        turns, found = _turns_from(obj, "conversations", "from", "value")
        images = _as_list(obj.get("image", obj.get("images")))
    elif fmt == "sharegpt":
        key = "messages" if "messages" in obj else "conversations"
        turns, found = _turns_from(obj, key, "role", "content")
        images = _as_list(obj.get("images"))
    elif fmt == "csv":
        turns = [("user", obj.get("prompt", "")), ("assistant", obj.get("response", ""))]
        images = [p.strip() for p in obj.get("image", "").split(";") if p.strip()]
        found = []
    elif fmt == "messages":
        messages = obj.get("messages")
        if not isinstance(messages, list):
            return None, [("missing_field", "the record has no 'messages' list")]
        return messages, []
    else:
        raise ValueError(f"unknown format {fmt!r}")
    if found:
        return None, found
    return _from_turns(turns, images)


def unknown_layout(obj: Any) -> str:
    keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    return (f"layout not recognised (keys: {keys}); expected 'messages', or 'conversations' with "
            "from/value or role/content turns (see notebook 01 for the accepted layouts)")
