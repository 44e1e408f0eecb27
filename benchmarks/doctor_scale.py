"""Data doctor at scale: rate and peak memory of `qvl data check`, the code before and after.

Writes benchmarks/results/doctor_scale.json. The same generated files (10k and 100k records
sharing 300 images) are checked by two trees side by side in one run: BEFORE, the code at
:data:`BEFORE` (checked out into a temporary ``git worktree``, removed afterwards), when the
doctor still counted image tokens through ``tokens.py``; and AFTER, this checkout (the doctor's
arithmetic in plain Python in ``qwen.py``). Each check runs in its own process, alternating
between the trees, best of :data:`REPEATS`; the ratios (after / before) are what to read.

Each child reports its own peak RSS: ``VmHWM`` of ``/proc/self/status`` (Linux), the high-water
mark of the address space the child's ``exec`` created. ``ru_maxrss`` cannot tell it: Linux keeps
the pre-exec high-water mark, which for a forked child is the parent's RSS, so under
``python -m benchmarks`` (whose imports bring in torch, about 1 GB) every child read ~1 GB. The
earlier version of this file (``getrusage(RUSAGE_CHILDREN)``) reported that ~900 MiB.

    python -m benchmarks.doctor_scale            # 10k and 100k records
    python -m benchmarks.doctor_scale 100000     # some sizes
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import REPO

SHAPES = REPO / "data_samples" / "shapes"
BEFORE = "c1f662d"  # the last commit where data/doctor.py imported tokens.py
REPEATS = 3
#: The measured child: `qvl data check ARGS` (as `python -m qvl_helpers.cli` runs it), then its
#: own peak RSS in KiB written to the file named first.
RUNNER = ("import runpy, sys\n"
          "out, sys.argv = sys.argv[1], ['qvl', *sys.argv[2:]]\n"
          "try:\n"
          "    runpy.run_module('qvl_helpers.cli', run_name='__main__', alter_sys=True)\n"
          "finally:\n"
          "    with open('/proc/self/status') as status:\n"
          "        peak = next(line.split()[1] for line in status if line.startswith('VmHWM:'))\n"
          "    with open(out, 'w') as fh:\n"
          "        fh.write(peak)\n")
#: Run in the child after `qvl data check`: which tree ran, and what the check imported.
PROBE = ("import json, sys\n"
         "from qvl_helpers.cli import main\n"
         "main(['data', 'check', sys.argv[1]])\n"
         "import qvl_helpers\n"
         "print(json.dumps({'code': qvl_helpers.__file__, 'imported': sorted(m for m in "
         "('torch', 'transformers', 'qvl_helpers.tokens') if m in sys.modules)}))\n")


def make_dataset(folder: Path, n: int, n_images: int = 300, seed: int = 0) -> Path:
    """n records sharing n_images images (copied from the bundled shapes set)."""
    if not (folder / "images").exists():
        shutil.copytree(SHAPES / "images", folder / "images")
    images = sorted(p.name for p in (folder / "images").iterdir())[:n_images]
    rng = random.Random(seed)
    path = folder / f"data_{n}.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            record = {"id": f"r{i:06d}", "messages": [
                {"role": "user", "content": [
                    {"type": "image", "image": f"images/{rng.choice(images)}"},
                    {"type": "text", "text": f"Question {i}: what colour is the shape?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": f"answer {i}"}]}]}
            fh.write(json.dumps(record) + "\n")
    return path


def _child_env(tree: Path) -> dict[str, str]:
    """The environment of a child that imports qvl_helpers from ``tree`` (and runs offline)."""
    env = dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE="1")
    env.pop("QVL_DEBUG", None)
    return env


def measure(path: Path, tree: Path) -> dict[str, Any]:
    """`qvl data check` on ``path`` in a child process importing ``tree``'s code: wall time
    and that child's own peak RSS (see the module's docstring).

    Raises:
        RuntimeError: the check wrote no report or no peak (the command failed).
    """
    report_path = path.with_suffix(f".{tree.name}.report.json")
    peak_path = path.with_suffix(f".{tree.name}.peak")
    for stale in (report_path, peak_path):
        stale.unlink(missing_ok=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RUNNER, str(peak_path), "data", "check",
                           str(path), "--json", str(report_path)], cwd=path.parent,
                          env=_child_env(tree), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if not (report_path.is_file() and peak_path.is_file()):
        raise RuntimeError(f"qvl data check failed in {tree}: {done.stderr[-2000:]}")
    report = json.loads(report_path.read_text())
    return {"records": report["records"], "exit": done.returncode, "errors": report["errors"],
            "seconds": round(wall, 2), "peak_rss_mib": round(int(peak_path.read_text()) / 1024, 1),
            "records_per_second": round(report["records"] / wall)}


def probe(path: Path, tree: Path) -> dict[str, Any]:
    """Which tree a child really imports, and whether its check imports torch, transformers
    or tokens.py (a separate, unmeasured run)."""
    done = subprocess.run([sys.executable, "-c", PROBE, str(path)], cwd=path.parent,
                          env=_child_env(tree), capture_output=True, text=True, check=True)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(found["code"]).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"the child imported {found['code']}, not the code in {tree}")
    return {"imports_torch": "torch" in found["imported"],
            "imports_transformers": "transformers" in found["imported"],
            "imports_tokens_py": "qvl_helpers.tokens" in found["imported"]}


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of repeated runs, with the highest peak of them (memory barely varies)."""
    fastest = min(runs, key=lambda r: r["seconds"])
    return {**fastest, "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            "repeats": len(runs)}


def compare(folder: Path, trees: dict[str, Path], sizes: list[int]) -> list[dict[str, Any]]:
    """Each size checked by each tree, alternating, :data:`REPEATS` times; the best of each."""
    rows = []
    for n in sorted(sizes):
        path = make_dataset(folder, n)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
        for _ in range(REPEATS):
            for name, tree in trees.items():
                runs[name].append(measure(path, tree))
        rows += [{"code": name, **_best(found)} for name, found in runs.items()]
    return rows


def _ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """After / before, per size: rate (over 1: faster now) and peak RSS (under 1: smaller)."""
    by = {(r["code"], r["records"]): r for r in rows}
    out = {}
    for n in sorted({r["records"] for r in rows}):
        before, after = by[("before", n)], by[("after", n)]
        out[str(n)] = {
            "records_per_second": round(after["records_per_second"]
                                        / before["records_per_second"], 2),
            "peak_rss": round(after["peak_rss_mib"] / before["peak_rss_mib"], 2)}
    return out


def run(sizes: list[int] | None = None, before: str = BEFORE) -> dict[str, Any]:
    """Check 10k and 100k records (or ``sizes``) with the code at ``before`` and this
    checkout, side by side."""
    sizes = sizes or [10_000, 100_000]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder, old = Path(tmp) / "data", Path(tmp) / "before"
        folder.mkdir()
        subprocess.run(["git", "worktree", "add", "--detach", str(old), before], cwd=REPO,
                       check=True, capture_output=True)
        try:
            trees = {"before": old, "after": REPO}
            small = make_dataset(folder, min(sizes))
            imports = {name: probe(small, tree) for name, tree in trees.items()}
            rows = compare(folder, trees, sizes)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=REPO,
                           check=False, capture_output=True)
    return {
        "what": "qvl data check on n records sharing 300 PNG images (112x112), no --model",
        "before": f"commit {before} (data/doctor.py imported tokens.py)",
        "after": "this checkout (qwen.py's plain-Python image arithmetic)",
        "imports": imports,
        "runs": rows,
        "after_to_before": _ratios(rows),
        "benchmark_seconds": round(time.perf_counter() - start),
        "note": f"best of {REPEATS} runs per tree and size, trees alternating; peak RSS is each "
                "child's own VmHWM. The ~900 MiB this benchmark reported before was not the "
                "doctor's: a forked child's ru_maxrss starts at its parent's RSS, and python -m "
                "benchmarks imports torch.",
    }


if __name__ == "__main__":
    from .common import write_result

    print(write_result("doctor_scale", run([int(a) for a in sys.argv[1:]] or None)))
