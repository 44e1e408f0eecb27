"""Writes that are whole: a full disk while exporting is one sentence naming the folder, leaves
no partial folder, and a plain rerun succeeds; exported files get the modes the umask gives."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
from test_export import combo, in_this_process, run_main  # noqa: F401  (combo is a fixture)


def test_full_disk_during_export_is_one_sentence_and_a_rerun_works(
        combo: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers.modeling_utils as mu

    import qvl_helpers.verify as X

    monkeypatch.setattr(X, "observe_in_fresh_process", in_this_process)
    real = mu.safe_save_file

    def full(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("I/O error: No space left on device (os error 28)")  # safetensors'

    monkeypatch.setattr(mu, "safe_save_file", full)
    out = tmp_path / "merged"
    code, _, err = run_main(capsys, "export", "--model", combo["M"], "--adapter", combo["A"],
                            "--out", out)
    assert code == 2 and "unexpected" not in err, err
    assert f"the disk is full in {tmp_path}" in err, err
    assert list(tmp_path.iterdir()) == []  # no partial folder, no staging folder
    monkeypatch.setattr(mu, "safe_save_file", real)
    code, _, err = run_main(capsys, "export", "--model", combo["M"], "--adapter", combo["A"],
                            "--out", out)
    assert code == 0, err
    assert json.loads((out / "export.json").read_text())["base_model"]


def test_full_disk_on_a_plain_write_names_the_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qvl_helpers.cli import describe_os_error
    from qvl_helpers.outputs import write_text

    def full(self: Path, *args: Any, **kwargs: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError) as info:
        write_text(tmp_path / "report.json", "{}")
    assert str(tmp_path) in describe_os_error(info.value, "qvl data check")
    assert list(tmp_path.iterdir()) == []


def test_an_export_has_the_modes_a_plain_write_gives(
        combo: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    import qvl_helpers.verify as X

    monkeypatch.setattr(X, "observe_in_fresh_process", in_this_process)
    old = os.umask(0o022)
    try:
        out = tmp_path / "merged"
        code, _, err = run_main(capsys, "export", "--model", combo["M"], "--adapter",
                                combo["A"], "--out", out)
    finally:
        os.umask(old)
    assert code == 0, err
    for item in [out, *out.rglob("*")]:
        assert item.stat().st_mode & 0o777 == (0o755 if item.is_dir() else 0o644), item


# ----------------------------------------------------------------------------- training

PRESET = str(Path(__file__).resolve().parent.parent / "configs" / "tiny_cpu.yaml")
ONE_STEP_SAVES = ["--set", "batch_size=1", "--set", "save_steps=1", "--set", "logging_steps=1",
                  "--set", "eval_steps=100", "--set", "gradient_checkpointing=false"]


def _train(capsys: pytest.CaptureFixture[str], steps: int, *extra: str) -> tuple[int, str, str]:
    return run_main(capsys, "train", "--config", PRESET, "--set", f"max_steps={steps}",
                    *ONE_STEP_SAVES, *extra)


def test_a_run_folder_has_the_modes_a_plain_write_gives(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QVL_OUTPUT_DIR", str(tmp_path))
    old = os.umask(0o022)
    try:
        code, _, err = _train(capsys, 1)
    finally:
        os.umask(old)
    assert code == 0, err
    run = tmp_path / "runs" / "tiny_cpu"
    assert (run / "checkpoint-1" / "adapter_model.safetensors").is_file()
    for item in [run, *run.rglob("*")]:  # checkpoints and the adapter: safetensors said 0600
        assert item.stat().st_mode & 0o777 == (0o755 if item.is_dir() else 0o644), item


def test_a_stricter_umask_is_honoured_too(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from qvl_helpers.outputs import apply_umask

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.bin").write_bytes(b"x")
    (tmp_path / "sub" / "w.bin").chmod(0o600)
    old = os.umask(0o027)
    try:
        apply_umask(tmp_path / "sub")
    finally:
        os.umask(old)
    assert (tmp_path / "sub").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "sub" / "w.bin").stat().st_mode & 0o777 == 0o640  # group, never others


def _full_on_call(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, n: int) -> None:
    """``module.name`` raises safetensors' full-disk error from its ``n``-th call on."""
    real, calls = getattr(module, name), {"n": 0}

    def save(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] >= n:
            raise RuntimeError("I/O error: No space left on device (os error 28)")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, save)


