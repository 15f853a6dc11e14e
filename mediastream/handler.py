"""The application API: subclass ``StreamHandler``; one instance serves one stream.

``StreamConnection`` is the glue for one socket: text in, session events out, each event to the
recorder first (so a failing handler never costs audio) and then to the handler. It only needs a
``Transport`` (send text, close), so any server library can carry it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mediastream.protocol.frames import MediaFormat
from mediastream.recording import WavRecorder, recording_path
from mediastream.session import (
    Audio,
    Connected,
    Dtmf,
    Error,
    Event,
    MarkEcho,
    Session,
    Started,
    Stopped,
)

logger = logging.getLogger(__name__)

AudioFrame = Audio
"""One frame of decoded audio: ``pcm`` (int16), ``sample_rate``, ``track``, ``timestamp_ms``."""

CLOSE_NORMAL = 1000
CLOSE_INTERNAL_ERROR = 1011
CLOSE_UNSUPPORTED_DATA = 1003


class Transport(Protocol):
    """What a stream needs of its socket."""

    async def send(self, text: str) -> None: ...

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None: ...


@dataclass
class Call:
    """The call behind a stream: ids and parameters from ``start``, and the outbound commands."""

    stream_id: str
    call_control_id: str | None = None
    call_session_id: str | None = None
    user_id: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    tags: list[str] = field(default_factory=list)
    client_state: str | None = None
    custom_parameters: dict[str, str] = field(default_factory=dict)
    media_format: MediaFormat = field(default_factory=MediaFormat)
    sample_rate: int = 8000
    _transport: Transport | None = field(default=None, repr=False)
    _session: Session | None = field(default=None, repr=False)

    @classmethod
    def from_started(cls, event: Started, transport: Transport, session: Session) -> Call:
        info = event.info
        return cls(
            stream_id=event.stream_id,
            call_control_id=info.call_control_id,
            call_session_id=info.call_session_id,
            user_id=info.user_id,
            from_number=info.from_,
            to_number=info.to,
            tags=list(info.tags),
            client_state=info.client_state,
            custom_parameters=dict(info.custom_parameters),
            media_format=event.media_format,
            sample_rate=event.sample_rate,
            _transport=transport,
            _session=session,
        )

    def _require(self) -> tuple[Transport, Session]:
        if self._transport is None or self._session is None:
            raise RuntimeError(f"stream {self.stream_id}: call is not connected to a socket")
        return self._transport, self._session

    async def send_media(self, payload: bytes) -> None:
        """Send one already-encoded ``media`` payload (RTP payload bytes or a whole MP3 file)."""
        transport, session = self._require()
        await transport.send(session.media(payload))

    async def mark(self, name: str) -> None:
        """Send a ``mark``; the carrier echoes it (``on_mark``) once the audio before it played."""
        transport, session = self._require()
        await transport.send(session.mark(name))

    async def clear(self) -> None:
        """Ask the carrier to stop playback and drop its queue (queued marks come back)."""
        transport, session = self._require()
        await transport.send(session.clear())

    async def hang_up_stream(self, reason: str = "closed by application") -> None:
        """Close this stream's socket (the call itself goes on)."""
        transport, _ = self._require()
        await transport.close(CLOSE_NORMAL, reason)


class StreamHandler:
    """Subclass and override what you need. One instance per stream; ``self.call`` is set first.

    An exception escaping any method is logged with the stream id and ends that stream only;
    its recording is kept.
    """

    call: Call

    async def on_start(self) -> None:
        """The stream started: ``self.call`` holds the ids, parameters and media format."""

    async def on_audio(self, frame: AudioFrame) -> None:
        """One frame of decoded audio, in order; lost frames arrive as silence (``missing``)."""

    async def on_dtmf(self, digit: str) -> None:
        """The caller pressed a key."""

    async def on_mark(self, name: str) -> None:
        """The carrier echoed a mark we sent."""

    async def on_error(self, error: Error) -> None:
        """A carrier ``error`` frame, or bad input on this stream (already logged)."""

    async def on_stop(self) -> None:
        """The stream ended (``stop`` frame, or the socket closed)."""


HandlerFactory = Callable[[], StreamHandler]


@dataclass
class StreamOptions:
    """Per-server settings that shape every stream."""

    record_dir: Path | None = None
    reorder_depth: int = 8
    flush_seconds: float = 0.5
    codec_options: dict[str, dict[str, Any]] = field(default_factory=dict)


