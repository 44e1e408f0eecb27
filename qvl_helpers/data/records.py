"""The canonical record and the checks that need nothing but the record itself.

A canonical record (one JSONL line) is ``{"id": str, "messages": [...]}`` where each message has
a ``role`` (system, user, assistant) and ``content``: a list of ``{"type": "text", "text": ...}``
and ``{"type": "image", "image": PATH}`` parts (a plain string is accepted as one text part).
This is the content layout of transformers' chat templates and qwen-vl-utils.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from ..images import VIDEO_MESSAGE
from ..qwen import SPECIAL_TOKENS

ROLES = ("system", "user", "assistant")
#: Qwen's special tokens (and the chat-template markers) must never appear literally in data:
#: the tokenizer would read them as control tokens and the conversation would break.
RESERVED_TOKENS = tuple(SPECIAL_TOKENS)
#: Image placeholders of other layouts: ``<image>`` (Qwen official, LLaVA, ShareGPT) and
#: ``<img></img>`` / ``<img>path</img>`` (Qwen-VL, the seed guide).
PLACEHOLDER = re.compile(r"<image>|<img>(.*?)</img>", re.DOTALL)

Finding = tuple[str, str]  # (problem code, message)


class TextPart(TypedDict):
    type: Literal["text"]
    text: str


class ImagePart(TypedDict):
    type: Literal["image"]
    image: str  # as written in the file; absolute and confined after load_records


Part = TextPart | ImagePart


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: list[Part]


class Record(TypedDict):
    """The canonical record that flows through every module (readers to evaluation)."""

    id: str
    messages: list[Message]


def text_part(text: str) -> TextPart:
    return {"type": "text", "text": text}


def image_part(path: str) -> ImagePart:
    return {"type": "image", "image": path}


def parts_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The content of a (validated) message as a list of parts."""
    content = message["content"]
    return [text_part(content)] if isinstance(content, str) else content


def image_parts(record: Record | dict[str, Any]) -> list[ImagePart]:
    """The image parts of a canonical record, in order (the dicts themselves, not copies)."""
    return [p for m in record["messages"] for p in parts_of(m) if p["type"] == "image"]


def images_of(record: Record) -> list[str]:
    """Image paths of a record, in order, as written."""
    return [p["image"] for p in image_parts(record)]


def texts_of(message: dict[str, Any]) -> str:
    return "".join(p["text"] for p in parts_of(message) if p["type"] == "text")


def answers_of(record: Record) -> list[str]:
    """The assistant answers of a record, in order."""
    return [texts_of(m) for m in record["messages"] if m["role"] == "assistant"]


@dataclass(frozen=True)
class Turn:
    """One question and its answer in a conversation, whatever the record's shape.

    ``question`` is the user message's text parts joined in order (images removed wherever they
    stood), ``images`` the image paths of that user message in order (empty for a text-only
    turn), ``answer`` the assistant's text, ``number`` the 1-based position of the turn.
    """

    number: int
    question: str
    images: tuple[str, ...]
    answer: str


def system_text(record: Record | dict[str, Any]) -> str | None:
    """The text of the record's system message, or ``None`` when it has none."""
    messages = record["messages"]
    return texts_of(messages[0]) if messages and messages[0]["role"] == "system" else None


def turns_of(record: Record | dict[str, Any]) -> list[Turn]:
    """Every (user, assistant) pair of a validated record, in order: the one way notebooks and
    reports read a record's questions, images and answers (never ``content[0]``)."""
    turns: list[Turn] = []
    pending: dict[str, Any] | None = None
    for message in record["messages"]:
        if message["role"] == "user":
            pending = message
        elif message["role"] == "assistant" and pending is not None:
            parts = parts_of(pending)
            question = " ".join(p["text"].strip() for p in parts
                                if p["type"] == "text" and p["text"].strip())
            images = tuple(p["image"] for p in parts if p["type"] == "image")
            turns.append(Turn(len(turns) + 1, question, images, texts_of(message)))
            pending = None
    return turns


def scored_turn(record: Record | dict[str, Any]) -> Turn:
    """The turn that evaluation generates and scores: the last one (earlier turns, with their
    images, are the conversation it continues)."""
    turns = turns_of(record)
    if not turns:
        raise ValueError(f"record {record.get('id')!r} has no question with an answer")
    return turns[-1]


def normalise(record: dict[str, Any]) -> dict[str, Any]:
    """Same record with every content as a list of parts (plain strings become one text part)."""
    messages = [{"role": m["role"], "content": parts_of(m)} for m in record["messages"]]
    return {"id": record["id"], "messages": messages}


