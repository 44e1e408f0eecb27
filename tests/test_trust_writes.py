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

    import qvl_helpers.export as X

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
    import qvl_helpers.export as X

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
