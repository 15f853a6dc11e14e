"""Plain HTTP beside the media socket: Telnyx status callbacks and the TeXML answer.

Routes (paths configurable):

* ``GET|POST /callbacks/stream``: a stream status callback. When a Telnyx public key is set,
  the Ed25519 signature must verify (else 401); the event then goes to ``on_status`` of the
  live stream it names (by stream id, else by call id) and to the server-wide hook.
* ``GET|POST /texml``: the TeXML that answers an incoming call by streaming it to this server.
* ``GET /metrics``: Prometheus text format, when the server exposes metrics (``metrics.py``).

``HttpRoutes.handle`` is framework-neutral (``HttpRequest`` in, ``HttpResponse`` out); the
websockets server calls it through ``process_request`` and the ASGI app through its own
adapter, so both serve the same routes.

Why ``HttpBodyConnection``: websockets parses only the request head and refuses any request
with a body (``Request.parse`` raises "unsupported request body" for a non-zero
Content-Length; the connection is then closed without a response). Telnyx POSTs its callbacks
with a form body. ``HttpBodyConnection`` (passed as ``create_connection``, the documented hook
for customising connections) reads such a body off the socket before websockets sees the
head (with h11, the ``telnyx`` extra, imported on the first body), then hands websockets the
head without its body framing, and ``process_request`` finds the body on the connection. A
WebSocket upgrade has no body and passes through untouched; once the head has passed, every
later byte goes straight to websockets.

Why a plain request's head goes to websockets alone: websockets parses whatever follows the
request as WebSocket frames, so a pipelined second request ("GET " is a frame with reserved
bits set) failed the connection before the first was answered: no answer at all. Every answer
here says ``Connection: close``, so the bytes after a plain request's head are dropped.

Why ``refuse_duplicate_headers``: websockets' ``Headers.get`` raises ``MultipleValuesError``
for a name sent twice, which ``process_request`` turned into a 500; a request that repeats a
header meant to be single (the auth token, ``Upgrade``, ``Host``...) is a client error: 400.

Without a Telnyx public key, anyone who can reach the port can post status callbacks: the
routes say so once, at start-up; ``require_signatures`` makes the missing key an error.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import logging
import os
import re
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from types import ModuleType
from typing import Any, ClassVar, NoReturn
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from mediastream.errors import MediaStreamError, install_hint
from mediastream.metrics import ServerMetrics
from mediastream.playback import PlaybackConfig
from mediastream.protocol.frames import AUTH_TOKEN_KEY
from mediastream.streams import Stream as LiveStream
from mediastream.streams import StreamRegistry
from mediastream.telnyx.texml import (
    Stream,
    TexmlError,
    VerbName,
    add_stream_arguments,
    stream_from_args,
    stream_texml,
)
from mediastream.telnyx.webhooks import (
    PayloadError,
    SignatureError,
    SignatureVerifier,
    StreamStatusEvent,
    parse_status_callback,
)

logger = logging.getLogger(__name__)

CALLBACK_PATH = "/callbacks/stream"
TEXML_PATH = "/texml"
METRICS_PATH = "/metrics"
STREAM_PATH = "/stream"
MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 256 * 1024
MAX_BODY_CHUNKS = 256  # h11 takes 8 µs a chunk: 2 ms per request at most; callbacks need 1
BODY_SECONDS = 5.0  # below websockets' handshake timeout (10 s), so that 408 gets sent
# Headers a request may carry once; websockets' Headers.get raises on a second one.
SINGLETON_HEADERS = (
    "host",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    AUTH_TOKEN_KEY,
    "content-type",
    "telnyx-signature-ed25519",
    "telnyx-timestamp",
)

StatusHook = Callable[[StreamStatusEvent], Awaitable[None]]


class SignatureConfigError(MediaStreamError, ValueError):
    """Signatures are required, but no key to verify them with was given."""


@dataclass(frozen=True)
class HttpRequest:
    """One plain HTTP request, whichever server read it. Header names are lower case."""

    method: str
    path: str
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    peer: str = "?"
    root_path: str = ""  # where an ASGI app is mounted: routes are below it


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


class HttpRoutes:
    """The HTTP routes, configured once; ``attach`` tells them where the live streams are.

    ``stream`` is the ``<Stream>`` template of the TeXML answer: its ``url`` (if set) is the
    public WebSocket address; otherwise the address is built from the request's ``Host`` /
    ``X-Forwarded-Host`` and ``X-Forwarded-Proto`` plus ``stream_path``. Without a
    ``statusCallback`` in the template, the answer points callbacks at this server too.

    Without ``public_key``, status callbacks are not authenticated (a warning says so when
    the routes are attached to a server); ``require_signatures=True`` makes that an error.
    """

    def __init__(
        self,
        *,
        public_key: str | bytes | None = None,
        stream: Stream | None = None,
        verb: VerbName = "connect",
        pause: int | None = None,
        on_status: StatusHook | None = None,
        callback_path: str | None = CALLBACK_PATH,
        texml_path: str | None = TEXML_PATH,
        stream_path: str = STREAM_PATH,
        metrics_path: str | None = METRICS_PATH,
        require_signatures: bool = False,
    ) -> None:
        if require_signatures and not public_key and callback_path:
            raise SignatureConfigError(
                "signatures are required but no Telnyx public key is set "
                "(--telnyx-public-key or $TELNYX_PUBLIC_KEY)"
            )
        self.verifier = SignatureVerifier(public_key) if public_key else None
        self.require_signatures = require_signatures
        self.stream = stream or Stream()
        self.verb: VerbName = verb
        self.pause = pause
        self.on_status = on_status
        self.callback_path = callback_path
        self.texml_path = texml_path
        self.stream_path = stream_path
        self.metrics_path = metrics_path
        self.metrics: ServerMetrics | None = None  # set by a server that exposes metrics
        self._registry: StreamRegistry | None = None
        self._warned_get = False
        self._warned_unsigned = False

    def attach(self, registry: StreamRegistry) -> None:
        """Where status events find their streams: the server's registry (live or suspended).

        A server attaches its routes once, at start-up: the time to say that, without a key,
        anyone who reaches the port can post callbacks (forged ones are accepted silently).
        """
        self._registry = registry
        if self.verifier is None and self.callback_path and not self._warned_unsigned:
            self._warned_unsigned = True
            logger.warning(
                "status callbacks at %s are not authenticated: set the Telnyx public key "
                "(serve --telnyx-public-key or $TELNYX_PUBLIC_KEY) to verify their "
                "signatures, and --require-signatures to refuse to start without it",
                self.callback_path,
            )

    # ------------------------------------------------------------ dispatch

    async def handle(self, request: HttpRequest) -> HttpResponse | None:
        """The response for ``request``, or None when no route wants it (an unknown GET)."""
        if request.path == self.metrics_path and self.metrics is not None:
            return self._metrics(request, self.metrics)
        if request.path == self.callback_path:
            route = self._status_callback
        elif request.path == self.texml_path:
            route = self._texml
        elif request.method in ("GET", "HEAD"):
            return None
        else:
            return HttpResponse.text(HTTPStatus.NOT_FOUND, "not found\n")
        if request.method not in ("GET", "POST"):
            allow = (("Allow", "GET, POST"),)
            return HttpResponse.text(HTTPStatus.METHOD_NOT_ALLOWED, "GET or POST\n", headers=allow)
        return await route(request)

    async def process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        """The websockets ``process_request`` hook: a response for our routes, else None."""
        if "Upgrade" in request.headers:  # a WebSocket handshake: the media path, untouched
            return None
        body_status = getattr(ws, "body_status", None)
        if body_status is not None:
            reason = getattr(ws, "body_reason", "") or body_status.phrase
            return to_websockets(HttpResponse.text(body_status, f"{reason}\n"))
        path, _, query = request.path.partition("?")
        response = await self.handle(
            HttpRequest(
                method=request.method,
                path=path,
                query=query,
                headers={k.lower(): v for k, v in request.headers.raw_items()},
                body=getattr(ws, "request_body", b""),
                peer=_peer(ws.remote_address),
            )
        )
        return None if response is None else to_websockets(response)

    # ------------------------------------------------------------ routes

    @staticmethod
    def _metrics(request: HttpRequest, metrics: ServerMetrics) -> HttpResponse:
        """Prometheus text format; pending counts are pushed first (see metrics.py)."""
        if request.method != "GET":
            allow = (("Allow", "GET"),)
            return HttpResponse.text(HTTPStatus.METHOD_NOT_ALLOWED, "GET only\n", headers=allow)
        body, content_type = metrics.render()
        return HttpResponse(HTTPStatus.OK, body, content_type)

    async def _status_callback(self, request: HttpRequest) -> HttpResponse:
        if self.verifier is not None:
            try:
                self.verifier.verify(request.body, request.headers)
            except SignatureError as exc:
                logger.warning("status callback from %s rejected: %s", request.peer, exc)
                return HttpResponse.text(HTTPStatus.UNAUTHORIZED, "signature rejected\n")
            if request.method == "GET" and request.query and not self._warned_get:
                self._warned_get = True
                logger.warning(
                    "GET status callbacks carry their fields in the query string, which the "
                    "Telnyx signature does not cover: use statusCallbackMethod=POST"
                )
        try:
            event = parse_status_callback(
                request.body, content_type=request.headers.get("content-type"), query=request.query
            )
        except PayloadError as exc:
            logger.warning("status callback from %s unreadable: %s", request.peer, exc)
            return HttpResponse.text(HTTPStatus.BAD_REQUEST, f"{exc}\n")
        await self.deliver(event)
        return HttpResponse.text(HTTPStatus.OK, "ok\n")

    async def deliver(self, event: StreamStatusEvent) -> int:
        """Hand ``event`` to the server hook and to each stream it names; count those streams.

        A handler's ``on_status`` runs like its other methods: an exception is logged and ends
        that stream only.
        """
        if self.on_status is not None:
            try:
                await self.on_status(event)
            except Exception:
                logger.exception("on_status hook raised for %s", event.event)
        targets = self.find_streams(event)
        if not targets:
            logger.info(
                "status %s for stream %s (call %s): no stream here",
                event.event, event.stream_sid, event.call_sid,
            )  # fmt: skip
        for stream in targets:
            logger.info("stream %s: status %s", stream.stream_id, event.event)
            if hasattr(stream.handler, "on_status"):
                await stream.call_handler("on_status", event)
        return len(targets)

    def find_streams(self, event: StreamStatusEvent) -> list[LiveStream]:
        """Streams named by the event: by stream id, or else every stream of its call."""
        if self._registry is None:
            return []
        streams = self._registry.streams
        if event.stream_sid:
            stream = streams.get(event.stream_sid)
            if stream is not None and stream.handler is not None:
                return [stream]
        if event.call_sid:
            return [
                s
                for s in streams.values()
                if s.handler is not None and s.call.call_control_id == event.call_sid
            ]
        return []

    async def _texml(self, request: HttpRequest) -> HttpResponse:
        try:
            stream = self.stream_for(request)
            document = stream_texml(stream, self.verb, pause=self.pause)
        except TexmlError as exc:
            logger.warning("TeXML for %s not built: %s", request.peer, exc)
            return HttpResponse.text(HTTPStatus.BAD_REQUEST, f"{exc}\n")
        logger.info("TeXML answer for %s: stream to %s", request.peer, stream.url)
        return HttpResponse(HTTPStatus.OK, document.encode(), "text/xml; charset=utf-8")

    def stream_for(self, request: HttpRequest) -> Stream:
        """The template, with the public addresses this request came through filled in.

        The callback address follows the stream address: same host, https for wss.
        """
        values = self.stream.model_dump()
        if values["url"] and (values["status_callback"] or not self.callback_path):
            return self.stream
        if not values["url"]:
            host, secure = _public_host(request.headers)
            if not host:
                raise TexmlError("Stream", [("url", "no Host header: set a public URL")])
            path = request.root_path + self.stream_path
            values["url"] = f"{'wss' if secure else 'ws'}://{host}{path}"
        if not values["status_callback"] and self.callback_path:
            parts = urlsplit(values["url"])
            scheme = "https" if parts.scheme.lower() == "wss" else "http"
            path = request.root_path + self.callback_path
            values["status_callback"] = f"{scheme}://{parts.netloc}{path}"
        return Stream(**values)


def install_metrics(registry: StreamRegistry, routes: HttpRoutes) -> ServerMetrics:
    """Metrics for one server: fed by ``registry``, served by ``routes`` at ``/metrics``."""
    metrics = ServerMetrics(lambda: [stream.call for stream in registry.streams.values()])
    registry.metrics = routes.metrics = metrics
    return metrics


def _first(value: str | None) -> str:
    return (value or "").split(",", 1)[0].strip()


def _public_host(headers: Mapping[str, str]) -> tuple[str, bool]:
    """(host[:port], secure) as the caller saw us, through a proxy if there is one."""
    host = _first(headers.get("x-forwarded-host")) or _first(headers.get("host"))
    proto = _first(headers.get("x-forwarded-proto")).lower()
    return host, proto in ("https", "wss")


def _peer(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


def refuse_duplicate_headers(ws: ServerConnection, request: Request) -> Response | None:
    """400 for a request that repeats a header meant to be single, else None.

    Called first in ``process_request``: every later ``request.headers.get`` is then safe.
    """
    headers = request.headers
    for name in SINGLETON_HEADERS:
        if name in headers and len(headers.get_all(name)) > 1:
            reason = f"duplicate {name} header"
            logger.warning("refused a request from %s: %s", _peer(ws.remote_address), reason)
            return to_websockets(HttpResponse.text(HTTPStatus.BAD_REQUEST, reason + "\n"))
    return None


def to_websockets(response: HttpResponse) -> Response:
    """A websockets ``Response`` (the connection closes after it, as websockets does)."""
    status = HTTPStatus(response.status)
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(response.body))),
            ("Content-Type", response.content_type),
            *response.headers,
        ]
    )
    return Response(status.value, status.phrase, headers, response.body)


# ------------------------------------------------------------------ request bodies

_HEADER_LINE = re.compile(rb"^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*$")
_NO_H11 = f"request bodies need h11: {install_hint('telnyx')}"
_warned_no_h11 = False


def _load_h11() -> ModuleType | None:
    """h11 parses request bodies; it is the ``telnyx`` extra, imported on the first body."""
    global _warned_no_h11
    try:
        import h11
    except ImportError:
        if not _warned_no_h11:
            _warned_no_h11 = True
            logger.error("a request with a body was refused: %s", _NO_H11)
        return None
    return h11


class HttpBodyConnection(ServerConnection):
    """A websockets ``ServerConnection`` that also reads plain-HTTP request bodies.

    Only a request whose head announces a body (``Content-Length`` > 0 or a
    ``Transfer-Encoding``) and is not a WebSocket upgrade is held back until its body is in;
    ``request_body`` then holds it, or ``body_status`` and ``body_reason`` say why it could
    not be read (400, 408, 413, 501). A WebSocket upgrade passes through as it arrives.

    The body is parsed by h11, fed each piece once as it arrives: linear time. (The parser
    this replaced re-read the whole buffer on every read: a POST of 1-byte chunks sent in
    600-byte pieces took 6.8 s of CPU for 40 000 chunks, and 6 such clients made 42 % of
    20 live calls' frames over 100 ms late.) h11 still costs about 8 µs per chunk, all of it
    on the event loop, hence ``max_body_chunks``. The limits are class attributes, process
    wide, because websockets builds the connection before any route is known; ``serve``
    sets ``body_seconds`` from ``--body-timeout``.
    """

    max_body_bytes: ClassVar[int] = MAX_BODY_BYTES
    """Largest body accepted, decoded; on the wire, framing may add ``MAX_HEAD_BYTES``."""
    max_body_chunks: ClassVar[int] = MAX_BODY_CHUNKS
    """Most chunks in one chunked body: bounds the parsing time a request may take."""
    body_seconds: ClassVar[float] = BODY_SECONDS
    """Time from the end of the head to the end of the body, else 408."""
    _warned: ClassVar[set[int]] = set()  # statuses already logged as warnings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request_body = b""
        self.body_status: HTTPStatus | None = None
        self.body_reason = ""
        self._buffer: bytearray | None = bytearray()  # None once the head has gone through
        self._scanned = 0  # the end of the head is not before this offset of the buffer
        self._head: bytes | None = None  # the head to forward once the body is in
        self._parser: Any = None  # an h11.Connection while a body is read
        self._h11: Any = None
        self._body = bytearray()
        self._chunks = 0
        self._wire = 0  # bytes received after the head (body and its chunk framing)
        self._deadline: asyncio.TimerHandle | None = None
        self._discard = False

    def data_received(self, data: bytes) -> None:
        if self._buffer is None:
            if not self._discard:
                super().data_received(data)
            return
        if self._parser is not None:
            self._feed(data)
            return
        self._buffer += data
        self._read_head()

    def eof_received(self) -> bool | None:
        if self._buffer is not None:
            if self._head is not None:  # closed before the body was in
                self._fail(HTTPStatus.BAD_REQUEST, "connection closed before the body was in")
            else:
                self._pass_through()
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

    # ------------------------------------------------------------ steps

    def _read_head(self) -> None:
        """Once the head is in: pass an upgrade through, forward a bodiless request's head
        alone (bytes after it, such as a pipelined request, are dropped: every answer says
        ``Connection: close``), or start reading the body."""
        buffer = self._buffer
        assert buffer is not None
        end = buffer.find(b"\r\n\r\n", max(0, self._scanned - 3))
        if end < 0:
            self._scanned = len(buffer)
            if len(buffer) > MAX_HEAD_BYTES:
                self._pass_through()  # websockets answers "header fields too large"
            return
        lines = bytes(buffer[:end]).split(b"\r\n")
        fields = [(m[1].lower(), m[2]) for line in lines[1:] if (m := _HEADER_LINE.match(line))]
        names = {name for name, _ in fields}
        if b"upgrade" in names:
            self._pass_through()
            return
        kept = [lines[0]] + [
            line
            for line in lines[1:]
            if not line.lower().startswith((b"content-length:", b"transfer-encoding:"))
        ]
        self._head = b"\r\n".join(kept) + b"\r\n\r\n"
        lengths = {value for name, value in fields if name == b"content-length"}
        if lengths <= {b"0"} and b"transfer-encoding" not in names:
            self._forward_head()
            return
        h11 = self._h11 = _load_h11()
        if h11 is None:
            self._fail(HTTPStatus.NOT_IMPLEMENTED, _NO_H11)
            return
        self._parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._deadline = self.loop.call_later(self.body_seconds, self._too_slow)
        data, self._buffer = bytes(buffer), bytearray()
        self._wire = -(end + 4)  # the head is not body framing
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Give h11 the new bytes and take the events they complete."""
        h11, parser = self._h11, self._parser
        self._wire += len(data)
        if self._wire > self.max_body_bytes + MAX_HEAD_BYTES:
            self._fail(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large")
            return
        try:
            parser.receive_data(data)
            while True:
                event = parser.next_event()
                kind = type(event)
                if kind is h11.Data:
                    self._body += event.data
                    self._chunks += event.chunk_start
                    if len(self._body) > self.max_body_bytes:
                        self._fail(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large")
                        return
                    if self._chunks > self.max_body_chunks:
                        reason = f"body in more than {self.max_body_chunks} chunks"
                        self._fail(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, reason)
                        return
                elif kind is h11.Request:
                    if not self._accept_head(event):
                        return
                elif kind is h11.EndOfMessage:
                    self.request_body = bytes(self._body)
                    self._forward_head()
                    return
                else:  # NEED_DATA; PAUSED cannot come before EndOfMessage
                    return
        except h11.RemoteProtocolError as exc:
            self._fail(HTTPStatus(exc.error_status_hint), str(exc))

    def _accept_head(self, request: Any) -> bool:
        """h11 has read the head: refuse an announced length over the limit, else go on
        (answering ``Expect: 100-continue`` if the client waits for it)."""
        for name, value in request.headers:
            if name == b"content-length" and int(value) > self.max_body_bytes:
                self._fail(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large")
                return False
        parser = self._parser
        if parser.they_are_waiting_for_100_continue and not parser.trailing_data[0]:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    def _too_slow(self) -> None:
        self._deadline = None
        if self._parser is not None:
            self._fail(
                HTTPStatus.REQUEST_TIMEOUT, f"body not complete within {self.body_seconds:g} s"
            )

    def _fail(self, status: HTTPStatus, reason: str) -> None:
        self.body_status, self.body_reason = status, reason
        if status.value not in self._warned:
            self._warned.add(status.value)  # once per kind: a flood must not flood the log
            logger.warning("request body from %s refused: %d %s", _peer(self.remote_address),
                           status.value, reason)  # fmt: skip
        self._forward_head()

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _forward_head(self) -> None:
        """websockets gets the head without body framing; later bytes are dropped."""
        self._stop_deadline()
        head, self._head, self._buffer, self._parser = self._head or b"", None, None, None
        self._body = bytearray()
        self._discard = True
        super().data_received(head)

    def _pass_through(self) -> None:
        buffered, self._buffer = bytes(self._buffer or b""), None
        # From now on the transport calls websockets directly: no Python call of ours in
        # front of every media frame.
        self.data_received = super().data_received  # type: ignore[method-assign]
        super().data_received(buffered)


# ------------------------------------------------------------------ command line


def add_http_arguments(parser: argparse.ArgumentParser) -> None:
    """``serve`` flags for the TeXML answer and the status callbacks."""
    group = parser.add_argument_group(
        "Telnyx",
        f"HTTP on the same port: {TEXML_PATH} answers a call with TeXML that streams it here; "
        f"{CALLBACK_PATH} takes stream status callbacks. The --bidirectional-* flags also set "
        "what the server plays back (a handler's own playback wins, with a warning if it "
        "differs); unset, both follow Telnyx's defaults (mp3; PCMU at 8000 Hz for rtp).",
    )
    add_stream_arguments(
        group,
        url_flag="--public-url",
        url_required=False,
        url_help="the wss:// address Telnyx should stream to (default: built from each "
        f"request's Host and X-Forwarded-Proto/-Host, path {STREAM_PATH})",
    )
    group.add_argument(
        "--texml-verb",
        choices=["connect", "start"],
        default="connect",
        help="connect keeps the call up while it streams (default %(default)s)",
    )
    group.add_argument("--texml-pause", type=int, metavar="SECONDS", help="<Pause> after it")
    group.add_argument(
        "--telnyx-public-key",
        default=os.environ.get("TELNYX_PUBLIC_KEY"),
        metavar="BASE64",
        help="verify callback signatures with this Ed25519 key (default $TELNYX_PUBLIC_KEY)",
    )
    group.add_argument(
        "--require-signatures",
        action="store_true",
        help="refuse to start without a Telnyx public key (else unsigned callbacks are "
        "accepted, with a warning at start-up)",
    )
    group.add_argument(
        "--body-timeout",
        type=float,
        default=BODY_SECONDS,
        metavar="SECONDS",
        help="time a request body (status callback, TeXML POST) may take after its head; "
        "later gets 408 (%(default)s)",
    )


class UsageExit(SystemExit):
    """An expected user error: exit status 2; ``str()`` is the message (already printed)."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _usage_error(message: str) -> NoReturn:
    print(f"mediastream: error: {message}", file=sys.stderr)
    raise UsageExit(message)


def http_routes_from_args(args: argparse.Namespace) -> HttpRoutes:
    """The routes the ``serve`` flags describe; a bad flag value is a usage error (exit 2).

    Also sets the process-wide body deadline of ``HttpBodyConnection`` (``--body-timeout``).
    """
    timeout = getattr(args, "body_timeout", BODY_SECONDS)
    if not timeout > 0:
        _usage_error(f"--body-timeout must be more than 0, not {timeout}")
    HttpBodyConnection.body_seconds = timeout
    try:
        return HttpRoutes(
            public_key=args.telnyx_public_key or None,
            stream=stream_from_args(args),
            verb=args.texml_verb,
            pause=args.texml_pause,
            require_signatures=getattr(args, "require_signatures", False),
        )
    except (MediaStreamError, ValueError) as exc:  # a bad key or <Stream> value, no key
        _usage_error(str(exc))


# ------------------------------------------------------------------ playback from the template

# rates fixed by the codec; bidirectionalSamplingRate matters only for the others (L16, OPUS)
_CODEC_RATES = {"PCMU": 8000, "PCMA": 8000, "G722": 16000}


def playback_from_stream(stream: Stream, base: PlaybackConfig | None = None) -> PlaybackConfig:
    """What the players send, from the ``<Stream>`` that tells Telnyx what to expect.

    One setting for both sides: the TeXML's bidirectional attributes, each left unset meaning
    Telnyx's default, which is ``PlaybackConfig``'s default too (mp3, PCMU, 8000). Before,
    ``serve --bidirectional-codec G722`` changed only the TeXML and the caller heard PCMU
    bytes played as G.722: noise.
    """
    base = base or PlaybackConfig()
    return replace(
        base,
        mode=stream.bidirectional_mode or base.mode,
        codec=stream.bidirectional_codec or base.codec,
        sample_rate=stream.bidirectional_sampling_rate or base.sample_rate,
    )


def describe_playback(config: PlaybackConfig) -> str:
    """``rtp G722 16000 Hz`` or ``mp3``: the part of a playback setting the carrier sees."""
    if config.mode == "mp3":
        return "mp3"
    codec = config.codec.upper()
    return f"rtp {codec} {_CODEC_RATES.get(codec, config.sample_rate)} Hz"


def playback_mismatch(requested: PlaybackConfig, played: PlaybackConfig) -> str | None:
    """Why audio sent as ``played`` is not what the carrier was asked for, or None.

    The carrier decodes what we send as it was told to; a difference here is heard as noise
    (or silence in mp3 mode), and nothing on the wire reports it.
    """
    asked, sent = describe_playback(requested), describe_playback(played)
    if asked == sent:
        return None
    return f"plays {sent}, but /texml asks Telnyx for {asked}: the caller will hear noise"


def check_handler_playback(handler: type, playback: PlaybackConfig) -> None:
    """Log once, at start-up, what callers get, and whether a handler's own ``playback``
    (which wins over the server's) differs from what /texml asks Telnyx for."""
    own = getattr(handler, "playback", None)
    if own is None:
        logger.info("playback to callers: %s, as /texml asks", describe_playback(playback))
        return
    problem = playback_mismatch(playback, own)
    if problem is None:
        logger.info(
            "playback to callers: %s (the handler's), as /texml asks", describe_playback(own)
        )
        return
    logger.warning(
        "handler %s %s; set --bidirectional-mode/-codec/-sampling-rate to match its playback",
        getattr(handler, "__name__", handler), problem,
    )  # fmt: skip
