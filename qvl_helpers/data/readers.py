"""Readers for every accepted input layout, format detection, and writers.

Accepted (``qvl data convert --format auto`` detects them from the first record):

========== ==================================================================================
seed       the seed guide: ``image`` + ``conversations`` with ``from: user/assistant`` and
           ``<img></img>`` (or ``<img>path</img>``) in the text
official   Qwen's fine-tuning layout and LLaVA: ``image`` (string or list) + ``conversations``
           with ``from: human/gpt`` and ``<image>`` placeholders
sharegpt   ShareGPT / LLaMA-Factory: ``messages`` (or ``conversations``) with ``role``/``content``
           strings holding ``<image>``, plus an ``images`` list
messages   the canonical layout (content as parts, or a plain string)
csv        columns ``image``, ``prompt``, ``response`` and optionally ``id``; several images in
           one cell are separated by ``;``
========== ==================================================================================

JSON arrays and JSONL are both read, UTF-8 with or without BOM, blank lines ignored. Reading is
streaming for JSONL and CSV. Nothing here raises for a bad *record*: each one comes back as a
:class:`RawRecord` with its problems, so the data doctor can report them all. Only a file that
cannot be opened at all raises :class:`~qvl_helpers.errors.DatasetError`.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from .records import Finding, image_part, normalise, record_findings, split_placeholders, text_part

FORMATS = ("seed", "official", "sharegpt", "messages", "csv")
BOM = b"\xef\xbb\xbf"
#: Role names of the other layouts, mapped to the canonical ones.
ROLE_MAP = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
            "system": "system", "bot": "assistant", "model": "assistant"}


class DataFileError(DatasetError):
    """The file itself cannot be read (missing, a folder, unknown layout): exit status 2."""

    exit_code = 2


@dataclass
class RawRecord:
    """One record as read: its line, the canonical record (None if it could not be built), and
    what was wrong."""

    line: int
    record: dict[str, Any] | None
    findings: list[Finding] = field(default_factory=list)
    source_id: str | None = None  # the id the input gave, if any
    draft: dict[str, Any] | None = None  # converted but invalid: kept to show what is wrong


@dataclass
class _Parsed:
    line: int
    obj: Any = None
    finding: Finding | None = None


# ---------------------------------------------------------------------------- raw JSON / CSV


def _decode_error(exc: UnicodeDecodeError, data: bytes) -> Finding:
    return ("invalid_encoding", f"byte {exc.start} ({data[exc.start:exc.start + 1]!r}) is not "
                                "UTF-8; save the file as UTF-8")


def _iter_jsonl(fh: io.BufferedReader) -> Iterator[_Parsed]:
    for number, raw in enumerate(fh, 1):
        if number == 1 and raw.startswith(BOM):
            raw = raw[len(BOM):]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield _Parsed(number, finding=_decode_error(exc, raw))
            continue
        if not text.strip():
            continue
        try:
            yield _Parsed(number, json.loads(text))
        except (json.JSONDecodeError, RecursionError) as exc:
            where = f" at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            why = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            hint = ("each record must be one JSON object on one line (JSONL), or the whole file "
                    "one JSON array")
            yield _Parsed(number, finding=("invalid_json", f"{why}{where}; {hint}"))


def _iter_json_array(data: bytes) -> Iterator[_Parsed]:
    """Elements of a JSON array with the line each starts on."""
    if data.startswith(BOM):
        data = data[len(BOM):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield _Parsed(data.count(b"\n", 0, exc.start) + 1, finding=_decode_error(exc, data))
        return
    decoder = json.JSONDecoder()
    pos, line, counted = text.index("[") + 1, 1, 0

    def line_at(index: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, index)
        counted = index
        return line

    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1  # commas are checked loosely: the element parser finds real damage
        if pos >= len(text):
            yield _Parsed(line_at(pos), finding=("invalid_json", "the JSON array is not closed "
                                                 "with ]; the file may be cut off"))
            return
        if text[pos] == "]":
            if text[pos + 1:].strip():
                yield _Parsed(line_at(pos), finding=("invalid_json", "text after the closing ]"))
            return
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            yield _Parsed(line_at(exc.pos), finding=("invalid_json", f"{exc.msg}; fix the JSON "
                                                     "here (records after it are not read)"))
            return
        except RecursionError:
            yield _Parsed(line_at(pos), finding=("invalid_json", "nested too deeply"))
            return
        yield _Parsed(line_at(pos), obj)
        pos = end


def _iter_csv(path: Path) -> Iterator[_Parsed]:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        try:
            columns = {c.strip().lower() for c in reader.fieldnames or [] if c}
        except UnicodeDecodeError as exc:
            yield _Parsed(1, finding=("invalid_encoding", f"{exc.reason}; save the file as UTF-8"))
            return
        missing = {"image", "prompt", "response"} - columns
        if missing:
            yield _Parsed(1, finding=("missing_field", f"CSV columns {', '.join(sorted(missing))} "
                                      "are missing; the header must name image, prompt, response "
                                      "(and optionally id)"))
            return
        start = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError as exc:
                yield _Parsed(start, finding=("invalid_encoding", f"{exc.reason}; save the file "
                                              "as UTF-8"))
                return
            except csv.Error as exc:
                yield _Parsed(start, finding=("invalid_json", f"CSV error: {exc}"))
                return
            row = {(k or "").strip().lower(): v for k, v in row.items()}
            if any(v is None for v in row.values()) or None in row:
                yield _Parsed(start, finding=("missing_field", "this row has a different number "
                                              "of cells than the header"))
            elif any(v.strip() for v in row.values()):
                yield _Parsed(start, {"__csv__": True, **row})
            start = reader.line_num + 1


def open_raw(path: Path) -> tuple[str, Iterator[_Parsed]]:
    """Detect the container (csv, json array, jsonl) and return its element iterator."""
    if not path.exists():
        raise DataFileError("file not found.", file=path, fix="check the path.")
    if path.is_dir():
        raise DataFileError("this is a folder, not a data file.", file=path,
                            fix="pass the annotation file inside it (.jsonl, .json or .csv).")
    if path.suffix.lower() == ".csv":
        return "csv", _iter_csv(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError as exc:
        raise DataFileError(f"cannot read the file ({exc}).", file=path,
                            fix="check its permissions.") from None
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataFileError("the file is UTF-16 encoded.", file=path,
                            fix="save it as UTF-8 (in most editors: Save As, encoding UTF-8).")
    first = head[len(BOM):] if head.startswith(BOM) else head
    if first.lstrip()[:1] == b"[":
        return "json", _iter_json_array(path.read_bytes())

    def lines() -> Iterator[_Parsed]:
        with open(path, "rb") as fh:
            yield from _iter_jsonl(fh)

    return "jsonl", lines()


# ---------------------------------------------------------------------------- layout detection


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
        froms = {t.get("from") for t in turns if isinstance(t, dict)}
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


def to_canonical(obj: Any, fmt: str) -> tuple[list[dict] | None, list[Finding]]:
    """Canonical messages of one input record in layout ``fmt`` (None plus findings if it
    cannot be converted)."""
    if not isinstance(obj, dict):
        return None, [("missing_field", "a record must be a JSON object")]
    if fmt in ("seed", "official"):
        if "video" in obj:
            return None, [("missing_field", "video samples are not supported by this course")]
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


def read_records(path: str | Path, fmt: str = "auto") -> Iterator[RawRecord]:
    """Read any accepted layout as canonical records, one :class:`RawRecord` per record.

    Records without an ``id`` get ``<file stem>-<index>`` (1-based, 5 digits): the same input
    always gives the same ids. Problems come back as findings; nothing is dropped silently.

    Raises:
        DataFileError: the file is missing, unreadable, or its layout is not recognised.
    """
    path = Path(path)
    if fmt != "auto" and fmt not in FORMATS:
        raise DataFileError(f"unknown format {fmt!r}.", fix=f"use auto or one of {FORMATS}.")
    _, items = open_raw(path)
    index = 0
    for item in items:
        if item.finding is not None:
            yield RawRecord(item.line, None, [item.finding])
            continue
        index += 1
        if fmt == "auto":
            fmt_here = detect_format(item.obj)
            if fmt_here is None:
                yield RawRecord(item.line, None, [("missing_field", _unknown_layout(item.obj))])
                continue
            fmt = fmt_here  # the first recognised record decides for the file
        source_id = item.obj.get("id") if isinstance(item.obj, dict) else None
        if source_id is not None and not isinstance(source_id, (str, int)):
            yield RawRecord(item.line, None, [("missing_field", "'id' must be a string")])
            continue
        rid = str(source_id) if source_id is not None and str(source_id).strip() else \
            f"{path.stem}-{index:05d}"
        messages, found = to_canonical(item.obj, fmt)
        if messages is None:
            yield RawRecord(item.line, None, found, rid)
            continue
        record = {"id": rid, "messages": messages}
        found = record_findings(record)
        if found:
            yield RawRecord(item.line, None, found, rid, draft=record)
        else:
            yield RawRecord(item.line, normalise(record), found, rid)


def record_error(raw: RawRecord, path: str | Path) -> DatasetError:
    """The first problem of a record that could not be read, as an error for callers that need
    every record (``load_records``, splitting)."""
    code, message = raw.findings[0]
    return DatasetError(f"{code}: {message}", file=path, line=raw.line, sample_id=raw.source_id,
                        fix="run `qvl data check` on the file to see every problem at once.")


def _unknown_layout(obj: Any) -> str:
    keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    return (f"layout not recognised (keys: {keys}); expected 'messages', or 'conversations' with "
            "from/value or role/content turns (see notebook 01 for the accepted layouts)")


def detect_file_format(path: str | Path) -> str:
    """The layout of a file, from its first readable record."""
    kind, items = open_raw(Path(path))
    for item in items:
        if item.obj is not None:
            fmt = detect_format(item.obj)
            if fmt:
                return fmt
            break
    raise DataFileError("the layout of this file is not recognised.", file=path,
                        fix="see notebook 01 for the accepted layouts, or pass --format.")


# ---------------------------------------------------------------------------- writing


def paths_follow(src_root: Path, dest_dir: Path) -> bool:
    """The relocation rule: image paths can be written relative to a file in ``dest_dir`` when
    their root ``src_root`` is ``dest_dir`` or lies inside it; otherwise they stay relative to
    ``src_root`` (which later steps then need as their image root)."""
    src_root, dest_dir = src_root.resolve(), dest_dir.resolve()
    return src_root == dest_dir or dest_dir in src_root.parents


def relocate_image_paths(record: dict[str, Any], src_root: Path, dest_dir: Path) -> dict:
    """Rewrite image paths so that they stay valid when the record moves from ``src_root`` to a
    file in ``dest_dir``: relative to ``dest_dir`` when ``src_root`` lies inside it, otherwise
    unchanged (pass ``--image-root src_root`` to later steps)."""
    if not paths_follow(src_root, dest_dir) or src_root.resolve() == dest_dir.resolve():
        return record
    src_root, dest_dir = src_root.resolve(), dest_dir.resolve()
    prefix = Path(os.path.relpath(src_root, dest_dir))
    messages = []
    for m in record["messages"]:
        parts = []
        for p in m["content"]:
            if p["type"] == "image" and not Path(p["image"]).is_absolute():
                p = {"type": "image", "image": (prefix / p["image"]).as_posix()}
            parts.append(p)
        messages.append({"role": m["role"], "content": parts})
    return {"id": record["id"], "messages": messages}


def to_official(record: dict[str, Any]) -> dict[str, Any]:
    """A canonical record in Qwen's official fine-tuning layout (``<image>`` + human/gpt)."""
    names = {"user": "human", "assistant": "gpt", "system": "system"}
    images, turns = [], []
    for m in record["messages"]:
        chunks = []
        for p in m["content"]:
            if p["type"] == "image":
                images.append(p["image"])
                chunks.append("<image>\n")
            else:
                chunks.append(p["text"])
        turns.append({"from": names[m["role"]], "value": "".join(chunks)})
    out: dict[str, Any] = {"id": record["id"]}
    if images:
        out["image"] = images[0] if len(images) == 1 else images
    out["conversations"] = turns
    return out


