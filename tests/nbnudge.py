"""pytest plugin for the notebook stage (``scripts/test.sh`` loads it with ``-p tests.nbnudge``):
nudge the kernel while nbclient waits for a cell's reply.

Under CPU load a kernel sometimes leaves a request unread on its shell socket: the kernel sits
idle, nbmake waits for the reply until its timeout (40 minutes), and a loaded CI run fails. Seen
five times here, with ipykernel 7.4 and 6.31. The kernel is alive and answers a new connection,
and that new message also wakes the stranded request (ipython/ipykernel#1554 describes the same
missed wake-up of the shell socket). So while a cell runs, this sends a harmless
``kernel_info_request`` every ``NUDGE_EVERY_S`` seconds; nbclient ignores its reply (another
parent message id), and a busy kernel simply answers it after the cell.
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
        client.kc.kernel_info()


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
