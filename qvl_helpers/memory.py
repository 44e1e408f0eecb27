"""Will it fit? GPU memory of a LoRA/QLoRA run, estimated from the model's configuration, the
settings and the learner's own data, before anything loads.

The estimate has two kinds of parts:

* **exact** (counted, not modelled): the weights as they sit in memory (4-bit NF4 with its
  quantization statistics, 8-bit with its row scales, or 16-bit; what 4/8-bit does not quantize
  stays in the compute dtype, or in float32 with ``frozen_fp32``, PEFT's way), the LoRA adapters
  (float32), their gradients and AdamW's two moments. They are
  counted on a weightless copy of the model (built on the meta device from its configuration), and
  ``tests/test_memory.py`` checks them against the bytes of a loaded model and a real optimizer;
* **modelled**: the activations kept for the backward pass (language model and vision tower), the
  logits and the loss, and the allocator's overhead. These follow a small model whose coefficients
  live in :data:`CALIBRATION`; ``benchmarks/gpu_check.sh`` measures them on a GPU, and the
  estimate states how far off it may be.

The workload is the run's *longest* micro-batch (its ``batch_size`` longest samples, visual tokens
included, padded to the longest), because that is the step that runs out of memory, and the
length-grouped sampler puts it first.

Longer than 450 lines because the estimate is one model (shapes, weights, trainable parts,
optimizer, activations, the verdicts and the first change advised) whose parts are held together
to the bytes of a loaded model by ``tests/test_memory.py``; the reports that print it are at the
end.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from typing import Any

from .env import GPU_PRESETS
from .resolved import Resolved, resolve

GIB = 1024 ** 3
#: Parts that do not live at the same time: the peak holds the larger of the two.
TRANSIENT = ("one layer's working memory", "logits and loss")
LANGUAGE_LINEAR = re.compile(
    r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)")
#: bitsandbytes NF4: weights packed two per byte, one absmax per 64 weights stored as uint8
#: (double quantization), one float32 absmax per 256 of those, a 16-value NF4 code and a
#: 256-value code for the absmax, and one float32 offset (bitsandbytes 0.50, checked by the tests).
NF4_BLOCK, NF4_NESTED_BLOCK, NF4_CONSTANT_BYTES = 64, 256, 16 * 4 + 256 * 4 + 4
#: The language model's input embedding (tied to ``lm_head`` in the 3B), by parameter name.
INPUT_EMBEDDING = "language_model.embed_tokens.weight"


@dataclass(frozen=True)
class Gpu:
    """A class of GPU, by the memory PyTorch reports as usable on the usual cards."""

    name: str
    usable_gib: float
    bf16: bool


#: The GPUs the verdict is given for (usable memory as ``torch.cuda.get_device_properties``
#: reports it on a T4, an L4/A10, an A100 40 GB and an A100/H100 80 GB).
GPUS = (Gpu("T4 16 GB", 14.7, False), Gpu("24 GB", 22.0, True), Gpu("40 GB", 39.4, True),
        Gpu("80 GB", 79.1, True))


@dataclass(frozen=True)
class Calibration:
    """Coefficients of the modelled parts; ``benchmarks/gpu_check.sh`` measures them."""

    lm_hidden: float = 10.0    # values kept per token and language-model layer, x hidden_size
    lm_inter: float = 4.0      # ... x intermediate_size (gate, up, their product, activation)
    vision_hidden: float = 10.0
    vision_inter: float = 4.0
    logit_extra_bytes: int = 8  # per logit beyond the compute dtype: float32 log-probabilities
    #                             (kept for backward) and their float32 gradient
    fragmentation: float = 0.10  # the caching allocator's reserved-but-unused share
    context_gib: float = 0.5     # CUDA context and kernels: outside PyTorch's count
    error: float = 0.30          # expected relative error of the modelled parts
    source: str = "analytic (per-layer tensor counts); not yet calibrated on a GPU"


CALIBRATION = Calibration()


@dataclass(frozen=True)
class Setup:
    """What is trained and how: the settings the memory depends on."""

    quantization: str = "4bit"      # 4bit | 8bit | none
    compute_bytes: int = 2          # bf16/fp16 on a GPU; 4 (float32) on a CPU unless bf16
    trained: str = "language"
    lora_r: int = 8
    lora_dropout: float = 0.05
    batch_size: int = 1
    gradient_checkpointing: bool = True
    vision_no_grad: bool = True
    answer_logits: bool = True
    frozen_fp32: bool = False       # 4/8-bit: what is not quantized in float32 (PEFT's way)
    fp16: bool = False              # the compute dtype is float16 (T4, V100), not bf16

    @property
    def compute_name(self) -> str:
        return "fp32" if self.compute_bytes == 4 else ("fp16" if self.fp16 else "bf16")

    @property
    def quantized(self) -> bool:
        return self.quantization in ("4bit", "8bit")

    @property
    def upcast(self) -> bool:
        """Everything not quantized in float32: ``frozen_fp32`` on a 4/8-bit model."""
        return self.quantized and self.frozen_fp32

    @property
    def float32_embedding(self) -> bool:
        """The input embedding in float32, which keeps the language model's residual stream in
        float32: PEFT's upcast, and the lean 4/8-bit path in fp16 (see
        :func:`qvl_helpers.lora.freeze_quantized`)."""
        return self.upcast or (self.quantized and self.fp16 and self.compute_bytes == 2)

    @classmethod
    def from_config(cls, cfg: Any, *, gpu: bool = True, bf16_supported: bool = True) -> Setup:
        """The setup of ``cfg`` on a GPU (``gpu``; ``bf16_supported`` decides ``dtype: auto``) or
        on a CPU (:func:`~qvl_helpers.resolved.resolve` makes the choices)."""
        return cls.from_resolved(cfg, resolve(cfg, cuda=gpu, bf16_supported=bf16_supported))

    @classmethod
    def from_resolved(cls, cfg: Any, resolved: Resolved) -> Setup:
        """The setup of ``cfg`` with its ``auto`` choices made (a run's plan has them)."""
        dtype = resolved.dtype
        return cls(quantization=resolved.quantization, compute_bytes=4 if dtype == "fp32" else 2,
                   trained=cfg.trained, lora_r=cfg.lora_r, lora_dropout=cfg.lora_dropout,
                   batch_size=cfg.batch_size, gradient_checkpointing=cfg.gradient_checkpointing,
                   vision_no_grad=cfg.vision_no_grad, answer_logits=cfg.answer_logits,
                   frozen_fp32=cfg.frozen_fp32, fp16=dtype == "fp16")


@dataclass(frozen=True)
class Workload:
    """The longest micro-batch of the data: what the first (and heaviest) step processes."""

    batch_size: int
    padded_length: int    # tokens per row after padding (the longest sample's)
    visual_tokens: int    # in the whole batch
    text_tokens: int      # in the whole batch (an upper bound of the trained answer tokens)

    @classmethod
    def from_budget(cls, budget: Any, batch_size: int) -> Workload:
        """The ``batch_size`` longest samples of a :class:`~qvl_helpers.tokens.TokenBudget`."""
        longest = budget.longest(batch_size)
        return cls(batch_size, max((s.total for s in longest), default=0),
                   sum(s.visual_tokens for s in longest), sum(s.text_tokens for s in longest))


# ----------------------------------------------------------------------------- the model's shape


@dataclass(frozen=True)
class Tensor:
    name: str
    numel: int
    shape: tuple[int, ...]
    quantizable: bool  # a language-model projection weight (what 4/8-bit quantizes)


@dataclass(frozen=True)
class Shape:
    """What the estimate needs from a Qwen2.5-VL configuration."""

    tensors: tuple[Tensor, ...]              # every parameter, tied ones once
    linears: tuple[tuple[str, int, int], ...]  # (name, in_features, out_features)
    modules: tuple[tuple[str, int], ...]     # (module name, its parameter count), for LoRA's
    hidden: int                              # ``modules_to_save``
    intermediate: int
    layers: int
    vocab: int
    vision_hidden: int
    vision_intermediate: int
    vision_depth: int
    out_hidden: int


@lru_cache(maxsize=4)
def _shape_of(config_json: str) -> Shape:
    import torch
    from transformers import AutoModelForImageTextToText, Qwen2_5_VLConfig

    config = Qwen2_5_VLConfig.from_dict(json.loads(config_json))
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    tensors = tuple(Tensor(name, p.numel(), tuple(p.shape),
                           name.endswith(".weight") and bool(LANGUAGE_LINEAR.fullmatch(name[:-7])))
                    for name, p in model.named_parameters())  # tied weights appear once
    linears = tuple((name, m.in_features, m.out_features) for name, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear))
    modules = tuple((name, sum(p.numel() for p in m.parameters()))
                    for name, m in model.named_modules() if name)
    text, vision = config.text_config, config.vision_config
    return Shape(tensors, linears, modules, text.hidden_size, text.intermediate_size,
                 text.num_hidden_layers, text.vocab_size, vision.hidden_size,
                 vision.intermediate_size, vision.depth, vision.out_hidden_size)


