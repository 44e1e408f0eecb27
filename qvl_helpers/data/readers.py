"""Reading data files: JSONL, JSON arrays and CSV, streamed, each record turned canonical.

Which layout a record is in, and how it becomes canonical, is :mod:`~qvl_helpers.data.layouts`;
writing (JSONL, Qwen's official layout, conversion) is :mod:`~qvl_helpers.data.writers`.

The accepted layouts are listed in :mod:`~qvl_helpers.data.layouts` (``--format auto`` detects
them from the first record). JSON arrays and JSONL are both read, UTF-8 with or without BOM,
blank lines ignored; reading is streaming for JSONL and CSV. Nothing here raises for a bad
*record*: each one comes back as a :class:`RawRecord` with its problems, so the data doctor can
report them all. Only a file that cannot be opened at all raises :class:`~qvl_helpers.errors.DatasetError`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataFileError, DatasetError  # DataFileError: re-exported here
from .layouts import FORMATS, detect_format, to_canonical, unknown_layout
from .records import Finding, normalise, record_findings

BOM = b"\xef\xbb\xbf"


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
                yield RawRecord(item.line, None, [("missing_field", unknown_layout(item.obj))])
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
