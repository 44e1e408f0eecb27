"""Training: the Hugging Face Trainer wired to the course's data, collator, guards and layout.

``train(cfg)`` runs small named steps: decide the run folder (:func:`plan_run`: a run is never
overwritten, a finished run never retrained), prepare the data (checked, leakage-free splits under
``outputs/data/<dataset>/``), check everything before the first step (:func:`preflight`: every
split against ``max_length`` and the image checks, the LoRA pattern against the model, the run's
identity against the recorded one when resuming), then load the model (4-bit, 8-bit or 16-bit)
with LoRA on the chosen parts, fit with a cosine schedule, warmup, validation loss and checkpoints,
and save the adapter. Everything lands under ``outputs/runs/NAME/``::

    run.json        the run's identity: model, data hashes, shaping settings (see runs.py)
    checkpoint-N/   adapter, optimizer, scheduler, RNG state, processor, run_config.yaml,
                    and a completion marker with every file's size and hash, written last
    adapter/        the final LoRA adapter + processor + run_config.yaml
    train_log.jsonl one JSON object per log step (a resume is marked); loss.png; run_config.yaml

The same code runs under ``accelerate launch`` / ``torchrun`` on several GPUs (or CPU processes).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from .collate import IGNORE_INDEX, Collator, make_collator
from .config import CourseConfig
from .data.records import Record
from .errors import ConfigError, DatasetError, OutputExistsError, QVLError, TrainingError
from .errors import count as _count
from .memory import report_for_run
from .outputs import OutputFolderError, apply_umask, disk_full, ensure_folder, is_disk_full, write_json
from .qwen import tokens_in
from .runs import (
    ADAPTER,
    LOG,
    RUN_CONFIG,
    ResumePoint,
    build_identity,
    checkpoint_problem,
    find_resume_checkpoint,
    free_name,
    hold_run,
    identity_changes,
    inspect_run,
    mark_complete,
    read_identity,
    read_log,
    resume_log,
    run_dir,
    set_aside,
    start_log,
    write_identity,
)
from .tiny import ensure_model

#: The lean-training switches (course.yaml), each measured by ``python -m benchmarks``.
LEAN_SWITCHES = ("group_by_length", "vision_no_grad", "answer_logits", "gradient_checkpointing",
                 "frozen_fp32")
PACKING_NOTE = ("several samples per row without padding needs each sample's own 3-D M-RoPE "
                "positions from the collator, and either flash-attention's varlen kernels (CUDA "
                "only) or a dense block mask per row under SDPA, which costs about what padding "
                "costs after length grouping (benchmarks/results/padding.json)")

#: Fault-injection point for the resume tests: SIGKILL this process while it writes the
#: checkpoint of this step (after the weights, before the optimizer and trainer state).
KILL_DURING_SAVE = "QVL_KILL_DURING_SAVE_AT_STEP"


# ----------------------------------------------------------------------------- data and setup


class RecordDataset(torch.utils.data.Dataset):
    """Canonical records as a map-style dataset; the collator does all processing."""

    def __init__(self, records: Sequence[Record]) -> None:
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.records[index]


class GroupedSampler(LengthGroupedSampler):
    """transformers' ``LengthGroupedSampler`` (batches of similar length, the longest sample
    first so that an out-of-memory error shows at step 1), reseeded each epoch from
    ``seed + epoch``: a resumed run sees the same batches as an uninterrupted one."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        super().__init__(batch_size, lengths=list(lengths), generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed + epoch)


def resolve_quantization(cfg: CourseConfig) -> str:
    if cfg.quantization != "auto":
        return cfg.quantization
    return "4bit" if torch.cuda.is_available() else "none"


