"""The media server on the ``websockets`` library: WebSocket on any path, plain HTTP routes
(``/healthz``, ``/metrics``, ``/texml``, ``/callbacks/stream``) on the same port.

This adapter only moves messages between websockets and ``MediaCore``, which holds every
policy (auth, limits, timeouts, drain). The two places where websockets' public API does not
reach (request bodies, the media read path) are in ``_websockets_private.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.http11 import Request, Response

from mediastream.config import DEFAULT_HOST, DEFAULT_PORT, ServerLimits
from mediastream.errors import SocketClosed
from mediastream.logs import redacting_logger
from mediastream.runtime.connection import StreamConnection
from mediastream.runtime.core import HttpRequest, HttpResponse, Refusal
from mediastream.runtime.handler import HandlerFactory, StreamHandler
from mediastream.runtime.lifecycle import CLOSE_INVALID_DATA, CLOSE_TRY_AGAIN_LATER
from mediastream.server._websockets_private import InvalidText, MediaConnection
from mediastream.server.base import CoreServer, server_class
from mediastream.server.websockets_glue import (
    QuietAccept,
    headers_of,
    peer,
    refuse_duplicate_headers,
    to_websockets,
)

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "MediaServer", "ServerLimits", "serve_blocking"]

logger = logging.getLogger(__name__)


class _SocketTransport:
    """Adapts a websockets connection to the ``Transport`` the stream code needs."""

    __slots__ = ("ws",)

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws

    async def send(self, text: str) -> None:
        try:
            await self.ws.send(text)
        except ConnectionClosed as exc:  # a hang-up while we play: not a failure of ours
            raise SocketClosed(str(exc), normal=isinstance(exc, ConnectionClosedOK)) from exc

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.ws.close(code, reason)


class MediaServer(CoreServer):
    """Accepts carrier sockets on ``host:port`` and runs them through a ``MediaCore``."""

    _server: Server | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.core.start()
        loop = asyncio.get_running_loop()
        if not isinstance(loop.get_exception_handler(), QuietAccept):
            loop.set_exception_handler(QuietAccept(loop.get_exception_handler()))
        limits, http = self.limits, self.config.http
        MediaConnection.configure(http)
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            create_connection=MediaConnection,  # callback bodies, the media read path
            compression=None,
            max_size=limits.max_frame_bytes,
            open_timeout=limits.handshake_seconds,
            ping_interval=limits.ping_interval,
            ping_timeout=limits.ping_timeout,
            logger=redacting_logger("websockets.server", self.core.auth_token),
            reuse_port=self.reuse_port or None,  # goes to loop.create_server
        )
        sockets = self._server.sockets
        if sockets:
            self.port = sockets[0].getsockname()[1]
        logger.debug("listening on ws://%s:%d", self.host, self.port)  # on_ready: the CLI prints it

    async def stop(self) -> None:
        """Stop listening, close every socket, finalize every recording (see ``MediaCore``)."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close(close_connections=False)
        await self.core.shutdown()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), self.core.registry.limits.stop_seconds)

    # ------------------------------------------------------------ per request / socket

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        if (refused := refuse_duplicate_headers(ws, request)) is not None:
            return refused  # a repeated auth token or Upgrade: 400, not MultipleValuesError
        if "websocket" not in request.headers.get("Upgrade", "").lower():
            return await self._http(ws, request)
        refusal = self.core.refusal(peer(ws), headers_of(request))
        if refusal is not None:
            return to_websockets(_refusal_response(refusal))
        return None

    async def _http(self, ws: ServerConnection, request: Request) -> Response:
        assert isinstance(ws, MediaConnection)
        if ws.body_status is not None:
            reason = ws.body_reason or ws.body_status.phrase
            return to_websockets(HttpResponse.text(ws.body_status, f"{reason}\n"))
        path, _, query = request.path.partition("?")
        response = await self.core.http(
            HttpRequest(
                method=request.method,
                path=path,
                query=query,
                headers=headers_of(request),
                body=ws.request_body,
                peer=peer(ws),
            )
        )
        return to_websockets(response)

    async def _handle(self, ws: MediaConnection) -> None:
        headers = headers_of(ws.request) if ws.request is not None else {}
        path = ws.request.path if ws.request is not None else ""
        accepted = self.core.accept(
            peer(ws), headers, _SocketTransport(ws), unread=ws.unread_messages, path=path
        )
        if isinstance(accepted, Refusal):  # refused between the handshake and now
            await ws.close(CLOSE_TRY_AGAIN_LATER, accepted.reason)
            return
        connection = accepted
        watcher = asyncio.create_task(self._on_socket_closed(ws, connection))
        try:
            await self.core.run_reader(connection, self._read(ws, connection))
        finally:
            ws.abort()  # never wait for a socket this path has given up on
            with contextlib.suppress(Exception):
                await watcher
            await self.core.finish(connection)

    async def _record_inbox(self, ws: MediaConnection, connection: StreamConnection) -> None:
        """Frames read after the stream ended or its handler failed or was cancelled: their
        audio still goes to the recording; a failed handler is not called again."""
        for message in ws.unread_messages():
            await self.core.receive(connection, message)

    async def _read(self, ws: MediaConnection, connection: StreamConnection) -> None:
        """Hand every message to the stream, in order, until the socket is gone. Once the
        stream ends, the socket is closed but still read: a peer blocked on a full socket
        buffer would never see the close, and audio that still arrives (after a handler
        failed, say) goes to the recording."""
        inbox, receive = ws.inbox, self.core.receive
        closing: asyncio.Task[None] | None = None
        while await ws.wait_for_messages():
            if closing is not None:
                await self._record_inbox(ws, connection)
                continue
            while inbox:
                message = inbox.popleft()
                if isinstance(message, InvalidText):
                    logger.warning(
                        "stream %s: text frame is not UTF-8 (%s); closing",
                        connection.log_id, message.reason,
                    )  # fmt: skip
                    connection.refuse_input(CLOSE_INVALID_DATA, "invalid UTF-8")
                    closing = asyncio.create_task(ws.close(CLOSE_INVALID_DATA, "invalid UTF-8"))
                    break
                if not await receive(connection, message):
                    code, reason = connection.close_code, connection.close_reason
                    closing = asyncio.create_task(ws.close(code, reason))
                    break
        if closing is not None:
            await closing
        if not ws.closed_cleanly:
            logger.info("stream %s: socket closed abruptly (%s)", connection.log_id, ws.close_cause)

    @staticmethod
    async def _on_socket_closed(ws: ServerConnection, connection: StreamConnection) -> None:
        await ws.wait_closed()
        try:
            await connection.socket_closed()
        except Exception:
            logger.exception("stream %s: stopping playback failed", connection.log_id)


def _refusal_response(refusal: Refusal) -> HttpResponse:
    return HttpResponse.text(refusal.status, refusal.reason + "\n")


def serve_blocking(
    handler: HandlerFactory | type[StreamHandler] = StreamHandler,
    *,
    transport: str = "websockets",
    **server_options: Any,
) -> None:
    """Run a media server in this thread until SIGTERM/SIGINT (what ``serve`` does);
    ``server_options`` are ``MediaServer``'s keyword arguments; ``transport`` picks the
    library (``websockets`` or ``picows``).

    Says where it listens, as ``mediastream serve`` does, and logs as it does unless the
    application set up logging: the README's ``python my_bot.py`` printed nothing at all.
    """
    from mediastream.logs import configure_logging

    configure_logging("info")  # does nothing if the application configured logging itself

    def ready(server: CoreServer) -> None:
        print(f"mediastream: listening on ws://{server.host}:{server.port}/", flush=True)

    server = server_class(transport)(handler, **server_options)
    asyncio.run(server.serve_forever(on_ready=ready))
