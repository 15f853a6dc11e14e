"""The runtime behind handlers: one ``Stream`` per stream id, one ``StreamConnection`` per socket.

A stream outlives its socket. When a socket closes without ``stop``, the stream is suspended
for a grace period; a new socket whose ``start`` names the same id resumes it: the same handler
instance (``on_reconnect``), the same recording, audio placed on the stream's timeline. Every
event goes to the recorder before the handler, so a failing handler never costs audio. Only a
``Transport`` (send text, close) is needed, so any server library can carry a connection.

A stream has one owner at a time: the socket whose audio it records and to which its playback
goes. A second socket naming a live id waits ``takeover_seconds``: if the owner closes or sends
nothing for that long, the newcomer takes over (the owner is closed with 1008); if the owner
keeps sending, the newcomer is refused with 1008. Audio of two sockets never interleaves.

Any exception on a socket's path that is not bad input (those are ``Error`` events) closes that
socket at once with 1011 and ends its stream, recording finalized with everything received.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
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
from mediastream.logs import escape
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

CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN_LATER = 1013
FRAMES_PER_SECOND = 50  # 20 ms frames: what the gap bound in frames is counted in


@dataclass(slots=True)
class StreamTotals:
    """Counts summed over a stream's sockets, added once per socket as it finishes (never per
    frame): what the one line logged at the stream's end says."""

    sockets: int = 0
    frames: int = 0  # media frames received
    lost: int = 0  # given up as lost: handlers got silence (late ones included)
    reordered: int = 0
    late: int = 0  # came after their slot was given up: back in the recording only

    def add(self, session: Session) -> None:
        self.sockets += 1
        self.frames += session.stats.media_frames
        for stats in session.reorder_stats().values():
            self.lost += stats.gaps
            self.reordered += stats.reordered
            self.late += stats.late


class StreamState(Enum):
    """Where a stream is in its life: the one place that says so."""

    LIVE = "live"  # a socket owns it
    SUSPENDED = "suspended"  # its socket closed without ``stop``; waiting for a reconnect
    ENDED = "ended"  # finalized: recording closed, ``on_stop`` called


@dataclass(eq=False)
class Stream:
    """One stream id across its sockets: the handler, the recording, the audio timeline."""

    stream_id: str
    call: Call
    handler: StreamHandler | None = None
    recorder: WavRecorder | None = None
    state: StreamState = StreamState.LIVE
    owner: StreamConnection | None = None
    # one past the last sample received, per track, on the stream's timeline
    track_ends: dict[str, int] = field(default_factory=dict)
    failed: bool = False
    error_counts: dict[str, int] = field(default_factory=dict)
    # (monotonic time, position) of the first audio: real time, for a resume that restarts
    clock: tuple[float, int] | None = None
    sample_rate: int = 0  # the decoded rate: positions on the timeline count these samples
    opened_at: float = field(default_factory=time.monotonic)
    totals: StreamTotals = field(default_factory=StreamTotals)
    _expiry: asyncio.TimerHandle | None = None
    metrics: ServerMetrics | None = field(default=None, repr=False)  # counts handler errors
    limits: HandlerLimits | None = field(default=None, repr=False)
    log_id: str = ""

    def __post_init__(self) -> None:
        self.log_id = escape(self.stream_id)

    @property
    def ended(self) -> bool:
        return self.state is StreamState.ENDED

    @property
    def end_position(self) -> int:
        """One past the last sample received on any track."""
        return max(self.track_ends.values(), default=0)

    async def call_handler(self, name: str, *args: Any) -> bool:
        """Run a handler method; an exception ends this stream (logged), never the server.

        While the server drains, a method has until the drain deadline (then the stream's
        remaining methods get ``handler_stop_seconds`` each) and is cancelled past it.
        """
        if self.handler is None or self.failed:
            return not self.failed
        method: Callable[..., Awaitable[None]] = getattr(self.handler, name)
        limit = self.limits.time_left() if self.limits is not None else None
        try:
            if limit is None:
                await method(*args)
            else:
                await asyncio.wait_for(method(*args), limit)
        except TimeoutError:
            self._fail(name, f"did not return within {limit:.1f} s of the drain; cancelled")
            return False
        except asyncio.CancelledError:
            if self.limits is None or not self.limits.was_stopped(asyncio.current_task()):
                raise
            self._fail(name, "was still running at the end of the drain; cancelled")
            return False
        except Exception:
            self._fail(name, "raised; ending this stream", exc_info=True)
            return False
        return True

    def _fail(self, name: str, what: str, *, exc_info: bool = False) -> None:
        self.failed = True
        if self.metrics is not None:
            self.metrics.handler_errors += 1  # pushed in batches (metrics.py)
        logger.error(
            "stream %s: handler %s.%s %s",
            self.log_id, type(self.handler).__name__, name, what, exc_info=exc_info,
        )  # fmt: skip

    def note_error(self, error: Error) -> None:
        note_error(self.error_counts, self.log_id, error)


