"""The media server on picows (Cython WebSocket framing): the cheaper transport.

Like the websockets adapter, this only moves messages between the library and ``MediaCore``.
What picows 2.3 does and does not do, read in its ``picows.pyx``, shapes it:

* The listener factory sees the upgrade request (path, headers) before the 101 and may answer
  any other response: refusals (auth, limits, draining) happen at the handshake, and a plain
  ``GET`` can be answered too. The factory is synchronous and learns no peer address, so only
  routes that never wait (``/healthz``, ``/metrics``, ``GET /texml``) are served here, and a
  refusal at the handshake is logged without the peer.
* Any other method, or a request with a body, is answered 400 by picows itself: the POST routes
  need the second listener (``http_port``: uvicorn, a maintained HTTP parser, on the same core).
* A frame is valid only inside ``on_ws_frame``: each payload is copied there into the socket's
  inbox, which the socket's task reads in order. Above ``inbox_high_water`` messages reading
  pauses until the task has taken them all.
* Fragments arrive as separate frames (``max_frame_size`` bounds one frame): they are joined
  here within ``max_frame_bytes`` (beyond: 1009). Text is UTF-8 checked here (else 1007).
* Pings are answered by picows; it pings an idle peer itself (``ping_interval``). A close frame
  is not answered by picows: the listener replies and disconnects.
* ``send`` is synchronous (into the asyncio transport's buffer): a send waits while the
  transport says its buffer is over the high-water mark, up to the playback ``send_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import Coroutine
from http import HTTPStatus
from typing import Any

import picows
from multidict import CIMultiDict
from picows import WSCloseCode, WSFrame, WSMsgType, WSTransport, WSUpgradeRequest

from mediastream.errors import MediaStreamError, SocketClosed, install_hint
from mediastream.instance import split_instance_path
from mediastream.runtime.connection import StreamConnection
from mediastream.runtime.core import HEALTH_PATH, HttpRequest, HttpResponse, Refusal
from mediastream.runtime.lifecycle import CLOSE_INVALID_DATA, CLOSE_TOO_BIG, CLOSE_TRY_AGAIN_LATER
from mediastream.server.base import CoreServer
from mediastream.server.websockets_glue import SINGLETON_HEADERS

logger = logging.getLogger(__name__)
_TEXT, _BINARY, _CONTINUATION, _CLOSE = (
    WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION, WSMsgType.CLOSE,
)  # fmt: skip


class _Refused:
    """Stands in the inbox for input refused in the frame callback (not UTF-8, too large)."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code, self.reason = code, reason


class _QuietLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """picows logs every connection at INFO (and, passed a Logger, makes a child Logger per
    socket): an adapter keeps its warnings and errors, and no per-socket logger objects."""

    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.WARNING and self.logger.isEnabledFor(level)


