"""The application API: subclass ``StreamHandler``; one instance serves one stream."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mediastream.config import PlaybackConfig, SpeechOptions
from mediastream.runtime.call import Call
from mediastream.session import Audio, Error

if TYPE_CHECKING:
    from mediastream.media.playback import Playback
    from mediastream.telnyx.webhooks import StreamStatusEvent
    from mediastream.voice.segment import Utterance

AudioFrame = Audio
"""One frame of decoded audio: ``pcm`` (int16), ``sample_rate``, ``track``, ``timestamp_ms``."""


class StreamHandler:
    """Subclass and override what you need. One instance per stream; ``self.call`` is set first.

    An exception escaping any method is logged with the stream id and ends that stream only;
    its recording is kept.
    """

    call: Call
    playback: PlaybackConfig | None = None  # overrides the server's playback settings
    # speech detection for this handler's streams (overrides the server's; None: the server's)
    speech: SpeechOptions | None = None

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

    async def on_speech_start(self, track: str) -> None:
        """Speech began on ``track`` (speech detection on: ``speech`` or the server's
        ``StreamOptions.speech``); ``min_speech_ms`` after its onset."""

    async def on_speech_end(self, utterance: Utterance) -> None:
        """An utterance ended (``min_silence_ms`` of silence): its audio, start, end, track."""

    async def on_interrupted(self, playback: Playback) -> None:
        """The caller spoke over ``playback`` for ``barge_in_ms`` and it was cleared
        (``playback.heard_ms``: how much was heard). Playbacks made with
        ``interruptible=False`` are never cleared this way."""

    async def on_reconnect(self) -> None:
        """The carrier reconnected this stream on a new socket (same handler, same recording)."""

    async def on_stop(self) -> None:
        """The stream ended: ``stop`` came, or its socket closed and no reconnect followed
        within the grace period (or the server shut down)."""

    async def on_status(self, event: StreamStatusEvent) -> None:
        """A Telnyx status callback naming this stream or its call (``event.kind``: started,
        stopped, failed). It arrives over HTTP, beside the socket, in no fixed order with it."""


HandlerFactory = Callable[[], StreamHandler]
