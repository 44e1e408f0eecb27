"""prepare_data: splits kept per data source, made once, never replaced by other data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from learner_data import snapshot

from qvl_helpers.config import load_config
from qvl_helpers.data import check_file, default_image_root, load_records, prepare_data
from qvl_helpers.errors import DatasetError

SAMPLES = Path(__file__).resolve().parent.parent / "data_samples"


def test_same_data_same_folder_edited_data_new_folder(clean_env: Path) -> None:
    data = clean_env / "shapes"
    shutil.copytree(SAMPLES / "shapes", data)
    cfg = load_config(data=str(data / "shapes.jsonl"), output_dir=str(clean_env / "out"))
    first = prepare_data(cfg, verbose=False)
    assert first.built and first.report.exists() and first.image_root == data
    assert first.folder.parent == clean_env / "out" / "data"
    assert first.folder.name.startswith("shapes-")
    assert first.counts == {"train": 256, "val": 32, "test": 32}
    again = prepare_data(cfg, verbose=False)
    assert not again.built and again.folder == first.folder
    before = snapshot(first.folder)
    lines = (data / "shapes.jsonl").read_text().splitlines()
    (data / "shapes.jsonl").write_text("\n".join(lines[:100]) + "\n")
    edited = prepare_data(cfg, verbose=False)
    assert edited.built and edited.folder != first.folder
    assert sum(edited.counts.values()) == 100
    assert snapshot(first.folder) == before  # earlier runs' splits are untouched


def test_split_settings_are_part_of_the_key(clean_env: Path) -> None:
    cfg = load_config(data=str(SAMPLES / "shapes" / "shapes.jsonl"),
                      output_dir=str(clean_env / "out"))
    a = prepare_data(cfg, verbose=False)
    b = prepare_data(load_config(data=str(SAMPLES / "shapes" / "shapes.jsonl"),
                                 output_dir=str(clean_env / "out"), seed=1), verbose=False)
    assert a.folder != b.folder and a.counts == b.counts


def test_splits_know_their_image_root(clean_env: Path) -> None:
    cfg = load_config(data=str(SAMPLES / "shapes" / "shapes.jsonl"),
                      output_dir=str(clean_env / "out"))
    prepared = prepare_data(cfg, verbose=False)
    root, why = default_image_root(prepared.test)
    assert root == SAMPLES / "shapes" and "split_info.json" in why
    records = load_records(prepared.test)  # no image root needed
    assert all(Path(r["messages"][0]["content"][0]["image"]).is_file() for r in records)
    report = check_file(prepared.test)  # the doctor finds them too
    assert report.ok and report.records == 32 and report.image_root == str(SAMPLES / "shapes")


def test_a_missing_image_names_the_folder_searched(clean_env: Path) -> None:
    cfg = load_config(data=str(SAMPLES / "shapes" / "shapes.jsonl"),
                      output_dir=str(clean_env / "out"))
    prepared = prepare_data(cfg, verbose=False)
    with pytest.raises(DatasetError) as info:
        load_records(prepared.test, image_root=clean_env)
    assert f"not found in {clean_env} (the image root given)" in str(info.value)
    info_file = prepared.folder / "split_info.json"
    moved = json.loads(info_file.read_text())
    moved["image_root"] = str(clean_env / "moved")
    info_file.write_text(json.dumps(moved))
    with pytest.raises(DatasetError, match="image root recorded in split_info.json"):
        load_records(prepared.test)


def test_bad_data_is_not_split(clean_env: Path) -> None:
    cfg = load_config(data=str(SAMPLES / "broken" / "broken.jsonl"),
                      output_dir=str(clean_env / "o"))
    with pytest.raises(DatasetError, match="check_report.json"):
        prepare_data(cfg, verbose=False)
    made = list((clean_env / "o" / "data").iterdir())
    assert [p.suffix for p in made] == [".json"]  # the report only: no split folder