def model_shape(config: Any) -> Shape:
    """The shape of a model from its ``Qwen2_5_VLConfig`` (a weightless copy on the meta
    device: no download, no memory; cached)."""
    return _shape_of(config.to_json_string(use_diff=False))


def read_config(model_path: str) -> Any:
    """A model's configuration without its weights."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_path)


# ----------------------------------------------------------------------------- exact parts


def nf4_bytes(numel: int) -> int:
    """Bytes of one weight in bitsandbytes NF4 with double quantization."""
    blocks = math.ceil(numel / NF4_BLOCK)
    return math.ceil(numel / 2) + blocks + 4 * math.ceil(blocks / NF4_NESTED_BLOCK) \
        + NF4_CONSTANT_BYTES


def weight_bytes(shape: Shape, setup: Setup) -> int:
    """The base model's parameters as they sit in memory during training."""
    total = 0
    for t in shape.tensors:
        if t.quantizable and setup.quantization == "4bit":
            total += nf4_bytes(t.numel)
        elif t.quantizable and setup.quantization == "8bit":
            total += t.numel + 4 * t.shape[0]  # int8 weights + one float32 scale per row
        elif setup.upcast or (setup.float32_embedding and t.name.endswith(INPUT_EMBEDDING)):
            total += 4 * t.numel
        else:
            total += setup.compute_bytes * t.numel
    return total


