"""Speech tracking per track and per stream: windows placed right, whatever the frames.

The detectors here are scripted (probabilities from a list) or an energy threshold (speech
where the signal is loud), so that the placing of windows on the timeline is checked without
webrtcvad or onnxruntime: through resampling, arbitrary frame sizes, a detector that answers
one take late, gaps and backward positions. One test runs the real default detector (webrtc)
on speech synthesized by espeak-ng, when both are there.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediastream.config import SpeechOptions
from mediastream.session import Audio
from mediastream.voice.segment import SpeechEnded, SpeechEvent, SpeechStarted, Utterance
from mediastream.voice.speech import StreamSpeech, TrackSpeech, detector_hangover

OPTIONS = SpeechOptions()
# property runs: a third of the profile's (quick by default, more in the long profile)
EXAMPLES = max(50, settings().max_examples // 3)


class Scripted:
    """One probability per window from a list (0.0 after it); with ``late``, each take
    returns the windows completed before the previous take (a batched bank's delay)."""

    def __init__(
        self,
        probabilities: list[float],
        sample_rate: int = 8000,
        window: int = 160,
        late: bool = False,
    ) -> None:
        self.sample_rate = sample_rate
        self.window = window
        self.probabilities = probabilities
        self.late = late
        self.pushed = 0
        self.given = 0
        self.held: list[float] = []
        self.closed = False

    def push(self, pcm: np.ndarray) -> None:
        assert pcm.dtype == np.int16
        self.pushed += len(pcm)

    def take(self) -> list[float]:
        done = self.pushed // self.window
        p = self.probabilities
        new = [p[k] if k < len(p) else 0.0 for k in range(self.given, done)]
        self.given = done
        if self.late:
            new, self.held = self.held, new
        return new

    def close(self) -> None:
        self.closed = True


class Energy:
    """1.0 for a window whose mean absolute sample is above ``level``, else 0.0."""

    def __init__(self, sample_rate: int, window: int, level: float = 1000.0) -> None:
        self.sample_rate = sample_rate
        self.window = window
        self.level = level
        self.pending = np.zeros(0, dtype=np.int16)
        self.closed = False

    def push(self, pcm: np.ndarray) -> None:
        self.pending = np.concatenate((self.pending, pcm))

    def take(self) -> list[float]:
        count = len(self.pending) // self.window
        blocks = self.pending[: count * self.window].reshape(count, self.window)
        self.pending = self.pending[count * self.window :]
        return [1.0 if m > self.level else 0.0 for m in np.abs(blocks.astype(np.int32)).mean(1)]

    def close(self) -> None:
        self.closed = True


def ramp(n: int) -> np.ndarray:
    return ((np.arange(n, dtype=np.int64) % 30011) + 1).astype(np.int16)


def bursts(rate: int, seconds: float, spans: list[tuple[float, float]], seed: int = 3):
    """Quiet noise with loud noise over ``spans`` (seconds); the spans in samples."""
    rng = np.random.default_rng(seed)
    signal = rng.integers(-40, 41, round(rate * seconds)).astype(np.int16)
    where = []
    for a, b in spans:
        i, j = round(a * rate), round(b * rate)
        signal[i:j] = rng.integers(-8000, 8001, j - i)
        where.append((i, j))
    return signal, where


def feed_frames(
    speech: TrackSpeech, signal: np.ndarray, sizes: list[int] | int = 160, start: int = 0
) -> tuple[list[SpeechEvent], list[int]]:
    """Feed ``signal`` in frames; the events, and the sample count fed when each came."""
    events: list[SpeechEvent] = []
    when: list[int] = []
    position, k = 0, 0
    while position < len(signal):
        size = sizes if isinstance(sizes, int) else sizes[k % len(sizes)]
        new = speech.feed(signal[position : position + size], start + position)
        position += size
        k += 1
        events += new
        when += [position] * len(new)
    new = speech.finish()
    return events + new, when + [len(signal)] * len(new)


def same(a: list[SpeechEvent], b: list[SpeechEvent]) -> None:
    """Equal events, utterance audio included (``==`` leaves audio out)."""
    assert a == b
    for x, y in zip(a, b, strict=True):
        if isinstance(x, SpeechEnded) and isinstance(y, SpeechEnded):
            np.testing.assert_array_equal(x.utterance.audio, y.utterance.audio)


def windows(*parts: tuple[float, int]) -> list[float]:
    out: list[float] = []
    for probability, ms in parts:
        out += [probability] * (ms // 20)
    return out


SCRIPT = windows((0.0, 1000), (1.0, 300), (0.0, 200), (1.0, 700), (0.0, 1000), (1.0, 100))


def test_track_speech_exact() -> None:
    start = 4000  # the track's first sample is 500 ms into the call
    signal = ramp(len(SCRIPT) * 160 + 100)
    speech = TrackSpeech("inbound", 8000, OPTIONS, Scripted(SCRIPT))
    events, when = feed_frames(speech, signal, start=start)
    assert events == [
        SpeechStarted("inbound", 1500.0, 1700.0),
        SpeechEnded(Utterance("inbound", 1500.0, 2700.0, signal, 8000, 1300.0)),
    ]
    assert when == [1200 * 8, 2700 * 8]
    np.testing.assert_array_equal(events[1].utterance.audio, signal[800 * 8 : 2400 * 8])
    assert speech.speech_ms_total == 1100.0
    assert speech.audio_ms_total == len(SCRIPT) * 20
    assert not speech.speaking


@pytest.mark.parametrize("seed", range(4))
def test_arbitrary_frame_sizes_give_the_same_events(seed: int) -> None:
    signal = ramp(len(SCRIPT) * 160)
    reference, _ = feed_frames(TrackSpeech("inbound", 8000, OPTIONS, Scripted(SCRIPT)), signal)
    sizes = np.random.default_rng(seed).integers(0, 700, 50).tolist()
    events, _ = feed_frames(TrackSpeech("inbound", 8000, OPTIONS, Scripted(SCRIPT)), signal, sizes)
    same(events, reference)


def test_a_late_detector_gives_the_same_events_later() -> None:
    signal = ramp(len(SCRIPT) * 160)
    reference, early = feed_frames(TrackSpeech("inbound", 8000, OPTIONS, Scripted(SCRIPT)), signal)
    events, late = feed_frames(
        TrackSpeech("inbound", 8000, OPTIONS, Scripted(SCRIPT, late=True)), signal
    )
    same(events, reference)
    assert [b - a for a, b in zip(early, late, strict=True)] == [160, 160]
    # and with frames that do not line up with windows
    events, _ = feed_frames(
        TrackSpeech("inbound", 8000, OPTIONS, Scripted(SCRIPT, late=True)), signal, [97, 333]
    )
    same(events, reference)


def test_barge_in_reads_speech_ms() -> None:
    speech = TrackSpeech("inbound", 8000, OPTIONS, Scripted(windows((0.0, 100), (1.0, 400))))
    seen = []
    for k in range(25):
        speech.feed(ramp(160), k * 160)
        seen.append(speech.speech_ms)
    assert seen[:5] == [0.0] * 5
    assert seen[5:] == [20.0 * n for n in range(1, 21)]
    assert speech.speaking


@pytest.mark.parametrize(
    ("rate", "detector_rate", "window"),
    [
        (8000, 16000, 320),  # webrtc at 16 kHz
        (8000, 16000, 512),  # silero at 16 kHz
        (48000, 16000, 320),
        (44100, 16000, 512),  # a window is not a whole number of the stream's samples
        (16000, 8000, 256),
    ],
)
def test_resampling_keeps_positions(rate: int, detector_rate: int, window: int) -> None:
    signal, where = bursts(rate, 4.0, [(0.5123, 1.4), (2.2, 3.0)])
    speech = TrackSpeech("inbound", rate, OPTIONS, Energy(detector_rate, window))
    events, _ = feed_frames(speech, signal, rate // 50)
    window_ms = window * 1000 / detector_rate
    ended = [e.utterance for e in events if isinstance(e, SpeechEnded)]
    assert len(ended) == 2
    for utterance, (i, j) in zip(ended, where, strict=True):
        assert abs(utterance.start_ms - i * 1000 / rate) <= window_ms
        assert abs(utterance.end_ms - j * 1000 / rate) <= window_ms
        # the audio is the stream's own, at its rate, not the detector's
        assert utterance.sample_rate == rate
        first = round(utterance.audio_start_ms * rate / 1000)
        assert utterance.audio_start_ms == pytest.approx(first * 1000 / rate)
        np.testing.assert_array_equal(utterance.audio, signal[first : first + len(utterance.audio)])


def test_a_short_gap_is_silence_in_place() -> None:
    # 600 ms of speech, 300 ms missing (a reconnect), 600 ms more: one utterance, and its
    # audio has the gap as zeros where it was
    rate = 8000
    signal, _ = bursts(rate, 3.0, [(0.4, 1.0), (1.3, 1.9)])
    timeline = signal.copy()
    timeline[int(1.0 * rate) : int(1.3 * rate)] = 0
    speech = TrackSpeech("inbound", rate, OPTIONS, Energy(rate, 160))
    events: list[SpeechEvent] = []
    for position in range(0, len(signal), 160):
        if 1.0 * rate <= position < 1.3 * rate:
            continue
        events += speech.feed(signal[position : position + 160], position)
    events += speech.finish()
    (utterance,) = [e.utterance for e in events if isinstance(e, SpeechEnded)]
    assert (utterance.start_ms, utterance.end_ms) == (400.0, 1900.0)
    assert utterance.audio_start_ms == 200.0
    np.testing.assert_array_equal(utterance.audio, timeline[200 * 8 : 2100 * 8])
    assert speech.audio_ms_total == 3000.0  # the gap was decided as silence


def test_a_long_gap_is_skipped() -> None:
    # speech, then 20 s missing, then speech right at the far side: the first utterance ends
    # at its speech's end, the second lies where the timeline says, its padding cut by the hole
    rate = 8000
    first, _ = bursts(rate, 1.0, [(0.2, 0.8)])
    second, _ = bursts(rate, 1.0, [(0.0, 0.6)], seed=4)
    jump = 21 * rate
    speech = TrackSpeech("inbound", rate, OPTIONS, Energy(rate, 160))
    events: list[SpeechEvent] = []
    for base, signal in ((0, first), (jump, second)):
        for k in range(0, len(signal), 160):
            events += speech.feed(signal[k : k + 160], base + k)
    events += speech.finish()
    ended = [e.utterance for e in events if isinstance(e, SpeechEnded)]
    assert [(u.start_ms, u.end_ms, u.audio_start_ms) for u in ended] == [
        (200.0, 800.0, 0.0),
        (21000.0, 21600.0, 21000.0),
    ]
    np.testing.assert_array_equal(ended[0].audio, first)
    np.testing.assert_array_equal(ended[1].audio, second[: 800 * 8])
    # only what was fed was decided: both seconds and the silence that ended the first
    assert speech.audio_ms_total < 3000.0


def test_backward_positions_continue() -> None:
    speech = TrackSpeech("inbound", 8000, OPTIONS, Scripted([1.0] * 30))
    for k in range(30):
        position = k * 160 if k != 10 else 5 * 160  # one frame placed 100 ms too early
        speech.feed(ramp(160), position)
    (ended,) = speech.finish()[-1:]
    assert isinstance(ended, SpeechEnded)
    assert (ended.utterance.start_ms, ended.utterance.end_ms) == (0.0, 600.0)
    assert speech.audio_ms_total == 600.0


def test_empty_frames_and_finish_twice() -> None:
    speech = TrackSpeech("inbound", 8000, OPTIONS, Scripted([1.0] * 30))
    assert speech.feed(np.zeros(0, np.int16), 800) == []
    for k in range(30):
        speech.feed(ramp(160), 800 + k * 160)
    events = speech.finish()
    assert events[-1].utterance.start_ms == 100.0
    assert speech.finish() == []


def test_hangover() -> None:
    class Hanging(Scripted):
        hangover = 5  # windows

    # 500 ms of speech that the detector hears as 600: the end, the silence counted and the
    # speech counted are put back 100 ms
    script = windows((0.0, 500), (1.0, 600), (0.0, 1000))
    speech = TrackSpeech("inbound", 8000, OPTIONS, Hanging(script))
    events, when = feed_frames(speech, ramp(len(script) * 160))
    assert events[1].utterance.end_ms == 1000.0
    assert when[1] == 1500 * 8  # 500 ms after where the speech really ended
    assert speech.speech_ms_total == 500.0
    assert detector_hangover(Scripted([])) == 0
    pytest.importorskip("webrtcvad", reason="webrtcvad (extra [vad]) is not installed")
    from mediastream.voice.detect import WebRtcDetector

    assert [detector_hangover(WebRtcDetector(mode)) for mode in range(4)] == [7, 7, 5, 5]


@settings(max_examples=EXAMPLES)
@given(
    st.lists(
        st.tuples(st.integers(0, 400), st.integers(-2000, 3000), st.booleans()),
        max_size=120,
    ),
    st.booleans(),
    st.sampled_from([(8000, 8000, 160), (8000, 16000, 512), (16000, 16000, 320)]),
)
def test_any_positions_keep_the_invariants(
    frames: list[tuple[int, int, bool]], late: bool, rates: tuple[int, int, int]
) -> None:
    # frames of any size, at jumps forward and back, speech or not: events alternate, lie in
    # order on the timeline, their audio is where they say, and the held audio stays bounded
    rate, detector_rate, window = rates
    options = replace(OPTIONS, max_utterance_seconds=1.0)
    script = [float(loud) for _, _, loud in frames for _ in range(8)]
    speech = TrackSpeech("inbound", rate, options, Scripted(script, detector_rate, window, late))
    events: list[SpeechEvent] = []
    position = 1000
    for size, jump, _ in frames:
        position = max(0, position + jump)
        events += speech.feed(ramp(size), position)
        position += size
        assert speech.segmenter._held <= speech.segmenter._cap
    events += speech.finish()
    open_at = None
    last_end = -1.0
    for event in events:
        if isinstance(event, SpeechStarted):
            assert open_at is None
            assert event.start_ms >= last_end
            assert event.detected_ms >= event.start_ms
            open_at = event.start_ms
        else:
            utterance = event.utterance
            assert open_at == utterance.start_ms
            assert utterance.end_ms > utterance.start_ms
            assert utterance.duration_ms <= 1000.0 + 1e-9
            assert utterance.audio_start_ms <= utterance.start_ms
            samples = len(utterance.audio)
            assert utterance.audio_start_ms + samples * 1000 / rate <= utterance.end_ms + 200.0
            open_at, last_end = None, utterance.end_ms
    assert open_at is None
    assert not speech.speaking


def frame(track: str, pcm: np.ndarray, position: int, rate: int = 8000, **kw: bool) -> Audio:
    return Audio(track, pcm, rate, position, **kw)


def test_stream_speech_tracks_and_shares() -> None:
    made: list[tuple[int, Scripted]] = []

    def make(rate: int) -> Scripted:
        detector = Scripted(windows((0.0, 500), (1.0, 500)), sample_rate=rate)
        made.append((rate, detector))
        return detector

    stream = StreamSpeech(OPTIONS, make)
    assert stream.speech_share("inbound") is None
    assert not stream.speaking("inbound")
    # not listened to: nothing made, nothing returned
    for k in range(50):
        assert stream.feed(frame("outbound", ramp(160), k * 160)) == []
    assert made == []
    events: list[SpeechEvent] = []
    for k in range(50):
        events += stream.feed(frame("inbound", ramp(160), k * 160))
    assert [rate for rate, _ in made] == [8000]
    assert events == [SpeechStarted("inbound", 500.0, 700.0)]
    assert stream.speaking("inbound")
    assert stream.speech_ms("inbound") == 500.0
    assert stream.speech_share("inbound") == 0.5
    assert stream.speech_share("outbound") is None
    # late audio (already given up as silence) is not speech tracking's business
    assert stream.feed(frame("inbound", ramp(160), 0, late=True)) == []
    (ended,) = stream.finish()
    assert ended.utterance.end_ms == 1000.0
    stream.close()
    assert made[0][1].closed


def test_stream_speech_both_tracks_and_a_new_rate() -> None:
    options = replace(OPTIONS, tracks=("inbound", "outbound"))
    made: list[int] = []

    def make(rate: int) -> Scripted:
        made.append(rate)
        return Scripted([1.0] * 100, sample_rate=rate, window=rate // 50)

    stream = StreamSpeech(options, make)
    for k in range(20):
        stream.feed(frame("inbound", ramp(160), k * 160))
        stream.feed(frame("outbound", ramp(160), k * 160))
    assert stream.speaking("inbound") and stream.speaking("outbound")
    # the inbound track comes back at 16 kHz: its utterance so far ends, a new one begins
    events = stream.feed(frame("inbound", ramp(320), 20 * 320, rate=16000))
    assert [type(e) for e in events] == [SpeechEnded]
    assert made == [8000, 8000, 16000]
    for k in range(1, 20):
        events += stream.feed(frame("inbound", ramp(320), (20 + k) * 320, rate=16000))
    assert [type(e) for e in events] == [SpeechEnded, SpeechStarted]
    assert events[1] == SpeechStarted("inbound", 400.0, 600.0)
    assert [type(e) for e in stream.finish()] == [SpeechEnded, SpeechEnded]


def test_stream_speech_default_detector_is_made_lazily() -> None:
    # the default factory imports the detectors only on a listened track's first audio
    stream = StreamSpeech(OPTIONS)
    assert stream.feed(frame("outbound", ramp(160), 0)) == []
    assert stream.tracks == {}


# -- the real default detector on real (synthesized) speech ----------------------------------

SENTENCE = "I would like to book a table for two"


def espeak(path: Path) -> tuple[np.ndarray, int]:
    import soundfile

    subprocess.run(["espeak-ng", "-w", str(path), SENTENCE], check=True, capture_output=True)
    pcm, rate = soundfile.read(path, dtype="int16")
    return pcm, rate


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("noise", [0, 300])  # none, or white noise at -41 dBFS
def test_webrtc_on_speech(tmp_path: Path, rate: int, noise: int) -> None:
    pytest.importorskip("webrtcvad", reason="webrtcvad (extra [vad]) is not installed")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed: no speech to detect")
    import soxr

    spoken, spoken_rate = espeak(tmp_path / "sentence.wav")
    voice = soxr.resample(spoken, spoken_rate, rate).astype(np.int16)
    loud = np.nonzero(np.abs(voice) > 0.02 * np.abs(voice).max())[0]
    onset, offset = loud[0], loud[-1] + 1  # where the speech really is, in the clip
    places = [round(1.3 * rate), round(1.3 * rate) + len(voice) + round(1.7 * rate)]
    rng = np.random.default_rng(5)
    total = places[1] + len(voice) + 2 * rate
    mixed = rng.normal(0, noise or 1e-9, total).round()
    for place in places:
        mixed[place : place + len(voice)] += voice
    signal = np.clip(mixed, -32768, 32767).astype(np.int16)
    options = SpeechOptions()
    stream = StreamSpeech(options)  # the default: make_detector(options, rate)
    events: list[SpeechEvent] = []
    step = rate // 50
    for k in range(0, total, step):
        events += stream.feed(frame("inbound", signal[k : k + step], k, rate=rate))
    events += stream.finish()
    stream.close()
    ended = [e.utterance for e in events if isinstance(e, SpeechEnded)]
    found = [(u.start_ms, u.end_ms) for u in ended]
    expected = [((p + onset) * 1000 / rate, (p + offset) * 1000 / rate) for p in places]
    assert len(found) == 2, (found, expected)
    for (start, end), (true_start, true_end) in zip(found, expected, strict=True):
        assert abs(start - true_start) <= 60, (found, expected)
        assert abs(end - true_end) <= 60, (found, expected)
    assert type(stream.tracks["inbound"].detector).__name__ == "WebRtcDetector"
    share = stream.speech_share("inbound")
    assert share is not None and 0.2 < share < 0.6


@pytest.mark.parametrize("rate", [8000, 16000])
def test_silero_bank_on_speech(tmp_path: Path, rate: int) -> None:
    # the batched detector answers a bank run later; the events still lie where the speech
    # is (silero's probability falls some 50-110 ms after the speech: a looser bound)
    pytest.importorskip("onnxruntime", reason="onnxruntime (extra [silero]) is not installed")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed: no speech to detect")
    import soxr

    from mediastream.voice.detect import SileroBank

    spoken, spoken_rate = espeak(tmp_path / "sentence.wav")
    voice = soxr.resample(spoken, spoken_rate, rate).astype(np.int16)
    loud = np.nonzero(np.abs(voice) > 0.02 * np.abs(voice).max())[0]
    place = round(1.3 * rate)
    signal = np.zeros(place + len(voice) + 2 * rate, np.int16)
    signal[place : place + len(voice)] = voice
    options = SpeechOptions(detector="silero")
    bank = SileroBank(options, rate)
    stream = StreamSpeech(options, bank=bank)
    events: list[SpeechEvent] = []
    step = rate // 50
    for k in range(0, len(signal), step):
        events += stream.feed(frame("inbound", signal[k : k + step], k, rate=rate))
        if k % (2 * step):
            bank.run()  # every 40 ms, as the bank's timer would
    assert len(bank) == 1
    events += stream.finish()
    stream.close()
    assert len(bank) == 0
    (utterance,) = [e.utterance for e in events if isinstance(e, SpeechEnded)]
    assert abs(utterance.start_ms - (place + loud[0]) * 1000 / rate) <= 100
    assert abs(utterance.end_ms - (place + loud[-1] + 1) * 1000 / rate) <= 150
