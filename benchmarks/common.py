"""What every benchmark result records: the machine, the versions, the date, the commit."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
PACKAGES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "trl", "liger-kernel")


def environment() -> dict[str, Any]:
    """Machine, package versions (None: not installed), UTC date and git commit."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                  ".", ":!benchmarks/results"],  # (results written so far)
                                 cwd=REPO, capture_output=True, text=True, check=True).stdout
        commit += " (with uncommitted changes)" if changed.strip() else ""
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "commit": commit, "versions": versions}


def write_result(name: str, result: dict[str, Any], folder: Path = RESULTS) -> Path:
    """``folder/NAME.json`` with the environment added."""
    from qvl_helpers.outputs import write_json

    return write_json(folder / f"{name}.json", {"benchmark": name, **environment(), **result})


def rate(work: Callable[[], Any], items: int, repeats: int = 3) -> float:
    """Best of ``repeats`` of ``items / seconds`` for ``work()`` (the best run is the least
    disturbed by other processes)."""
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = max(best, items / (time.perf_counter() - start))
    return best