@dataclass(frozen=True)
class Trainable:
    """What LoRA adds and trains: parameters, tensors (the optimizer keeps a step per tensor),
    their bytes, and the layers wrapped."""

    params: int
    tensors: int
    bytes: int
    lora_layers: int


def trainable(shape: Shape, setup: Setup) -> Trainable:
    """LoRA's A and B matrices (float32: PEFT keeps adapters of 16-bit models in float32) on
    every targeted linear layer, plus full float32 copies of ``modules_to_save`` (the merger)."""
    from .lora import lora_targets

    pattern, full = lora_targets(setup.trained)
    targets = [(n, i, o) for n, i, o in shape.linears if re.fullmatch(pattern, n)]
    params = sum(setup.lora_r * (i + o) for _, i, o in targets)
    nbytes = 4 * params
    tensors = 2 * len(targets)
    copy_bytes = 4  # full copies train in float32 (lora.trainable_in_fp32)
    for suffix in full:
        names = {n for n, _ in shape.modules if n.endswith("." + suffix) or n == suffix}
        copied = [t for t in shape.tensors if any(t.name.startswith(n + ".") for n in names)]
        params += sum(t.numel for t in copied)
        nbytes += copy_bytes * sum(t.numel for t in copied)
        tensors += len(copied)
    return Trainable(params, tensors, nbytes, len(targets))


