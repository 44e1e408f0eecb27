"""Writing data: canonical JSONL, Qwen's official layout, conversion between them, and the rule
that keeps image paths valid when a file is written somewhere else."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .readers import RawRecord, read_records


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
    except OSError as exc:  # a full disk names the file, not "a file"
        from ..outputs import named

        raise named(exc, path) from None
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
        DataFileError: the image root does not exist.
        OutputExistsError: ``out`` exists and ``overwrite`` is False.
    """
    from ..images import require_image_root
    from ..outputs import claim_output, write_text

    src, out = Path(src), Path(out)
    root = Path(image_root) if image_root is not None else src.parent
    if src.exists():
        require_image_root(root)
    claim_output(out, inputs=[src], force=overwrite)
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
