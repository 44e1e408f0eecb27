"""The committed sample data is exactly what `qvl data samples` generates, and is fit for purpose."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from qvl_helpers.data import check_file, load_records
from qvl_helpers.data.samples import COLOURS, make_all

REPO = Path(__file__).resolve().parent.parent / "data_samples"


def test_committed_samples_match_the_generator(tmp_path: Path) -> None:
    make_all(tmp_path)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(REPO) for p in REPO.rglob("*") if p.is_file()
                       and p.name != "README.md")
    assert generated == committed
    for rel in generated:
        if rel.suffix == ".png" and (tmp_path / rel).stat().st_size:
            a, b = Image.open(tmp_path / rel), Image.open(REPO / rel)
            assert a.mode == b.mode and np.array_equal(np.asarray(a), np.asarray(b)), rel
        else:
            assert (tmp_path / rel).read_bytes() == (REPO / rel).read_bytes(), rel


def test_bundled_sets_are_clean() -> None:
    for name in ("shapes/shapes.jsonl", "receipts/receipts.jsonl", "formats/messages.jsonl"):
        report = check_file(REPO / name)
        assert report.ok and report.problems == [], report.text()


def test_shapes_answers_need_the_image() -> None:
    records = load_records(REPO / "shapes" / "shapes.jsonl")
    answers = Counter(r["messages"][1]["content"][0]["text"] for r in records)
    assert set(answers) == set(COLOURS)
    assert max(answers.values()) / len(records) < 0.2  # guessing the commonest answer fails
    for record in records[:30]:  # the answer's colour really is the shape's colour
        img = np.asarray(Image.open(record["messages"][0]["content"][0]["image"]))
        target = np.array(COLOURS[record["messages"][1]["content"][0]["text"]])
        assert (np.abs(img.astype(int) - target).sum(axis=2) == 0).sum() > 100


def test_receipt_answers_are_json() -> None:
    for record in load_records(REPO / "receipts" / "receipts.jsonl"):
        fields = json.loads(record["messages"][1]["content"][0]["text"])
        assert set(fields) == {"store", "date", "total"}
        assert float(fields["total"]) > 0


def test_broken_set_shows_many_codes() -> None:
    codes = check_file(REPO / "broken" / "broken.jsonl").codes()
    assert {"missing_image", "empty_answer", "bad_roles", "placeholder_mismatch",
            "reserved_token", "image_mode", "image_too_small", "unreadable_image",
            "path_outside_root", "duplicate_id", "invalid_json"} <= codes
