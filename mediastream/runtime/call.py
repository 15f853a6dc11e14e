"""``Call``: the call behind a stream, as its handler sees it: ids, parameters, playback.

Its constructor takes only what ``start`` said. The socket it plays to is attached by the
runtime (``attach``) and changes on a reconnect; its player is made by the first ``play``,
``mark`` or ``clear``, never by reading an attribute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mediastream.config import PlaybackConfig
from mediastream.media.playback import Playback, Player
from mediastream.protocol.frames import MediaFormat
from mediastream.runtime.lifecycle import CLOSE_INTERNAL_ERROR, CLOSE_NORMAL
from mediastream.session import Session, Started


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
    _tally: PlaybackTally = field(default_factory=PlaybackTally, init=False, repr=False)
    _transport: Transport | None = field(default=None, init=False, repr=False)
    _session: Session | None = field(default=None, init=False, repr=False)
    _player: Player | None = field(default=None, init=False, repr=False)

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
            )
        return self._player

    async def _send_text(self, text: str) -> None:
        transport, _ = self._require()
        await transport.send(text)

    async def _on_send_failure(self, error: Exception) -> None:
        transport, _ = self._require()
        await transport.close(CLOSE_INTERNAL_ERROR, "send timeout: the socket stopped draining")

    async def play(self, pcm: np.ndarray, sample_rate: int) -> Playback:
        """Queue int16 mono PCM for the caller; ``await (await play(...)).finished()``."""
        return self._tally.add(await self._ensure_player().play(pcm, sample_rate))

    async def play_file(self, path: str | Path) -> Playback:
        """Play any file soundfile reads (WAV, FLAC, OGG, MP3), at any rate."""
        return self._tally.add(await self._ensure_player().play_file(str(path)))

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