def note_error(counts: dict[str, int], log_id: str, error: Error) -> None:
    """Log the first error of each kind with its message; count the rest."""
    counts[error.kind] = counts.get(error.kind, 0) + 1
    if counts[error.kind] == 1:
        level = logging.ERROR if error.fatal else logging.WARNING
        logger.log(level, "stream %s: %s: %s", log_id, error.kind, escape(error.message))


class HandlerLimits:
    """How long handler methods may run: unbounded, until the server drains.

    ``deadline`` is set when a drain starts; ``stop`` names the tasks the server cancels at
    the deadline, so that their handler call is reported as cut short, not as a crash.
    """

    def __init__(self, stop_seconds: float) -> None:
        self.stop_seconds = stop_seconds
        self.deadline: float | None = None
        self._stopped: set[asyncio.Task[Any]] = set()

    def time_left(self) -> float | None:
        if self.deadline is None:
            return None
        return max(self.deadline - time.monotonic(), self.stop_seconds)

    def stop(self, task: asyncio.Task[Any]) -> None:
        self._stopped.add(task)
        task.cancel()

    def was_stopped(self, task: asyncio.Task[Any] | None) -> bool:
        """True (once) for a task ``stop`` cancelled: its cancellation is taken back."""
        if task is None or task not in self._stopped:
            return False
        self._stopped.discard(task)
        task.uncancel()
        return True


