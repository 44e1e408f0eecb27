"""Notebook hygiene rules (design.md, "Notebook conventions"), as functions that return problems.

Kept apart from the tests so that the tests can also prove each rule catches a bad notebook.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

NAME = re.compile(r"^\d\d_[a-z0-9]+(?:_[a-z0-9]+)*\.ipynb$")
MAX_BYTES = 200 * 1024
FORBIDDEN = {"sys.path.": "edits sys.path (import the installed package instead)",
             "login(": "logs in interactively (tokens come from the environment)",
             "data:image/": "embeds an image as base64 (write images to outputs/ instead)"}


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


RECORD_KEYS = ("messages", "content")
PART_KEYS = ("content", "text", "image", "role")


def _key(node: ast.AST) -> object:
    """The constant a subscript indexes with (``None`` when it is not a constant)."""
    return node.slice.value if isinstance(node, ast.Subscript) and isinstance(
        node.slice, ast.Constant) else None


def positional_access(code: str) -> list[str]:
    """Places where a code cell unpacks a record by position: ``x["messages"][0]``,
    ``x["content"][1]`` (any index or slice), or ``x[0]["content"]`` (a message or part taken
    by its number). Records come in many shapes (image after the question, several images,
    several turns, a system message); notebooks read them through the package's turn view."""
    # IPython syntax: shell lines and cell magics go; a line magic keeps the code it times.
    lines = [re.sub(r"^\s*%\w+\s*", "", line) for line in code.splitlines()
             if not line.lstrip().startswith(("!", "%%"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return [m.group(0) for m in re.finditer(
            r"\[[\"'](?:messages|content)[\"']\]\s*\[|\[\s*-?\d+\s*\]\s*\[[\"']content[\"']\]",
            code)]
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Subscript) or not isinstance(node.value, ast.Subscript):
            continue
        outer, inner = _key(node), _key(node.value)
        by_number = inner in RECORD_KEYS and not isinstance(outer, str)  # x["messages"][0]
        numbered = outer in PART_KEYS and isinstance(inner, int)  # x[0]["content"]
        if by_number or numbered:
            found.append(ast.unparse(node))
    # x["messages"][0]["content"][1] is one place, not four: keep the longest of each chain.
    return [f for f in found if not any(g != f and g.startswith(f) for g in found)]


def record_problems(path: Path) -> list[str]:
    """Code cells of one notebook that read a record by position (empty list: none do)."""
    found = []
    for i, cell in enumerate(load(path).get("cells", [])):
        places = positional_access(source(cell)) if cell.get("cell_type") == "code" else []
        if places:
            found.append(f"{path.name}: cell {i} reads a record by position "
                         f"({', '.join(dict.fromkeys(places))}); use the package's turn view "
                         "(scored_turn, turns_of, images_of, collate.prompt_messages)")
    return found


def problems(path: Path, reference_setup: str | None = None) -> list[str]:
    """Everything wrong with one notebook file (empty list: it is clean)."""
    found = []
    if not NAME.match(path.name):
        found.append(f"{path.name}: name does not match NN_snake_case.ipynb")
    size = path.stat().st_size
    if size > MAX_BYTES:
        found.append(f"{path.name}: {size // 1024} KB, over the 200 KB limit")
    try:
        nb = load(path)
    except (OSError, json.JSONDecodeError) as exc:
        return [*found, f"{path.name}: not valid JSON ({exc})"]
    cells = nb.get("cells", [])
    for i, cell in enumerate(cells):
        if cell.get("cell_type") == "code" and (cell.get("outputs") or cell.get("execution_count")):
            found.append(f"{path.name}: cell {i} has outputs or an execution count (strip them)")
        for needle, why in FORBIDDEN.items():
            if needle in source(cell) and cell.get("cell_type") == "code":
                found.append(f"{path.name}: cell {i} {why}")
    kinds = [c.get("cell_type") for c in cells]
    if kinds[:3] != ["markdown", "code", "code"]:
        return [*found, f"{path.name}: must open with title, setup cell, config cell"]
    title = source(cells[0])
    if not title.startswith("# ") or "**Needs:**" not in title:
        found.append(f"{path.name}: first cell needs a '# ' title and a '**Needs:**' line")
    if reference_setup is not None and source(cells[1]) != reference_setup:
        found.append(f"{path.name}: setup cell differs from the other notebooks'")
    if "load_config()" not in source(cells[2]) or "model_banner" not in source(cells[2]):
        found.append(f"{path.name}: third cell must be the config cell (load_config, model_banner)")
    markdown = "\n".join(source(c) for c in cells if c.get("cell_type") == "markdown")
    summary, exercises = markdown.rfind("## Summary"), markdown.rfind("## Exercises")
    if summary < 0 or exercises < summary:
        found.append(f"{path.name}: must end with '## Summary' then '## Exercises'")
    return found
