"""The live view on the media port: ``GET /streams`` (JSON), ``GET /calls`` (a page), and
``GET /reports/<file>`` (an ended stream's report sidecar or its picture).

``/streams`` lists the live streams (``StreamRegistry.live_snapshots``), a page at a time
(``?offset=&limit=``, the limit capped by ``HttpLimits.max_streams_page``): the page polls it
twice a second, so a poll must cost the same at 1,000 streams as at 200. ``?ended=1`` lists
the reports of streams that ended (``recent_reports``, newest first) with a link to each
one's sidecar and, when ``mediastream inspect --png`` drew one beside it, its picture.

Who may look: what these routes show (ids, levels, who is speaking) is about calls, so when
the server has a streaming auth token, each request must carry it (``Authorization: Bearer``
or ``?token=``, compared in constant time) or gets 401. Without a token they answer only on a
loopback bind: on any other address (or under ASGI, where the bind is not known here) they
answer 403 unless ``Config.allow_public_streams`` says to serve them anyway. No answer holds
the token or a stream's custom parameters: each snapshot is cut to the fields named below.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, quote

from mediastream.config import Config
from mediastream.media.recording.naming import recording_base
from mediastream.runtime.core import HttpRequest, HttpResponse
from mediastream.runtime.report import json_safe

logger = logging.getLogger(__name__)

STREAMS_PATH = "/streams"
CALLS_PATH = "/calls"
REPORTS_PATH = "/reports/"

# What a live stream's entry may hold: anything else a snapshot carries stays on the server
# (the custom parameters of ``start`` can hold secrets of the caller's application).
LIVE_FIELDS = (
    "stream_id",
    "call_control_id",
    "state",
    "codec",
    "tracks",
    "age_seconds",
    "frames",
    "lost",
    "handler_lag_ms",
    "playback",
    "levels",
    "speaking",
)
# What an ended stream's entry holds (the full report is one link away)
ENDED_FIELDS = (
    "stream_id",
    "call_control_id",
    "codec",
    "sample_rate",
    "tracks",
    "duration_seconds",
    "frames",
    "jitter_ms",
    "handler_lag_p99_ms",
    "levels",
    "playback",
    "reconnects",
)
# A report or picture name as the recordings are named (``naming.py``): no path separators,
# never a leading dot
_FILE_NAME = re.compile(r"[A-Za-z0-9_=~-][A-Za-z0-9._=~-]*\.(json|png)")
_CONTENT_TYPES = {"json": "application/json", "png": "image/png"}
# the page's script and styles are inline; it may talk to this server only
_PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'"
)
_NO_STORE = (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"))


class LiveSource(Protocol):
    """What the live view reads (``StreamRegistry``)."""

    def __len__(self) -> int: ...  # live and suspended streams

    def live_snapshots(self, offset: int = 0, limit: int | None = None) -> list[dict[str, Any]]: ...

    def recent_reports(self) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Page:
    """One page of a list, from ``?offset=&limit=``."""

    offset: int
    limit: int


def is_loopback(host: str | None) -> bool:
    """True for an address only this machine reaches (127.0.0.0/8, ::1, ``localhost``)."""
    if not host:
        return False  # "" binds every address; None: the bind is not known (ASGI)
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to may change


class LiveView:
    """The three routes, configured by ``attach`` (the server's registry, token and bind)."""

    def __init__(self) -> None:
        self._source: LiveSource | None = None
        self._token: bytes | None = None
        self._public = True
        self._allow_public = False
        self._record_dir: Path | None = None
        self._page_max = Config().http.max_streams_page
        self._page: bytes | None = None
        self._warned: set[str] = set()

    def attach(self, source: LiveSource, config: Config, bind_host: str | None) -> None:
        """``bind_host`` is the address the server listens on, None where not known."""
        self._source = source
        self._token = config.auth_token.encode() if config.auth_token else None
        self._public = not is_loopback(bind_host)
        self._allow_public = config.allow_public_streams
        self._record_dir = config.stream.record_dir
        self._page_max = config.http.max_streams_page

    @staticmethod
    def wants(path: str) -> bool:
        return path in (STREAMS_PATH, CALLS_PATH) or path.startswith(REPORTS_PATH)

    async def handle(self, request: HttpRequest) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            allow = (("Allow", "GET"),)
            return HttpResponse.text(HTTPStatus.METHOD_NOT_ALLOWED, "GET only\n", headers=allow)
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        if request.path == CALLS_PATH:
            return self._calls_page()
        if request.path == STREAMS_PATH:
            return await self._streams(request)
        return await self._report_file(request.path.removeprefix(REPORTS_PATH))

    # ------------------------------------------------------------ who may look

    def _refusal(self, request: HttpRequest) -> HttpResponse | None:
        if self._token is not None:
            if _token_matches(request, self._token):
                return None
            self._warn_once(
                "auth", "refused GET %s from %s: no valid auth token", request.path, request.peer
            )
            headers = (("WWW-Authenticate", 'Bearer realm="mediastream"'), *_NO_STORE)
            text = "auth token required: Authorization: Bearer TOKEN, or ?token=TOKEN\n"
            return HttpResponse.text(HTTPStatus.UNAUTHORIZED, text, headers=headers)
        if self._public and not self._allow_public:
            self._warn_once(
                "public",
                "refused GET %s from %s: the server is not on a loopback address and has no "
                "auth token (set --auth-token, or --allow-public-streams to serve it anyway)",
                request.path, request.peer,
            )  # fmt: skip
            text = (
                "the live view needs an auth token on a public address: "
                "serve --auth-token (or --allow-public-streams)\n"
            )
            return HttpResponse.text(HTTPStatus.FORBIDDEN, text, headers=_NO_STORE)
        return None

    def _warn_once(self, kind: str, message: str, *args: object) -> None:
        """A page polls twice a second: one refused browser must not flood the log."""
        level = logging.DEBUG if kind in self._warned else logging.WARNING
        self._warned.add(kind)
        logger.log(level, message, *args)

    # ------------------------------------------------------------ routes

    def _calls_page(self) -> HttpResponse:
        if self._page is None:
            self._page = resources.files(__package__).joinpath("calls.html").read_bytes()
        headers = (
            ("Content-Security-Policy", _PAGE_POLICY),
            ("Referrer-Policy", "no-referrer"),
            *_NO_STORE,
        )
        return HttpResponse(HTTPStatus.OK, self._page, "text/html; charset=utf-8", headers)

    async def _streams(self, request: HttpRequest) -> HttpResponse:
        query = parse_qs(request.query)
        try:
            page = self._parse_page(query)
        except ValueError as exc:
            return HttpResponse.text(HTTPStatus.BAD_REQUEST, f"{exc}\n", headers=_NO_STORE)
        source = self._source
        ended = _flag(query, "ended")
        if source is None:
            chosen: list[dict[str, Any]] = []
            total = 0
        elif ended:  # at most ``StreamOptions.recent_reports``, kept ready
            reports = source.recent_reports()
            chosen, total = reports[page.offset : page.offset + page.limit], len(reports)
        else:  # only this page's snapshots are made: a poll costs the page, not every stream
            total = len(source)
            chosen = source.live_snapshots(page.offset, page.limit)
        if ended:
            # the links go below where the app is mounted; each one stats a file
            entries = await asyncio.to_thread(self._ended_entries, chosen, request.root_path)
        else:
            entries = [{k: s[k] for k in LIVE_FIELDS if k in s} for s in chosen]
        body = {
            "ended" if ended else "streams": entries,
            "total": total,
            "offset": page.offset,
            "limit": page.limit,
        }
        text = _json(body)
        return HttpResponse(HTTPStatus.OK, text.encode(), "application/json", _NO_STORE)

    def _parse_page(self, query: Mapping[str, list[str]]) -> Page:
        def number(name: str, default: int, low: int) -> int:
            values = query.get(name)
            if not values:
                return default
            try:
                value = int(values[-1])
            except ValueError:
                raise ValueError(f"{name} must be a whole number") from None
            if value < low:
                raise ValueError(f"{name} must be at least {low}")
            return value

        limit = min(number("limit", self._page_max, 1), self._page_max)
        return Page(number("offset", 0, 0), limit)

    def _ended_entries(self, reports: list[dict[str, Any]], root: str) -> list[dict[str, Any]]:
        entries = []
        prefix = root + REPORTS_PATH
        for report in reports:
            entry = {k: report[k] for k in ENDED_FIELDS if k in report}
            name = report_name(report)
            entry["report_url"] = prefix + quote(name) if name else None
            picture = _picture_of(report)
            has_picture = picture is not None and picture.is_file()
            entry["picture_url"] = prefix + quote(picture.name) if has_picture else None
            entries.append(entry)
        return entries

    async def _report_file(self, name: str) -> HttpResponse:
        """A report sidecar or picture: of a recent report here, else in the record folder
        (another worker's, or an earlier run's)."""
        match = _FILE_NAME.fullmatch(name)
        if match is None:
            return HttpResponse.text(HTTPStatus.NOT_FOUND, "no such report\n", headers=_NO_STORE)
        kind = match[1]
        body = await asyncio.to_thread(self._read_report_file, name, kind)
        if body is None:
            return HttpResponse.text(HTTPStatus.NOT_FOUND, "no such report\n", headers=_NO_STORE)
        return HttpResponse(HTTPStatus.OK, body, _CONTENT_TYPES[kind], _NO_STORE)

    def _read_report_file(self, name: str, kind: str) -> bytes | None:
        source = self._source
        for report in source.recent_reports() if source is not None else ():
            sidecar = report.get("sidecar")
            if kind == "json" and report_name(report) == name:
                if sidecar:
                    try:
                        return Path(sidecar).read_bytes()
                    except OSError:
                        pass  # removed since: the report as the server holds it
                kept = {k: v for k, v in report.items() if k != "sidecar"}
                return (json.dumps(json_safe(kept), indent=2) + "\n").encode()
            picture = _picture_of(report)
            if kind == "png" and picture is not None and picture.name == name:
                return _read(picture)
        if self._record_dir is not None:
            return _read(self._record_dir / name)
        return None


def report_name(report: Mapping[str, Any]) -> str | None:
    """The file name ``/reports/`` serves a report under: its sidecar's, else one made from
    its stream id as the recording would be named."""
    sidecar = report.get("sidecar")
    if sidecar:
        return Path(sidecar).name
    stream_id = report.get("stream_id")
    return f"{recording_base(stream_id)}.json" if isinstance(stream_id, str) else None


def _picture_of(report: Mapping[str, Any]) -> Path | None:
    """``<stem>.png`` beside the sidecar: where ``mediastream inspect --png`` puts it."""
    sidecar = report.get("sidecar")
    return Path(sidecar).with_suffix(".png") if sidecar else None


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes() if path.is_file() else None
    except OSError:
        return None


def _token_matches(request: HttpRequest, token: bytes) -> bool:
    """``Authorization: Bearer TOKEN`` or ``?token=TOKEN``, compared in constant time."""
    given: str | None = None
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        given = value.strip()
    else:
        values = parse_qs(request.query).get("token")
        given = values[-1] if values else None
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token)


def _flag(query: Mapping[str, list[str]], name: str) -> bool:
    values = query.get(name)
    return bool(values) and values[-1].lower() in ("1", "true", "yes")


def _json(value: Any) -> str:
    """Compact JSON; the walk that turns NaN and infinities into None (it costs more than
    the encoding) only for the rare value that holds one."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False) + "\n"
    except ValueError:
        return json.dumps(json_safe(value), separators=(",", ":")) + "\n"
