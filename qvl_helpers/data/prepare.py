"""One call that turns the configured data into checked, leakage-free splits under outputs/data/.

Any notebook or ``qvl`` command that needs the splits calls :func:`prepare_data`; a notebook opened
on its own therefore produces its missing input itself (and says so) instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import CourseConfig
from ..errors import ConfigError, DatasetError
from .doctor import CheckReport, check_file
from .split import image_root_for_output, split_file

SPLITS = ("train", "val", "test")


@dataclass
class PreparedData:
    """Where the splits are, and the folder their image paths are relative to."""

    train: Path
    val: Path
    test: Path
    image_root: Path
    report: Path
    built: bool  # True when this call made them, False when they were already there


def data_dir(cfg: CourseConfig) -> Path:
    return Path(cfg.output_dir) / "data"


def source_image_root(cfg: CourseConfig) -> Path:
    """The image root of the learner's own annotation file."""
    if cfg.data is None:
        raise ConfigError("no data file is configured.", file=cfg.source or "course.yaml",
                          fix="set data: to your annotation file in course.yaml.")
    return Path(cfg.image_root) if cfg.image_root else Path(cfg.data).parent


def prepare_data(cfg: CourseConfig, *, rebuild: bool = False, val: float = 0.1,
                 test: float = 0.1, verbose: bool = True) -> PreparedData:
    """Check the configured data and split it into ``outputs/data/{train,val,test}.jsonl``.

    Existing splits are reused unless ``rebuild`` is True. The doctor's report is written to
    ``outputs/data/check_report.json``; data with errors is not split.

    Raises:
        DatasetError: the data has errors (the message points to the report).
    """
    out = data_dir(cfg)
    root = source_image_root(cfg)
    files = {name: out / f"{name}.jsonl" for name in SPLITS}
    report_path = out / "check_report.json"
    paths = dict(image_root=image_root_for_output(root, out), report=report_path)
    if all(p.exists() for p in files.values()) and not rebuild:
        if verbose:
            print(f"Using the existing splits in {out} (rebuild=True makes them again).")
        return PreparedData(**files, **paths, built=False)
    if verbose:
        print(f"Preparing {cfg.data}: check, then split into {out}")
    report: CheckReport = check_file(cfg.data, image_root=root, min_pixels=cfg.min_pixels,
                                     max_pixels=cfg.max_pixels)
    report.save_json(report_path)
    if verbose:
        print(report.summary())
    if not report.ok:
        first = next(p for p in report.problems if p.severity == "error")
        raise DatasetError(f"{report.errors} error(s), for example {first.code}: "
                           f"{first.message}", file=cfg.data, line=first.line,
                           sample_id=first.id, fix=f"see {report_path} (or notebook 01) and fix "
                                                   "the data, then run again.")
    result = split_file(cfg.data, out, image_root=root, val=val, test=test, seed=cfg.seed,
                        overwrite=True)
    if verbose:
        print(result.text())
    return PreparedData(**files, **paths, built=True)
