"""The notebook runner's sliced waits (tests/nbpoll.py): a reply whose wake-up was lost is still
read, and the caller's timeout means what it meant."""

from __future__ import annotations

import asyncio
from queue import Empty

import nbpoll
import pytest
import zmq
import zmq.asyncio
from jupyter_client.channels import AsyncZMQSocketChannel
from jupyter_client.session import Session


async def _reply_after_a_lost_wake_up(get_msg, patience_s: float) -> str:
    """A channel waits for a reply; the reply arrives, but a blocking poll of the same socket
    (jupyter_client's sends use such a shadow socket) consumes ZeroMQ's wake-up edge first."""
    ctx = zmq.asyncio.Context()
    kernel, client = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        client.connect(f"tcp://127.0.0.1:{kernel.bind_to_random_port('tcp://127.0.0.1')}")
        session = Session(key=b"")
        channel = AsyncZMQSocketChannel(client, session)
        session.send(client, "kernel_info_request")
        identity = (await kernel.recv_multipart())[0]
        waiting = asyncio.ensure_future(get_msg(channel, timeout=None))
        await asyncio.sleep(0.2)  # the channel's poll is registered with the event loop
        session.send(kernel, "kernel_info_reply", {"status": "ok"}, ident=identity)
        assert zmq.Socket.shadow(client.underlying).poll(10_000) == zmq.POLLIN  # edge consumed
        try:
            return (await asyncio.wait_for(waiting, patience_s))["msg_type"]
        except asyncio.TimeoutError:
            return "never read"
    finally:
        kernel.close(0)
        client.close(0)
        ctx.term()


def test_a_reply_whose_wake_up_was_lost_is_read(monkeypatch):
    monkeypatch.setattr(nbpoll, "SLICE_S", 0.05)
    read = asyncio.run(_reply_after_a_lost_wake_up(nbpoll.get_msg_in_slices, patience_s=30))
    assert read == "kernel_info_reply"


def test_without_slices_the_same_reply_is_never_read():
    """The upstream behaviour the plugin exists for (pyzmq 27.3, jupyter_client 8.10): the
    message waits in the socket and nothing wakes the reader. If this fails after an upgrade,
    the lost wake-up is fixed upstream and the plugin can go."""
    read = asyncio.run(_reply_after_a_lost_wake_up(nbpoll._get_msg, patience_s=1))
    assert read == "never read"


class FakeWaits:
    """Stands in for jupyter_client's ``get_msg`` and the clock: each call waits exactly the
    timeout it asks for, and a message comes on call ``message_on`` (never if None)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, message_on: int | None) -> None:
        self.now, self.asked, self.message_on = 0.0, [], message_on
        monkeypatch.setattr(nbpoll, "monotonic", lambda: self.now)
        monkeypatch.setattr(nbpoll, "_get_msg", self.get_msg)

    async def get_msg(self, channel, timeout):
        self.asked.append(timeout)
        if len(self.asked) == self.message_on:
            return {"msg_type": "execute_reply"}
        self.now += timeout
        raise Empty


def test_the_overall_timeout_is_kept(monkeypatch):
    waits = FakeWaits(monkeypatch, message_on=None)
    with pytest.raises(Empty):
        asyncio.run(nbpoll.get_msg_in_slices(None, timeout=12.0))
    assert waits.asked == [5.0, 5.0, 2.0] and waits.now == 12.0


def test_no_timeout_waits_in_slices_until_a_message_comes(monkeypatch):
    waits = FakeWaits(monkeypatch, message_on=4)
    assert asyncio.run(nbpoll.get_msg_in_slices(None, timeout=None)) == \
        {"msg_type": "execute_reply"}
    assert waits.asked == [5.0] * 4


def test_a_zero_timeout_still_asks_once(monkeypatch):
    waits = FakeWaits(monkeypatch, message_on=None)
    with pytest.raises(Empty):
        asyncio.run(nbpoll.get_msg_in_slices(None, timeout=0))
    assert waits.asked == [0.0]


def test_the_plugin_replaces_the_channels_get_msg(monkeypatch):
    monkeypatch.setattr(AsyncZMQSocketChannel, "get_msg", nbpoll._get_msg)
    nbpoll.pytest_configure(None)
    assert AsyncZMQSocketChannel.get_msg is nbpoll.get_msg_in_slices
