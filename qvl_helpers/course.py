"""What the notebooks call, in one place: ``from qvl_helpers.course import ...``.

The notebooks import from here and from the package's top level (``load_config`` and the other
stable entry points), never from the modules behind them, so that those modules can move and
change while the lessons keep their names. The names follow the notebooks' order; a function
defined here (rather than imported) is one call for something a notebook would otherwise do by
hand.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from . import memory
from .advice import error_types, next_steps
from .chat import Chat, compare_text, terminal_question
from .collate import prompt_messages
from .config import SAMPLES_DIR, CourseConfig
from .data import (
    check_file,
    course_data,
    course_records,
    detect_file_format,
    images_of,
    prepare_data,
    read_records,
    scored_turn,
    turns_of,
)
from .data.writers import convert_file
from .env import recommended_preset, run_checks
from .evaluate import (
    evaluate,
    evaluate_run,
    format_report,
    plan_for_run,
    prompt_summary,
    read_predictions,
    task_prompts,
)
from .export import export, plan_export
from .gallery import worst_cases
from .gguf_export import GGUFSetupError, add_gguf
from .hub import push_folder
from .images import load_rgb
from .inference import load_processor_for
from .lessons import newest_run_or_train, simulate_disconnect
from .lora import add_lora, lora_modules, lora_targets, read_adapter_config
from .metrics import TASK_METRICS, get_metric, register_metric, resolve_task, score_samples
from .model import format_parameter_table, load_model, load_processor, machine_facts, parameter_table
from .modelcard import gguf_section
from .plots import (
    length_histogram,
    loss_gap,
    metric_bars,
    problem_samples,
    resize_view,
    sample_grid,
    visual_tokens_plot,
)
from .real_tokenizer import real_processor
from .resolved import resolve
from .runs import Outputs, read_log
from .tiny import architecture_rows, ensure_model
from .tokens import (
    TokenBudget,
    label_mask_html,
    oriented_size,
    smart_resize,
    token_budget,
    tokens_side_by_side,
    visual_tokens,
)
from .train import train
from .verdicts import bootstrap_interval
from .widgets import report_html, sample_browser, side_by_side

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
    "TASK_METRICS", "bootstrap_interval", "error_types", "evaluate", "get_metric", "metric_bars",
    "new_output_folder", "newest_run_or_train", "next_steps", "plan_for_run", "prompt_summary",
    "read_predictions", "register_metric", "resolve_task", "score_samples", "scored_turn",
    "task_prompts", "worst_cases",
    # 05 merge and export
    "Chat", "GGUFSetupError", "add_gguf", "compare_text", "export", "gguf_section", "plan_export",
    "prompt_messages", "push_folder", "read_adapter_config", "side_by_side", "terminal_question",
]


def course_processor(cfg: CourseConfig) -> Any:
    """The processor of the course's model, set to resize images into the course's
    ``min_pixels``..``max_pixels`` (as training sets up the one it saves with the adapter)."""
    return load_processor_for(ensure_model(cfg.resolve_model()), limits=cfg.image_limits)


def memory_report(cfg: CourseConfig, budget: TokenBudget, records: Sequence[Any]) -> str:
    """The memory estimate ``qvl train --dry-run`` prints for ``cfg`` on this machine, from the
    token ``budget`` of its training ``records``."""
    choice = cfg.resolve_model()
    resolved = resolve(cfg, **machine_facts(), train_records=len(records))
    return memory.report_for_run(cfg, ensure_model(choice), budget, resolved=resolved,
                                 is_tiny=choice.is_tiny, records=records)


def new_output_folder(run: str | Path, step: Literal["eval", "export"], tag: str) -> Path:
    """A folder for a new ``eval`` or ``export`` of ``run``, beside it and named
    ``RUN-TAG-<date-time>``, so that running a notebook again never replaces an earlier result."""
    name = f"{Path(run).name}-{tag}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Outputs.of_run(run).folder(step, name)
