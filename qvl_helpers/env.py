"""Environment check (``qvl env``): one OK/WARN/FAIL line per item, then a recommended setup.

Every probe is a small function returning :class:`Check` items, so that tests can run them one by
one and :func:`recommend` (pure: hardware facts in, settings out) can be tested for GPUs this
machine does not have. Versions come from ``importlib.metadata``; the tested versions from the
committed ``constraints.txt`` that CI installs with.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import COURSE_ROOT, PRESETS_DIR, REAL_MODEL_ID, CourseConfig, load_config
from .qwen import tokens_in
from .resolved import compute_dtype_name, resolve

OK, WARN, FAIL = "OK", "WARN", "FAIL"
#: Packages whose versions matter most for the course (the rest follow from them).
KEY_PACKAGES = ["torch", "torchvision", "transformers", "peft", "accelerate", "bitsandbytes",
                "tokenizers", "huggingface-hub", "pillow", "pyyaml"]
CONSTRAINTS_FILE = COURSE_ROOT / "constraints.txt"
#: What Colab/Kaggle sessions pin: the course's packages, never the platform's PyTorch.
HOSTED_CONSTRAINTS_FILE = COURSE_ROOT / "hosted-constraints.txt"
GIB = 1024**3


@dataclass
class Check:
    """One line of the report."""

    name: str
    status: str  # OK, WARN or FAIL
    detail: str

    def line(self) -> str:
        return f"[{self.status}] {self.name}: {self.detail}"


@dataclass
class GpuInfo:
    """What the recommendation needs to know about one GPU."""

    name: str
    memory_gib: float
    capability: tuple[int, int]

    @property
    def bf16(self) -> bool:
        """bf16 needs compute capability 8.0 (Ampere) or newer."""
        return self.capability >= (8, 0)


@dataclass
class Recommendation:
    """Suggested settings for this hardware (starting points, not measurements)."""

    model: str
    dtype: str
    load_in_4bit: bool
    max_pixels: int
    batch_size: int
    grad_accum: int
    preset: str
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        tokens = tokens_in(self.max_pixels)
        out = [
            f"model        {self.model}",
            f"dtype        {self.dtype}",
            f"quantization {'4-bit NF4 (QLoRA)' if self.load_in_4bit else 'none (16-bit LoRA)'}",
            f"max_pixels   {self.max_pixels} (at most {tokens} visual tokens per image)",
            f"batch        {self.batch_size} x accumulation {self.grad_accum}",
            f"preset       configs/{self.preset}.yaml",
        ]
        return out + [f"note         {n}" for n in self.notes]


@dataclass
class EnvReport:
    checks: list[Check]
    gpus: list[GpuInfo]
    recommendation: Recommendation

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks],
                "gpus": [asdict(g) for g in self.gpus],
                "recommendation": asdict(self.recommendation)}

    def text(self) -> str:
        lines = [c.line() for c in self.checks]
        lines += ["", "Recommended setup for this machine:"]
        lines += ["  " + line for line in self.recommendation.lines()]
        return "\n".join(lines)


def load_tested_versions(path: Path = CONSTRAINTS_FILE) -> dict[str, str]:
    """``name -> version`` from the committed constraints file (empty when it is absent, e.g.
    when the package was installed without the repository), for this Python: a pin whose
    environment marker does not hold here is skipped. packaging parses the pins."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    if not path.is_file():
        return {}
    versions = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue  # blank lines and pip options
        pins = [s.version for s in req.specifier if s.operator == "=="]
        if pins and (req.marker is None or req.marker.evaluate()):
            versions[canonicalize_name(req.name)] = pins[0]
    return versions


def _same_release(have: str, want: str) -> bool:
    """Equal public versions (2.4.0+cu121 is 2.4.0); unparsable ones compare as text."""
    from packaging.version import InvalidVersion, Version

    try:
        return Version(have).public == Version(want).public
    except InvalidVersion:
        return have == want


def check_python() -> Check:
    version = platform.python_version()
    if sys.version_info < (3, 10):  # noqa: UP036 - the check exists to report old Pythons
        return Check("python", FAIL, f"{version}; the course needs Python 3.10 or newer")
    return Check("python", OK, f"{version} ({sys.executable})")