class _Socket(picows.WSListener):
    """One socket: picows' callbacks fill ``inbox``; its task reads it. Also its ``Transport``."""

    def __init__(self, server: PicowsServer, headers: dict[str, str], path: str = "") -> None:
        self.server, self.headers, self.path = server, headers, path
        self.ws: WSTransport | None = None
        self.inbox: deque[str | bytes | _Refused] = deque()
        self.task: asyncio.Task[None] | None = None  # held: the loop keeps only a weak one
        self.connection: StreamConnection | None = None
        self._high_water = server.limits.inbox_high_water
        self._max_message = server.limits.max_frame_bytes
        self._parts: bytearray | None = None  # a fragmented message so far (memory: bounded)
        self._text = self._discarding = self._paused = self.gone = False
        self._waiter: asyncio.Future[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed_watch: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ picows' side

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.ws = transport
        self.task = asyncio.get_running_loop().create_task(self.server._serve(self))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == _TEXT and frame.fin and self._parts is None:  # a media frame: the usual
            try:
                self._push(frame.get_payload_as_utf8_text())
            except UnicodeDecodeError:
                self._push(_Refused(CLOSE_INVALID_DATA, "invalid UTF-8"))
        elif kind in (_TEXT, _BINARY, _CONTINUATION):
            self._fragment(frame)
        elif kind == _CLOSE:  # picows does not answer a close: reply with its code, hang up
            if not transport.is_close_frame_sent:
                code = frame.get_close_code()
                transport.send_close(code if 1000 <= code < 5000 and code not in (1005, 1006)
                                     else WSCloseCode.OK)  # fmt: skip
            transport.disconnect()

    def _fragment(self, frame: WSFrame) -> None:
        if frame.msg_type != _CONTINUATION:
            if self._parts is not None or self._discarding:
                raise picows.WSProtocolError(WSCloseCode.PROTOCOL_ERROR, "message interleaved")
            self._parts, self._text = bytearray(), frame.msg_type == _TEXT
        elif self._parts is None and not self._discarding:
            raise picows.WSProtocolError(WSCloseCode.PROTOCOL_ERROR, "continuation of nothing")
        if self._parts is not None:
            self._parts += frame.get_payload_as_memoryview()  # copied: valid only in here
            if len(self._parts) > self._max_message:
                self._parts, self._discarding = None, True
                self._push(_Refused(CLOSE_TOO_BIG, "message too large"))
        if frame.fin:
            parts, self._parts, self._discarding = self._parts, None, False
            if parts is not None:
                data = bytes(parts)
                try:
                    self._push(data.decode() if self._text else data)
                except UnicodeDecodeError:
                    self._push(_Refused(CLOSE_INVALID_DATA, "invalid UTF-8"))

    def _push(self, message: str | bytes | _Refused) -> None:
        self.inbox.append(message)
        if len(self.inbox) >= self._high_water and not self._paused and self.ws is not None:
            self._paused = True
            self.ws.underlying_transport.pause_reading()
        self._wake()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.gone = True
        self._writable.set()  # a waiting send finds the socket gone
        self._wake()
        if self.connection is not None:
            self._closed_watch = asyncio.get_running_loop().create_task(self._socket_closed())

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _socket_closed(self) -> None:
        assert self.connection is not None
        try:
            await self.connection.socket_closed()
        except Exception:
            logger.exception("stream %s: stopping playback failed", self.connection.log_id)

    # ------------------------------------------------------------ the task's side

    async def wait_for_messages(self) -> bool:
        """True once ``inbox`` holds a message; False when the socket is gone and all is read."""
        if self._paused:
            self._paused = False
            if not self.gone:
                assert self.ws is not None
                self.ws.underlying_transport.resume_reading()
        while not self.inbox:
            if self.gone:
                return False
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return True

    def unread(self) -> list[str | bytes]:
        """Take every message read and not handed over (refused input carries no audio)."""
        messages = [m for m in self.inbox if not isinstance(m, _Refused)]
        self.inbox.clear()
        return messages

    @property
    def peer(self) -> str:
        assert self.ws is not None
        address = self.ws.underlying_transport.get_extra_info("peername")
        return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)

    def peer_closed_cleanly(self) -> bool:
        handshake = self.ws.close_handshake if self.ws is not None else None
        received = handshake.recv if handshake is not None else None
        return received is not None and int(received.code) in (1000, 1001)

    async def send(self, text: str) -> None:
        ws = self.ws
        assert ws is not None
        if not self._writable.is_set():  # the transport's buffer is over its high-water mark
            seconds = self.server.options.playback.send_timeout
            await asyncio.wait_for(self._writable.wait(), seconds)
        if self.gone or ws.is_close_frame_sent:
            raise SocketClosed("socket closed", normal=self.peer_closed_cleanly())
        ws.send(_TEXT, text)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send the close frame (once), wait for the peer's (``handshake_seconds``), hang up."""
        ws = self.ws
        if ws is None or self.gone:
            return
        if not ws.is_close_frame_sent:
            # a close reason has at most 123 bytes; a cut never splits a character
            ws.send_close(code, reason.encode()[:123].decode(errors="ignore").encode())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ws.wait_disconnected(), self.server.limits.handshake_seconds)
        self.abort()

    def abort(self) -> None:
        if self.ws is not None and not self.gone:
            self.ws.disconnect(graceful=False)


