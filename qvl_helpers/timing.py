"""How long a run will take on this machine: a few training steps measured, then extrapolated
(``qvl train --dry-run --time``). Nothing of the run is written."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .model import free_memory
from .run_plan import RunPlan, run_steps
from .runs import run_dir
from .trainer import build_trainer, fit, prepare_model


class StepTimer(TrainerCallback):
    """Wall time from the end of one optimizer step to the end of the next: loading and
    collating its micro-batches, forward, backward and the optimizer update."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._last: float | None = None

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self._last is not None:  # the first step (warm-up) has no start mark: left out
            self.seconds.append(now - self._last)
        self._last = now


@dataclass
class TimeEstimate:
    """A run's duration from steps measured on this machine: the median step times the steps,
    with the fastest and slowest measured step as the range."""

    steps: int            # optimizer steps the run will take
    measured: list[float]  # seconds of each measured step (the warm-up step left out)

    @property
    def per_step(self) -> float:
        ordered = sorted(self.measured)
        return ordered[len(ordered) // 2]

    def text(self) -> str:
        low, high = min(self.measured), max(self.measured)
        return (f"time         about {_duration(self.per_step * self.steps)} for {self.steps} "
                f"steps ({_duration(low * self.steps)} to {_duration(high * self.steps)}): "
                f"{self.per_step:.2f} s per step, the median of {len(self.measured)} steps on "
                f"training samples in random order, measured here after one warm-up step "
                f"({low:.2f} to {high:.2f} s); evaluation and checkpoints come on top, length "
                "grouping makes it a little faster")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def time_estimate(plan: RunPlan, state: Any, steps: int = 3) -> TimeEstimate:
    """Train ``steps + 1`` steps on training samples in random order, in a temporary folder (the
    first step is a warm-up), and extrapolate to the whole run. Nothing of the run is written
    or changed, and the model is freed before returning (the real run loads its own)."""
    timer, trainer, model = StepTimer(), None, None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = plan.cfg.model_copy(update={
                "output_dir": Path(tmp), "max_steps": steps + 1, "group_by_length": False,
                "eval_steps": 10 ** 9, "save_steps": 10 ** 9, "logging_steps": 10 ** 9})
            run_dir(cfg).mkdir(parents=True)
            probe = dataclasses.replace(plan, cfg=cfg, records={**plan.records, "val": []})
            model = prepare_model(probe, state.local_process_index, say=lambda *a, **k: None)
            trainer = build_trainer(probe, model, rank=state.process_index, callbacks=[timer],
                                    verbose=False)
            fit(trainer, cfg, None, max(plan.lengths))
    finally:
        plan.collator.reset_counts()
        del trainer, model
        free_memory()
    return TimeEstimate(run_steps(plan), timer.seconds)
