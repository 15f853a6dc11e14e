"""``Call``: the call behind a stream, as its handler sees it: ids, parameters, playback.

Its constructor takes only what ``start`` said. The socket it plays to is attached by the
runtime (``attach``) and changes on a reconnect; its player is made by the first ``play``,
``mark`` or ``clear``, never by reading an attribute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

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
        return await self._ensure_player().play(pcm, sample_rate)

    async def play_file(self, path: str | Path) -> Playback:
        """Play any file soundfile reads (WAV, FLAC, OGG, MP3), at any rate."""
        return await self._ensure_player().play_file(str(path))

    async def mark(self, name: str) -> None:
        """A ``mark`` after the audio queued so far; echoed to ``on_mark`` once that played."""
        await self._ensure_player().mark(name)

    async def clear(self) -> None:
        """Barge-in: stop playback now, drop our queue and the carrier's (queued marks return)."""
        await self._ensure_player().clear()

    async def hang_up_stream(self, reason: str = "closed by application") -> None:
        """Close this stream's socket (the call itself goes on)."""
        transport, _ = self._require()
        await transport.close(CLOSE_NORMAL, reason)
