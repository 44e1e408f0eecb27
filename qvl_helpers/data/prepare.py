"""One call that turns the configured data into checked, leakage-free splits under outputs/data/.

Any notebook or ``qvl`` command that needs the splits calls :func:`prepare_data`; a notebook opened
on its own therefore produces its missing input itself (and says so) instead of failing.
"""

from __future__ import annotations

import json
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


def _source_stamp(cfg: CourseConfig, root: Path, val: float, test: float) -> dict:
    """What the splits were made from: a change in any of it makes them stale."""
    stat = Path(cfg.data).stat()
    return {"data": str(Path(cfg.data).resolve()), "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, "image_root": str(root.resolve()), "val": val,
            "test": test, "seed": cfg.seed}


def prepare_data(cfg: CourseConfig, *, rebuild: bool = False, val: float = 0.1,
                 test: float = 0.1, verbose: bool = True) -> PreparedData:
    """Check the configured data and split it into ``outputs/data/{train,val,test}.jsonl``.

    Existing splits are reused unless ``rebuild`` is True or they were made from another file,
    another version of it, or other split settings (recorded in ``outputs/data/source.json``).
    The doctor's report is written to ``outputs/data/check_report.json``; data with errors is
    not split.

    Raises:
        DatasetError: the data has errors (the message points to the report).
    """
    out = data_dir(cfg)
    root = source_image_root(cfg)
    files = {name: out / f"{name}.jsonl" for name in SPLITS}
    report_path = out / "check_report.json"
    paths = dict(image_root=image_root_for_output(root, out), report=report_path)
    if not Path(cfg.data).is_file():
        raise ConfigError("the configured data file does not exist.", file=cfg.data,
                          fix="set data: in course.yaml to your annotation file.")
    stamp_path, stamp = out / "source.json", _source_stamp(cfg, root, val, test)
    if all(p.exists() for p in files.values()) and not rebuild:
        recorded = json.loads(stamp_path.read_text()) if stamp_path.exists() else None
        if recorded == stamp:
            if verbose:
                print(f"Using the existing splits in {out} (rebuild=True makes them again).")
            return PreparedData(**files, **paths, built=False)
        if verbose:
            print(f"The splits in {out} were made from other data or settings: making them again.")
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
    stamp_path.write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
    if verbose:
        print(result.text())
    return PreparedData(**files, **paths, built=True)
