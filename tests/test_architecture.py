"""docs/architecture.md stays true of the code: every module sits in one layer of its table, no
import runs from a lower layer to a higher one or round in a circle, modules and functions stay
short (or say at their top why not), and the image limits travel inside the processor.

All of it is read from the source with ``ast`` (nothing is imported or run), so the rules hold
for lazy imports inside functions too.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "qvl_helpers"
DOC = REPO / "docs" / "architecture.md"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 450, 60
#: Where a module says why it is longer than MAX_MODULE_LINES: this phrase in its docstring.
LONG_REASON = "Longer than 450 lines because"
#: The only places that handle min/max pixels as separate values: Qwen's arithmetic and the
#: ImageLimits value (qwen.py), the collator that resizes, and the inference layer.
LIMIT_OWNERS = {"qwen", "collate", "inference"}
#: Modules that name ``max_pixels`` in a call for another reason, and that reason.
LIMIT_NAMES_ELSEWHERE = {"env": "the recommendation shows a preset's max_pixels; nothing is resized"}


def module_name(path: Path) -> str:
    """``data.doctor`` for qvl_helpers/data/doctor.py; ``data`` for a package's __init__, and
    ``__init__`` for the package's own."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]) or "__init__"
    return ".".join(parts)


def sources() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(encoding="utf-8"))
            for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The package's modules ``name`` imports, anywhere in it (function bodies and
    ``TYPE_CHECKING`` blocks included)."""
    package = name.split(".") if name in known and _is_package(name) else name.split(".")[:-1]
    if name == "__init__":
        package = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:  # `from . import x` imports the module x when there is one
                sub = f"{target}.{alias.name}" if target else alias.name
                found.add(sub if sub in known else target or "__init__")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qvl_helpers"):
            found.add(node.module.removeprefix("qvl_helpers").lstrip(".") or "__init__")
    return {m for m in found if m in known and m != name}


def _is_package(name: str) -> bool:
    return (PACKAGE / name.replace(".", "/") / "__init__.py").is_file()


def layers() -> dict[str, tuple[int, str]]:
    """Each module's layer (number, name) from the table in docs/architecture.md."""
    placed: dict[str, tuple[int, str]] = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        row = re.match(r"\|\s*(\d+)\s+([^|]+?)\s*\|([^|]*)\|", line)
        if not row:
            continue
        for module in re.findall(r"`([\w.]+)`", row.group(3)):
            assert module not in placed, f"{module} is in two layers of {DOC.name}"
            placed[module] = (int(row.group(1)), row.group(2))
    return placed


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    trees = sources()
    return {name: imports(name, tree, set(trees)) for name, tree in trees.items()}


def test_every_module_has_one_layer_in_the_architecture_doc(graph) -> None:
    placed = layers()
    assert set(graph) - set(placed) == set(), \
        f"modules missing from the layer table of {DOC.name}: add each where it belongs"
    assert set(placed) - set(graph) == set(), f"{DOC.name} names modules that do not exist"


def test_no_import_runs_from_a_lower_layer_to_a_higher_one(graph) -> None:
    placed = layers()
    upward = [f"{a} (layer {placed[a][0]}) imports {b} (layer {placed[b][0]})"
              for a, targets in graph.items() for b in sorted(targets)
              if placed[b][0] > placed[a][0]]
    assert upward == []


def test_no_circle_of_imports(graph) -> None:
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(path[path.index(nxt):] + [node, nxt]))
            elif nxt not in state:
                visit(nxt, [*path, node] if nxt != node else path)
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert circles == []


def test_the_checks_find_what_they_look_for(tmp_path: Path) -> None:
    """The import reader sees a lazy import inside a function and ``from . import x``."""
    tree = ast.parse("def f():\n    from .tokens import x\n    from .data import load_records\n"
                     "from . import qwen\n")
    assert imports("model", tree, {"tokens", "data", "qwen", "model"}) == {"tokens", "data",
                                                                            "qwen"}
    inside = ast.parse("from . import load\nfrom ..errors import E\n")
    assert imports("data.prepare", inside, {"data", "data.load", "errors"}) == {"data.load",
                                                                                "errors"}


def test_modules_and_functions_stay_short() -> None:
    long_modules, long_functions = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES and LONG_REASON not in (ast.get_docstring(tree) or ""):
            long_modules.append(f"{path.relative_to(REPO)} ({lines} lines)")
        long_functions += [f"{path.relative_to(REPO)}:{node.lineno} {node.name} "
                           f"({node.end_lineno - node.lineno + 1} lines)"
                           for node in ast.walk(tree)
                           if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                           and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long_modules == [], f"split them, or say at the top why not ({LONG_REASON} ...)"
    assert long_functions == []


def limit_call_sites(tree: ast.Module) -> list[str]:
    """Calls that hand over ``min_pixels``/``max_pixels`` by keyword, and reads of a processor's
    ``size["shortest_edge"/"longest_edge"]``: the image limits passed or read by hand."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            found += [f"line {node.lineno}: {k.arg}=" for k in node.keywords
                      if k.arg in ("min_pixels", "max_pixels")]
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                and node.slice.value in ("shortest_edge", "longest_edge"):
            found.append(f"line {node.lineno}: [{node.slice.value!r}]")
    return found


def test_the_image_limits_are_passed_by_hand_nowhere_but_their_owners() -> None:
    """Training sets them once on its processor, which is saved with the adapter; evaluation,
    export and chat read them back from the processor (qvl_helpers.inference)."""
    by_hand = {name: sites for name, tree in sources().items()
               if name not in LIMIT_OWNERS | set(LIMIT_NAMES_ELSEWHERE)
               and (sites := limit_call_sites(tree))}
    assert by_hand == {}


def test_the_limit_check_finds_a_call_site() -> None:
    tree = ast.parse("make_collator(p, min_pixels=lo)\nsize = p.image_processor.size"
                     "['longest_edge']\n")
    assert limit_call_sites(tree) == ["line 1: min_pixels=", "line 2: ['longest_edge']"]


def test_the_course_api_is_light_to_import_and_every_name_resolves() -> None:
    """Notebook 00 checks the environment through ``qvl_helpers.course``: importing it must not
    import torch or transformers (a broken install is then reported, not raised), and every
    name of its ``__all__`` must resolve to where its table says."""
    import subprocess
    import sys

    code = ("import sys, qvl_helpers.course as c; print(sorted({'torch', 'transformers'} & "
            "set(sys.modules))); [getattr(c, n) for n in c.__all__]; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["[]", "ok"]
