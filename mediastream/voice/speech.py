"""Speech tracking per stream: a track's audio, through a detector, to utterance events.

``TrackSpeech`` wires one track: its audio goes to a ``Segmenter`` (which holds it for the
utterances) and, resampled to the detector's rate when that differs, to the detector; the
probabilities it gives back are placed on the track's timeline and decided. ``StreamSpeech``
holds a stream's tracks (``SpeechOptions.tracks``), each made on its track's first audio.

Placing windows: window ``k`` covers the detector's samples ``[k * window, (k + 1) * window)``,
which are the track's fed samples ``[k * window * rate // detector_rate, ...)``: soxr's stream
output is aligned with its input (delay compensated: the delay shows as output that comes
later, not as a shift), so the mapping is exact up to a sample. The resampler runs at soxr's
"QQ" quality: its HQ filter hands out output in 100 ms bursts (a barge-in 100 ms later),
while QQ gives each 20 ms frame's output at once (measured: 316 of 320 samples on the first
frame, all 320 after), and a detector needs no audiophile filter.

Jumps in positions: a forward gap is fed as silence (zeros, to the segmenter and the
detector alike) up to ``min_silence_ms + padding_ms`` and a window, which ends any utterance
and its trailing padding; the rest of a longer gap is not fed (a carrier's 10 s hole would
cost 500 detector windows of nothing) but skipped: the fed samples and the timeline part
there, and windows are placed through a short list of those offsets. A backward position
(overlap, a replayed frame) is placed right after the audio already fed.

Ends of speech: a detector whose decisions stay on after speech ends (webrtc's overhang)
has that taken off by the segmenter (``detector_hangover``, ``Segmenter``'s ``hangover``):
without it webrtc's utterances ended 16-124 ms late (mode 3, espeak-ng sentences).

``finish`` flushes the resampler into the detector and decides what comes back at once; a
batched bank's windows not yet run are not waited for (run the bank first to have them).

Per frame with no resampling this is a handful of integer operations, one copy of the frame
into the held audio and the detector's own cost, no numpy temporaries: ``StreamSpeech.feed`` of
a 20 ms frame with a zero-cost scripted detector took 1.8 µs (median of 25 runs of 1,000
frames; 8 or 16 kHz, speech or silence; 2-7 µs while other work loaded the 2-core machine)
when the segmenter held references instead of copies (the copy adds 0.17 µs: ``bytearray``
extend and front cut against a deque's append and pop), 0.1 µs for a track not listened to;
with webrtc's own detector, 5-9 µs. Resampling makes it 19 µs (``StreamResampler``'s float32
round trip and soxr's call), which the real detectors need only above 16 kHz
(``detector_rate``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import numpy as np

from mediastream.config import SpeechOptions
from mediastream.media.resample import StreamResampler
from mediastream.voice.segment import Segmenter, SpeechEvent

if TYPE_CHECKING:
    from mediastream.voice.detect import SileroBank, TrackDetector

# soxr quality for the detector's input: the lowest delay, output each frame (see above)
RESAMPLE_QUALITY = "QQ"

# webrtcvad goes on saying "speech" for some frames after speech ends: its overhang
# (kOverHangMax2 in webrtc's vad_core.c at 20 ms frames: 7 in modes 0-1, 5 in modes 2-3).
# Measured on six espeak-ng sentences at 8 and 16 kHz, mode 3 ended them 16-124 ms late
# (mean 95 ms; modes 0-1: 150-236 ms); less these frames, -84..+24 ms (the early ones end in
# a fricative, which webrtc hears little of anyway).
WEBRTC_HANGOVER_WINDOWS = {0: 7, 1: 7, 2: 5, 3: 5}


def detector_hangover(detector: TrackDetector) -> int:
    """Windows a detector goes on saying "speech" after speech ends: its own ``hangover``
    attribute if it has one, webrtc's overhang for ``WebRtcDetector``, else 0."""
    hangover = getattr(detector, "hangover", None)
    if hangover is not None:
        return int(hangover)
    from mediastream.voice.detect import WebRtcDetector

    if isinstance(detector, WebRtcDetector):
        return WEBRTC_HANGOVER_WINDOWS.get(detector.mode, 0)
    return 0