def optimizer_bytes(train: Trainable) -> int:
    """AdamW (the Trainer's default, fused): two moments of each trainable parameter in its own
    dtype, and a float32 step counter per tensor."""
    return 2 * train.bytes + 4 * train.tensors


# ----------------------------------------------------------------------------- modelled parts


def _vision_trains(shape: Shape, setup: Setup) -> bool:
    """True when LoRA or ``modules_to_save`` reach into the vision tower (the merger included)."""
    from .lora import lora_targets

    pattern, full = lora_targets(setup.trained)
    return bool(full) or any(".visual." in f".{n}" and re.fullmatch(pattern, n)
                             for n, _, _ in shape.linears)


def activation_parts(shape: Shape, setup: Setup, work: Workload,
                     cal: Calibration = CALIBRATION) -> dict[str, int]:
    """Modelled bytes: activations kept for backward (language, vision), the largest transient
    (one layer's working memory, recomputed or under ``no_grad``; or the logits and loss)."""
    b, n = setup.compute_bytes, work.batch_size * work.padded_length
    lm_layer = n * (cal.lm_hidden * shape.hidden + cal.lm_inter * shape.intermediate) * b
    lora_extra = n * 7 * setup.lora_r * b  # each wrapped projection keeps its r-wide middle
    if setup.lora_dropout > 0:  # and a dropped copy of its input (q, k, v each their own)
        lora_extra += n * (6 * shape.hidden + shape.intermediate) * (b + 1)  # + 1-byte mask
    if setup.gradient_checkpointing:  # each layer's input, in the residual stream's dtype
        language = shape.layers * n * shape.hidden * (4 if setup.float32_embedding else b)
        recompute = lm_layer + lora_extra
    else:
        language, recompute = shape.layers * (lm_layer + lora_extra), 0
    patches = 4 * work.visual_tokens
    v_block = patches * (cal.vision_hidden * shape.vision_hidden
                         + cal.vision_inter * shape.vision_intermediate) * b
    graph = _vision_trains(shape, setup) or (setup.gradient_checkpointing and not setup.vision_no_grad)
    recompute = max(recompute, v_block)  # a vision block runs whole, with or without a graph
    if not graph:
        vision = work.visual_tokens * shape.out_hidden * b  # only its output is kept
    elif setup.gradient_checkpointing:
        vision = shape.vision_depth * patches * shape.vision_hidden * b
    else:
        vision = shape.vision_depth * v_block
    scored = work.text_tokens if setup.answer_logits else n
    logits = scored * shape.vocab * (b + cal.logit_extra_bytes)
    return {"activations: language model": int(language), "activations: vision tower": int(vision),
            TRANSIENT[0]: int(recompute), TRANSIENT[1]: int(logits)}


# ----------------------------------------------------------------------------- the estimate


