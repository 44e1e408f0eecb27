"""Writing results safely: never over an input, never over an earlier output unasked, never half.

Every command that writes goes through :func:`claim_output` before it does any work (so a refusal
costs nothing) and writes through :func:`write_text` / :func:`write_json` (a temporary file in
the same folder, then an atomic rename: a full disk or a kill never leaves half a report, and never
destroys the previous file).

A result made of several files (an export, a split, the sample sets) is written into a temporary
sibling folder and moved into place by :func:`install_folder` at the end; :func:`staged_folder`
does both and removes the partial folder on any failure. Files and folders get the permissions a
plain write would give them (the umask), whatever the writer used (:func:`apply_umask`:
safetensors and ``tempfile`` create owner-only files). A full disk, however a library reports it
(:func:`is_disk_full`), becomes one sentence naming the folder and the free space
(:func:`disk_full_message`).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import ConfigError, OutputExistsError, QVLError


class OutputFolderError(QVLError):
    """A folder the command must write to cannot be created or written (exit status 2)."""


class DiskFullError(QVLError):
    """The disk (or the quota) filled up while a result was written (exit status 2)."""


#: How a full disk or quota reads in the messages of libraries that do not keep the OSError
#: (safetensors: "I/O error: No space left on device (os error 28)").
_DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "os error 28",
                    "os error 122")


def is_disk_full(exc: BaseException | None) -> bool:
    """True when ``exc`` (or an exception it was raised from) is a full disk or quota."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(exc) for text in _DISK_FULL_TEXTS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def free_space(path: str | Path) -> int | None:
    """Bytes free on the disk that holds ``path`` (its nearest existing folder), None if unknown."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def human_size(n: int) -> str:
    """``7.5 GB``, ``312 MB``, ``12 KB``: sizes as a person reads them."""
    if n >= 2**30:
        return f"{n / 2**30:.1f} GB"
    if n >= 2**20:
        return f"{round(n / 2**20)} MB"
    return f"{max(0, round(n / 2**10))} KB"


def disk_full_message(folder: str | Path, needed: int | None = None) -> str:
    """``the disk is full in FOLDER (12 MB free, about 7.5 GB needed)``: what a full disk is
    called everywhere, with the free space (and what the result needs, when known)."""
    free = free_space(folder)
    facts = [] if free is None else [f"{human_size(free)} free"]
    if needed:
        facts.append(f"about {human_size(needed)} needed")
    return f"the disk is full in {folder}" + (f" ({', '.join(facts)})" if facts else "")


def disk_full(folder: str | Path, *, needed: int | None = None,
              fix: str = "free space there (or choose another folder), then run the same "
                         "command again.") -> DiskFullError:
    """The :class:`DiskFullError` of a result that did not fit in ``folder``; nothing
    half-written is kept (the caller removed its temporary files)."""
    return DiskFullError(disk_full_message(folder, needed) + ": nothing half-written was kept.",
                         fix=fix)


def current_umask() -> int:
    """This process's umask (read without changing it where Linux allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | Path) -> None:
    """Give ``path`` and everything below it the modes a plain write would: files
    ``0o666 & ~umask``, folders ``0o777 & ~umask`` (so another user, a server or a container
    can read the result, as the learner's umask intends)."""
    mask = current_umask()
    root = Path(path)
    for item in [root, *(root.rglob("*") if root.is_dir() else [])]:
        if item.is_symlink():
            continue
        item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)


def staging_folder(out: Path, purpose: str = "writing") -> Path:
    """A fresh temporary sibling of ``out`` (same disk, so the final rename is atomic)."""
    work = out.parent / f".{out.name}.{purpose}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


def install_folder(work: Path, out: Path) -> Path:
    """Move the finished folder ``work`` to ``out`` (modes as the umask says); an earlier
    ``out`` is moved aside first and removed only once the new one is in place."""
    apply_umask(work)
    if out.exists():
        old = out.parent / f".{out.name}.replaced-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        try:
            work.rename(out)
        except BaseException:
            old.rename(out)  # the earlier result comes back whole
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        work.rename(out)
    return out


def build_in_place(out: Path, build: Callable[[Path], None], is_complete: Callable[[Path], bool],
                   *, replace: bool = False) -> Path:
    """A cache folder built safely: ``build(tmp)`` writes into a private sibling, which then
    moves to ``out`` in one rename, so a killed build never leaves half a folder at ``out``. With
    ``replace`` an existing ``out`` (the caller checked it is an earlier build) is removed first;
    without it a concurrent process that finished first wins (``is_complete(out)``) and its build
    is kept. Several processes may call it at once."""
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        build(tmp)
        apply_umask(tmp)  # mkdtemp and safetensors create owner-only modes
        try:
            if out.exists():
                shutil.rmtree(out) if replace else out.rmdir()
            tmp.rename(out)
        except OSError:
            if not is_complete(out):  # not another process's finished build: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@contextmanager
def staged_folder(out: str | Path, *, needed: int | None = None,
                  purpose: str = "writing") -> Iterator[Path]:
    """Yield a temporary sibling folder to write the whole result into; on success it replaces
    ``out`` (:func:`install_folder`), on any failure it is removed and ``out`` stays as it was.

    Raises:
        DiskFullError: the disk filled up (names ``out``'s folder and the free space).
    """
    out = Path(out)
    ensure_folder(out.parent)
    work = staging_folder(out, purpose)
    try:
        yield work
        install_folder(work, out)
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise disk_full(out.parent, needed=needed) from exc
        raise


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
    except OSError as exc:
        raise named(exc, path) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def named(exc: OSError, path: str | Path) -> OSError:
    """``exc`` with ``path`` as its file name when it had none (a failed ``write`` names no
    file), so the message says which result did not fit."""
    if exc.filename is None:
        exc = type(exc)(exc.errno, exc.strerror or str(exc), str(path))
    return exc


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
