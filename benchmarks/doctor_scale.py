"""Data doctor at scale: time and peak memory of `qvl data check` on generated files.

Writes benchmarks/results/doctor_scale.json. Each size runs in its own process, side by side in
one run, so that the ratio (100k vs 10k records) is what to read: flat memory means the peak
barely grows while the record count grows tenfold.

    python -m benchmarks.doctor_scale            # 10k and 100k records, 300 images
"""

from __future__ import annotations

import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import REPO

SHAPES = REPO / "data_samples" / "shapes"


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


def measure(path: Path) -> dict:
    """Run `qvl data check` in a child process; wall time and the child's peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "qvl_helpers.cli", "data", "check", str(path),
                           "--json", str(path.with_suffix(".report.json"))],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    report = json.loads(path.with_suffix(".report.json").read_text())
    return {"records": report["records"], "exit": done.returncode, "errors": report["errors"],
            "seconds": round(wall, 2), "peak_rss_mib": round(max(peak_kib, before) / 1024, 1),
            "records_per_second": round(report["records"] / wall)}


def run(sizes: list[int] | None = None) -> dict:
    sizes = sizes or [10_000, 100_000]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = [measure(make_dataset(folder, n)) for n in sorted(sizes)]
    small, large = rows[0], rows[-1]
    return {
        "what": "qvl data check on n records sharing 300 PNG images (112x112)",
        "runs": rows,
        "ratio_large_to_small": {
            "records": round(large["records"] / small["records"], 1),
            "seconds": round(large["seconds"] / small["seconds"], 2),
            "peak_rss": round(large["peak_rss_mib"] / small["peak_rss_mib"], 2)},
        "note": "peak RSS of a child is cumulative over children (getrusage), so runs go from "
                "small to large; the large run's peak is its own.",
    }


if __name__ == "__main__":
    from .common import write_result

    print(write_result("doctor_scale", run([int(a) for a in sys.argv[1:]] or None)))