@dataclass
class Estimate:
    """Bytes per part, the peak, and the verdict per GPU."""

    parts: dict[str, int]
    exact: tuple[str, ...]
    setup: Setup
    work: Workload
    cal: Calibration
    model: str
    gpu: bool = True
    weights_other_way: int | None = None  # 4/8-bit: the weights with frozen_fp32 the other way

    @property
    def peak(self) -> int:
        """Peak allocated bytes: the kept parts plus the larger of the two transients."""
        kept = sum(v for k, v in self.parts.items() if k not in TRANSIENT)
        return kept + max(self.parts[k] for k in TRANSIENT)

    @property
    def needed(self) -> int:
        """What the device must have: the peak, the allocator's slack and (on a GPU) the CUDA
        context."""
        context = self.cal.context_gib * GIB if self.gpu else 0
        return int(self.peak * (1 + self.cal.fragmentation) + context)

    def fits(self, gpu: Gpu) -> str:
        """``fits``, ``tight`` (within the expected error) or ``does not fit``."""
        usable = gpu.usable_gib * GIB
        modelled = sum(v for k, v in self.parts.items() if k not in self.exact + TRANSIENT) \
            + max(self.parts[k] for k in TRANSIENT)  # what the peak holds
        high = self.needed + self.cal.error * modelled * (1 + self.cal.fragmentation)
        if high <= usable:
            return "fits"
        return "tight" if self.needed <= usable else "does not fit"

    def text(self, gpus: Sequence[Gpu] = GPUS, advice: dict[str, str] | None = None) -> str:
        w = self.work
        lines = [f"Memory estimate for {self.model} ({self.setup.quantization}, "
                 f"{self.setup.compute_name} compute), longest batch: "
                 f"{w.batch_size} x {w.padded_length} tokens ({w.visual_tokens} visual):"]
        for key, value in self.parts.items():
            kind = "exact" if key in self.exact else f"±{self.cal.error:.0%}"
            if key == "weights" and self.weights_other_way is not None:
                other = str(not self.setup.frozen_fp32).lower()
                kind += f"; {human(self.weights_other_way)} with frozen_fp32: {other}"
            lines.append(f"  {key:<32}{human(value):>10}  ({kind})")
        lines.append(f"  {'peak (kept + larger transient)':<32}{human(self.peak):>10}")
        where, context = (("on the GPU", f", +{self.cal.context_gib} GiB CUDA context")
                          if self.gpu else ("in RAM (CPU)", ""))
        lines.append(f"  {'needed ' + where:<32}{human(self.needed):>10}  "
                     f"(+{self.cal.fragmentation:.0%} allocator slack{context})")
        for gpu in gpus:
            verdict = self.fits(gpu)
            hint = f": {advice[gpu.name]}" if advice and gpu.name in advice else ""
            lines.append(f"  {gpu.name:<12}{verdict}{hint if verdict != 'fits' else ''}")
        lines.append(f"  (modelled parts: {self.cal.source})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "parts": self.parts, "exact": list(self.exact),
                "peak": self.peak, "needed": self.needed, "setup": asdict(self.setup),
                "workload": asdict(self.work), "calibration": asdict(self.cal),
                "weights_other_way": self.weights_other_way,
                "verdicts": {g.name: self.fits(g) for g in GPUS}}


def estimate(config: Any, setup: Setup, work: Workload, *, model: str = "",
             cal: Calibration = CALIBRATION, gpu: bool = True) -> Estimate:
    """The memory of training ``config``'s model as ``setup`` says on ``work``."""
    shape = model_shape(config)
    train = trainable(shape, setup)
    parts = {"weights": weight_bytes(shape, setup), "LoRA adapters": train.bytes,
             "gradients": train.bytes, "optimizer (AdamW)": optimizer_bytes(train)}
    exact = tuple(parts)
    parts.update(activation_parts(shape, setup, work, cal))
    other = None  # 4/8-bit in a 16-bit compute dtype: the weights with frozen_fp32 flipped
    if setup.quantized and setup.compute_bytes != 4:
        other = weight_bytes(shape, replace(setup, frozen_fp32=not setup.frozen_fp32))
    return Estimate(parts, exact, setup, work, cal, model or getattr(config, "_name_or_path", ""),
                    gpu, other)


#: Changes to try when a run does not fit, in the order that costs the least quality; after
#: them, fewer visual tokens (a lower max_pixels).
CHANGES: tuple[tuple[str, Any], ...] = (
    ("frozen_fp32: false", lambda s, w: (replace(s, frozen_fp32=False) if s.upcast else s, w)),
    ("answer_logits: true", lambda s, w: (replace(s, answer_logits=True), w)),
    ("gradient_checkpointing: true", lambda s, w: (replace(s, gradient_checkpointing=True), w)),
    ("quantization: 4bit", lambda s, w: (replace(s, quantization="4bit"), w)),
    ("batch_size: 1 with grad_accum multiplied by the old batch_size (same effective batch)",
     lambda s, w: (replace(s, batch_size=1), _scaled(w, 1))),
)


