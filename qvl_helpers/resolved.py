"""The settings' ``auto`` choices and derived numbers for one machine, made once.

``quantization: auto`` and ``dtype: auto`` mean different things on a T4, an A100 and a CPU, and
how many optimizer steps a run takes depends on its data and on how many processes train
together. :func:`resolve` makes those choices once, from the settings and the machine's facts,
into a :class:`Resolved`: training runs with it (``run_plan.RunPlan.resolved``), and the dry
run, the memory estimate and ``qvl env`` report it. Nothing here imports torch: the machine's
facts come in as arguments.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from .errors import count

#: The compute dtypes by the names settings use, and their torch names (run.json, reports).
DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def compute_dtype_name(setting: str, *, cuda: bool, bf16_supported: bool = True) -> str:
    """What ``dtype: SETTING`` trains in: ``bf16``, ``fp16`` or ``fp32``. On a GPU ``auto`` is
    bf16 where the GPU supports it (compute capability 8.0+) and fp16 otherwise; a CPU trains in
    float32, or in bf16 mixed precision when ``bf16`` is asked for (fp16 needs a GPU)."""
    if not cuda:
        return "bf16" if setting == "bf16" else "fp32"
    if setting == "auto":
        return "bf16" if bf16_supported else "fp16"
    return setting


def quantization_name(setting: str, *, cuda: bool) -> str:
    """What ``quantization: SETTING`` loads the base in: ``auto`` is 4-bit (QLoRA) on a CUDA GPU
    and 16-bit on a CPU (bitsandbytes' CPU kernels are slow; ``4bit`` runs them when asked)."""
    if setting != "auto":
        return setting
    return "4bit" if cuda else "none"


def optimizer_steps(cfg: Any, train_records: int, world_size: int = 1) -> int:
    """Optimizer steps of a run, as the Trainer counts them: ``max_steps`` when set, else each
    epoch's batches per process (``batch_size`` records each, the last one short) in groups of
    ``grad_accum`` (the last group short, at least one step an epoch), times ``num_epochs``
    (rounded up: a fraction of an epoch is a fraction of its steps)."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    batches = math.ceil(train_records / (cfg.batch_size * world_size))
    return math.ceil(cfg.num_epochs * max(1, math.ceil(batches / cfg.grad_accum)))


@dataclass(frozen=True)
class Resolved:
    """What a run of the settings does on one machine (see :func:`resolve`)."""

    cuda: bool                   # the machine trains on a CUDA GPU
    quantization: str            # 4bit | 8bit | none
    dtype: str                   # bf16 | fp16 | fp32 (the compute dtype)
    world_size: int              # processes training together (torchrun / accelerate launch)
    samples_per_step: int        # batch_size x grad_accum x world_size
    steps: int | None = None     # optimizer steps, once the training split's size is known

    @property
    def torch_dtype_name(self) -> str:
        """The compute dtype as torch names it (``bfloat16``, ``float16``, ``float32``)."""
        return DTYPE_NAMES[self.dtype]

    def identity(self) -> dict[str, Any]:
        """What of it makes a run *this* run (``run.json``'s ``resolved``; see runs.py)."""
        return {"quantization": self.quantization, "dtype": self.torch_dtype_name,
                "world_size": self.world_size}

    def lines(self) -> list[str]:
        """The resolved choices as the dry run and ``qvl env`` print them."""
        quantized = {"4bit": "4-bit NF4 (QLoRA)", "8bit": "8-bit (LoRA)"}
        out = [f"quantization {quantized.get(self.quantization, 'none (16-bit LoRA)')}",
               f"compute      {self.torch_dtype_name}"]
        if self.steps is not None:
            out.append(f"steps        about {self.steps} ({self.samples_per_step} samples per "
                       f"optimizer step, {count(self.world_size, 'process', 'processes')})")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve(cfg: Any, *, cuda: bool, bf16_supported: bool = True, world_size: int = 1,
            train_records: int | None = None) -> Resolved:
    """The ``auto`` choices of ``cfg`` (a :class:`~qvl_helpers.config.CourseConfig`) on a
    machine with or without a CUDA GPU (``bf16_supported``: that GPU computes in bf16), trained
    by ``world_size`` processes on ``train_records`` records (None: not known yet)."""
    steps = None if train_records is None else optimizer_steps(cfg, train_records, world_size)
    return Resolved(cuda=cuda, quantization=quantization_name(cfg.quantization, cuda=cuda),
                    dtype=compute_dtype_name(cfg.dtype, cuda=cuda, bf16_supported=bf16_supported),
                    world_size=world_size,
                    samples_per_step=cfg.batch_size * cfg.grad_accum * world_size, steps=steps)
