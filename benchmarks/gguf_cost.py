"""What ``qvl export --gguf`` costs on top of the export, side by side in one run on the tiny
stand-in: one training of the shipped ``tiny_cpu`` preset, then ``qvl export`` (merge and its
verification) and ``qvl export --gguf --quantize Q8_0 --quantize Q4_K_M`` on the same run, each
in its own process, timed as wall seconds and as CPU seconds of the process and its children;
the GGUF files' sizes; and, with ``--build``, the one-off cost of the ``gguf`` extra itself
(``pip wheel --no-cache-dir llama-cpp-python``, which compiles llama.cpp).

    python -m benchmarks.gguf_cost            # about a minute, with the gguf extra installed
    python -m benchmarks.gguf_cost --build    # plus the llama.cpp build (about 6 minutes on 2 quiet cores)
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import REPO
from .learning import _course_env


def _timed(args: list[str], env: dict[str, str], cwd: Path) -> dict[str, float]:
    """Wall and CPU seconds (this child and everything it started) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:6])} failed (exit {done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1)}


def run(build: bool = False) -> dict[str, Any]:
    """Train once, export twice (without and with GGUF), optionally build the extra."""
    from qvl_helpers.llama_run import LLAMA_CPP_PYTHON, require_llama_cpp

    require_llama_cpp()
    qvl = [sys.executable, "-m", "qvl_helpers.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = _course_env(root)
        outputs = root / "outputs"
        _timed([*qvl, "train", "--config", str(REPO / "configs" / "tiny_cpu.yaml"),
                "--set", f"output_dir={outputs}"], env, root)
        run_dir = outputs / "runs" / "tiny_cpu"
        plain = _timed([*qvl, "export", "--run", str(run_dir), "--out", str(root / "plain")],
                       env, root)
        gguf = _timed([*qvl, "export", "--run", str(run_dir), "--out", str(root / "gguf"),
                       "--gguf", "--quantize", "Q8_0", "--quantize", "Q4_K_M"], env, root)
        info = json.loads((root / "gguf" / "export.json").read_text(encoding="utf-8"))["gguf"]
    result: dict[str, Any] = {
        "export": plain, "export_with_gguf": gguf,
        "gguf_over_export_cpu": round(gguf["cpu_seconds"] / plain["cpu_seconds"], 2),
        "files": {kind: f["bytes"] for kind, f in info["files"].items()},
        "agreement": {kind: r["agreement"] for kind, r in info["results"].items()},
        "verified": info["verified"]}
    if build:
        with tempfile.TemporaryDirectory() as tmp:
            result["build"] = {"package": f"llama-cpp-python=={LLAMA_CPP_PYTHON}", **_timed(
                [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-cache-dir", "--no-deps",
                 f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-w", tmp], env, Path(tmp))}
    return result


if __name__ == "__main__":
    from .common import write_result

    print(write_result("gguf_cost", run(build="--build" in sys.argv[1:])))
