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
#: The first code cell finds qvl_helpers/setup_cell.py and hands over to it. In a new Colab or
#: Kaggle session nothing is installed, so the cell itself must find that file (in the newest
#: archive, a folder Kaggle unpacked, Google Drive, which it mounts, or a clone of COURSE_REPO,
#: which it makes) and say what to do when there is none. Everything else is the package's.
MAX_SETUP_LINES = 28
PACKAGE = Path(__file__).resolve().parent.parent / "qvl_helpers"
#: Where notebooks may import the package from: the module and the file whose ``__all__``
#: lists the names they may import from it.
API = {"qvl_helpers": PACKAGE / "__init__.py", "qvl_helpers.course": PACKAGE / "course.py"}
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


def _tree(code: str) -> ast.Module | None:
    """A code cell's syntax tree, IPython lines aside (shell lines and cell magics go; a line
    magic keeps the code it runs); ``None`` when it is not Python."""
    lines = [re.sub(r"^\s*%\w+\s*", "", line) for line in code.splitlines()
             if not line.lstrip().startswith(("!", "%%"))]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def exported(path: Path) -> set[str]:
    """The names in a module's ``__all__``, read from its source (nothing is imported)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__"
                                                for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def package_names(code: str) -> list[tuple[str, str]]:
    """(module, name) for each import of the package in a code cell: ``from qvl_helpers.course
    import train`` gives ("qvl_helpers.course", "train"), ``import qvl_helpers.memory`` gives
    ("qvl_helpers.memory", "")."""
    tree = _tree(code)
    found: list[tuple[str, str]] = []
    for node in ast.walk(tree) if tree else []:
        if isinstance(node, ast.Import):
            found += [(a.name, "") for a in node.names if a.name.split(".")[0] == "qvl_helpers"]
        elif (isinstance(node, ast.ImportFrom) and not node.level and node.module
              and node.module.split(".")[0] == "qvl_helpers"):
            found += [(node.module, a.name) for a in node.names]
    return found


def package_imports(code: str, api: dict[str, set[str]]) -> list[str]:
    """What a code cell imports from the package outside ``api`` (module -> the names it
    exports): ``import qvl_helpers...`` (the modules behind the API, reached as attributes),
    ``from qvl_helpers.MODULE import ...`` for any other module, or a name not in ``__all__``."""
    return [f"from {module} import {name}" if name else f"import {module}"
            for module, name in package_names(code) if name not in api.get(module, set())]


def import_problems(path: Path) -> list[str]:
    """Code cells of one notebook that import the package from outside its notebook API."""
    api = {module: exported(file) for module, file in API.items()}
    found = []
    for i, cell in enumerate(load(path).get("cells", [])):
        places = package_imports(source(cell), api) if cell.get("cell_type") == "code" else []
        if places:
            found.append(f"{path.name}: cell {i} imports the package from outside its notebook "
                         f"API ({', '.join(places)}); import it from qvl_helpers.course (or "
                         "qvl_helpers), adding it to course.py's __all__ if the lesson needs it")
    return found


def positional_access(code: str) -> list[str]:
    """Places where a code cell unpacks a record by position: ``x["messages"][0]``,
    ``x["content"][1]`` (any index or slice), or ``x[0]["content"]`` (a message or part taken
    by its number). Records come in many shapes (image after the question, several images,
    several turns, a system message); notebooks read them through the package's turn view."""
    tree = _tree(code)
    if tree is None:
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
                         "(scored_turn, turns_of, images_of, prompt_messages from qvl_helpers.course)")
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
    setup_lines = len(source(cells[1]).rstrip("\n").splitlines())
    if setup_lines > MAX_SETUP_LINES:
        found.append(f"{path.name}: the setup cell has {setup_lines} lines, over "
                     f"{MAX_SETUP_LINES}: it finds qvl_helpers/setup_cell.py and hands over; "
                     "anything more belongs in that file")
    if "load_config()" not in source(cells[2]) or "model_banner" not in source(cells[2]):
        found.append(f"{path.name}: third cell must be the config cell (load_config, model_banner)")
    markdown = "\n".join(source(c) for c in cells if c.get("cell_type") == "markdown")
    summary, exercises = markdown.rfind("## Summary"), markdown.rfind("## Exercises")
    if summary < 0 or exercises < summary:
        found.append(f"{path.name}: must end with '## Summary' then '## Exercises'")
    return found
