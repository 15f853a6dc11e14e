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
head, then hands websockets the head without its body framing, and ``process_request`` finds
the body on the connection. A WebSocket upgrade has no body and passes through untouched;
once the head has passed, every later byte goes straight to websockets.
"""

from __future__ import annotations

import argparse
import email.utils
import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from mediastream.errors import MediaStreamError
from mediastream.metrics import ServerMetrics
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

StatusHook = Callable[[StreamStatusEvent], Awaitable[None]]


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
    ) -> None:
        self.verifier = SignatureVerifier(public_key) if public_key else None
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

    def attach(self, registry: StreamRegistry) -> None:
        """Where status events find their streams: the server's registry (live or suspended)."""
        self._registry = registry

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
            return to_websockets(HttpResponse.text(body_status, f"{body_status.phrase}\n"))
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


class HttpBodyConnection(ServerConnection):
    """A websockets ``ServerConnection`` that also reads plain-HTTP request bodies.

    Only a request whose head announces a body (``Content-Length`` > 0 or chunked
    ``Transfer-Encoding``) and is not a WebSocket upgrade is held back until its body is in;
    ``request_body`` then holds it, or ``body_status`` says why it could not be read (400,
    413, 501). Everything else is passed to websockets as it arrives.
    """

    max_body_bytes = MAX_BODY_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request_body = b""
        self.body_status: HTTPStatus | None = None
        self._buffer: bytearray | None = bytearray()  # None once the head has gone through
        self._head: bytes | None = None  # the head to forward once the body is in
        self._length: int | None = None  # Content-Length, or None for chunked
        self._discard = False

    def data_received(self, data: bytes) -> None:
        if self._buffer is None:
            if not self._discard:
                super().data_received(data)
            return
        self._buffer += data
        if self._head is None and not self._read_head():
            return
        body = self._read_body()
        if body is not None:
            self.request_body = body
            self._forward_head()

    def eof_received(self) -> bool | None:
        if self._buffer is not None:
            if self._head is not None:
                self.body_status = HTTPStatus.BAD_REQUEST  # closed before the body was in
                self._forward_head()
            else:
                self._pass_through()
        return super().eof_received()

    # ------------------------------------------------------------ steps

    def _read_head(self) -> bool:
        """True once a head that announces a body is held in ``_head``."""
        assert self._buffer is not None
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                self._pass_through()  # websockets answers "header fields too large"
            return False
        lines = bytes(self._buffer[:end]).split(b"\r\n")
        fields = [(m[1].lower(), m[2]) for line in lines[1:] if (m := _HEADER_LINE.match(line))]
        names = {name for name, _ in fields}
        lengths = {value for name, value in fields if name == b"content-length"}
        codings = [value.lower() for name, value in fields if name == b"transfer-encoding"]
        if b"upgrade" in names or (lengths <= {b"0"} and not codings):
            self._pass_through()
            return False
        kept = [lines[0]] + [
            line
            for line in lines[1:]
            if not line.lower().startswith((b"content-length:", b"transfer-encoding:"))
        ]
        self._head = b"\r\n".join(kept) + b"\r\n\r\n"
        del self._buffer[: end + 4]
        if codings:
            if codings != [b"chunked"]:
                return self._fail(HTTPStatus.NOT_IMPLEMENTED)
            self._length = None
        elif len(lengths) != 1 or not (text := next(iter(lengths))).isdigit():
            return self._fail(HTTPStatus.BAD_REQUEST)
        else:
            self._length = int(text)
            if self._length > self.max_body_bytes:
                return self._fail(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        if (b"expect", b"100-continue") in fields and not self._buffer:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    def _read_body(self) -> bytes | None:
        """The whole body once it is in, else None (too large or malformed: fail)."""
        buffer = self._buffer
        if buffer is None or self._head is None:
            return None
        if self._length is not None:
            return bytes(buffer[: self._length]) if len(buffer) >= self._length else None
        if len(buffer) > self.max_body_bytes + MAX_HEAD_BYTES:
            self._fail(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            return None
        try:
            body = _dechunk(bytes(buffer))
        except ValueError:
            self._fail(HTTPStatus.BAD_REQUEST)
            return None
        if body is not None and len(body) > self.max_body_bytes:
            self._fail(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            return None
        return body

    def _fail(self, status: HTTPStatus) -> bool:
        self.body_status = status
        self._forward_head()
        return False

    def _forward_head(self) -> None:
        """websockets gets the head without body framing; later bytes are dropped."""
        head, self._head, self._buffer = self._head or b"", None, None
        self._discard = True
        super().data_received(head)

    def _pass_through(self) -> None:
        buffered, self._buffer = bytes(self._buffer or b""), None
        # From now on the transport calls websockets directly: no Python call of ours in
        # front of every media frame.
        self.data_received = super().data_received  # type: ignore[method-assign]
        super().data_received(buffered)


def _dechunk(data: bytes) -> bytes | None:
    """Decode a complete chunked body; None if more is needed; ValueError if malformed."""
    body = bytearray()
    position = 0
    while True:
        end = data.find(b"\r\n", position)
        if end < 0:
            return None
        size_text = data[position:end].split(b";", 1)[0].strip()
        if not size_text or not re.fullmatch(rb"[0-9A-Fa-f]{1,8}", size_text):
            raise ValueError("bad chunk size")
        size = int(size_text, 16)
        position = end + 2
        if size == 0:
            while True:  # trailer fields, then an empty line
                end = data.find(b"\r\n", position)
                if end < 0:
                    return None
                if end == position:
                    return bytes(body)
                position = end + 2
        if len(data) < position + size + 2:
            return None
        body += data[position : position + size]
        if data[position + size : position + size + 2] != b"\r\n":
            raise ValueError("chunk not followed by CRLF")
        position += size + 2


# ------------------------------------------------------------------ command line


def add_http_arguments(parser: argparse.ArgumentParser) -> None:
    """``serve`` flags for the TeXML answer and the status callbacks."""
    group = parser.add_argument_group(
        "Telnyx",
        f"HTTP on the same port: {TEXML_PATH} answers a call with TeXML that streams it here; "
        f"{CALLBACK_PATH} takes stream status callbacks.",
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


def http_routes_from_args(args: argparse.Namespace) -> HttpRoutes:
    """The routes the ``serve`` flags describe; a bad flag value exits with its message."""
    try:
        return HttpRoutes(
            public_key=args.telnyx_public_key or None,
            stream=stream_from_args(args),
            verb=args.texml_verb,
            pause=args.texml_pause,
        )
    except (MediaStreamError, ValueError) as exc:  # a bad key or <Stream> value
        raise SystemExit(f"mediastream serve: {exc}") from None
