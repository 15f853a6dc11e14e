"""``Call``: the call behind a stream, as its handler sees it: ids, parameters, playback.

Its constructor takes only what ``start`` said. The socket it plays to is attached by the
runtime (``attach``) and changes on a reconnect; its player is made by the first ``play``,
``mark`` or ``clear``, never by reading an attribute.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mediastream.config import PlaybackConfig
from mediastream.logs import escape
from mediastream.media.playback import Playback, Player
from mediastream.media.played import OnPlayed
from mediastream.protocol.frames import MediaFormat
from mediastream.runtime.lifecycle import CLOSE_INTERNAL_ERROR, CLOSE_NORMAL
from mediastream.session import TRACKS, Audio, Session, Started
from mediastream.voice.digits import TYPE_AHEAD_SECONDS, DigitResult, DigitRouter
from mediastream.voice.listen import MAX_BUFFER_SECONDS, Listener


class Transport(Protocol):
    """What a stream needs of its socket: send a text frame, close. Adapters provide it."""

    async def send(self, text: str) -> None: ...

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None: ...


class PlaybackTally:
    """What a call played, for its report: counts, and the playbacks not resolved yet (those a
    player still holds; resolved ones are folded into the totals at the next ``add``)."""

    __slots__ = ("_pending", "cleared", "heard_ms", "items")

    def __init__(self) -> None:
        self.items = 0
        self.cleared = 0
        self.heard_ms = 0.0  # of resolved playbacks
        self._pending: list[Playback] = []

    def add(self, playback: Playback) -> Playback:
        self.items += 1
        self._fold()
        self._pending.append(playback)
        return playback

    def clearing(self) -> None:
        """A ``clear`` is about to cut every unresolved playback short."""
        self._fold()
        self.cleared += len(self._pending)

    def _fold(self) -> None:
        if any(p.done for p in self._pending):
            self.heard_ms += sum(p.heard_ms for p in self._pending if p.done)
            self._pending = [p for p in self._pending if not p.done]

    def totals(self) -> tuple[int, float, int]:
        self._fold()
        return self.items, self.heard_ms + sum(p.heard_ms for p in self._pending), self.cleared


@dataclass(eq=False)
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
    playback_config: PlaybackConfig = field(default_factory=PlaybackConfig, repr=False)
    # the stream's quality report (``mediastream.runtime.report``), a JSON-ready dict: set
    # when the stream ends, before ``on_stop`` runs; None while it is live, or with reports off
    report: dict[str, Any] | None = field(default=None, repr=False)
    # what each player sent goes here, at ``sample_rate``, once played (``PlayoutTap``): the
    # runtime sets it to record the playback (``StreamOptions.record_playback``)
    on_played: OnPlayed | None = field(default=None, init=False, repr=False)
    _tally: PlaybackTally = field(default_factory=PlaybackTally, init=False, repr=False)
    _transport: Transport | None = field(default=None, init=False, repr=False)
    _session: Session | None = field(default=None, init=False, repr=False)
    _player: Player | None = field(default=None, init=False, repr=False)
    # ``listen`` and ``collect_digits``: the runtime feeds them (``feed_listeners``,
    # ``dtmf_received``) and ends them (``end_media``); an empty tuple costs _dispatch nothing
    listeners: tuple[Listener, ...] = field(default=(), init=False, repr=False)
    _digits: DigitRouter | None = field(default=None, init=False, repr=False)
    _reader: asyncio.Task[Any] | None = field(default=None, init=False, repr=False)
    _media_ended: bool = field(default=False, init=False, repr=False)

    @classmethod
    def from_started(cls, event: Started) -> Call:
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
        )

    # ------------------------------------------------------------ the runtime's side

    def attach(self, transport: Transport, session: Session) -> None:
        """Point the outbound commands at a socket (the first, or a new one after a reconnect)."""
        self._transport, self._session = transport, session
        self._reader = asyncio.current_task()  # reads the socket and runs handler methods

    def feed_listeners(self, event: Audio) -> None:
        """One placed, in-order frame (lost ones as silence) for the ``listen`` iterators."""
        for listener in self.listeners:
            if listener.track == event.track:
                listener.feed(event.pcm, event.position, event.sample_rate)

    def dtmf_received(self, digit: str) -> None:
        """A key, for ``collect_digits`` (before ``on_dtmf``, which gets it too)."""
        self._digit_router().pressed(digit)

    def end_media(self) -> None:
        """The stream ended: listeners get their last chunk and stop; ``collect_digits``
        returns ``stream_ended`` (now and from then on)."""
        self._media_ended = True
        for listener in self.listeners:
            listener.end()
        self._digit_router().end()

    async def drop_player(self) -> None:
        """Forget the player: it belonged to a socket that is gone (pending playbacks resolve
        now, as not heard to the end); the next ``play`` makes a new one."""
        player, self._player = self._player, None
        if player is not None:
            await player.close()

    def mark_echoed(self, name: str) -> bool:
        """The carrier echoed mark ``name``: True if it is the application's (for ``on_mark``),
        False if it was one of the player's own."""
        return self._player.on_mark_echo(name) if self._player is not None else True

    @property
    def has_player(self) -> bool:
        """Something was played, marked or cleared on this socket (barge-in checks this
        before anything dearer)."""
        return self._player is not None

    @property
    def queued_ms(self) -> float:
        """Audio queued for the caller and not yet heard (0 without a player)."""
        return self._player.queued_ms if self._player is not None else 0.0

    # ------------------------------------------------------------ the application's side

    def _require(self) -> tuple[Transport, Session]:
        if self._transport is None or self._session is None:
            raise RuntimeError(f"stream {self.stream_id}: call is not connected to a socket")
        return self._transport, self._session

    async def send_media(self, payload: bytes) -> None:
        """Send one already-encoded ``media`` payload (RTP payload bytes or a whole MP3 file)."""
        transport, session = self._require()
        await transport.send(session.media(payload))

    def _ensure_player(self) -> Player:
        if self._player is None:
            _, session = self._require()
            self._player = Player(
                self._send_text,
                self.playback_config,
                stream_id=self.stream_id,
                on_failure=self._on_send_failure,
                outbound=session.outbound,  # frames in the dialect the stream started in
                on_played=self.on_played,
                played_rate=self.sample_rate,
            )
        return self._player

    async def _send_text(self, text: str) -> None:
        transport, _ = self._require()
        await transport.send(text)

    async def _on_send_failure(self, error: Exception) -> None:
        transport, _ = self._require()
        await transport.close(CLOSE_INTERNAL_ERROR, "send timeout: the socket stopped draining")

    async def play(
        self, pcm: np.ndarray, sample_rate: int, *, interruptible: bool = True
    ) -> Playback:
        """Queue int16 mono PCM for the caller; ``await (await play(...)).finished()``.

        With speech detection on, the caller speaking over it for ``barge_in_ms`` clears it
        (``finished()`` is False, ``heard_ms`` says how much was heard, ``on_interrupted``
        runs), unless ``interruptible=False``: a greeting or a disclosure plays to the end.
        """
        player = self._ensure_player()
        return self._tally.add(await player.play(pcm, sample_rate, interruptible=interruptible))

    async def play_file(self, path: str | Path, *, interruptible: bool = True) -> Playback:
        """Play any file soundfile reads (WAV, FLAC, OGG, MP3), at any rate."""
        player = self._ensure_player()
        return self._tally.add(await player.play_file(str(path), interruptible=interruptible))

    async def interrupt_for_speech(self) -> Playback | None:
        """Barge-in: clear playback if what is pending may be interrupted; returns the
        playback the caller cut off (None: nothing cleared)."""
        player = self._player
        if player is None or self._transport is None:
            return None
        target = player.barge_in_target()
        if target is None:
            return None
        await self.clear()
        return target

    async def mark(self, name: str) -> None:
        """A ``mark`` after the audio queued so far; echoed to ``on_mark`` once that played."""
        await self._ensure_player().mark(name)

    async def clear(self) -> None:
        """Barge-in: stop playback now, drop our queue and the carrier's (queued marks return)."""
        player = self._ensure_player()
        self._tally.clearing()
        await player.clear()

    def playback_totals(self) -> tuple[int, float, int]:
        """(playbacks queued, ms of them heard so far, playbacks cut short by ``clear``)."""
        return self._tally.totals()

    async def hang_up_stream(self, reason: str = "closed by application") -> None:
        """Close this stream's socket (the call itself goes on)."""
        transport, _ = self._require()
        await transport.close(CLOSE_NORMAL, reason)

    # ------------------------------------------------------------ voice-bot building blocks

    def listen(
        self,
        track: str = "inbound",
        *,
        chunk_ms: int = 100,
        sample_rate: int | None = None,
        max_buffer_seconds: float = MAX_BUFFER_SECONDS,
    ) -> Listener:
        """``track``'s audio from now on, in ``chunk_ms`` chunks at ``sample_rate`` (None: the
        stream's decoded rate), for a speech-to-text socket: ``async for chunk in
        self.call.listen(sample_rate=16000): await stt.send(chunk.tobytes())``.

        One stateful resampler: the chunks joined are exactly the track resampled whole; lost
        frames (and a reconnect's gap) are silence, as in the recording, so ``chunk.start_ms``
        stays on the call's timeline. It starts with the next frame and ends when the stream
        ends (the last chunk shorter) or on ``close()``/``async with``. Unread,
        it keeps ``max_buffer_seconds`` and drops the oldest (``dropped_ms``, logged once).
        Iterate it in a task: inside a handler method no audio can arrive (RuntimeError).
        """
        if track not in TRACKS:
            raise ValueError(f"track must be one of {', '.join(TRACKS)}, not {track!r}")
        listener = Listener(
            track,
            chunk_ms=chunk_ms,
            sample_rate=sample_rate,
            max_buffer_seconds=max_buffer_seconds,
            log_id=escape(self.stream_id),
            on_close=self._forget_listener,
            guard=lambda: self._not_in_handler("iterating listen()"),
        )
        if self._media_ended:
            listener.end()
        else:
            self.listeners = (*self.listeners, listener)
        return listener

    def _forget_listener(self, listener: Listener) -> None:
        self.listeners = tuple(x for x in self.listeners if x is not listener)

    async def collect_digits(
        self,
        *,
        max_digits: int | None = None,
        terminator: str | None = "#",
        first_digit_timeout: float | None = 5.0,
        inter_digit_timeout: float | None = 3.0,
        total_timeout: float | None = None,
        type_ahead_seconds: float = TYPE_AHEAD_SECONDS,
    ) -> DigitResult:
        """Collect what the caller types: ends at ``max_digits``, at a ``terminator`` key (not
        in ``digits``; several keys: any of them), or at a timeout (None: that one is off):
        ``first_digit_timeout`` until the first key, ``inter_digit_timeout`` between keys
        (each key extends), ``total_timeout`` a ceiling no key extends. Keys pressed within
        ``type_ahead_seconds`` before the call count, as if typed at its start (0: only keys
        from now on). Every key still reaches ``on_dtmf``. See ``mediastream.voice.digits``.

        Await it in a task (``asyncio.create_task``, from ``on_start`` or ``on_dtmf``):
        inside a handler method no key can arrive, so it raises RuntimeError there.
        """
        return await self._digit_router().collect(
            max_digits=max_digits,
            terminator=terminator,
            first_digit_timeout=first_digit_timeout,
            inter_digit_timeout=inter_digit_timeout,
            total_timeout=total_timeout,
            type_ahead_seconds=type_ahead_seconds,
        )

    def _digit_router(self) -> DigitRouter:
        if self._digits is None:
            self._digits = DigitRouter(
                escape(self.stream_id), guard=lambda: self._not_in_handler("collect_digits()")
            )
        return self._digits

    def _not_in_handler(self, what: str) -> None:
        """Waiting for media inside a handler method waits forever: the socket's next frame
        is read only after the method returns."""
        if self._reader is not None and asyncio.current_task() is self._reader:
            raise RuntimeError(
                f"stream {escape(self.stream_id)}: {what} inside a handler method would wait "
                "forever (the stream's frames are read after the method returns): run it in "
                "a task, asyncio.create_task(...)"
            )
