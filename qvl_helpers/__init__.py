"""Helpers for the Qwen2.5-VL fine-tuning course.

The notebooks explain; this package does the work. Stable entry points for scripts and tests:
``load_config``, ``load_records`` and ``make_collator`` (see ``docs``/design for the contract).
"""

from .config import CourseConfig, ModelChoice, ensure_model, load_config, model_banner
from .errors import ConfigError, DatasetError, ModelError, QVLError

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "CourseConfig", "DatasetError", "ModelChoice", "ModelError", "QVLError",
    "ensure_model", "load_config", "model_banner",
]
