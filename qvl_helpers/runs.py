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

import contextlib
import errno
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .config import CourseConfig
from .errors import QVLError
from .images import file_hash as sha256_file
from .outputs import read_json, write_json, write_text

IDENTITY = "run.json"
RUN_CONFIG = "run_config.yaml"
COMPLETE_MARKER = "qvl_checkpoint_complete.json"
LOG = "train_log.jsonl"
ADAPTER = "adapter"
LOCK = ".qvl-run.lock"
#: Settings that change what a run learns: a run resumed with another value is another run.
#: (logging/eval/save intervals and gradient checkpointing change how, not what: they may change.)
SHAPING_KEYS = ("min_pixels", "max_pixels", "max_length", "lr", "num_epochs", "max_steps",
                "batch_size", "grad_accum", "lora_r", "lora_alpha", "lora_dropout", "trained",
                "warmup", "weight_decay", "max_grad_norm", "seed", "group_by_length",
                "on_too_long")


@dataclass(frozen=True)
class Outputs:
    """The fixed layout under one output folder, the one place its paths are spelled::

        data/NAME/    checked, leakage-free splits      runs/NAME/    training runs
        eval/NAME/    evaluation reports                export/NAME/  merged models

    :meth:`of_run` finds the output folder a run folder lives in (it may have been moved with
    it), so every later step writes beside the run it started from."""

    root: Path

    @classmethod
    def of(cls, cfg: CourseConfig) -> Outputs:
        """The layout under ``cfg.output_dir``."""
        return cls(Path(cfg.output_dir))

    @classmethod
    def of_run(cls, run: str | Path) -> Outputs:
        """The layout the run folder ``run`` (``<root>/runs/NAME``) belongs to."""
        return cls(Path(run).resolve().parent.parent)

    def folder(self, kind: Literal["data", "runs", "eval", "export"],
               name: str | None = None) -> Path:
        """``<root>/KIND`` (data, runs, eval or export), or the folder ``NAME`` in it."""
        base = self.root / kind
        return base / name if name else base


def run_dir(cfg: CourseConfig, name: str | None = None) -> Path:
    """``<output_dir>/runs/<run_name>`` (:class:`Outputs`)."""
    return Outputs.of(cfg).folder("runs", name or cfg.run_name)


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
    folders = [p for p in Outputs(Path(output_dir)).folder("runs").glob("*")
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


# ----------------------------------------------------------------------------- holding a run


class RunBusyError(QVLError):
    """Another process holds the run folder (two runs of one name would mix their files)."""


def _holder_text(holder: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("time", 0)))
    return f"process {holder.get('pid', '?')} on {holder.get('host', '?')}, started {started}"


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the recorded holder still runs (only knowable on the same host)."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
        return True  # another machine's process: assume it runs
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock(fd: int) -> bool | None:
    """flock the file: True held, False another process holds it, None not supported here."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return None  # e.g. some network file systems: fall back to the recorded pid
        raise


def _acquire(path: Path, name: str) -> tuple[int, dict[str, Any]]:
    """Open and lock ``path``; returns the descriptor and the previous holder's record (empty
    unless a process ended without letting go)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        held = _lock(fd)
        previous = _read_holder(fd)
        if held is False or (held is None and previous and _alive(previous)):
            os.close(fd)
            raise RunBusyError(
                f"the run {name!r} is in use by another training ({_holder_text(previous)}): two "
                "runs writing one folder would mix their checkpoints.", file=path.parent,
                fix="give this run another name (--set run_name=NAME, or run_name in course.yaml "
                    f"or load_config), or wait until process {previous.get('pid', '?')} "
                    "finishes (it resumes with --resume if it was stopped).")
        try:  # the holder may have removed the file between open and lock: lock the new one
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd, previous
        os.close(fd)


@contextlib.contextmanager
def hold_run(folder: Path, say: Any = print) -> Iterator[Path]:
    """Hold a run folder for this process while the block runs: a lock file in it, locked with
    ``flock`` (the kernel lets go when the process ends, however it ends) and naming this
    process. A second holder is refused with :class:`RunBusyError`, naming the first; a lock
    file left by a process that ended is taken over (and said so). The lock file, and the
    folder if this call made it and nothing else was put in it, are removed at the end."""
    folder = Path(folder)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    fd, previous = _acquire(path, folder.name)
    if previous.get("pid") not in (None, os.getpid()):
        say(f"The run {folder.name!r} was held by {_holder_text(previous)}, which ended without "
            "letting go; this run takes it over.")
    me = {"pid": os.getpid(), "host": socket.gethostname(), "time": round(time.time(), 3),
          "command": " ".join(sys.argv)[:500]}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(me).encode("utf-8"))
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still locked: a waiting process then locks a new file
        os.close(fd)
        if made:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: a run that wrote nothing leaves no folder
