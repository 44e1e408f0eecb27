"""Runs the notebooks' lessons need: the newest finished run (or a fresh one, for a notebook
opened on its own), and a training killed mid-run as a lost Colab session would be."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import CourseConfig, load_config
from .env import recommended_preset
from .errors import TrainingError
from .processes import child_process
from .runs import COMPLETE_MARKER, finished_runs, run_dir
from .train import train


def newest_run_or_train(cfg: CourseConfig, *, prefix: str = "nb",
                        say: Callable[..., Any] = print) -> Path:
    """The newest finished run under ``cfg.output_dir`` (runs named ``*-demo`` are left out), or,
    when there is none (a notebook opened on its own), a new one trained with the preset
    ``qvl env`` recommends for this machine, named ``PREFIX-<time>``."""
    runs = [r for r in finished_runs(cfg.output_dir) if not r.name.endswith("-demo")]
    if runs:
        return runs[0]
    preset = recommended_preset()
    say(f"No finished run in {cfg.output_dir}/runs yet: training one with {preset.name} first.")
    name = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    return train(load_config(presets=[preset], run_name=name), live_plot=True).run_dir


def simulate_disconnect(preset: str | Path, sets: dict[str, Any], *, after_step: int,
                        timeout: float = 600) -> Path:
    """Start ``qvl train --config PRESET --set ...`` in another process and kill it (SIGKILL,
    as a lost Colab session would) once the checkpoint of ``after_step`` is complete. Returns
    the run folder; ``train(cfg, resume=True)`` then continues it.

    Raises:
        TrainingError: the run ended, or the checkpoint did not appear within ``timeout`` s.
    """
    cfg = load_config(presets=[preset], sets=sets)
    folder = run_dir(cfg)
    command = [sys.executable, "-m", "qvl_helpers.cli", "train", "--config", str(preset)]
    for key, value in sets.items():
        command += ["--set", f"{key}={value}"]
    env = {**os.environ, "QVL_OUTPUT_DIR": str(cfg.output_dir)}
    marker, end = folder / f"checkpoint-{after_step}" / COMPLETE_MARKER, time.time() + timeout
    # (the run ends with this process: a notebook interrupted while it waits leaves none behind)
    with child_process(command, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE) as process:
        while not marker.exists():
            if process.poll() is not None or time.time() > end:
                process.kill()
                tail = process.communicate()[1].decode(errors="replace")[-500:]
                raise TrainingError(f"the run stopped before checkpoint-{after_step} was "
                                    f"complete: {tail}", file=folder,
                                    fix="check save_steps and max_steps.")
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)  # the "disconnect"
        process.wait()
    return folder
