"""Helpers for the Qwen2.5-VL fine-tuning course.

The notebooks explain; this package does the work. Stable entry points for scripts and tests:
``load_config``, ``load_records`` and ``make_collator`` (see ``docs``/design for the contract).
"""

import logging

# bitsandbytes 0.50, on CPUs with AVX-512 BF16, looks for an optional faster kernel through the
# `kernels` package and logs a scary-looking warning at import when it is absent; it then uses its
# built-in kernel, which is what the course tests. Only that module's logger is quietened.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from .config import CourseConfig, ModelChoice, ensure_model, load_config, model_banner  # noqa: E402
from .errors import ConfigError, DatasetError, ModelError, QVLError  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "CourseConfig", "DatasetError", "ModelChoice", "ModelError", "QVLError",
    "ensure_model", "load_config", "model_banner",
]