class StreamRefused(Exception):
    """A ``start`` that this server will not take: the socket closes with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


class StreamRegistry:
    """Live and suspended streams by id; creates, resumes and ends them."""

    def __init__(self, handler_factory: HandlerFactory, options: StreamOptions) -> None:
        self.handler_factory = handler_factory
        self.options = options
        self.streams: dict[str, Stream] = {}
        self.metrics: ServerMetrics | None = None  # set by the server when it exposes metrics
        self.max_streams: int | None = None  # live and suspended streams; set by the server
        self.limits = HandlerLimits(options.handler_stop_seconds)
        self._ending: set[asyncio.Future[None]] = set()  # streams whose grace period ran out

    def __len__(self) -> int:
        return len(self.streams)

    async def open(self, event: Started, connection: StreamConnection) -> tuple[Stream, bool]:
        """The stream for this ``start``: a resumed one if the id is live or suspended.

        Raises ``StreamRefused`` when the id is live on another socket that keeps sending,
        or when the stream limit is reached.
        """
        stream = self.streams.get(event.stream_id)
        while stream is not None and stream.owner is not None:
            await self._contest(stream, connection)
            stream = self.streams.get(event.stream_id)  # ended meanwhile, or owned by another
        if stream is not None and not stream.ended:
            if stream._expiry is not None:
                stream._expiry.cancel()
                stream._expiry = None
            await _drop_player(stream)
            stream.owner, stream.state = connection, StreamState.LIVE
            connection.last_activity = time.monotonic()  # judged from now on, if contested
            stream.call.attach(connection.transport, connection.session)
            logger.info("stream %s: resumed on a new socket", stream.log_id)
            if stream.recorder is None and self.options.record_dir is not None:
                await self._record(stream, event)  # opening it failed before: try again
            return stream, True
        if self.max_streams is not None and len(self.streams) >= self.max_streams:
            reason = f"stream limit reached ({self.max_streams} streams, live or suspended)"
            count_refusal(self.metrics, "stream_limit")
            raise StreamRefused(CLOSE_TRY_AGAIN_LATER, reason)
        call = Call.from_started(event, connection.transport, connection.session)
        stream = Stream(
            event.stream_id, call, owner=connection, metrics=self.metrics, limits=self.limits,
            sample_rate=event.sample_rate,
        )  # fmt: skip
        self.streams[event.stream_id] = stream
        if self.options.record_dir is not None:
            await self._record(stream, event)
        return stream, False

    async def _contest(self, stream: Stream, newcomer: StreamConnection) -> None:
        """A second socket names a live stream: wait to see whether its owner is gone."""
        owner = stream.owner
        assert owner is not None
        window = self.options.takeover_seconds
        arrived = time.monotonic()
        while stream.owner is owner and not stream.ended:
            now = time.monotonic()
            if now - owner.last_activity >= window:
                logger.warning(
                    "stream %s: socket from %s silent for %.1f s; the new socket from %s "
                    "takes over", stream.log_id, owner.peer, now - owner.last_activity,
                    newcomer.peer,
                )  # fmt: skip
                await owner.hand_over(timeout=window)
                return
            if now - arrived >= window:
                count_refusal(self.metrics, "stream_id_in_use")
                logger.warning(
                    "stream %s: refused a second socket from %s: the stream is live on a "
                    "socket from %s that is still sending", stream.log_id, newcomer.peer,
                    owner.peer,
                )  # fmt: skip
                raise StreamRefused(CLOSE_POLICY, "stream id is live on another socket")
            await asyncio.sleep(min(0.05, window / 10))

    async def _record(self, stream: Stream, event: Started) -> None:
        """Open the stream's recording; a failure is logged and counted, never fatal."""
        try:
            stream.recorder = await asyncio.to_thread(self._open_recorder, event)
        except Exception as exc:  # recorders retry what the disk refuses: this is a bug
            if self.metrics is not None:
                self.metrics.recording_open_failures += 1
            logger.error(
                "stream %s: cannot record to %s: %s (the stream goes on unrecorded; "
                "a reconnect tries again)", stream.log_id, self.options.record_dir, exc,
            )  # fmt: skip
            return
        # a file continued from a killed process: audio goes after what it holds
        frames = stream.recorder.frames_on_disk
        if frames and not stream.track_ends:
            stream.track_ends["inbound"] = frames

    def _open_recorder(self, event: Started) -> WavRecorder:
        """Continue a file a killed process left within the grace period; otherwise a new
        file, never overwriting one (see ``open_recording``)."""
        assert self.options.record_dir is not None
        recorder = open_recording(
            self.options.record_dir,
            event.stream_id,
            event.sample_rate,
            resume_within=self.options.resume_grace_seconds,
            flush_seconds=self.options.flush_seconds,
            append=False,
            max_backlog_seconds=self.options.max_backlog_seconds,
        )
        if recorder.path is not None:  # else the recorder said why, and retries
            logger.debug("stream %s: recording to %s", escape(event.stream_id), recorder.path)
        return recorder

    async def suspend(self, stream: Stream) -> None:
        """The socket closed without ``stop``: keep the stream for the grace period."""
        grace = self.options.resume_grace_seconds
        if stream.failed or grace <= 0 or self.limits.deadline is not None:
            await self.end(stream)
            return
        stream.state = StreamState.SUSPENDED
        if stream.recorder is not None:
            stream.recorder.flush()  # everything on disk while we wait
        loop = asyncio.get_running_loop()
        stream._expiry = loop.call_later(grace, self._expire, stream)
        logger.debug("stream %s: socket closed; kept %.0f s for a reconnect", stream.log_id, grace)

    def _expire(self, stream: Stream) -> None:
        stream._expiry = None
        task = asyncio.ensure_future(self.end(stream))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)
        task.add_done_callback(_log_task_failure)

    async def end(self, stream: Stream) -> None:
        """Finish the recording, tell the handler, forget the stream (idempotent)."""
        if stream.ended:
            return
        stream.state = StreamState.ENDED
        owner, stream.owner = stream.owner, None
        if owner is not None:  # ended under a live socket (shutdown): count what it received
            owner.count_into(stream)
        if stream._expiry is not None:
            stream._expiry.cancel()
            stream._expiry = None
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
        try:
            await stream.call.close_player()
        except Exception:
            logger.exception("stream %s: stopping playback failed", stream.log_id)
        try:
            if stream.recorder is not None:
                await stream.recorder.close()
        except Exception:
            logger.exception("stream %s: finalizing %s failed", stream.log_id, stream.recorder.path)
        await stream.call_handler("on_stop")
        repeated = {kind: n for kind, n in stream.error_counts.items() if n > 1}
        if repeated:
            logger.warning("stream %s: repeated errors: %s", stream.log_id, repeated)
        logger.info("stream %s: %s", stream.log_id, summary(stream))

    async def close_all(self) -> None:
        """End every stream, live or suspended (server shutdown), all at once: each one's
        ``on_stop`` is bounded during a drain, and none waits for another."""
        streams = list(self.streams.values())
        results = await asyncio.gather(*(self.end(s) for s in streams), return_exceptions=True)
        for stream, result in zip(streams, results, strict=True):
            if isinstance(result, BaseException):
                logger.error("stream %s: ending failed: %r", stream.log_id, result)
        if self._ending:  # expired just before: their on_stop is under way
            await asyncio.gather(*self._ending, return_exceptions=True)


