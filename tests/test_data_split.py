"""Splits: seeded, grouped by image content, verified leakage-free by the doctor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from qvl_helpers.cli import main
from qvl_helpers.data import check_file, load_records
from qvl_helpers.data.split import split_file
from qvl_helpers.errors import ConfigError, DatasetError, OutputExistsError

REPO = Path(__file__).resolve().parent.parent
SHAPES = REPO / "data_samples" / "shapes"


def test_cli_split_then_check_reports_no_leakage(tmp_path: Path) -> None:
    out = tmp_path / "splits"
    assert main(["data", "split", str(SHAPES / "shapes.jsonl"), "--out-dir", str(out)]) == 0
    sizes = {}
    for name in ("train", "val", "test"):
        report = tmp_path / f"{name}.json"
        assert main(["data", "check", str(out / f"{name}.jsonl"), "--image-root", str(SHAPES),
                     "--json", str(report)]) == 0
        data = json.loads(report.read_text())
        assert "leakage" not in {p["code"] for p in data["problems"]}
        sizes[name] = data["records"]
    assert sizes == {"train": 256, "val": 32, "test": 32}


def test_same_seed_same_split_other_seed_other_split(tmp_path: Path) -> None:
    def ids(folder: Path) -> list[str]:
        return [json.loads(line)["id"] for line in (folder / "test.jsonl").open()]

    split_file(SHAPES / "shapes.jsonl", tmp_path / "a", seed=0)
    split_file(SHAPES / "shapes.jsonl", tmp_path / "b", seed=0)
    split_file(SHAPES / "shapes.jsonl", tmp_path / "c", seed=1)
    assert ids(tmp_path / "a") == ids(tmp_path / "b") != ids(tmp_path / "c")


def test_records_sharing_image_content_stay_together(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(SHAPES / "images", data / "images")
    records = [json.loads(line) for line in (SHAPES / "shapes.jsonl").open()][:60]
    extra = []
    for i in range(0, 60, 3):  # a renamed copy of every third image, in a second record
        src = records[i]["messages"][0]["content"][0]["image"]
        shutil.copy(data / src, data / f"images/copy_{i}.png")
        twin = json.loads(json.dumps(records[i]))
        twin["id"] += "-twin"
        twin["messages"][0]["content"][0]["image"] = f"images/copy_{i}.png"
        extra.append(twin)
    (data / "d.jsonl").write_text("\n".join(json.dumps(r) for r in records + extra) + "\n")
    split_file(data / "d.jsonl", data, val=0.2, test=0.2, seed=3)
    where = {}
    for name in ("train", "val", "test"):
        for r in load_records(data / f"{name}.jsonl"):
            where[r["id"]] = name
    for twin in extra:
        assert where[twin["id"]] == where[twin["id"].removesuffix("-twin")]
    for name in ("train", "val", "test"):
        assert check_file(data / f"{name}.jsonl").codes().isdisjoint({"leakage"})


def test_refuses_to_overwrite_and_bad_fractions(tmp_path: Path) -> None:
    split_file(SHAPES / "shapes.jsonl", tmp_path)
    with pytest.raises(OutputExistsError):
        split_file(SHAPES / "shapes.jsonl", tmp_path)
    split_file(SHAPES / "shapes.jsonl", tmp_path, overwrite=True)
    with pytest.raises(ConfigError, match="fractions"):
        split_file(SHAPES / "shapes.jsonl", tmp_path / "x", val=0.6, test=0.5)


def test_bad_data_is_not_split(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        split_file(REPO / "data_samples" / "broken" / "broken.jsonl", tmp_path)
    assert info.value.line is not None and "qvl data check" in str(info.value)
    assert not (tmp_path / "train.jsonl").exists()
