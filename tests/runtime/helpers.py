"""Driving ``MediaCore`` with no socket: a fake transport, and the adapter's two calls."""

from __future__ import annotations

from mediastream.runtime.connection import StreamConnection
from mediastream.runtime.core import MediaCore


class FakeTransport:
    """What a socket adapter gives the core: sent frames and the close, kept for the test."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed: tuple[int, str] | None = None

    async def send(self, text: str) -> None:
        self.sent.append(text)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed is None:
            self.closed = (code, reason)


async def open_socket(core: MediaCore) -> tuple[StreamConnection, FakeTransport]:
    """``accept`` as an adapter calls it (from the task that then reads the socket)."""
    transport = FakeTransport()
    connection = core.accept("test:1", {}, transport)
    assert isinstance(connection, StreamConnection)
    return connection, transport


async def feed(core: MediaCore, connection: StreamConnection, *messages: str) -> bool:
    """Hand messages to the core in order; False as soon as one ends the stream."""
    for message in messages:
        if not await core.receive(connection, message):
            return False
    return True
