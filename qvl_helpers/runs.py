"""A training run's folder: its identity, its checkpoints and its log.

A run is immutable once started. ``run.json`` records at the start what makes it *this* run: the
model (name and a hash of its ``config.json``), the data (source file and split files with their
SHA-256 and the image root) and the settings that shape what is learned (:data:`SHAPING_KEYS`).
``--resume`` compares the recorded identity with the current one and refuses on any difference,
naming each; a finished run is never trained again.

Checkpoints are complete only with :data:`COMPLETE_MARKER`, written last, which lists every file
with its size and SHA-256: a checkpoint whose files were cut short (a full disk, a kill while
copying) is detected, set aside and the previous one used. The finders here never change anything
on disk; :func:`set_aside` is the one function that renames (never deletes).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import CourseConfig
from .images import file_hash as sha256_file
from .outputs import read_json, write_json, write_text

IDENTITY = "run.json"
RUN_CONFIG = "run_config.yaml"
COMPLETE_MARKER = "qvl_checkpoint_complete.json"
LOG = "train_log.jsonl"
ADAPTER = "adapter"
#: Settings that change what a run learns: a run resumed with another value is another run.
#: (logging/eval/save intervals and gradient checkpointing change how, not what: they may change.)
SHAPING_KEYS = ("min_pixels", "max_pixels", "max_length", "lr", "num_epochs", "max_steps",
                "batch_size", "grad_accum", "lora_r", "lora_alpha", "lora_dropout", "trained",
                "warmup", "weight_decay", "max_grad_norm", "seed", "group_by_length",
                "on_too_long")


def run_dir(cfg: CourseConfig, name: str | None = None) -> Path:
    """``<output_dir>/runs/<run_name>``."""
    return Path(cfg.output_dir) / "runs" / (name or cfg.run_name)


# ----------------------------------------------------------------------------- identity


def build_identity(cfg: CourseConfig, *, model_name: str, model_path: str, prepared: Any,
                   resolved: dict[str, Any]) -> dict[str, Any]:
    """What makes a run *this* run (see the module docstring), from the settings, the model and
    the :class:`~qvl_helpers.data.PreparedData` it trains on. Contents are compared by hash; the
    ``where`` section (paths on this machine) is recorded but not compared, so a project moved
    to another folder can still be resumed."""
    config_file = Path(model_path) / "config.json"
    settings = cfg.to_dict()
    splits = prepared.files()
    return {
        "model": {"name": model_name,
                  "config_sha256": sha256_file(config_file) if config_file.is_file() else None},
        "data": {"source_sha256": prepared.source_sha256,
                 "splits": {name: sha256_file(Path(p)) for name, p in splits.items()}},
        "settings": {key: settings[key] for key in SHAPING_KEYS},
        "resolved": resolved,
        "where": {"model_path": str(model_path),
                  "source": str(prepared.source) if prepared.source else None,
                  "image_root": str(Path(prepared.image_root).resolve()),
                  "splits": {name: str(Path(p).resolve()) for name, p in splits.items()}},
    }


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def identity_changes(recorded: dict[str, Any], current: dict[str, Any],
                     cfg: CourseConfig | None = None, *, partial: bool = False) -> list[str]:
    """Each difference between a recorded identity and the current one, as a readable line
    (``settings.lr: 0.003 (run) -> 0.001 (now, from --set lr=0.001)``). With ``partial``, only
    the keys present in ``current`` are compared (a check before the data is prepared)."""
    keys = ("model", "data", "settings", "resolved")
    old = _flatten({k: recorded.get(k, {}) for k in keys})
    new = _flatten({k: current.get(k, {}) for k in keys})
    lines = []
    for key in sorted(new.keys() if partial else old.keys() | new.keys()):
        if old.get(key) == new.get(key):
            continue
        if key == "data.source_sha256":
            then = recorded.get("where", {}).get("source")
            now = current.get("where", {}).get("source")
            lines.append(f"data: {then} (run) -> {now} (now)" if then != now else
                         f"data: the content of {now} changed")
        elif key.startswith("data."):
            lines.append(f"{key}: the file's content changed")
        elif key == "resolved.world_size":
            lines.append(f"processes: the run was launched with {old.get(key)}, now "
                         f"{new.get(key)} (the batches would differ)")
        else:
            where = ""
            if cfg is not None and key.startswith("settings."):
                where = f", from {cfg.origin(key.removeprefix('settings.'))}"
            lines.append(f"{key}: {old.get(key)!r} (run) -> {new.get(key)!r} (now{where})")
    return lines


def read_identity(folder: Path) -> dict[str, Any] | None:
    """The run's recorded identity (None: no readable run.json)."""
    return read_json(folder / IDENTITY)


def write_identity(folder: Path, identity: dict[str, Any]) -> None:
    write_json(folder / IDENTITY, identity)


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_step(path: Path) -> int | None:
    step = path.name.rsplit("-", 1)[-1]
    return int(step) if path.name.startswith("checkpoint-") and step.isdigit() else None


def manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Every file below ``folder`` (except the marker) with its size and SHA-256."""
    return {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != COMPLETE_MARKER}


def mark_complete(checkpoint: Path, step: int) -> None:
    """Write the completion marker, with the manifest, as the last file of a checkpoint."""
    write_json(checkpoint / COMPLETE_MARKER,
               {"step": step, "time": time.time(), "files": manifest(checkpoint)})


def checkpoint_problem(checkpoint: Path) -> tuple[str, str] | None:
    """Why a checkpoint cannot be resumed from, as ``(kind, reason)`` with kind ``incomplete``
    (never finished saving) or ``corrupt`` (finished, then damaged); None: complete and intact."""
    marker = checkpoint / COMPLETE_MARKER
    if not marker.is_file() or not (checkpoint / "trainer_state.json").is_file():
        return "incomplete", "incomplete: the process stopped while saving it"
    try:
        files = json.loads(marker.read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError):
        return "corrupt", "its completion marker is unreadable"
    for name, expected in (files or {}).items():
        path = checkpoint / name
        if not path.is_file():
            return "corrupt", f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return "corrupt", (f"{name} is {path.stat().st_size} bytes, not the "
                               f"{expected['size']} written")
        if sha256_file(path) != expected["sha256"]:
            return "corrupt", f"{name} changed after it was written (checksum differs)"
    return None


@dataclass
class ResumePoint:
    """The checkpoint to resume from, and the newer ones that cannot be used:
    ``(path, kind, reason)`` as :func:`checkpoint_problem` says."""

    checkpoint: Path | None
    rejected: list[tuple[Path, str, str]] = field(default_factory=list)

    @property
    def step(self) -> int:
        return (checkpoint_step(self.checkpoint) or 0) if self.checkpoint else 0


def find_resume_checkpoint(folder: Path) -> ResumePoint:
    """The newest complete, intact checkpoint in ``folder``; changes nothing on disk."""
    found = sorted(((checkpoint_step(p), p) for p in folder.glob("checkpoint-*")
                    if p.is_dir() and checkpoint_step(p) is not None), reverse=True)
    rejected = []
    for _, path in found:
        problem = checkpoint_problem(path)
        if problem is None:
            return ResumePoint(path, rejected)
        rejected.append((path, *problem))
    return ResumePoint(None, rejected)


def set_aside(path: Path, why: str) -> Path:
    """Rename ``path`` to ``<why>-<name>-<time>`` beside it (kept, never deleted)."""
    target = path.with_name(f"{why}-{path.name}-{int(time.time())}")
    path.rename(target)
    return target


# ----------------------------------------------------------------------------- state and log


@dataclass
class RunState:
    """What a run folder holds."""

    folder: Path
    exists: bool
    finished: bool                 # the final adapter was saved
    checkpoints: list[Path]        # checkpoint-N folders, complete or not
    identity: dict[str, Any] | None

    @property
    def started(self) -> bool:
        """True when there is something a new run would overwrite (a checkpoint or an adapter)."""
        return self.finished or bool(self.checkpoints)


def inspect_run(folder: Path) -> RunState:
    """Look at a run folder without changing it."""
    checkpoints = sorted((p for p in folder.glob("checkpoint-*")
                          if p.is_dir() and checkpoint_step(p) is not None), key=checkpoint_step)
    return RunState(folder, folder.exists(), (folder / ADAPTER).is_dir(), checkpoints,
                    read_identity(folder))


def finished_runs(output_dir: str | Path) -> list[Path]:
    """The finished runs (a final adapter and a run.json) under ``<output_dir>/runs``, the most
    recently finished first."""
    folders = [p for p in (Path(output_dir) / "runs").glob("*")
               if (p / ADAPTER).is_dir() and read_identity(p) is not None]
    return sorted(folders, key=lambda p: (p / ADAPTER).stat().st_mtime, reverse=True)


def free_name(cfg: CourseConfig) -> str:
    """``run_name`` if its folder is unused, else the first free ``run_name-2``, ``-3``, ..."""
    name, n = cfg.run_name, 1
    while inspect_run(run_dir(cfg, name)).started:
        n += 1
        name = f"{cfg.run_name}-{n}"
    return name


def read_log(path: Path) -> list[dict[str, Any]]:
    """The entries of a train_log.jsonl (log steps and ``event`` lines such as resumes)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def start_log(folder: Path) -> Path | None:
    """A fresh run starts a clean log: an earlier failed attempt's log is kept aside as
    ``train_log.attempt-N.jsonl`` (N = 1, 2, ...). Returns where it went (None if none)."""
    path = folder / LOG
    if not path.exists():
        return None
    n = 1
    while (target := path.with_name(f"train_log.attempt-{n}.jsonl")).exists():
        n += 1
    path.rename(target)
    return target


def resume_log(folder: Path, step: int) -> None:
    """Drop entries after the checkpoint a run resumes from (they will be logged again) and mark
    the restart, so the log never holds the same step twice without a mark."""
    path = folder / LOG
    kept = [e for e in read_log(path) if e.get("step", 0) <= step] if path.exists() else []
    kept.append({"event": "resume", "step": step, "time": round(time.time(), 3)})
    write_text(path, "".join(json.dumps(e) + "\n" for e in kept))
