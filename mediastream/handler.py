"""The application API: subclass ``StreamHandler``; one instance serves one stream.

``Call`` carries the stream's ids and its outbound commands; ``StreamOptions`` the settings every
stream of a server shares. The runtime that drives handlers is in ``streams.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from mediastream.playback import Playback, PlaybackConfig, Player
from mediastream.protocol.frames import MediaFormat
from mediastream.session import (
    Audio,
    Error,
    Session,
    Started,
)

if TYPE_CHECKING:
    from mediastream.telnyx.webhooks import StreamStatusEvent

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
    playback_config: PlaybackConfig = field(default_factory=PlaybackConfig, repr=False)
    _player: Player | None = field(default=None, repr=False)

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

    def attach(self, transport: Transport, session: Session) -> None:
        """Point the outbound commands at a new socket (after a reconnect)."""
        self._transport, self._session = transport, session

    def _require(self) -> tuple[Transport, Session]:
        if self._transport is None or self._session is None:
            raise RuntimeError(f"stream {self.stream_id}: call is not connected to a socket")
        return self._transport, self._session

    async def send_media(self, payload: bytes) -> None:
        """Send one already-encoded ``media`` payload (RTP payload bytes or a whole MP3 file)."""
        transport, session = self._require()
        await transport.send(session.media(payload))

    @property
    def player(self) -> Player:
        """The call's playback queue (created on first use, with ``playback_config``)."""
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
        return await self.player.play(pcm, sample_rate)

    async def play_file(self, path: str | Path) -> Playback:
        """Play any file soundfile reads (WAV, FLAC, OGG, MP3), at any rate."""
        return await self.player.play_file(str(path))

    async def mark(self, name: str) -> None:
        """A ``mark`` after the audio queued so far; echoed to ``on_mark`` once that played."""
        await self.player.mark(name)

    async def clear(self) -> None:
        """Barge-in: stop playback now, drop our queue and the carrier's (queued marks return)."""
        await self.player.clear()

    async def close_player(self) -> None:
        if self._player is not None:
            await self._player.close()

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
    playback: PlaybackConfig | None = None  # overrides the server's playback settings

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

    async def on_reconnect(self) -> None:
        """The carrier reconnected this stream on a new socket (same handler, same recording)."""

    async def on_stop(self) -> None:
        """The stream ended: ``stop`` came, or its socket closed and no reconnect followed
        within the grace period (or the server shut down)."""

    async def on_status(self, event: StreamStatusEvent) -> None:
        """A Telnyx status callback naming this stream or its call (``event.kind``: started,
        stopped, failed). It arrives over HTTP, beside the socket, in no fixed order with it."""


HandlerFactory = Callable[[], StreamHandler]


@dataclass
class StreamOptions:
    """Per-server settings that shape every stream."""

    record_dir: Path | None = None
    reorder_depth: int = 8
    flush_seconds: float = 0.5
    codec_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # a stream whose socket closed without ``stop`` may resume on a new socket this long
    resume_grace_seconds: float = 30.0
    capture_dir: Path | None = None
    playback: PlaybackConfig = field(default_factory=PlaybackConfig)
    # a gap (counter jump, or a track's first timestamp) longer than this is a discontinuity:
    # the timeline restarts after the last audio instead of filling the jump with silence
    max_gap_seconds: float = 10.0
    # a second socket naming a live stream id waits this long: it takes over if the first one
    # closes or sends nothing for this long, and is refused (1008) if the first keeps sending
    takeover_seconds: float = 1.0
    # audio a recording keeps in memory while the disk refuses it; more is counted as lost
    max_backlog_seconds: float = 20.0
    # after the drain deadline, each handler method still called (``on_stop``) gets this long
    handler_stop_seconds: float = 2.0
