"""The two hooks into websockets below its public API, isolated here: request bodies and the
media read path. Tested on the websockets range pinned in ``pyproject.toml``;
``tests/server/test_websockets_private.py`` checks that every hooked method still exists with
the signature relied on, so a release that changes them fails a test, not a call.

**Request bodies.** websockets parses only the request head and refuses any request with a
body (``Request.parse`` raises "unsupported request body" for a non-zero Content-Length; the
connection is then closed without a response). Telnyx POSTs its callbacks with a form body.
``MediaConnection`` (passed as ``create_connection``, the documented hook for customising
connections) reads such a body off the socket before websockets sees the head (with h11, the
``telnyx`` extra, imported on the first body), then hands websockets the head without its body
framing; ``process_request`` finds the body on the connection. A WebSocket upgrade has no body
and passes through untouched; once the head has passed, every later byte goes straight to
websockets. Hooked: ``data_received``, ``eof_received``, ``connection_lost`` (asyncio's
protocol methods, which websockets' connection implements).

Why a plain request's head goes to websockets alone: websockets parses whatever follows the
request as WebSocket frames, so a pipelined second request ("GET " is a frame with reserved
bits set) failed the connection before the first was answered: no answer at all. Every answer
here says ``Connection: close``, so the bytes after a plain request's head are dropped.

**The media read path.** websockets hands each message to ``recv()`` through its assembler:
an async generator, two coroutine layers and a queue with its own waiter, for every 20 ms media
frame of every call. ``MediaConnection`` takes the parsed frames one step earlier
(``process_event``, where the assembler would be fed), joins fragments, decodes UTF-8 and
appends the message to ``inbox``; the stream's task pops messages in order and sleeps on
``wait_for_messages()`` when the deque is empty. Per frame that is an append and, at most, one
wake-up. ``benchmarks/read_path.py`` measured what that saves against ``async for``: 1.5 to
2.4 % of the CPU per frame at real-time load (within noise), but 14 to 16 % whenever frames
back up (a stall, or the burst after one), with 13 % fewer frames per second: the hook stays
for the moments the server is behind. The contract is websockets': every message delivered
once, in order; reading pauses while the reader is behind; a text message that is not UTF-8
ends the connection with 1007. Hooked: ``process_event``, ``send_data``, ``protocol.fail``,
``protocol.close_rcvd``/``close_exc``, and ``websockets.frames.DATA_OPCODES``; ``recv`` is
served from ``inbox``, so that it never waits on the assembler nothing feeds.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from http import HTTPStatus
from types import ModuleType
from typing import Any, ClassVar

from websockets.asyncio.server import ServerConnection
from websockets.frames import DATA_OPCODES, CloseCode, Frame, Opcode
from websockets.protocol import State

from mediastream.config import HttpLimits, ServerLimits
from mediastream.errors import install_hint

logger = logging.getLogger(__name__)

MAX_HEAD_BYTES = HttpLimits.max_head_bytes
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


def _peer(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


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
    wide, because websockets builds the connection before any route is known (``configure``
    sets them from the server's ``HttpLimits``).
    """

    max_body_bytes: ClassVar[int] = HttpLimits.max_body_bytes
    """Largest body accepted, decoded; on the wire, framing may add ``MAX_HEAD_BYTES``."""
    max_body_chunks: ClassVar[int] = HttpLimits.max_body_chunks
    """Most chunks in one chunked body: bounds the parsing time a request may take."""
    body_seconds: ClassVar[float] = HttpLimits.body_seconds
    """Time from the end of the head to the end of the body, else 408."""
    _warned: ClassVar[set[int]] = set()  # statuses already logged as warnings

    @classmethod
    def configure(cls, limits: HttpLimits) -> None:
        """Take the body limits of the server about to listen (process wide)."""
        cls.max_body_bytes = limits.max_body_bytes
        cls.max_body_chunks = limits.max_body_chunks
        cls.body_seconds = limits.body_seconds

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


# Reading from the socket pauses above this many undelivered messages and resumes once the
# reader has taken them all: a slow handler holds back its own peer, never the server.
INBOX_HIGH_WATER = ServerLimits.inbox_high_water  # the default, from config.py
MAX_FRAGMENTS = 4096


class InvalidText:
    """Stands in the inbox for a text message that is not UTF-8: the reader closes with 1007."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


Message = str | bytes | InvalidText


class MediaConnection(HttpBodyConnection):
    """A websockets server connection whose data messages are read from ``inbox``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inbox: deque[Message] = deque()
        self._fragments: list[Frame] = []
        self._waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._lost = False

    async def wait_for_messages(self) -> bool:
        """True once ``inbox`` holds a message; False when the socket is gone and all is read."""
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        while not self.inbox:
            if self._lost:
                return False
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return True

    async def recv(self, decode: bool | None = None) -> str | bytes:  # type: ignore[override]
        """websockets' ``recv()``, from ``inbox`` (its assembler is never fed here, so its own
        ``recv()`` would wait forever): the next message, or ``ConnectionClosed`` once the
        socket is gone and everything was read. ``decode`` is not supported."""
        if decode is not None:
            raise NotImplementedError("MediaConnection.recv() returns messages as received")
        while True:
            if not await self.wait_for_messages():
                raise self.protocol.close_exc
            message = self.inbox.popleft()
            if not isinstance(message, InvalidText):
                return message

    # ------------------------------------------------------------ websockets' side

    def process_event(self, event: Any) -> None:
        if not isinstance(event, Frame) or event.opcode not in DATA_OPCODES:
            super().process_event(event)  # the handshake request, pings and pongs, close
            return
        if not event.fin or self._fragments:
            if self._gather(event):
                return
            frames, self._fragments = self._fragments, []
            opcode, data = frames[0].opcode, b"".join(frame.data for frame in frames)
        else:
            opcode, data = event.opcode, event.data
        message: Message
        if opcode is Opcode.TEXT:
            try:
                message = str(data, "utf-8")
            except UnicodeDecodeError as exc:
                message = InvalidText(f"{exc.reason} at position {exc.start}")
        else:
            message = bytes(data)
        self.inbox.append(message)
        if len(self.inbox) >= INBOX_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def _gather(self, frame: Frame) -> bool:
        """Hold a fragment; True while the message is incomplete, or for good once it has
        more fragments than websockets allows (the connection is failed then, as it does)."""
        self._fragments.append(frame)
        if len(self._fragments) == MAX_FRAGMENTS + 1:
            self.protocol.fail(CloseCode.MESSAGE_TOO_BIG, "too many fragments")
            self.send_data()
        return len(self._fragments) > MAX_FRAGMENTS or not frame.fin

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._lost = True
        self._wake()

    def unread_messages(self) -> list[str | bytes]:
        """Take every message read and not yet handed over (text that is not UTF-8 is left
        out: it carries no audio)."""
        messages = [m for m in self.inbox if not isinstance(m, InvalidText)]
        self.inbox.clear()
        return messages

    def abort(self) -> None:
        """Drop the socket now unless it is closed already (no closing handshake)."""
        if self.state is not State.CLOSED:
            self.transport.abort()

    @property
    def closed_cleanly(self) -> bool:
        """Whether the peer sent a close frame with 1000 or 1001."""
        received = self.protocol.close_rcvd
        return received is not None and received.code in (1000, 1001)

    @property
    def close_cause(self) -> BaseException | None:
        return self.protocol.close_exc

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
