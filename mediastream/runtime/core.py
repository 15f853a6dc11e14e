"""``MediaCore``: the one API a server adapter calls, and all of the server's policy.

An adapter (websockets, ASGI, a faster transport) only moves bytes and messages. For each
socket it asks ``accept(peer, headers, transport)`` — a ``StreamConnection`` or a
``Refusal(status, reason)`` to answer the upgrade with — then hands every text message to
``receive`` and calls ``finish`` once the socket is gone. Plain HTTP requests go to
``http(request)``. The core owns the rest: the streaming auth token (checked in constant time,
never logged), socket and stream limits fitted into the file descriptor limit, the idle and
auth timeouts, the drain on SIGTERM (new sockets refused, ``/healthz`` says "draining", live
streams given ``drain_seconds``), and a shutdown that never waits forever for a stuck handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mediastream.config import INSTANCE_ID_RULE, Config
from mediastream.instance import is_instance_id, split_instance_path
from mediastream.media.recording import recover_recordings
from mediastream.protocol.frames import AUTH_TOKEN_KEY, ConnectedFrame, parse_frame
from mediastream.runtime.call import Transport
from mediastream.runtime.connection import StreamConnection
from mediastream.runtime.handler import HandlerFactory
from mediastream.runtime.lifecycle import CLOSE_GOING_AWAY, CLOSE_POLICY, Cause
from mediastream.runtime.observer import NO_OBSERVER, Observer
from mediastream.runtime.registry import StreamRegistry
from mediastream.warmup import warm_up

if TYPE_CHECKING:
    from mediastream.storage.uploader import Uploader

logger = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"
# File descriptors kept for everything but sockets and recordings (listening sockets, logs,
# libraries, capture files, a recording being opened).
FD_RESERVE = 64
_TICK_BATCH = 50  # streams whose reports are counted between two yields to the event loop


@dataclass(frozen=True)
class HttpRequest:
    """A plain HTTP request, whichever server library read it."""

    method: str
    path: str
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    peer: str = "?"
    root_path: str = ""  # where an ASGI app is mounted: routes are below it
    # the instance its URL named (``/i/<id>/...``, stripped from ``path`` by ``MediaCore.http``)
    instance: str | None = None


@dataclass(frozen=True)
class HttpResponse:
    """What a route answers; each server library turns it into its own response."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def text(cls, status: int, text: str, **kwargs: Any) -> HttpResponse:
        return cls(status, text.encode(), **kwargs)


@dataclass(frozen=True)
class Refusal:
    """A socket the server will not take: the upgrade is answered with ``status``."""

    status: int
    reason: str
    kind: str  # the metric label


Routes = Callable[[HttpRequest], Awaitable[HttpResponse | None]]


def _freeze_startup_objects() -> None:
    """``gc.collect()`` then ``gc.freeze()`` at every start, after start-up (modules, codecs,
    the model): the cyclic collector then never walks those objects again. A full collection
    walked them all, 40-60 ms of a stalled event loop in a server with numpy and friends loaded
    (every stream late by that much), and the per-frame work of speech detection made those
    collections frequent (``benchmarks/RESULTS.md``, "Server load with speech detection").

    Every start, not only the process's first: a process that starts servers again (an
    application's reload, a test suite) made objects since, and a full collection would walk
    them all (170 ms in a process that had run a few hundred servers). Collecting first keeps
    garbage out of the frozen set; it walks only what the last freeze left out."""
    gc.collect()
    gc.freeze()


