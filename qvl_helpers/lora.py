"""LoRA on a loaded model: which layers it wraps, what else trains in full, what stays frozen
and in which dtype, the guard on the vision features, and adapters read back.

``add_lora`` wraps the layers a ``trained`` preset (or a regular expression) names, keeps what
4/8-bit does not quantize in the compute dtype unless ``frozen_fp32`` asks for PEFT's float32
upcast, trains full copies (the merger) in float32, and can skip the frozen vision tower's
graph; :func:`check_vision_features` stops a run whose frozen vision blocks overflow.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

from .errors import ConfigError, ModelError, TrainingError
from .model import load_error, quiet_upstream_deprecations
from .qwen import TRAINED_PARTS


def lora_target_names(model_path: str, trained: str) -> list[str]:
    """The linear layers LoRA would wrap for ``trained``, found on a weightless copy of the model
    (built on the meta device from its config: seconds, no memory), before any weights load.

    PEFT matches a string ``target_modules`` with ``re.fullmatch`` against full module names
    (peft 0.21, ``check_target_module_exists``); this does the same.

    Raises:
        ConfigError: the pattern matches no linear layer of this model.
    """
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    try:
        config = AutoConfig.from_pretrained(model_path)
    except (OSError, ValueError) as exc:
        raise load_error(model_path, "model configuration", exc) from None
    with torch.device("meta"):
        skeleton = AutoModelForImageTextToText.from_config(config)
    target, _ = lora_targets(trained)
    linear = [name for name, m in skeleton.named_modules() if isinstance(m, torch.nn.Linear)]
    hits = [name for name in linear if re.fullmatch(target, name)]
    if not hits:
        raise ConfigError(f"trained: {trained!r} matches no linear layer of {model_path} "
                          f"({len(linear)} linear layers, for example {linear[len(linear) // 2]}).",
                          fix=f"use one of {', '.join(TRAINED_PARTS)}, or a regular expression "
                              "that matches full module names such as the example.")
    return hits


def add_lora(model: Any, *, trained: str = "language", r: int = 8, alpha: int = 16,
             dropout: float = 0.05, gradient_checkpointing: bool = True,
             vision_no_grad: bool = True, frozen_fp32: bool = False) -> Any:
    """Wrap ``model`` with LoRA adapters on the parts named by ``trained``.

    Gradient checkpointing is non-reentrant (with a frozen base, reentrant checkpointing silently
    gives LoRA no gradient). ``vision_no_grad``: a vision tower with nothing trainable runs
    without building a graph (``enable_input_require_grads`` would otherwise make its patch
    embedding require gradients, and every block would keep its activations for nothing).
    ``frozen_fp32``: on a 4/8-bit model, what is not quantized goes to float32 as PEFT does
    (:func:`freeze_quantized`); otherwise it stays in the dtype it was loaded in. What trains is
    float32 (:func:`trainable_in_fp32`).
    """
    from peft import LoraConfig, get_peft_model

    target, full = lora_targets(trained)
    quantized = is_quantized(model)
    if quantized:  # checkpointing is set below
        model = freeze_quantized(model, frozen_fp32=frozen_fp32)
        keep_4bit_training_layout(model)
    if gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # the name in transformers 5.x
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        for config in (model.config, getattr(model.config, "text_config", None)):
            if config is not None and hasattr(config, "use_cache"):
                config.use_cache = False  # a KV cache is useless while training; say so once
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target,
                        modules_to_save=full or None, task_type="CAUSAL_LM")
    with quiet_upstream_deprecations():
        model = get_peft_model(model, config)
    trainable_in_fp32(model)
    if vision_no_grad:
        freeze_idle_vision(model)
    return model


def is_quantized(model: Any) -> bool:
    """True for a model loaded in 4 or 8 bits by bitsandbytes."""
    return bool(getattr(model, "is_loaded_in_4bit", False)
                or getattr(model, "is_loaded_in_8bit", False))


def freeze_quantized(model: Any, *, frozen_fp32: bool = False) -> Any:
    """Freeze a 4/8-bit model for LoRA, keeping what is not quantized (vision tower, embeddings,
    norms, ``lm_head``: about a quarter of the 3B) in the dtype it was loaded in, except an fp16
    input embedding, which goes to float32.

    PEFT's ``prepare_model_for_kbit_training`` (peft 0.21) casts all of it to float32
    (``frozen_fp32``: do that), about 1.8 GiB more for the 3B, for little change in what is
    computed: under the Trainer's mixed precision every matmul runs in the compute dtype either
    way (autocast casts a float32 weight at each call; bitsandbytes casts its input to the
    compute dtype), and the norms normalise in float32 inside. What the float32 copy changes is
    the language model's residual stream, which starts as the input embedding's output and stays
    in its dtype (bitsandbytes casts each projection's output back to its input's dtype):

    * in bf16 it runs in bf16, as in 16-bit LoRA and the model's own inference
      (``benchmarks/results/lean_qlora.json``: the tiny stand-in's loss and answers both ways);
    * in fp16 it could overflow (Qwen2 language models are reported to, in fp16), so the input
      embedding (tied to ``lm_head`` in the 3B: 0.58 GiB) stays float32 and the stream with it,
      exactly as with PEFT's upcast (``tests/test_lean.py`` compares the two on the CPU).

    The vision tower's stream is in the compute dtype either way (its patch embedding is a
    convolution, which autocast runs in it), so a float32 copy does not keep an fp16 tower from
    overflowing (``tests/test_lean.py``); :func:`check_vision_features` guards that.
    """
    import torch

    if frozen_fp32:
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    for param in model.parameters():
        param.requires_grad_(False)
    embedding = model.get_input_embeddings()
    if embedding.weight.dtype == torch.float16:
        embedding.weight.data = embedding.weight.data.float()  # a tied lm_head follows
    return model


def trainable_in_fp32(model: Any) -> int:
    """Cast trainable 16-bit parameters to float32 (returns how many): the full copies of
    ``modules_to_save`` (the merger), copied from 16-bit weights (PEFT already keeps LoRA's own
    matrices in float32). Training them in 16 bits would round away small AdamW updates, and
    fp16 ones would stop the fp16 gradient scaler ("Attempting to unscale FP16 gradients")."""
    import torch

    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()
            cast += 1
    return cast


def keep_4bit_training_layout(model: Any) -> int:
    """Keep every 4-bit layer in the layout training needs, through evaluations. Returns the
    layers changed.

    On a CPU with AVX512-BF16, bitsandbytes (0.50.2, ``Linear4bit.forward``) repacks a 4-bit
    weight for inference the first time the layer runs in eval mode without gradients, and
    keeps it so until the next ``state_dict`` save; the training step after an evaluation then
    takes the inference kernel and fails (``result += bias`` on a tensor that needs grad: "a
    view of a leaf Variable ... in-place"). A run evaluated at a step with no checkpoint saved
    after it broke that way. Turning the repacking off costs only inference speed on such CPUs.
    """
    changed = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def freeze_idle_vision(model: Any) -> bool:
    """Run the vision tower under ``torch.no_grad`` when none of its parameters train (saves the
    memory of its activations). Returns True when it did."""
    import torch

    visual = vision_tower(model)
    if visual is None or any(p.requires_grad for p in visual.parameters()):
        return False
    if not getattr(visual, "_qvl_no_grad", False):
        visual.forward = torch.no_grad()(visual.forward)
        visual._qvl_no_grad = True
    return True


def vision_tower(model: Any) -> Any:
    """The vision tower module (``model.visual`` below any PEFT wrapping), or None."""
    return next((m for name, m in model.named_modules() if name.endswith("model.visual")), None)


def check_vision_features(model: Any) -> Any:
    """Stop at a batch whose vision features are not finite, naming the cause and the fix.
    Returns the hook's handle (``handle.remove()`` ends the check), or None without a tower.

    Such features make the loss NaN a few layers later, and the loss guard's advice (a lower
    ``lr``) cannot help vision blocks that training has not touched: in fp16 (T4, V100)
    Qwen2.5-VL-3B's tower is reported to overflow on some large images (llama.cpp issue 17534:
    activations to -inf at 1024x484), which a float32 copy of its weights does not prevent
    (:func:`freeze_quantized`) and float32 compute does. Frozen blocks (``trained: language`` or
    ``language+merger``) have their output checked at every batch, and a frozen merger its
    output too; trained ones only until the first training batch: after an update, non-finite
    features may be divergence, which the loss guard names. One reduction per checked tensor.
    """
    import torch

    visual = vision_tower(model)
    if visual is None:
        return None
    trained = {name.split(".")[0] for name, p in visual.named_parameters() if p.requires_grad}
    blocks_frozen = not (trained - {"merger"})
    merger_frozen = "merger" not in trained
    patch = int(getattr(visual, "patch_size", 14))

    trained_once = False  # a training batch has been through: updates may follow

    def check(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        nonlocal trained_once
        first = not trained_once
        outputs = [(getattr(output, "last_hidden_state", None), blocks_frozen or first),
                   (getattr(output, "pooler_output", output), merger_frozen and blocks_frozen
                    or first)]
        for features, checked in outputs:
            if checked and torch.is_tensor(features) and not bool(torch.isfinite(features).all()):
                grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
                raise vision_overflow_error(features, grid, patch)
        if module.training:
            trained_once = True
            if not blocks_frozen:
                handle.remove()

    handle = visual.register_forward_hook(check, with_kwargs=True)
    return handle


def vision_overflow_error(features: Any, grid_thw: Any, patch: int = 14) -> TrainingError:
    """The sentence and fix for non-finite vision features (see :func:`check_vision_features`);
    ``patch``: the tower's patch side in pixels."""
    import torch

    from .fixes import how_to_set

    kind = "NaN" if bool(torch.isnan(features).any()) else "infinite"
    images = ""
    if torch.is_tensor(grid_thw) and grid_thw.numel():
        sides = [f"{int(w) * patch}x{int(h) * patch}" for _, h, w in grid_thw.tolist()]
        images = f" for {len(sides)} image(s) of {', '.join(sides)} pixels (after resizing)"
    dtype = str(features.dtype).removeprefix("torch.")
    if features.dtype == torch.float16:
        hint = how_to_set("dtype", "fp32", in_yaml=True) or "set dtype: fp32 in course.yaml"
        return TrainingError(
            f"the vision tower's features became {kind}{images}: float16 overflowed (its largest "
            "value is 65504; Qwen2.5-VL-3B's tower is reported to exceed it on some large "
            "images), and training on them would learn from noise.",
            fix=f"{hint} to compute in float32 (slower, and more memory: see the dry run's "
                "estimate), try a lower max_pixels, or train on a GPU with bf16 "
                "(configs/24gb_qlora.yaml).")
    return TrainingError(
        f"the vision tower's features became {kind}{images} in {dtype}, whose range does not "
        "overflow like float16's, before training changed the tower: the base model's weights "
        "hold NaN or infinite values.",
        fix="load the base model again (a damaged download or a bad merge).")