def _shape_findings(messages: Any) -> list[Finding]:
    """Structure: a list of messages, each with a known role and well-formed content."""
    if not isinstance(messages, list) or not messages:
        return [("missing_field", "'messages' must be a non-empty list of messages")]
    found: list[Finding] = []
    for i, message in enumerate(messages, 1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            found.append(("missing_field", f"message {i} needs 'role' and 'content'"))
            continue
        if message["role"] not in ROLES:
            found.append(("bad_roles", f"message {i} has role {message['role']!r}; use one of "
                                       f"{', '.join(ROLES)}"))
        content = message["content"]
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            found.append(("missing_field", f"message {i}: 'content' must be a string or a list "
                                           "of parts"))
            continue
        for j, part in enumerate(content, 1):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                continue
            if kind == "image" and isinstance(part.get("image"), str) and part["image"].strip():
                continue
            if isinstance(kind, str) and kind.startswith("video"):
                found.append(("missing_field", VIDEO_MESSAGE))
                continue
            found.append(("missing_field", f"message {i}, part {j} must be "
                          "{'type': 'text', 'text': STR} or {'type': 'image', 'image': PATH}"))
    return found


def _role_findings(roles: list[str]) -> list[Finding]:
    """Order: optional system first, then user/assistant alternating, ending with assistant."""
    body = roles[1:] if roles and roles[0] == "system" else roles
    if "system" in body:
        return [("bad_roles", "a system message may only come first")]
    if not body:
        return [("bad_roles", "the conversation has no user message; add a user turn and an "
                              "assistant answer")]
    if body[0] != "user":
        return [("bad_roles", f"the conversation must start with user (or system), not "
                              f"{body[0]}")]
    for i, (a, b) in enumerate(zip(body, body[1:], strict=False), 2):
        if a == b:
            return [("bad_roles", f"two {a} messages in a row (turn {i}); merge them or add the "
                                  "missing turn")]
    if body[-1] != "assistant":
        return [("bad_roles", "the conversation must end with an assistant answer (there is "
                              "nothing to learn after the last user turn)")]
    return []


def _content_findings(messages: list[dict[str, Any]]) -> list[Finding]:
    """Answers, placeholders left in text, and reserved tokens."""
    found: list[Finding] = []
    for i, message in enumerate(messages, 1):
        parts = parts_of(message)
        text = "".join(p["text"] for p in parts if p["type"] == "text")
        if message["role"] == "assistant":
            if not text.strip():
                found.append(("empty_answer", f"answer {i} is empty; write the answer or remove "
                                              "the sample"))
            if any(p["type"] == "image" for p in parts) or PLACEHOLDER.search(text):
                found.append(("placeholder_mismatch", f"message {i} is an answer but holds an "
                              "image or image placeholder; images belong in user turns"))
        elif PLACEHOLDER.search(text):
            found.append(("placeholder_mismatch", f"message {i} holds an image placeholder "
                          "(<image> or <img>) as text; in this layout images are "
                          "{'type': 'image'} parts: remove the placeholder text"))
        tokens = sorted({t for t in RESERVED_TOKENS if t in text})
        if tokens:
            found.append(("reserved_token", f"message {i} contains {', '.join(tokens)} literally; "
                                            "remove it (the model reads it as a control token)"))
    return found


def record_findings(record: Any) -> list[Finding]:
    """Everything wrong with one record that can be seen without opening its images."""
    if not isinstance(record, dict):
        return [("missing_field", "a record must be a JSON object with 'messages'")]
    if "messages" not in record:
        return [("missing_field", "the record has no 'messages' list")]
    found = _shape_findings(record["messages"])
    if found:
        return found
    messages = record["messages"]
    found = _role_findings([m["role"] for m in messages])
    return found + _content_findings(messages)


def split_placeholders(text: str) -> Iterator[tuple[str, str | None]]:
    """Split text around image placeholders: yields ``("text", s)`` and ``("image", inline)``
    where ``inline`` is the path written inside ``<img>…</img>`` (``None`` when empty).

    The whitespace that separates a placeholder from its text is layout, not content
    (``"<image>\\nWhat is…"``), so it is dropped on the side touching the placeholder.
    """
    pos = 0
    for match in PLACEHOLDER.finditer(text):
        before = text[pos:match.start()]
        if pos > 0:
            before = before.lstrip()
        before = before.rstrip()
        if before:
            yield "text", before
        inline = match.group(1)
        yield "image", inline.strip() if inline and inline.strip() else None
        pos = match.end()
    rest = text[pos:]
    rest = rest.lstrip() if pos > 0 else rest
    if rest:
        yield "text", rest
