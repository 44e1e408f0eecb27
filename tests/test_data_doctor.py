"""The data doctor: one crafted file per problem code, checked through the CLI (code, line, exit
status), plus property-based tests that no input makes the readers or the doctor crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from qvl_helpers.cli import main
from qvl_helpers.data import CODES, DataFileError, check_file, read_records

Q = "What colour is the shape?"
REPO = Path(__file__).resolve().parent.parent


def rec(*images: str, answer: str = "red", rid: str | None = None, text: str = Q) -> dict:
    content = [{"type": "image", "image": i} for i in images] + [{"type": "text", "text": text}]
    out = {"messages": [{"role": "user", "content": content},
                        {"role": "assistant", "content": [{"type": "text", "text": answer}]}]}
    if rid:
        out["id"] = rid
    return out


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    Image.new("RGB", (64, 64), "red").save(tmp_path / "img" / "ok.png")
    Image.new("RGB", (64, 48), "blue").save(tmp_path / "img" / "ok2.png")
    return tmp_path


def run_check(folder: Path, lines: list, *extra: str, name: str = "data.jsonl") -> tuple[int, dict]:
    path = folder / name
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)
                              for x in lines) + "\n", encoding="utf-8")
    report_path = folder / f"{name}.report.json"
    status = main(["data", "check", str(path), "--json", str(report_path), *extra])
    report = json.loads(report_path.read_text(encoding="utf-8"))
    PRODUCED.update(p["code"] for p in report["problems"])
    return status, report


#: Every problem code some test of this module made the doctor report (see the last test).
PRODUCED: set[str] = set()


def found(report: dict) -> set[tuple[str, int | None]]:
    return {(p["code"], p["line"]) for p in report["problems"]}


GOOD = rec("img/ok.png", rid="good")


def test_clean_file_passes(folder: Path) -> None:
    status, report = run_check(folder, [GOOD, rec("img/ok2.png", answer="blue", rid="g2")])
    assert status == 0 and report["ok"] and report["problems"] == [] and report["records"] == 2


@pytest.mark.parametrize(("code", "line"), [
    ("invalid_json", 2), ("missing_field", 2), ("bad_roles", 2), ("empty_answer", 2),
    ("placeholder_mismatch", 2), ("reserved_token", 2), ("missing_image", 2),
    ("duplicate_id", 2),
])
def test_record_level_codes(folder: Path, code: str, line: int) -> None:
    bad = {
        "invalid_json": '{"messages": [',
        "missing_field": {"id": "x", "conversation": []},
        "bad_roles": {"id": "x", "messages": [{"role": "assistant", "content": "hi"}]},
        "empty_answer": rec("img/ok.png", answer="   ", rid="x"),
        "placeholder_mismatch": rec("img/ok.png", text="<image>" + Q, rid="x"),
        "reserved_token": rec("img/ok.png", answer="red<|im_end|>", rid="x"),
        "missing_image": rec("img/gone.png", rid="x"),
        "duplicate_id": rec("img/ok2.png", answer="blue", rid="good"),
    }[code]
    status, report = run_check(folder, [GOOD, bad, rec("img/ok2.png", answer="b", rid="last")])
    assert status == 1 and not report["ok"]
    assert (code, line) in found(report)
    assert report["records"] == 3  # never stops at the first problem
    problem = next(p for p in report["problems"] if p["code"] == code)
    assert problem["severity"] == "error" and problem["message"]


def test_invalid_encoding(folder: Path) -> None:
    path = folder / "data.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"id": "caf\xe9"}\n')
    report = check_file(path)
    assert ("invalid_encoding", 2) in {(p.code, p.line) for p in report.problems}


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_path_outside_root(folder: Path, tmp_path_factory: pytest.TempPathFactory,
                           how: str) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "secret.png"
    Image.new("RGB", (64, 64)).save(elsewhere)
    if how == "symlink":
        os.symlink(elsewhere, folder / "img" / "link.png")
        target = "img/link.png"
    else:
        target = "../../etc/passwd" if how == "dotdot" else str(elsewhere)
    status, report = run_check(folder, [GOOD, rec(target, rid="x")])
    assert status == 1 and ("path_outside_root", 2) in found(report)


def _truncated(path: Path) -> None:
    Image.effect_noise((200, 200), 64).convert("RGB").save(path, "PNG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(("code", "make"), [
    ("unreadable_image", lambda p: p.write_bytes(b"")),
    ("unreadable_image", lambda p: p.write_bytes(b"this is not a PNG at all")),
    ("unreadable_image", _truncated),
    ("image_too_large", lambda p: Image.new("1", (8000, 8000)).save(p)),
    ("image_too_small", lambda p: Image.new("RGB", (20, 300)).save(p)),
    ("extreme_aspect_ratio", lambda p: Image.new("RGB", (6000, 28)).save(p)),
])
def test_image_errors(folder: Path, code: str, make) -> None:
    make(folder / "img" / "bad.png")
    status, report = run_check(folder, [GOOD, rec("img/bad.png", rid="x")])
    assert status == 1 and (code, 2) in found(report)


def test_huge_image_is_refused_from_its_header(folder: Path) -> None:
    # A PNG whose header claims 30000x30000 px: decoding it would need 2.7 GB. The cap is read
    # from the header, so the check is instant and never decodes it.
    import time

    Image.new("1", (30000, 30000)).save(folder / "img" / "bomb.png")
    start = time.perf_counter()
    status, report = run_check(folder, [rec("img/bomb.png", rid="bomb")])
    assert status == 1 and ("image_too_large", 1) in found(report)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(("mode", "fmt"), [("RGBA", "PNG"), ("LA", "PNG"), ("P", "PNG"),
                                           ("CMYK", "JPEG"), ("I;16", "PNG"), ("gif", "GIF")])
def test_mode_warnings(folder: Path, mode: str, fmt: str) -> None:
    path = folder / "img" / f"m.{fmt.lower()}"
    if mode == "gif":
        frames = [Image.new("P", (64, 64), i) for i in range(3)]
        frames[0].save(path, save_all=True, append_images=frames[1:])
    else:
        Image.new(mode, (64, 64)).save(path, fmt)
    status, report = run_check(folder, [GOOD, rec(f"img/{path.name}", rid="x")])
    assert status == 0 and report["ok"]  # a warning: usable, converted the same way everywhere
    assert ("image_mode", 2) in found(report)
    assert next(p for p in report["problems"] if p["code"] == "image_mode")["severity"] == "warning"


def test_exif_rotation_warning(folder: Path) -> None:
    img = Image.new("RGB", (80, 40), "green")
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    img.save(folder / "img" / "rot.jpg", exif=exif)
    status, report = run_check(folder, [GOOD, rec("img/rot.jpg", rid="x")])
    assert status == 0 and ("exif_rotated", 2) in found(report)


def test_duplicate_sample_is_a_warning(folder: Path) -> None:
    status, report = run_check(folder, [GOOD, rec("img/ok.png", rid="copy")])
    assert status == 0 and ("duplicate_sample", 2) in found(report)


def test_too_long_with_a_processor(folder: Path, tiny_dir: Path) -> None:
    long_answer = " ".join(["red"] * 200)
    status, report = run_check(folder, [GOOD, rec("img/ok.png", answer=long_answer, rid="long")],
                               "--model", str(tiny_dir), "--max-length", "120")
    assert status == 1 and ("too_long", 2) in found(report)
    problem = next(p for p in report["problems"] if p["code"] == "too_long")
    assert "visual" in problem["message"] and "> max_length 120" in problem["message"]
    assert ("too_long", 1) not in found(report)


def test_a_line_that_is_not_utf8(folder: Path) -> None:
    good = json.dumps(GOOD, ensure_ascii=False).encode()
    bad = json.dumps(rec("img/ok2.png", rid="latin1", answer="caf\u00e9")).encode()
    bad = bad.replace(b"\\u00e9", b"\xe9")  # the answer saved as Latin-1, not UTF-8
    path = folder / "mixed.jsonl"
    path.write_bytes(good + b"\n" + bad + b"\n")
    report_path = folder / "mixed.report.json"
    assert main(["data", "check", str(path), "--json", str(report_path)]) == 1
    report = json.loads(report_path.read_text(encoding="utf-8"))
    PRODUCED.update(p["code"] for p in report["problems"])
    assert found(report) == {("invalid_encoding", 2)}
    assert "UTF-8" in report["problems"][0]["message"]


def test_leakage_between_split_files(folder: Path) -> None:
    Image.new("RGB", (64, 64), "red").save(folder / "img" / "renamed_copy.png")  # same bytes
    run_check(folder, [GOOD], name="train.jsonl")
    status, report = run_check(folder, [rec("img/ok2.png", rid="v1", answer="blue"),
                                        rec("img/renamed_copy.png", rid="v2")], name="val.jsonl")
    assert status == 1 and found(report) == {("leakage", 2)}
    assert "train.jsonl" in report["problems"][0]["message"]


def test_missing_file_exits_2(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "check", str(folder / "nope.jsonl")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err


def test_check_without_a_model_imports_no_torch(folder: Path) -> None:
    """`qvl data check FILE` (no --model) measures images in plain Python: neither torch nor
    transformers is imported, nor ``tokens.py`` (the layer above the data package, whose
    ``smart_resize`` imported transformers). A fresh process, because what is tested is what a
    process that only checks data ends up importing (this test session has imported all three)."""
    path = folder / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (GOOD, rec("img/ok2.png", rid="b"),
                                                      rec("img/nope.png", rid="c"))) + "\n")
    code = ("import json, sys\n"
            "from qvl_helpers.cli import main\n"
            "status = main(['data', 'check', sys.argv[1]])\n"
            "above = ('torch', 'transformers', 'qvl_helpers.tokens')\n"
            "loaded = sorted(m for m in above if m in sys.modules)\n"
            "print(json.dumps({'status': status, 'loaded': loaded}))\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert "missing_image" in done.stdout  # the check really ran, and found the missing image
    assert outcome == {"status": 1, "loaded": []}


# ----------------------------------------------------------------- property-based robustness

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["id", "messages", "conversations", "role", "content", "from", "value",
                         "type", "text", "image", "images", "x"]), inner, max_size=5),
    max_leaves=25)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(json_values, min_size=1, max_size=4), as_array=st.booleans())
@example(items=[{"messages": [{"id": None, "from": []}]}], as_array=False)  # found 2026-11-29
def test_random_json_never_crashes(tmp_path: Path, items: list, as_array: bool) -> None:
    path = tmp_path / "fuzz.json"
    text = json.dumps(items) if as_array else "\n".join(json.dumps(i) for i in items)
    path.write_text(text, encoding="utf-8")
    try:
        list(read_records(path))
        report = check_file(path)
    except DataFileError:
        return  # the whole file is unreadable: a clear error, not a crash
    # The real check is that nothing else was raised; and the report must stay meaningful:
    assert all(p.code in CODES for p in report.problems)
    assert report.records > 0 or not report.ok  # a file with no record is never "OK"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".json", ".csv"]))
def test_random_bytes_never_crash(tmp_path: Path, data: bytes, suffix: str) -> None:
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        report = check_file(path)
    except DataFileError:
        return
    assert all(p.code in CODES for p in report.problems)


# ----------------------------------------------------------------- last: every code was seen


def test_every_code_is_produced_by_a_crafted_file(request: pytest.FixtureRequest) -> None:
    """Each stable code was actually reported by the doctor for one of this module's crafted
    files (collected by run_check), not merely mentioned in the source."""
    here = request.node.path
    ran = [item for item in request.session.items if item.path == here]
    if ran[-1] is not request.node or len(ran) < 20:
        pytest.skip("meaningful only when the whole module runs, this test last")
    assert sorted(set(CODES) - PRODUCED) == []
