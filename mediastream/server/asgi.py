"""The media endpoint and the HTTP routes as an ASGI app, for Starlette, FastAPI or any ASGI
server.

It runs the same ``MediaCore`` as the standalone server (limits, auth, idle timeout,
``/healthz``, drain), with the same ``HttpRoutes``; only the socket adapter differs. It is
plain ASGI (no framework import), so it can be mounted as a route endpoint or as a
sub-application::

    media = MediaApp(Bot, record_dir="recordings")
    app = Starlette(lifespan=media.lifespan)   # finalizes recordings on shutdown
    media.mount(app)                           # /stream, /callbacks/stream, /texml, /metrics,
                                               # /healthz, /streams, /calls, /reports/
    # or: app.mount("/telnyx", media)          # any sub-path; WebSocket = media, HTTP = routes

The ASGI server owns keepalive pings, the handshake timeout and its own frame size limit;
``max_frame_bytes`` is checked here as well so both servers refuse the same frames. A refused
socket is closed before it is accepted (the ASGI server answers 403). On SIGTERM the ASGI
server closes its sockets itself; call ``drain()`` first (from your own signal handling) for
``/healthz`` to say "draining" while live streams finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from mediastream.config import Config, ServerLimits, StreamOptions
from mediastream.errors import SocketClosed
from mediastream.instance import INSTANCE_SEGMENT
from mediastream.runtime.core import HEALTH_PATH, HttpRequest, HttpResponse, MediaCore, Refusal
from mediastream.runtime.handler import HandlerFactory, StreamHandler
from mediastream.runtime.lifecycle import CLOSE_TOO_BIG, Cause
from mediastream.runtime.observer import NO_OBSERVER
from mediastream.server.live import CALLS_PATH, REPORTS_PATH, STREAMS_PATH
from mediastream.server.metrics import ServerMetrics
from mediastream.server.routes import STREAM_PATH, HttpRoutes

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


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
            with contextlib.suppress(OSError):  # already gone
                await self._send({"type": "websocket.close", "code": code, "reason": reason})


class MediaApp:
    """ASGI: WebSocket scopes are media streams, HTTP scopes go to ``MediaCore.http``."""

    def __init__(
        self,
        handler: HandlerFactory | type[StreamHandler] = StreamHandler,
        *,
        config: Config | None = None,
        record_dir: str | Path | None = None,
        options: StreamOptions | None = None,
        limits: ServerLimits | None = None,
        http: HttpRoutes | None = None,
        auth_token: str | None = None,
        max_frame_bytes: int | None = None,
        max_body_bytes: int | None = None,
        metrics: bool | None = None,
    ) -> None:
        config = Config.merged(
            config, record_dir=record_dir, options=options, limits=limits,
            auth_token=auth_token, metrics=metrics,
        )  # fmt: skip
        if max_frame_bytes is not None:
            config = replace(config, limits=replace(config.limits, max_frame_bytes=max_frame_bytes))
        if max_body_bytes is not None:
            config = replace(config, http=replace(config.http, max_body_bytes=max_body_bytes))
        self.config = config
        self.http = http or HttpRoutes()
        self.metrics = ServerMetrics() if config.metrics else None
        self.core = MediaCore(
            handler, config, observer=self.metrics or NO_OBSERVER, routes=self.http.handle
        )
        self.http.attach(self.core.registry, self.metrics, config=config)  # bind: not known

    @property
    def options(self) -> StreamOptions:
        return self.config.stream

    # ------------------------------------------------------------ lifecycle

    async def startup(self) -> None:
        """Folders, recordings a crash left, the limits (once; also done on first use)."""
        await self.core.start()

    async def drain(self) -> None:
        """Refuse new sockets, say "draining" on ``/healthz``, give live streams
        ``drain_seconds`` to end, then end every stream."""
        await self.core.drain()

    async def shutdown(self) -> None:
        """Close live sockets and end every stream, live or waiting for a reconnect."""
        await self.core.shutdown()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """For ``Starlette(lifespan=media.lifespan)``: without it, streams waiting for a
        reconnect at shutdown are not finalized by this app."""
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    def mount(self, app: Any, path: str = STREAM_PATH) -> None:
        """Add the media WebSocket at ``path`` and the HTTP routes to a Starlette/FastAPI app,
        each also under ``/i/{instance}`` (the URLs handed to the carrier name the instance)."""
        router = getattr(app, "router", app)
        self.http.stream_path = path
        for prefix in ("", f"/{INSTANCE_SEGMENT}/{{instance}}"):
            router.add_websocket_route(prefix + path, self)
            for route in (self.http.callback_path, self.http.texml_path):
                if route:
                    router.add_route(prefix + route, self, methods=["GET", "POST"])
            if self.metrics is not None and self.http.metrics_path:
                router.add_route(prefix + self.http.metrics_path, self, methods=["GET"])
            if self.http.live is not None:  # the live view: /streams, /calls, /reports/<file>
                for route in (STREAMS_PATH, CALLS_PATH, REPORTS_PATH + "{name}"):
                    router.add_route(prefix + route, self, methods=["GET"])
            router.add_route(prefix + HEALTH_PATH, self, methods=["GET"])

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
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        transport = _AsgiTransport(send)
        accepted = self.core.accept(_peer(scope), _headers(scope), transport, path=_path(scope))
        if isinstance(accepted, Refusal):
            await send({"type": "websocket.close", "code": 1008, "reason": accepted.reason})
            return
        connection = accepted
        await send({"type": "websocket.accept"})
        max_frame = self.config.limits.max_frame_bytes
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
                if len(data) > max_frame:
                    logger.warning("stream %s: frame over the size limit", connection.log_id)
                    connection.life.close(CLOSE_TOO_BIG, "frame too large", Cause.BAD_INPUT)
                    await transport.close(CLOSE_TOO_BIG, "frame too large")
                    continue  # read on until the disconnect: its audio is not lost
                if not await self.core.receive(connection, data) and not transport.closed:
                    await transport.close(connection.close_code, connection.close_reason)
        except asyncio.CancelledError:
            if not self.core.was_stopped(connection):
                raise
        finally:
            await self.core.finish(connection)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        await serve_http(self.core, scope, receive, send)


class HttpApp:
    """ASGI for the HTTP routes of a core some other adapter serves sockets for: ``serve
    --transport picows`` runs it under uvicorn on ``--http-port``, for request bodies."""

    def __init__(self, core: MediaCore) -> None:
        self.core = core

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await serve_http(self.core, scope, receive, send)


async def serve_http(core: MediaCore, scope: Scope, receive: Receive, send: Send) -> None:
    """One HTTP scope: the body read within ``max_body_bytes``, then ``core.http``."""
    body = bytearray()
    limit = core.config.http.max_body_bytes
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if len(body) > limit:
            await _respond(send, HttpResponse.text(413, "request body too large\n"))
            return
        if not message.get("more_body"):
            break
    request = HttpRequest(
        method=scope["method"],
        path=_path(scope),
        query=scope.get("query_string", b"").decode("latin-1"),
        headers=_headers(scope),
        body=bytes(body),
        peer=_peer(scope),
        root_path=scope.get("root_path", ""),
    )
    await _respond(send, await core.http(request))


def _path(scope: Scope) -> str:
    """The path below where the app is mounted (``root_path``)."""
    root_path, path = scope.get("root_path", ""), scope["path"]
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :] or "/"
    return str(path)


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
