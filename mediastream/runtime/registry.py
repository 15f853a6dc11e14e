"""Streams by id: ``Stream`` (one stream id across its sockets) and the ``StreamRegistry`` that
creates, resumes, suspends and ends them, driving each one's ``StreamLifecycle``.

A stream outlives its socket. When a socket closes without ``stop``, the stream is suspended
for a grace period; a new socket whose ``start`` names the same id resumes it: the same handler
instance (``on_reconnect``), the same recording, audio placed on the stream's timeline.

A stream has one owner at a time: the socket whose audio it records and to which its playback
goes. A second socket naming a live id waits ``takeover_seconds``: if the owner closes or sends
nothing for that long, the newcomer takes over (the owner is closed with 1008); if the owner
keeps sending, the newcomer is refused with 1008. Audio of two sockets never interleaves.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mediastream.config import SpeechOptions, StreamOptions
from mediastream.errors import MediaStreamError
from mediastream.logs import escape
from mediastream.media.recording import WavRecorder, open_recording
from mediastream.runtime.call import Call
from mediastream.runtime.handler import HandlerFactory, StreamHandler
from mediastream.runtime.level_pool import LevelPool
from mediastream.runtime.lifecycle import (
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN_LATER,
    StreamLifecycle,
    StreamState,
)
from mediastream.runtime.observer import NO_OBSERVER, Observer
from mediastream.runtime.pieces import StreamPiece
from mediastream.runtime.played import PlayedTrack
from mediastream.runtime.report import (
    CLIP_LEVEL,
    StreamFigures,
    describe,
    encode,
    live_view,
    write_sidecar,
)
from mediastream.session import Error, Session, Started

if TYPE_CHECKING:
    from mediastream.runtime.connection import StreamConnection
    from mediastream.runtime.voice import SpeechBanks, StreamVoice

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class StreamTotals:
    """Counts summed over a stream's sockets, added once per socket as it finishes (never per
    frame): what the one line logged at the stream's end says."""

    sockets: int = 0
    frames: int = 0  # media frames received
    lost: int = 0  # given up as lost: handlers got silence (late ones included)
    reordered: int = 0
    late: int = 0  # came after their slot was given up: back in the recording only
    duplicated: int = 0  # a second copy of a frame already held or released: dropped

    def add(self, session: Session) -> None:
        self.sockets += 1
        self.frames += session.stats.media_frames
        for stats in session.reorder_stats().values():
            self.lost += stats.gaps
            self.reordered += stats.reordered
            self.late += stats.late
            self.duplicated += stats.duplicates


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


@dataclass(eq=False)
class Stream:
    """One stream id across its sockets: the handler, the recording, the audio timeline."""

    stream_id: str
    call: Call
    life: StreamLifecycle[StreamConnection]
    handler: StreamHandler | None = None
    recorder: WavRecorder | None = None
    # one past the last sample received, per track, on the stream's timeline
    track_ends: dict[str, int] = field(default_factory=dict)
    error_counts: dict[str, int] = field(default_factory=dict)
    # (monotonic time, position) of the first audio: real time, for a resume that restarts
    clock: tuple[float, int] | None = None
    sample_rate: int = 0  # the decoded rate: positions on the timeline count these samples
    opened_at: float = field(default_factory=time.monotonic)
    totals: StreamTotals = field(default_factory=StreamTotals)
    observer: Observer = field(default=NO_OBSERVER, repr=False)
    limits: HandlerLimits | None = field(default=None, repr=False)
    figures: StreamFigures | None = field(default=None, repr=False)  # None: reports off
    voice: StreamVoice | None = field(default=None, repr=False)  # None: no speech detection
    # what our players sent, into the recording (None: ``record_playback`` off)
    played: PlayedTrack | None = field(default=None, repr=False)
    # where its recording sits on the call, for a merge (None: no recording)
    piece: StreamPiece | None = field(default=None, repr=False)
    log_id: str = ""

    def __post_init__(self) -> None:
        self.log_id = escape(self.stream_id)

    @property
    def state(self) -> StreamState:
        return self.life.state

    @property
    def owner(self) -> StreamConnection | None:
        return self.life.owner

    @property
    def ended(self) -> bool:
        return self.life.ended

    @property
    def failed(self) -> bool:
        return self.life.failed

    @property
    def end_position(self) -> int:
        """One past the last sample received on any track."""
        return max(self.track_ends.values(), default=0)

    def extend(self, track: str, end: int) -> None:
        """Audio of ``track`` now reaches sample ``end`` (exclusive) on the timeline."""
        if end > self.track_ends.get(track, 0):
            self.track_ends[track] = end

    def fail(self, what: str, *, exc_info: bool = False) -> None:
        """Something ended this stream's life (logged): no more handler calls, no resume."""
        if self.life.fail():
            logger.error("stream %s: %s", self.log_id, what, exc_info=exc_info)

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
            what = f"did not return within {limit:.1f} s of the drain; cancelled"
            self._handler_failed(name, what)
            return False
        except asyncio.CancelledError:
            if self.limits is None or not self.limits.was_stopped(asyncio.current_task()):
                raise
            self._handler_failed(name, "was still running at the end of the drain; cancelled")
            return False
        except Exception:
            self._handler_failed(name, "raised; ending this stream", exc_info=True)
            return False
        return True

    def _handler_failed(self, name: str, what: str, *, exc_info: bool = False) -> None:
        self.observer.handler_failed()
        self.life.fail()
        handler = type(self.handler).__name__
        logger.error(
            "stream %s: handler %s.%s %s", self.log_id, handler, name, what, exc_info=exc_info
        )

    def note_error(self, error: Error) -> None:
        note_error(self.error_counts, self.log_id, error)


