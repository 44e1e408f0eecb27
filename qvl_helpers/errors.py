"""Error types of the course: one per domain, each naming where the problem is and how to fix it.

The command line turns a :class:`QVLError` into one readable line and exit status 1 (the input has
problems) instead of a traceback; in a notebook (any IPython shell) importing the package makes
the kernel show the same line instead of the stack (:func:`show_in_notebooks`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

#: Under a course error in a notebook: where the stack went, for whoever wants it.
TRACEBACK_HINT = "(the course's message; run %tb in a new cell to see where it was raised)"


class QVLError(Exception):
    """Base class: a problem the learner can fix, with its location and the fix.

    Args:
        message: what is wrong, in one sentence.
        file: the file the problem is in, if any.
        line: 1-based line number inside ``file``, if known.
        sample_id: the id of the sample concerned, if any.
        fix: what to do about it.

    ``exit_code`` is what the command line exits with: 2 (the command could not run) unless a
    subclass says the input itself has problems (1).
    """

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        sample_id: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.sample_id = sample_id
        self.fix = fix
        super().__init__(str(self))

    def at(self, file: str | Path) -> QVLError:
        """This error, located in ``file`` when it did not know its file yet."""
        if self.file is None:
            self.file = str(file)
            self.args = (str(self),)
        return self

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line is not None else "")
        if self.sample_id is not None:
            where += f" (sample {self.sample_id})" if where else f"sample {self.sample_id}"
        text = f"{where}: {self.message}" if where else self.message
        if self.fix:
            text += f" Fix: {self.fix}"
        return text


class ConfigError(QVLError):
    """course.yaml, a preset or a ``QVL_*`` variable is missing, malformed or inconsistent."""


class OutputExistsError(QVLError):
    """A step would replace something the learner made; it never does so without being asked."""


class ModelError(QVLError):
    """The chosen model cannot be found, built or loaded."""


class TrainingError(QVLError):
    """Training stopped for a reason the learner can act on."""


class DatasetError(QVLError):
    """A record or data file is malformed (the input has problems: exit 1)."""

    exit_code = 1


class DataFileError(DatasetError):
    """The file itself cannot be read (missing, a folder, unknown layout), or its image root
    folder does not exist: exit status 2. (Here, not in ``data/readers.py``, which re-exports
    it, so that ``images.py`` can raise it without importing the data package above it.)"""

    exit_code = 2


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 record``, ``2 records``: numbers in messages read as English."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def notebook_message(exc: QVLError) -> str:
    """What a notebook shows for a course error: its one line, then :data:`TRACEBACK_HINT`."""
    return f"error: {exc}\n{TRACEBACK_HINT}"


def _show_one_line(shell: Any, etype: type, value: BaseException, tb: Any,
                   tb_offset: int | None = None) -> list[str]:
    """IPython's custom exception handler for :class:`QVLError`: the message, not the stack
    (kept for ``%tb``, which reads ``sys.last_traceback``)."""
    sys.last_type, sys.last_value, sys.last_traceback = etype, value, tb
    if sys.version_info >= (3, 12):
        sys.last_exc = value
    print(notebook_message(value), file=sys.stderr)
    return []


def show_in_notebooks(shell: Any = None) -> bool:
    """In an IPython shell (a notebook's kernel), show a :class:`QVLError` as its one line.

    Called when the package is imported; does nothing outside IPython (and never imports it), or
    where something else already handles exceptions in the shell. Returns whether it is on."""
    if shell is None:
        if "IPython" not in sys.modules:  # not running under IPython
            return False
        shell = sys.modules["IPython"].get_ipython()
        if shell is None:
            return False
    if shell.custom_exceptions not in ((), (QVLError,)):
        return False  # someone else's handler: theirs wins
    shell.set_custom_exc((QVLError,), _show_one_line)
    return True
