"""The media server on the ``websockets`` library: WebSocket on any path, ``GET /healthz``.

Each socket gets a ``StreamConnection``; this module only moves text between the socket and
it, answers health checks, and shuts down cleanly: on SIGINT/SIGTERM every socket is closed
and every recording finalized before the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from mediastream.handler import HandlerFactory, StreamConnection, StreamHandler, StreamOptions
from mediastream.recording import recover_recordings

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
MAX_FRAME_BYTES = 1 << 20


class _SocketTransport:
    """Adapts a websockets connection to the ``Transport`` the stream code needs."""

    __slots__ = ("_ws",)

    def __init__(self, ws: ServerConnection) -> None:
        self._ws = ws

    async def send(self, text: str) -> None:
        await self._ws.send(text)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._ws.close(code, reason)


class MediaServer:
    """Accepts carrier sockets and runs one ``StreamConnection`` per socket."""

    def __init__(
        self,
        handler: HandlerFactory | type[StreamHandler] = StreamHandler,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        record_dir: str | Path | None = None,
        options: StreamOptions | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        self.handler_factory: HandlerFactory = handler
        self.host = host
        self.port = port
        self.options = options or StreamOptions()
        if record_dir is not None:
            self.options.record_dir = Path(record_dir)
        self.max_frame_bytes = max_frame_bytes
        self.connections: set[StreamConnection] = set()
        self.streams_total = 0
        self._server: Server | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        record_dir = self.options.record_dir
        if record_dir is not None:
            record_dir.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(recover_recordings, record_dir)
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            compression=None,
            max_size=self.max_frame_bytes,
        )
        sockets = self._server.sockets
        if sockets:
            self.port = sockets[0].getsockname()[1]
        logger.info("listening on ws://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Close every socket, finalize every recording, stop listening."""
        if self._server is None:
            return
        self._server.close(close_connections=True)
        await self._server.wait_closed()
        logger.info("server stopped; %d stream(s) served", self.streams_total)

    async def __aenter__(self) -> MediaServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def serve_forever(self, *, on_ready: Callable[[MediaServer], None] | None = None) -> None:
        """Run until SIGINT or SIGTERM, then shut down cleanly."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await self.start()
        if on_ready is not None:
            on_ready(self)
        try:
            await stop.wait()
            logger.info("signal received: closing %d stream(s)", len(self.connections))
        finally:
            await self.stop()

    # ------------------------------------------------------------ per request / socket

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        if request.path.split("?", 1)[0] == "/healthz" and "upgrade" not in {
            v.lower() for v in request.headers.get_all("Connection")
        }:
            body = json.dumps({"status": "ok", "streams": len(self.connections)})
            response = ws.respond(HTTPStatus.OK, body + "\n")
            response.headers["Content-Type"] = "application/json"
            return response
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        peer = _peer(ws)
        connection = StreamConnection(
            self.handler_factory, _SocketTransport(ws), self.options, peer=peer
        )
        self.connections.add(connection)
        self.streams_total += 1
        try:
            async for message in ws:
                if not await connection.receive(message):
                    await ws.close(connection.close_code, connection.close_reason)
                    break
        except ConnectionClosed as exc:
            if exc.rcvd is None or exc.rcvd.code not in (1000, 1001):
                logger.info("stream %s: socket closed abruptly (%s)", connection.stream_id, exc)
        finally:
            self.connections.discard(connection)
            try:
                await connection.finish()
            except Exception:
                logger.exception("stream %s: finishing the stream failed", connection.stream_id)


def _peer(ws: ServerConnection) -> str:
    address = ws.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


def serve_blocking(
    handler: HandlerFactory | type[StreamHandler] = StreamHandler,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    record_dir: str | Path | None = None,
    options: StreamOptions | None = None,
) -> None:
    """Run a media server in this thread until SIGINT/SIGTERM (what ``serve`` does)."""
    server = MediaServer(handler, host=host, port=port, record_dir=record_dir, options=options)
    asyncio.run(server.serve_forever())