def note_error(counts: dict[str, int], log_id: str, error: Error) -> None:
    """Log the first error of each kind with its message; count the rest."""
    counts[error.kind] = counts.get(error.kind, 0) + 1
    if counts[error.kind] == 1:
        level = logging.ERROR if error.fatal else logging.WARNING
        logger.log(level, "stream %s: %s: %s", log_id, error.kind, escape(error.message))


class StreamRefused(MediaStreamError):
    """A ``start`` that this server will not take: the socket closes with ``code``."""

    def __init__(self, code: int, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.code, self.reason, self.kind = code, reason, kind


class StreamRegistry:
    """Live and suspended streams by id; creates, resumes, suspends and ends them."""

    def __init__(
        self,
        handler_factory: HandlerFactory,
        options: StreamOptions,
        *,
        observer: Observer = NO_OBSERVER,
        max_streams: int | None = None,
    ) -> None:
        self.handler_factory = handler_factory
        self.options = options
        # every stream's level figures, folded for all at once (``runtime/level_pool.py``)
        self.level_pool = LevelPool(options.digital_silence_peak, CLIP_LEVEL)
        self.observer = observer
        self.max_streams = max_streams  # live and suspended streams
        # why new streams cannot start now, (reason, metric label), or None: asked at each
        # new stream's ``start`` (the upload backlog's bound, ``mediastream.storage``)
        self.admission: Callable[[], tuple[str, str] | None] | None = None
        self.limits = HandlerLimits(options.handler_stop_seconds)
        self._streams: dict[str, Stream] = {}
        self._expiries: dict[Stream, asyncio.TimerHandle] = {}
        self._ending: set[asyncio.Future[None]] = set()  # streams whose grace period ran out
        self._recent: deque[dict[str, Any]] = deque(maxlen=options.recent_reports)
        self._speech_banks: SpeechBanks | None = None  # made when a stream first listens
        # named in every recording's piece description (``Config.instance_id``, set by the core)
        self.instance_id: str | None = None

    def listen_for_speech(self, stream: Stream, options: SpeechOptions) -> None:
        """Speech detection (and barge-in) on ``stream``, sharing the server's Silero banks."""
        from mediastream.runtime.voice import SpeechBanks, StreamVoice  # only when asked for

        if self._speech_banks is None:
            self._speech_banks = SpeechBanks()
        stream.voice = StreamVoice(stream, options, self._speech_banks)

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._streams

    def __iter__(self) -> Iterator[Stream]:
        return iter(list(self._streams.values()))

    def get(self, stream_id: str) -> Stream | None:
        return self._streams.get(stream_id)

    def calls(self) -> list[Call]:
        """The calls of every live or suspended stream (for gauges and ``/streams``)."""
        return [stream.call for stream in self._streams.values()]

    def live_snapshots(self, offset: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Every live or suspended stream's live view, JSON-ready (``report.live_view``); or
        the ``limit`` streams from ``offset`` on, in start order: a page of ``GET /streams``
        then costs its own streams only (a snapshot takes about 18 µs: 18 ms for 1,000)."""
        end = None if limit is None else offset + limit
        return [
            s.figures.snapshot() if s.figures is not None else live_view(s, None)
            for s in itertools.islice(self._streams.values(), offset, end)
        ]

    def recent_reports(self) -> list[dict[str, Any]]:
        """The reports of the last ``recent_reports`` ended streams, newest first; each has
        one more key, ``sidecar``: the JSON file's path, or None if none was written. Each
        call gives new top-level dicts; the values inside are shared: read them only."""
        return [dict(report) for report in self._recent]

    async def open(self, event: Started, connection: StreamConnection) -> tuple[Stream, bool]:
        """The stream for this ``start``: a resumed one if the id is live or suspended.

        Raises ``StreamRefused`` when the id is live on another socket that keeps sending,
        or when the stream limit is reached.
        """
        stream = self._streams.get(event.stream_id)
        while stream is not None and stream.owner is not None:
            await self._contest(stream, connection)
            stream = self._streams.get(event.stream_id)  # ended meanwhile, or owned by another
        if stream is not None and stream.state is StreamState.FAILED:
            await self.end(stream)  # its handler failed while it was suspended
            stream = None
        if stream is not None and stream.state is StreamState.SUSPENDED:
            self._cancel_expiry(stream)
            await stream.call.drop_player()
            stream.life.resume(connection)
            connection.last_activity = time.monotonic()  # judged from now on, if contested
            if stream.figures is not None:
                stream.figures.reconnected(stream.end_position)
            stream.call.attach(connection.transport, connection.session)
            logger.info("stream %s: resumed on a new socket", stream.log_id)
            if stream.recorder is None and self.options.record_dir is not None:
                await self._record(stream, event)  # opening it failed before: try again
            return stream, True
        refused = self.admission() if self.admission is not None else None
        if refused is not None:
            raise StreamRefused(CLOSE_TRY_AGAIN_LATER, *refused)
        if self.max_streams is not None and len(self._streams) >= self.max_streams:
            reason = f"stream limit reached ({self.max_streams} streams, live or suspended)"
            raise StreamRefused(CLOSE_TRY_AGAIN_LATER, reason, "stream_limit")
        call = Call.from_started(event)
        call.attach(connection.transport, connection.session)
        stream = Stream(
            event.stream_id,
            call,
            StreamLifecycle(connection),
            observer=self.observer,
            limits=self.limits,
            sample_rate=event.sample_rate,
        )
        if self.options.reports:
            stream.figures = StreamFigures(stream, self.options, self.level_pool)
        self._streams[event.stream_id] = stream
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
                logger.warning(
                    "stream %s: refused a second socket from %s: the stream is live on a "
                    "socket from %s that is still sending", stream.log_id, newcomer.peer,
                    owner.peer,
                )  # fmt: skip
                raise StreamRefused(
                    CLOSE_POLICY, "stream id is live on another socket", "stream_id_in_use"
                )
            await asyncio.sleep(min(0.05, window / 10))

    async def _record(self, stream: Stream, event: Started) -> None:
        """Open the stream's recording; a failure is logged and counted, never fatal."""
        if self.options.record_playback and stream.played is None:  # its players tap into it
            stream.played = PlayedTrack(stream)
            stream.call.on_played = stream.played.add
        try:
            stream.recorder = await asyncio.to_thread(self._open_recorder, event)
        except Exception as exc:  # recorders retry what the disk refuses: this is a bug
            self.observer.recording_open_failed()
            logger.error(
                "stream %s: cannot record to %s: %s (the stream goes on unrecorded; "
                "a reconnect tries again)", stream.log_id, self.options.record_dir, exc,
            )  # fmt: skip
            return
        stream.piece = StreamPiece(
            stream.recorder, stream.stream_id, stream.call.call_control_id, self.instance_id,
            self.options.piece_max_spans,
        )  # fmt: skip
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
            max_backlog_seconds=self.options.max_backlog_seconds,
            playback=self.options.record_playback,
            # positions are the stream's own timeline: a continued file's audio already
            # counts in it (``_record`` sets ``track_ends``), so the recorder adds no offset
            append=False,
        )
        if recorder.path is not None:  # else the recorder said why, and retries
            logger.debug("stream %s: recording to %s", escape(event.stream_id), recorder.path)
        return recorder

    async def release(self, stream: Stream, owner: StreamConnection, *, ends: bool) -> None:
        """``owner``'s socket is done with ``stream``: end it, or keep it for a reconnect."""
        try:
            await stream.call.drop_player()  # one made while the socket was closing, perhaps
        except Exception:
            logger.exception("stream %s: stopping playback failed", stream.log_id)
        grace = self.options.resume_grace_seconds
        if ends or stream.failed or grace <= 0 or self.limits.deadline is not None:
            await self.end(stream)
            return
        stream.life.suspend(owner)
        if stream.recorder is not None:
            stream.recorder.flush()  # everything on disk while we wait
        loop = asyncio.get_running_loop()
        self._expiries[stream] = loop.call_later(grace, self._expire, stream)
        logger.debug("stream %s: socket closed; kept %.0f s for a reconnect", stream.log_id, grace)

    def hand_over(self, stream: Stream, owner: StreamConnection) -> None:
        """``owner`` lets a newer socket have the stream: suspended, with no grace timer (the
        newcomer is waiting to resume it)."""
        if stream.owner is owner and stream.state is StreamState.LIVE:
            stream.life.suspend(owner)

    def _cancel_expiry(self, stream: Stream) -> None:
        timer = self._expiries.pop(stream, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, stream: Stream) -> None:
        self._expiries.pop(stream, None)
        task = asyncio.ensure_future(self.end(stream))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)
        task.add_done_callback(_log_task_failure)

    async def end(self, stream: Stream) -> None:
        """Finish the recording, tell the handler, forget the stream (idempotent)."""
        owner = stream.owner
        if not stream.life.end():
            return
        if owner is not None:  # ended under a live socket (shutdown): count what it received
            owner.count_into(stream)
        self._cancel_expiry(stream)
        if self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
        try:
            await stream.call.drop_player()
        except Exception:
            logger.exception("stream %s: stopping playback failed", stream.log_id)
        try:
            if stream.recorder is not None:
                stream.recorder.close()
        except Exception:
            logger.exception("stream %s: finalizing %s failed", stream.log_id, stream.recorder.path)
        if stream.piece is not None:
            try:
                await stream.piece.finish()
            except Exception as exc:
                logger.error(
                    "stream %s: cannot write the piece description beside %s: %s",
                    stream.log_id, stream.recorder and stream.recorder.path, exc,
                )  # fmt: skip
        if stream.voice is not None:  # an utterance still open ends before on_stop
            await stream.voice.finish()
        report = await self._report(stream) if stream.figures is not None else None
        try:  # listen() iterators end after their last chunk; collect_digits returns
            stream.call.end_media()
        except Exception:
            logger.exception("stream %s: ending its listeners failed", stream.log_id)
        await stream.call_handler("on_stop")
        repeated = {kind: n for kind, n in stream.error_counts.items() if n > 1}
        if repeated:
            logger.warning("stream %s: repeated errors: %s", stream.log_id, repeated)
        # one line per stream end: what the stream got, then its quality in brief
        quality = f"; {describe(report)}" if report is not None else ""
        logger.info("stream %s: %s%s", stream.log_id, summary(stream), quality)

    async def _report(self, stream: Stream) -> dict[str, Any] | None:
        """The ended stream's report: written beside its WAV, given to its ``Call``, kept
        among the recent ones. Nothing here ends the server: a failure is logged."""
        assert stream.figures is not None
        try:
            recorder = stream.recorder
            stream.figures.recording = recorder.path if recorder is not None else None
            report = stream.figures.report()
            text = encode(report)
        except Exception:
            logger.exception("stream %s: making its quality report failed", stream.log_id)
            return None
        finally:
            stream.figures.release()  # its level rows serve other streams
        sidecar = None
        if stream.figures.recording is not None:
            try:
                sidecar = await asyncio.to_thread(write_sidecar, stream.figures.recording, text)
            except Exception as exc:
                logger.error(
                    "stream %s: cannot write its report beside %s: %s",
                    stream.log_id, stream.figures.recording, exc,
                )  # fmt: skip
        stream.call.report = report
        kept = json.loads(text)  # a copy of its own: the handler may change the call's
        kept["sidecar"] = str(sidecar) if sidecar is not None else None
        self._recent.appendleft(kept)
        return report

    async def close_all(self) -> None:
        """End every stream, live or suspended (server shutdown), all at once: each one's
        ``on_stop`` is bounded during a drain, and none waits for another."""
        streams = list(self._streams.values())
        results = await asyncio.gather(*(self.end(s) for s in streams), return_exceptions=True)
        for stream, result in zip(streams, results, strict=True):
            if isinstance(result, BaseException):
                logger.error("stream %s: ending failed: %r", stream.log_id, result)
        if self._ending:  # expired just before: their on_stop is under way
            await asyncio.gather(*self._ending, return_exceptions=True)
        if self._speech_banks is not None:
            await self._speech_banks.close()


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


def _log_task_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("ending a suspended stream failed", exc_info=task.exception())
