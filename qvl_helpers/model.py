"""Loading the model, choosing what LoRA trains, and seeing what is in it.

Module names follow transformers 5.x: ``model.model.visual`` (vision tower: patch embedding,
blocks, merger), ``model.model.language_model`` and ``model.lm_head``. With PEFT the same names
appear below ``base_model.model.``. transformers loads (with bitsandbytes for 4/8-bit), PEFT adds
the adapters; this module only decides the settings and says what it decided.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


# ----------------------------------------------------------------------------- what LoRA trains

#: The language model's attention and MLP projections, by full-name pattern: a bare list of names
#: would also catch the vision MLP's gate/up/down_proj.
LANGUAGE = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
VISION = r".*visual\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(gate|up|down)_proj)"
TRAINED_PARTS = {
    "language": (LANGUAGE, []),
    "language+vision": (f"({LANGUAGE}|{VISION})", []),
    "language+merger": (LANGUAGE, ["merger"]),
}


def lora_targets(trained: str) -> tuple[str, list[str]]:
    """(regex of LoRA target modules, modules trained in full) for a preset name or a custom
    regex (matched against full module names)."""
    if trained in TRAINED_PARTS:
        return TRAINED_PARTS[trained]
    import re

    try:
        re.compile(trained)
    except re.error as exc:
        from .errors import ConfigError

        raise ConfigError(f"trained: {trained!r} is neither a preset ({', '.join(TRAINED_PARTS)})"
                          f" nor a valid regex ({exc}).", fix="use a preset name.") from None
    return trained, []


def compute_dtype(device: str | None = None) -> Any:
    """bf16 on GPUs that support it (compute capability 8.0+), fp16 on older ones (T4, V100),
    fp32 on the CPU."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def attention_implementation() -> str:
    """flash_attention_2 where it is installed and a CUDA GPU supports it, SDPA otherwise."""
    import importlib.util

    import torch

    if (importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()
            and torch.cuda.get_device_capability()[0] >= 8):
        return "flash_attention_2"
    return "sdpa"


def load_model(path: str, quantization: str = "4bit", dtype: Any = None,
               device_map: Any = None) -> Any:
    """Load Qwen2.5-VL for LoRA training.

    ``quantization``: ``"4bit"`` (QLoRA: NF4, double quantization, compute in ``dtype``),
    ``"8bit"`` or ``"none"`` (16-bit LoRA; fp32 on CPU). The vision tower and ``lm_head`` are
    never quantized (quantizing them costs quality and saves little).
    """
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    from .errors import ConfigError

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
    return AutoModelForImageTextToText.from_pretrained(path, **kwargs)


def add_lora(model: Any, *, trained: str = "language", r: int = 8, alpha: int = 16,
             dropout: float = 0.05, gradient_checkpointing: bool = True) -> Any:
    """Wrap ``model`` with LoRA adapters on the parts named by ``trained``.

    Gradient checkpointing is non-reentrant (with a frozen base, reentrant checkpointing silently
    gives LoRA no gradient), and a vision tower with nothing trainable runs without building a
    graph.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    target, full = lora_targets(trained)
    quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit",
                                                                      False)
    if quantized:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    elif gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # the name in recent transformers
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
    if gradient_checkpointing:
        model.enable_input_require_grads()
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target,
                        modules_to_save=full or None, task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    freeze_idle_vision(model)
    return model


def freeze_idle_vision(model: Any) -> bool:
    """Run the vision tower under ``torch.no_grad`` when none of its parameters train (saves the
    memory of its activations). Returns True when it did."""
    import torch

    visual = next((m for name, m in model.named_modules() if name.endswith("model.visual")), None)
    if visual is None or any(p.requires_grad for p in visual.parameters()):
        return False
    if not getattr(visual, "_qvl_no_grad", False):
        visual.forward = torch.no_grad()(visual.forward)
        visual._qvl_no_grad = True
    return True


def lora_modules(model: Any) -> list[str]:
    """Names of the modules that received LoRA adapters (for reporting what was selected)."""
    return sorted({name.rsplit(".lora_A", 1)[0] for name, _ in model.named_parameters()
                   if ".lora_A." in name})
