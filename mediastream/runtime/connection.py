"""``StreamConnection``: one socket's dispatch, from its text frames to its stream's handler.

Every event goes to the recorder before the handler, so a failing handler never costs audio.
Audio is placed on the stream's timeline here (``_offset_for``), once per socket and track;
the event the session made is not changed: the recorder is told the position, and a handler
gets a shifted copy only when the shift is not zero. Only a ``Transport`` (send text, close)
is needed, so any server library can carry a connection.

Any exception on a socket's path that is not bad input (those are ``Error`` events) closes that
socket at once with 1011 and ends its stream, recording finalized with everything received.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from mediastream.logs import escape
from mediastream.media.capture import CaptureWriter
from mediastream.runtime.call import Transport
from mediastream.runtime.lifecycle import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY,
    CLOSE_UNSUPPORTED_DATA,
    Cause,
    SocketLifecycle,
    SocketState,
)
from mediastream.runtime.registry import Stream, StreamRefused, note_error
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

if TYPE_CHECKING:
    from mediastream.runtime.registry import StreamRegistry
    from mediastream.runtime.report import StreamFigures

logger = logging.getLogger(__name__)

FRAMES_PER_SECOND = 50  # 20 ms frames: what the gap bound in frames is counted in


def _ignore_outcome(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a close that failed is a socket already gone


class StreamConnection:
    """Drives one socket: feed it text frames (``receive``), then ``finish()`` when it ends."""

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
        self.life = SocketLifecycle()
        self.last_activity = time.monotonic()
        self._opened_at = self.last_activity
        self._offsets: dict[str, int] = {}  # per track: this socket's shift onto the timeline
        self._resumed = False  # its stream already held audio: place after it
        self._counted = False  # this socket's counts went into its stream's totals
        self._done = asyncio.Event()
        self._early_errors: dict[str, int] = {}
        self._figures: StreamFigures | None = None  # its stream's, while it owns it
        self._capture = CaptureWriter(options.capture_dir) if options.capture_dir else None
        self._auth_token = auth_token  # redacted from captures
        # the other instance this socket's URL names (``/i/<id>/``), set by the core: a
        # misrouted socket, or one whose instance died; served here all the same
        self.named_instance: str | None = None
        # plain counters per frame, published in batches (server/metrics.py)
        self.meter = registry.observer.socket_opened(self.session)

    @property
    def close_code(self) -> int:
        return self.life.code

    @property
    def close_reason(self) -> str:
        return self.life.reason

    @property
    def log_id(self) -> str:
        """The stream id for log lines (escaped: it comes from the carrier)."""
        session = self.session
        stream_id = session.stream_id or session.claimed_stream_id
        return escape(stream_id) if stream_id else f"<unstarted from {self.peer}>"

    @property
    def owns_stream(self) -> bool:
        return self.stream is not None and self.stream.owner is self

    @property
    def counted(self) -> bool:
        """Whether this socket's counts went into its stream's totals (it is done)."""
        return self._counted

    # ------------------------------------------------------------ what adapters and the core call

    async def receive(self, message: str | bytes) -> bool:
        """Handle one frame; False means the stream must end (the caller closes the socket
        with ``close_code``). Never raises: a failure here is a bug, and it ends this socket;
        what arrives after it is not handled (the state it left is not trusted)."""
        if self.life.caused_by(Cause.BROKEN) or self.life.caused_by(Cause.REFUSED):
            return False  # nothing after an internal error or a refusal is handled
        try:
            now = time.monotonic()
            self.last_activity = now
            if self._capture is not None:
                self._capture.add(now - self._opened_at, message, redact=self._auth_token)
            if isinstance(message, bytes):
                error = Error("binary_frame", "binary frame rejected: frames must be JSON text")
                self._note_error(error)
                return True
            session = self.session
            session.now = now  # arrival timing, when its stream's report follows this socket
            events = session.receive_text(message)
            if self._capture is not None and self.session.stream_id:
                self._capture.name(self.session.stream_id)
            return await self._dispatch(events)
        except Exception as exc:
            logger.exception("stream %s: internal error on a frame; closing", self.log_id)
            self.break_off(f"internal error ({type(exc).__name__})")
            return False

    def break_off(self, reason: str) -> None:
        """An internal error on this socket: it closes with 1011, handles nothing more, and
        its stream ends (recording kept) instead of waiting for a reconnect."""
        self.life.close(CLOSE_INTERNAL_ERROR, reason, Cause.BROKEN)
        if self.owns_stream:
            assert self.stream is not None
            self.stream.fail(f"ended by an internal error on its socket ({reason})")

    def close_idle(self, idle_seconds: float) -> bool:
        """The socket sent nothing for ``idle_seconds``: it closes with 1001 (True the first
        time, when the caller should close its transport)."""
        closing = self.life.close(CLOSE_GOING_AWAY, f"idle for {idle_seconds:g} s", Cause.IDLE)
        if closing:
            self.last_activity = float("inf")  # not idle again
        return closing

    def refuse_input(self, code: int, reason: str) -> None:
        """The adapter refused this socket's input (a frame too big, text not UTF-8)."""
        self.life.close(code, reason, Cause.BAD_INPUT)

    async def socket_closed(self) -> None:
        """The socket is gone (perhaps while a handler is busy): playback on it can only fail,
        so pending playbacks resolve now instead of waiting for echoes that cannot come."""
        if self.owns_stream:
            assert self.stream is not None
            await self.stream.call.drop_player()  # a resume gets a new one

    async def hand_over(self, *, timeout: float) -> None:
        """Another socket takes this one's stream: close this socket and let it finish (its
        held audio is recorded), waiting at most ``timeout``; after that it records nothing."""
        self.life.close(CLOSE_POLICY, "stream taken over by a newer socket", Cause.TAKEN_OVER)
        # a half-open socket never answers the close: its handshake must not hold the newcomer
        closing = asyncio.ensure_future(self.transport.close(self.close_code, self.close_reason))
        closing.add_done_callback(_ignore_outcome)
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
        except TimeoutError:
            logger.warning("stream %s: the replaced socket did not finish in time", self.log_id)
        stream = self.stream
        if stream is not None and stream.owner is self:
            self.count_into(stream)
            self.registry.hand_over(stream, self)
            await stream.call.drop_player()

    def abandon(self, unread: Iterable[str | bytes]) -> None:
        """Shutdown gives up on this socket's task (its handler ignores cancellation): from
        now on it handles nothing, and its stream is ended without it. The audio of frames it
        never got to (``unread``) still goes to the recording."""
        self.break_off("handler did not stop")
        stream = self.stream
        if stream is None or stream.recorder is None or stream.owner is not self:
            return
        for message in unread:
            if isinstance(message, str):
                for event in self.session.receive_text(message):
                    if isinstance(event, Audio):
                        placed = self._placed(stream, event)
                        stream.recorder.append(placed)
                        if placed.missing:
                            stream.recorder.not_received(placed)

    async def finish(self) -> None:
        """The socket is gone: release held audio, then end or suspend the stream."""
        if not self.life.finish():
            return
        try:
            await self._dispatch(self.session.close())
        except Exception:
            logger.exception("stream %s: releasing held audio failed", self.log_id)
        finally:
            try:
                if self._figures is not None and self.owns_stream:
                    self._figures.settle()  # its lags into its meter, before that closes
                if self.meter is not None:
                    self.meter.close()  # this socket's counting is over: publish it now
                if self._capture is not None:
                    await self._capture.close()
            finally:
                try:
                    await self._release_stream()
                finally:
                    self._done.set()

    def count_into(self, stream: Stream) -> None:
        """Add this socket's counts to its stream's totals, once, when the socket is done."""
        if not self._counted:
            self._counted = True
            stream.totals.add(self.session)

    # ------------------------------------------------------------ inside

    async def _release_stream(self) -> None:
        """This socket no longer owns its stream: end it, or suspend it for a reconnect."""
        stream = self.stream
        if stream is None or stream.owner is not self:
            return
        self.count_into(stream)
        life = self.life
        if life.caused_by(Cause.TAKEN_OVER) and not (stream.failed or life.stopped):
            self.registry.hand_over(stream, self)  # the newer socket resumes the stream
            await stream.call.drop_player()
            return
        await self.registry.release(stream, self, ends=life.ends_stream)

    async def _dispatch(self, events: list[Event]) -> bool:
        keep_going = True
        stream = self.stream
        meter = self.meter
        if stream is not None and stream.owner is not self:
            return self._replaced(events)
        figures = stream.figures if stream is not None else None
        for index, event in enumerate(events):
            if isinstance(event, Audio):
                if stream is None:
                    continue
                event = self._placed(stream, event)
                if stream.recorder is not None:
                    stream.recorder.append(event)  # blocks go to disk every 0.5 s
                    if event.missing:  # silence for a lost frame: not in the piece's ranges
                        stream.recorder.not_received(event)
                if stream.played is not None:  # where the timeline is: played audio goes there
                    stream.played.clock.frame(self, self.last_activity, event.position,
                                              event.sample_rate)  # fmt: skip
                if not event.late:  # handlers get an in-order stream; late audio patches files
                    if stream.call.listeners:  # call.listen(), fed before the handler as files are
                        stream.call.feed_listeners(event)
                    handled = await stream.call_handler("on_audio", event)
                    keep_going &= handled
                    voice = stream.voice  # speech events, barge-in: awaited only when due
                    if handled and voice is not None and voice.heard(event):
                        keep_going &= await voice.act()
                    if figures is not None:  # one call a frame: its audio, and its lag
                        if handled:  # the meter gets the lag from the figures, in bulk
                            figures.handled(event, self.last_activity)
                        else:
                            figures.audio(event)
                    elif handled and meter is not None:  # handler lag: plain ints
                        meter.handled(event, self.last_activity)
                elif figures is not None:
                    figures.audio(event)
                    if stream.owner is not self:  # taken over while the handler ran
                        return self._replaced(events[index + 1 :])
            elif isinstance(event, Started):
                keep_going &= await self._on_started(event)
                stream = self.stream
                figures = stream.figures if stream is not None else None
            elif isinstance(event, Dtmf):
                if stream is not None:
                    stream.call.dtmf_received(event.digit)  # collect_digits first, then on_dtmf
                    keep_going &= await stream.call_handler("on_dtmf", event.digit)
            elif isinstance(event, MarkEcho):
                if stream is not None and stream.call.mark_echoed(event.name):
                    keep_going &= await stream.call_handler("on_mark", event.name)
            elif isinstance(event, Error):
                self._note_error(event)
                if stream is not None:
                    keep_going &= await stream.call_handler("on_error", event)
                if event.fatal:
                    self.life.close(CLOSE_UNSUPPORTED_DATA, event.message, Cause.BAD_INPUT)
                    keep_going = False
            elif isinstance(event, Stopped):
                logger.debug("stream %s: socket ended (%s)", self.log_id, event.reason)
                if event.reason == "stop":
                    self.life.stop()
                    keep_going = False  # the stream is over
            elif isinstance(event, Connected):
                logger.debug("connection from %s: connected, version %s", self.peer, event.version)
            if stream is not None and stream.failed:
                self.life.close(CLOSE_INTERNAL_ERROR, "handler failed", Cause.HANDLER_FAILED)
                keep_going = False
        return keep_going

    def _replaced(self, events: list[Event]) -> bool:
        """This socket's stream was taken over: what it still delivers is not recorded."""
        lost = sum(len(e.pcm) for e in events if isinstance(e, Audio) and not e.missing)
        if lost:
            self._note_error(
                Error("replaced_socket_audio", f"{lost} samples from a replaced socket dropped")
            )
        self.life.close(CLOSE_POLICY, "stream taken over by a newer socket", Cause.TAKEN_OVER)
        return False

    def _placed(self, stream: Stream, event: Audio) -> Audio:
        """``event`` at its place on the stream's timeline: itself when this socket's shift
        (``_offset_for``) is zero, as it nearly always is; else a shifted copy."""
        track = event.track
        offset = self._offsets.get(track)
        if offset is None:
            offset = self._offsets[track] = self._offset_for(stream, event)
            if stream.clock is None:
                stream.clock = (self.last_activity, event.position + offset)
                if stream.piece is not None:  # where its recording sits on the call
                    stream.piece.placed(
                        track, event.position, event.position + offset, len(event.pcm)
                    )
        position = event.position + offset
        stream.extend(track, position + len(event.pcm))
        return event if offset == 0 else dataclasses.replace(event, position=position)

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
            return self._restart(event, end)
        if not self._resumed:
            return 0 if position <= bound else self._restart(event, 0)
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

    def _restart(self, event: Audio, target: int) -> int:
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
            self.registry.observer.refused(refused.kind)
            self.life.close(refused.code, refused.reason, Cause.REFUSED)
            return False
        self.stream, self._resumed = stream, resumed
        self._figures = stream.figures
        if stream.figures is not None:  # its arrivals timed, its lags into this socket's meter
            stream.figures.follow(self.session, self.meter)
        if self.named_instance is not None:
            logger.info(
                "stream %s: its URL names instance %s, not this one; served here",
                stream.log_id, escape(self.named_instance),
            )  # fmt: skip
        if self.life.state is SocketState.OPEN:
            self.life.stream()
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
            speech = stream.handler.speech or self.registry.options.speech
            if speech is not None:
                self.registry.listen_for_speech(stream, speech)
        except Exception:
            stream.fail("creating the handler failed", exc_info=True)
            return False
        return await stream.call_handler("on_start")

    def _note_error(self, error: Error) -> None:
        if self.meter is not None:
            self.meter.error(error.kind)
        if self.stream is not None:
            self.stream.note_error(error)
        else:
            note_error(self._early_errors, self.log_id, error)
