"""Training: ``train(cfg)`` fine-tunes with LoRA as ``cfg`` says, in small named steps.

Plan and check everything first (:mod:`~qvl_helpers.run_plan`), then hold the run folder, load
the model with LoRA and fit it (:mod:`~qvl_helpers.trainer`); ``--dry-run --time`` measures a
few steps instead (:mod:`~qvl_helpers.timing`). Everything lands under ``outputs/runs/NAME/``::

    run.json        the run's identity: model, data hashes, shaping settings (see runs.py)
    checkpoint-N/   adapter, optimizer, scheduler, RNG state, processor, run_config.yaml,
                    and a completion marker with every file's size and hash, written last
    adapter/        the final LoRA adapter + processor + run_config.yaml
    train_log.jsonl one JSON object per log step (a resume is marked); loss.png; run_config.yaml

The same code runs under ``accelerate launch`` / ``torchrun`` on several GPUs (or CPU processes).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from .config import CourseConfig
from .model import free_memory
from .run_plan import (
    ResumePoint,
    TrainResult,
    dry_run_text,
    ensure_output_folder,
    log_every,
    plan_and_check,
    run_steps,
)
from .runs import ADAPTER, hold_run, resume_log, run_dir, set_aside, start_log, write_identity
from .timing import time_estimate
from .trainer import build_trainer, fit, prepare_model, save_adapter, save_run_config


def open_run_folder(folder: Path, identity: dict[str, Any], resume_from: ResumePoint | None,
                    cfg: CourseConfig, extra: dict[str, Any], say: Any = print) -> None:
    """Main process: set aside unusable checkpoints, start or mark the log, record the run."""
    folder.mkdir(parents=True, exist_ok=True)
    if resume_from is not None:
        for path, kind, reason in resume_from.rejected:
            kept = set_aside(path, kind)
            say(f"{path.name} cannot be used ({reason}); kept as {kept.name} and skipped.")
        resume_log(folder, resume_from.step)
        say(f"Resuming from {resume_from.checkpoint}")
        return
    old = start_log(folder)
    if old is not None:
        say(f"An earlier attempt of this run left a log; kept as {old.name}.")
    write_identity(folder, identity)
    save_run_config(cfg, folder, extra)


def train(cfg: CourseConfig, *, resume: bool = False, force: bool = False, dry_run: bool = False,
          live_plot: bool = False, callbacks: Sequence[TrainerCallback] = (),
          verbose: bool = True, time_steps: int = 0) -> TrainResult:
    """Fine-tune with LoRA as ``cfg`` says and return where everything went. ``resume``
    continues the same run from its newest intact checkpoint (refused if its data, model or
    shaping settings changed); ``force`` starts a new run under a free name where the run would
    be refused; ``dry_run`` checks everything and prints the plan (with ``time_steps``, also a
    time estimate measured on that many training steps, nothing saved).

    Raises:
        ConfigError, DatasetError: a setting or the data cannot work (named, with the fix).
        OutputExistsError: the run exists and neither ``resume`` nor ``force`` was given.
        TrainingError: nothing to train or resume, a changed run, a non-finite loss, OOM.
        RunBusyError: another process is training a run of this name (it is named).
    """
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    rank = state.process_index
    say = print if (verbose and rank == 0) else (lambda *a, **k: None)
    with contextlib.ExitStack() as held:
        def hold(c: CourseConfig) -> None:
            if rank == 0 and not dry_run:
                ensure_output_folder(c)  # an unusable output_dir is named as such
                held.enter_context(hold_run(run_dir(c), say))

        hold(cfg)  # before anything is planned: a second run of the name stops here
        return _train(cfg, state, hold, say, resume=resume, force=force, dry_run=dry_run,
                      live_plot=live_plot, callbacks=callbacks, verbose=verbose,
                      time_steps=time_steps)


def _train(cfg: CourseConfig, state: Any, hold: Callable[[CourseConfig], Any], say: Any, *,
           resume: bool, force: bool, dry_run: bool, live_plot: bool,
           callbacks: Sequence[TrainerCallback], verbose: bool, time_steps: int) -> TrainResult:
    """:func:`train` once the run folder is held (``hold`` holds another one, for a run that
    ``force`` renamed)."""
    rank = state.process_index
    plan = plan_and_check(cfg, resume=resume, force=force, state=state, verbose=verbose, say=say)
    if isinstance(plan, TrainResult):
        return plan
    if plan.cfg.run_name != cfg.run_name:
        hold(plan.cfg)
    cfg, folder = plan.cfg, run_dir(plan.cfg)
    if dry_run:
        say(dry_run_text(plan))
        if time_steps:
            say(time_estimate(plan, state, time_steps).text())
        say("\nDry run: everything checked; nothing was trained.")
        return TrainResult(folder, folder / ADAPTER, 0, None, 0.0, False)
    state.wait_for_everyone()  # every process has planned before the main one changes anything
    if rank == 0:
        open_run_folder(folder, plan.identity, plan.resume_from, cfg, plan.extra, say)
    state.wait_for_everyone()
    model = prepare_model(plan, state.local_process_index, say)
    trainer = build_trainer(plan, model, rank=rank, callbacks=callbacks, live_plot=live_plot,
                            verbose=verbose,
                            every=log_every(run_steps(plan), cfg.logging_steps, cfg.eval_steps))
    start = time.time()
    output = fit(trainer, cfg, plan.resume_from, max(plan.lengths))
    result = TrainResult(folder, folder / ADAPTER, trainer.state.global_step,
                         _finite(output.training_loss if output else None), time.time() - start,
                         start_step=plan.resume_from.step if plan.resume_from else 0)
    if trainer.is_world_process_zero():
        save_adapter(trainer, plan.processor, cfg, plan.extra, plan.identity)
    say(result.summary())
    del trainer, model
    free_memory()  # a notebook goes on to load the model again for evaluation
    return result


def _finite(loss: float | None) -> float | None:
    return None if loss is None or math.isnan(loss) else loss
