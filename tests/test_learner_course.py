"""The learner's own data goes all the way through: with ``data:`` in ``course.yaml`` pointing at
a small dataset in the seed guide's layout (Chinese text, images in ``pics/``), ``qvl train
--config configs/tiny_cpu.yaml`` trains on it and notebooks 01-05 use it. The executed notebooks
(00-05) carry no deprecation noise and no frozen progress bar.

Slow: one real tiny training run and six notebooks executed in a kernel (nbclient, the engine
nbmake uses), a few minutes on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from learner_data import FILE_NAME, make_seed_dataset
from limits import HANG_GUARD_S
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
        tmp_path: Path, learner_env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "qvl_helpers.cli", "train", "--config",
                           str(REPO / "configs" / "tiny_cpu.yaml")], cwd=tmp_path,
                          env=learner_env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr[-3000:]
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


@pytest.mark.slow
def test_notebooks_00_to_05_use_the_learners_data_and_stay_quiet(tmp_path: Path,
                                                  learner_env: dict[str, str]) -> None:
    data = tmp_path / "my_data" / FILE_NAME
    _execute("00_environment_check.ipynb", learner_env)
    first = _execute("01_data_formatting.ipynb", learner_env)
    assert f"annotation file: {data}" in first and "layout:          seed" in first
    assert "train   32 records, leakage found: False" in first
    (prepared,) = (tmp_path / "outputs" / "data").iterdir()
    assert prepared.name.startswith(FILE_NAME.removesuffix(".jsonl"))
    second = _execute("02_processor_and_tokens.ipynb", learner_env)
    assert "Using the splits of " + FILE_NAME in second
    assert "32 samples; tokens per sample" in second  # the budget of the learner's train split
    third = _execute("03_qlora_training.ipynb", learner_env)
    assert f"data          {data}" in third
    runs = sorted((tmp_path / "outputs" / "runs").glob("nb03-*"))
    assert runs and all((run / "run.json").is_file() for run in runs)
    for run in runs:
        _runs_on(run, data)
    assert f"test split: {prepared / 'test.jsonl'}" in third
    fourth = _execute("04_evaluation.ipynb", learner_env)  # evaluates notebook 03's run
    (trained,) = [r for r in runs if not r.name.endswith("-demo")]  # not the resume demo
    assert f"evaluating run: {trained}" in fourth
    assert f"held-out split:  {prepared / 'test.jsonl'} (4 samples)" in fourth
    assert "task:            short" in fourth
    assert "只回答以下之一" in fourth  # the task prompt speaks the learner's language
    assert fourth.count("the test split has only 4 sample(s)") == 1  # one place says it
    fifth = _execute("05_merge_and_export.ipynb", learner_env)  # merges notebook 03's run
    assert f"exporting run: {trained}" in fifth
    assert "Verified in a fresh process on 4 held-out samples" in fifth
    assert "not uploading (PUSH = False)" in fifth
    leaked = [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()
              and SECRET.encode() in p.read_bytes()]
    assert leaked == [], "the HF_TOKEN was written into outputs/"
