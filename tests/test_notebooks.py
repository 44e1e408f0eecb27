"""Every committed notebook is clean: stripped, small, well named, and opens and ends the same way.

(Executing them is the job of `pytest --nbmake notebooks`, run by scripts/test.sh and CI.)
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from nbcheck import (
    API,
    MAX_SETUP_LINES,
    exported,
    import_problems,
    load,
    package_imports,
    package_names,
    positional_access,
    problems,
    record_problems,
    source,
)

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
REFERENCE = NOTEBOOKS[0]


def _setup(path: Path) -> str:
    return source(load(path)["cells"][1])


def test_there_are_notebooks() -> None:
    assert REFERENCE.name == "00_environment_check.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean(path: Path) -> None:
    assert problems(path, _setup(REFERENCE)) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_reads_records_through_the_package(path: Path) -> None:
    assert record_problems(path) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_imports_the_package_only_through_its_notebook_api(path: Path) -> None:
    assert import_problems(path) == []


def test_the_course_api_is_what_the_notebooks_use() -> None:
    """Nothing in ``qvl_helpers.course`` that no lesson calls, and nothing importable two ways
    (the package's top level keeps its own names)."""
    course, top = exported(API["qvl_helpers.course"]), exported(API["qvl_helpers"])
    used = {name for path in NOTEBOOKS for cell in load(path)["cells"] if cell["cell_type"] == "code"
            for module, name in package_names(source(cell)) if module == "qvl_helpers.course"}
    assert course <= used, f"exported but no notebook imports them: {sorted(course - used)}"
    assert not course & top, course & top


API_NAMES = {module: exported(file) for module, file in API.items()}


#: Cells that import the package other than through its API.
BAD_IMPORTS = [
    "from qvl_helpers.train import train",
    "from qvl_helpers.data.records import scored_turn",
    "import qvl_helpers.memory",
    "import qvl_helpers",
    "from qvl_helpers import memory",  # a module, not a name of the top level's __all__
    "from qvl_helpers.course import _private_helper",
    "from qvl_helpers.course import (\n    train,\n    PRESETS_DIR,\n)",
    "%time from qvl_helpers.evaluate import evaluate",
    "def later():\n    from qvl_helpers.env import detect_gpus\n    return detect_gpus()",
]
#: Cells that read a record by position instead of through the turn view.
BY_POSITION = [
    'image = sample["messages"][0]["content"][0]["image"]',
    "q = s['messages'][0]['content'][1]['text']",
    'answer = record["messages"][-1]',
    'first = msgs[0]["content"]',
    'parts = m["content"][1:]',
    '%time x = r["messages"][1]',
    'x = r["messages"][1]\n!ls',
]
#: Each rule: what finds the problem in code, what finds it in a notebook, and what it says.
RULES = {"imports": (lambda code: package_imports(code, API_NAMES), import_problems,
                     "imports the package"),
         "position": (positional_access, record_problems, "reads a record by position")}


@pytest.mark.parametrize(("rule", "code"), [("imports", c) for c in BAD_IMPORTS] +
                         [("position", c) for c in BY_POSITION])
def test_each_rule_fires_on_a_planted_cell(tmp_path: Path, rule: str, code: str) -> None:
    in_code, in_notebook, says = RULES[rule]
    assert in_code(code)
    found, cell = _planted(tmp_path, code, in_notebook)
    assert len(found) == 1 and f"cell {cell} {says}" in found[0]


@pytest.mark.parametrize("code", [
    "from qvl_helpers import DatasetError, load_config, model_banner",
    "from qvl_helpers.course import memory, recommended_preset, train",
    "import torch\nfrom transformers import AutoProcessor",
    'done = subprocess.run([sys.executable, "-m", "qvl_helpers.cli", "chat"])',
    "!pip show qvl-helpers",
])
def test_import_rule_leaves_the_api_alone(code: str) -> None:
    assert package_imports(code, API_NAMES) == []


def test_import_rule_leaves_the_first_cell_alone() -> None:
    assert package_imports(_setup(REFERENCE), API_NAMES) == []  # it finds the package by name


def test_rules_catch_a_long_setup_cell(tmp_path: Path) -> None:
    nb = copy.deepcopy(load(REFERENCE))
    nb["cells"][1]["source"] = _setup(REFERENCE) + "\n" + "print('more setup')\n" * 5
    found = problems(_write(tmp_path, "00_x.ipynb", nb))
    assert any(f"the setup cell has {MAX_SETUP_LINES + 5} lines" in p for p in found)
    nb["cells"][1]["source"] = _setup(REFERENCE)
    assert problems(_write(tmp_path, "00_x.ipynb", nb)) == []


@pytest.mark.parametrize("code", [
    'record = records[0]\nturn = scored_turn(record)',
    'text = processor.apply_chat_template(receipts[0]["messages"], tokenize=False)',
    'for m in record["messages"]:\n    print(m["role"])',
    'cfg["model"]["name"]',
])
def test_positional_rule_leaves_the_turn_view_alone(code: str) -> None:
    assert positional_access(code) == []


def _planted(tmp_path: Path, code: str, rule: Any) -> tuple[list[str], int]:
    """What ``rule`` finds in notebook 00 with a code cell of ``code`` added last, and that
    cell's number."""
    nb = copy.deepcopy(load(REFERENCE))
    nb["cells"].append({"cell_type": "code", "metadata": {}, "outputs": [],
                        "execution_count": None, "source": code})
    return rule(_write(tmp_path, "00_x.ipynb", nb)), len(nb["cells"]) - 1


def _write(tmp_path: Path, name: str, nb: dict) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(nb), encoding="utf-8")
    return path


def test_rules_catch_outputs(tmp_path: Path) -> None:
    nb = copy.deepcopy(load(REFERENCE))
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "hi"}]
    code["execution_count"] = 1
    found = problems(_write(tmp_path, "00_x.ipynb", nb))
    assert any("has outputs" in p for p in found)


def test_rules_catch_bad_names_and_size(tmp_path: Path) -> None:
    nb = copy.deepcopy(load(REFERENCE))
    assert any("NN_snake_case" in p for p in problems(_write(tmp_path, "Data Prep.ipynb", nb)))
    assert any("NN_snake_case" in p for p in problems(_write(tmp_path, "1_data.ipynb", nb)))
    nb["cells"].append({"cell_type": "markdown", "metadata": {}, "source": "x" * 210_000})
    assert any("200 KB" in p for p in problems(_write(tmp_path, "01_big.ipynb", nb)))


def test_rules_catch_missing_conventions(tmp_path: Path) -> None:
    nb = copy.deepcopy(load(REFERENCE))
    nb["cells"] = [c for c in nb["cells"] if "## Exercises" not in source(c)]
    nb["cells"][1]["source"] = "import sys\nsys.path.insert(0, '..')"
    found = problems(_write(tmp_path, "01_x.ipynb", nb), _setup(REFERENCE))
    assert any("Summary" in p for p in found)
    assert any("setup cell differs" in p for p in found)
    assert any("sys.path" in p for p in found)
