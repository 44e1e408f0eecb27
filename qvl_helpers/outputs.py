"""Writing results safely: never over an input, never over an earlier output unasked, never half.

Every command that writes goes through :func:`claim_output` before it does any work (so a refusal
costs nothing) and writes through :func:`write_text` / :func:`write_json` (a temporary file in
the same folder, then an atomic rename: a full disk or a kill never leaves half a report, and never
destroys the previous file).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import ConfigError, OutputExistsError, QVLError


class OutputFolderError(QVLError):
    """A folder the command must write to cannot be created or written (exit status 2)."""


def ensure_folder(folder: str | Path, *, what: str = "output folder") -> Path:
    """Create ``folder`` (and its parents) and check that files can be written in it.

    Raises:
        OutputFolderError: it cannot be created (a file is in the way, no permission, read-only
            or full disk) or is not writable.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputFolderError(f"cannot create the {what} ({exc.strerror or exc}).", file=folder,
                                fix="choose another folder, or fix its permissions.") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputFolderError(f"the {what} is not writable.", file=folder,
                                fix="choose another folder, or fix its permissions.")
    return folder


def claim_output(path: str | Path, *, inputs: Iterable[str | Path | None] = (),
                 force: bool = False, flag: str = "--force") -> Path:
    """Check that ``path`` may be written: it is none of ``inputs``, it does not exist (unless
    ``force``), and its folder is writable. Writes nothing but the folder.

    Raises:
        ConfigError: ``path`` is one of the command's inputs (even with ``force``).
        OutputExistsError: ``path`` exists and ``force`` is False.
        OutputFolderError: its folder cannot be created or written.
    """
    path = Path(path)
    refuse_inputs(path, inputs)
    if path.exists() and not force:
        raise OutputExistsError("already exists; nothing was overwritten.", file=path,
                                fix=f"choose another output path, or pass {flag} to replace it.")
    ensure_folder(path.parent)
    return path


def refuse_inputs(path: str | Path, inputs: Iterable[str | Path | None]) -> None:
    """Raise :class:`ConfigError` if ``path`` is one of ``inputs`` (links resolved)."""
    resolved = Path(path).resolve()
    for item in inputs:
        if item is not None and Path(item).resolve() == resolved:
            raise ConfigError(f"the output {path} is also an input of this command: writing it "
                              "would destroy the input.", file=path,
                              fix="choose another output path (nothing was written).")


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) through a temporary file and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8", newline="\n")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | Path, data: Any) -> Path:
    """``data`` as indented UTF-8 JSON (non-ASCII kept readable), written atomically."""
    return write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | Path) -> Any | None:
    """A JSON file the course wrote, or None when it is missing or unreadable (the callers
    then treat the thing it describes as absent)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
