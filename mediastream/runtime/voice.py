"""Speech detection and barge-in for one stream, between the frame path and the handler.

The sans-I/O parts live in ``mediastream.voice`` (detectors, the segmenter, the per-track
tracker); this module connects them to a stream: every in-order frame of a listened track is
fed after ``on_audio`` returns, the segmenter's events become ``on_speech_start`` and
``on_speech_end`` calls, and the caller's speech past ``SpeechOptions.barge_in_ms`` clears an
interruptible playback (``Call.interrupt_for_speech``), then ``on_interrupted`` runs.

Everything runs on the stream's read loop, in frame order, like every other handler call: a
batched Silero bank answers a window one bank run later (``bank_interval_ms``), so its events
come up to that much later on the wall clock, never out of order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from mediastream.config import SpeechOptions
from mediastream.session import Audio
from mediastream.voice.detect import SileroBank, TrackDetector, detector_rate, make_detector
from mediastream.voice.segment import SpeechEnded, SpeechStarted
from mediastream.voice.speech import StreamSpeech

if TYPE_CHECKING:
    from mediastream.runtime.registry import Stream

logger = logging.getLogger(__name__)


class SpeechBanks:
    """The server's Silero banks, one per detector rate, made and started on first use (the
    point of a bank is that every stream of the server shares it)."""

    def __init__(self) -> None:
        self._banks: dict[tuple[int, SpeechOptions], SileroBank] = {}

    def maker(self, options: SpeechOptions) -> Callable[[int], TrackDetector]:
        """``make(rate)`` for ``StreamSpeech``: a detector, from a shared bank for silero."""

        def make(sample_rate: int) -> TrackDetector:
            if options.detector != "silero":
                return make_detector(options, sample_rate)
            rate = detector_rate(options, sample_rate)  # the bank's rate, not the stream's
            key = (rate, options)
            bank = self._banks.get(key)
            if bank is None:
                bank = self._banks[key] = SileroBank(
                    options, rate, max_batch=options.bank_max_batch
                )
                bank.start()
            return make_detector(options, sample_rate, bank)

        return make

    async def close(self) -> None:
        banks, self._banks = list(self._banks.values()), {}
        for bank in banks:
            await bank.stop()


class StreamVoice:
    """One stream's speech detection and barge-in policy."""

    __slots__ = ("_found", "_tracks", "barge_in_ms", "options", "speech", "stream")

    def __init__(self, stream: Stream, options: SpeechOptions, banks: SpeechBanks) -> None:
        self.stream = stream
        self.options = options
        self.barge_in_ms = options.barge_in_ms
        self.speech = StreamSpeech(options, banks.maker(options))
        self._tracks = self.speech.tracks  # the frame path goes to a known track directly
        self._found: list[SpeechStarted | SpeechEnded] = []  # for ``act``

    def heard(self, event: Audio) -> bool:
        """Feed one handled frame (plain calls: most frames end here); True when there is
        something to act on (``act``): speech events, or a barge-in due.

        A frame of a track already tracked at its rate goes straight to its ``TrackSpeech``
        (what ``StreamSpeech.feed`` would do): one call level less on every frame."""
        speech = self._tracks.get(event.track)
        if speech is not None and speech.sample_rate == event.sample_rate:
            found = speech.feed(event.pcm, event.position)
        else:
            found = self.speech.feed(event)
        if found:
            self._found = found
            return True
        return self._barge_in_due(event.track)

    def _barge_in_due(self, track: str) -> bool:
        return (
            self.barge_in_ms is not None
            and track == "inbound"
            and self.stream.call.has_player
            and self.speech.speech_ms("inbound") >= self.barge_in_ms
        )

    async def act(self) -> bool:
        """Deliver the speech events ``heard`` found, then clear an interruptible playback
        if the caller has spoken over it long enough; False when a handler method failed
        (the stream ends)."""
        stream = self.stream
        found, self._found = self._found, []
        for event in found:
            if not await self._deliver(event):
                return False
        if not self._barge_in_due("inbound"):
            return True
        playback = await stream.call.interrupt_for_speech()
        if playback is None:
            return True
        logger.debug(
            "stream %s: barge-in: the caller spoke over playback %s after %.0f ms of it",
            stream.log_id, playback.mark_name, playback.heard_ms,
        )  # fmt: skip
        return await stream.call_handler("on_interrupted", playback)

    async def _deliver(self, found: SpeechStarted | SpeechEnded) -> bool:
        if isinstance(found, SpeechStarted):
            return await self.stream.call_handler("on_speech_start", found.track)
        return await self.stream.call_handler("on_speech_end", found.utterance)

    async def finish(self) -> None:
        """The stream ended: an utterance still open ends here (before ``on_stop``)."""
        try:
            for found in self.speech.finish():
                if not await self._deliver(found):
                    break
        finally:
            self.speech.close()

    def speaking(self, track: str) -> bool:
        return self.speech.speaking(track)

    def speech_share(self, track: str) -> float | None:
        return self.speech.speech_share(track)
