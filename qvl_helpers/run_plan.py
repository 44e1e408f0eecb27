"""Planning a training run: every decision and check made before anything changes on disk.

:func:`plan_and_check` runs them in order and returns a :class:`RunPlan` (or, for a finished run
that ``--resume`` leaves alone, its :class:`TrainResult`): decide the run folder
(:func:`plan_run`: a run is never overwritten, a finished run never retrained), check the model
choice and the LoRA pattern (:func:`check_model`), prepare the data (checked, leakage-free splits
under ``outputs/data/<dataset>/``), check every split against ``max_length`` and the image checks
(:func:`preflight`), prove the first samples have something to learn (:func:`check_labels`), and
when resuming, the run's identity against the recorded one (:func:`check_same_run`). The dry run
prints the plan (:func:`dry_run_text`). Nothing here loads weights or trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .collate import Collator, make_collator
from .config import CourseConfig
from .data.records import Record
from .errors import ConfigError, DatasetError, OutputExistsError, TrainingError
from .errors import count as _count
from .memory import report_for_run
from .model import machine_facts, torch_dtype
from .outputs import OutputFolderError, ensure_folder
from .resolved import Resolved, resolve
from .runs import (
    ADAPTER,
    Outputs,
    ResumePoint,
    build_identity,
    find_resume_checkpoint,
    free_name,
    identity_changes,
    inspect_run,
    read_identity,
    run_dir,
)
from .tiny import ensure_model

#: The lean-training switches (course.yaml), each measured by ``python -m benchmarks``.
LEAN_SWITCHES = ("group_by_length", "vision_no_grad", "answer_logits", "gradient_checkpointing",
                 "frozen_fp32")


PACKING_NOTE = ("several samples per row without padding needs each sample's own 3-D M-RoPE "
                "positions from the collator, and either flash-attention's varlen kernels (CUDA "
                "only) or a dense block mask per row under SDPA, which costs about what padding "
                "costs after length grouping (benchmarks/results/padding.json)")


def train_collator(cfg: CourseConfig, processor: Any,
                   train_records: Sequence[Record]) -> Collator:
    """The training collator (images resized into the limits ``processor`` carries), after
    proving that the first samples have something to learn."""
    collator = make_collator(processor, "train", max_length=cfg.max_length,
                             on_too_long=cfg.on_too_long)
    check_labels(collator, train_records)
    collator.reset_counts()  # count training batches only from here
    return collator


def check_labels(collator: Collator, records: Sequence[Record], sample: int = 16) -> int:
    """Trained tokens in the first ``sample`` records; refuses a run with none at all."""
    batch = collator(list(records[:sample]))
    trained = int((batch["labels"] != -100).sum())
    if trained == 0:
        raise TrainingError(
            "every label is masked: the model would learn nothing from these samples.",
            fix="check that the processor's chat template marks answers with "
                "'<|im_start|>assistant' (a template from another model does not), and look at "
                "the label-mask view in notebook 02.")
    return trained


@dataclass
class TrainResult:
    run_dir: Path
    adapter: Path
    steps: int
    train_loss: float | None
    seconds: float
    trained: bool = True  # False: a dry run, or a finished run that --resume left alone
    start_step: int = 0   # the checkpoint's step this process resumed from (0: the start)

    @property
    def steps_trained(self) -> int:
        """Optimizer steps this process trained (``steps`` counts the whole run)."""
        return self.steps - self.start_step

    def summary(self) -> str:
        """The sentence a finished training says, in the terminal and in notebooks."""
        resumed = (f" (resumed from step {self.start_step}; the run is at step {self.steps})"
                   if self.start_step else "")
        loss = (f"; average training loss over them {self.train_loss:.4f}"
                if self.train_loss is not None else "")
        return (f"Trained {_count(self.steps_trained, 'step')}{resumed} in {self.seconds:.0f} s"
                f"{loss}; adapter: {self.adapter}")


#: A loss plot needs points: at least this many training-loss and validation-loss entries where
#: the run has the steps for them (logging_steps / eval_steps are lowered, never raised).
LOSS_POINTS, VAL_POINTS = 20, 8


def log_every(total_steps: int, logging_steps: int, eval_steps: int) -> tuple[int, int]:
    """``(logging_steps, eval_steps)`` for a run of ``total_steps``: the configured ones, made
    more frequent where the run is too short for them to draw a curve (a 24-step run logged
    every 10 steps shows three points, and evaluated every 50 none)."""
    return (min(logging_steps, max(1, total_steps // LOSS_POINTS)),
            min(eval_steps, max(1, total_steps // VAL_POINTS)))


def _renamed(cfg: CourseConfig, say: Any, why: str) -> CourseConfig:
    """``cfg`` with the first free run name (``--force`` starts a new run, never in place)."""
    from .config import Origin

    name = free_name(cfg)
    say(f"{why}; --force starts a new run named {name!r} instead (the old run is untouched).")
    renamed = cfg.model_copy(update={"run_name": name})
    renamed._origins = {**cfg._origins, "run_name": Origin("--force", name="(a free name)")}
    return renamed


def plan_run(cfg: CourseConfig, *, resume: bool, force: bool,
             say: Any = print) -> tuple[CourseConfig, bool, TrainResult | None]:
    """Decide where this run goes before any work: ``(cfg, resume, finished)``.

    A run folder with a checkpoint or an adapter is never trained over: without ``resume`` it is
    refused (``force``: a new run name instead); a finished run is left alone (``finished`` is
    its result); resuming needs something to resume.
    """
    folder = run_dir(cfg)
    state = inspect_run(folder)
    if state.finished:
        steps = (state.identity or {}).get("finished", {}).get("steps", 0)
        if resume and not force:
            say(f"The run {cfg.run_name!r} already finished ({steps} steps); nothing to do. Its "
                f"adapter: {folder / ADAPTER}")
            return cfg, False, TrainResult(folder, folder / ADAPTER, steps, None, 0.0, False)
        if not force:
            raise OutputExistsError(
                f"the run {cfg.run_name!r} already exists and finished.", file=folder,
                fix="set another run_name, or pass --force to start a new run under a new name "
                    "(nothing was overwritten).")
        return _renamed(cfg, say, f"the run {cfg.run_name!r} finished"), False, None
    if state.started and not resume:
        if not force:
            raise OutputExistsError(
                f"the run {cfg.run_name!r} already exists.", file=folder,
                fix="pass --resume to continue it with the same settings, set another run_name, "
                    "or pass --force to start a new run under a new name (nothing was "
                    "overwritten).")
        return _renamed(cfg, say, f"the run {cfg.run_name!r} exists"), False, None
    if resume and not state.started:
        if state.identity is not None:  # it began, and stopped before its first checkpoint
            raise TrainingError(
                f"the run {cfg.run_name!r} has no checkpoint to resume from: it stopped before "
                f"its first save (a checkpoint every {cfg.save_steps} steps, save_steps).",
                file=folder, fix="start it again without --resume (from step 0; it saved "
                                 "nothing that would be lost).")
        raise TrainingError(f"there is no run {cfg.run_name!r} to resume.", file=folder,
                            fix="start the run without --resume.")
    return cfg, resume, None


def check_same_run(cfg: CourseConfig, identity: dict[str, Any], *, force: bool,
                   say: Any = print, partial: bool = False) -> tuple[CourseConfig, bool]:
    """Resume only the same run: the recorded identity must equal the current one (``partial``:
    only what is known before the data is prepared). Returns ``(cfg, resume)``: unchanged and
    True, or with ``force`` and a changed identity, a renamed new run and False.

    Raises:
        TrainingError: the identity changed and ``force`` is False (each change named).
    """
    recorded = read_identity(run_dir(cfg))
    changes = (identity_changes(recorded, identity, cfg, partial=partial) if recorded else
               ["no run.json: the run's identity was not recorded, so it cannot be compared"])
    if not changes:
        return cfg, True
    if force:
        return _renamed(cfg, say, f"the run {cfg.run_name!r} was made with other data, model or "
                                  f"settings ({'; '.join(changes)})"), False
    raise TrainingError(
        f"cannot resume the run {cfg.run_name!r}: it was started with other data, model or "
        "settings, and continuing would mix two runs. Changed: " + "; ".join(changes) + ".",
        file=run_dir(cfg), fix="resume with the run's own data, model and settings (its "
                               "run_config.yaml lists them), or pass --force to start a new run "
                               "under a new name with these.")


def resume_point(cfg: CourseConfig) -> ResumePoint:
    """The newest intact checkpoint of the run, or an error saying why there is none."""
    point = find_resume_checkpoint(run_dir(cfg))
    if point.checkpoint is None:
        why = "; ".join(f"{p.name}: {reason}" for p, _, reason in point.rejected) or "none saved"
        raise TrainingError(f"there is no complete checkpoint to resume from ({why}).",
                            file=run_dir(cfg), fix="start a new run (another run_name, or --force).")
    return point


def early_identity(cfg: CourseConfig, model_name: str) -> dict[str, Any]:
    """The part of a run's identity known before the data is prepared (for ``partial``)."""
    from .images import file_hash
    from .runs import SHAPING_KEYS

    settings = cfg.to_dict()
    data = Path(cfg.data) if cfg.data else None
    return {"model": {"name": model_name},
            "data": {"source_sha256": file_hash(data) if data and data.is_file() else None},
            "settings": {key: settings[key] for key in SHAPING_KEYS},
            "where": {"source": str(data.resolve()) if data else None}}