def lora_modules(model: Any) -> list[str]:
    """Names of the modules that received LoRA adapters (for reporting what was selected)."""
    return sorted({name.rsplit(".lora_A", 1)[0] for name, _ in model.named_parameters()
                   if ".lora_A." in name})


# ----------------------------------------------------------------------------- loading an adapter

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def read_adapter_config(adapter: str | Path) -> dict[str, Any]:
    """The ``adapter_config.json`` of a LoRA adapter folder, checked for what loading needs.

    Raises:
        ModelError: the folder, its config or its safetensors weights are missing or unreadable.
    """
    folder = Path(adapter)
    fix = "point to a folder written by `qvl train` (outputs/runs/NAME/adapter)."
    if not folder.is_dir():
        raise ModelError("the adapter folder does not exist.", file=folder, fix=fix)
    config_file = folder / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError("this is not an adapter folder (no adapter_config.json).", file=folder,
                         fix=fix) from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"adapter_config.json is unreadable ({exc}).", file=config_file,
                         fix="copy the adapter folder again from where it was trained.") from None
    if not isinstance(config, dict) or "peft_type" not in config:
        raise ModelError("adapter_config.json is not a PEFT adapter configuration.",
                         file=config_file, fix=fix)
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise ModelError(f"the adapter has no {ADAPTER_WEIGHTS} (only safetensors weights are "
                         "loaded).", file=folder, fix=fix)
    return config


