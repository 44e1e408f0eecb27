"""Course settings in one place: ``course.yaml`` plus ``QVL_*`` environment overrides.

:func:`load_config` finds and reads ``course.yaml`` (PyYAML does the parsing), applies environment
variables, checks every value and returns a :class:`CourseConfig`. :meth:`CourseConfig.resolve_model`
is the single place that decides which model the course uses (``auto`` → the real 3B on a CUDA GPU,
the tiny stand-in otherwise), and :func:`model_banner` is the warning every notebook shows while the
stand-in is in use.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

REAL_MODEL_ID = "Qwen/Qwen2.5-VL-3B-Instruct"
TINY = "tiny"
CONFIG_FILE = "course.yaml"
ENV_PREFIX = "QVL_"


def default_cache_dir() -> Path:
    """Where the course keeps what it builds for itself (the tiny model): ``$QVL_CACHE_DIR`` or
    ``$XDG_CACHE_HOME/qvl`` (``~/.cache/qvl``)."""
    if os.environ.get("QVL_CACHE_DIR"):
        return Path(os.environ["QVL_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "qvl"


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


@dataclass
class CourseConfig:
    """Every setting of the course. Field names are the keys of ``course.yaml``.

    Paths are stored resolved against the folder of the file they came from (or the current
    folder for environment variables), so a notebook in ``notebooks/`` and a script at the
    repository root see the same files.
    """

    model: str = "auto"
    data: Path | None = None
    image_root: Path | None = None
    output_dir: Path = Path("outputs")
    cache_dir: Path = field(default_factory=default_cache_dir)
    min_pixels: int = 3136
    max_pixels: int = 512 * 28 * 28
    max_length: int = 2048
    lr: float = 2e-4
    num_epochs: float = 3
    batch_size: int = 1
    grad_accum: int = 4
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    seed: int = 0
    # --- training run (qvl train, notebook 03); presets in configs/ set these per hardware
    run_name: str = "run"
    quantization: str = "auto"     # auto (4bit on CUDA, none on CPU), 4bit, 8bit, none
    dtype: str = "auto"            # auto (bf16, fp16 on T4/V100, fp32 on CPU), bf16, fp16, fp32
    trained: str = "language"      # language, language+vision, language+merger or a regex
    warmup: float = 0.03           # fraction of the steps spent warming up the learning rate
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_steps: int = -1            # > 0 overrides num_epochs
    logging_steps: int = 10
    eval_steps: int = 50
    save_steps: int = 50
    save_total_limit: int = 2
    gradient_checkpointing: bool = True
    group_by_length: bool = True
    on_too_long: str = "error"     # error: refuse the run; drop: skip and count such samples
    source: Path | None = None  # the course.yaml this came from (None: defaults only)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values that cannot work, saying which key and why."""
        where = str(self.source) if self.source else "configuration"
        positive = ["min_pixels", "max_pixels", "max_length", "batch_size", "grad_accum", "lora_r"]
        for key in positive:
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be positive, got {getattr(self, key)}.", file=where,
                                  fix=f"set {key} to a number above 0.")
        if self.min_pixels > self.max_pixels:
            raise ConfigError(
                f"min_pixels ({self.min_pixels}) is larger than max_pixels ({self.max_pixels}).",
                file=where, fix="make min_pixels <= max_pixels (one visual token is 28*28 = 784 px).")
        if self.lr <= 0 or self.num_epochs <= 0:
            raise ConfigError("lr and num_epochs must be positive.", file=where,
                              fix="use for example lr: 0.0002 and num_epochs: 3.")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}.",
                              file=where, fix="use 0.05 (the usual value) or 0.")
        choices = {"quantization": ("auto", "4bit", "8bit", "none"),
                   "dtype": ("auto", "bf16", "fp16", "fp32"), "on_too_long": ("error", "drop")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got "
                                  f"{getattr(self, key)!r}.", file=where,
                                  fix=f"set {key} to one of {', '.join(allowed)}.")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}.",
                              file=where, fix="use for example warmup: 0.03.")
        if not str(self.model).strip():
            raise ConfigError("model is empty.", file=where,
                              fix=f"use auto, tiny, {REAL_MODEL_ID} or a local model folder.")

    def resolve_model(self, cuda_available: bool | None = None) -> ModelChoice:
        """Decide which model to use. Pure: builds and downloads nothing (see
        :func:`qvl_helpers.tiny.ensure_tiny_model` for that).

        Args:
            cuda_available: override for tests; by default ``torch.cuda.is_available()``.
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
            return ModelChoice(name, str(local.resolve()), _looks_tiny(local), "a local folder")
        return ModelChoice(name, name, False, "a Hugging Face hub id")

    @property
    def tiny_model_dir(self) -> Path:
        """Cache folder of the tiny stand-in (one folder per builder version)."""
        from .tiny import BUILDER_VERSION

        return self.cache_dir / f"tiny-qwen2_5_vl-v{BUILDER_VERSION}"

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-friendly values (paths as strings), e.g. to save with a run."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out


def _looks_tiny(folder: Path) -> bool:
    from .tiny import MARKER_FILE

    return (folder / MARKER_FILE).exists()


_FIELDS = {f.name: f for f in dataclasses.fields(CourseConfig) if f.name != "source"}
_PATH_KEYS = {"data", "image_root", "output_dir", "cache_dir"}


def _convert(key: str, value: Any, origin: str, base: Path) -> Any:
    """Convert one raw value (YAML scalar or environment string) to the field's type."""
    empty = value is None or (isinstance(value, str) and value.strip().lower() in {"", "null"})
    if empty:
        if key in {"data", "image_root"}:
            return None
        raise ConfigError(f"{key} has no value.", file=origin, fix=f"give {key} a value or remove it.")
    if key in _PATH_KEYS:
        path = Path(str(value)).expanduser()
        return Path(os.path.normpath(path if path.is_absolute() else base / path))
    default = _FIELDS[key].default
    kind = type(default) if default is not dataclasses.MISSING else str
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"true", "yes", "on", "1"}:
                return True
            if text in {"false", "no", "off", "0"}:
                return False
            raise ValueError(text)
        if kind is int:
            if isinstance(value, float) and value.is_integer():
                return int(value)
            return int(str(value).replace("_", ""))
        if kind is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a {kind.__name__}, got {value!r}.", file=origin,
                          fix=f"write {key} as a plain {kind.__name__}.") from None