def recheck_images(prepared: Any) -> None:
    """Splits made earlier are re-checked (images may have changed since): the doctor's image
    checks on each split, errors only."""
    from .data import check_file

    for name, path in prepared.files().items():
        report = check_file(path, image_root=prepared.image_root, leakage=False)
        # (an empty split is reported as "holds no records": that is preflight's business)
        first = next((p for p in report.problems if p.severity == "error"
                      and not (p.code == "missing_field" and p.line is None)), None)
        if first is not None:
            raise DatasetError(f"the {name} split has {report.errors} error(s), for example "
                               f"{first.code}: {first.message}", file=path, line=first.line,
                               sample_id=first.id,
                               fix="fix or replace the image (`qvl data check` lists every "
                                   "problem), then run again.")


def preflight(cfg: CourseConfig, prepared: Any, records: dict[str, list[Record]],
              processor: Any, say: Any = print) -> dict[str, Any]:
    """Everything knowable before the first step, for every split the run and its evaluation
    will use: non-empty training data, images, and lengths against ``max_length`` (with the same
    tolerance, ``on_too_long``, everywhere). Returns each split's token budget."""
    from .tokens import token_budget

    if not records["train"]:
        raise DatasetError("the train split is empty: there is nothing to train on.",
                           file=prepared.train, fix="add data (a few dozen samples at least).")
    for warning in prepared.warnings:
        say("Warning:", warning)
    if not prepared.built:
        recheck_images(prepared)
    budgets = {}
    for name, split in records.items():
        try:
            budget = token_budget(split, processor, max_length=cfg.max_length)
        except DatasetError as exc:
            raise exc.at(getattr(prepared, name)) from None
        budgets[name] = budget
        over = budget.too_long
        if over and cfg.on_too_long == "error":
            worst = max(over, key=lambda s: s.total)
            raise DatasetError(
                f"{len(over)} sample(s) of the {name} split are longer than max_length "
                f"{cfg.max_length} (this one has {worst.total} tokens); found before training, "
                "so no work is lost.", file=getattr(prepared, name), sample_id=worst.id,
                fix=" ".join(budget.advice()[1:]) + "; or set on_too_long: drop to skip such "
                    "samples in training and evaluation.")
        if over:
            say(f"Warning: {len(over)} sample(s) of the {name} split exceed max_length and will "
                f"be skipped (on_too_long: drop): {', '.join(s.id for s in over[:5])}")
    return budgets


