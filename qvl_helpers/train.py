"""Training: the Hugging Face Trainer wired to the course's data, collator, guards and layout.

``train(cfg)`` prepares what is missing (checked, leakage-free splits under ``outputs/data``),
refuses a run that could not work (over-long samples, nothing to train), loads the model (4-bit,
8-bit or 16-bit) with LoRA on the chosen parts, and trains with a cosine schedule, warmup,
validation loss and checkpoints. Everything lands under ``outputs/runs/NAME/``::

    checkpoint-N/   adapter, optimizer, scheduler, RNG state, processor, run_config.yaml,
                    and a completion marker written last
    adapter/        the final LoRA adapter + processor + run_config.yaml
    train_log.jsonl one JSON object per log step; loss.png; run_config.yaml

The same code runs under ``accelerate launch`` / ``torchrun`` on several GPUs (or CPU processes).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import Trainer, TrainerCallback, TrainingArguments

from .collate import Collator, length_grouped_order, make_collator
from .config import CourseConfig, ensure_model
from .errors import DatasetError, OutputExistsError, QVLError

COMPLETE_MARKER = "qvl_checkpoint_complete.json"
RUN_CONFIG = "run_config.yaml"
#: Fault-injection point for the resume tests: SIGKILL this process while it writes the
#: checkpoint of this step (after the weights, before the optimizer and trainer state).
KILL_DURING_SAVE = "QVL_KILL_DURING_SAVE_AT_STEP"


class TrainingError(QVLError):
    """Training stopped for a reason the learner can act on."""


# ----------------------------------------------------------------------------- data and setup


class RecordDataset(torch.utils.data.Dataset):
    """Canonical records as a map-style dataset; the collator does all processing."""

    def __init__(self, records: Sequence[dict[str, Any]]) -> None:
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.records[index]


class GroupedSampler(torch.utils.data.Sampler):
    """Batches of similar length (see :func:`~qvl_helpers.collate.length_grouped_order`),
    reshuffled each epoch, reproducible from the seed."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        return iter(length_grouped_order(self.lengths, self.batch_size, self.seed + self.epoch))


def run_dir(cfg: CourseConfig) -> Path:
    return Path(cfg.output_dir) / "runs" / cfg.run_name


def resolve_quantization(cfg: CourseConfig) -> str:
    if cfg.quantization != "auto":
        return cfg.quantization
    return "4bit" if torch.cuda.is_available() else "none"


def resolve_dtype(cfg: CourseConfig) -> torch.dtype:
    from .model import compute_dtype

    if not torch.cuda.is_available():
        return torch.float32  # CPU training is float32 whatever the preset says
    named = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    return compute_dtype() if cfg.dtype == "auto" else named[cfg.dtype]


def check_labels(collator: Collator, records: Sequence[dict[str, Any]], sample: int = 16) -> int:
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


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / COMPLETE_MARKER).is_file() and (checkpoint / "trainer_state.json").is_file()


def find_resume_checkpoint(folder: Path, *, set_aside: bool = True) -> Path | None:
    """The newest complete checkpoint in ``folder``. Incomplete ones (a process killed while
    saving) are renamed ``incomplete-checkpoint-N`` (kept, never deleted) and skipped."""
    found = []
    for path in folder.glob("checkpoint-*"):
        step = path.name.rsplit("-", 1)[-1]
        if path.is_dir() and step.isdigit():
            found.append((int(step), path))
    for _, path in sorted(found, reverse=True):
        if is_complete(path):
            return path
        if set_aside:
            target = path.with_name(f"incomplete-{path.name}-{int(time.time())}")
            print(f"{path.name} is incomplete (the process stopped while saving it); kept as "
                  f"{target.name} and skipped.")
            path.rename(target)
    return None


def save_run_config(cfg: CourseConfig, folder: Path, extra: dict[str, Any]) -> None:
    data = {**cfg.to_dict(), **extra}
    (folder / RUN_CONFIG).write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True),
                                     encoding="utf-8")


# ----------------------------------------------------------------------------- callbacks


