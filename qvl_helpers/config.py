"""Course settings in one place: ``course.yaml``, a hardware preset, ``QVL_*`` variables, ``--set``.

:func:`load_config` merges the layers (later wins) and remembers where every value came from:

1. ``course.yaml``: the learner's choices (model, data, output folder) and the default knobs;
2. a preset from ``configs/``: hardware knobs only (a preset that sets ``data`` is refused);
3. ``QVL_<KEY>`` environment variables (a mistyped ``QVL_`` name is an error, not ignored);
4. ``--set key=value`` on the command line, and the flags that name a setting (or keyword
   arguments to :func:`load_config`).

pydantic checks every value against the field's type and bounds (finite positive numbers where
required, plain run names, compilable LoRA patterns); a failure becomes a
:class:`~qvl_helpers.errors.ConfigError` that names the origin of the bad value (file and line,
variable, or ``--set``). :meth:`CourseConfig.resolve_model` is the single place that decides which
model the course uses, and :func:`model_banner` is the notice shown while the tiny stand-in is used.

Longer than 450 lines because the settings are one pydantic model: every field with its bound,
the checks across fields, the model choice that reads them, and the layering that gives each
value its origin and every error its place; splitting them would pass origins across modules.
Reading the YAML files is :mod:`~qvl_helpers.yaml_files`, the ``auto`` choices for a machine
:mod:`~qvl_helpers.resolved`.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .errors import ConfigError
from .qwen import HUB_MIN_PIXELS, PIXELS_PER_TOKEN, REAL_MODEL_ID, TOKEN_SIDE, TRAINED_PARTS, ImageLimits
from .stand_in import cache_folder, is_stand_in
from .yaml_files import EMPTY_COURSE_FIX, read_yaml_mapping

TINY = "tiny"
CONFIG_FILE = "course.yaml"


def _course_root() -> Path:
    """Where the course's own files live: the repository (an editable install), else the
    unpacked ``qvl bundle`` archive that the current folder is in (a wheel installed by the
    notebooks' first cell on Colab/Kaggle, which moves into ``qvl-course/notebooks`` first)."""
    source = Path(__file__).resolve().parent.parent
    if (source / "configs").is_dir() and (source / CONFIG_FILE).is_file():
        return source
    here = Path.cwd().resolve()
    for folder in [here, *here.parents]:
        if (folder / "configs").is_dir() and (folder / CONFIG_FILE).is_file():
            return folder
    return source


COURSE_ROOT = _course_root()
PRESETS_DIR = COURSE_ROOT / "configs"        # hardware presets
SAMPLES_DIR = COURSE_ROOT / "data_samples"   # the bundled datasets
ENV_PREFIX = "QVL_"
#: The learner's own choices: only course.yaml, QVL_* or --set may set them, never a preset.
LEARNER_KEYS = ("model", "data", "image_root", "output_dir")
#: QVL_* variables that are not settings (anything else starting with QVL_ must be a setting).
OTHER_VARIABLES = {
    "QVL_CONFIG": "the course.yaml to use",
    "QVL_DEBUG": "1 shows tracebacks instead of one-line errors",
    "QVL_LLAMA_CPP": "a llama.cpp checkout whose convert_hf_to_gguf.py qvl export --gguf uses",
    "QVL_REQUIRE_GGUF": "1 fails the gguf tests without the gguf extra (scripts/gguf_test.sh)",
    "QVL_COURSE_REPO": "the course's git URL for the Colab/Kaggle setup cell",
    "QVL_HOSTED": "makes the setup cell act as on Colab/Kaggle (its tests)",
    "QVL_VARIANT": "the Docker image's variant (gpu, or cpu: the tiny model)",
    "QVL_LAB_IP": "the address JupyterLab listens on in the Docker image",
    "QVL_LAB_PORT": "the port JupyterLab listens on in the Docker image",
    "QVL_SESSION_ROOT": "where the setup cell unpacks the course (default /content or "
                        "/kaggle/working)",
    "QVL_VENV": "the virtual environment the set-up scripts use",
}
TRAINED_PRESETS = tuple(TRAINED_PARTS)
_PLAIN_NAME = re.compile(r"[\w][\w.\-]*")


def default_cache_dir() -> Path:
    """Where the course keeps what it builds for itself (the tiny model): ``$QVL_CACHE_DIR`` or
    ``$XDG_CACHE_HOME/qvl`` (``~/.cache/qvl``)."""
    if os.environ.get("QVL_CACHE_DIR"):
        return Path(os.environ["QVL_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "qvl"


@dataclass(frozen=True)
class Origin:
    """Where a setting's value came from: shown by ``qvl config`` and named by every error."""

    label: str                # "default", "course.yaml", "preset", "environment", "--set", ...
    file: Path | None = None  # the YAML file, for the file layers
    line: int | None = None   # 1-based line of the key in that file
    name: str | None = None   # the variable (QVL_LR) or the --set text (lr=1e-4)

    def __str__(self) -> str:
        if self.file is not None:
            return f"{self.file}:{self.line}" if self.line else str(self.file)
        if self.label == "environment":
            return f"environment variable {self.name}"
        return f"{self.label} {self.name}" if self.name else self.label

    def error(self, message: str, fix: str | None = None) -> ConfigError:
        """A ConfigError located at this origin."""
        if self.file is not None:
            return ConfigError(message, file=self.file, line=self.line, fix=fix)
        return ConfigError(message, file=str(self), fix=fix)


DEFAULT = Origin("default")

#: What to do about a bad value, per key (used in error messages).
FIXES = {
    "min_pixels": f"use a multiple of {PIXELS_PER_TOKEN} (one visual token is {TOKEN_SIDE}x"
                  f"{TOKEN_SIDE} px), e.g. {4 * PIXELS_PER_TOKEN}.",
    "max_pixels": f"use a multiple of {PIXELS_PER_TOKEN} at least min_pixels, e.g. "
                  f"{512 * PIXELS_PER_TOKEN} (512 visual tokens).",
    "max_length": "use the longest sample's token count or more (see `qvl tokens`), e.g. 2048.",
    "lr": "use a finite positive number; for LoRA 1e-4 to 2e-4 is usual.",
    "num_epochs": "use a positive number, e.g. 3.",
    "lora_alpha": "use a positive number, usually 2 x lora_r (0 would make the adapter do nothing).",
    "max_steps": "use -1 (train num_epochs) or a positive number of steps.",
    "run_name": "use a plain folder name such as my-run-1 (letters, digits, '-', '_', '.').",
    "trained": f"use {', '.join(TRAINED_PRESETS)} or a regular expression over module names.",
    "warmup": "use a fraction of the steps in [0, 1), e.g. 0.03.",
    "lora_dropout": "use a value in [0, 1), e.g. 0.05.",
    "save_total_limit": "keep at least 2: the Trainer deletes the older checkpoint before the "
                        "new one is marked complete, so 1 can leave none to resume from.",
    "eval_batch_size": "use a whole number of at least 1, e.g. 8 (lower it if evaluation runs out "
                       "of GPU memory).",
    "eval_quantization": "use none (16-bit), 4bit or 8bit.",
}


class CourseConfig(BaseModel):
    """Every setting of the course. Field names are the keys of ``course.yaml``.

    Paths are resolved against the folder of the file they came from (or the current folder for
    variables and ``--set``), so a notebook in ``notebooks/`` and a script at the repository root
    see the same files. ``origin(key)`` tells where a value came from.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, coerce_numbers_to_str=True,
                              validate_assignment=True)

    model: str = "auto"
    data: Path | None = None
    image_root: Path | None = None
    output_dir: Path = Path("outputs")
    cache_dir: Path = Field(default_factory=default_cache_dir)
    min_pixels: PositiveInt = HUB_MIN_PIXELS
    max_pixels: PositiveInt = 512 * PIXELS_PER_TOKEN
    max_length: PositiveInt = 2048
    lr: PositiveFloat = 2e-4
    num_epochs: PositiveFloat = 3
    batch_size: PositiveInt = 1
    grad_accum: PositiveInt = 4
    lora_r: PositiveInt = 8
    lora_alpha: PositiveInt = 16
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    seed: int = 0
    # --- training run (qvl train, notebook 03); presets in configs/ set these per hardware
    run_name: str = "run"
    quantization: Literal["auto", "4bit", "8bit", "none"] = "auto"  # auto: 4bit on CUDA
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"         # auto: bf16/fp16/fp32
    trained: str = "language"      # language, language+vision, language+merger or a regex
    warmup: float = Field(0.03, ge=0, lt=1)  # fraction of the steps warming up the lr
    weight_decay: NonNegativeFloat = 0.0
    max_grad_norm: NonNegativeFloat = 1.0    # 0 turns clipping off
    max_steps: int = -1            # > 0 overrides num_epochs
    logging_steps: PositiveInt = 10
    eval_steps: PositiveInt = 50
    save_steps: PositiveInt = 50
    save_total_limit: int = Field(2, ge=2)  # the previous checkpoint must survive a kill
    gradient_checkpointing: bool = True
    # --- lean training (each measured by `python -m benchmarks`)
    group_by_length: bool = True   # batches of similar token counts: less padding
    vision_no_grad: bool = True    # a vision tower with nothing to train builds no graph
    answer_logits: bool = True     # vocabulary logits only where an answer token is predicted
    frozen_fp32: bool = False      # 4/8-bit: keep what is not quantized in float32 (PEFT's way)
    on_too_long: Literal["error", "drop"] = "error"  # drop: skip and count such samples
    # a preset's knobs suit only the tiny stand-in (tiny) or need a CUDA GPU (gpu)
    tuned_for: Literal["any", "tiny", "gpu"] = "any"
    # --- evaluation (qvl eval, notebook 04)
    eval_task: Literal["auto", "short", "json", "reading", "description"] = "auto"
    eval_prompt: str | None = None  # the `prompt` system's system prompt (None: from the answers)
    eval_batch_size: PositiveInt = 8  # samples generated together
    eval_quantization: Literal["none", "4bit", "8bit"] = "none"  # how evaluation loads the base
    eval_seed: int = 0  # the bootstrap intervals' resampling (not the training seed)
    source: Path | None = None  # the course.yaml this came from (None: defaults only)

    _origins: dict[str, Origin] = PrivateAttr(default_factory=dict)

    def __init__(self, _origins: Mapping[str, Origin] | None = None, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _config_error(exc, _origins or {}) from None
        self._origins.update(_origins or {})

    def __setattr__(self, key: str, value: Any) -> None:
        old = self.__dict__.get(key)
        try:
            super().__setattr__(key, value)
        except ValidationError as exc:
            self.__dict__[key] = old  # a whole-model check runs after the value was set

            origins = {**self._origins, key: Origin("assignment", name=f"cfg.{key}")}
            raise _config_error(exc, origins) from None

    @field_validator("model")
    @classmethod
    def _model_named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(f"model is empty; use auto, tiny, {REAL_MODEL_ID} or a folder")
        return value.strip()

    @model_validator(mode="after")
    def _no_contradiction(self) -> CourseConfig:
        """Values that cannot work together, checked here once so that every command, notebook
        and assignment refuses them; :func:`_config_error` names each key's origin."""
        if self.min_pixels > self.max_pixels:
            raise _contradiction(f"min_pixels ({self.min_pixels}) is above max_pixels "
                                 f"({self.max_pixels}): no image size lies between them",
                                 "make min_pixels at most max_pixels (the usual range is "
                                 f"{4 * PIXELS_PER_TOKEN} to {512 * PIXELS_PER_TOKEN})",
                                 "min_pixels", "max_pixels")
        at_least = math.ceil(self.min_pixels / PIXELS_PER_TOKEN)
        if at_least >= self.max_length:
            raise _contradiction(f"min_pixels ({self.min_pixels}) gives every image at least "
                                 f"{at_least} visual tokens, and max_length "
                                 f"({self.max_length}) is no more than that: "
                                 "no sample with an image would fit",
                                 "lower min_pixels (e.g. 3136, 4 visual tokens) or raise "
                                 "max_length (see `qvl tokens`)", "min_pixels", "max_length")
        return self

    @model_validator(mode="after")
    def _paths_of_the_right_kind(self) -> CourseConfig:
        """A path setting that exists must be what it is used as (a file or a folder)."""
        for key, want in _PATH_KINDS.items():
            path = getattr(self, key)
            if path is None or not Path(path).exists():
                continue  # a missing path is reported by the step that needs it
            if want == "file" and Path(path).is_dir():
                raise _wrong_kind(key, path, "a folder", "a file")
            if want == "folder" and not Path(path).is_dir():
                raise _wrong_kind(key, path, "a file", "a folder")
        return self

    @field_validator("max_steps")
    @classmethod
    def _steps_meaningful(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError(f"max_steps must be -1 (use num_epochs) or positive, not {value}")
        return value

    @field_validator("run_name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not _PLAIN_NAME.fullmatch(value) or ".." in value or len(value) > 100:
            raise ValueError(f"run_name {value!r} is not a plain folder name (it would write "
                             "outside outputs/runs/)")
        return value

    @field_validator("trained")
    @classmethod
    def _pattern_compiles(cls, value: str) -> str:
        if value not in TRAINED_PRESETS:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"trained {value!r} is neither a preset nor a valid regular "
                                 f"expression ({exc})") from None
        return value

    # ------------------------------------------------------------------ provenance and views

    def origin(self, key: str) -> Origin:
        """Where ``key``'s value came from (``default`` when nothing set it)."""
        return self._origins.get(key, DEFAULT)

    def error(self, key: str, message: str, fix: str | None = None) -> ConfigError:
        """A ConfigError about ``key``'s value, located where that value was set."""
        return self.origin(key).error(message, fix or FIXES.get(key))

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-friendly values (paths as strings), e.g. to save with a run."""
        return self.model_dump(mode="json")

    def describe(self) -> str:
        """Every setting, its value and where it came from, as aligned text."""
        rows = [(key, str(value), str(self.origin(key)))
                for key, value in self.to_dict().items() if key != "source"]
        width = max(len(k) for k, _, _ in rows)
        vwidth = min(48, max(len(v) for _, v, _ in rows))
        return "\n".join(f"{k:<{width}}  {v:<{vwidth}}  {o}" for k, v, o in rows)

    def resolve_model(self, cuda_available: bool | None = None) -> ModelChoice:
        """Decide which model to use. Pure: builds and downloads nothing (see
        :func:`qvl_helpers.tiny.ensure_tiny_model` for that).

        Raises:
            ConfigError: ``model`` names a local folder (``./x``, ``/x``, ``~/x``) that does not
                exist.
        """
        name = str(self.model).strip()
        if name == "auto":
            if cuda_available is None:
                import torch

                cuda_available = torch.cuda.is_available()
            if cuda_available:
                return ModelChoice(REAL_MODEL_ID, REAL_MODEL_ID, False,
                                   "model: auto and a CUDA GPU is present")
            return ModelChoice(TINY, str(self.tiny_model_dir), True,
                               "model: auto and no CUDA GPU was found")
        if name == TINY:
            return ModelChoice(TINY, str(self.tiny_model_dir), True, "model: tiny was asked for")
        local = Path(name).expanduser()
        if not local.is_absolute() and self.source is not None:
            candidate = self.source.parent / local
            if candidate.exists():
                local = candidate
        if local.exists():
            self._check_model_folder(local)
            return ModelChoice(name, str(local.resolve()), is_stand_in(local), "a local folder")
        if not _HUB_ID.fullmatch(name):
            raise self.error("model", f"the model folder {name} does not exist (and it is not a "
                                      "hub id such as Qwen/Qwen2.5-VL-3B-Instruct).",
                             fix="check the path (relative paths are relative to course.yaml), "
                                 "or use auto or tiny.")
        return ModelChoice(name, name, False, "a Hugging Face hub id")

    def _check_model_folder(self, local: Path) -> None:
        """A local ``model`` must be a saved model's folder (with ``config.json``)."""
        fix = ("point model to a folder with a saved model (config.json and *.safetensors: "
               "an export, or `qvl tiny --out DIR`), or use auto, tiny or a hub id.")
        if not local.is_dir():
            raise self.error("model", f"the model {local} is a file; model must be a folder "
                                      "with a saved model.", fix=fix)
        if (local / "adapter_config.json").is_file() and not (local / "config.json").is_file():
            raise self.error("model", f"{local} is a LoRA adapter, not a model.",
                             fix="set model to the adapter's base model and give the adapter "
                                 "itself as --adapter (or use `qvl export` to merge them).")
        if not (local / "config.json").is_file():
            raise self.error("model", f"the model folder {local} has no config.json: it is "
                                      "not a saved model.", fix=fix)

    @property
    def image_limits(self) -> ImageLimits:
        """``min_pixels``/``max_pixels`` as the value training sets on its processor."""
        return ImageLimits(self.min_pixels, self.max_pixels)

    @property
    def tiny_model_dir(self) -> Path:
        """Cache folder of the tiny stand-in (one folder per builder version)."""
        return cache_folder(self.cache_dir)


#: owner/name on the Hugging Face hub (a path like ./x, /x or a/b/c is a folder).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+")
SETTINGS = tuple(k for k in CourseConfig.model_fields if k != "source")
_PATH_KEYS = {"data", "image_root", "output_dir", "cache_dir"}
#: What each path setting must be, with what it is for (in the wrong-kind message).
_PATH_KINDS = {"data": "file", "image_root": "folder", "output_dir": "folder",
               "cache_dir": "folder"}
_PATH_USES = {"data": "your annotation file (.jsonl, .json or .csv)",
              "image_root": "the folder your image paths are relative to",
              "output_dir": "the folder every step writes its results under",
              "cache_dir": "the folder the course keeps the tiny model in"}


def _contradiction(message: str, fix: str, *keys: str) -> PydanticCustomError:
    """A whole-config error about ``keys`` together, with its fix (see :func:`_config_error`)."""
    return PydanticCustomError("contradiction", message.replace("{", "(").replace("}", ")"),
                               {"keys": ",".join(keys), "fix": fix})


def _wrong_kind(key: str, path: Path, found: str, want: str) -> PydanticCustomError:
    message = (f"{key} points to {path}, which is {found}; {key} must be {want}: "
               f"{_PATH_USES[key]}")
    return PydanticCustomError("wrong_kind", message.replace("{", "(").replace("}", ")"),
                               {"keys": key})


@dataclass(frozen=True)
class ModelChoice:
    """The model the course will use, and why.

    Attributes:
        name: what the learner asked for after resolution (``tiny``, a hub id or a folder).
        path: what to pass to ``from_pretrained`` (for the tiny model: its cache folder).
        is_tiny: True when the random stand-in is used.
        reason: one sentence saying why this model was chosen.
    """

    name: str
    path: str
    is_tiny: bool
    reason: str


def _config_error(exc: ValidationError, origins: Mapping[str, Origin]) -> ConfigError:
    """The first problem pydantic found, located at the origin of the bad value."""
    problems = exc.errors()
    first = problems[0]
    if first["type"] in ("contradiction", "wrong_kind"):
        keys = first["ctx"]["keys"].split(",")
        blamed = origins.get(_latest(*keys, origins=origins), DEFAULT)
        if first["type"] == "wrong_kind":
            return blamed.error(first["msg"] + ".", f"set {keys[0]} to {_PATH_USES[keys[0]]} "
                                                    f"(it was set at {blamed}).")
        where = "; ".join(f"{key} from {origins.get(key, DEFAULT)}" for key in keys)
        return blamed.error(f"{first['msg']} ({where}).", first["ctx"]["fix"] + ".")
    key = str(first["loc"][0]) if first["loc"] else _latest("min_pixels", "max_pixels",
                                                            origins=origins)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return _unknown_key(key, origins.get(key, Origin("load_config() arguments")))
    shown = first.get("input")
    more = f" ({len(problems) - 1} more problem(s) after this one)" if len(problems) > 1 else ""
    text = message if message.startswith(key) else f"{key}: {message}"
    if first["loc"] and not isinstance(shown, dict) and repr(shown) not in text:
        text += f" (got {shown!r})"
    return origins.get(key, DEFAULT).error(text + "." + more,
                                           FIXES.get(key, f"give {key} a valid value."))


#: Layers in the order they are applied: a cross-field error is blamed on the latest one.
_LAYERS = ("default", "default (beside course.yaml)", "course.yaml", "settings file", "preset",
           "environment", "--set", "load_config()", "assignment")


def _latest(*keys: str, origins: Mapping[str, Origin]) -> str:
    """Of ``keys``, the one set by the latest layer (the value the learner changed last)."""
    def rank(key: str) -> int:  # a command-line flag comes after every layer
        label = origins.get(key, DEFAULT).label
        return _LAYERS.index(label) if label in _LAYERS else len(_LAYERS)

    return max(keys, key=rank)


def _unknown_key(key: str, origin: Origin) -> ConfigError:
    close = difflib.get_close_matches(key, list(SETTINGS), n=1)
    hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(SETTINGS)}."
    return origin.error(f"unknown setting {key!r}.", hint)


def find_config_file(start: Path | None = None) -> Path | None:
    """``$QVL_CONFIG`` if set, else the first ``course.yaml`` in ``start`` (default: the current
    folder) or one of its parents."""
    if os.environ.get("QVL_CONFIG"):
        path = Path(os.environ["QVL_CONFIG"]).expanduser()
        if path.is_dir():
            raise ConfigError("QVL_CONFIG points to a folder; it must name a file, your "
                              "course.yaml.", file=path,
                              fix=f"set QVL_CONFIG={path / CONFIG_FILE} (or unset it).")
        if not path.is_file():
            raise ConfigError("QVL_CONFIG points to a file that does not exist.", file=path,
                              fix="unset QVL_CONFIG or point it to your course.yaml.")
        return path.resolve()
    here = (start or Path.cwd()).resolve()
    for folder in [here, *here.parents]:
        if (folder / CONFIG_FILE).is_file():
            return folder / CONFIG_FILE
    return None


#: The fix for an empty preset file.
PRESET_EMPTY_FIX = ("give it hardware settings (see configs/tiny_cpu.yaml), or leave out "
                    "--config.")


def _is_preset(path: Path) -> bool:
    return path.resolve().parent == PRESETS_DIR.resolve()


def _path_value(value: Any, base: Path) -> Any:
    """Resolve a path setting against ``base``; ``null``/empty means None."""
    if value is None or (isinstance(value, str) and value.strip().lower() in {"", "null", "none"}):
        return None
    if not isinstance(value, str | Path):
        return value  # pydantic reports the wrong type
    path = Path(value).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


class _Layers:
    """Values and their origins, merged layer by layer (later wins)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.origins: dict[str, Origin] = {}

    def add(self, key: str, value: Any, origin: Origin, base: Path) -> None:
        if key not in SETTINGS:
            raise _unknown_key(key, origin)
        if key in _PATH_KEYS:
            value = _path_value(value, base)
            if value is None and key in ("output_dir", "cache_dir"):
                raise origin.error(f"{key} has no value.", f"give {key} a folder or remove it.")
        self.values[key] = value
        self.origins[key] = origin

    def add_file(self, file: Path, label: str) -> None:
        if file.is_dir():
            raise ConfigError(f"this is a folder; the {label} must be a YAML file.", file=file,
                              fix="name one file in it, e.g. configs/tiny_cpu.yaml (`ls` "
                                  "shows the presets).")
        if not file.is_file():
            raise ConfigError("configuration file not found.", file=file,
                              fix="check the path (presets live in configs/).")
        values, lines = read_yaml_mapping(file, empty_fix=PRESET_EMPTY_FIX if _is_preset(file)
                                          else EMPTY_COURSE_FIX)
        for key, value in values.items():
            origin = Origin(label, file, lines.get(key))
            if label == "preset" and key in LEARNER_KEYS:
                raise origin.error(
                    f"a preset holds hardware settings only, and {key} is your choice.",
                    f"remove {key} from the preset; set {key}: in course.yaml (or --set "
                    f"{key}=...).")
            self.add(key, value, origin, file.parent)

    def add_environment(self, environ: Mapping[str, str]) -> None:
        for name, value in sorted(environ.items()):
            if not name.startswith(ENV_PREFIX) or name in OTHER_VARIABLES:
                continue
            key = name[len(ENV_PREFIX):].lower()
            origin = Origin("environment", name=name)
            if key not in SETTINGS:
                known = [ENV_PREFIX + k.upper() for k in SETTINGS] + list(OTHER_VARIABLES)
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                raise origin.error(f"{name} is not a setting of the course.",
                                   f"{hint}Unset it (unset {name}) or correct its name; the "
                                   "settings are the keys of course.yaml.")
            self.add(key, value, origin, Path.cwd())


def parse_set(items: Iterable[str]) -> dict[str, str]:
    """``["lr=0.001", "run_name=x"]`` (the CLI's ``--set``) as a mapping."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} is not key=value.", fix="write e.g. --set lr=1e-4")
        out[key.strip()] = value.strip()
    return out


def load_config(path: str | Path | None = None, *, presets: Iterable[str | Path] = (),
                use_env: bool = True, sets: Mapping[str, Any] | None = None,
                flags: Mapping[str, tuple[str, Any]] | None = None,
                **overrides: Any) -> CourseConfig:
    """Load the course settings, remembering where each value came from.

    Order (later wins): defaults; ``course.yaml`` (``path``, ``$QVL_CONFIG`` or the nearest one
    above the current folder); each preset in ``presets`` (hardware knobs only; relative paths in
    it are relative to the preset); ``QVL_<KEY>`` variables; ``sets`` (the CLI's ``--set``);
    ``flags``, ``{key: (flag, value)}`` (a command's flag that names a setting, such as
    ``--max-pixels``: ``--set`` spelled as a flag); keyword ``overrides``. Every value is
    checked together with the rest, so a flag that contradicts a setting is refused, named.

    Raises:
        ConfigError: unreadable file, invalid YAML, unknown key or variable, a preset that sets a
            learner's choice, or a value that cannot work; located at its origin.
    """
    file = Path(path).expanduser().resolve() if path is not None else find_config_file()
    layers = _Layers()
    if file is not None:
        layers.add_file(file, "course.yaml" if file.name == CONFIG_FILE else "settings file")
    for preset in presets:
        layers.add_file(Path(preset).expanduser().resolve(), "preset")
    if use_env:
        layers.add_environment(os.environ)
    for key, value in (sets or {}).items():
        layers.add(key, value, Origin("--set", name=f"{key}={value}"), Path.cwd())
    for key, (flag, value) in (flags or {}).items():
        layers.add(key, value, Origin(flag, name=str(value)), Path.cwd())
    for key, value in overrides.items():
        layers.add(key, value, Origin("load_config()", name=f"{key}={value!r}"), Path.cwd())
    if "output_dir" not in layers.values and file is not None:
        layers.values["output_dir"] = file.parent / "outputs"
        layers.origins["output_dir"] = Origin("default (beside course.yaml)")
    return CourseConfig(_origins=layers.origins, **layers.values, source=file)


def choose_model(model: str | Path, flag: str = "--model", *,
                 cache_dir: str | Path | None = None) -> ModelChoice:
    """Resolve a model named outside the settings (a command-line flag, a run's record), with
    ``cache_dir`` as the cache folder (None: ``course.yaml``'s); errors name ``flag``, not a
    file."""
    cfg = load_config()
    if cache_dir is not None:  # a command's own settings (--set cache_dir=...)
        cfg.cache_dir = Path(cache_dir)
    origin = Origin(flag, name=str(model))
    try:
        cfg.model = str(model)
    except ConfigError as exc:
        raise origin.error(exc.message, exc.fix) from None
    cfg._origins["model"] = origin
    return cfg.resolve_model()


def model_banner(choice: ModelChoice) -> str:
    """A boxed notice that the tiny stand-in is in use (empty string for a real model)."""
    if not choice.is_tiny:
        return ""
    lines = [
        "TINY STAND-IN MODEL IN USE (" + choice.reason + ")",
        "It has Qwen2.5-VL's classes, processor, tokens and chat template but random weights:",
        "its answers are noise and only show that the pipeline works.",
        f"For real results run on a CUDA GPU (model: auto) or set model: {REAL_MODEL_ID}.",
    ]
    width = max(len(line) for line in lines)
    border = "+" + "-" * (width + 2) + "+"
    return "\n".join([border, *[f"| {line.ljust(width)} |" for line in lines], border])


def check_path_settings(cfg: CourseConfig, keys: Iterable[str] = ("data", "image_root",
                                                                  "output_dir")) -> None:
    """Refuse a path setting that cannot work, once, naming the key, where it was set, the path
    and the fix: ``data`` must be a file, ``image_root`` an existing folder (when set), and
    ``output_dir``/``cache_dir`` folders when they exist (they are created otherwise).

    Raises:
        ConfigError: located at the value's origin (course.yaml line, ``QVL_*`` or ``--set``).
    """
    from .fixes import current

    for key in keys:
        value = getattr(cfg, key)
        if value is None:
            if key == "data":
                raise cfg.error("data", "no data file is configured.",
                                fix=_path_fix(cfg, key, "annotation file", current()))
            continue
        path = Path(value)
        want_file = key == "data"
        if want_file and path.is_file() or not want_file and path.is_dir():
            continue
        if key in ("output_dir", "cache_dir") and not path.exists():
            continue
        what = "annotation file" if want_file else "folder"
        if path.exists():
            state = "is a folder, not a file" if want_file else "is a file, not a folder"
        else:
            state = "does not exist"
        raise cfg.error(key, f"{key} is {path}, which {state}.",
                        fix=_path_fix(cfg, key, what, current()))


def _path_fix(cfg: CourseConfig, key: str, what: str, entry: Any) -> str:
    """Where to correct ``key``: the variable or ``--set`` that gave it, else course.yaml."""
    origin = cfg.origin(key)
    if origin.label == "environment":
        return f"correct {origin.name} to an existing {what}, or unset it."
    if origin.label == "--set":
        return f"correct --set {key}=... to an existing {what}."
    fix = f"set {key}: in course.yaml to an existing {what}"
    if entry is not None and "--set" in entry.flags:
        fix += f" (or pass --set {key}=...)"
    return fix + "."