def resolve_dtype(cfg: CourseConfig) -> torch.dtype:
    """The dtype this machine trains ``cfg`` in (:func:`~qvl_helpers.config.compute_dtype_name`)."""
    from .config import compute_dtype_name

    cuda = torch.cuda.is_available()
    name = compute_dtype_name(cfg.dtype, cuda=cuda,
                              bf16_supported=cuda and torch.cuda.is_bf16_supported())
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def train_collator(cfg: CourseConfig, processor: Any,
                   train_records: Sequence[Record]) -> Collator:
    """The training collator, after proving that the first samples have something to learn."""
    collator = make_collator(processor, "train", min_pixels=cfg.min_pixels,
                             max_pixels=cfg.max_pixels, max_length=cfg.max_length,
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


# ----------------------------------------------------------------------------- checkpoints


def save_run_config(cfg: CourseConfig, folder: Path, extra: dict[str, Any]) -> None:
    data = {**cfg.to_dict(), **extra}
    (folder / RUN_CONFIG).write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True),
                                     encoding="utf-8")


# ----------------------------------------------------------------------------- callbacks


#: Seconds between two redraws of the live loss figure in a notebook. A redraw builds the
#: figure, encodes it as PNG and sends it to the page: on a short CPU run, drawing at every log
#: entry was a large part of the training cell's time.
LIVE_PLOT_EVERY_S = 2.0