def write_jsonl(records: Any, path: Path) -> int:
    """Write records as UTF-8 JSONL (non-ASCII kept readable) through a temporary file, so an
    interrupted write never leaves half a file; returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    count = 0
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            for record in records:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return count


@dataclass
class ConvertResult:
    written: int
    failed: list[RawRecord]
    out: Path | None  # None when nothing was written


def convert_file(src: str | Path, out: str | Path, *, fmt: str = "auto",
                 image_root: str | Path | None = None, to: str = "canonical",
                 keep_going: bool = False, overwrite: bool = False) -> ConvertResult:
    """Convert a data file to canonical JSONL (or, with ``to="official"``, to Qwen's official
    layout as a JSON array).

    Every turn is kept. Records that cannot be converted are returned in ``failed``; unless
    ``keep_going``, nothing is written when there are any. Image paths are rewritten so that
    they stay valid from the output's folder when possible (see :func:`relocate_image_paths`).

    Raises:
        ConfigError: ``out`` is the input file (even with ``overwrite``).
        OutputExistsError: ``out`` exists and ``overwrite`` is False.
    """
    from ..outputs import claim_output, write_text

    src, out = Path(src), Path(out)
    claim_output(out, inputs=[src], force=overwrite)
    root = Path(image_root) if image_root is not None else src.parent
    good, failed = [], []
    for raw in read_records(src, fmt):
        if raw.record is None:
            failed.append(raw)
        else:
            good.append(relocate_image_paths(raw.record, root, out.parent))
    if failed and not keep_going:
        return ConvertResult(0, failed, None)
    if to == "official":
        text = json.dumps([to_official(r) for r in good], ensure_ascii=False, indent=2)
        write_text(out, text + "\n")
    else:
        write_jsonl(good, out)
    return ConvertResult(len(good), failed, out)
