"""The Hugging Face Trainer, wired to the course's data, guards and run folder.

:func:`prepare_model` loads the base (4-bit, 8-bit or 16-bit) with LoRA on the chosen parts;
:func:`build_trainer` makes a :class:`CourseTrainer` (a non-finite loss stops the run with the
cause, batches grouped by length, logits only where answers are predicted) with a cosine schedule,
warmup, validation loss and checkpoints; :class:`RunFilesCallback` writes the run's files as it
goes (train_log.jsonl, each checkpoint's processor, run config and completion marker, loss.png);
:func:`fit` turns out-of-memory and a full disk into advice, and :func:`save_adapter` writes the
final adapter atomically. The same code runs under ``accelerate launch`` / ``torchrun``.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from .collate import IGNORE_INDEX
from .config import CourseConfig
from .data.records import Record
from .errors import QVLError, TrainingError
from .fixes import out_of_memory_fix
from .outputs import apply_umask, disk_full, is_disk_full
from .qwen import tokens_in
from .runs import (
    ADAPTER,
    LOG,
    RUN_CONFIG,
    ResumePoint,
    checkpoint_problem,
    find_resume_checkpoint,
    mark_complete,
    read_log,
    run_dir,
    write_identity,
)

if TYPE_CHECKING:
    from .run_plan import RunPlan

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


def save_run_config(cfg: CourseConfig, folder: Path, extra: dict[str, Any]) -> None:
    data = {**cfg.to_dict(), **extra}
    (folder / RUN_CONFIG).write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True),
                                     encoding="utf-8")


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
    batches are grouped by length; logits only where answers are predicted (``answer_logits``)."""

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


def prepare_model(plan: RunPlan, local_rank: int, say: Any = print) -> Any:
    """Load the planned base (4/8/16-bit) on this process's device, add LoRA as the plan's
    settings say and guard the vision features
    (:func:`~qvl_helpers.lora.check_vision_features`)."""
    from .lora import add_lora, check_vision_features
    from .model import format_parameter_table, load_model, parameter_table

    cfg = plan.cfg
    device_map = {"": local_rank} if torch.cuda.is_available() else None
    model = load_model(plan.model_path, plan.quantization, plan.dtype, device_map=device_map)
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


def build_trainer(plan: RunPlan, model: Any, *, rank: int,
                  callbacks: Sequence[TrainerCallback] = (), live_plot: bool = False,
                  verbose: bool = True, every: tuple[int, int] | None = None) -> CourseTrainer:
    """The Trainer for ``plan`` with the course's arguments, datasets, guards and run-files
    callback. ``callbacks`` see each event before the run's own files are written (a checkpoint
    is marked complete after all of them); ``every``: ``(logging_steps, eval_steps)`` when not
    the config's (:func:`~qvl_helpers.run_plan.log_every`)."""
    cfg, records, dtype, world = plan.cfg, plan.records, plan.dtype, plan.world_size
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
    run_files = RunFilesCallback(folder, plan.processor, cfg, plan.extra, live=live_plot)
    trainer = CourseTrainer(
        model=model, args=args, train_dataset=RecordDataset(records["train"]),
        eval_dataset=RecordDataset(val) if val else None,
        data_collator=plan.collator, callbacks=[*callbacks, run_files],
        lengths=plan.lengths if cfg.group_by_length else None, guard_hint=_guard_hint(cfg, dtype),
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
        raise TrainingError(_oom_message(cfg, longest), fix=out_of_memory_fix() + ".") from None
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