class MediaCore:
    """Streams, limits, auth, drain and shutdown for any transport."""

    def __init__(
        self,
        handler: HandlerFactory,
        config: Config,
        *,
        observer: Observer = NO_OBSERVER,
        routes: Routes | None = None,
    ) -> None:
        if not is_instance_id(config.instance_id):
            raise ValueError(f"instance id {config.instance_id!r} must be {INSTANCE_ID_RULE}")
        self.config = config
        self.limits = config.limits
        self.auth_token = config.auth_token or None
        self.observer = observer
        self.routes = routes
        self.registry = StreamRegistry(handler, config.stream, observer=observer)
        self.registry.instance_id = config.instance_id  # named in piece descriptions
        self.registry.max_streams = self.limits.max_streams
        self.max_sockets = self.limits.max_sockets
        self.connections: set[StreamConnection] = set()
        self.sockets_total = 0
        self.draining = False
        self._tasks: dict[StreamConnection, asyncio.Task[Any]] = {}  # each socket's reader
        self._unread: dict[StreamConnection, Callable[[], Iterable[str | bytes]]] = {}
        self._awaiting_token: dict[StreamConnection, float] = {}  # accepted at (monotonic)
        self._sweeper: asyncio.Task[None] | None = None
        self._report_ticker: asyncio.Task[None] | None = None
        self._started = False
        self._stopped = False
        self._start_lock = asyncio.Lock()
        self.uploader: Uploader | None = None  # ``Config.upload``: made at start

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Folders, recordings a crash left, the descriptor budget, warm codecs (once)."""
        async with self._start_lock:
            if self._started:
                return
            options = self.config.stream
            for directory in (options.record_dir, options.capture_dir):
                if directory is not None:
                    directory.mkdir(parents=True, exist_ok=True)
            if options.record_dir is not None:
                await asyncio.to_thread(recover_recordings, options.record_dir)
                if self.config.upload is not None:
                    await self._start_uploads(options.record_dir)
            self._bound_file_descriptors()
            costs = await asyncio.to_thread(warm_up)  # before listening: no call waits for it
            asked = (options.speech, getattr(self.registry.handler_factory, "speech", None))
            if any(s is not None for s in asked):
                import mediastream.runtime.voice  # noqa: F401  (imported now, frozen below)
            if any(s is not None and s.detector == "silero" for s in asked):  # 0.1-0.2 s
                from mediastream.voice.detect import load_model

                await asyncio.to_thread(load_model)
            if costs:
                logger.debug(
                    "codecs ready in %.2f s (%s)",
                    sum(costs.values()), ", ".join(f"{k} {v:.2f} s" for k, v in costs.items()),
                )  # fmt: skip
            _freeze_startup_objects()
            logger.debug(
                "instance %s: the URLs handed to the carrier name it (/i/%s/...)",
                self.config.instance_id, self.config.instance_id,
            )  # fmt: skip
            self.observer.watch(self.registry.calls)
            self.observer.start()
            self._sweeper = asyncio.create_task(self._sweep())
            if options.reports:
                self._report_ticker = asyncio.create_task(self._tick_reports())
            self._started = True

    async def _start_uploads(self, record_dir: Path) -> None:
        """Finished recordings go to object storage; its backlog bound gates new streams."""
        from mediastream.storage.uploader import Uploader  # the S3 client only when asked

        assert self.config.upload is not None
        self.uploader = Uploader(
            self.config.upload,
            record_dir,
            instance_id=self.config.instance_id,
            resume_grace_seconds=self.config.stream.resume_grace_seconds,
        )
        await self.uploader.start()
        self.registry.admission = self.uploader.refusal

    def _bound_file_descriptors(self) -> None:
        """Fit the socket and stream limits in the file descriptor limit (raised to its hard
        maximum first), so that the process never runs out of descriptors under load."""
        budget = _raise_fd_limit() - FD_RESERVE
        wanted = self.limits.max_streams
        if wanted > budget // 2:
            # a cut of a few percent (10000 to 9968 under a 20000 hard limit) is no news
            small = budget // 2 >= 0.9 * wanted
            logger.log(
                logging.DEBUG if small else logging.INFO,
                "file descriptor limit allows %d streams, not %d: --max-streams lowered",
                budget // 2, wanted,
            )  # fmt: skip
        streams = self.registry.max_streams = min(wanted, budget // 2)
        self.max_sockets = min(self.limits.max_sockets or budget, budget - streams)

    async def drain(self) -> None:
        """Refuse new sockets, give live ones ``drain_seconds`` to end, then shut down."""
        self.draining = True
        seconds = self.limits.drain_seconds
        deadline = time.monotonic() + seconds
        self.registry.limits.deadline = deadline  # handler methods are bounded from now on
        logger.info("draining: %d live socket(s), up to %.0f s", len(self.connections), seconds)
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self.connections:
            logger.info("drain time over: closing %d socket(s)", len(self.connections))
        await self.shutdown()

    async def shutdown(self) -> None:
        """Close every socket now, finalize every recording (idempotent).

        Readers still running get ``handler_stop_seconds``, then are cancelled (logged); one
        whose handler swallows the cancellation is abandoned, its unread audio recorded: a
        stuck handler never keeps the process from exiting.
        """
        if self._stopped:
            return
        self._stopped = True
        self.draining = True
        for task in (self._sweeper, self._report_ticker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        limits = self.registry.limits
        if limits.deadline is None:
            limits.deadline = time.monotonic()
        # a close handshake waits for the peer: a socket whose reader is stuck (reading
        # paused) would hold shutdown for the whole close timeout, so closes run beside it
        reason = "server shutting down"
        closes = [
            asyncio.ensure_future(c.transport.close(CLOSE_GOING_AWAY, reason))
            for c in self.connections
        ]
        if not await self._readers_done(limits.stop_seconds):
            for connection, task in list(self._tasks.items()):
                if not task.done():
                    logger.warning(
                        "stream %s: still busy %.1f s after closing; cancelling its handler",
                        connection.log_id, limits.stop_seconds,
                    )  # fmt: skip
                    limits.stop(task)
            if not await self._readers_done(limits.stop_seconds):
                for connection, task in list(self._tasks.items()):
                    if not task.done():
                        logger.error(
                            "stream %s: handler ignored its cancellation; abandoning it",
                            connection.log_id,
                        )  # fmt: skip
                        unread = self._unread.get(connection)
                        connection.abandon(unread() if unread is not None else ())
        if closes:
            await asyncio.wait(closes, timeout=limits.stop_seconds)
            for close in closes:
                if not close.done():
                    close.cancel()
                elif not close.cancelled():
                    close.exception()  # retrieved: a close that failed is a socket already gone
        await self.registry.close_all()
        if self.uploader is not None:  # what the shutdown finalized goes up, bounded
            await self.uploader.close()
        await self.observer.close()
        logger.debug("server stopped; %d socket(s) served", self.sockets_total)

    def readers(self) -> list[asyncio.Task[Any]]:
        """The task reading each open socket."""
        return list(self._tasks.values())

    async def _readers_done(self, timeout: float) -> bool:
        pending = [task for task in self._tasks.values() if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        return all(task.done() for task in self._tasks.values())

    # ------------------------------------------------------------ sockets

    def refusal(self, peer: str, headers: Mapping[str, str]) -> Refusal | None:
        """Why a new socket cannot be taken now, or None. The stream limit is applied at
        ``start`` (closed with 1013), where the id is known: a socket resuming a suspended
        stream, or taking over a live one, needs no new slot."""
        refusal: Refusal | None = None
        if self.draining:
            refusal = Refusal(HTTPStatus.SERVICE_UNAVAILABLE, "server is draining", "draining")
        elif self.max_sockets is not None and len(self.connections) >= self.max_sockets:
            reason = f"socket limit reached ({self.max_sockets} sockets)"
            refusal = Refusal(HTTPStatus.SERVICE_UNAVAILABLE, reason, "socket_limit")
        elif self.auth_token is not None:
            token = headers.get(AUTH_TOKEN_KEY)
            if token is not None and not _same(token, self.auth_token):
                reason = "invalid streaming auth token"
                refusal = Refusal(HTTPStatus.UNAUTHORIZED, reason, "bad_auth_token")
        if refusal is not None:
            self.observer.refused(refusal.kind)
            if refusal.kind != "draining":
                logger.warning("refused a socket from %s: %s", peer, refusal.reason)
        return refusal

    def accept(
        self,
        peer: str,
        headers: Mapping[str, str],
        transport: Transport,
        *,
        unread: Callable[[], Iterable[str | bytes]] | None = None,
        path: str = "",
    ) -> StreamConnection | Refusal:
        """Take a socket (call it from the task that will read it), or say why not.

        ``unread`` lists messages the adapter has read and not yet handed over: if shutdown
        must abandon this socket, their audio still goes to the recording. ``path`` is the
        upgrade's: a socket whose URL names another instance is served all the same (its
        stream id is logged at ``start``).
        """
        refused = self.refusal(peer, headers)
        if refused is not None:
            return refused
        connection = StreamConnection(
            self.registry, transport, peer=peer, auth_token=self.auth_token
        )
        self.connections.add(connection)
        self.sockets_total += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks[connection] = task
        if unread is not None:
            self._unread[connection] = unread
        named = split_instance_path(path.partition("?")[0])[0]
        if named is not None and named != self.config.instance_id:
            connection.named_instance = named
        if self.auth_token is not None and headers.get(AUTH_TOKEN_KEY) is None:
            self._awaiting_token[connection] = time.monotonic()
        return connection

    async def receive(self, connection: StreamConnection, message: str | bytes) -> bool:
        """Hand one message to the socket's stream; False: close with ``connection.close_code``.

        Without the token in the upgrade headers, the first message must carry it.
        """
        if connection in self._awaiting_token:
            del self._awaiting_token[connection]
            if not self._token_in(message):
                self.observer.refused("no_auth_token")
                logger.warning(
                    "refused a socket from %s: no valid streaming auth token", connection.peer
                )
                connection.life.close(CLOSE_POLICY, "streaming auth token required", Cause.REFUSED)
                return False
        return await connection.receive(message)

    async def run_reader(self, connection: StreamConnection, reading: Awaitable[None]) -> None:
        """Run an adapter's read loop for ``connection``, with what every adapter does when it
        ends early: a shutdown that cancelled it on purpose still records the messages read and
        not handed over (``accept``'s ``unread``); a bug on this socket's path ends this socket
        (1011, audio kept), never the server. Any other cancellation propagates."""
        try:
            await reading
        except asyncio.CancelledError:
            if not self.was_stopped(connection):
                raise
            unread = self._unread.get(connection)
            for message in unread() if unread is not None else ():  # the handler was stuck
                await self.receive(connection, message)
        except Exception as exc:
            logger.exception("stream %s: internal error; closing this socket", connection.log_id)
            connection.break_off(f"internal error ({type(exc).__name__})")
            with contextlib.suppress(Exception):
                await connection.transport.close(connection.close_code, connection.close_reason)

    def was_stopped(self, connection: StreamConnection) -> bool:
        """True (once) if shutdown cancelled this socket's reader on purpose: the adapter
        then records what it still holds and finishes, instead of propagating."""
        return self.registry.limits.was_stopped(self._tasks.get(connection))

    async def finish(self, connection: StreamConnection) -> None:
        """The socket is gone: its stream ends or waits for a reconnect."""
        self.connections.discard(connection)
        self._awaiting_token.pop(connection, None)
        try:
            await connection.finish()
        except Exception:
            logger.exception("stream %s: finishing the stream failed", connection.log_id)
        finally:
            self._tasks.pop(connection, None)
            self._unread.pop(connection, None)

    def _token_in(self, first: str | bytes) -> bool:
        assert self.auth_token is not None
        with contextlib.suppress(Exception):
            frame = parse_frame(first) if isinstance(first, str) else None
            if isinstance(frame, ConnectedFrame) and frame.auth_token is not None:
                return _same(frame.auth_token, self.auth_token)
        return False

    async def _sweep(self) -> None:
        """Close sockets idle for ``idle_seconds``, and those that owe the auth token for
        longer than ``auth_seconds``."""
        idle, auth = self.limits.idle_seconds, self.limits.auth_seconds
        tick = min(1.0, idle / 4, auth / 4)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            closing: list[StreamConnection] = []
            for connection, since in list(self._awaiting_token.items()):
                if now - since >= auth:
                    del self._awaiting_token[connection]
                    self.observer.refused("no_auth_token")
                    logger.warning(
                        "refused a socket from %s: no streaming auth token within %g s",
                        connection.peer, auth,
                    )  # fmt: skip
                    reason = "streaming auth token required"
                    if connection.life.close(CLOSE_POLICY, reason, Cause.REFUSED):
                        closing.append(connection)
            for connection in list(self.connections):
                if connection.last_activity < now - idle and connection.close_idle(idle):
                    logger.warning("stream %s: idle for %.0f s, closing", connection.log_id, idle)
                    closing.append(connection)
            await asyncio.gather(
                *(c.transport.close(c.close_code, c.close_reason) for c in closing),
                return_exceptions=True,
            )

    async def _tick_reports(self) -> None:
        """Count what every stream's quality report kept (arrivals, lags, audio), once a
        level window (``level_window_seconds``).

        One loop over the streams, in compiled folds, instead of counting on each stream's
        frame path: there that code and its data were cold every time (a level fold took
        60-70 µs in a loaded server, against 4-5 µs here, where it stays warm from one stream
        to the next). It yields every ``_TICK_BATCH`` streams, so that a thousand streams
        never hold the loop long.
        """
        seconds = self.config.stream.level_window_seconds
        while True:
            await asyncio.sleep(seconds)
            self.registry.level_pool.tick()  # every stream's levels, in one pass
            for index, stream in enumerate(self.registry):
                if stream.figures is not None:
                    stream.figures.tick()
                if index % _TICK_BATCH == _TICK_BATCH - 1:
                    await asyncio.sleep(0)

    # ------------------------------------------------------------ HTTP

    async def http(self, request: HttpRequest) -> HttpResponse:
        """Every plain HTTP route: ``/healthz`` here, the others from ``routes``, else 404.

        Each route is also served under an instance prefix (``/i/<id>/texml``), this server's
        or another's: a request a load balancer sent here for a dead instance is served."""
        named, path = split_instance_path(request.path)
        if named is not None:
            request = dataclasses.replace(request, path=path, instance=named)
        if request.path == HEALTH_PATH and request.method in ("GET", "HEAD"):
            return self.health()
        if self.routes is not None:
            response = await self.routes(request)
            if response is not None:
                return response
        return HttpResponse.text(HTTPStatus.NOT_FOUND, "not found\n")

    def health(self) -> HttpResponse:
        """For a load balancer: 200 "ok" while serving, 503 "draining" once draining."""
        status = "draining" if self.draining else "ok"
        instance = self.config.instance_id  # which server answered, behind a load balancer
        state = {"status": status, "streams": len(self.connections), "instance": instance}
        code = HTTPStatus.SERVICE_UNAVAILABLE if self.draining else HTTPStatus.OK
        body = (json.dumps(state) + "\n").encode()
        return HttpResponse(code, body, content_type="application/json")


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


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
