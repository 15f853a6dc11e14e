"""websockets' public HTTP types, to and from ours; the loop's accept-failure reporter."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from mediastream.protocol.frames import AUTH_TOKEN_KEY
from mediastream.runtime.core import HttpResponse

logger = logging.getLogger(__name__)

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


def refuse_duplicate_headers(ws: ServerConnection, request: Request) -> Response | None:
    """400 for a request that repeats a header meant to be single, else None.

    websockets' ``Headers.get`` raises ``MultipleValuesError`` for a name sent twice, which
    ``process_request`` turned into a 500; a request that repeats a header meant to be single
    is a client error. Called first in ``process_request``: every later ``get`` is then safe.
    """
    headers = request.headers
    for name in SINGLETON_HEADERS:
        if name in headers and len(headers.get_all(name)) > 1:
            reason = f"duplicate {name} header"
            logger.warning("refused a request from %s: %s", peer(ws), reason)
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


def headers_of(request: Request) -> dict[str, str]:
    """The request's headers by lower-case name (a repeated one: its last value)."""
    return {name.lower(): value for name, value in request.headers.raw_items()}


def peer(ws: ServerConnection) -> str:
    address = ws.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


class QuietAccept:
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