def ensure_output_folder(cfg: CourseConfig) -> None:
    """``output_dir/runs`` exists and is writable; the error names where output_dir was set."""
    try:
        ensure_folder(Outputs.of(cfg).folder("runs"), what="output folder")
    except OutputFolderError as exc:
        raise cfg.error("output_dir", f"{exc.message[:-1]}: {exc.file}.", exc.fix) from None


def check_model(cfg: CourseConfig, say: Any = print) -> tuple[Any, str, list[str]]:
    """The model choice, its loadable path, and the layers LoRA will wrap; refuses a preset
    tuned for the tiny stand-in with a real model, a GPU preset without a GPU where it would
    train the stand-in unasked (:func:`~qvl_helpers.env.gpu_preset_mismatch`), and a LoRA
    pattern that matches nothing, before any weights load."""
    from .env import gpu_preset_mismatch
    from .lora import lora_target_names

    choice = cfg.resolve_model()
    mismatch = gpu_preset_mismatch(cfg, choice, torch.cuda.is_available())
    if mismatch is not None and mismatch.refuse:
        raise cfg.error("tuned_for", mismatch.sentence, fix=mismatch.fix)
    if mismatch is not None:
        say("Note: " + mismatch.sentence)
    if cfg.tuned_for == "tiny" and not choice.is_tiny:
        raise cfg.error("tuned_for", f"these settings are tuned for the tiny stand-in, but the "
                                     f"model is {choice.name} ({choice.reason}; model set at "
                                     f"{cfg.origin('model')}).",
                        fix="use the preset `qvl env` recommends for this machine (configs/), "
                            "or set model: tiny to run the tiny stand-in here.")
    model_path = ensure_model(choice)
    try:
        targets = lora_target_names(model_path, cfg.trained)
    except ConfigError as exc:
        raise cfg.error("trained", exc.message, exc.fix) from None
    return choice, model_path, targets


