"""The runtime behind handlers: one ``Stream`` per stream id, one ``StreamConnection`` per socket.

A stream outlives its socket. When a socket closes without ``stop``, the stream is suspended
for a grace period; a new socket whose ``start`` names the same id resumes it: the same handler
instance (``on_reconnect``), the same recording, audio placed after what was received even if
the carrier's counters restart. Every event goes to the recorder before the handler, so a
failing handler never costs audio. Only a ``Transport`` (send text, close) is needed, so any
server library can carry a connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from mediastream.capture import CaptureWriter
from mediastream.handler import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    CLOSE_UNSUPPORTED_DATA,
    Call,
    HandlerFactory,
    StreamHandler,
    StreamOptions,
    Transport,
)
from mediastream.metrics import ServerMetrics, StreamMeter
from mediastream.recording import WavRecorder, open_recording
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


@dataclass(eq=False)
class Stream:
    """One stream id across its sockets: the handler, the recording, the audio timeline."""

    stream_id: str
    call: Call
    handler: StreamHandler | None = None
    recorder: WavRecorder | None = None
    end_position: int = 0  # one past the last sample received, on the stream's timeline
    sockets: int = 0
    failed: bool = False
    ended: bool = False
    error_counts: dict[str, int] = field(default_factory=dict)
    _expiry: asyncio.TimerHandle | None = None
    metrics: ServerMetrics | None = field(default=None, repr=False)  # counts handler errors

    async def call_handler(self, name: str, *args: Any) -> bool:
        """Run a handler method; an exception ends this stream (logged), never the server."""
        if self.handler is None or self.failed:
            return not self.failed
        method: Callable[..., Awaitable[None]] = getattr(self.handler, name)
        try:
            await method(*args)
        except Exception:
            self.failed = True
            if self.metrics is not None:
                self.metrics.handler_errors += 1  # pushed in batches (metrics.py)
            logger.exception(
                "stream %s: handler %s.%s raised; ending this stream",
                self.stream_id, type(self.handler).__name__, name,
            )  # fmt: skip
            return False
        return True

    def note_error(self, error: Error) -> None:
        note_error(self.error_counts, self.stream_id, error)


def note_error(counts: dict[str, int], stream_id: str, error: Error) -> None:
    """Log the first error of each kind with its message; count the rest."""
    counts[error.kind] = counts.get(error.kind, 0) + 1
    if counts[error.kind] == 1:
        level = logging.ERROR if error.fatal else logging.WARNING
        logger.log(level, "stream %s: %s: %s", stream_id, error.kind, error.message)


class StreamRegistry:
    """Live and suspended streams by id; creates, resumes and ends them."""

    def __init__(self, handler_factory: HandlerFactory, options: StreamOptions) -> None:
        self.handler_factory = handler_factory
        self.options = options
        self.streams: dict[str, Stream] = {}
        self.metrics: ServerMetrics | None = None  # set by the server when it exposes metrics

    def __len__(self) -> int:
        return len(self.streams)

    async def open(self, event: Started, connection: StreamConnection) -> tuple[Stream, bool]:
        """The stream for this ``start``: a resumed one if the id is live or suspended."""
        stream = self.streams.get(event.stream_id)
        if stream is not None and not stream.ended:
            if stream._expiry is not None:
                stream._expiry.cancel()
                stream._expiry = None
            stream.sockets += 1
            stream.call.attach(connection.transport, connection.session)
            logger.info("stream %s: resumed on a new socket", event.stream_id)
            return stream, True
        call = Call.from_started(event, connection.transport, connection.session)
        stream = Stream(event.stream_id, call, sockets=1, metrics=self.metrics)
        self.streams[event.stream_id] = stream
        if self.options.record_dir is not None:
            stream.recorder = await asyncio.to_thread(self._open_recorder, event)
            stream.end_position = stream.recorder.frames_on_disk
        return stream, False

    def _open_recorder(self, event: Started) -> WavRecorder:
        """Continue a file written within the grace period (a resume across a restart)
        unless another live process (worker) holds it; otherwise never overwrite: a new
        session of an old id gets ``<id>.2.wav`` (see ``open_recording``)."""
        assert self.options.record_dir is not None
        recorder = open_recording(
            self.options.record_dir,
            event.stream_id,
            event.sample_rate,
            resume_within=self.options.resume_grace_seconds,
            flush_seconds=self.options.flush_seconds,
            append=False,
        )
        logger.info("stream %s: recording to %s", event.stream_id, recorder.path)
        return recorder

    async def suspend(self, stream: Stream) -> None:
        """The socket closed without ``stop``: keep the stream for the grace period."""
        grace = self.options.resume_grace_seconds
        if stream.failed or grace <= 0:
            await self.end(stream)
            return
        if stream.recorder is not None:
            stream.recorder.flush()  # everything on disk while we wait
        loop = asyncio.get_running_loop()
        stream._expiry = loop.call_later(grace, self._expire, stream)
        logger.info(
            "stream %s: socket closed; kept %.0f s for a reconnect", stream.stream_id, grace
        )

    def _expire(self, stream: Stream) -> None:
        stream._expiry = None
        task = asyncio.ensure_future(self.end(stream))
        task.add_done_callback(_log_task_failure)

    async def end(self, stream: Stream) -> None:
        """Finish the recording, tell the handler, forget the stream (idempotent)."""
        if stream.ended:
            return
        stream.ended = True
        if stream._expiry is not None:
            stream._expiry.cancel()
            stream._expiry = None
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
        try:
            await stream.call.close_player()
            if stream.recorder is not None:
                await stream.recorder.close()
        finally:
            await stream.call_handler("on_stop")
            repeated = {kind: n for kind, n in stream.error_counts.items() if n > 1}
            if repeated:
                logger.warning("stream %s: repeated errors: %s", stream.stream_id, repeated)

    async def close_all(self) -> None:
        """End every stream, live or suspended (server shutdown)."""
        for stream in list(self.streams.values()):
            await self.end(stream)


def _log_task_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("ending a suspended stream failed", exc_info=task.exception())


class StreamConnection:
    """Drives one socket: feed it text frames, then ``finish()`` when the socket ends."""

    def __init__(
        self,
        registry: StreamRegistry,
        transport: Transport,
        *,
        peer: str = "?",
        auth_token: str | None = None,
    ) -> None:
        options = registry.options
        self.registry = registry
        self.session = Session(
            reorder_depth=options.reorder_depth, codec_options=options.codec_options
        )
        self.transport = transport
        self.peer = peer
        self.stream: Stream | None = None
        self.close_code = CLOSE_NORMAL
        self.close_reason = ""
        self.last_activity = time.monotonic()
        self._opened_at = self.last_activity
        self._offset: int | None = None
        self._resumed = False
        self._stopped_by_carrier = False
        self._finished = False
        self._early_errors: dict[str, int] = {}
        self._capture = CaptureWriter(options.capture_dir) if options.capture_dir else None
        self._auth_token = auth_token  # redacted from captures
        metrics = registry.metrics  # plain counters per frame, pushed in batches (metrics.py)
        self.meter: StreamMeter | None = None if metrics is None else metrics.meter(self.session)

    async def socket_closed(self) -> None:
        """The socket is gone (perhaps while a handler is busy): playback on it can only fail,
        so pending playbacks resolve now instead of waiting for echoes that cannot come."""
        stream = self.stream
        if stream is not None and stream.call._player is not None:
            player, stream.call._player = stream.call._player, None  # a resume gets a new one
            await player.close()

    @property
    def stream_id(self) -> str:
        session = self.session
        return session.stream_id or session.claimed_stream_id or f"<unstarted from {self.peer}>"

    async def receive(self, message: str | bytes) -> bool:
        """Handle one frame; False means the stream must end (the caller closes the socket)."""
        now = time.monotonic()
        self.last_activity = now
        if self._capture is not None:
            self._capture.add(now - self._opened_at, message, redact=self._auth_token)
        if isinstance(message, bytes):
            error = Error("binary_frame", "binary frame rejected: frames must be JSON text")
            self._note_error(error)
            return True
        events = self.session.receive_text(message)
        if self._capture is not None and self.session.stream_id:
            self._capture.name(self.session.stream_id)
        return await self._dispatch(events)

    async def finish(self) -> None:
        """The socket is gone: release held audio, then end or suspend the stream."""
        if self._finished:
            return
        self._finished = True
        try:
            await self._dispatch(self.session.close())
        finally:
            if self.meter is not None:
                self.meter.close()  # this socket's counting is over: push its counts now
            if self._capture is not None:
                await self._capture.close()
            stream = self.stream
            if stream is not None and not stream.ended:
                ended = stream.failed or self._stopped_by_carrier
                if ended or self.close_code != CLOSE_NORMAL:
                    await self.registry.end(stream)
                else:
                    await self.registry.suspend(stream)

    async def _dispatch(self, events: list[Event]) -> bool:
        keep_going = True
        stream = self.stream
        meter = self.meter
        for event in events:
            if isinstance(event, Audio):
                if stream is None:
                    continue
                self._place(stream, event)
                if stream.recorder is not None:
                    stream.recorder.append(event)  # blocks go to disk every 0.5 s
                if not event.late:  # handlers get an in-order stream; late audio patches files
                    handled = await stream.call_handler("on_audio", event)
                    keep_going &= handled
                    if handled and meter is not None:  # handler lag: plain ints (metrics.py)
                        meter.handled(event, self.last_activity)
            elif isinstance(event, Started):
                keep_going &= await self._on_started(event)
                stream = self.stream
            elif isinstance(event, Dtmf):
                if stream is not None:
                    keep_going &= await stream.call_handler("on_dtmf", event.digit)
            elif isinstance(event, MarkEcho):
                if stream is not None and self._is_app_mark(stream, event.name):
                    keep_going &= await stream.call_handler("on_mark", event.name)
            elif isinstance(event, Error):
                self._note_error(event)
                if stream is not None:
                    keep_going &= await stream.call_handler("on_error", event)
                if event.fatal:
                    self._end(CLOSE_UNSUPPORTED_DATA, event.message)
                    keep_going = False
            elif isinstance(event, Stopped):
                logger.info("stream %s: socket ended (%s)", self.stream_id, event.reason)
                if event.reason == "stop":
                    self._stopped_by_carrier = True
                    keep_going = False  # the stream is over
            elif isinstance(event, Connected):
                logger.debug("connection from %s: connected, version %s", self.peer, event.version)
            if stream is not None and stream.failed:
                self._end(CLOSE_INTERNAL_ERROR, "handler failed")
                keep_going = False
        return keep_going

    def _place(self, stream: Stream, event: Audio) -> None:
        """Shift this socket's audio onto the stream's timeline (after what came before)."""
        if self._offset is None:
            behind = stream.end_position - event.position
            self._offset = behind if self._resumed and behind > 0 else 0
            if self._resumed:
                logger.info(
                    "stream %s: resumed audio placed at sample %d (offset %d)",
                    stream.stream_id, event.position + self._offset, self._offset,
                )  # fmt: skip
        event.position += self._offset
        stream.end_position = max(stream.end_position, event.position + len(event.pcm))

    async def _on_started(self, event: Started) -> bool:
        fmt = event.media_format
        stream, resumed = await self.registry.open(event, self)
        self.stream, self._resumed = stream, resumed
        if resumed:
            return await stream.call_handler("on_reconnect")
        # a stream that ended after the grace period may leave an old file: position after it
        self._resumed = stream.end_position > 0
        logger.info(
            "stream %s: started from %s, %s %d Hz (decoded at %d Hz)",
            event.stream_id, self.peer, fmt.encoding, fmt.sample_rate, event.sample_rate,
        )  # fmt: skip
        for kind, count in self._early_errors.items():
            stream.error_counts[kind] = stream.error_counts.get(kind, 0) + count
        try:
            stream.handler = self.registry.handler_factory()
            stream.call.playback_config = stream.handler.playback or self.registry.options.playback
            stream.handler.call = stream.call
        except Exception:
            logger.exception("stream %s: creating the handler failed", event.stream_id)
            stream.failed = True
            return False
        return await stream.call_handler("on_start")

    @staticmethod
    def _is_app_mark(stream: Stream, name: str) -> bool:
        player = stream.call._player
        return player.on_mark_echo(name) if player is not None else True

    def _end(self, code: int, reason: str) -> None:
        """Remember why the stream ends, for the close frame (the first reason wins)."""
        if self.close_code == CLOSE_NORMAL:
            self.close_code, self.close_reason = code, reason[:120]

    def _note_error(self, error: Error) -> None:
        if self.meter is not None:
            self.meter.error(error.kind)
        if self.stream is not None:
            self.stream.note_error(error)
        else:
            note_error(self._early_errors, self.stream_id, error)
