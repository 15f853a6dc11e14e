"""The websockets internals ``server/_websockets_private.py`` relies on still exist with the
signatures it calls them with: a websockets release that changes them fails here, by name."""

from __future__ import annotations

import inspect
import tomllib
from pathlib import Path

import websockets
from packaging.specifiers import SpecifierSet
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Opcode
from websockets.protocol import Protocol

import mediastream.server._websockets_private as private

REPO = Path(__file__).resolve().parents[2]


def parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_the_installed_websockets_is_in_the_pinned_range() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (pin,) = [d for d in project["dependencies"] if d.startswith("websockets")]
    specifier = SpecifierSet(pin.removeprefix("websockets").split(";")[0].strip())
    assert specifier.contains(websockets.__version__), (pin, websockets.__version__)
    assert specifier.contains("17.0") and not specifier.contains("18.0")  # an upper bound


def test_the_hooked_connection_methods_keep_their_signatures() -> None:
    assert parameters(ServerConnection.process_event) == ["self", "event"]
    assert parameters(ServerConnection.send_data) == ["self"]
    assert parameters(ServerConnection.data_received) == ["self", "data"]
    assert parameters(ServerConnection.eof_received) == ["self"]
    assert parameters(ServerConnection.connection_lost) == ["self", "exc"]
    assert "create_connection" in inspect.signature(serve).parameters


def test_the_protocol_attributes_read_are_there() -> None:
    assert parameters(Protocol.fail)[:3] == ["self", "code", "reason"]
    assert "self.close_rcvd" in inspect.getsource(Protocol.__init__)  # a plain attribute
    assert isinstance(inspect.getattr_static(Protocol, "close_exc"), property)


def test_data_opcodes_are_the_three_data_frames() -> None:
    assert set(private.DATA_OPCODES) == {Opcode.CONT, Opcode.TEXT, Opcode.BINARY}


def test_the_connection_class_overrides_only_what_the_module_docstring_names() -> None:
    own = {
        name
        for klass in (private.HttpBodyConnection, private.MediaConnection)
        for name, value in vars(klass).items()
        if callable(value) and name != "__init__" and hasattr(ServerConnection, name)
    }
    assert own == {"data_received", "eof_received", "connection_lost", "process_event", "recv"}


async def test_recv_on_the_media_connection_reads_the_inbox_instead_of_hanging() -> None:
    import asyncio

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    received: list[str | bytes] = []
    closed = asyncio.Event()

    async def handler(ws: private.MediaConnection) -> None:
        try:
            while True:
                received.append(await asyncio.wait_for(ws.recv(), 5))
        except ConnectionClosed:
            closed.set()

    async with serve(handler, "127.0.0.1", 0, create_connection=private.MediaConnection) as srv:
        port = srv.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/") as client:
            await client.send("one")
            await client.send(b"two")
        await asyncio.wait_for(closed.wait(), 5)
    assert received == ["one", b"two"]
