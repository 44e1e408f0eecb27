"""The data doctor: every problem of a dataset, found before training instead of at step 700.

:func:`check_file` streams the records (any accepted layout), checks each one, its images (from
their headers first, decoded once, cached by path) and the dataset as a whole (duplicate ids and
samples, leakage between train/val/test siblings, and, with a processor, samples longer than
``max_length``). It never stops at the first problem and never raises for bad data: every bad
input becomes a :class:`Problem` with a stable code, the line, the sample id and what to do.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import count
from ..images import (
    DEFAULT_PIXEL_CAP,
    PLAIN_MODES,
    ImageInfo,
    ImageProblem,
    check_image,
    file_hash,
    missing_message,
    resolve_confined,
    shorten,
)
from ..qwen import ImageLimits, sample_length
from .readers import RawRecord, read_records
from .records import images_of
from .split import image_root_for

WARNING_CODES = {"image_mode", "exif_rotated", "duplicate_sample"}
CODES = ("invalid_json", "invalid_encoding", "missing_field", "bad_roles", "empty_answer",
         "placeholder_mismatch", "reserved_token", "missing_image", "path_outside_root",
         "unreadable_image", "image_too_large", "image_too_small", "extreme_aspect_ratio",
         "image_mode", "exif_rotated", "duplicate_id", "duplicate_sample", "too_long", "leakage")
SPLIT_NAMES = ("train", "val", "test")


@dataclass
class Problem:
    severity: str  # "error" or "warning"
    code: str
    line: int | None
    id: str | None
    message: str

    def line_text(self) -> str:
        where = f"line {self.line}" if self.line is not None else "file"
        sample = f" ({self.id})" if self.id else ""
        return f"{where}{sample} [{self.severity}] {self.code}: {self.message}"


@dataclass
class CheckReport:
    """Result of :func:`check_file`, laid out as in the design's ``qvl data check`` report."""

    file: str
    records: int = 0
    problems: list[Problem] = field(default_factory=list)
    image_root: str | None = None

    @property
    def errors(self) -> int:
        return sum(p.severity == "error" for p in self.problems)

    @property
    def warnings(self) -> int:
        return sum(p.severity == "warning" for p in self.problems)

    @property
    def ok(self) -> bool:
        return self.errors == 0

    def codes(self) -> set[str]:
        return {p.code for p in self.problems}

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "file": self.file, "image_root": self.image_root,
                "records": self.records, "errors": self.errors, "warnings": self.warnings,
                "problems": [asdict(p) for p in self.problems]}

    def save_json(self, path: str | Path) -> Path:
        """Write the report (atomically; callers decide whether an existing file may go)."""
        from ..outputs import ensure_folder, write_json

        ensure_folder(Path(path).parent)
        return write_json(path, self.to_dict())

    def summary(self) -> str:
        verdict = "OK" if self.ok else "NOT READY"
        return (f"{verdict}: {count(self.records, 'record')} in {self.file}: "
                f"{count(self.errors, 'error')}, {count(self.warnings, 'warning')}")

    def text(self, limit: int = 50) -> str:
        lines = [self.summary(), *(p.line_text() for p in self.problems[:limit])]
        if len(self.problems) > limit:
            lines.append(f"... and {len(self.problems) - limit} more (write them all with --json)")
        return "\n".join(lines)


class _ImageCache:
    """Per-path results of image inspection and hashing, each in a bounded LRU cache
    (``functools.lru_cache``), so memory stays flat on large files."""

    def __init__(self, pixel_cap: int, size: int = 20_000) -> None:
        self.pixel_cap = pixel_cap
        self.info = functools.lru_cache(maxsize=size)(self._inspect)
        self.hash = functools.lru_cache(maxsize=size)(self._hash)

    def _inspect(self, path: Path) -> ImageInfo | ImageProblem:
        try:
            return check_image(path, self.pixel_cap)
        except ImageProblem as problem:
            return problem

    @staticmethod
    def _hash(path: Path) -> str | None:
        try:
            return file_hash(path)
        except OSError:
            return None


def _image_warnings(info: ImageInfo, shown: str) -> list[tuple[str, str]]:
    """What the course converts in a usable image (the errors are :func:`check_image`'s)."""
    found = []
    shown = shorten(shown)
    if info.mode not in PLAIN_MODES or info.frames > 1:
        what = f"mode {info.mode}" + (f", {info.frames} frames" if info.frames > 1 else "")
        found.append(("image_mode", f"{shown} has {what}; training and inference use it as RGB "
                      "(first frame, transparency on white). Convert it yourself if that is not "
                      "what you want"))
    if info.exif_rotated:
        found.append(("exif_rotated", f"{shown} carries EXIF orientation {info.orientation}: the "
                      "course applies the rotation at training and inference, as viewers do; "
                      "save it upright to avoid surprises with other tools"))
    return found


def _sample_key(record: dict[str, Any], resolved: list[Path]) -> bytes:
    """Identity of a sample: its text and the files of its images (not its id)."""
    payload = json.dumps([[m["role"], [p.get("text", "") for p in m["content"]]]
                          for m in record["messages"]], ensure_ascii=False)
    payload += "\0" + "\0".join(str(p) for p in resolved)
    return hashlib.blake2b(payload.encode("utf-8"), digest_size=16).digest()