def load_adapter(model: Any, adapter: str | Path) -> Any:
    """Wrap ``model`` with the LoRA adapter in ``adapter`` and prove that it fits: every saved
    adapter weight must find its module with the same shape, and every LoRA layer created must
    receive a saved weight. Otherwise the model would silently run as the base model.

    Raises:
        ModelError: the folder is not a usable adapter, or it was trained on another model.
    """
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_adapter_config(adapter)
    trained_on = config.get("base_model_name_or_path") or "an unknown model"
    weights = Path(adapter) / ADAPTER_WEIGHTS
    try:
        saved = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{ADAPTER_WEIGHTS} is unreadable or truncated ({exc}).", file=weights,
                         fix="copy the adapter again, or use a complete checkpoint.") from None
    other = (f"it was trained on {trained_on}; load it onto that model (or a model with the "
             "same architecture and size).")
    try:
        with warnings.catch_warnings():  # the check below says it better, and stops
            warnings.filterwarnings("ignore", message="Found missing adapter keys",
                                    category=UserWarning)
            with quiet_upstream_deprecations():
                wrapped = PeftModel.from_pretrained(model, str(adapter))
    except (ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise ModelError(f"the adapter does not fit this model ({first}).", file=adapter,
                         fix=other) from None
    current = get_peft_model_state_dict(wrapped)
    missing = sorted(saved.keys() - current.keys())
    untrained = sorted(current.keys() - saved.keys())
    shapes = sorted(k for k in saved.keys() & current.keys()
                    if tuple(saved[k].shape) != tuple(current[k].shape))
    for problem, keys in (("adapter weights find no module in this model", missing),
                          ("LoRA layers get no saved weight", untrained),
                          ("adapter weights have another shape than the model's", shapes)):
        if keys:
            raise ModelError(f"the adapter does not fit this model: {len(keys)} {problem}, "
                             f"for example {keys[0]}.", file=adapter, fix=other)
    return wrapped


# ----------------------------------------------------------------------------- what LoRA trains

def lora_targets(trained: str) -> tuple[str, list[str]]:
    """(regex of LoRA target modules, modules trained in full) for a preset name or a custom
    regex (matched against full module names)."""
    if trained in TRAINED_PARTS:
        return TRAINED_PARTS[trained]
    try:
        re.compile(trained)
    except re.error as exc:
        raise ConfigError(f"trained: {trained!r} is neither a preset ({', '.join(TRAINED_PARTS)})"
                          f" nor a valid regex ({exc}).", fix="use a preset name.") from None
    return trained, []