class RunFilesCallback(TrainerCallback):
    """Writes train_log.jsonl, completes each checkpoint (processor, run config, marker), and
    draws loss.png at the end. Main process only."""

    def __init__(self, folder: Path, processor: Any, cfg: CourseConfig, extra: dict[str, Any],
                 live: bool = False) -> None:
        self.folder, self.processor, self.cfg, self.extra, self.live = folder, processor, cfg, \
            extra, live
        self.log_path = folder / "train_log.jsonl"
        self._display = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        entry = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), **logs}
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
        if self.live:
            self._draw_live()

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if checkpoint.is_dir():
            self.processor.save_pretrained(checkpoint)
            save_run_config(self.cfg, checkpoint, self.extra)
            (checkpoint / COMPLETE_MARKER).write_text(
                json.dumps({"step": state.global_step, "time": time.time()}) + "\n")

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.log_path.exists():
            from .plots import loss_curves

            fig = loss_curves(read_log(self.log_path))
            fig.savefig(self.folder / "loss.png", dpi=100)
            import matplotlib.pyplot as plt

            plt.close(fig)

    def _draw_live(self) -> None:
        import matplotlib.pyplot as plt
        from IPython.display import display

        from .plots import loss_curves

        fig = loss_curves(read_log(self.log_path))
        if self._display is None:
            self._display = display(fig, display_id=True)
        else:
            self._display.update(fig)
        plt.close(fig)