class RunFilesCallback(TrainerCallback):
    """Writes train_log.jsonl, completes each checkpoint (processor, run config, marker), and
    draws loss.png at the end; with ``live``, also the loss figure in the notebook while it
    trains (at most every :data:`LIVE_PLOT_EVERY_S`, and once more at the end with every
    point). Main process only."""

    def __init__(self, folder: Path, processor: Any, cfg: CourseConfig, extra: dict[str, Any],
                 live: bool = False) -> None:
        self.folder, self.processor, self.cfg, self.extra, self.live = folder, processor, cfg, \
            extra, live
        self.log_path = folder / LOG
        self._display = None
        self._drawn_at = -math.inf  # time.monotonic() of the last live redraw

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        entry = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), **logs}
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
        if self.live and time.monotonic() - self._drawn_at >= LIVE_PLOT_EVERY_S:
            self._draw_live()

    def on_save(self, args, state, control, **kwargs):
        from accelerate import PartialState

        # Every process writes part of a checkpoint (its RNG state, optimizer shards): the
        # manifest is taken only once all of them have finished.
        PartialState().wait_for_everyone()
        if not state.is_world_process_zero:
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if checkpoint.is_dir():
            self.processor.save_pretrained(checkpoint)
            save_run_config(self.cfg, checkpoint, self.extra)
            apply_umask(checkpoint)  # safetensors writes owner-only files
            mark_complete(checkpoint, state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.log_path.exists():
            return
        try:  # matplotlib comes with the course extra; the command line works without it
            import matplotlib.pyplot as plt

            from .plots import loss_curves
        except ImportError:
            print("loss.png was not drawn: matplotlib is not installed (pip install "
                  "'qvl-helpers[course]'); the losses are in train_log.jsonl.")
            return
        fig = loss_curves(read_log(self.log_path))
        fig.savefig(self.folder / "loss.png", dpi=100)
        if self.live:  # the last points may have come after the last throttled redraw
            self._show(fig)
        plt.close(fig)

    def _draw_live(self) -> None:
        import matplotlib.pyplot as plt

        from .plots import loss_curves

        fig = loss_curves(read_log(self.log_path))
        self._show(fig)
        plt.close(fig)

    def _show(self, fig: Any) -> None:
        """Put ``fig`` in the notebook's live figure (the first call makes it)."""
        from IPython.display import display

        if self._display is None:
            self._display = display(fig, display_id=True)
        else:
            self._display.update(fig)
        self._drawn_at = time.monotonic()


# ----------------------------------------------------------------------------- the trainer


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """Where the model predicts a trained token: position ``t`` predicts label ``t + 1``."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def answer_loss(outputs: Any, labels: torch.Tensor,
                num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
    """Cross-entropy over logits computed only at :func:`answer_positions` (the model returns
    them flattened, in row-major order). The same sum over the same tokens as the model's own
    loss, divided by the same count, so the loss and its gradients are unchanged; the logits of
    prompt and image positions, most of a vision sample, are never made."""
    shifted = labels[:, 1:]
    targets = shifted[shifted != IGNORE_INDEX].to(outputs.logits.device)
    total = torch.nn.functional.cross_entropy(outputs.logits.float(), targets, reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else max(targets.numel(), 1)
    return total / count


class CourseTrainer(Trainer):
    """Trainer with the course's guards: a non-finite loss stops the run with an explanation;
    batches are grouped by length; logits only where answers are predicted (``answer_logits``);
    a fault-injection point for the resume tests."""

    def __init__(self, *args: Any, lengths: Sequence[int] | None = None,
                 guard_hint: str = "", answer_logits: bool = False, **kwargs: Any) -> None:
        if answer_logits:
            kwargs["compute_loss_func"] = answer_loss  # the Trainer then passes it the labels
        super().__init__(*args, **kwargs)
        self.lengths = lengths
        self.guard_hint = guard_hint
        self.answer_logits = answer_logits
        if answer_logits:
            # Keep the model's own objective: Qwen2.5-VL declares accepts_loss_kwargs = False, so
            # each micro-batch's loss is its own token mean, divided by the accumulation steps.
            # A compute_loss_func would otherwise switch the Trainer to one token mean over all
            # accumulated micro-batches and devices: another weighting, other gradients.
            self.loss_is_scaled_for_ga = self.model_accepts_loss_kwargs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.answer_logits and "labels" in inputs:
            inputs = {**inputs, "logits_to_keep": answer_positions(inputs["labels"])}
            if not self.model_accepts_loss_kwargs:
                num_items_in_batch = None  # (see __init__)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _get_train_sampler(self, train_dataset=None):
        if self.lengths is None:
            return super()._get_train_sampler(train_dataset)
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return GroupedSampler(self.lengths, batch, self.args.seed)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            raise TrainingError(
                f"the loss became {loss.item()} at step {self.state.global_step + 1}: training "
                "diverged, and every step after this would be wasted.",
                fix=self.guard_hint or "lower lr (for LoRA 1e-4 to 2e-4 is usual).")
        return loss

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if os.environ.get(KILL_DURING_SAVE) == str(self.state.global_step):
            os.kill(os.getpid(), signal.SIGKILL)
        super()._save_optimizer_and_scheduler(output_dir)


def _guard_hint(cfg: CourseConfig, dtype: torch.dtype) -> str:
    hint = f"lower lr (now {cfg.lr}; LoRA usually works at 1e-4 to 2e-4)"
    if dtype == torch.float16:
        hint = ("fp16 overflow is the usual cause on T4/V100 GPUs: " + hint + ", lower "
                "max_pixels, and keep max_grad_norm at 1.0; or use bf16 on a newer GPU")
    return hint + ". Resume from the last checkpoint after changing it."


def _oom_message(cfg: CourseConfig, longest: int) -> str:
    return (f"the GPU ran out of memory with max_pixels {cfg.max_pixels} "
            f"({tokens_in(cfg.max_pixels)} visual tokens per image at most), the longest sample at "
            f"{longest} tokens, batch_size {cfg.batch_size} x grad_accum {cfg.grad_accum}.")


# ----------------------------------------------------------------------------- the steps


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


def recheck_images(prepared: Any, cfg: CourseConfig) -> None:
    """Splits made earlier are re-checked (images may have changed since): the doctor's image
    checks on each split, errors only."""
    from .data import check_file

    for name, path in prepared.files().items():
        report = check_file(path, image_root=prepared.image_root, min_pixels=cfg.min_pixels,
                            max_pixels=cfg.max_pixels, leakage=False)
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
        recheck_images(prepared, cfg)
    budgets = {}
    for name, split in records.items():
        try:
            budget = token_budget(split, processor, min_pixels=cfg.min_pixels,
                                  max_pixels=cfg.max_pixels, max_length=cfg.max_length)
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


def _dry_run_text(cfg: CourseConfig, model_path: str, prepared: Any, budgets: dict[str, Any],
                  targets: list[str], world: int, resume_from: ResumePoint | None,
                  train_records: Sequence[Record]) -> str:
    per_step = cfg.batch_size * cfg.grad_accum * world
    n = prepared.counts.get("train", 0)
    steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(
        math.ceil(n / (cfg.batch_size * world)) / cfg.grad_accum * cfg.num_epochs)
    lines = ["Settings (value, and where it came from):", cfg.describe(), "",
             f"run folder   {run_dir(cfg)}",
             f"model        {model_path}",
             f"data         {prepared.source} -> {prepared.folder}",
             "splits       " + ", ".join(f"{k} {v}" for k, v in prepared.counts.items()),
             "longest      " + ", ".join(f"{k} {max(b.totals, default=0)} tokens"
                                        for k, b in budgets.items()),
             f"LoRA         {len(targets)} linear layers ({cfg.trained})",
             f"steps        about {steps} ({per_step} samples per optimizer step)"]
    if resume_from is not None and resume_from.checkpoint is not None:
        lines.append(f"resume from  {resume_from.checkpoint}")
    lines += ["lean         " + ", ".join(f"{key} {getattr(cfg, key)}" for key in LEAN_SWITCHES),
              f"             packing off: {PACKING_NOTE}", "",
              report_for_run(cfg, model_path, budgets["train"], cuda=torch.cuda.is_available(),
                             is_tiny=cfg.resolve_model().is_tiny, records=train_records)]
    return "\n".join(lines)


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


def ensure_output_folder(cfg: CourseConfig) -> None:
    """``output_dir/runs`` exists and is writable; the error names where output_dir was set."""
    try:
        ensure_folder(Path(cfg.output_dir) / "runs", what="output folder")
    except OutputFolderError as exc:
        raise cfg.error("output_dir", f"{exc.message[:-1]}: {exc.file}.", exc.fix) from None


def check_model(cfg: CourseConfig, say: Any = print) -> tuple[Any, str, list[str]]:
    """The model choice, its loadable path, and the layers LoRA will wrap; refuses a preset
    tuned for the tiny stand-in with a real model, a GPU preset without a GPU where it would
    train the stand-in unasked (:func:`~qvl_helpers.env.gpu_preset_mismatch`), and a LoRA
    pattern that matches nothing, before any weights load."""
    from .env import gpu_preset_mismatch
    from .model import lora_target_names

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


def prepare_model(cfg: CourseConfig, model_path: str, quantization: str, dtype: torch.dtype,
                  local_rank: int, say: Any = print) -> Any:
    """Load the base (4/8/16-bit) on this process's device, add LoRA as ``cfg`` says and guard
    the vision features (:func:`~qvl_helpers.model.check_vision_features`)."""
    from .model import add_lora, check_vision_features, format_parameter_table, load_model, parameter_table

    device_map = {"": local_rank} if torch.cuda.is_available() else None
    model = load_model(model_path, quantization, dtype, device_map=device_map)
    model = add_lora(model, trained=cfg.trained, r=cfg.lora_r, alpha=cfg.lora_alpha,
                     dropout=cfg.lora_dropout, gradient_checkpointing=cfg.gradient_checkpointing,
                     vision_no_grad=cfg.vision_no_grad, frozen_fp32=cfg.frozen_fp32)
    check_vision_features(model)
    say(format_parameter_table(parameter_table(model)))
    return model


def one_device_per_process(args: Any, world: int, say: Any = print) -> None:
    """Train on one GPU per process. A single process that sees several GPUs (Kaggle's 2 × T4,
    a notebook on a multi-GPU server) would otherwise make the Trainer multiply the batch by
    the number of GPUs and wrap a 16-bit model in ``nn.DataParallel``, while a 4-bit model stays
    on one GPU with the multiplied batch. Several GPUs are used by one process each, under
    ``accelerate launch`` (the Trainer itself sets ``_n_gpu = 1`` the same way for a model
    spread over several GPUs)."""
    if world == 1 and args.n_gpu > 1:
        say(f"{args.n_gpu} GPUs are visible; this process trains on the first one. To train on "
            f"all of them, from a terminal: accelerate launch --num_processes {args.n_gpu} "
            "-m qvl_helpers.cli train --config PRESET (configs/README.md).")
        args._n_gpu = 1


def build_trainer(cfg: CourseConfig, model: Any, records: dict[str, list[Record]],
                  collator: Collator, processor: Any, lengths: list[int], dtype: torch.dtype,
                  world: int, extra: dict[str, Any], callbacks: Sequence[TrainerCallback],
                  live_plot: bool, verbose: bool, rank: int,
                  every: tuple[int, int] | None = None) -> CourseTrainer:
    """The Trainer with the course's arguments, datasets, guards and run-files callback;
    ``every``: ``(logging_steps, eval_steps)`` when not the config's (:func:`log_every`)."""
    cuda = torch.cuda.is_available()
    logging_steps, eval_steps = every or (cfg.logging_steps, cfg.eval_steps)
    folder, val = run_dir(cfg), records["val"]
    args = TrainingArguments(
        output_dir=str(folder), per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr, num_train_epochs=cfg.num_epochs, max_steps=cfg.max_steps,
        lr_scheduler_type="cosine", warmup_steps=cfg.warmup, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, logging_steps=logging_steps,
        logging_first_step=True, eval_strategy="steps" if val else "no",
        eval_steps=eval_steps, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit, seed=cfg.seed, data_seed=cfg.seed,
        bf16=dtype == torch.bfloat16, fp16=cuda and dtype == torch.float16,  # CPU: bf16 only
        use_cpu=not cuda, ddp_backend=None if cuda else ("gloo" if world > 1 else None),
        ddp_find_unused_parameters=False, remove_unused_columns=False,
        prediction_loss_only=True,  # evaluation keeps only the loss, never every batch's logits
        dataloader_num_workers=0, report_to="none", disable_tqdm=not verbose or rank != 0,
    )  # gradient checkpointing is enabled by add_lora (non-reentrant), not by the Trainer
    one_device_per_process(args, world)
    run_files = RunFilesCallback(folder, processor, cfg, extra, live=live_plot)
    trainer = CourseTrainer(
        model=model, args=args, train_dataset=RecordDataset(records["train"]),
        eval_dataset=RecordDataset(val) if val else None,
        data_collator=collator, callbacks=[run_files, *callbacks],
        lengths=lengths if cfg.group_by_length else None, guard_hint=_guard_hint(cfg, dtype),
        answer_logits=cfg.answer_logits)
    if not verbose:  # without progress bars the Trainer prints every log dict instead
        trainer.remove_callback(PrinterCallback)
    return trainer


def fit(trainer: CourseTrainer, cfg: CourseConfig, resume_from: ResumePoint | None,
        longest: int) -> Any:
    """``trainer.train`` with out-of-memory and a full disk turned into advice."""
    checkpoint = resume_from.checkpoint if resume_from is not None else None
    try:
        return trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except torch.cuda.OutOfMemoryError:
        raise TrainingError(_oom_message(cfg, longest),
                            fix="lower max_pixels first (it sets the visual tokens), then "
                                "batch_size (raise grad_accum to keep the effective batch), "
                                "then max_length; use 4-bit if you are not already.") from None
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        raise _disk_full_in_run(trainer, cfg) from None


def save_adapter(trainer: CourseTrainer, processor: Any, cfg: CourseConfig,
                 extra: dict[str, Any], identity: dict[str, Any]) -> Path:
    """Write the final adapter atomically (a temporary folder renamed into place) and record
    that the run finished."""
    folder = run_dir(cfg)
    adapter_dir, tmp = folder / ADAPTER, folder / ".adapter.saving"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        trainer.model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        save_run_config(cfg, tmp, extra)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_disk_full(exc):
            raise
        raise _disk_full_in_run(trainer, cfg) from None
    apply_umask(tmp)  # safetensors writes owner-only files
    tmp.rename(adapter_dir)
    write_identity(folder, {**identity, "finished": {"steps": trainer.state.global_step,
                                                     "time": round(time.time(), 3)}})
    return adapter_dir


def _disk_full_in_run(trainer: CourseTrainer, cfg: CourseConfig) -> QVLError:
    """The disk filled up while a checkpoint (or the adapter) was saved: the half-written
    checkpoint of this step is removed, the last complete one stays for ``--resume``."""
    folder = run_dir(cfg)
    partial = folder / f"checkpoint-{trainer.state.global_step}"
    if partial.is_dir() and checkpoint_problem(partial) is not None:
        shutil.rmtree(partial, ignore_errors=True)  # never finished: frees its space
    last = find_resume_checkpoint(folder).checkpoint
    kept = (f"the last complete checkpoint, {last.name}, is kept" if last is not None
            else "no checkpoint was complete yet")
    resume = ("then qvl train --resume (train(cfg, resume=True) in a notebook) continues from it"
              if last is not None else "then run the same training again")
    return disk_full(folder, fix=f"{kept}; free space there (or choose another output_dir), "
                                 f"{resume}.")


# ----------------------------------------------------------------------------- entry point


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
    quantization: str
    dtype: torch.dtype
    identity: dict[str, Any]
    resume_from: ResumePoint | None
    extra: dict[str, Any]


def plan_and_check(cfg: CourseConfig, *, resume: bool, force: bool, state: Any,
                   verbose: bool = True, say: Any = print) -> RunPlan | TrainResult:
    """Every check of a run, in order, before any work (see the module docstring); a finished
    run that ``resume`` leaves alone comes back as its :class:`TrainResult`."""
    from .data import load_records, prepare_data
    from .model import load_processor

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
    processor = load_processor(model_path)
    budgets = preflight(cfg, prepared, records, processor, say)
    collator = train_collator(cfg, processor, records["train"])
    quantization, dtype = resolve_quantization(cfg), resolve_dtype(cfg)
    resolved = {"quantization": quantization, "dtype": str(dtype).removeprefix("torch."),
                "world_size": state.num_processes}
    identity = build_identity(cfg, model_name=choice.name, model_path=model_path,
                              prepared=prepared, resolved=resolved)
    if resume:
        cfg, resume = check_same_run(cfg, identity, force=force, say=say)
    extra = {"resolved": {**resolved, "model_path": model_path, "data_folder": str(prepared.folder),
                          **{f"{k}_records": len(v) for k, v in records.items()},
                          "image_root": str(prepared.image_root)}}
    return RunPlan(cfg, model_path, targets, prepared, records, processor, budgets, collator,
                   quantization, dtype, identity, resume_point(cfg) if resume else None, extra)


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
    rank, world = state.process_index, state.num_processes
    plan = plan_and_check(cfg, resume=resume, force=force, state=state, verbose=verbose, say=say)
    if isinstance(plan, TrainResult):
        return plan
    if plan.cfg.run_name != cfg.run_name:
        hold(plan.cfg)
    cfg, folder = plan.cfg, run_dir(plan.cfg)
    if dry_run:
        say(_dry_run_text(cfg, plan.model_path, plan.prepared, plan.budgets, plan.targets, world,
                          plan.resume_from, plan.records["train"]))
        if time_steps:
            say(time_estimate(plan, world, state, time_steps).text())
        say("\nDry run: everything checked; nothing was trained.")
        return TrainResult(folder, folder / ADAPTER, 0, None, 0.0, False)
    state.wait_for_everyone()  # every process has planned before the main one changes anything
    if rank == 0:
        open_run_folder(folder, plan.identity, plan.resume_from, cfg, plan.extra, say)
    state.wait_for_everyone()
    model = prepare_model(cfg, plan.model_path, plan.quantization, plan.dtype,
                          state.local_process_index, say)
    lengths = plan.budgets["train"].totals
    trainer = build_trainer(cfg, model, plan.records, plan.collator, plan.processor, lengths,
                            plan.dtype, world, plan.extra, callbacks, live_plot, verbose, rank,
                            every=log_every(run_steps(plan), cfg.logging_steps, cfg.eval_steps))
    start = time.time()
    output = fit(trainer, cfg, plan.resume_from, max(lengths))
    result = TrainResult(folder, folder / ADAPTER, trainer.state.global_step,
                         _finite(output.training_loss if output else None), time.time() - start,
                         start_step=plan.resume_from.step if plan.resume_from else 0)
    if trainer.is_world_process_zero():
        save_adapter(trainer, plan.processor, cfg, plan.extra, plan.identity)
    _write_rank_report(folder, rank, world, plan.collator, result.steps)
    say(result.summary())
    del trainer, model
    _free_memory()  # a notebook goes on to load the model again for evaluation
    return result


def _free_memory() -> None:
    """Collect the reference cycles that keep a finished model alive (accelerate's wrapped
    forward, the no-grad vision tower) and hand the GPU's cached blocks back."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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


def run_steps(plan: RunPlan) -> int:
    """Optimizer steps of the planned run (``max_steps``, else from the epochs)."""
    cfg, world = plan.cfg, plan.extra["resolved"]["world_size"]
    if cfg.max_steps > 0:
        return cfg.max_steps
    batches = math.ceil(len(plan.records["train"]) / (cfg.batch_size * world))
    return math.ceil(batches / cfg.grad_accum * cfg.num_epochs)


def time_estimate(plan: RunPlan, world: int, state: Any, steps: int = 3) -> TimeEstimate:
    """Train ``steps + 1`` steps on training samples in random order, in a temporary folder (the
    first step is a warm-up), and extrapolate to the whole run. Nothing of the run is written
    or changed, and the model is freed before returning (the real run loads its own)."""
    import tempfile

    timer, trainer, model = StepTimer(), None, None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = plan.cfg.model_copy(update={
                "output_dir": Path(tmp), "max_steps": steps + 1, "group_by_length": False,
                "eval_steps": 10 ** 9, "save_steps": 10 ** 9, "logging_steps": 10 ** 9})
            run_dir(cfg).mkdir(parents=True)
            model = prepare_model(cfg, plan.model_path, plan.quantization, plan.dtype,
                                  state.local_process_index, say=lambda *a, **k: None)
            trainer = build_trainer(cfg, model, {**plan.records, "val": []}, plan.collator,
                                    plan.processor, plan.budgets["train"].totals, plan.dtype,
                                    world, plan.extra, [timer], False, False,
                                    state.process_index)
            fit(trainer, cfg, None, max(plan.budgets["train"].totals))
    finally:
        plan.collator.reset_counts()
        del trainer, model
        _free_memory()
    return TimeEstimate(run_steps(plan), timer.seconds)


def newest_run_or_train(cfg: CourseConfig, *, prefix: str = "nb",
                        say: Callable[..., Any] = print) -> Path:
    """The newest finished run under ``cfg.output_dir`` (runs named ``*-demo`` are left out), or,
    when there is none (a notebook opened on its own), a new one trained with the preset
    ``qvl env`` recommends for this machine, named ``PREFIX-<time>``."""
    from .config import PRESETS_DIR, load_config
    from .env import detect_gpus, recommend
    from .runs import finished_runs

    runs = [r for r in finished_runs(cfg.output_dir) if not r.name.endswith("-demo")]
    if runs:
        return runs[0]
    preset = PRESETS_DIR / f"{recommend(detect_gpus()).preset}.yaml"
    say(f"No finished run in {cfg.output_dir}/runs yet: training one with {preset.name} first.")
    name = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    return train(load_config(presets=[preset], run_name=name), live_plot=True).run_dir


def _finite(loss: float | None) -> float | None:
    return None if loss is None or math.isnan(loss) else loss


def simulate_disconnect(preset: str | Path, sets: dict[str, Any], *, after_step: int,
                        timeout: float = 600) -> Path:
    """Start ``qvl train --config PRESET --set ...`` in another process and kill it (SIGKILL,
    as a lost Colab session would) once the checkpoint of ``after_step`` is complete. Returns
    the run folder; ``train(cfg, resume=True)`` then continues it.

    Raises:
        TrainingError: the run ended, or the checkpoint did not appear within ``timeout`` s.
    """
    import subprocess
    import sys

    from .config import load_config
    from .processes import child_process
    from .runs import COMPLETE_MARKER

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


def _write_rank_report(folder: Path, rank: int, world: int, collator: Collator,
                       steps: int) -> None:
    """One small file per process, so that a multi-process run can show every rank worked."""
    ranks = ensure_folder(folder / "ranks")
    write_json(ranks / f"rank-{rank}.json", {"rank": rank, "world_size": world,
                                             "samples_collated": collator.samples_seen,
                                             "steps": steps})
