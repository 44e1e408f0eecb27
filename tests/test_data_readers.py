"""Readers: every accepted layout gives the same canonical records; bad files are reported."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from qvl_helpers.data import DataFileError, load_records, read_records
from qvl_helpers.data.readers import detect_file_format
from qvl_helpers.data.samples import format_set
from qvl_helpers.data.writers import to_official

REPO = Path(__file__).resolve().parent.parent
FORMATS = REPO / "data_samples" / "formats"


def _records(path: Path) -> list[dict]:
    raws = list(read_records(path))
    assert all(r.record is not None for r in raws), [r.findings for r in raws]
    return [r.record for r in raws]


def _without_ids(records: list[dict]) -> list[dict]:
    return [r["messages"] for r in records]


@pytest.mark.parametrize(("name", "layout"), [("messages.jsonl", "messages"),
                                              ("official.json", "official"),
                                              ("seed.jsonl", "seed"),
                                              ("sharegpt.json", "sharegpt"),
                                              ("data.csv", "csv")])
def test_every_layout_gives_the_same_records(name: str, layout: str) -> None:
    expected = format_set()
    assert detect_file_format(FORMATS / name) == layout
    got = _records(FORMATS / name)
    if layout == "csv":  # CSV rows hold one question and one answer: the multi-turn one is absent
        expected = [r for r in expected if len(r["messages"]) == 2]
    assert _without_ids(got) == _without_ids(expected)
    if layout in ("messages", "official", "csv"):  # layouts that carry ids keep them
        assert [r["id"] for r in got] == [r["id"] for r in expected]


def test_multi_image_and_multi_turn_survive() -> None:
    seed = _records(FORMATS / "seed.jsonl")
    two_images = seed[3]["messages"][0]["content"]
    assert [p["type"] for p in two_images] == ["image", "image", "text"]
    assert [m["role"] for m in seed[4]["messages"]] == ["user", "assistant", "user", "assistant"]


def test_official_round_trip(tmp_path: Path) -> None:
    records = format_set()
    path = tmp_path / "official.json"
    path.write_text(json.dumps([to_official(r) for r in records]), encoding="utf-8")
    assert _records(path) == records


def test_ids_are_stable_and_generated(tmp_path: Path) -> None:
    first = [r["id"] for r in _records(FORMATS / "seed.jsonl")]
    assert first == [r["id"] for r in _records(FORMATS / "seed.jsonl")]
    assert first == [f"seed-{i:05d}" for i in range(1, 6)]


def _write(path: Path, lines: list, *, bom: bool = False, sep: str = "\n") -> Path:
    text = sep.join(json.dumps(x, ensure_ascii=False) if not isinstance(x, str) else x
                    for x in lines)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def _seed(value: str, image: object = "a.png", answer: str = "ok") -> dict:
    return {"image": image, "conversations": [{"from": "user", "value": value},
                                              {"from": "assistant", "value": answer}]}


def test_bom_blank_lines_and_crlf(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", [_seed("<img></img>hi"), "", "   ", _seed("<img></img>yo")],
                  bom=True, sep="\r\n")
    raws = list(read_records(path))
    assert [r.line for r in raws] == [1, 4]
    assert raws[1].record["messages"][0]["content"][1]["text"] == "yo"


def test_json_array_reports_element_lines(tmp_path: Path) -> None:
    body = ",\n".join(json.dumps(_seed("<img></img>q")) for _ in range(3))
    (tmp_path / "a.json").write_text("[\n" + body + "\n]\n", encoding="utf-8")
    assert [r.line for r in read_records(tmp_path / "a.json")] == [2, 3, 4]
    (tmp_path / "b.json").write_text("[\n" + body + ",\n{\"image\": \n]", encoding="utf-8")
    raws = list(read_records(tmp_path / "b.json"))
    assert raws[-1].findings[0][0] == "invalid_json" and raws[-1].line == 6  # where it breaks


def test_inline_image_paths_and_placeholder_rules(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", [
        {"conversations": [{"from": "user", "value": "<img>pics/x.png</img>What?"},
                           {"from": "assistant", "value": "a"}]},
        _seed("<img></img><img></img>two?"),                       # 2 placeholders, 1 image
        _seed("<img></img>q", answer="<img></img>"),                # placeholder in an answer
        _seed("no placeholder", image=["a.png", "b.png"]),          # images go first
    ])
    raws = list(read_records(path))
    assert raws[0].record["messages"][0]["content"][0] == {"type": "image", "image": "pics/x.png"}
    assert raws[1].findings[0][0] == "placeholder_mismatch"
    assert raws[2].findings[0][0] == "placeholder_mismatch"
    content = raws[3].record["messages"][0]["content"]
    assert [p.get("image") for p in content] == ["a.png", "b.png", None]


def test_utf16_and_missing_files_cannot_run(tmp_path: Path) -> None:
    (tmp_path / "u.jsonl").write_bytes(json.dumps(_seed("x")).encode("utf-16"))
    with pytest.raises(DataFileError, match="UTF-16") as info:
        list(read_records(tmp_path / "u.jsonl"))
    assert info.value.exit_code == 2
    with pytest.raises(DataFileError, match="not found"):
        list(read_records(tmp_path / "none.jsonl"))


def test_csv_without_columns(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("img,question\nx.png,hi\n", encoding="utf-8")
    raws = list(read_records(tmp_path / "d.csv"))
    assert raws[0].findings[0][0] == "missing_field" and "prompt" in raws[0].findings[0][1]


def test_load_records_resolves_and_confines(tmp_path: Path) -> None:
    records = load_records(FORMATS / "messages.jsonl")
    first = records[0]["messages"][0]["content"][0]["image"]
    assert Path(first).is_absolute() and Path(first).is_file()
    from qvl_helpers import DatasetError

    _write(tmp_path / "bad.jsonl", [{"messages": [
        {"role": "user", "content": [{"type": "image", "image": "../outside.png"}]},
        {"role": "assistant", "content": "x"}]}])
    with pytest.raises(DatasetError) as info:
        load_records(tmp_path / "bad.jsonl")
    assert info.value.line == 1 and "outside" in str(info.value)


def test_convert_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qvl_helpers.cli import main

    out = tmp_path / "out.jsonl"
    assert main(["data", "convert", str(FORMATS / "seed.jsonl"), "--out", str(out)]) == 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == 5
    before = out.read_bytes()
    assert main(["data", "convert", str(FORMATS / "seed.jsonl"), "--out", str(out)]) == 2
    assert out.read_bytes() == before  # never overwritten without --force
    broken = REPO / "data_samples" / "broken" / "broken.jsonl"
    assert main(["data", "convert", str(broken), "--out", str(tmp_path / "b.jsonl")]) == 1
    assert not (tmp_path / "b.jsonl").exists()
    err = capsys.readouterr().err
    assert "broken.jsonl:3 (empty-answer) [error] empty_answer" in err
    assert main(["data", "convert", str(broken), "--out", str(tmp_path / "b.jsonl"),
                 "--keep-going"]) == 1
    assert len((tmp_path / "b.jsonl").read_text().splitlines()) == 7
    official = tmp_path / "official.json"
    assert main(["data", "convert", str(FORMATS / "messages.jsonl"), "--out", str(official),
                 "--to", "official"]) == 0
    assert json.loads(official.read_text())[0]["conversations"][0]["from"] == "human"


def _package_imports(path: Path) -> set[str]:
    """The qvl_helpers modules a file imports (relative or absolute, at any depth of the file),
    as dotted names under the package ("images", "data.readers")."""
    package = path.relative_to(REPO / "qvl_helpers").with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            found.add(".".join([*base, *(node.module or "").split(".")]).strip("."))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qvl_helpers."):
            found.add(node.module.removeprefix("qvl_helpers."))
    return found


def test_the_floors_below_the_data_package_never_import_it() -> None:
    """The modules the data package imports from the package (images, errors, qwen, ...) import
    nothing of it back, not even inside a function: DataFileError lives in errors.py (the data
    package re-exports it), so images.py raises it without a circle."""
    from qvl_helpers import errors
    from qvl_helpers.data import readers

    assert DataFileError is errors.DataFileError is readers.DataFileError
    assert DataFileError.exit_code == 2
    below = set()
    for path in (REPO / "qvl_helpers" / "data").glob("*.py"):
        below |= {m.split(".")[0] for m in _package_imports(path) if not m.startswith("data")}
    assert {"images", "errors", "qwen"} <= below
    upward = {name: sorted(m for m in _package_imports(REPO / "qvl_helpers" / f"{name}.py")
                           if m == "data" or m.startswith("data."))
              for name in sorted(below)}
    assert {name: found for name, found in upward.items() if found} == {}