def read_log(path: Path) -> list[dict[str, Any]]:
    """The entries of a train_log.jsonl."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


# ----------------------------------------------------------------------------- the trainer


class CourseTrainer(Trainer):
    """Trainer with the course's guards: a non-finite loss stops the run with an explanation;
    batches are grouped by length; a fault-injection point for the resume tests."""

    def __init__(self, *args: Any, lengths: Sequence[int] | None = None,
                 guard_hint: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lengths = lengths
        self.guard_hint = guard_hint

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
            f"({cfg.max_pixels // 784} visual tokens per image at most), the longest sample at "
            f"{longest} tokens, batch_size {cfg.batch_size} x grad_accum {cfg.grad_accum}.")


# ----------------------------------------------------------------------------- entry point


@dataclass
class TrainResult:
    run_dir: Path
    adapter: Path
    steps: int
    train_loss: float | None
    seconds: float


def _world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def train(cfg: CourseConfig, *, resume: bool = False, live_plot: bool = False,
          callbacks: Sequence[TrainerCallback] = (), verbose: bool = True) -> TrainResult:
    """Fine-tune with LoRA as ``cfg`` says and return where everything went.

    Raises:
        DatasetError: the data has problems, or samples exceed max_length.
        OutputExistsError: the run folder holds an earlier run and ``resume`` is False.
        TrainingError: nothing to train, a non-finite loss, or out of GPU memory.
    """
    from transformers import AutoProcessor

    from .data import load_records, prepare_data
    from .model import add_lora, format_parameter_table, load_model, parameter_table
    from .tokens import token_budget

    rank, world = _world()
    say = print if (verbose and rank == 0) else (lambda *a, **k: None)
    folder = run_dir(cfg)
    adapter_dir = folder / "adapter"
    checkpoint = None
    if resume:
        checkpoint = find_resume_checkpoint(folder, set_aside=rank == 0)
        if checkpoint is None:
            raise TrainingError("there is no complete checkpoint to resume from.", file=folder,
                                fix="start the run without --resume.")
        say(f"Resuming from {checkpoint}")
        if rank == 0:
            _trim_log(folder / "train_log.jsonl", int(checkpoint.name.rsplit("-", 1)[-1]))
    elif folder.exists() and (adapter_dir.exists() or any(folder.glob("checkpoint-*"))):
        raise OutputExistsError(f"the run {cfg.run_name!r} already exists.", file=folder,
                                fix="pass --resume to continue it, or set another run_name "
                                    "(nothing was overwritten).")
    # Several processes (accelerate/torchrun): all have checked the folder above before any
    # writes to it; then the main process prepares the data while the others wait.
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    state.wait_for_everyone()
    with state.main_process_first():
        prepared = prepare_data(cfg, verbose=verbose and rank == 0)
    train_records = load_records(prepared.train, image_root=prepared.image_root)
    val_records = load_records(prepared.val, image_root=prepared.image_root)
    model_path = ensure_model(cfg.resolve_model())
    processor = AutoProcessor.from_pretrained(model_path)
    budget = token_budget(train_records, processor, min_pixels=cfg.min_pixels,
                          max_pixels=cfg.max_pixels, max_length=cfg.max_length)
    if budget.too_long and cfg.on_too_long == "error":
        raise DatasetError(" ".join(budget.advice()), file=prepared.train,
                           sample_id=budget.too_long[0].id,
                           fix="follow the advice above, or set on_too_long: drop to skip them.")
    collator = make_collator(processor, "train", min_pixels=cfg.min_pixels,
                             max_pixels=cfg.max_pixels, max_length=cfg.max_length,
                             on_too_long=cfg.on_too_long)
    check_labels(collator, train_records)
    collator.samples_seen = 0  # count training batches only from here

    quantization, dtype = resolve_quantization(cfg), resolve_dtype(cfg)
    device_map = {"": int(os.environ.get("LOCAL_RANK", 0))} if torch.cuda.is_available() else None
    model = load_model(model_path, quantization, dtype, device_map=device_map)
    model = add_lora(model, trained=cfg.trained, r=cfg.lora_r, alpha=cfg.lora_alpha,
                     dropout=cfg.lora_dropout, gradient_checkpointing=cfg.gradient_checkpointing)
    say(format_parameter_table(parameter_table(model)))

    folder.mkdir(parents=True, exist_ok=True)
    extra = {"resolved": {"model_path": model_path, "quantization": quantization,
                          "dtype": str(dtype).removeprefix("torch."), "world_size": world,
                          "train_records": len(train_records), "val_records": len(val_records),
                          "image_root": str(prepared.image_root)}}
    if rank == 0:
        save_run_config(cfg, folder, extra)
    cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(folder), per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr, num_train_epochs=cfg.num_epochs, max_steps=cfg.max_steps,
        lr_scheduler_type="cosine", warmup_steps=cfg.warmup, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, logging_steps=cfg.logging_steps,
        logging_first_step=True, eval_strategy="steps" if val_records else "no",
        eval_steps=cfg.eval_steps, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit, seed=cfg.seed, data_seed=cfg.seed,
        bf16=cuda and dtype == torch.bfloat16, fp16=cuda and dtype == torch.float16,
        use_cpu=not cuda, ddp_backend=None if cuda else ("gloo" if world > 1 else None),
        ddp_find_unused_parameters=False, remove_unused_columns=False,
        dataloader_num_workers=0, report_to="none", disable_tqdm=not verbose or rank != 0,
    )  # gradient checkpointing is enabled by add_lora (non-reentrant), not by the Trainer
    run_files = RunFilesCallback(folder, processor, cfg, extra, live=live_plot)
    trainer = CourseTrainer(
        model=model, args=args, train_dataset=RecordDataset(train_records),
        eval_dataset=RecordDataset(val_records) if val_records else None,
        data_collator=collator, callbacks=[run_files, *callbacks],
        lengths=budget.totals if cfg.group_by_length else None,
        guard_hint=_guard_hint(cfg, dtype))
    start = time.time()
    try:
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except torch.cuda.OutOfMemoryError:
        raise TrainingError(_oom_message(cfg, max(budget.totals)),
                            fix="lower max_pixels first (it sets the visual tokens), then "
                                "batch_size (raise grad_accum to keep the effective batch), "
                                "then max_length; use 4-bit if you are not already.") from None
    seconds = time.time() - start
    if trainer.is_world_process_zero():
        tmp = folder / ".adapter.saving"
        shutil.rmtree(tmp, ignore_errors=True)
        trainer.model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        save_run_config(cfg, tmp, extra)
        if adapter_dir.exists():
            shutil.rmtree(adapter_dir)  # the earlier final adapter of this same run (resumed)
        tmp.rename(adapter_dir)
    _write_rank_report(folder, rank, world, collator, trainer.state.global_step)
    loss = output.training_loss if output else None
    say(f"Trained {trainer.state.global_step} steps in {seconds:.0f} s; adapter: {adapter_dir}")
    return TrainResult(folder, adapter_dir, trainer.state.global_step,
                       None if loss is None or math.isnan(loss) else loss, seconds)


def _trim_log(path: Path, step: int) -> None:
    """Drop log entries after the checkpoint a run resumes from (they will be logged again)."""
    if path.exists():
        kept = [e for e in read_log(path) if e.get("step", 0) <= step]
        path.write_text("".join(json.dumps(e) + "\n" for e in kept), encoding="utf-8")


def _write_rank_report(folder: Path, rank: int, world: int, collator: Collator,
                       steps: int) -> None:
    """One small file per process, so that a multi-process run can show every rank worked."""
    ranks = folder / "ranks"
    ranks.mkdir(exist_ok=True)
    (ranks / f"rank-{rank}.json").write_text(json.dumps(
        {"rank": rank, "world_size": world, "samples_collated": collator.samples_seen,
         "steps": steps}) + "\n")