class PicowsServer(CoreServer):
    """Carrier sockets on ``host:port`` over picows; with ``config.http_port``, every HTTP
    route (POST included) on that second port too."""

    _server: asyncio.AbstractServer | None = None
    _http_site: Any = None  # a started uvicorn.Server
    http_port: int | None = None

    async def start(self) -> None:
        await self.core.start()
        limits = self.limits
        ping = limits.ping_interval
        self._server = await picows.ws_create_server(
            self._listener_for,
            self.host,
            self.port,
            websocket_handshake_timeout=limits.handshake_seconds,
            enable_auto_ping=ping is not None,  # pings a peer that sent nothing for this long
            auto_ping_idle_timeout=ping or 20.0,
            # picows requires reply <= idle: a longer ping_timeout is cut to ping_interval
            auto_ping_reply_timeout=min(limits.ping_timeout or ping or 20.0, ping or 20.0),
            max_frame_size=limits.max_frame_bytes,
            read_buffer_init_size=limits.read_buffer_bytes,
            logger_name=_QuietLog(logging.getLogger("picows.server"), {}),
            reuse_port=self.reuse_port or None,
        )
        sockets = self._server.sockets  # type: ignore[attr-defined]
        if sockets:
            self.port = sockets[0].getsockname()[1]
        if self.config.http_port is not None:
            await self._start_http(self.config.http_port)
        logger.debug("listening on ws://%s:%d", self.host, self.port)

    async def _start_http(self, port: int) -> None:
        """uvicorn (h11) on ``port`` with the core's routes; the socket bound here, so that a
        port in use is an ``OSError`` (uvicorn would exit the process)."""
        try:
            import uvicorn

            from mediastream.server.asgi import HttpApp
        except ImportError:
            raise MediaStreamError(f"--http-port needs uvicorn: {install_hint('picows')}") from None
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.create_server((self.host, port), family=family, reuse_port=self.reuse_port)
        config = uvicorn.Config(
            HttpApp(self.core), lifespan="off", http="h11", ws="none", log_config=None,
            access_log=False, timeout_graceful_shutdown=self.core.registry.limits.stop_seconds,
        )  # fmt: skip
        config.load()
        site = uvicorn.Server(config)
        site.lifespan = config.lifespan_class(config)
        await site.startup(sockets=[sock])
        self._http_site, self._http_sock = site, sock
        self.http_port = sock.getsockname()[1]
        self.http.ports = (self.port, self.http_port)  # the TeXML's URLs follow them

    async def stop(self) -> None:
        """Stop listening, close every socket, finalize every recording (see ``MediaCore``)."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        await self.core.shutdown()
        if self._http_site is not None:
            site, self._http_site = self._http_site, None
            await site.shutdown(sockets=[self._http_sock])
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), self.core.registry.limits.stop_seconds)

    # ------------------------------------------------------------ per request / socket

    def _listener_for(self, request: WSUpgradeRequest) -> Any:
        """The upgrade request, before the 101: a listener, or the response that refuses it."""
        for name in SINGLETON_HEADERS:  # as the websockets adapter: 400, not the last one
            if len(request.headers.getall(name, ())) > 1:
                reason = f"duplicate {name} header"
                logger.warning("refused a request: %s", reason)
                return _answer(HttpResponse.text(HTTPStatus.BAD_REQUEST, reason + "\n"))
        headers = {name.lower(): value for name, value in request.headers.items()}
        if "websocket" not in headers.get("upgrade", "").lower():
            return _answer(self._http(request, headers))
        refusal = self.core.refusal("(handshake)", headers)  # picows does not say the peer
        if refusal is not None:
            return _answer(HttpResponse.text(refusal.status, refusal.reason + "\n"))
        return _Socket(self, headers, request.path.decode("latin-1"))

    def _http(self, request: WSUpgradeRequest, headers: dict[str, str]) -> HttpResponse:
        path, _, query = request.path.decode("latin-1").partition("?")
        route = split_instance_path(path)[1]  # /i/<id>/texml is /texml (MediaCore.http)
        if route not in (HEALTH_PATH, self.http.metrics_path, self.http.texml_path):
            where = f" (HTTP routes: port {self.http_port})" if self.http_port else ""
            return HttpResponse.text(HTTPStatus.NOT_FOUND, f"not found on this port{where}\n")
        http = HttpRequest(method="GET", path=path, query=query, headers=headers)
        return _run_now(self.core.http(http))

    async def _serve(self, sock: _Socket) -> None:
        """The socket's task: take it in the core, read it to its end, finish it."""
        accepted = self.core.accept(
            sock.peer, sock.headers, sock, unread=sock.unread, path=sock.path
        )
        if isinstance(accepted, Refusal):  # refused between the handshake and now
            await sock.close(CLOSE_TRY_AGAIN_LATER, accepted.reason)
            return
        connection = sock.connection = accepted
        try:
            await self.core.run_reader(connection, self._read(sock, connection))
        finally:
            sock.abort()
            if sock.ws is not None:
                await sock.ws.wait_disconnected()
            if sock._closed_watch is not None:
                await sock._closed_watch
            await self.core.finish(connection)

    async def _read(self, sock: _Socket, connection: StreamConnection) -> None:
        """Every message to the stream, in order. After the stream ends the socket is still
        read (its audio goes to the recording) until the peer answers the close."""
        inbox, receive = sock.inbox, self.core.receive
        closing: asyncio.Task[None] | None = None
        while await sock.wait_for_messages():
            while inbox:
                message = inbox.popleft()
                if isinstance(message, _Refused):
                    if closing is None:
                        logger.warning("stream %s: %s; closing", connection.log_id, message.reason)
                        connection.refuse_input(message.code, message.reason)
                        closing = asyncio.create_task(sock.close(message.code, message.reason))
                elif not await receive(connection, message) and closing is None:
                    code, reason = connection.close_code, connection.close_reason
                    closing = asyncio.create_task(sock.close(code, reason))
        if closing is not None:
            await closing
        if not sock.peer_closed_cleanly() and closing is None:
            logger.info("stream %s: socket closed abruptly", connection.log_id)


def _run_now(route: Coroutine[Any, Any, HttpResponse]) -> HttpResponse:
    """picows wants the response synchronously: run a route that never waits to its end."""
    try:
        route.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    route.close()
    return HttpResponse.text(HTTPStatus.SERVICE_UNAVAILABLE, "route not served on this port\n")


def _answer(response: HttpResponse) -> picows.WSUpgradeResponseWithListener:
    """Our response as picows' (it adds ``Connection: close`` and hangs up after it)."""
    answer = picows.WSUpgradeResponse()
    answer.version, answer.status = b"HTTP/1.1", HTTPStatus(response.status)
    answer.headers = CIMultiDict([("Content-Type", response.content_type), *response.headers])
    if not response.body:
        answer.headers["Content-Length"] = "0"
    answer.body = response.body or None
    return picows.WSUpgradeResponseWithListener(answer, None)