def summary(stream: Stream) -> str:
    """What the stream's one end line says: its length on the timeline and in real time, the
    frames of all its sockets and what became of them, and the file with its length."""
    t = stream.totals
    rate = stream.sample_rate
    audio = f"{stream.end_position / rate:.2f} s of audio" if rate else "no audio"
    wall = time.monotonic() - stream.opened_at
    sockets = f" over {t.sockets} sockets" if t.sockets > 1 else ""
    text = (
        f"ended after {wall:.1f} s: {audio}, {t.frames} frames{sockets} "
        f"(lost {t.lost}, reordered {t.reordered}, late {t.late})"
    )
    recorder = stream.recorder
    if recorder is None or recorder.path is None:
        return text + "; nothing recorded"
    seconds = recorder.frames_on_disk / recorder.sample_rate
    return f"{text}; recorded {recorder.path} ({seconds:.2f} s)"


def count_refusal(metrics: ServerMetrics | None, reason: str) -> None:
    """One more socket or ``start`` refused for ``reason`` (pushed with the batched counts)."""
    if metrics is not None:
        metrics.refusals[reason] = metrics.refusals.get(reason, 0) + 1


def _ignore_outcome(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a close that failed is a socket already gone


async def _drop_player(stream: Stream) -> None:
    """Forget the stream's player: it belonged to a socket that is gone (pending playbacks
    resolve now); the next socket gets a new one."""
    player, stream.call._player = stream.call._player, None
    if player is not None:
        await player.close()


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
            reorder_depth=options.reorder_depth,
            codec_options=options.codec_options,
            max_gap_frames=round(options.max_gap_seconds * FRAMES_PER_SECOND),
        )
        self.transport = transport
        self.peer = peer
        self.stream: Stream | None = None
        self.close_code = CLOSE_NORMAL
        self.close_reason = ""
        self.last_activity = time.monotonic()
        self._opened_at = self.last_activity
        self._offsets: dict[str, int] = {}  # per track: this socket's shift onto the timeline
        self._resumed = False
        self._stopped_by_carrier = False
        self._finished = False
        self._counted = False  # this socket's counts went into its stream's totals
        self._handing_over = False  # another socket takes the stream once this one finishes
        self._broken = False  # an internal error happened on this socket
        self._done = asyncio.Event()
        self._early_errors: dict[str, int] = {}
        self._capture = CaptureWriter(options.capture_dir) if options.capture_dir else None
        self._auth_token = auth_token  # redacted from captures
        metrics = registry.metrics  # plain counters per frame, pushed in batches (metrics.py)
        self.meter: StreamMeter | None = None if metrics is None else metrics.meter(self.session)

    @property
    def log_id(self) -> str:
        """The stream id for log lines (escaped: it comes from the carrier)."""
        session = self.session
        stream_id = session.stream_id or session.claimed_stream_id
        return escape(stream_id) if stream_id else f"<unstarted from {self.peer}>"

    async def socket_closed(self) -> None:
        """The socket is gone (perhaps while a handler is busy): playback on it can only fail,
        so pending playbacks resolve now instead of waiting for echoes that cannot come."""
        stream = self.stream
        if stream is not None and stream.owner is self and stream.call._player is not None:
            player, stream.call._player = stream.call._player, None  # a resume gets a new one
            await player.close()

    async def hand_over(self, *, timeout: float) -> None:
        """Another socket takes this one's stream: close this socket and let it finish (its
        held audio is recorded), waiting at most ``timeout``; after that it records nothing."""
        self._handing_over = True
        self._end(CLOSE_POLICY, "stream taken over by a newer socket")
        # a half-open socket never answers the close: its handshake must not hold the newcomer
        closing = asyncio.ensure_future(self.transport.close(self.close_code, self.close_reason))
        closing.add_done_callback(_ignore_outcome)
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
        except TimeoutError:
            logger.warning("stream %s: the replaced socket did not finish in time", self.log_id)
        stream = self.stream
        if stream is not None and stream.owner is self:
            stream.owner = None
            await _drop_player(stream)

    def abandon(self, unread: Iterable[str | bytes]) -> None:
        """Shutdown gives up on this socket's task (its handler ignores cancellation): from
        now on it handles nothing, and its stream is ended without it. The audio of frames it
        never got to (``unread``) still goes to the recording."""
        self._broken = True
        self._end(CLOSE_INTERNAL_ERROR, "handler did not stop")
        stream = self.stream
        if stream is None or stream.recorder is None or stream.owner is not self:
            return
        stream.failed = True
        for message in unread:
            if isinstance(message, str):
                for event in self.session.receive_text(message):
                    if isinstance(event, Audio):
                        self._place(stream, event)
                        stream.recorder.append(event)

    async def receive(self, message: str | bytes) -> bool:
        """Handle one frame; False means the stream must end (the caller closes the socket
        with ``close_code``). Never raises: a failure here is a bug, and it ends this socket;
        what arrives after it is not handled (the state it left is not trusted)."""
        if self._broken:
            return False
        try:
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
        except Exception as exc:
            logger.exception("stream %s: internal error on a frame; closing", self.log_id)
            self._end(CLOSE_INTERNAL_ERROR, f"internal error ({type(exc).__name__})")
            self._broken = True
            if self.stream is not None and self.stream.owner is self:
                self.stream.failed = True  # no resume into whatever state this left
            return False

    async def finish(self) -> None:
        """The socket is gone: release held audio, then end or suspend the stream."""
        if self._finished:
            return
        self._finished = True
        try:
            await self._dispatch(self.session.close())
        except Exception:
            logger.exception("stream %s: releasing held audio failed", self.log_id)
        finally:
            try:
                if self.meter is not None:
                    self.meter.close()  # this socket's counting is over: push its counts now
                if self._capture is not None:
                    await self._capture.close()
            finally:
                try:
                    await self._release_stream()
                finally:
                    self._done.set()

    async def _release_stream(self) -> None:
        """This socket no longer owns its stream: end it, or suspend it for a reconnect."""
        stream = self.stream
        if stream is None or stream.owner is not self:
            return
        stream.owner = None
        self.count_into(stream)
        try:
            await _drop_player(stream)  # one made while the socket was closing, perhaps
        except Exception:
            logger.exception("stream %s: stopping playback failed", self.log_id)
        if self._handing_over and not (stream.failed or self._stopped_by_carrier):
            return  # the newer socket resumes the stream
        ended = stream.failed or self._stopped_by_carrier
        if ended or self.close_code != CLOSE_NORMAL:
            await self.registry.end(stream)
        else:
            await self.registry.suspend(stream)

    def count_into(self, stream: Stream) -> None:
        """Add this socket's counts to its stream's totals, once, when the socket is done."""
        if not self._counted:
            self._counted = True
            stream.totals.add(self.session)

    async def _dispatch(self, events: list[Event]) -> bool:
        keep_going = True
        stream = self.stream
        meter = self.meter
        if stream is not None and stream.owner is not self:
            return self._replaced(events)
        for index, event in enumerate(events):
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
                    if stream.owner is not self:  # taken over while the handler ran
                        return self._replaced(events[index + 1 :])
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
                logger.debug("stream %s: socket ended (%s)", self.log_id, event.reason)
                if event.reason == "stop":
                    self._stopped_by_carrier = True
                    keep_going = False  # the stream is over
            elif isinstance(event, Connected):
                logger.debug("connection from %s: connected, version %s", self.peer, event.version)
            if stream is not None and stream.failed:
                self._end(CLOSE_INTERNAL_ERROR, "handler failed")
                keep_going = False
        return keep_going

    def _replaced(self, events: list[Event]) -> bool:
        """This socket's stream was taken over: what it still delivers is not recorded."""
        lost = sum(len(e.pcm) for e in events if isinstance(e, Audio) and not e.missing)
        if lost:
            self._note_error(
                Error("replaced_socket_audio", f"{lost} samples from a replaced socket dropped")
            )
        self._end(CLOSE_POLICY, "stream taken over by a newer socket")
        return False

    def _place(self, stream: Stream, event: Audio) -> None:
        """Shift this socket's audio onto the stream's timeline (``_offset_for``)."""
        track = event.track
        offset = self._offsets.get(track)
        if offset is None:
            offset = self._offsets[track] = self._offset_for(stream, event)
            if stream.clock is None:
                stream.clock = (self.last_activity, event.position + offset)
        position = event.position = event.position + offset
        end = position + len(event.pcm)
        ends = stream.track_ends
        if end > ends.get(track, 0):
            ends[track] = end

    def _offset_for(self, stream: Stream, event: Audio) -> int:
        """Where this socket's audio of ``event.track`` goes, decided at its first frame.

        The session places a track by the carrier's ``timestamp``/``chunk``. On a resumed
        stream whose counters continue, that is already right for every track. If they
        restarted, all tracks of the socket get one shift: after what was received, or
        later if real time says so (the reconnect took a while). A first position beyond the
        gap bound (``max_gap_seconds``) is a discontinuity: nothing is written into the void.
        """
        position, end = event.position, stream.end_position
        bound = int(self.registry.options.max_gap_seconds * event.sample_rate)
        track_end = stream.track_ends.get(event.track, 0)
        tolerance = min(event.sample_rate, track_end // 2)  # a resent frame or two
        if self._resumed and position > 0 and track_end - tolerance <= position <= end + bound:
            return 0  # this track's counters continue across the reconnect
        if self._offsets:  # another track of this socket already chose the shift
            offset = next(iter(self._offsets.values()))
            if position + offset <= end + bound:
                return offset
            return self._restart(stream, event, end)
        if not self._resumed:
            return 0 if position <= bound else self._restart(stream, event, 0)
        target = end
        if stream.clock is not None:
            started, first = stream.clock
            real = first + int((time.monotonic() - started) * event.sample_rate)
            target = min(max(end, real), end + bound)
        logger.info(
            "stream %s: counters restarted on the new socket; its audio goes at sample %d",
            stream.log_id, target,
        )  # fmt: skip
        return target - position

    def _restart(self, stream: Stream, event: Audio, target: int) -> int:
        self._note_error(
            Error(
                "timeline_restart",
                f"{event.track} audio starts {event.position / event.sample_rate:.1f} s "
                f"away, beyond the gap bound: placed at {target / event.sample_rate:.1f} s",
            )
        )
        return target - event.position

    async def _on_started(self, event: Started) -> bool:
        fmt = event.media_format
        try:
            stream, resumed = await self.registry.open(event, self)
        except StreamRefused as refused:
            self._end(refused.code, refused.reason)
            return False
        self.stream, self._resumed = stream, resumed
        if resumed:
            return await stream.call_handler("on_reconnect")
        # a file continued after a killed process holds audio already: place after it
        self._resumed = stream.end_position > 0
        logger.info(
            "stream %s: started from %s, %s %d Hz (decoded at %d Hz)",
            stream.log_id, self.peer, escape(fmt.encoding), fmt.sample_rate, event.sample_rate,
        )  # fmt: skip
        for kind, count in self._early_errors.items():
            stream.error_counts[kind] = stream.error_counts.get(kind, 0) + count
        try:
            stream.handler = self.registry.handler_factory()
            stream.call.playback_config = stream.handler.playback or self.registry.options.playback
            stream.handler.call = stream.call
        except Exception:
            logger.exception("stream %s: creating the handler failed", stream.log_id)
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
            note_error(self._early_errors, self.log_id, error)
