"""The notebook stage's kernel nudge (tests/nbnudge.py): requests go out while a cell runs, and
stop when nbclient's liveness poll ends."""

from __future__ import annotations

import asyncio

import nbnudge
from nbclient import NotebookClient


class FakeKernelClient:
    def __init__(self) -> None:
        self.requests = 0

    def execute(self, code: str, silent: bool = False, store_history: bool = True) -> str:
        assert code == "" and silent and not store_history  # invisible in the notebook
        self.requests += 1
        return f"msg-{self.requests}"


class FakeNotebookClient:
    def __init__(self) -> None:
        self.kc = FakeKernelClient()


def test_nudges_while_the_cell_runs_and_stops_after(monkeypatch):
    async def cell_runs_a_while(client) -> None:  # stands in for nbclient's liveness poll
        await asyncio.sleep(0.35)

    monkeypatch.setattr(nbnudge, "NUDGE_EVERY_S", 0.05)
    monkeypatch.setattr(nbnudge, "_poll_kernel_alive", cell_runs_a_while)
    client = FakeNotebookClient()

    async def scenario() -> int:
        await nbnudge._poll_kernel_alive_and_nudge(client)
        sent = client.kc.requests
        await asyncio.sleep(0.2)  # nothing more once the cell has its reply
        return sent

    sent = asyncio.run(scenario())
    assert sent >= 3 and client.kc.requests == sent


def test_the_plugin_replaces_nbclients_liveness_poll(monkeypatch):
    monkeypatch.setattr(NotebookClient, "_async_poll_kernel_alive",
                        NotebookClient._async_poll_kernel_alive)
    nbnudge.pytest_configure(None)
    assert NotebookClient._async_poll_kernel_alive is nbnudge._poll_kernel_alive_and_nudge