def find_config_file(start: Path | None = None) -> Path | None:
    """``$QVL_CONFIG`` if set, else the first ``course.yaml`` in ``start`` (default: the current
    folder) or one of its parents."""
    if os.environ.get("QVL_CONFIG"):
        path = Path(os.environ["QVL_CONFIG"]).expanduser()
        if not path.is_file():
            raise ConfigError("QVL_CONFIG points to a file that does not exist.", file=path,
                              fix="unset QVL_CONFIG or point it to your course.yaml.")
        return path.resolve()
    here = (start or Path.cwd()).resolve()
    for folder in [here, *here.parents]:
        if (folder / CONFIG_FILE).is_file():
            return folder / CONFIG_FILE
    return None


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the file ({exc}).", file=path,
                          fix="check the path and save the file as UTF-8.") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML: {problem}.", file=path, line=line,
                          fix="fix the indentation or quoting on that line.") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("the file must hold key: value pairs.", file=path,
                          fix="see the course.yaml at the repository root for the layout.")
    return raw


def _unknown_key(key: str, origin: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(_FIELDS), n=1)
    hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(sorted(_FIELDS))}."
    return ConfigError(f"unknown setting {key!r}.", file=origin, fix=hint)


def _read_settings(file: Path) -> dict[str, Any]:
    if not file.is_file():
        raise ConfigError("configuration file not found.", file=file,
                          fix="check the path (presets live in configs/).")
    values = {}
    for key, value in read_yaml_mapping(file).items():
        if key not in _FIELDS:
            raise _unknown_key(str(key), str(file))
        values[key] = _convert(key, value, str(file), file.parent)
    return values


def parse_set(items: list[str]) -> dict[str, str]:
    """``["lr=0.001", "run_name=x"]`` (the CLI's ``--set``) as a mapping."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} is not key=value.", fix="write e.g. --set lr=1e-4")
        out[key.strip()] = value.strip()
    return out


def load_config(path: str | Path | None = None, *, presets: list[str | Path] = (),
                use_env: bool = True, **overrides: Any) -> CourseConfig:
    """Load the course settings.

    Order (later wins): defaults, ``course.yaml`` (``path``, ``$QVL_CONFIG`` or the nearest one
    above the current folder), each preset file in ``presets`` (relative paths in a preset are
    relative to the preset), ``QVL_<KEY>`` environment variables, keyword ``overrides``.

    Raises:
        ConfigError: unreadable file, invalid YAML, unknown key or a value that cannot work.
    """
    file = Path(path).expanduser().resolve() if path is not None else find_config_file()
    values: dict[str, Any] = {}
    if file is not None:
        values.update(_read_settings(file))
    for preset in presets:
        values.update(_read_settings(Path(preset).expanduser().resolve()))
    if use_env:
        for name, value in os.environ.items():
            if not name.startswith(ENV_PREFIX) or name in {"QVL_CONFIG"}:
                continue
            key = name[len(ENV_PREFIX):].lower()
            if key in _FIELDS:
                values[key] = _convert(key, value, f"environment variable {name}", Path.cwd())
    for key, value in overrides.items():
        if key not in _FIELDS:
            raise _unknown_key(key, "load_config() arguments")
        values[key] = _convert(key, value, "load_config() arguments", Path.cwd())
    if "output_dir" not in values and file is not None:
        values["output_dir"] = file.parent / "outputs"
    return CourseConfig(**values, source=file)


def ensure_model(choice: ModelChoice) -> str:
    """Make the chosen model loadable and return what to pass to ``from_pretrained``.

    Builds the tiny stand-in into its cache folder when it is missing (a few seconds, offline);
    a hub model is left to ``from_pretrained`` to download on first use.
    """
    if choice.is_tiny:
        from .tiny import ensure_tiny_model

        return str(ensure_tiny_model(choice.path))
    return choice.path


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
