"""Child processes that end with their parent.

Every process the package starts (export's fresh-process verification, ``qvl bundle``'s pip,
the disconnect simulation of the resume lesson) goes through :func:`child_process` or
:func:`run`, so that a command that is stopped does not leave a child behind, for the 3B model
one that holds gigabytes of memory:

- the child runs in its own process group (``start_new_session``), and leaving the ``with``
  block for any reason (done, an exception, Ctrl-C or a notebook kernel's interrupt, which
  arrive as ``KeyboardInterrupt``) ends the whole group: SIGTERM, then SIGKILL after a grace;
- SIGTERM to the parent (``kill``, a job scheduler, a closing terminal) would end Python
  without running ``finally`` blocks: while a child runs in the main thread, a SIGTERM handler
  ends the group first, then lets the signal do what it did before (by default, end the parent);
- SIGKILL cannot be caught: on Linux the child asks the kernel (``prctl(PR_SET_PDEATHSIG)``) to
  be killed when the thread that started it ends.

The standard library's ``subprocess`` does the work; this module only adds the endings.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

_PR_SET_PDEATHSIG = 1
#: Seconds a child gets to end after SIGTERM before SIGKILL.
GRACE = 3.0


def _load_libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _load_libc()  # loaded here: the child between fork and exec only calls it


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when its parent dies (Linux only)."""
    if _LIBC is None:
        return None

    def preexec() -> None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def end_process_group(process: subprocess.Popen, grace: float = GRACE) -> None:
    """End a child started by :func:`child_process` and everything it started: SIGTERM to its
    group, SIGKILL after ``grace`` seconds. Nothing happens if it has already ended."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _end_on_sigterm(process: subprocess.Popen) -> Callable[[], None]:
    """Install a SIGTERM handler that ends the child's group first; returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signal handlers belong to the main thread (PDEATHSIG still holds)
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        end_process_group(process)
        signal.signal(signal.SIGTERM, previous)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:  # the default: the parent ends, as it would have
            os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def child_process(args: Sequence[str], **popen_kwargs: Any) -> Iterator[subprocess.Popen]:
    """``subprocess.Popen(args, **popen_kwargs)`` that ends, with its own children, when the
    block is left or the parent is terminated (see the module docstring)."""
    process = subprocess.Popen(list(args), start_new_session=True,
                               preexec_fn=_die_with_parent(os.getpid()), **popen_kwargs)
    undo = _end_on_sigterm(process)
    try:
        yield process
    finally:
        undo()
        end_process_group(process)


def run(args: Sequence[str], *, capture_output: bool = False, text: bool = False,
        timeout: float | None = None, **popen_kwargs: Any) -> subprocess.CompletedProcess:
    """Like ``subprocess.run`` (without ``check``), with the child ended if the parent stops
    while it runs."""
    if capture_output:
        popen_kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with child_process(args, text=text, **popen_kwargs) as process:
        out, err = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(list(args), process.returncode, out, err)


def stderr_tail(done: subprocess.CompletedProcess, lines: int = 3, limit: int = 600) -> str:
    """The last ``lines`` lines of a finished child's error output, joined on one line and cut
    to ``limit`` characters: what an error sentence quotes of it ("(no message)" if none)."""
    tail = " / ".join(str(done.stderr or "").strip().splitlines()[-lines:])
    return tail[:limit] or "(no message)"