def test_full_disk_at_a_checkpoint_keeps_the_last_one_and_resume_works(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import peft.peft_model as pm

    monkeypatch.setenv("QVL_OUTPUT_DIR", str(tmp_path))
    run = tmp_path / "runs" / "tiny_cpu"
    with monkeypatch.context() as m:
        _full_on_call(m, pm, "safe_save_file", 2)  # checkpoint-1 fits, checkpoint-2 does not
        code, _, err = _train(capsys, 3)
    assert code == 2 and "unexpected" not in err, err
    assert f"the disk is full in {run}" in err, err
    assert "checkpoint-1, is kept" in err and "--resume" in err, err
    assert not (run / "checkpoint-2").exists()  # the half-written one is gone (its space too)
    assert not (run / "adapter").exists()
    code, _, err = _train(capsys, 3, "--resume")
    assert code == 0, err
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((run / "checkpoint-3" / "trainer_state.json").read_text())[
        "global_step"] == 3


def test_full_disk_at_the_first_checkpoint_says_no_checkpoint_was_complete(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import peft.peft_model as pm

    monkeypatch.setenv("QVL_OUTPUT_DIR", str(tmp_path))
    _full_on_call(monkeypatch, pm, "safe_save_file", 1)
    code, _, err = _train(capsys, 1)
    assert code == 2 and "unexpected" not in err, err
    assert "no checkpoint was complete yet" in err and "run the same training again" in err, err
    assert list((tmp_path / "runs" / "tiny_cpu").glob("checkpoint-*")) == []


# ----------------------------------------------------------------------------- qvl bundle

def _course(root: Path, settings: str) -> Path:
    """A course checkout with ``settings`` as its course.yaml and one bundled data file."""
    (root / "data_samples" / "shapes").mkdir(parents=True)
    (root / "data_samples" / "shapes" / "shapes.jsonl").write_text("{}\n")
    (root / "notebooks").mkdir()
    (root / "course.yaml").write_text(settings)
    return root


@pytest.fixture
def no_wheels(monkeypatch: pytest.MonkeyPatch) -> None:
    """qvl bundle without pip: one fake wheel (the slow path is not what is tested)."""
    from qvl_helpers import bundle

    def fake(root: Path, wheels: Path, *args: Any) -> None:
        wheels.mkdir(parents=True, exist_ok=True)
        (wheels / "qvl_helpers-0-py3-none-any.whl").write_bytes(b"wheel")

    monkeypatch.setattr(bundle, "collect_wheels", fake)


@pytest.mark.parametrize(("settings", "key"), [
    ("data: {mine}/receipts.jsonl\n", "data"),                  # the learner's own file
    ("data: data/receipts.jsonl\n", "data"),                    # inside, in a folder not packed
    ("data: data_samples/shapes/shapes.jsonl\nimage_root: {mine}/pics\n", "image_root"),
])
def test_bundle_says_which_course_yaml_files_it_does_not_carry(
        settings: str, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, no_wheels: None) -> None:
    import zipfile

    from qvl_helpers import bundle

    mine = tmp_path / "mine"
    root = _course(tmp_path / "course", settings.format(mine=mine))
    monkeypatch.setattr(bundle, "course_root", lambda: root)
    out = tmp_path / "qvl-course.zip"
    code, text, err = run_main(capsys, "bundle", "--out", out, "--no-deps")
    assert code == 0, err
    assert zipfile.ZipFile(out).namelist()  # the archive is still made
    warnings = [line for line in text.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1, text
    assert f"course.yaml's {key}:" in warnings[0] and "is not in the archive" in warnings[0]
    assert "copy it into data_samples/" in warnings[0] and "--force" in warnings[0]


def test_bundle_with_the_bundled_data_warns_of_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, no_wheels: None) -> None:
    import zipfile

    from qvl_helpers import bundle, setup_cell

    root = _course(tmp_path / "course", "data: data_samples/shapes/shapes.jsonl\n"
                                        "image_root: data_samples/shapes\n")
    monkeypatch.setattr(bundle, "course_root", lambda: root)
    code, text, err = run_main(capsys, "bundle", "--out", tmp_path / "c.zip", "--no-deps")
    assert code == 0, err
    assert "Warning" not in text + err
    with zipfile.ZipFile(tmp_path / "c.zip") as z:  # where every notebook's first cell reads it
        assert z.read(setup_cell.SETUP) == Path(setup_cell.__file__).read_bytes()


# ----------------------------------------------------------------------------- data split/convert

SHAPES_DATA = Path(__file__).resolve().parent.parent / "data_samples" / "shapes" / "shapes.jsonl"


def _disk_fills_after(monkeypatch: pytest.MonkeyPatch, lines: int) -> None:
    """The data writers' files take ``lines`` lines in all, then the disk is full."""
    import builtins

    from qvl_helpers.data import writers

    real, left = builtins.open, {"n": lines}

    class Full:
        def __init__(self, fh: Any) -> None:
            self.fh = fh

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *exc: Any) -> None:
            self.fh.close()

        def write(self, text: str) -> int:
            left["n"] -= 1
            if left["n"] < 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(text)

    def full_open(*args: Any, **kwargs: Any) -> Any:
        return Full(real(*args, **kwargs))

    monkeypatch.setattr(writers, "open", full_open, raising=False)


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


def _split(capsys: pytest.CaptureFixture[str], out: Path, *extra: str) -> tuple[int, str, str]:
    return run_main(capsys, "data", "split", SHAPES_DATA, "--out-dir", out, *extra)


def test_full_disk_in_a_fresh_split_leaves_nothing_and_a_rerun_works(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "splits"
    with monkeypatch.context() as m:
        _disk_fills_after(m, 30)  # train fits, val does not
        code, _, err = _split(capsys, out)
    assert code == 2 and "unexpected" not in err, err
    assert f"the disk is full in {out}" in err and "free" in err and "--out-dir" in err, err
    assert list(out.iterdir()) == []  # no train.jsonl alone, no temporary files
    code, _, err = _split(capsys, out)  # a plain rerun: not "already exists"
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["test.jsonl", "train.jsonl", "val.jsonl"]


def _split_once(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> tuple[Path, dict]:
    """A first split (seed 1) into ``tmp_path/splits``, and the snapshot of its files."""
    out = tmp_path / "splits"
    assert _split(capsys, out, "--seed", "1")[0] == 0
    return out, _snapshot(out)


def test_full_disk_in_split_force_keeps_the_earlier_set_whole(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    out, before = _split_once(capsys, tmp_path)
    with monkeypatch.context() as m:
        _disk_fills_after(m, 50)
        code, _, err = _split(capsys, out, "--force")
    assert code == 2 and "the disk is full" in err and "untouched" in err, err
    assert _snapshot(out) == before  # the seed-1 set, all three, nothing else
    assert _split(capsys, out, "--force")[0] == 0
    assert _snapshot(out) != before


def test_a_kill_between_the_split_files_is_refused_until_split_again(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "splits"
    assert _split(capsys, out, "--seed", "1")[0] == 0
    real, calls = Path.replace, {"n": 0}

    def killed_after_one(self: Path, target: Any) -> Path:
        if self.name.endswith(".splitting"):
            calls["n"] += 1
            if calls["n"] == 2:  # train.jsonl is new, val and test still the old ones
                raise KeyboardInterrupt
        return real(self, target)

    with monkeypatch.context() as m:
        m.setattr(Path, "replace", killed_after_one)
        with pytest.raises(KeyboardInterrupt):
            from qvl_helpers.data.split import split_file

            split_file(SHAPES_DATA, out, overwrite=True)
    code, _, err = _split(capsys, out)
    assert code == 2 and "was interrupted" in err and "--force" in err, err
    code, _, err = _split(capsys, out, "--force")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["test.jsonl", "train.jsonl", "val.jsonl"]


def test_a_kill_while_a_split_file_is_written_keeps_the_earlier_set(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from qvl_helpers.data import split

    out, before = _split_once(capsys, tmp_path)
    real, calls = split.write_jsonl, {"n": 0}

    def killed_in_val(records: Any, path: Path) -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(records, path)

    monkeypatch.setattr(split, "write_jsonl", killed_in_val)
    with pytest.raises(KeyboardInterrupt):
        split.split_file(SHAPES_DATA, out, overwrite=True)
    assert _snapshot(out) == before


@pytest.mark.parametrize(("to", "name"), [("canonical", "all.jsonl"), ("official", "all.json")])
def test_full_disk_in_convert_keeps_the_earlier_file_and_names_the_folder(
        to: str, name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "converted" / name
    out.parent.mkdir()
    out.write_text("the learner's earlier file\n")

    def full(self: Path, *args: Any, **kwargs: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        _disk_fills_after(m, 5)
        m.setattr(Path, "write_text", full)  # the official layout's writer
        code, _, err = run_main(capsys, "data", "convert", SHAPES_DATA, "--out", out,
                                "--to", to, "--force")
    assert code == 2 and "unexpected" not in err, err
    assert f"the disk is full in {out.parent}" in err and name in err, err
    assert _snapshot(out.parent) == {name: "the learner's earlier file\n"}
    code, _, err = run_main(capsys, "data", "convert", SHAPES_DATA, "--out", out, "--to", to,
                            "--force")
    assert code == 0, err


def test_data_files_and_the_archive_have_the_modes_a_plain_write_gives(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, no_wheels: None) -> None:
    from qvl_helpers import bundle

    root = _course(tmp_path / "course", "data: data_samples/shapes/shapes.jsonl\n")
    monkeypatch.setattr(bundle, "course_root", lambda: root)
    made = tmp_path / "made"
    old = os.umask(0o022)
    try:
        assert _split(capsys, made / "splits")[0] == 0
        assert run_main(capsys, "data", "convert", SHAPES_DATA, "--out", made / "c.jsonl")[0] == 0
        assert run_main(capsys, "data", "convert", SHAPES_DATA, "--out", made / "o.json",
                        "--to", "official")[0] == 0
        assert run_main(capsys, "bundle", "--out", made / "course.zip", "--no-deps")[0] == 0
    finally:
        os.umask(old)
    for item in [made, *made.rglob("*")]:
        assert item.stat().st_mode & 0o777 == (0o755 if item.is_dir() else 0o644), item
