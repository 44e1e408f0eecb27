"""Your data in: readers for every accepted layout, the data doctor, splits, sample datasets.

``load_records`` is the stable entry point for training and evaluation code: it returns
canonical records with image paths resolved (absolute) and confined to the image root, and
raises :class:`~qvl_helpers.errors.DatasetError` naming the file, line, sample and fix for the
first bad record (``qvl data check`` lists them all).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DatasetError
from ..images import (
    ImageInfo,
    ImageProblem,
    check_image,
    missing_message,
    path_exists,
    require_image_root,
    resolve_confined,
)
from .doctor import CODES, CheckReport, Problem, check_file
from .layouts import FORMATS
from .prepare import PreparedData, course_data, course_records, prepare_data
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

    Each image gets the data doctor's image check from its header (:func:`check_image` without
    the full decode, which the collator does and reports): missing, not an image, a video, too
    large, too small or of an extreme aspect ratio are refused here, before any model loads.
    ``image_root`` defaults to :func:`default_image_root`.

    Raises:
        DatasetError: the image root does not exist, or the first record that is malformed or
            whose image is refused; the message names the file, line, sample and folder.
    """
    path = Path(path)
    if image_root is not None:
        root, why = Path(image_root), "the image root given"
    else:
        root, why = default_image_root(path)
    if path.exists():
        require_image_root(root, why)
    checked: dict[Path, ImageInfo | ImageProblem] = {}
    records = []
    for raw in read_records(path, fmt):
        if raw.record is None:
            raise record_error(raw, path)
        record = raw.record
        for part in image_parts(record):
            try:
                resolved = resolve_confined(part["image"], root)
                if not path_exists(resolved):
                    raise ImageProblem("missing_image",
                                       missing_message(part["image"], root, why))
                if resolved not in checked:
                    try:
                        checked[resolved] = check_image(resolved, decode=False)
                    except ImageProblem as problem:
                        checked[resolved] = problem
                if isinstance(checked[resolved], ImageProblem):
                    raise checked[resolved]
            except ImageProblem as exc:
                raise DatasetError(f"{exc.code}: {exc.message}.", file=path, line=raw.line,
                                   sample_id=record["id"],
                                   fix="run `qvl data check` on the file to see every problem at "
                                       "once.") from None
            part["image"] = str(resolved)
        records.append(record)
    return records


__all__ = ["CODES", "FORMATS", "SPLIT_INFO", "CheckReport", "DataFileError", "PreparedData",
           "Problem", "answers_of", "check_file", "course_data", "course_records",
           "default_image_root", "detect_file_format",
           "image_parts", "images_of", "load_records", "prepare_data", "read_records",
           "read_split_info", "scored_turn", "split_file", "system_text", "turns_of",
           "Turn", "write_jsonl"]
