"""prepare_data: makes the splits once, reuses them, and remakes them when the data changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from qvl_helpers.config import load_config
from qvl_helpers.data import prepare_data
from qvl_helpers.errors import DatasetError

REPO = Path(__file__).resolve().parent.parent / "data_samples"


def test_reuses_then_rebuilds_when_data_changes(clean_env: Path) -> None:
    data = clean_env / "shapes"
    shutil.copytree(REPO / "shapes", data)
    cfg = load_config(data=str(data / "shapes.jsonl"), output_dir=str(clean_env / "out"))
    first = prepare_data(cfg, verbose=False)
    assert first.built and first.report.exists() and first.image_root == data
    assert not prepare_data(cfg, verbose=False).built
    lines = (data / "shapes.jsonl").read_text().splitlines()
    (data / "shapes.jsonl").write_text("\n".join(lines[:100]) + "\n")
    again = prepare_data(cfg, verbose=False)
    assert again.built
    total = sum(len(p.read_text().splitlines()) for p in (again.train, again.val, again.test))
    assert total == 100


def test_bad_data_is_not_split(clean_env: Path) -> None:
    cfg = load_config(data=str(REPO / "broken" / "broken.jsonl"), output_dir=str(clean_env / "o"))
    with pytest.raises(DatasetError, match="check_report.json"):
        prepare_data(cfg, verbose=False)
    assert (clean_env / "o" / "data" / "check_report.json").exists()
    assert not (clean_env / "o" / "data" / "train.jsonl").exists()
