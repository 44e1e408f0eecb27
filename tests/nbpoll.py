"""pytest plugin for the notebook stage (``scripts/test.sh`` loads it with ``-p tests.nbpoll``;
``conftest.py`` installs it for the tests that run nbclient themselves): the notebook runner's
waits on the kernel's sockets are cut into short slices, so that a reply whose wake-up was missed
is still read.

**The freeze.** Under CPU load, a notebook run sometimes stopped for good right after a cell had
finished: seen seven times here, always after notebook 01's sample-browser cell, with ipykernel
7.4 and 6.31. A stuck run of 2026-11-29 was probed with gdb:

- the kernel had run the cell and sent its reply (its ``In`` ends with that cell);
- in the runner (nbclient 0.11, jupyter_client 8.10, pyzmq 27.3), the shell socket reported a
  message waiting (``ZMQ_EVENTS`` = ``POLLIN``) while nbclient's poll of that socket still waited,
  and the event loop was never woken for it.

ZeroMQ wakes an event loop through an edge-triggered descriptor: an edge consumed elsewhere is
not repeated while messages wait. jupyter_client's ``Session.send`` sends through a blocking
shadow of the asyncio socket, which pyzmq's asyncio layer does not see, so a missed edge is
plausible; the exact race was not pinned down. Reading the socket's events from outside woke the
stuck run at once. (An earlier version of this plugin sent empty requests to the kernel every
20 s: they were answered, and the run stayed stuck, because the kernel was never the problem.)

**The cure.** Every ``get_msg`` of jupyter_client's asyncio channels waits at most ``SLICE_S``
seconds at a time. When a slice ends, pyzmq asks the socket itself (``zmq_poll``, no descriptor
edge involved), so a waiting message is read within one slice. Deadlines, messages and their
order are unchanged.
"""

from __future__ import annotations

from queue import Empty
from time import monotonic
from typing import Any

from jupyter_client.channels import AsyncZMQSocketChannel

SLICE_S = 5.0

_get_msg = AsyncZMQSocketChannel.get_msg


async def get_msg_in_slices(self: AsyncZMQSocketChannel,
                            timeout: float | None = None) -> dict[str, Any]:
    """``get_msg`` with the same overall ``timeout`` (None: no limit), asked in slices."""
    deadline = None if timeout is None else monotonic() + timeout
    while True:
        left = None if deadline is None else max(0.0, deadline - monotonic())
        try:
            return await _get_msg(self, timeout=SLICE_S if left is None else min(SLICE_S, left))
        except Empty:
            if left is not None and left <= SLICE_S:
                raise


def pytest_configure(config) -> None:
    AsyncZMQSocketChannel.get_msg = get_msg_in_slices
