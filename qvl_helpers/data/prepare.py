"""One call that turns the configured data into checked, leakage-free splits.

Any notebook or ``qvl`` command that needs the splits calls :func:`prepare_data`; a notebook opened
on its own therefore produces its missing input itself (and says so) instead of failing.

Splits are kept **per data source**: ``outputs/data/<stem>-<key>/``, where ``key`` is a hash of
the data file's bytes, its image root and the split settings. Training on other data (or an
edited file) makes a new folder and never replaces the splits that earlier runs and evaluations
refer to; the same data and settings always find the same folder. Each folder holds::

    train.jsonl  val.jsonl  test.jsonl   the splits (image paths relative to image_root)
    check_report.json                    the data doctor's report on the source file
    split_info.json                      source file and hash, image root, settings, counts

A folder appears only when complete (it is written under a temporary name and renamed).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..config import CourseConfig, check_path_settings
from ..errors import DatasetError, count
from ..images import file_hash
from ..outputs import ensure_folder, write_json
from ..runs import Outputs
from ..verdicts import small_test_warning
from .doctor import check_file
from .split import SPLIT_INFO, TEST_FRACTION, VAL_FRACTION, split_file

SPLITS = ("train", "val", "test")


@dataclass
class PreparedData:
    """Where the splits are, the folder their image paths are relative to, and what they hold."""

    folder: Path
    train: Path
    val: Path
    test: Path
    image_root: Path
    report: Path
    built: bool  # True when this call made them, False when they were already there
    source: Path | None = None
    source_sha256: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def files(self) -> dict[str, Path]:
        return {name: getattr(self, name) for name in SPLITS}


def source_image_root(cfg: CourseConfig) -> Path:
    """The image root of the learner's own annotation file (``data`` and ``image_root``
    checked: see :func:`~qvl_helpers.config.check_path_settings`)."""
    check_path_settings(cfg, ("data", "image_root"))
    return Path(cfg.image_root) if cfg.image_root else Path(cfg.data).parent


def course_data(cfg: CourseConfig) -> tuple[Path, Path]:
    """The learner's annotation file and its image root, as course.yaml names them, checked.

    Notebooks call this in every cell that uses the learner's data, so that a cell never works
    on a value left behind by an earlier cell (or by the bundled examples) after the learner's
    settings changed.

    Raises:
        ConfigError: ``data`` or ``image_root`` is unset, missing or the wrong kind of path.
    """
    root = source_image_root(cfg)
    return Path(cfg.data), root


def course_records(cfg: CourseConfig) -> list:
    """The learner's records (see :func:`course_data`), image paths resolved and checked as
    :func:`~qvl_helpers.data.load_records` does; refuses instead of showing other data."""
    from .load import load_records

    data, root = course_data(cfg)
    return load_records(data, image_root=root)


def dataset_key(data: Path, image_root: Path, val: float, test: float, seed: int,
                data_sha256: str | None = None) -> str:
    """``<stem>-<8 hex>``: the folder name of one data source's splits."""
    digest = data_sha256 or file_hash(data)
    settings = json.dumps([digest, str(image_root.resolve()), val, test, seed])
    stem = re.sub(r"[^\w.-]+", "_", data.stem)[:40] or "data"
    return f"{stem}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}"


def split_warnings(counts: dict[str, int], val: float, test: float) -> list[str]:
    """Plain-language warnings for splits too small to validate on or to score."""
    total = sum(counts.values())
    out = []
    if val > 0 and counts.get("val", 0) == 0:
        out.append(f"the val split is empty ({count(total, 'record')} in all): no validation "
                   "loss will be logged. Add data (a few dozen samples at least).")
    if test > 0 and counts.get("test", 0) == 0:
        out.append(f"the test split is empty ({count(total, 'record')} in all): nothing is held "
                   "out, so the fine-tune cannot be evaluated. Add data (a few dozen samples at least).")
    elif small := small_test_warning(counts.get("test", 0)):  # the evaluation's own sentence
        out.append(small)
    return out


def prepare_data(cfg: CourseConfig, *, val: float = VAL_FRACTION, test: float = TEST_FRACTION,
                 verbose: bool = True) -> PreparedData:
    """Check the configured data and split it into ``outputs/data/<stem>-<key>/``.

    The folder is reused when it exists (same bytes, same image root, same settings give the
    same splits); otherwise the data doctor runs first and data with errors is not split.

    Raises:
        ConfigError: no data file is configured, or it does not exist.
        DatasetError: the data has errors (the message points to the report), or holds no record.
    """
    say = print if verbose else (lambda *a, **k: None)
    check_path_settings(cfg, ("data", "image_root", "output_dir"))
    data, root = course_data(cfg)
    digest = file_hash(data)
    folder = Outputs.of(cfg).folder("data", dataset_key(data, root, val, test, cfg.seed, digest))
    if (folder / SPLIT_INFO).is_file():
        say(f"Using the splits of {data.name} in {folder} (made earlier from the same data).")
        return _prepared(folder, built=False)
    ensure_folder(folder.parent, what="data output folder")
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    say(f"Preparing {data}: check, then split into {folder}")
    report = check_file(data, image_root=root)
    report_path = folder / "check_report.json"
    say(report.summary())
    if not report.ok:
        failed = folder.with_name(f"{folder.name}.check_report.json")
        report.save_json(failed)
        first = next(p for p in report.problems if p.severity == "error")
        raise DatasetError(f"{report.errors} error(s), for example {first.code}: "
                           f"{first.message}", file=data, line=first.line, sample_id=first.id,
                           fix=f"see {failed} (or notebook 01) and fix the data, then run again.")
    try:
        result = split_file(data, tmp, image_root=root, val=val, test=test, seed=cfg.seed)
        report.save_json(tmp / report_path.name)
        write_json(tmp / SPLIT_INFO, {
            "data": str(data.resolve()), "data_sha256": digest,
            "image_root": str(result.image_root.resolve()), "val": val, "test": test,
            "seed": cfg.seed, "counts": result.counts})
        try:
            tmp.rename(folder)
        except OSError:
            if not (folder / SPLIT_INFO).is_file():
                raise
            # another process made the same folder meanwhile: same data, same splits
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    prepared = _prepared(folder, built=True)
    say(result.text())
    for warning in prepared.warnings:
        say("Warning:", warning)
    return prepared


def _prepared(folder: Path, built: bool) -> PreparedData:
    info = json.loads((folder / SPLIT_INFO).read_text(encoding="utf-8"))
    counts = {k: int(v) for k, v in info.get("counts", {}).items()}
    return PreparedData(folder=folder, **{n: folder / f"{n}.jsonl" for n in SPLITS},
                        image_root=Path(info["image_root"]), report=folder / "check_report.json",
                        built=built, source=Path(info["data"]), source_sha256=info["data_sha256"],
                        counts=counts,
                        warnings=split_warnings(counts, info.get("val", 0), info.get("test", 0)))


__all__ = ["SPLITS", "PreparedData", "course_data", "course_records", "dataset_key",
           "prepare_data", "source_image_root", "split_warnings"]
