"""The learner's own data goes all the way through: with ``data:`` in ``course.yaml`` pointing at
a small dataset of their own, ``qvl train --config configs/tiny_cpu.yaml`` trains on it (the seed
guide's layout) and notebooks 00-05 run on it (the LLaVA layout with every hard shape: image
after the question, two images, a second turn, Chinese). The executed notebooks carry no
deprecation noise, no frozen progress bar and no HF_TOKEN.

The notebook tests (marker ``notebooks``) are the notebook stage of ``scripts/test.sh``: the only
place the suite executes notebooks (nbclient, the engine nbmake uses). Slow: minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path

import nbformat
import pytest
import yaml
from learner_data import FILE_NAME, HARD_FILE_NAME, make_seed_dataset, write_learner_course
from nbclient import NotebookClient

from qvl_helpers.images import file_hash

REPO = Path(__file__).resolve().parent.parent
SECRET = "hf_" + secrets.token_hex(17)  # shaped like a Hugging Face token, never a real one
NOTEBOOKS = REPO / "notebooks"


@pytest.fixture
def learner_env(tmp_path: Path) -> dict[str, str]:
    import torch

    data = make_seed_dataset(tmp_path / "my_data", n=40)
    model = "tiny" if torch.cuda.is_available() else "auto"  # the shipped course.yaml says auto
    (tmp_path / "course.yaml").write_text(
        f"model: {model}\ndata: my_data/{FILE_NAME}\noutput_dir: outputs\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "QVL_OUTPUT_DIR"}
    env["QVL_CONFIG"] = str(tmp_path / "course.yaml")
    env["HF_TOKEN"] = SECRET  # a learner who is logged in: it must never show (security.md)
    assert data.is_file()
    return env


def _runs_on(run: Path, data: Path) -> None:
    identity = json.loads((run / "run.json").read_text(encoding="utf-8"))
    assert identity["where"]["source"] == str(data.resolve())
    assert identity["data"]["source_sha256"] == file_hash(data)


@pytest.mark.slow
def test_qvl_train_with_the_cpu_preset_trains_on_the_learners_data(
        tmp_path: Path, learner_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`qvl train --config configs/tiny_cpu.yaml` in the learner's folder (in this process:
    the command, not a process boundary, is what is tested)."""
    from qvl_helpers.cli import main

    for key in set(os.environ) - set(learner_env):
        monkeypatch.delenv(key)
    for key, value in learner_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--config", str(REPO / "configs" / "tiny_cpu.yaml")])
    assert code == 0, capsys.readouterr().err[-3000:]
    run = tmp_path / "outputs" / "runs" / "tiny_cpu"
    _runs_on(run, tmp_path / "my_data" / FILE_NAME)
    saved = yaml.safe_load((run / "run_config.yaml").read_text(encoding="utf-8"))
    assert saved["resolved"]["train_records"] == 32  # 40 records: 32 train, 4 val, 4 test
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def _execute(name: str, env: dict[str, str]) -> str:
    """Run one notebook top to bottom as a learner would (in notebooks/, with their
    course.yaml); return all its text output."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        # Per cell: the learner's 32 training records train in minutes even on a busy laptop;
        # a lost kernel message (seen twice under heavy load) then fails in 15 minutes, not 40.
        NotebookClient(notebook, timeout=900, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", "") or output.get("data", {}).get("text/plain", ""))
    text = "\n".join(texts)
    assert_quiet(name, text)
    assert SECRET not in text, f"{name} shows the HF_TOKEN"
    return text


#: What a learner should never see in a saved notebook: deprecation noise they cannot act on,
#: and progress bars frozen mid-way (tqdm's "  0%|" text).
NOISE = re.compile(r"FutureWarning|DeprecationWarning|generation flags are not valid|"
                   r"use_cache=True. is incompatible|\d+%\|")


def assert_quiet(name: str, text: str) -> None:
    found = [text[max(0, m.start() - 80):m.end() + 20] for m in NOISE.finditer(text)]
    assert not found, f"{name} shows {found[:3]}"


#: The notebooks in course order, each run after the ones before it in one learner's folder.
ORDER = sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="module")
def hard_course(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A learner's folder with the hard record shapes (LLaVA layout, image after the question,
    two images, a second turn, Chinese) and the environment the notebooks run in; each
    notebook's text output is kept in ``outputs`` for the notebooks after it."""
    import torch

    folder = tmp_path_factory.mktemp("learner")
    config = write_learner_course(folder)
    if torch.cuda.is_available():  # the shipped course.yaml's auto would pick the 3B
        config.write_text(config.read_text(encoding="utf-8").replace("model: auto",
                                                                     "model: tiny"))
    env = {k: v for k, v in os.environ.items() if k != "QVL_OUTPUT_DIR"}
    env["QVL_CONFIG"] = str(config)
    env["HF_TOKEN"] = SECRET  # a learner who is logged in: it must never show (security.md)
    return {"folder": folder, "env": env, "data": folder / "my_data" / HARD_FILE_NAME,
            "outputs": {}}


@pytest.mark.slow
@pytest.mark.notebooks
@pytest.mark.parametrize("name", ORDER)
def test_each_notebook_runs_on_the_learners_hard_shapes(name: str,
                                                         hard_course: dict[str, object]) -> None:
    """The notebook stage of scripts/test.sh: every notebook, in order, top to bottom on the
    learner's data with the hard shapes, quiet (no deprecation noise, no frozen bar, no
    HF_TOKEN), and saying that it used the learner's data."""
    folder, data = hard_course["folder"], hard_course["data"]
    text = _execute(name, hard_course["env"])
    hard_course["outputs"][name] = text
    assert "Traceback" not in text
    outputs = folder / "outputs"
    if name.startswith("01"):
        assert f"annotation file: {data}" in text and "layout:          official" in text
        (prepared,) = (outputs / "data").iterdir()
        assert prepared.name.startswith(HARD_FILE_NAME.removesuffix(".json"))
    if name.startswith("03"):
        assert f"data          {data}" in text
        runs = sorted((outputs / "runs").glob("nb03-*"))
        assert runs and all((run / "run.json").is_file() for run in runs)
        for run in runs:
            _runs_on(run, data)
    if name.startswith("04"):
        (trained,) = [r for r in (outputs / "runs").glob("nb03-*")
                      if not r.name.endswith("-demo")]  # not the resume demo
        assert f"evaluating run: {trained}" in text
        assert "task:            short" in text
        assert text.count("the test split has only") == 1  # one place says it
    if name.startswith("05"):
        assert "Verified in a fresh process on" in text
        assert "not uploading (PUSH = False)" in text
        leaked = [p for p in outputs.rglob("*") if p.is_file()
                  and SECRET.encode() in p.read_bytes()]
        assert leaked == [], "the HF_TOKEN was written into outputs/"
