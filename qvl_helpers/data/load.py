"""``load_records``: a data file as canonical records, image paths resolved and confined."""

from __future__ import annotations

from pathlib import Path

from ..errors import DatasetError
from ..images import ImageInfo, ImageProblem, check_image, missing_message, path_exists, resolve_confined
from .readers import read_records, record_error
from .records import Record, image_parts
from .split import image_root_for


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
    root, why = image_root_for(path, image_root)
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
