"""The media server on the ``websockets`` library: WebSocket on any path, ``GET /healthz``
(and ``GET /metrics``, a route of ``server/http.py``).

This module moves text between sockets and ``StreamConnection``s and enforces what an operator
needs from a socket reachable from the internet: an optional streaming auth token (checked in
constant time, never logged), a frame size limit, a stream limit, handshake and idle timeouts,
keepalive pings, and a graceful drain on SIGTERM (new sockets refused, ``/healthz`` says
"draining", live streams given ``drain_seconds`` to finish, then every recording finalized).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import json
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.http11 import Request, Response
from websockets.protocol import State

from mediastream.errors import SocketClosed
from mediastream.handler import HandlerFactory, StreamHandler, StreamOptions
from mediastream.logs import redacting_logger
from mediastream.protocol.frames import AUTH_TOKEN_KEY, ConnectedFrame, parse_frame
from mediastream.recording import recover_recordings
from mediastream.server.connection import InvalidText, MediaConnection
from mediastream.server.http import HttpRoutes, install_metrics, refuse_duplicate_headers
from mediastream.streams import StreamConnection, StreamRegistry, count_refusal
from mediastream.warmup import warm_up

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_INVALID_DATA = 1007


# File descriptors kept for everything but sockets and recordings (listening sockets, logs,
# libraries, capture files, a recording being opened).
FD_RESERVE = 64


@dataclass
class ServerLimits:
    """Protective limits; every one is a ``serve`` flag (see ``mediastream serve --help``)."""

    max_frame_bytes: int = 1 << 20
    # streams live or suspended (each holds its open recording); also capped by ``max_sockets``
    max_streams: int = 10_000
    # sockets open at once, authenticated or not; None: what the file descriptor limit allows
    # (each stream may hold a socket and a recording)
    max_sockets: int | None = None
    handshake_seconds: float = 10.0
    # with an auth token and no token header, the first frame (``connected``) must come by then
    auth_seconds: float = 5.0
    idle_seconds: float = 60.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    drain_seconds: float = 30.0


class _SocketTransport:
    """Adapts a websockets connection to the ``Transport`` the stream code needs."""

    __slots__ = ("_ws",)

    def __init__(self, ws: ServerConnection) -> None:
        self._ws = ws

    async def send(self, text: str) -> None:
        try:
            await self._ws.send(text)
        except ConnectionClosed as exc:  # a hang-up while we play: not a failure of ours
            raise SocketClosed(str(exc), normal=isinstance(exc, ConnectionClosedOK)) from exc

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
        limits: ServerLimits | None = None,
        auth_token: str | None = None,
        http: HttpRoutes | None = None,
        reuse_port: bool = False,
        metrics: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.reuse_port = reuse_port  # SO_REUSEPORT: worker processes share the port
        self.options = options or StreamOptions()
        if record_dir is not None:
            self.options.record_dir = Path(record_dir)
        self.limits = limits or ServerLimits()
        self.auth_token = auth_token or None
        self.registry = StreamRegistry(handler, self.options)
        self.http = http or HttpRoutes()
        self.http.attach(self.registry)
        self.metrics = install_metrics(self.registry, self.http) if metrics else None
        self.connections: set[StreamConnection] = set()
        self._tasks: dict[StreamConnection, asyncio.Task[Any]] = {}  # each socket's handler
        self._sockets: dict[StreamConnection, MediaConnection] = {}
        self.max_sockets = self.limits.max_sockets
        self.sockets_total = 0
        self.draining = False
        self._server: Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        for directory in (self.options.record_dir, self.options.capture_dir):
            if directory is not None:
                directory.mkdir(parents=True, exist_ok=True)
        if self.options.record_dir is not None:
            await asyncio.to_thread(recover_recordings, self.options.record_dir)
        self._bound_file_descriptors()
        costs = await asyncio.to_thread(warm_up)  # before listening: no call waits for it
        if costs:
            logger.debug(
                "codecs ready in %.2f s (%s)",
                sum(costs.values()), ", ".join(f"{k} {v:.2f} s" for k, v in costs.items()),
            )  # fmt: skip
        loop = asyncio.get_running_loop()
        if not isinstance(loop.get_exception_handler(), _QuietAccept):
            loop.set_exception_handler(_QuietAccept(loop.get_exception_handler()))
        limits = self.limits
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
            logger=redacting_logger("websockets.server", self.auth_token),
            reuse_port=self.reuse_port or None,  # goes to loop.create_server
        )
        sockets = self._server.sockets
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self._sweeper = asyncio.create_task(self._sweep_idle())
        if self.metrics is not None:
            self.metrics.start()  # pushes batched counts every second
        logger.debug("listening on ws://%s:%d", self.host, self.port)  # on_ready: the CLI prints it

    def _bound_file_descriptors(self) -> None:
        """Fit the socket and stream limits in the file descriptor limit (raised to its hard
        maximum first), so that the process never runs out of descriptors under load."""
        budget = _raise_fd_limit() - FD_RESERVE
        limits, registry = self.limits, self.registry
        if limits.max_streams > budget // 2:
            # a cut of a few percent (10000 to 9968 under a 20000 hard limit) is no news
            small = budget // 2 >= 0.9 * limits.max_streams
            logger.log(
                logging.DEBUG if small else logging.INFO,
                "file descriptor limit allows %d streams, not %d: --max-streams lowered",
                budget // 2, limits.max_streams,
            )  # fmt: skip
        registry.max_streams = min(limits.max_streams, budget // 2)
        self.max_sockets = min(limits.max_sockets or budget, budget - registry.max_streams)

    async def stop(self) -> None:
        """Close every socket now, finalize every recording, stop listening.

        Handler methods still running get ``handler_stop_seconds``, then are cancelled
        (logged): a stuck handler never keeps the process from exiting.
        """
        if self._server is None:
            return
        server, self._server = self._server, None
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        limits = self.registry.limits
        if limits.deadline is None:
            limits.deadline = time.monotonic()
        server.close(close_connections=True)
        closed = asyncio.ensure_future(server.wait_closed())
        await asyncio.wait({closed}, timeout=limits.stop_seconds)
        for connection, task in list(self._tasks.items()):
            if not closed.done() and not task.done():
                logger.warning(
                    "stream %s: still busy %.1f s after closing; cancelling its handler",
                    connection.log_id, limits.stop_seconds,
                )  # fmt: skip
                limits.stop(task)
        await asyncio.wait({closed}, timeout=limits.stop_seconds)
        if not closed.done():  # a handler that swallows its cancellation: stop waiting for it
            for connection, task in list(self._tasks.items()):
                if not task.done():
                    logger.error(
                        "stream %s: handler ignored its cancellation; abandoning it",
                        connection.log_id,
                    )  # fmt: skip
                    ws = self._sockets.get(connection)
                    unread = [m for m in ws.inbox if not isinstance(m, InvalidText)] if ws else []
                    connection.abandon(unread)
        await self.registry.close_all()
        if self.metrics is not None:
            await self.metrics.close()
        logger.debug("server stopped; %d socket(s) served", self.sockets_total)

    async def drain(self) -> None:
        """Refuse new sockets, give live ones ``drain_seconds`` to end, then stop."""
        self.draining = True
        deadline = time.monotonic() + self.limits.drain_seconds
        self.registry.limits.deadline = deadline  # handler methods are bounded from now on
        logger.info(
            "draining: %d live socket(s), up to %.0f s",
            len(self.connections), self.limits.drain_seconds,
        )  # fmt: skip
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self.connections:
            logger.info("drain time over: closing %d socket(s)", len(self.connections))
        await self.stop()

    async def __aenter__(self) -> MediaServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def serve_forever(self, *, on_ready: Callable[[MediaServer], None] | None = None) -> None:
        """Run until SIGTERM or SIGINT, then drain; a second signal stops at once."""
        signals = 0
        got_signal = asyncio.Event()
        stop_now = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            nonlocal signals
            signals += 1
            (got_signal if signals == 1 else stop_now).set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal)
        # What exists at startup (modules, numba, pydantic schemas) lives as long as the
        # process: frozen, it is never scanned again, which cut full collections under load
        # from 33 to 19 ms at 340 streams (each such pause delays every stream's frames).
        gc.freeze()
        await self.start()
        if on_ready is not None:
            on_ready(self)
        try:
            await got_signal.wait()
            drain = asyncio.create_task(self.drain())
            forced = asyncio.create_task(stop_now.wait())
            await asyncio.wait({drain, forced}, return_when=asyncio.FIRST_COMPLETED)
            forced.cancel()
            if not drain.done():
                logger.info("second signal: stopping now")
                drain.cancel()
        finally:
            await self.stop()

    # ------------------------------------------------------------ per request / socket

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        if (refused := refuse_duplicate_headers(ws, request)) is not None:
            return refused  # a repeated auth token or Upgrade: 400, not MultipleValuesError
        upgrade = "websocket" in request.headers.get("Upgrade", "").lower()
        if request.path.split("?", 1)[0] == "/healthz" and not upgrade:
            status = "draining" if self.draining else "ok"
            body = json.dumps({"status": status, "streams": len(self.connections)}) + "\n"
            code = HTTPStatus.SERVICE_UNAVAILABLE if self.draining else HTTPStatus.OK
            response = ws.respond(code, body)
            del response.headers["Content-Type"]  # Headers appends on assignment
            response.headers["Content-Type"] = "application/json"
            return response
        if (routed := await self.http.process_request(ws, request)) is not None:
            return routed
        if self.draining:
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "server is draining\n")
        refusal = self._refusal()
        if refusal is not None:
            kind, reason = refusal
            count_refusal(self.metrics, kind)
            logger.warning("refused a socket from %s: %s", _peer(ws), reason)
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, reason + "\n")
        if self.auth_token is not None:
            token = request.headers.get(AUTH_TOKEN_KEY)
            if token is not None and not _same(token, self.auth_token):
                logger.warning("refused a socket from %s: wrong streaming auth token", _peer(ws))
                return ws.respond(HTTPStatus.UNAUTHORIZED, "invalid streaming auth token\n")
        return None

    def _refusal(self) -> tuple[str, str] | None:
        """(metric kind, reason) why a new socket cannot be taken now, or None. The stream
        limit is applied at ``start`` (closed with 1013), where the id is known: a socket
        resuming a suspended stream, or taking over a live one, needs no new slot."""
        if self.max_sockets is not None and len(self.connections) >= self.max_sockets:
            return "socket_limit", f"socket limit reached ({self.max_sockets} sockets)"
        return None

    async def _handle(self, ws: MediaConnection) -> None:
        peer = _peer(ws)
        connection = StreamConnection(
            self.registry, _SocketTransport(ws), peer=peer, auth_token=self.auth_token
        )
        self.connections.add(connection)
        task = asyncio.current_task()
        if task is not None:
            self._tasks[connection] = task
        self._sockets[connection] = ws
        self.sockets_total += 1
        watcher = asyncio.create_task(self._on_socket_closed(ws, connection))
        try:
            if await self._authenticate(ws, connection):
                await self._read(ws, connection)
        except asyncio.CancelledError:
            if not self.registry.limits.was_stopped(task):
                raise
            await self._record_inbox(ws, connection)  # the handler was stuck: keep the audio
        except Exception as exc:  # a bug on this socket's path: end it, keep its audio
            logger.exception("stream %s: internal error; closing this socket", connection.log_id)
            with contextlib.suppress(Exception):
                await ws.close(1011, f"internal error ({type(exc).__name__})")
        finally:
            self.connections.discard(connection)
            try:
                if ws.state is not State.CLOSED:
                    ws.transport.abort()  # never wait for a socket this path has given up on
                await watcher
                await connection.finish()
            except Exception:
                logger.exception("stream %s: finishing the stream failed", connection.log_id)
            finally:
                self._tasks.pop(connection, None)
                self._sockets.pop(connection, None)

    @staticmethod
    async def _record_inbox(ws: MediaConnection, connection: StreamConnection) -> None:
        """Frames read after the stream ended or its handler failed or was cancelled: their
        audio still goes to the recording; a failed handler is not called again."""
        while ws.inbox:
            message = ws.inbox.popleft()
            if not isinstance(message, InvalidText):
                await connection.receive(message)

    @staticmethod
    async def _read(ws: MediaConnection, connection: StreamConnection) -> None:
        """Hand every message to the stream, in order, until the socket is gone. Once the
        stream ends, the socket is closed but still read: a peer blocked on a full socket
        buffer would never see the close, and audio that still arrives (after a handler
        failed, say) goes to the recording."""
        inbox, receive = ws.inbox, connection.receive
        closing: asyncio.Task[None] | None = None
        while await ws.wait_for_messages():
            if closing is not None:
                await MediaServer._record_inbox(ws, connection)
                continue
            while inbox:
                message = inbox.popleft()
                if isinstance(message, InvalidText):
                    logger.warning(
                        "stream %s: text frame is not UTF-8 (%s); closing",
                        connection.log_id, message.reason,
                    )  # fmt: skip
                    closing = asyncio.create_task(ws.close(CLOSE_INVALID_DATA, "invalid UTF-8"))
                    break
                if not await receive(message):
                    code, reason = connection.close_code, connection.close_reason
                    closing = asyncio.create_task(ws.close(code, reason))
                    break
        if closing is not None:
            await closing
        received = ws.protocol.close_rcvd
        if received is None or received.code not in (1000, 1001):
            logger.info(
                "stream %s: socket closed abruptly (%s)",
                connection.log_id, ws.protocol.close_exc,
            )  # fmt: skip

    @staticmethod
    async def _on_socket_closed(ws: ServerConnection, connection: StreamConnection) -> None:
        await ws.wait_closed()
        try:
            await connection.socket_closed()
        except Exception:
            logger.exception("stream %s: stopping playback failed", connection.log_id)

    async def _authenticate(self, ws: MediaConnection, connection: StreamConnection) -> bool:
        """Without the token in the upgrade headers, the first frame must carry it."""
        if self.auth_token is None or ws.request is None:
            return True
        if ws.request.headers.get(AUTH_TOKEN_KEY) is not None:
            return True  # checked in _process_request
        try:
            received = await asyncio.wait_for(ws.wait_for_messages(), self.limits.auth_seconds)
        except TimeoutError:
            count_refusal(self.metrics, "no_auth_token")
            logger.warning(
                "refused a socket from %s: no streaming auth token within %g s",
                _peer(ws), self.limits.auth_seconds,
            )  # fmt: skip
            await ws.close(CLOSE_POLICY, "streaming auth token required")
            return False
        if not received:
            return False
        first = ws.inbox.popleft()
        token = None
        with contextlib.suppress(Exception):
            frame = parse_frame(first) if isinstance(first, str) else None
            if isinstance(frame, ConnectedFrame):
                token = frame.auth_token
        if token is None or not _same(token, self.auth_token):
            logger.warning("refused a socket from %s: no valid streaming auth token", _peer(ws))
            await ws.close(CLOSE_POLICY, "streaming auth token required")
            return False
        return await connection.receive(first)

    async def _sweep_idle(self) -> None:
        """Close sockets that sent nothing for ``idle_seconds`` (their streams are finalized)."""
        idle = self.limits.idle_seconds
        while True:
            await asyncio.sleep(min(1.0, idle / 4))
            cutoff = time.monotonic() - idle
            idle_ones = [c for c in self.connections if c.last_activity < cutoff]
            for connection in idle_ones:
                logger.warning("stream %s: idle for %.0f s, closing", connection.log_id, idle)
                connection.close_code = CLOSE_GOING_AWAY
                connection.close_reason = f"idle for {idle:g} s"
                connection.last_activity = float("inf")  # close once
            await asyncio.gather(
                *(c.transport.close(c.close_code, c.close_reason) for c in idle_ones),
                return_exceptions=True,
            )


def _raise_fd_limit() -> int:
    """Raise the soft file descriptor limit to the hard one; the limit now in force."""
    try:
        import resource
    except ImportError:  # not POSIX
        return 1 << 16
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            logger.debug("file descriptor limit stays at %d: %s", soft, exc)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class _QuietAccept:
    """An event loop exception handler that reports failing ``accept()`` calls (out of file
    descriptors, say) once per ``ACCEPT_LOG_SECONDS`` with a count, not once per attempt."""

    ACCEPT_LOG_SECONDS = 10.0

    def __init__(self, previous: Callable[..., Any] | None) -> None:
        self.previous = previous
        self.suppressed = 0
        self._last = -float("inf")

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if "accept" not in str(context.get("message", "")):
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - self._last < self.ACCEPT_LOG_SECONDS:
            self.suppressed += 1
            return
        self._last = now
        logger.error(
            "accepting sockets fails: %s (%s); %d more such failures since the last report; "
            "accepting pauses and retries",
            context.get("message"), context.get("exception"), self.suppressed,
        )  # fmt: skip
        self.suppressed = 0


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _peer(ws: ServerConnection) -> str:
    address = ws.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


def serve_blocking(
    handler: HandlerFactory | type[StreamHandler] = StreamHandler, **server_options: Any
) -> None:
    """Run a media server in this thread until SIGTERM/SIGINT (what ``serve`` does);
    ``server_options`` are ``MediaServer``'s keyword arguments."""
    asyncio.run(MediaServer(handler, **server_options).serve_forever())
