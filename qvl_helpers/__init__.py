"""Helpers for the Qwen2.5-VL fine-tuning course.

The notebooks explain; this package does the work. Stable entry points for scripts and tests::

    from qvl_helpers import load_config, load_records, make_collator

Importing the package is light (no torch): ``load_records`` and ``make_collator`` are imported
on first use (PEP 562 module ``__getattr__``), so ``qvl --help`` and config checks stay fast.
"""

import importlib
import logging
from typing import Any

# bitsandbytes 0.50, on CPUs with AVX-512 BF16, looks for an optional faster kernel through the
# `kernels` package and logs a scary-looking warning at import when it is absent; it then uses its
# built-in kernel, which is what the course tests. Only that module's logger is quietened.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from .config import CourseConfig, ModelChoice, load_config, model_banner  # noqa: E402
from .errors import ConfigError, DatasetError, ModelError, QVLError  # noqa: E402
from .errors import show_in_notebooks as _show_in_notebooks  # noqa: E402

_show_in_notebooks()  # in a notebook, a course error shows as its one line, not a stack

__version__ = "0.1.0"

#: Stable names that pull in torch or transformers, imported from their module on first use.
_LAZY = {"ensure_model": ".tiny", "load_records": ".data", "make_collator": ".collate"}

__all__ = [
    "ConfigError", "CourseConfig", "DatasetError", "ModelChoice", "ModelError", "QVLError",
    "ensure_model", "load_config", "load_records", "make_collator", "model_banner",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