class StreamConnection:
    """Drives one socket: feed it text frames, then ``finish()`` when the socket ends."""

    def __init__(
        self,
        handler_factory: HandlerFactory,
        transport: Transport,
        options: StreamOptions | None = None,
        *,
        peer: str = "?",
    ) -> None:
        self.options = options or StreamOptions()
        self.session = Session(
            reorder_depth=self.options.reorder_depth, codec_options=self.options.codec_options
        )
        self.transport = transport
        self.peer = peer
        self.handler: StreamHandler | None = None
        self.recorder: WavRecorder | None = None
        self._factory = handler_factory
        self._handler_failed = False
        self._finished = False
        self._error_counts: dict[str, int] = {}
        self.close_code = CLOSE_NORMAL
        self.close_reason = ""

    @property
    def stream_id(self) -> str:
        session = self.session
        return session.stream_id or session.claimed_stream_id or f"<unstarted from {self.peer}>"

    async def receive(self, message: str | bytes) -> bool:
        """Handle one frame; False means the stream must end (the caller closes the socket)."""
        if isinstance(message, bytes):
            self._note_error(Error("binary_frame", "binary frame ignored: frames must be text"))
            return True
        return await self._dispatch(self.session.receive_text(message))

    async def finish(self) -> None:
        """The socket is gone: release held audio, finalize the recording, tell the handler."""
        if self._finished:
            return
        self._finished = True
        try:
            await self._dispatch(self.session.close())
        finally:
            if self.recorder is not None:
                await self.recorder.close()
            self._log_error_summary()

    async def _dispatch(self, events: list[Event]) -> bool:
        keep_going = True
        for event in events:
            if isinstance(event, Audio):
                if self.recorder is not None:
                    await self.recorder.write(event)
                keep_going &= await self._call(self.handler and self.handler.on_audio, event)
            elif isinstance(event, Started):
                keep_going &= await self._on_started(event)
            elif isinstance(event, Dtmf):
                keep_going &= await self._call(self.handler and self.handler.on_dtmf, event.digit)
            elif isinstance(event, MarkEcho):
                keep_going &= await self._call(self.handler and self.handler.on_mark, event.name)
            elif isinstance(event, Error):
                self._note_error(event)
                keep_going &= await self._call(self.handler and self.handler.on_error, event)
                if event.fatal:
                    self._end(CLOSE_UNSUPPORTED_DATA, event.message)
                    keep_going = False
            elif isinstance(event, Stopped):
                logger.info("stream %s: stopped (%s)", self.stream_id, event.reason)
                if self.recorder is not None:
                    await self.recorder.close()
                keep_going &= await self._call(self.handler and self.handler.on_stop)
                keep_going = False  # the stream is over; a resumed stream comes on a new socket
            elif isinstance(event, Connected):
                logger.debug("connection from %s: connected, version %s", self.peer, event.version)
        return keep_going

    async def _on_started(self, event: Started) -> bool:
        fmt = event.media_format
        logger.info(
            "stream %s: started from %s, %s %d Hz (decoded at %d Hz)",
            event.stream_id, self.peer, fmt.encoding, fmt.sample_rate, event.sample_rate,
        )  # fmt: skip
        if self.options.record_dir is not None:
            path = recording_path(self.options.record_dir, event.stream_id)
            self.recorder = WavRecorder(
                path,
                event.sample_rate,
                flush_seconds=self.options.flush_seconds,
                stream_id=event.stream_id,
            )
            logger.info("stream %s: recording to %s", event.stream_id, path)
        try:
            self.handler = self._factory()
            self.handler.call = Call.from_started(event, self.transport, self.session)
        except Exception:
            logger.exception("stream %s: creating the handler failed", event.stream_id)
            self._handler_failed = True
            self._end(CLOSE_INTERNAL_ERROR, "handler failed")
            return False
        return await self._call(self.handler.on_start)

    async def _call(self, method: Callable[..., Awaitable[None]] | None, *args: Any) -> bool:
        """Run a handler method; an exception ends this stream (logged), never the server."""
        if method is None or self._handler_failed:
            return not self._handler_failed
        try:
            await method(*args)
        except Exception:
            self._handler_failed = True
            self._end(CLOSE_INTERNAL_ERROR, "handler failed")
            logger.exception(
                "stream %s: handler %s.%s raised; ending this stream",
                self.stream_id, type(self.handler).__name__, method.__name__,
            )  # fmt: skip
            return False
        return True

    def _end(self, code: int, reason: str) -> None:
        """Remember why the stream ends, for the close frame (the first reason wins)."""
        if self.close_code == CLOSE_NORMAL:
            self.close_code, self.close_reason = code, reason[:120]

    def _note_error(self, error: Error) -> None:
        """Log the first error of each kind per stream with its message; count the rest."""
        count = self._error_counts.get(error.kind, 0) + 1
        self._error_counts[error.kind] = count
        if count == 1:
            level = logging.ERROR if error.fatal else logging.WARNING
            logger.log(level, "stream %s: %s: %s", self.stream_id, error.kind, error.message)

    def _log_error_summary(self) -> None:
        repeated = {kind: n for kind, n in self._error_counts.items() if n > 1}
        if repeated:
            logger.warning("stream %s: repeated errors: %s", self.stream_id, repeated)