def first_change(config: Any, setup: Setup, work: Workload, gpu: Gpu,
                 cal: Calibration = CALIBRATION) -> str:
    """The one setting to change first so that the run fits ``gpu``: the changes of
    :data:`CHANGES`, then a lower ``max_pixels``, are applied one after the other (cheapest
    first) until the estimate fits; the first is the answer, the others are named after it."""
    def fits(s: Setup, w: Workload) -> bool:
        return estimate(config, s, w, cal=cal).fits(gpu) != "does not fit"

    def answer(steps: list[str]) -> str:
        return f"set {steps[0]}" + (f" (then also {'; '.join(steps[1:])})" if steps[1:] else "")

    applied: list[str] = []
    for label, change in CHANGES:
        changed = change(setup, work)
        if changed != (setup, work):
            (setup, work), applied = changed, [*applied, label]
            if fits(setup, work):
                return answer(applied)
    for factor in (2, 4, 8):
        if fits(setup, _fewer_visual(work, factor)):
            return answer([*applied, f"max_pixels about {factor}x lower (the visual tokens "
                                     "shrink with it)"])
    return "use a larger GPU: even every change together does not fit"


def _fewer_visual(work: Workload, factor: int) -> Workload:
    """``work`` with about ``1/factor`` of its visual tokens (``max_pixels / factor``)."""
    per_row = work.visual_tokens / max(work.batch_size, 1)
    return replace(work, visual_tokens=work.visual_tokens // factor,
                   padded_length=work.padded_length - int(per_row * (1 - 1 / factor)))


