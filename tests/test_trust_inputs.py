"""Trust in inputs: every image and every path reaches the same checks, whatever the entry point.

Five classes, each with the learner's example and cases of our own:

1. a path from ``course.yaml`` (data, image_root, output_dir) that is wrong gives ONE error naming
   the key, the file or folder and the fix, and nothing falls back to the bundled data;
2. an image the data doctor refuses is refused the same way by every entry point (``qvl eval``,
   ``qvl chat``, ``qvl tokens``, ``load_records``, the collator), before any model loads;
3. path forms from other tools (Windows separators, another letter case, web addresses, data:
   URIs, Windows drive paths) are read when their meaning is clear, else refused in one short
   sentence; no message echoes a huge value;
4. every fix a command prints names a flag that command has, or a course.yaml key;
5. video, in any layout, is refused with one sentence that says so and what to do.
"""

from __future__ import annotations

import argparse
import base64
import functools
import io
import json
import re
import struct
import zlib
from pathlib import Path

import pytest
from inprocess import run_main as run_qvl
from PIL import Image

from qvl_helpers.cli import build_parser
from qvl_helpers.config import SETTINGS, load_config
from qvl_helpers.errors import ConfigError, DatasetError, QVLError

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------- helpers


def png(path: Path, size: tuple[int, int] = (64, 48), colour: str = "red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def record(image: str, rid: str = "s1", answer: str = "red") -> dict:
    return {"id": rid, "messages": [
        {"role": "user", "content": [{"type": "image", "image": image},
                                     {"type": "text", "text": "What colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]}]}


def jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@functools.cache
def _bomb_png(side: int = 60_000) -> bytes:
    """A valid 430 KB PNG of side x side black 1-bit pixels (3.6 G pixels; its rows
    decompress to 450 MB), written chunk by chunk: Pillow takes seconds to encode it, zlib on
    repeated rows under one."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    rows, pack = zlib.compressobj(9), 1000
    assert side % pack == 0, side
    block = (b"\x00" * (1 + (side + 7) // 8)) * pack  # each row: filter byte 0, then the pixels
    pixels = b"".join([rows.compress(block) for _ in range(side // pack)] + [rows.flush()])
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
            + chunk(b"IEND", b""))


def bad_image(kind: str, folder: Path) -> Path:
    """An image file the data doctor refuses, one per kind."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}.png"
    if kind == "too_small":
        Image.new("RGB", (10, 10), "red").save(path)
    elif kind == "extreme_aspect":
        Image.new("RGB", (6000, 28), "red").save(path)
    elif kind == "truncated":
        buffer = io.BytesIO()
        Image.effect_noise((256, 256), 60).convert("RGB").save(buffer, "PNG")
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    elif kind == "bomb":
        path.write_bytes(_bomb_png())
    elif kind == "not_an_image":
        path.write_text("this is a text file saved as .png\n", encoding="utf-8")
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        raise AssertionError(kind)
    return path


KINDS = ("too_small", "extreme_aspect", "truncated", "bomb", "not_an_image", "empty")
DOCTOR_CODE = {"too_small": "image_too_small", "extreme_aspect": "extreme_aspect_ratio",
               "truncated": "unreadable_image", "bomb": "image_too_large",
               "not_an_image": "unreadable_image", "empty": "unreadable_image"}


def error_lines(err: str) -> list[str]:
    return re.findall(r"qvl [a-z ]+: error: [^\r\n]*", err)


def forbid_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model is a failure: every input check comes before it."""
    import qvl_helpers.chat as chat
    import qvl_helpers.evaluate as evaluate

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(evaluate, "load_for_generation", forbidden)
    monkeypatch.setattr(chat, "load_for_generation", forbidden)


@pytest.fixture
def course(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A learner's folder with 40 good samples and a course.yaml they edit (written by the
    returned function, which takes extra lines)."""
    data = tmp_path / "my_data"
    records = [record(f"images/{i:04d}.png", f"s{i}", "red" if i % 2 else "blue")
               for i in range(40)]
    for i in range(40):
        png(data / "images" / f"{i:04d}.png", colour="red" if i % 2 else "blue",
            size=(60 + i, 40))
    jsonl(data / "annotations.jsonl", records)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("QVL_OUTPUT_DIR", raising=False)

    def write(*lines: str) -> Path:
        text = "\n".join(["model: tiny", "data: my_data/annotations.jsonl",
                          "output_dir: outputs", *lines]) + "\n"
        path = tmp_path / "course.yaml"
        path.write_text(text, encoding="utf-8")
        monkeypatch.setenv("QVL_CONFIG", str(path))
        return path

    write()
    return write


# ---------------------------------------------------------------------------- 1. course.yaml paths


def test_a_missing_image_root_in_course_yaml_is_one_error_naming_the_key(course) -> None:
    from qvl_helpers.data import prepare_data

    yaml_file = course("image_root: my_data/pictures")
    with pytest.raises(ConfigError) as caught:
        prepare_data(load_config(), verbose=False)
    text = str(caught.value)
    assert "image_root" in text and "pictures" in text and str(yaml_file) in text
    assert "does not exist" in text
    assert "--image-root" not in text  # a notebook has no flags: the fix is the key
    assert not (Path("outputs") / "data").exists() or not any((Path("outputs") / "data").iterdir())


def test_qvl_data_check_without_a_file_names_the_course_yaml_key_once(
        course, capsys: pytest.CaptureFixture[str]) -> None:
    course("image_root: my_data/pictures")
    code, out, err = run_qvl(capsys, "data", "check")
    assert code == 2, out + err
    lines = error_lines(err)
    assert len(lines) == 1 and "image_root" in lines[0] and "pictures" in lines[0], err
    assert not re.search(r"\bmissing_image\b", out + err)  # not 40 lines about the images


def test_a_missing_image_root_flag_is_one_error_naming_the_flag(
        course, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "my_data" / "annotations.jsonl")
    for args in (["data", "check", data], ["data", "convert", data, "--out",
                                           str(tmp_path / "c.jsonl")],
                 ["data", "split", data, "--out-dir", str(tmp_path / "s")],
                 ["tokens", data, "--model", "tiny"]):
        code, out, err = run_qvl(capsys, *args, "--image-root", str(tmp_path / "nowhere"))
        lines = error_lines(err)
        assert code == 2 and len(lines) == 1, (args, out, err)
        assert "--image-root" in lines[0] and "nowhere" in lines[0] and "does not exist" in lines[0]
        assert not re.search(r"\bmissing_image\b", out + err)
    assert not (tmp_path / "c.jsonl").exists() and not (tmp_path / "s").exists()


def test_convert_file_refuses_a_missing_image_root_instead_of_writing(tmp_path: Path) -> None:
    from qvl_helpers.data.writers import convert_file

    data = jsonl(tmp_path / "d" / "a.jsonl", [record("images/a.png")])
    png(tmp_path / "d" / "images" / "a.png")
    with pytest.raises(QVLError, match="does not exist"):
        convert_file(data, tmp_path / "out.jsonl", image_root=tmp_path / "gone")
    assert not (tmp_path / "out.jsonl").exists()


def test_the_data_key_pointing_to_a_folder_names_the_key(course) -> None:
    from qvl_helpers.data import prepare_data

    course_file = course()
    course_file.write_text("model: tiny\ndata: my_data\noutput_dir: outputs\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        prepare_data(load_config(), verbose=False)
    text = str(caught.value)
    assert "data" in text and "folder" in text and str(course_file) in text


def test_output_dir_that_is_a_file_names_the_key(course, tmp_path: Path) -> None:
    from qvl_helpers.data import prepare_data

    (tmp_path / "outputs").write_text("not a folder", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        prepare_data(load_config(), verbose=False)
    assert "output_dir" in str(caught.value) and "which is a file" in str(caught.value) \
        and "must be a folder" in str(caught.value)
    assert (tmp_path / "outputs").read_text(encoding="utf-8") == "not a folder"


def test_an_image_root_from_the_environment_names_the_variable(
        course, monkeypatch: pytest.MonkeyPatch) -> None:
    from qvl_helpers.data import course_data

    monkeypatch.setenv("QVL_IMAGE_ROOT", "/no/such/folder")
    with pytest.raises(ConfigError) as caught:
        course_data(load_config())
    text = str(caught.value)
    assert "QVL_IMAGE_ROOT" in text and "/no/such/folder" in text
    assert "course.yaml" not in text.split("Fix:")[1]  # the fix is where the value came from


def test_the_learners_records_never_fall_back_to_bundled_data(course) -> None:
    from qvl_helpers.data import course_records

    course("image_root: my_data/pictures")
    with pytest.raises(ConfigError, match="image_root"):
        course_records(load_config())
    course("image_root: my_data")
    assert [r["id"] for r in course_records(load_config())][:2] == ["s0", "s1"]


def test_notebook_01_shows_only_records_it_got_from_the_course_helper() -> None:
    """A cell that failed leaves a stale variable behind; a cell that shows the learner's
    samples therefore asks the helper again, which refuses when their data is wrong."""
    nb = json.loads((REPO / "notebooks" / "01_data_formatting.ipynb").read_text("utf-8"))
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    shows = [c for c in code if "sample_browser(" in c or "sample_grid(" in c]
    assert shows and all("course_records(cfg)" in c for c in shows), shows
    # a bare data_file/image_root (not prepared.image_root, not the image_root= keyword)
    uses = re.compile(r"(?<![.\w])(data_file|image_root)\b(?!=)")
    learner_cells = [c for c in code if uses.search(c)]
    assert len(learner_cells) >= 3 and all("course_data(cfg)" in c for c in learner_cells)


# ---------------------------------------------------------------------------- 2. images


@pytest.mark.parametrize("kind", KINDS)
def test_load_records_refuses_what_the_doctor_refuses_with_the_same_code(
        tmp_path: Path, kind: str) -> None:
    from qvl_helpers.data import check_file, load_records

    bad_image(kind, tmp_path / "images")
    data = jsonl(tmp_path / "d.jsonl", [record(f"images/{kind}.png")])
    assert DOCTOR_CODE[kind] in check_file(data).codes()
    with pytest.raises(DatasetError) as caught:
        load_records(data)
    assert DOCTOR_CODE[kind] in str(caught.value) and f"{kind}.png" in str(caught.value)


@pytest.mark.parametrize("kind", KINDS)
def test_qvl_chat_refuses_an_image_the_doctor_refuses_before_loading(
        tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    forbid_model(monkeypatch)
    image = bad_image(kind, tmp_path)
    code, out, err = run_qvl(capsys, "chat", "--model", "tiny", "--image", image, "What?")
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1, err
    assert DOCTOR_CODE[kind] in lines[0] and "unexpected" not in err and "Fix:" in lines[0]


@pytest.mark.parametrize("kind", ["too_small", "extreme_aspect", "bomb", "not_an_image"])
def test_qvl_eval_refuses_an_image_the_doctor_refuses_before_loading(
        tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    forbid_model(monkeypatch)
    png(tmp_path / "images" / "ok.png")
    bad_image(kind, tmp_path / "images")
    data = jsonl(tmp_path / "eval.jsonl", [record("images/ok.png", "a"),
                                           record(f"images/{kind}.png", "b")])
    code, out, err = run_qvl(capsys, "eval", "--model", "tiny", "--data", data,
                             "--out", tmp_path / "ev")
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1, err
    assert DOCTOR_CODE[kind] in lines[0] and "sample b" in lines[0] and "unexpected" not in err


@pytest.mark.parametrize("kind", ["extreme_aspect", "too_small"])
def test_qvl_tokens_refuses_an_image_the_doctor_refuses(
        tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    bad_image(kind, tmp_path / "images")
    data = jsonl(tmp_path / "d.jsonl", [record(f"images/{kind}.png")])
    code, out, err = run_qvl(capsys, "tokens", data, "--model", "tiny")
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1 and DOCTOR_CODE[kind] in lines[0], err


@pytest.mark.parametrize("kind", ["too_small", "extreme_aspect"])
def test_the_collator_refuses_records_built_by_hand(tmp_path: Path, processor, kind: str) -> None:
    """A script may hand records to the collator without load_records: the same rule applies
    to the decoded image instead of an unexplained ValueError from the processor."""
    from qvl_helpers.collate import make_collator

    image = bad_image(kind, tmp_path)
    with pytest.raises(DatasetError) as caught:
        make_collator(processor)([record(str(image))])
    assert DOCTOR_CODE[kind] in str(caught.value)


def test_chat_switching_to_a_bad_image_is_refused_and_the_old_one_kept(tmp_path: Path) -> None:
    from qvl_helpers.chat import interactive

    good, small = png(tmp_path / "ok.png"), bad_image("too_small", tmp_path)
    said, asked = [], []

    class Fake:
        def answer(self, image: str, question: str, stream: bool = False) -> str:
            asked.append(image)
            return ""

    lines = iter([f"/image {small}", "what?", ""])
    interactive(Fake(), str(good), read=lambda prompt: next(lines), say=said.append)  # type: ignore[arg-type]
    assert asked == [str(good)] and any("image_too_small" in s for s in said)


# ---------------------------------------------------------------------------- 3. path forms


def test_windows_separators_are_read_as_folders(tmp_path: Path) -> None:
    from qvl_helpers.data import check_file, load_records

    image = png(tmp_path / "images" / "0001.png")
    data = jsonl(tmp_path / "d.jsonl", [record("images\\0001.png")])
    assert check_file(data).ok, check_file(data).text()
    assert load_records(data)[0]["messages"][0]["content"][0]["image"] == str(image.resolve())


def test_a_unique_match_in_another_letter_case_is_read(tmp_path: Path) -> None:
    from qvl_helpers.data import check_file, load_records

    image = png(tmp_path / "images" / "a.png")
    data = jsonl(tmp_path / "d.jsonl", [record("Images/A.PNG"), record("IMAGES\\a.png", "s2",
                                                                       "blue")])
    report = check_file(data)
    assert report.ok, report.text()
    assert {r["messages"][0]["content"][0]["image"] for r in load_records(data)} == \
        {str(image.resolve())}


def test_two_files_that_differ_only_in_case_are_not_guessed(tmp_path: Path) -> None:
    from qvl_helpers.data import check_file

    png(tmp_path / "images" / "a.png")
    png(tmp_path / "images" / "A.png", colour="blue")
    data = jsonl(tmp_path / "d.jsonl", [record("images/A.PNG")])
    problems = check_file(data).problems
    assert [p.code for p in problems] == ["missing_image"]
    assert "a.png" in problems[0].message and "A.png" in problems[0].message
    assert "letter case" in problems[0].message


@pytest.mark.parametrize("path, words", [
    ("https://example.com/cats/a.png", ("web address", "download")),
    ("http://example.com/a.png", ("web address", "download")),
    ("s3://bucket/a.png", ("web address", "download")),
    ("C:\\Users\\me\\images\\a.png", ("Windows", "relative")),
    ("\\\\server\\share\\a.png", ("Windows", "relative")),
])
def test_paths_the_course_does_not_read_are_one_short_sentence(
        tmp_path: Path, path: str, words: tuple[str, ...],
        capsys: pytest.CaptureFixture[str]) -> None:
    from qvl_helpers.data import check_file

    data = jsonl(tmp_path / "d.jsonl", [record(path)])
    problems = check_file(data).problems
    assert len(problems) == 1, problems
    for word in words:
        assert word in problems[0].message
    assert "--image-root" not in problems[0].message  # another root would not help
    code, out, err = run_qvl(capsys, "data", "check", data)
    assert code == 1 and words[0] in out


def test_a_data_uri_is_refused_without_printing_it(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from qvl_helpers.data import check_file, load_records

    buffer = io.BytesIO()
    Image.effect_noise((200, 200), 80).convert("RGB").save(buffer, "PNG")
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    uri = uri + "A" * max(0, 100_000 - len(uri))
    data = jsonl(tmp_path / "d.jsonl", [record(uri)])
    (problem,) = check_file(data).problems
    assert "data: URI" in problem.message and len(problem.message) < 400
    code, out, err = run_qvl(capsys, "data", "check", data)
    assert code == 1 and max(len(line) for line in (out + err).splitlines()) < 500
    with pytest.raises(DatasetError) as caught:
        load_records(data)
    assert len(str(caught.value)) < 600


def test_a_huge_missing_path_is_echoed_short(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    data = jsonl(tmp_path / "d.jsonl", [record("images/" + "x" * 5000 + ".png")])
    code, out, err = run_qvl(capsys, "data", "check", data)
    assert code == 1 and "missing_image" in out
    assert max(len(line) for line in (out + err).splitlines()) < 500
    code, out, err = run_qvl(capsys, "tokens", data, "--model", "tiny")
    assert code == 1 and max(len(line) for line in (out + err).splitlines()) < 500, err


# ---------------------------------------------------------------------------- 4. fixes per command


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every ``qvl`` command's parser, found by walking the real parser."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found[name] = parser
        for action in subs:
            for sub_name, sub in action.choices.items():
                walk(sub, f"{name} {sub_name}")

    walk(build_parser(), "qvl")
    return found


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


def named_flags(text: str) -> set[str]:
    """``--flags`` a message tells the learner to use, leaving out those inside a backticked
    command of its own (`qvl data check --json R`) which names its own flags."""
    text = re.sub(r"`qvl [^`]*`", "", text)
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", text))


def named_keys(text: str) -> set[str]:
    return set(re.findall(r"\b([a-z_]+): in course\.yaml", text))


def assert_fixes_fit(command: str, text: str) -> None:
    parser = command_parsers()[command]
    assert named_flags(text) <= options(parser), (command, named_flags(text) - options(parser),
                                                  text)
    assert named_keys(text) <= set(SETTINGS), (command, text)


def test_every_command_is_known_to_the_walk() -> None:
    assert {"qvl data check", "qvl train", "qvl eval", "qvl chat", "qvl tokens",
            "qvl data convert", "qvl export"} <= set(command_parsers())


def test_the_named_flag_check_itself_catches_a_flag_the_command_lacks() -> None:
    with pytest.raises(AssertionError):
        assert_fixes_fit("qvl train", "images/a.png not found; pass --image-root DIR.")
    assert_fixes_fit("qvl train", "run `qvl data check --image-root D` first; --set x=1")


BROKEN = {"missing": "images/none.png", "outside": "../elsewhere/a.png",
          "url": "https://example.com/a.png"}


@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_every_fix_a_data_command_prints_names_its_own_flags(
        course, tmp_path: Path, broken: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    forbid_model(monkeypatch)
    data = tmp_path / "my_data" / "annotations.jsonl"
    records = [json.loads(line) for line in data.read_text("utf-8").splitlines()]
    records[3] = record(BROKEN[broken], "s3")
    jsonl(data, records)
    png(tmp_path / "chat.png")
    runs = {
        "qvl data check": ["data", "check", data],
        "qvl data convert": ["data", "convert", data, "--out", tmp_path / "c.jsonl"],
        "qvl data split": ["data", "split", data, "--out-dir", tmp_path / "s"],
        "qvl tokens": ["tokens", data, "--model", "tiny"],
        "qvl eval": ["eval", "--model", "tiny", "--data", data, "--out", tmp_path / "ev"],
        "qvl train": ["train", "--dry-run"],
        "qvl export": ["export", "--model", "tiny", "--adapter", tmp_path, "--data", data,
                       "--out", tmp_path / "ex"],
    }
    for command, args in runs.items():
        code, out, err = run_qvl(capsys, *args)
        # converting only changes the layout: images are the doctor's business after it
        assert code in (1, 2) or command == "qvl data convert", (command, out, err)
        assert "unexpected" not in err, (command, err)
        assert_fixes_fit(command, out + err)
    # the notebooks' way in: the fix is the course.yaml key, never a flag
    from qvl_helpers.data import course_records, prepare_data

    for call in (lambda: prepare_data(load_config(), verbose=False),
                 lambda: course_records(load_config())):
        with pytest.raises(QVLError) as caught:
            call()
        assert named_flags(str(caught.value)) == set(), str(caught.value)


def test_qvl_train_names_the_course_yaml_key_for_a_missing_image_root(
        course, capsys: pytest.CaptureFixture[str]) -> None:
    course("image_root: my_data/pictures")
    code, out, err = run_qvl(capsys, "train", "--dry-run")
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "image_root" in lines[0], err
    assert_fixes_fit("qvl train", err)


def test_qvl_chat_names_its_own_flag_for_a_web_address(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    forbid_model(monkeypatch)
    code, out, err = run_qvl(capsys, "chat", "--model", "tiny", "--image",
                             "https://example.com/a.png", "What?")
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1 and "web address" in lines[0], err
    assert_fixes_fit("qvl chat", err)


# ---------------------------------------------------------------------------- 5. video


def read_one(tmp_path: Path, name: str, content: str):
    from qvl_helpers.data import read_records

    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    (raw,) = list(read_records(path))
    return raw


VIDEO_CASES = {
    "sharegpt videos list": ("s.json", json.dumps([{
        "messages": [{"role": "user", "content": "<video>What happens?"},
                     {"role": "assistant", "content": "A cat jumps."}],
        "videos": ["clips/cat.mp4"]}])),
    "sharegpt videos beside images": ("s2.json", json.dumps([{
        "messages": [{"role": "user", "content": "<image>What happens?"},
                     {"role": "assistant", "content": "A cat jumps."}],
        "images": ["a.png"], "videos": ["clips/cat.mp4"]}])),
    "canonical video part": ("c.jsonl", json.dumps({"messages": [
        {"role": "user", "content": [{"type": "video", "video": "clips/cat.mp4"},
                                     {"type": "text", "text": "What happens?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat jumps."}]}]}) + "\n"),
    "canonical video_url part": ("c2.jsonl", json.dumps({"messages": [
        {"role": "user", "content": [{"type": "video_url", "video_url": {"url": "x.mp4"}},
                                     {"type": "text", "text": "What happens?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat jumps."}]}]}) + "\n"),
    "official video key": ("o.json", json.dumps([{
        "video": "clips/cat.mp4",
        "conversations": [{"from": "human", "value": "<video>\nWhat happens?"},
                          {"from": "gpt", "value": "A cat jumps."}]}])),
    "official <video> without a key": ("o2.json", json.dumps([{
        "conversations": [{"from": "human", "value": "<video>\nWhat happens?"},
                          {"from": "gpt", "value": "A cat jumps."}]}])),
    "seed videos key": ("seed.jsonl", json.dumps({
        "videos": ["clips/cat.mp4"],
        "conversations": [{"from": "user", "value": "<img></img>What happens?"},
                          {"from": "assistant", "value": "A cat jumps."}], "image": "a.png"})
        + "\n"),
    "csv video column": ("d.csv", "image,prompt,response,video\na.png,What?,A cat.,cat.mp4\n"),
}


@pytest.mark.parametrize("case", sorted(VIDEO_CASES))
def test_video_in_any_layout_is_one_sentence_saying_so(tmp_path: Path, case: str) -> None:
    from qvl_helpers.data.records import VIDEO_MESSAGE

    raw = read_one(tmp_path, *VIDEO_CASES[case])
    assert raw.record is None, case  # never trained on with the video silently dropped
    messages = [m for _, m in raw.findings]
    assert messages == [VIDEO_MESSAGE] or (len(messages) == 1 and VIDEO_MESSAGE in messages[0])
    assert "video" in VIDEO_MESSAGE and "frames" in VIDEO_MESSAGE


@pytest.mark.parametrize("name", ["clip.mp4", "clip.MOV", "clip.webm"])
def test_a_video_file_listed_as_an_image_says_video(tmp_path: Path, name: str) -> None:
    from qvl_helpers.data import check_file
    from qvl_helpers.data.records import VIDEO_MESSAGE

    (tmp_path / name).write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    data = jsonl(tmp_path / "d.jsonl", [record(name)])
    (problem,) = check_file(data).problems
    assert VIDEO_MESSAGE in problem.message