def check_packages(tested: dict[str, str] | None = None, *,
                   hosted: bool | None = None) -> list[Check]:
    """Installed versions of :data:`KEY_PACKAGES` against the tested ones. On Colab/Kaggle
    (``hosted``, default: detected) those are the hosted pins, and a package they leave alone
    (PyTorch, Pillow, ...) is the platform's own."""
    from packaging.utils import canonicalize_name

    from .setup_cell import on_hosted

    hosted = on_hosted() if hosted is None else hosted
    if tested is None:
        tested = load_tested_versions(HOSTED_CONSTRAINTS_FILE if hosted else CONSTRAINTS_FILE)
    # What to say where no version is pinned, and how to put one back, in this kind of session.
    if hosted:
        install = "run the notebook's first cell again"
        unpinned = "the platform's own: the course does not pin it"
    else:
        install, unpinned = "run: pip install -e . -c constraints.txt", "no tested version on record"
    checks = []
    for name in KEY_PACKAGES:
        want = tested.get(canonicalize_name(name))
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            checks.append(Check(name, FAIL, f"not installed; {install}"))
            continue
        if want is None:
            checks.append(Check(name, OK, f"{have} ({unpinned})"))
        elif _same_release(have, want):
            checks.append(Check(name, OK, f"{have} (tested)"))
        else:
            fix = f"pip install {name}=={want}" if hosted else "pip install -e . -c constraints.txt"
            checks.append(Check(name, WARN, f"{have}, tested with {want}; if something breaks, "
                                            f"reinstall with: {fix}"))
    return checks


