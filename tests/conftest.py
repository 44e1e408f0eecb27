"""Shared fixtures: the tiny stand-in model is built once per test session, offline."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHAPES = REPO / "data_samples" / "shapes"
PRESET = REPO / "configs" / "tiny_cpu.yaml"


def pytest_configure(config: pytest.Config) -> None:
    """The notebook stage's sliced waits (nbpoll.py) for the tests that execute notebooks
    themselves with nbclient (test_learner_course, test_hosted): the same lost wake-up froze
    test_learner_course in notebook 01 under load."""
    from nbpoll import pytest_configure as poll_in_slices

    poll_in_slices(config)
    config.addinivalue_line("markers", "notebooks: executes the notebooks (the notebook stage "
                                       "of scripts/test.sh, on the learner's hard shapes)")


@pytest.fixture(scope="session", autouse=True)
def test_course_yaml(tmp_path_factory: pytest.TempPathFactory):
    """The tests' own course.yaml (the tiny model on the bundled shapes task), through
    QVL_CONFIG: a learner's edited course.yaml never changes what the tests measure, and a test
    run never writes into the learner's outputs/ (QVL_OUTPUT_DIR, set by scripts/test.sh or
    here, wins over the file)."""
    import os

    folder = tmp_path_factory.mktemp("course")
    path = folder / "course.yaml"
    path.write_text(f"model: tiny\ndata: {SHAPES / 'shapes.jsonl'}\n", encoding="utf-8")
    saved = {k: os.environ.get(k) for k in ("QVL_CONFIG", "QVL_OUTPUT_DIR")}
    os.environ["QVL_CONFIG"] = str(path)
    os.environ.setdefault("QVL_OUTPUT_DIR", str(folder / "outputs"))
    yield path
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh tiny-model build (seed 0) for this test session."""
    from qvl_helpers.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def processor(tiny_dir: Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def model(tiny_dir: Path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(tiny_dir)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No QVL_* variables and a working folder without course.yaml above it."""
    import os

    for name in list(os.environ):
        if name.startswith("QVL_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@dataclass(frozen=True)
class TrainedRun:
    """The suite's one full training: the run folder, its outputs folder and what it printed."""

    run: Path
    outputs: Path
    stdout: str


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """`qvl train --config configs/tiny_cpu.yaml` on the bundled shapes task, once per test
    session and in this process: every test that needs a really trained adapter (the learning
    margins, eval, export, chat, the model card) reads this run and never trains its own.
    Tests must not change the run folder; `qvl eval --run` and `qvl export` add their results
    beside it in ``outputs`` (eval/, export/), as they do for a learner."""
    from qvl_helpers.cli import main

    outputs = tmp_path_factory.mktemp("trained") / "outputs"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["train", "--config", str(PRESET), "--set", f"output_dir={outputs}"])
    assert code == 0, err.getvalue()[-3000:]
    return TrainedRun(run=outputs / "runs" / "tiny_cpu", outputs=outputs, stdout=out.getvalue())
