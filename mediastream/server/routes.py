"""Plain HTTP beside the media socket: Telnyx status callbacks, the TeXML answer, metrics.

Routes (paths configurable):

* ``GET|POST /callbacks/stream``: a stream status callback. When a Telnyx public key is set,
  the Ed25519 signature must verify (else 401); the event then goes to ``on_status`` of the
  live stream it names (by stream id, else by call id) and to the server-wide hook.
* ``GET|POST /texml``: the TeXML that answers an incoming call by streaming it to this server.
* ``GET /metrics``: Prometheus text format, when the server exposes metrics (``metrics.py``).
* ``GET /streams``, ``GET /calls``, ``GET /reports/<file>``: the live view (``live.py``), behind
  the streaming auth token when there is one.

Every route is also served under an instance prefix, ``/i/<id>/texml`` (``mediastream/
instance.py``), and the URLs the TeXML answer hands the carrier name this server's instance:
``/i/<id>/stream``, ``/i/<id>/callbacks/stream``. A load balancer routes by that element, so a
reconnect and a status callback come back here; one that names another instance (misrouted,
or its instance died) is served here all the same, and logged.

``HttpRoutes.handle`` is framework-neutral (``HttpRequest`` in, ``HttpResponse`` out); every
adapter reaches it through ``MediaCore.http``, which also answers ``/healthz``.

Without a Telnyx public key, anyone who can reach the port can post status callbacks: the
routes say so once, at start-up; ``require_signatures`` makes the missing key an error.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Protocol
from urllib.parse import urlsplit

from mediastream.config import Config
from mediastream.errors import SignatureConfigError
from mediastream.instance import instance_path, instance_url
from mediastream.logs import escape
from mediastream.runtime.core import HttpRequest, HttpResponse
from mediastream.runtime.observer import Observer
from mediastream.runtime.registry import Stream as LiveStream
from mediastream.runtime.registry import StreamRegistry
from mediastream.server.live import LiveView
from mediastream.telnyx.texml import Stream, TexmlError, VerbName, stream_texml
from mediastream.telnyx.webhooks import (
    PayloadError,
    SignatureError,
    SignatureVerifier,
    StreamStatusEvent,
    parse_status_callback,
)

__all__ = ["HttpRequest", "HttpResponse", "HttpRoutes", "SignatureConfigError"]

logger = logging.getLogger(__name__)

CALLBACK_PATH = "/callbacks/stream"
TEXML_PATH = "/texml"
METRICS_PATH = "/metrics"
STREAM_PATH = "/stream"

StatusHook = Callable[[StreamStatusEvent], Awaitable[None]]


class Metrics(Observer, Protocol):
    """An observer that can also render ``/metrics`` (``server/metrics.py``)."""

    def render(self) -> tuple[bytes, str]: ...


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
        live_view: bool = True,
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
        # (media port, HTTP port) when they differ (``serve --transport picows --http-port``):
        # a direct request's TeXML points the stream at the one and callbacks at the other
        self.ports: tuple[int, int] | None = None
        self.metrics: Metrics | None = None  # set by a server that exposes metrics
        # named in the URLs the TeXML hands out (``attach`` sets it from the server's config;
        # None: the URLs name no instance)
        self.instance_id: str | None = None
        self.live = LiveView() if live_view else None  # /streams, /calls, /reports/
        self._registry: StreamRegistry | None = None
        self._warned_get = False
        self._warned_unsigned = False

    def attach(
        self,
        registry: StreamRegistry,
        metrics: Metrics | None = None,
        *,
        config: Config | None = None,
        bind_host: str | None = None,
    ) -> None:
        """Where status events find their streams (the server's registry, live or suspended),
        and the metrics ``/metrics`` renders, if the server keeps any; the live view also
        needs the server's ``config`` (its token) and ``bind_host`` (None: not known, as under
        ASGI, and then taken as public).

        A server attaches its routes once, at start-up: the time to say that, without a key,
        anyone who reaches the port can post callbacks (forged ones are accepted silently).
        """
        self.metrics = metrics
        self._registry = registry
        if config is not None:
            self.instance_id = config.instance_id
        if self.live is not None:
            self.live.attach(registry, config or Config(), bind_host)
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
        if self.live is not None and self.live.wants(request.path):
            return await self.live.handle(request)
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

    # ------------------------------------------------------------ routes

    @staticmethod
    def _metrics(request: HttpRequest, metrics: Metrics) -> HttpResponse:
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
        if request.instance is not None and request.instance != self.instance_id:
            logger.info(
                "status %s for stream %s names instance %s, not this one; served here",
                escape(event.event), escape(event.stream_sid or "?"), request.instance,
            )  # fmt: skip
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
            await stream.call_handler("on_status", event)
        return len(targets)

    def find_streams(self, event: StreamStatusEvent) -> list[LiveStream]:
        """Streams named by the event: by stream id, or else every stream of its call."""
        if self._registry is None:
            return []
        registry = self._registry
        if event.stream_sid:
            stream = registry.get(event.stream_sid)
            if stream is not None and stream.handler is not None:
                return [stream]
        if event.call_sid:
            return [
                s
                for s in registry
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

        The callback address follows the stream address: same host, https for wss. Both name
        this instance (``/i/<id>/`` before the path), the template's ``url`` too; a template's
        own ``statusCallback`` is left as it is (it may point anywhere).
        """
        values = self.stream.model_dump()
        if values["url"] and self.instance_id is not None:
            values["url"] = instance_url(values["url"], self.instance_id)
        if values["url"] and (values["status_callback"] or not self.callback_path):
            return Stream(**values)
        # two ports, reached directly (a proxy routes by path on one public host instead)
        ports = None if values["url"] or "x-forwarded-host" in request.headers else self.ports
        if not values["url"]:
            host, secure = _public_host(request.headers)
            if not host:
                raise TexmlError("Stream", [("url", "no Host header: set a public URL")])
            host = _with_port(host, ports[0]) if ports else host
            path = request.root_path + self._named(self.stream_path)
            values["url"] = f"{'wss' if secure else 'ws'}://{host}{path}"
        if not values["status_callback"] and self.callback_path:
            parts = urlsplit(values["url"])
            scheme = "https" if parts.scheme.lower() == "wss" else "http"
            netloc = _with_port(parts.netloc, ports[1]) if ports else parts.netloc
            path = request.root_path + self._named(self.callback_path)
            values["status_callback"] = f"{scheme}://{netloc}{path}"
        return Stream(**values)

    def _named(self, path: str) -> str:
        """``path`` under this instance's prefix, when there is an instance id."""
        return path if self.instance_id is None else instance_path(self.instance_id, path)


def _with_port(host: str, port: int) -> str:
    """``host`` (``name``, ``name:port``, ``[v6]:port``) with ``port`` instead."""
    name = host if host.endswith("]") or ":" not in host else host.rsplit(":", 1)[0]
    return f"{name}:{port}"


def _first(value: str | None) -> str:
    return (value or "").split(",", 1)[0].strip()


def _public_host(headers: Mapping[str, str]) -> tuple[str, bool]:
    """(host[:port], secure) as the caller saw us, through a proxy if there is one."""
    host = _first(headers.get("x-forwarded-host")) or _first(headers.get("host"))
    proto = _first(headers.get("x-forwarded-proto")).lower()
    return host, proto in ("https", "wss")
