"""Your data in: readers for every accepted layout, the data doctor, splits, sample datasets.

``load_records`` is the stable entry point for training and evaluation code: it returns
canonical records with image paths resolved (absolute) and confined to the image root, and
raises :class:`~qvl_helpers.errors.DatasetError` naming the file, line, sample and fix for the
first bad record (``qvl data check`` lists them all).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DatasetError
from ..images import ImageProblem, resolve_confined
from .doctor import CODES, CheckReport, Problem, check_file
from .layouts import FORMATS
from .prepare import PreparedData, prepare_data
from .readers import DataFileError, detect_file_format, read_records, record_error
from .records import (
    Record,
    Turn,
    answers_of,
    image_parts,
    images_of,
    scored_turn,
    system_text,
    turns_of,
)
from .split import SPLIT_INFO, default_image_root, read_split_info, split_file
from .writers import write_jsonl


def load_records(path: str | Path, image_root: str | Path | None = None,
                 fmt: str = "auto") -> list[Record]:
    """Read a data file into canonical records whose image paths are absolute and confined.

    Images are not opened (``qvl data check`` does that); a missing image file is refused.
    ``image_root`` defaults to :func:`default_image_root`.

    Raises:
        DatasetError: the first record that is malformed or refers to a missing image or to a
            path outside the image root; the message names the folder that was searched.
    """
    path = Path(path)
    if image_root is not None:
        root, why = Path(image_root), "the image root given"
    else:
        root, why = default_image_root(path)
    records = []
    for raw in read_records(path, fmt):
        if raw.record is None:
            raise record_error(raw, path)
        record = raw.record
        for part in image_parts(record):
            try:
                resolved = resolve_confined(part["image"], root)
            except ImageProblem as exc:
                raise DatasetError(exc.message, file=path, line=raw.line,
                                   sample_id=record["id"],
                                   fix="keep images under the image root.") from None
            if not resolved.is_file():
                raise DatasetError(f"image {part['image']} not found in {root} ({why}).",
                                   file=path, line=raw.line, sample_id=record["id"],
                                   fix="fix the path, or pass the folder the image paths are "
                                       "relative to as the image root (--image-root).")
            part["image"] = str(resolved)
        records.append(record)
    return records


__all__ = ["CODES", "FORMATS", "SPLIT_INFO", "CheckReport", "DataFileError", "PreparedData",
           "Problem", "answers_of", "check_file", "default_image_root", "detect_file_format",
           "image_parts", "images_of", "load_records", "prepare_data", "read_records",
           "read_split_info", "scored_turn", "split_file", "system_text", "turns_of",
           "Turn", "write_jsonl"]
