"""Loading the model and seeing what is in it.

Module names follow transformers 5.x: ``model.model.visual`` (vision tower: patch embedding,
blocks, merger), ``model.model.language_model`` and ``model.lm_head``. With PEFT the same names
appear below ``base_model.model.``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

COMPONENTS = ("vision tower", "merger", "language model", "lm_head")


def import_bitsandbytes() -> ModuleType:
    """Import bitsandbytes without its CPU start-up warning.

    On CPUs with AVX-512 BF16, bitsandbytes 0.50 tries to fetch an optional faster kernel through
    the ``kernels`` package and logs a scary-looking warning when it is absent; it then falls back
    to its built-in kernel, which is what the course uses and tests.
    """
    log = logging.getLogger("bitsandbytes")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import bitsandbytes
    finally:
        log.setLevel(level)
    return bitsandbytes


def component_of(param_name: str) -> str:
    """Which part of Qwen2.5-VL a parameter belongs to, from its (possibly PEFT-prefixed) name."""
    if ".visual.merger." in f".{param_name}" or param_name.startswith("visual.merger."):
        return "merger"
    if ".visual." in f".{param_name}":
        return "vision tower"
    if "lm_head" in param_name:
        return "lm_head"
    return "language model"


@dataclass
class ParamRow:
    component: str
    total: int
    trainable: int
    note: str = ""

    @property
    def percent_trainable(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0


def parameter_table(model: Any) -> list[ParamRow]:
    """Total and trainable parameters per component, plus an ``all`` row.

    Tied weights (the 3B and the tiny model share ``lm_head`` with the token embedding) are
    counted once, under the component where they first appear.
    """
    rows = {c: ParamRow(c, 0, 0) for c in COMPONENTS}
    seen: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            rows[component_of(name)].note = f"tied to {seen[id(param)].removeprefix('base_model.')}"
            continue
        seen[id(param)] = name
        row = rows[component_of(name)]
        n = param.numel()
        if hasattr(param, "quant_state") and getattr(param, "quant_storage", None) is not None:
            n *= 2  # bitsandbytes packs two 4-bit weights per byte
        row.total += n
        row.trainable += n if param.requires_grad else 0
    table = list(rows.values())
    table.append(ParamRow("all", sum(r.total for r in table), sum(r.trainable for r in table)))
    return table


def format_parameter_table(table: list[ParamRow]) -> str:
    """The table as aligned text (works in a terminal and a notebook)."""
    lines = [f"{'component':<16}{'parameters':>16}{'trainable':>16}{'% trained':>11}"]
    for r in table:
        line = f"{r.component:<16}{r.total:>16,}{r.trainable:>16,}{r.percent_trainable:>10.2f}%"
        lines.append(line + (f"  ({r.note})" if r.note else ""))
    return "\n".join(lines)