class AudioLike(Protocol):
    """What ``StreamSpeech.feed`` reads of ``mediastream.session.Audio``."""

    track: str
    pcm: np.ndarray
    sample_rate: int
    position: int


class TrackSpeech:
    """One track: audio in (at the stream's rate, placed by position), speech events out."""

    def __init__(
        self, track: str, sample_rate: int, options: SpeechOptions, detector: TrackDetector
    ) -> None:
        self.track = track
        self.sample_rate = sample_rate
        self.detector = detector
        rate = detector.sample_rate
        hangover = detector_hangover(detector) * detector.window * sample_rate // rate
        self.segmenter = Segmenter(track, sample_rate, options, hangover)
        self._resampler = (
            StreamResampler(sample_rate, rate, RESAMPLE_QUALITY) if rate != sample_rate else None
        )
        # window k starts at fed sample k * _num // _den
        self._num = detector.window * sample_rate
        self._den = rate
        window = -(-self._num // rate)
        self._fill = (
            round((options.min_silence_ms + options.padding_ms) * sample_rate / 1000) + window
        )
        self._windows = 0  # windows taken so far
        self._fed = 0  # samples fed to the detector's side, at sample_rate (gap fill included)
        self._end: int | None = None  # timeline position after the last sample fed
        self._offset = 0  # timeline position = fed index + offset, for the windows now placed
        self._offsets: deque[tuple[int, int]] = deque()  # later (fed index, offset) pairs
        self._finished = False
        # the per-frame path's calls, looked up once
        self._hold = self.segmenter.audio
        self._decide = self.segmenter.decide_into
        self._push = detector.push if self._resampler is None else self._resample
        self._take = detector.take
        # a detector that scores a whole frame at once (webrtc), at the track's own rate:
        # the common frame skips push/take/_place (a third of the per-frame cost)
        score = getattr(detector, "score", None)
        self._score: Callable[[np.ndarray], float | None] | None = (
            score if self._resampler is None else None
        )

    # -- state (the segmenter's) -------------------------------------------------------------

    @property
    def speaking(self) -> bool:
        return self.segmenter.speaking

    @property
    def speech_ms(self) -> float:
        return self.segmenter.speech_ms

    @property
    def speech_ms_total(self) -> float:
        return self.segmenter.speech_ms_total

    @property
    def audio_ms_total(self) -> float:
        return self.segmenter.audio_ms_total

    # -- input -------------------------------------------------------------------------------

    def feed(self, pcm: np.ndarray, position: int) -> list[SpeechEvent]:
        """The track's next audio, int16 at ``sample_rate``, first sample at ``position``."""
        end = self._end
        if position == end and self._score is not None and not self._offsets:
            # in order, and the detector may score it at once: then window k is this frame
            # (nothing pending means the fed samples so far are whole windows)
            probability = self._score(pcm)
            if probability is not None:
                n = len(pcm)
                fed = self._fed
                self._hold(pcm, position)
                self._end = position + n
                self._fed = fed + n
                self._windows += 1
                out: list[SpeechEvent] = []
                self._decide(fed + self._offset, n, probability, out)
                return out
        if position != end:
            if end is None:
                self._offset = position - self._fed
                self._end = position
            elif position > end:
                self._gap(end, position)
            else:
                position = end
        n = len(pcm)
        if n:
            self._hold(pcm, position)
            self._end = position + n
            self._fed += n
            self._push(pcm)
        probabilities = self._take()
        if not probabilities:
            return []
        found: list[SpeechEvent] = []
        self._place(probabilities, found)
        return found

    def _gap(self, end: int, position: int) -> None:
        """Feed a forward gap as silence, up to what ends an utterance; skip the rest."""
        fill = min(position - end, self._fill)
        zeros = np.zeros(fill, dtype=np.int16)
        self._hold(zeros, end)
        self._fed += fill
        self._push(zeros)
        if end + fill < position:
            self._offsets.append((self._fed, position - self._fed))
        self._end = position

    def _resample(self, pcm: np.ndarray) -> None:
        """``_push`` when the detector runs at another rate."""
        assert self._resampler is not None
        out = self._resampler.process(pcm)
        if len(out):
            self.detector.push(out)

    def _place(self, probabilities: list[float], out: list[SpeechEvent]) -> None:
        """Place each window's probability on the timeline, and decide it."""
        num, den, k = self._num, self._den, self._windows
        offsets, decide = self._offsets, self._decide
        first = k * num // den
        for probability in probabilities:
            k += 1
            following = k * num // den
            while offsets and offsets[0][0] <= first:
                self._offset = offsets.popleft()[1]
            decide(first + self._offset, following - first, probability, out)
            first = following
        self._windows = k

    def finish(self) -> list[SpeechEvent]:
        """The end of the track: what the resampler holds goes to the detector, the windows
        it completes are decided, and an open utterance ends at the end of the audio.

        A batched detector's windows not yet run are not waited for.
        """
        out: list[SpeechEvent] = []
        if self._finished:
            return out
        self._finished = True
        if self._resampler is not None and self._end is not None:
            tail = self._resampler.flush()
            if len(tail):
                self.detector.push(tail)
        probabilities = self._take()
        if probabilities:
            self._place(probabilities, out)
        out.extend(self.segmenter.finish(self._end))
        return out

    def close(self) -> None:
        self.detector.close()
        self.segmenter.close()


class StreamSpeech:
    """A stream's speech tracking: one ``TrackSpeech`` per listened track, made lazily.

    ``make(sample_rate)`` builds a track's detector (default: ``make_detector(options,
    sample_rate, bank)``). Audio of other tracks, and late audio (out of order, already
    given up as silence), costs a set lookup and gives nothing.
    """

    def __init__(
        self,
        options: SpeechOptions,
        make: Callable[[int], TrackDetector] | None = None,
        *,
        bank: SileroBank | None = None,
    ) -> None:
        self.options = options
        self._listened = frozenset(options.tracks)
        if make is None:
            from mediastream.voice.detect import make_detector

            def make(sample_rate: int) -> TrackDetector:
                return make_detector(options, sample_rate, bank)

        self._make = make
        self.tracks: dict[str, TrackSpeech] = {}

    def feed(self, audio: AudioLike) -> list[SpeechEvent]:
        """One frame of a track (``mediastream.session.Audio`` or alike)."""
        track = audio.track
        if track not in self._listened or getattr(audio, "late", False):
            return []
        speech = self.tracks.get(track)
        if speech is None or speech.sample_rate != audio.sample_rate:
            return self._new(audio)
        return speech.feed(audio.pcm, audio.position)

    def _new(self, audio: AudioLike) -> list[SpeechEvent]:
        """A track's first audio (or its first at a new rate: the old one is finished)."""
        out: list[SpeechEvent] = []
        old = self.tracks.pop(audio.track, None)
        if old is not None:
            out.extend(old.finish())
            old.close()
        speech = TrackSpeech(
            audio.track, audio.sample_rate, self.options, self._make(audio.sample_rate)
        )
        self.tracks[audio.track] = speech
        out.extend(speech.feed(audio.pcm, audio.position))
        return out

    def speaking(self, track: str) -> bool:
        speech = self.tracks.get(track)
        return speech is not None and speech.speaking

    def speech_ms(self, track: str) -> float:
        """Speech in the track's open run or utterance: barge-in compares it to barge_in_ms."""
        speech = self.tracks.get(track)
        return 0.0 if speech is None else speech.speech_ms

    def speech_share(self, track: str) -> float | None:
        """The share of the track's decided audio that was speech; None before any."""
        speech = self.tracks.get(track)
        if speech is None or not speech.audio_ms_total:
            return None
        return speech.speech_ms_total / speech.audio_ms_total

    def finish(self) -> list[SpeechEvent]:
        """End every track (see ``TrackSpeech.finish``)."""
        out: list[SpeechEvent] = []
        for speech in self.tracks.values():
            out.extend(speech.finish())
        return out

    def close(self) -> None:
        for speech in self.tracks.values():
            speech.close()