def _scaled(work: Workload, batch_size: int) -> Workload:
    per = work.batch_size
    return Workload(batch_size, work.padded_length, work.visual_tokens * batch_size // per,
                    work.text_tokens * batch_size // per)


def advice_for(config: Any, est: Estimate, gpus: Sequence[Gpu] = GPUS) -> dict[str, str]:
    """The first change per GPU that the estimate does not fit."""
    return {g.name: first_change(config, est.setup, est.work, g, est.cal)
            for g in gpus if est.fits(g) == "does not fit"}


def human(nbytes: float) -> str:
    """Bytes as GiB (or MiB below one GiB)."""
    return f"{nbytes / GIB:.2f} GiB" if nbytes >= GIB else f"{nbytes / 2 ** 20:.1f} MiB"


# ----------------------------------------------------------------------------- measuring


def saved_activation_bytes(run_step: Any, exclude: Sequence[Any] = ()) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass while ``run_step()``
    runs its forward (parameters in ``exclude`` are not activations). Device independent: how
    the CPU tests and the GPU check measure the activation part."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params and storage.device.type != "meta":
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run_step()
    return sum(seen.values())


# ----------------------------------------------------------------------------- for a run


def report_for_run(cfg: Any, model_path: str, budget: Any, *, resolved: Resolved,
                   is_tiny: bool, records: Sequence[Any] | None = None) -> str:
    """What ``qvl train --dry-run`` prints: the estimate for the model this run trains with the
    choices ``resolved`` made for this machine, and, while the tiny stand-in is used, for the
    real 3B on a GPU with the same settings and data. With ``records`` (the training samples)
    the 3B's text is counted with Qwen's own tokenizer (:mod:`qvl_helpers.real_tokenizer`);
    without, with the stand-in's."""
    from .qwen import REAL_MODEL_ID
    from .tiny import real_3b_config

    config = read_config(model_path)
    if getattr(config, "model_type", None) != "qwen2_5_vl":
        return (f"Memory estimate: not available for {model_path} (model type "
                f"{getattr(config, 'model_type', 'unknown')}; the estimate knows Qwen2.5-VL).")
    work = Workload.from_budget(budget, cfg.batch_size)
    cuda = resolved.cuda
    here = estimate(config, Setup.from_resolved(cfg, resolved), work, gpu=cuda,
                    model="the tiny stand-in" if is_tiny else str(model_path))
    blocks = [here.text(advice=advice_for(config, here)) if cuda else here.text(gpus=())]
    if is_tiny:
        how = "text counted with the stand-in's tokenizer, which needs more tokens than Qwen's"
        if records is not None:
            from .real_tokenizer import real_processor
            from .tokens import token_budget

            real_budget = token_budget(records, real_processor(cfg.cache_dir),
                                       max_length=cfg.max_length, limits=budget.limits)
            work, how = (Workload.from_budget(real_budget, cfg.batch_size),
                         "text counted with Qwen's own tokenizer")
        config = real_3b_config()
        real = estimate(config, Setup.from_config(cfg, gpu=True), work, model=REAL_MODEL_ID)
        blocks.append(f"On a GPU, with these settings and this data ({how}):\n"
                      + real.text(advice=advice_for(config, real)))
    return "\n\n".join(blocks)


#: Which GPU each shipped preset is made for (env.GPU_PRESETS says it).
PRESET_GPUS = {p.name: p.gpu for p in GPU_PRESETS}


def preset_estimates(image: tuple[int, int] = (1280, 960),
                     text_tokens: int = 200) -> dict[str, Estimate]:
    """The real 3B under every GPU preset (over course.yaml) on samples of one ``image``-sized
    picture and ``text_tokens`` of text: a first answer before any data exists."""
    from .config import PRESETS_DIR, load_config
    from .tiny import real_3b_config
    from .tokens import visual_tokens

    config, out = real_3b_config(), {}
    for preset in PRESET_GPUS:
        run = load_config(presets=[PRESETS_DIR / f"{preset}.yaml"])
        vis = visual_tokens(*image, run.min_pixels, run.max_pixels)
        work = Workload(run.batch_size, vis + text_tokens, run.batch_size * vis,
                        run.batch_size * text_tokens)
        out[preset] = estimate(config, Setup.from_config(run, gpu=True), work,
                               model="Qwen2.5-VL-3B")
    return out


def real_3b_weights(quantization: str, compute_bytes: int = 2, *, frozen_fp32: bool = False,
                    fp16: bool = False) -> int:
    """Bytes of the real 3B's weights as they sit in memory while training with
    ``quantization`` (``fp16``: in float16 compute, a T4's): the ``weights`` part of every
    estimate of the 3B (:func:`estimate`)."""
    from .tiny import real_3b_config

    return weight_bytes(model_shape(real_3b_config()),
                        Setup(quantization=quantization, compute_bytes=compute_bytes,
                              frozen_fp32=frozen_fp32, fp16=fp16))


def weights_text(quantizations: Sequence[str] = ("4bit", "none")) -> str:
    """The real 3B's weights in training memory (the figures the memory estimates show): per
    quantization, in bf16 and, for 4/8-bit, in fp16 (which keeps the input embedding in
    float32), with what PEFT's float32 upcast would hold; so that prose never has to state them."""
    names = {"4bit": "4-bit NF4", "8bit": "8-bit", "none": "16-bit"}
    lines = []
    for q in quantizations:
        for fp16 in (False, True) if q != "none" else (False,):
            note = "exact"
            if q != "none":
                upcast = human(real_3b_weights(q, frozen_fp32=True))
                note += f"; {upcast} with frozen_fp32: true, PEFT's float32 upcast"
            label = f"{names.get(q, q)}, {'fp16' if fp16 else 'bf16'}"
            lines.append(f"Qwen2.5-VL-3B weights while training, {label:<16}"
                         f"{human(real_3b_weights(q, fp16=fp16)):>10} ({note})")
    return "\n".join(lines)


def preset_table(estimates: dict[str, Estimate]) -> str:
    """The estimates of :func:`preset_estimates` as one line per preset, a verdict per GPU."""
    lines = [f"{'preset':<12}{'batch x tokens':>16}{'needed':>11}  "
             + "".join(f"{g.name:>14}" for g in GPUS)]
    for preset, est in estimates.items():
        shape = f"{est.work.batch_size} x {est.work.padded_length}"
        lines.append(f"{preset:<12}{shape:>16}{human(est.needed):>11}  "
                     + "".join(f"{est.fits(g):>14}" for g in GPUS))
    return "\n".join(lines)
