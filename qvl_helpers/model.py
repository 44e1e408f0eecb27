"""Loading the model and its processor, and seeing what is in it (LoRA on it: :mod:`~qvl_helpers.lora`).

Module names follow transformers 5.x: ``model.model.visual`` (vision tower: patch embedding,
blocks, merger), ``model.model.language_model`` and ``model.lm_head``. With PEFT the same names
appear below ``base_model.model.``. transformers loads (with bitsandbytes for 4/8-bit), PEFT adds
the adapters; this module only decides the settings and says what it decided.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, ModelError
from .resolved import DTYPE_NAMES, compute_dtype_name

COMPONENTS = ("vision tower", "merger", "language model", "lm_head")


def component_of(param_name: str) -> str:
    """Which part of Qwen2.5-VL a parameter belongs to, from its (possibly PEFT-prefixed) name."""
    if ".visual.merger." in f".{param_name}" or param_name.startswith("visual.merger."):
        return "merger"
    if ".visual." in f".{param_name}":
        return "vision tower"
    if "lm_head" in param_name:
        return "lm_head"
    return "language model"


@dataclass
class ParamRow:
    component: str
    total: int
    trainable: int
    note: str = ""

    @property
    def percent_trainable(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0


def parameter_table(model: Any) -> list[ParamRow]:
    """Total and trainable parameters per component, plus an ``all`` row.

    Tied weights (the 3B and the tiny model share ``lm_head`` with the token embedding) are
    counted once, under the component where they first appear.
    """
    rows = {c: ParamRow(c, 0, 0) for c in COMPONENTS}
    seen: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            rows[component_of(name)].note = f"tied to {seen[id(param)].removeprefix('base_model.')}"
            continue
        seen[id(param)] = name
        row = rows[component_of(name)]
        n = param.numel()
        if hasattr(param, "quant_state") and getattr(param, "quant_storage", None) is not None:
            n *= 2  # bitsandbytes packs two 4-bit weights per byte
        row.total += n
        row.trainable += n if param.requires_grad else 0
    table = list(rows.values())
    table.append(ParamRow("all", sum(r.total for r in table), sum(r.trainable for r in table)))
    return table


def format_parameter_table(table: list[ParamRow]) -> str:
    """The table as aligned text (works in a terminal and a notebook)."""
    lines = [f"{'component':<16}{'parameters':>16}{'trainable':>16}{'% trained':>11}"]
    for r in table:
        line = f"{r.component:<16}{r.total:>16,}{r.trainable:>16,}{r.percent_trainable:>10.2f}%"
        lines.append(line + (f"  ({r.note})" if r.note else ""))
    return "\n".join(lines)


def machine_facts() -> dict[str, bool]:
    """What the settings' ``auto`` choices depend on here (:func:`~qvl_helpers.resolved.resolve`):
    a CUDA GPU, and whether it computes in bf16."""
    import torch

    cuda = torch.cuda.is_available()
    return {"cuda": cuda, "bf16_supported": cuda and torch.cuda.is_bf16_supported()}


def torch_dtype(name: str) -> Any:
    """The torch dtype of a compute dtype name (``bf16``, ``fp16``, ``fp32``)."""
    import torch

    return getattr(torch, DTYPE_NAMES[name])


def compute_dtype() -> Any:
    """What ``dtype: auto`` computes in on this machine: bf16 on GPUs that support it, fp16 on
    older ones (T4, V100), fp32 on the CPU (:func:`~qvl_helpers.resolved.compute_dtype_name`)."""
    return torch_dtype(compute_dtype_name("auto", **machine_facts()))


def attention_implementation() -> str:
    """flash_attention_2 where it is installed and a CUDA GPU supports it, SDPA otherwise."""
    import importlib.util

    import torch

    if (importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()
            and torch.cuda.get_device_capability()[0] >= 8):
        return "flash_attention_2"
    return "sdpa"


@contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers' per-weight "Loading weights"/"Writing model shards" bars off for one call:
    in a saved notebook they stay frozen at 0%, and the course prints what was loaded itself."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


@contextmanager
def quiet_upstream_deprecations() -> Iterator[None]:
    """PEFT 0.21 probes ``model.is_gradient_checkpointing``, which transformers 5 deprecates with
    a FutureWarning the learner cannot act on; only that message, only inside our calls."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                category=FutureWarning)
        yield


def load_processor(path: str | Path) -> Any:
    """``AutoProcessor.from_pretrained(path)``; a missing or broken folder becomes a
    :class:`~qvl_helpers.errors.ModelError` naming it."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise load_error(path, "processor", exc) from None


def load_error(path: str | Path, what: str, exc: Exception) -> ModelError:
    local = Path(str(path)).exists()
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    fix = ("check that the folder holds a saved model (config.json, safetensors weights, "
           "processor files)" if local else
           "check the model name, or download it first while online (`hf download NAME`); "
           "offline, only cached models load")
    return ModelError(f"cannot load the {what} ({first}).", file=str(path), fix=fix + ".")


PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def refuse_pickled_weights(path: str | Path) -> None:
    """Refuse a local model folder whose weights are only pickled files (``pytorch_model.bin``
    and the like): unpickling can run any code the file's author wrote. Hub ids are left to
    ``from_pretrained(use_safetensors=True)``, which refuses them the same way.

    Raises:
        ModelError: the folder has pickled weights and no ``*.safetensors`` file.
    """
    folder = Path(str(path))
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for pattern in PICKLED_WEIGHTS for p in folder.glob(pattern))
    if pickled:
        raise ModelError(f"the weights are pickled ({', '.join(pickled[:3])}) and the course "
                         "loads only safetensors: unpickling a file can run code hidden in it.",
                         file=folder,
                         fix="use a safetensors copy of the model (every Qwen2.5-VL release has "
                             "one), or, for weights you trust, convert them once with "
                             "`model.save_pretrained(folder)`, which writes safetensors.")


def load_model(path: str, quantization: str = "4bit", dtype: Any = None,
               device_map: Any = None) -> Any:
    """Load Qwen2.5-VL for LoRA training.

    ``quantization``: ``"4bit"`` (QLoRA: NF4, double quantization, compute in ``dtype``),
    ``"8bit"`` or ``"none"`` (16-bit LoRA; fp32 on CPU). The vision tower and ``lm_head`` are
    never quantized (quantizing them costs quality and saves little).

    Raises:
        ModelError: the folder or hub id cannot be loaded (named, with what to do).
    """
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    dtype = dtype or compute_dtype()
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attention_implementation()}
    # transformers 5.x matches these from the start of the module name (or as a suffix), not as
    # substrings: "visual" alone would NOT keep model.visual out of quantization.
    skip = ["model.visual", "lm_head"]
    if quantization == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype, llm_int8_skip_modules=skip)
    elif quantization == "8bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True,
                                                           llm_int8_skip_modules=skip)
    elif quantization != "none":
        raise ConfigError(f"quantization must be 4bit, 8bit or none, not {quantization!r}.")
    if device_map is not None:
        kwargs["device_map"] = device_map
    refuse_pickled_weights(path)
    try:
        with quiet_loading():
            # safetensors only: a pickled .bin checkpoint can run code while it loads.
            return AutoModelForImageTextToText.from_pretrained(path, use_safetensors=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise load_error(path, "model", exc) from None


def free_memory() -> None:
    """Collect the reference cycles that keep a finished model alive (accelerate's wrapped
    forward, the no-grad vision tower) and hand the GPU's cached blocks back."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
