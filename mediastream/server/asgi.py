"""The media endpoint and the Telnyx routes as an ASGI app, for Starlette, FastAPI or any
ASGI server.

It runs the same ``StreamRegistry``/``StreamConnection`` and the same ``HttpRoutes`` as the
standalone websockets server; only the socket adapter differs. It is plain ASGI (no framework
import), so it can be mounted as a route endpoint or as a sub-application::

    media = MediaApp(Bot, record_dir="recordings")
    app = Starlette(lifespan=media.lifespan)   # finalizes recordings on shutdown
    media.mount(app)                           # /stream, /callbacks/stream, /texml, /metrics,
                                               # /healthz
    # or: app.mount("/telnyx", media)          # any sub-path; WebSocket = media, HTTP = routes

The ASGI server owns keepalive pings and its own frame size limit; ``max_frame_bytes`` is
checked here as well so both servers refuse the same frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from http import HTTPStatus
from pathlib import Path
from typing import Any

from mediastream.errors import SocketClosed
from mediastream.handler import HandlerFactory, StreamHandler, StreamOptions
from mediastream.protocol.frames import AUTH_TOKEN_KEY, ConnectedFrame, parse_frame
from mediastream.recording import recover_recordings
from mediastream.server.http import (
    MAX_BODY_BYTES,
    STREAM_PATH,
    HttpRequest,
    HttpResponse,
    HttpRoutes,
    install_metrics,
)
from mediastream.streams import StreamConnection, StreamRegistry

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
MAX_FRAME_BYTES = 1 << 20
HEALTH_PATH = "/healthz"


class _AsgiTransport:
    """The ``Transport`` a stream needs, over ASGI ``send``; closes at most once."""

    __slots__ = ("_send", "closed", "disconnect_code")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.closed = False
        self.disconnect_code: int | None = None  # from ``websocket.disconnect``

    async def send(self, text: str) -> None:
        try:
            await self._send({"type": "websocket.send", "text": text})
        except OSError as exc:  # ASGI: a send after the client went away (a hang-up)
            normal = self.disconnect_code in (1000, 1001)
            raise SocketClosed(f"socket closed ({exc!r})", normal=normal) from exc

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            await self._send({"type": "websocket.close", "code": code, "reason": reason})


class MediaApp:
    """ASGI: WebSocket scopes are media streams, HTTP scopes go to ``HttpRoutes``."""

    def __init__(
        self,
        handler: HandlerFactory | type[StreamHandler] = StreamHandler,
        *,
        record_dir: str | Path | None = None,
        options: StreamOptions | None = None,
        http: HttpRoutes | None = None,
        auth_token: str | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        max_body_bytes: int = MAX_BODY_BYTES,
        metrics: bool = True,
    ) -> None:
        self.options = options or StreamOptions()
        if record_dir is not None:
            self.options.record_dir = Path(record_dir)
        self.registry = StreamRegistry(handler, self.options)
        self.http = http or HttpRoutes()
        self.http.attach(self.registry)
        self.metrics = install_metrics(self.registry, self.http) if metrics else None
        self.auth_token = auth_token or None
        self.max_frame_bytes = max_frame_bytes
        self.max_body_bytes = max_body_bytes
        self.connections: set[StreamConnection] = set()
        self._started = False
        self._start_lock = asyncio.Lock()

    # ------------------------------------------------------------ lifecycle

    async def startup(self) -> None:
        """Create the folders and recover recordings a crash left (once; also done lazily)."""
        async with self._start_lock:
            if self._started:
                return
            for directory in (self.options.record_dir, self.options.capture_dir):
                if directory is not None:
                    directory.mkdir(parents=True, exist_ok=True)
            if self.options.record_dir is not None:
                await asyncio.to_thread(recover_recordings, self.options.record_dir)
            self._started = True

    async def shutdown(self) -> None:
        """Close live sockets and end every stream, live or waiting for a reconnect."""
        for connection in list(self.connections):
            with contextlib.suppress(Exception):
                await connection.transport.close(1001, "server shutting down")
        await self.registry.close_all()
        if self.metrics is not None:
            await self.metrics.close()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """For ``Starlette(lifespan=media.lifespan)``: without it, streams waiting for a
        reconnect at shutdown are not finalized by this app."""
        await self.startup()
        if self.metrics is not None:
            self.metrics.start()  # batches every second; without a lifespan: at stream end, scrape
        try:
            yield
        finally:
            await self.shutdown()

    def mount(self, app: Any, path: str = STREAM_PATH) -> None:
        """Add the media WebSocket at ``path`` and the HTTP routes to a Starlette/FastAPI app."""
        router = getattr(app, "router", app)
        router.add_websocket_route(path, self)
        self.http.stream_path = path
        for route in (self.http.callback_path, self.http.texml_path):
            if route:
                router.add_route(route, self, methods=["GET", "POST"])
        if self.metrics is not None and self.http.metrics_path:
            router.add_route(self.http.metrics_path, self, methods=["GET"])
        router.add_route(HEALTH_PATH, self, methods=["GET"])

    # ------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        await self.startup()
        if kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """Only when this app is the top-level one (a framework handles its own lifespan)."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                if self.metrics is not None:
                    self.metrics.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        headers = _headers(scope)
        peer = _peer(scope)
        token = headers.get(AUTH_TOKEN_KEY)
        if self.auth_token is not None and token is not None and not _same(token, self.auth_token):
            logger.warning("refused a socket from %s: wrong streaming auth token", peer)
            await send({"type": "websocket.close", "code": CLOSE_POLICY})
            return
        await send({"type": "websocket.accept"})
        transport = _AsgiTransport(send)
        connection = StreamConnection(
            self.registry, transport, peer=peer, auth_token=self.auth_token
        )
        self.connections.add(connection)
        needs_token = self.auth_token is not None and token is None
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    transport.disconnect_code = message.get("code", 1000)
                    break
                if message["type"] != "websocket.receive":
                    continue
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                if len(data) > self.max_frame_bytes:
                    logger.warning("stream %s: frame over the size limit", connection.log_id)
                    await transport.close(CLOSE_TOO_BIG, "frame too large")
                    break
                if needs_token:
                    needs_token = False
                    if not self._token_in(data):
                        logger.warning("refused a socket from %s: no valid auth token", peer)
                        await transport.close(CLOSE_POLICY, "streaming auth token required")
                        break
                if not await connection.receive(data):
                    await transport.close(connection.close_code, connection.close_reason)
                    break
        finally:
            self.connections.discard(connection)
            try:
                await connection.finish()
            except Exception:
                logger.exception("stream %s: finishing the stream failed", connection.log_id)

    def _health(self) -> HttpResponse:
        """What ``serve``'s ``GET /healthz`` says, for a load balancer in front of the ASGI
        app (no drain state here: the ASGI server owns shutdown)."""
        body = json.dumps({"status": "ok", "streams": len(self.connections)}) + "\n"
        return HttpResponse(HTTPStatus.OK, body.encode(), content_type="application/json")

    def _token_in(self, first: str | bytes) -> bool:
        """Without the token in the upgrade headers, the first frame must carry it."""
        assert self.auth_token is not None
        with contextlib.suppress(Exception):
            frame = parse_frame(first)
            if isinstance(frame, ConnectedFrame) and frame.auth_token is not None:
                return _same(frame.auth_token, self.auth_token)
        return False

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                await _respond(send, HttpResponse.text(413, "request body too large\n"))
                return
            if not message.get("more_body"):
                break
        root_path = scope.get("root_path", "")
        path = scope["path"]
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :] or "/"
        request = HttpRequest(
            method=scope["method"],
            path=path,
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=_headers(scope),
            body=bytes(body),
            peer=_peer(scope),
            root_path=root_path,
        )
        if path == HEALTH_PATH and request.method in ("GET", "HEAD"):
            await _respond(send, self._health())
            return
        response = await self.http.handle(request)
        await _respond(send, response or HttpResponse.text(404, "not found\n"))


async def _respond(send: Send, response: HttpResponse) -> None:
    headers = [
        (b"content-type", response.content_type.encode("latin-1")),
        (b"content-length", str(len(response.body)).encode()),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers),
    ]
    await send({"type": "http.response.start", "status": int(response.status), "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "?"


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