def _sibling_hashes(path: Path, root: Path, cache: _ImageCache, fmt: str) -> dict[str, str]:
    """Image content hash -> name of the other split file that uses it."""
    if path.stem not in SPLIT_NAMES:
        return {}
    seen: dict[str, str] = {}
    for name in SPLIT_NAMES:
        sibling = path.with_name(name + path.suffix)
        if name == path.stem or not sibling.is_file():
            continue
        for raw in read_records(sibling, fmt):
            if raw.record is None:
                continue
            for text in images_of(raw.record):
                try:
                    digest = cache.hash(resolve_confined(text, root))
                except ImageProblem:
                    continue
                if digest:
                    seen.setdefault(digest, sibling.name)
    return seen


def _check_images(record: dict[str, Any], root: Path, cache: _ImageCache
                  ) -> tuple[list[tuple[str, str]], list[Path], list[tuple[int, int]], bool]:
    """One record's images: (findings, resolved paths, oriented sizes, whether every image can
    be measured in tokens)."""
    findings: list[tuple[str, str]] = []
    resolved: list[Path] = []
    sizes: list[tuple[int, int]] = []
    images_ok = True
    for text in images_of(record):
        try:
            path = resolve_confined(text, root)
        except ImageProblem as problem:
            findings.append((problem.code, problem.message))
            images_ok = False
            continue
        resolved.append(path)
        info = cache.info(path)
        if isinstance(info, ImageProblem):
            message = info.message
            if info.code == "missing_image":
                message = missing_message(text, root)
            findings.append((info.code, message))
            images_ok = False
            continue
        findings += _image_warnings(info, text)
        sizes.append(info.oriented_size)
    return findings, resolved, sizes, images_ok


def check_records(raws: Iterable[RawRecord], *, root: Path, report: CheckReport,
                  processor: Any = None, max_length: int | None = None,
                  pixel_cap: int = DEFAULT_PIXEL_CAP, leakage_from: dict[str, str] | None = None,
                  cache: _ImageCache | None = None) -> CheckReport:
    """Check a stream of records read by :func:`read_records`, adding to ``report``; with a
    ``processor``, lengths are counted at the image limits it carries."""
    cache = cache or _ImageCache(pixel_cap)
    limits = ImageLimits.of(processor) if processor is not None else None
    seen_ids: dict[str, int] = {}
    seen_samples: dict[bytes, int] = {}

    def add(code: str, line: int | None, rid: str | None, message: str) -> None:
        severity = "warning" if code in WARNING_CODES else "error"
        report.problems.append(Problem(severity, code, line, rid, message))

    for raw in raws:
        report.records += 1
        for code, message in raw.findings:
            add(code, raw.line, raw.source_id, message)
        rid = raw.source_id
        if rid is not None:
            if rid in seen_ids:
                add("duplicate_id", raw.line, rid, f"id {rid!r} is already used on line "
                    f"{seen_ids[rid]}; ids must be unique (rename one)")
            else:
                seen_ids[rid] = raw.line
        if raw.record is None:
            continue
        record = raw.record
        findings, resolved, sizes, images_ok = _check_images(record, root, cache)
        for code, message in findings:
            add(code, raw.line, rid, message)
        key = _sample_key(record, resolved)
        if key in seen_samples:
            add("duplicate_sample", raw.line, rid, f"same text and images as line "
                f"{seen_samples[key]}; duplicates weigh the sample twice in training")
        else:
            seen_samples[key] = raw.line
        if leakage_from:
            for path in resolved:
                other = leakage_from.get(cache.hash(path) or "")
                if other:
                    add("leakage", raw.line, rid, f"{path.name} has the same content as an image "
                        f"in {other}: the same image in two splits inflates evaluation; "
                        "re-split with `qvl data split`")
                    break
        if limits is not None and max_length is not None and images_ok:
            length = sample_length(processor, record["messages"], sizes, limits)
            if length.total > max_length:
                add("too_long", raw.line, rid, f"{length.total} tokens ({length.text_tokens} text "
                    f"+ {length.visual_tokens} visual) > max_length {max_length}; lower max_pixels "
                    "or raise max_length (a sample is never cut inside an image)")
    return report


def check_file(path: str | Path, *, image_root: str | Path | None = None, fmt: str = "auto",
               processor: Any = None, max_length: int | None = None,
               pixel_cap: int = DEFAULT_PIXEL_CAP, leakage: bool = True,
               progress: bool = False) -> CheckReport:
    """Check one data file in any accepted layout.

    Image paths are relative to ``image_root`` (default: the image root recorded with prepared
    splits, else the file's folder) and must stay inside
    it. When the file is named train/val/test and siblings exist, images shared with a sibling
    are reported as ``leakage``. With a ``processor``, samples over ``max_length`` tokens are
    reported as ``too_long`` (counted at the image limits the processor carries).

    Raises:
        DataFileError: the file cannot be read at all (missing, a folder, UTF-16), or the image
            root folder does not exist (one error, instead of one per image).
    """
    path = Path(path)
    root, _ = image_root_for(path, image_root)
    report = CheckReport(str(path), image_root=str(root))
    cache = _ImageCache(pixel_cap)
    raws: Iterable[RawRecord] = read_records(path, fmt)
    if progress:
        from tqdm.auto import tqdm

        raws = tqdm(raws, desc="checking", unit=" records", file=sys.stderr)
    leakage_from = _sibling_hashes(path, root, cache, fmt) if leakage else {}
    check_records(raws, root=root, report=report, processor=processor, max_length=max_length,
                  pixel_cap=pixel_cap, leakage_from=leakage_from, cache=cache)
    if report.records == 0:
        report.problems.append(Problem("error", "missing_field", None, None,
                                       "the file holds no records"))
    return report