@dataclass
class RunPlan:
    """Everything decided and checked before a run changes anything on disk."""

    cfg: CourseConfig
    model_path: str
    targets: list[str]
    prepared: Any
    records: dict[str, list[Record]]
    processor: Any
    budgets: dict[str, Any]
    collator: Collator
    resolved: Resolved
    identity: dict[str, Any]
    resume_from: ResumePoint | None
    extra: dict[str, Any]

    @property
    def quantization(self) -> str:
        """What the base loads in (``quantization: auto`` resolved for this machine)."""
        return self.resolved.quantization

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (``dtype: auto`` resolved for this machine)."""
        return torch_dtype(self.resolved.dtype)

    @property
    def world_size(self) -> int:
        """Processes training together (``torchrun`` / ``accelerate launch``; 1 otherwise)."""
        return self.resolved.world_size

    @property
    def lengths(self) -> list[int]:
        """Each training sample's length in tokens, in the split's order."""
        return self.budgets["train"].totals


def plan_and_check(cfg: CourseConfig, *, resume: bool, force: bool, state: Any,
                   verbose: bool = True, say: Any = print) -> RunPlan | TrainResult:
    """Every check of a run, in order, before any work (see the module docstring); a finished
    run that ``resume`` leaves alone comes back as its :class:`TrainResult`."""
    from .data import load_records, prepare_data
    from .inference import load_processor_for

    ensure_output_folder(cfg)
    cfg, resume, finished = plan_run(cfg, resume=resume, force=force, say=say)
    if finished is not None:
        return finished
    choice, model_path, targets = check_model(cfg, say)
    if resume:  # refuse a changed run before preparing anything
        cfg, resume = check_same_run(cfg, early_identity(cfg, choice.name), force=force,
                                     say=say, partial=True)
    with state.main_process_first():  # the main process prepares, the others wait and reuse
        prepared = prepare_data(cfg, verbose=verbose and state.is_main_process)
    records = {name: load_records(path) for name, path in prepared.files().items()}
    processor = load_processor_for(model_path, limits=cfg.image_limits)  # saved with the run
    budgets = preflight(cfg, prepared, records, processor, say)
    collator = train_collator(cfg, processor, records["train"])
    resolved = resolve(cfg, **machine_facts(), world_size=state.num_processes,
                       train_records=len(records["train"]))
    identity = build_identity(cfg, model_name=choice.name, model_path=model_path,
                              prepared=prepared, resolved=resolved.identity())
    if resume:
        cfg, resume = check_same_run(cfg, identity, force=force, say=say)
    extra = {"resolved": {**resolved.identity(), "model_path": model_path,
                          "data_folder": str(prepared.folder),
                          **{f"{k}_records": len(v) for k, v in records.items()},
                          "image_root": str(prepared.image_root)}}
    return RunPlan(cfg, model_path, targets, prepared, records, processor, budgets, collator,
                   resolved, identity, resume_point(cfg) if resume else None, extra)


def run_steps(plan: RunPlan) -> int:
    """Optimizer steps of the planned run (:func:`~qvl_helpers.resolved.optimizer_steps`; a plan
    always knows its training split's size)."""
    assert plan.resolved.steps is not None
    return plan.resolved.steps


def dry_run_text(plan: RunPlan) -> str:
    """What the dry run prints: every setting and its origin, the run folder, model, data,
    splits, longest samples, LoRA layers, steps, lean switches and the memory estimate."""
    cfg, prepared, budgets = plan.cfg, plan.prepared, plan.budgets
    model_path, targets, resume_from = plan.model_path, plan.targets, plan.resume_from
    lines = ["Settings (value, and where it came from):", cfg.describe(), "",
             f"run folder   {run_dir(cfg)}",
             f"model        {model_path}",
             f"data         {prepared.source} -> {prepared.folder}",
             "splits       " + ", ".join(f"{k} {v}" for k, v in prepared.counts.items()),
             "longest      " + ", ".join(f"{k} {max(b.totals, default=0)} tokens"
                                        for k, b in budgets.items()),
             f"LoRA         {len(targets)} linear layers ({cfg.trained})",
             *plan.resolved.lines()]
    if resume_from is not None and resume_from.checkpoint is not None:
        lines.append(f"resume from  {resume_from.checkpoint}")
    lines += ["lean         " + ", ".join(f"{key} {getattr(cfg, key)}" for key in LEAN_SWITCHES),
              f"             packing off: {PACKING_NOTE}", "",
              report_for_run(cfg, model_path, budgets["train"], resolved=plan.resolved,
                             is_tiny=cfg.resolve_model().is_tiny, records=plan.records["train"])]
    return "\n".join(lines)
