"""The command line's contract: exit codes and one-line errors (no tracebacks)."""

from __future__ import annotations

from pathlib import Path

import pytest
from limits import HANG_GUARD_S

from qvl_helpers.cli import main


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: qvl" in capsys.readouterr().err


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "tiny" in capsys.readouterr().out


def test_tiny_into_foreign_folder_is_one_line(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keep.txt").write_text("x")
    assert main(["tiny", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qvl tiny: error: ") and "Traceback" not in err
    assert str(tmp_path) in err and "Fix:" in err


def test_bad_course_yaml_is_reported(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (clean_env / "course.yaml").write_text("max_pixels: many\n")
    assert main(["env"]) == 2
    err = capsys.readouterr().err
    assert "course.yaml" in err and "max_pixels" in err


def test_stable_api_imports_without_torch() -> None:
    """The design's entry points import as documented, and importing the package is light."""
    import subprocess
    import sys

    code = ("import sys, qvl_helpers; heavy = {'torch', 'transformers'} & set(sys.modules); "
            "print(sorted(heavy)); "
            "from qvl_helpers import load_config, load_records, make_collator; "
            "print(load_records.__module__, make_collator.__module__, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert first == "[]"
    assert second == "qvl_helpers.data.load qvl_helpers.collate True"


@pytest.mark.slow
def test_the_command_line_trains_without_the_course_extra(tmp_path: Path) -> None:
    """`pip install qvl-helpers` without [course]: no JupyterLab, ipywidgets or matplotlib. A
    short `qvl train` still works; only loss.png is skipped, with a message."""
    import os
    import subprocess
    import sys

    blocker = tmp_path / "sitecustomize.py"  # makes the course extra's packages unimportable
    blocker.write_text("import sys\nfor name in ('matplotlib', 'ipywidgets', 'jupyterlab'):\n"
                       "    sys.modules[name] = None\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "QVL_OUTPUT_DIR": str(tmp_path / "out")}
    done = subprocess.run([sys.executable, "-m", "qvl_helpers.cli", "train", "--config",
                           str(Path(__file__).resolve().parent.parent / "configs" / "tiny_cpu.yaml"),
                           "--set", "max_steps=2"], capture_output=True, text=True, env=env,
                          timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loss.png was not drawn: matplotlib is not installed" in done.stdout
    run = tmp_path / "out" / "runs" / "tiny_cpu"
    assert (run / "adapter").is_dir() and not (run / "loss.png").exists()