def detect_gpus() -> list[GpuInfo]:
    """The CUDA GPUs torch can see (empty without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        gpus.append(GpuInfo(props.name, round(props.total_memory / GIB, 1),
                            (props.major, props.minor)))
    return gpus


def check_gpus(gpus: list[GpuInfo]) -> list[Check]:
    if not gpus:
        return [
            Check("gpu", WARN, "no CUDA GPU: the course runs on the CPU with the tiny stand-in "
                               "model (it shows the pipeline, not real results)"),
            Check("dtype", OK, "CPU: float32 compute (bf16 mixed precision with dtype: bf16)"),
        ]
    checks = []
    for i, g in enumerate(gpus):
        cc = f"{g.capability[0]}.{g.capability[1]}"
        status = OK if g.memory_gib >= 15 else WARN
        detail = f"{g.name}, {g.memory_gib:.1f} GiB, compute capability {cc}"
        if status == WARN:
            detail += "; under 16 GB the 3B model needs 4-bit and a small max_pixels"
        checks.append(Check(f"gpu {i}", status, detail))
    if all(g.bf16 for g in gpus):
        checks.append(Check("bf16", OK, "supported (compute capability >= 8.0): use bf16"))
    else:
        checks.append(Check("bf16", WARN, "not supported on this GPU (T4/V100 class): use fp16 "
                            "compute with a loss scaler, keep the LoRA weights in fp32, and watch "
                            "for a NaN loss (the training guard stops such a run)"))
    return checks


def check_bnb_4bit(device: str | None = None) -> Check:
    """Quantise a small tensor to NF4 and back on ``device`` with bitsandbytes."""
    try:
        import bitsandbytes.functional as bnbf
        import torch
    except Exception as exc:
        return Check("bitsandbytes 4-bit", FAIL, f"cannot import bitsandbytes ({exc})")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(64, 64, generator=generator).to(device)
        packed, state = bnbf.quantize_4bit(x, quant_type="nf4", compress_statistics=True)
        y = bnbf.dequantize_4bit(packed, state)
        rel_error = ((x - y).abs().mean() / x.abs().mean()).item()
    except Exception as exc:
        return Check("bitsandbytes 4-bit", FAIL,
                     f"NF4 round trip on {device} failed: {type(exc).__name__}: {exc}")
    if rel_error > 0.2:
        return Check("bitsandbytes 4-bit", FAIL,
                     f"NF4 round trip on {device} is wrong (mean relative error {rel_error:.2f})")
    return Check("bitsandbytes 4-bit", OK,
                 f"NF4 round trip on {device} works (mean relative error {rel_error:.3f})")


def check_disk(folder: Path) -> Check:
    folder = next((p for p in [folder, *folder.parents] if p.exists()), Path.cwd())
    free = shutil.disk_usage(folder).free / GIB
    detail = f"{free:.0f} GiB free at {folder}"
    if free < 2:
        return Check("disk", FAIL, detail + "; the course needs a few GiB even with the tiny model")
    if free < 20:
        return Check("disk", WARN, detail + "; the 3B model (~7.5 GB) plus checkpoints and a "
                                            "merged export need about 20 GiB")
    return Check("disk", OK, detail)


def check_hf_cache() -> Check:
    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE
    token = "set" if os.environ.get("HF_TOKEN") else "not set (not needed for Qwen2.5-VL)"
    return Check("hugging face cache", OK, f"{constants.HF_HUB_CACHE}; offline mode "
                 f"{'on' if offline else 'off'}; HF_TOKEN {token}")


def check_model(cfg: CourseConfig, cuda_available: bool) -> Check:
    """Is the model the config chooses available here (or buildable / downloadable)?"""
    choice = cfg.resolve_model(cuda_available=cuda_available)
    if choice.is_tiny:
        from .stand_in import is_stand_in

        built = is_stand_in(choice.path)
        state = "built" if built else "not built yet (built on first use in a few seconds)"
        return Check("model", OK, f"tiny stand-in ({choice.reason}); {state} at {choice.path}")
    if Path(choice.path).exists():
        return Check("model", OK, f"{choice.name} from the local folder {choice.path}")
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(choice.path, "config.json")
    if isinstance(cached, str):
        return Check("model", OK, f"{choice.name} is in the Hugging Face cache")
    if constants.HF_HUB_OFFLINE:
        return Check("model", FAIL, f"{choice.name} is not in the cache and offline mode is on; "
                                    "download it on a connected machine first")
    return Check("model", WARN, f"{choice.name} is not downloaded yet (about 7.5 GB on first use)")


@dataclass(frozen=True)
class GpuPreset:
    """A preset in configs/ made for one class of GPU."""

    name: str          # its file in configs/, without .yaml
    gpu: str           # the GPU it is made for, as tables name it
    below_gib: float   # chosen for a bf16 GPU with less memory than this
    note: str = ""     # said when it is chosen


#: The GPU presets, smallest first: the one place that says which preset suits which GPU.
GPU_PRESETS = (
    GpuPreset("t4_qlora", "T4 16 GB", 20, "bf16 works on this GPU: add --set dtype=bf16"),
    GpuPreset("24gb_qlora", "24 GB", 36),
    GpuPreset("40gb_lora", "40 GB", 60, "16-bit LoRA fits; QLoRA would allow a larger batch"),
    GpuPreset("80gb_lora", "80 GB", float("inf")),
)


def preset_for(gpus: list[GpuInfo]) -> tuple[str, list[str]]:
    """The preset for the given GPUs (the first one decides; all are assumed alike), and notes.

    The memory thresholds are starting points from the usual QLoRA arithmetic for a 3B model
    (about 2.5 GiB of 4-bit weights, activations growing with max_pixels and batch); the memory
    estimator of a later notebook refines them for a given dataset.
    """
    if not gpus:
        return "tiny_cpu", ["no GPU: learn the whole pipeline with the tiny stand-in model here",
                            f"a real run of {REAL_MODEL_ID} needs a CUDA GPU with 16 GB or more "
                            "(a free Colab/Kaggle T4 works with QLoRA); set model: auto there"]
    g = gpus[0]
    notes = ([f"{len(gpus)} GPUs: launch with accelerate (configs/accelerate/ddp.yaml)"]
             if len(gpus) > 1 else [])
    if not g.bf16:
        return GPU_PRESETS[0].name, notes + ["fp16 compute can overflow: the training guard "
                                             "stops a NaN loss; if it does, lower lr or "
                                             "max_pixels"]
    chosen = next(p for p in GPU_PRESETS if g.memory_gib < p.below_gib)
    return chosen.name, notes + ([chosen.note] if chosen.note else [])


def recommend(gpus: list[GpuInfo], presets: Path = PRESETS_DIR) -> Recommendation:
    """The recommended preset for these GPUs, with its values read from the preset file (the
    one place they live) and its ``auto`` choices made for them as training makes them
    (:func:`~qvl_helpers.resolved.resolve`)."""
    from .yaml_files import read_yaml_mapping

    name, notes = preset_for(gpus)
    values, _ = read_yaml_mapping(presets / f"{name}.yaml")
    choices = resolve(CourseConfig(**values),  # the preset over the defaults, checked as settings
                      cuda=bool(gpus), bf16_supported=bool(gpus) and gpus[0].bf16)
    return Recommendation(
        model="tiny" if not gpus else REAL_MODEL_ID, dtype=choices.torch_dtype_name,
        load_in_4bit=choices.quantization == "4bit", max_pixels=values["max_pixels"],
        batch_size=values["batch_size"], grad_accum=values["grad_accum"], preset=name,
        notes=notes)


def recommended_preset() -> Path:
    """The training preset ``qvl env`` recommends for this machine's GPUs (its file in configs/)."""
    return PRESETS_DIR / f"{recommend(detect_gpus()).preset}.yaml"


