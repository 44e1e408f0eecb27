"""`qvl` commands run in the test's own process (the command, not a process boundary, is what
those tests check): exit code, stdout and stderr through pytest's capsys."""

from __future__ import annotations

import pytest

from qvl_helpers.cli import main


def run_main(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """``qvl ARGS`` in this process: exit code, stdout, stderr (of this command only)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err
