"""What the notebooks call, in one place: ``from qvl_helpers.course import ...``.

The notebooks import from here and from the package's top level (``load_config`` and the other
stable entry points), never from the modules behind them, so that those modules can move and
change while the lessons keep their names. The names follow the notebooks' order; a function
defined here (rather than imported) is one call for something a notebook would otherwise do by
hand.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .config import CourseConfig
    from .tokens import TokenBudget

#: Where each name lives: imported on first use (PEP 562), so that importing this module is
#: light and notebook 00's environment check can report a broken package instead of failing on it.
_FROM = {
    "error_types": ".advice",
    "next_steps": ".advice",
    "Chat": ".chat",
    "compare_text": ".chat",
    "terminal_question": ".chat",
    "prompt_messages": ".collate",
    "SAMPLES_DIR": ".config",
    "check_file": ".data",
    "course_data": ".data",
    "course_records": ".data",
    "detect_file_format": ".data",
    "images_of": ".data",
    "prepare_data": ".data",
    "read_records": ".data",
    "scored_turn": ".data",
    "turns_of": ".data",
    "convert_file": ".data.writers",
    "recommended_preset": ".env",
    "run_checks": ".env",
    "eval_settings": ".evaluate",
    "evaluate": ".evaluate",
    "evaluate_run": ".evaluate",
    "format_report": ".evaluate",
    "plan_for_run": ".evaluate",
    "read_predictions": ".evaluate",
    "export": ".export",
    "plan_export": ".export",
    "worst_cases": ".gallery",
    "add_gguf": ".gguf_export",
    "GGUFSetupError": ".gguf_export",
    "push_folder": ".hub",
    "load_rgb": ".images",
    "newest_run_or_train": ".lessons",
    "simulate_disconnect": ".lessons",
    "add_lora": ".lora",
    "lora_modules": ".lora",
    "lora_targets": ".lora",
    "read_adapter_config": ".lora",
    "memory": ".memory",
    "get_metric": ".metrics",
    "register_metric": ".metrics",
    "resolve_task": ".metrics",
    "score_samples": ".metrics",
    "TASK_METRICS": ".metrics",
    "format_parameter_table": ".model",
    "load_model": ".model",
    "load_processor": ".model",
    "parameter_table": ".model",
    "gguf_section": ".modelcard",
    "length_histogram": ".plots",
    "loss_gap": ".plots",
    "metric_bars": ".plots",
    "problem_samples": ".plots",
    "resize_view": ".plots",
    "sample_grid": ".plots",
    "visual_tokens_plot": ".plots",
    "prompt_summary": ".prompts",
    "task_prompts": ".prompts",
    "real_processor": ".real_tokenizer",
    "read_log": ".runs",
    "architecture_rows": ".tiny",
    "label_mask_html": ".tokens",
    "oriented_size": ".tokens",
    "smart_resize": ".tokens",
    "token_budget": ".tokens",
    "tokens_side_by_side": ".tokens",
    "visual_tokens": ".tokens",
    "train": ".train",
    "bootstrap_interval": ".verdicts",
    "report_html": ".widgets",
    "sample_browser": ".widgets",
    "side_by_side": ".widgets",
}

__all__ = [
    # 00 environment check
    "architecture_rows", "format_parameter_table", "load_model", "load_processor", "memory",
    "parameter_table", "run_checks",
    # 01 data formatting
    "SAMPLES_DIR", "check_file", "convert_file", "course_data", "course_processor", "course_records",
    "detect_file_format", "prepare_data", "problem_samples", "read_records", "report_html",
    "sample_browser", "sample_grid",
    # 02 processor and tokens
    "images_of", "label_mask_html", "length_histogram", "load_rgb", "memory_report", "oriented_size",
    "real_processor", "resize_view", "smart_resize", "token_budget", "tokens_side_by_side",
    "turns_of", "visual_tokens", "visual_tokens_plot",
    # 03 QLoRA training
    "add_lora", "evaluate_run", "format_report", "lora_modules", "lora_targets", "loss_gap",
    "read_log", "recommended_preset", "simulate_disconnect", "train",
    # 04 evaluation
    "TASK_METRICS", "bootstrap_interval", "error_types", "eval_settings", "evaluate", "get_metric",
    "metric_bars",
    "new_output_folder", "newest_run_or_train", "next_steps", "plan_for_run", "prompt_summary",
    "read_predictions", "register_metric", "resolve_task", "score_samples", "scored_turn",
    "task_prompts", "worst_cases",
    # 05 merge and export
    "Chat", "GGUFSetupError", "add_gguf", "compare_text", "export", "gguf_section", "plan_export",
    "prompt_messages", "push_folder", "read_adapter_config", "side_by_side", "terminal_question",
]


def __getattr__(name: str) -> Any:
    if name in _FROM:
        module = importlib.import_module(_FROM[name], __package__)
        value = module if name == module.__name__.rsplit(".", 1)[-1] and not hasattr(module, name) \
            else getattr(module, name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def course_processor(cfg: CourseConfig) -> Any:
    """The processor of the course's model, set to resize images into the course's
    ``min_pixels``..``max_pixels`` (as training sets up the one it saves with the adapter)."""
    from .inference import load_processor_for
    from .tiny import ensure_model

    return load_processor_for(ensure_model(cfg.resolve_model()), limits=cfg.image_limits)


def memory_report(cfg: CourseConfig, budget: TokenBudget, records: Sequence[Any]) -> str:
    """The memory estimate ``qvl train --dry-run`` prints for ``cfg`` on this machine, from the
    token ``budget`` of its training ``records``."""
    from . import memory
    from .model import machine_facts
    from .resolved import resolve
    from .tiny import ensure_model

    choice = cfg.resolve_model()
    resolved = resolve(cfg, **machine_facts(), train_records=len(records))
    return memory.report_for_run(cfg, ensure_model(choice), budget, resolved=resolved,
                                 is_tiny=choice.is_tiny, records=records)


def new_output_folder(run: str | Path, step: Literal["eval", "export"], tag: str) -> Path:
    """A folder for a new ``eval`` or ``export`` of ``run``, beside it and named
    ``RUN-TAG-<date-time>``, so that running a notebook again never replaces an earlier result."""
    from .runs import Outputs

    name = f"{Path(run).name}-{tag}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Outputs.of_run(run).folder(step, name)
