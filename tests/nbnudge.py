"""pytest plugin for the notebook stage (``scripts/test.sh`` loads it with ``-p tests.nbnudge``):
nudge the kernel while nbclient waits for a cell's reply.

Under CPU load a kernel sometimes leaves a request unread: the kernel sits idle, nbmake waits for
the reply until its timeout (40 minutes), and a loaded CI run fails. Seen six times here, with
ipykernel 7.4 and 6.31, always right after a cell finished (ipython/ipykernel#1554 describes such
a missed wake-up). What wakes it was found on 2026-11-29 by probing a stuck kernel from a second
client: a ``kernel_info_request`` was answered at once but left the request stranded; an
``execute_request`` woke it, and the notebook went on. (ipykernel 7 answers some requests in its
shell-channel thread and forwards execute requests to the main thread: the forwarding is what
wakes the main thread's reading.) So while a cell runs, this sends an empty, silent
``execute_request`` every ``NUDGE_EVERY_S`` seconds: no output, no history, no execution count;
nbclient ignores its reply and its status messages (another parent message id), and a busy
kernel simply runs it after the cell.
"""

from __future__ import annotations

import asyncio
import contextlib

from nbclient import NotebookClient

NUDGE_EVERY_S = 20

_poll_kernel_alive = NotebookClient._async_poll_kernel_alive


async def _nudge(client: NotebookClient) -> None:
    while True:
        await asyncio.sleep(NUDGE_EVERY_S)
        client.kc.execute("", silent=True, store_history=False)


async def _poll_kernel_alive_and_nudge(self: NotebookClient) -> None:
    """nbclient's own liveness poll (cancelled when the reply arrives), with a nudge beside it."""
    nudge = asyncio.ensure_future(_nudge(self))
    try:
        await _poll_kernel_alive(self)
    finally:
        nudge.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await nudge


def pytest_configure(config) -> None:
    NotebookClient._async_poll_kernel_alive = _poll_kernel_alive_and_nudge