def run_checks(cfg: CourseConfig | None = None, gpus: list[GpuInfo] | None = None) -> EnvReport:
    """Run every check and build the report (never raises for a broken environment)."""
    cfg = cfg or load_config()
    gpus = detect_gpus() if gpus is None else gpus
    checks = [check_python(), *check_packages(), *check_gpus(gpus), check_bnb_4bit(),
              check_disk(Path(cfg.output_dir)), check_hf_cache(), check_model(cfg, bool(gpus))]
    return EnvReport(checks, gpus, recommend(gpus))


@dataclass(frozen=True)
class PresetMismatch:
    """A preset made for a CUDA GPU, used where there is none: the sentence saying so, whether
    the run is refused, and the fix."""

    sentence: str
    refuse: bool
    fix: str


def gpu_preset_mismatch(cfg: CourseConfig, choice: Any,
                        cuda_available: bool) -> PresetMismatch | None:
    """What to say when a preset with ``tuned_for: gpu`` runs without a CUDA GPU (None: no
    mismatch). ``qvl train`` and the notebooks show this one sentence.

    A learner who picks a GPU preset expects a GPU run; without a GPU (a Colab runtime left on
    CPU, the wrong machine), ``model: auto`` would silently train the tiny random stand-in with
    the preset's GPU knobs: hours of CPU time for nothing they asked for. So with ``model: auto``
    the run is refused with the fix. A learner who set ``model: tiny`` (or a model folder)
    themselves asked for that model: the run goes on, and the sentence says what it trains."""
    if cfg.tuned_for != "gpu" or cuda_available:
        return None
    origin = cfg.origin("tuned_for")
    preset = origin.file.name if origin.file is not None else f"this preset ({origin})"
    knobs = f"quantization {cfg.quantization}, max_pixels {cfg.max_pixels}, batch_size " \
            f"{cfg.batch_size}"
    here = compute_dtype_name(cfg.dtype, cuda=False)
    if cfg.dtype != "auto" and here != cfg.dtype:
        knobs += f"; its dtype {cfg.dtype} needs a GPU, so the CPU computes in float32"
    elif cfg.dtype == "bf16":
        knobs += "; its dtype bf16 runs on the CPU too, as bf16 mixed precision"
    if choice.is_tiny and str(cfg.model).strip() == "auto":
        return PresetMismatch(
            f"{preset} is made for a CUDA GPU and none was found: with model: auto this would "
            f"train the tiny random stand-in instead, with the preset's GPU settings ({knobs}).",
            True,
            "run on a machine with a CUDA GPU (Colab: Runtime > Change runtime type > T4 GPU), "
            "use configs/tiny_cpu.yaml to learn the pipeline here (what `qvl env` recommends), "
            "or set model: tiny (course.yaml, or --set model=tiny) to run this preset on the "
            "stand-in anyway.")
    what = "the tiny random stand-in" if choice.is_tiny else f"{choice.name} on the CPU"
    return PresetMismatch(
        f"{preset} is made for a CUDA GPU and none was found: this trains {what} (model: "
        f"{cfg.model}) with the preset's GPU settings ({knobs}).",
        False, "")
