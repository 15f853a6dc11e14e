"""The segmenter's hysteresis, exact to the window and to the sample.

Decisions are scripted (one probability per 20 ms window at 8 kHz unless said), and the audio
is a ramp, so that an utterance's audio can be checked sample for sample against the slice of
the input where it should come from. A property test checks the segmenter against an oracle
written the other way round: runs of speech windows split where silence reaches
``min_silence_ms``, kept when their speech reaches ``min_speech_ms``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediastream.config import SpeechOptions
from mediastream.voice.segment import (
    LAG_ALLOWANCE_SECONDS,
    Segmenter,
    SpeechEnded,
    SpeechEvent,
    SpeechStarted,
    Utterance,
)

RATE = 8000
WINDOW = 160  # 20 ms
OPTIONS = SpeechOptions()  # 200 ms speech to start, 500 ms silence to end, 200 ms padding
# property runs: a third of the profile's (quick by default, more in the long profile)
EXAMPLES = max(50, settings().max_examples // 3)


def ramp(n: int, start: int = 0) -> np.ndarray:
    """Samples that tell where they came from: sample i is ``i % 30011``."""
    return ((np.arange(start, start + n, dtype=np.int64) % 30011) + 1).astype(np.int16)


def windows(*parts: tuple[float, int]) -> list[float]:
    """Probabilities per window from (probability, milliseconds) parts."""
    out: list[float] = []
    for probability, ms in parts:
        assert ms % 20 == 0
        out += [probability] * (ms // 20)
    return out


def run(
    probabilities: list[float],
    options: SpeechOptions = OPTIONS,
    *,
    window: int = WINDOW,
    start: int = 0,
    finish: bool = True,
) -> tuple[Segmenter, list[SpeechEvent], np.ndarray, list[float]]:
    """Feed a window's audio, then its decision; returns the events and when each came."""
    segmenter = Segmenter("inbound", RATE, options)
    signal = ramp(len(probabilities) * window)
    events: list[SpeechEvent] = []
    at: list[float] = []
    for k, probability in enumerate(probabilities):
        segmenter.audio(signal[k * window : (k + 1) * window], start + k * window)
        new = segmenter.decide(start + k * window, window, probability)
        events += new
        at += [(start + (k + 1) * window) * 1000 / RATE] * len(new)
    if finish:
        new = segmenter.finish()
        events += new
        at += [None] * len(new)
    return segmenter, events, signal, at


def ms(samples: int) -> float:
    return samples * 1000 / RATE


def check_audio(utterance: Utterance, signal: np.ndarray, start: int = 0) -> None:
    """The utterance's audio is exactly the input from ``audio_start_ms`` on."""
    first = round(utterance.audio_start_ms * RATE / 1000) - start
    assert first >= 0
    np.testing.assert_array_equal(utterance.audio, signal[first : first + len(utterance.audio)])
    assert utterance.audio.dtype == np.int16


def test_one_utterance_exact() -> None:
    probabilities = windows((0.0, 1000), (0.9, 1000), (0.1, 1000))
    segmenter, events, signal, at = run(probabilities)
    assert events == [
        SpeechStarted("inbound", 1000.0, 1200.0),
        SpeechEnded(Utterance("inbound", 1000.0, 2000.0, signal, RATE, 800.0)),
    ]
    assert at == [1200.0, 2500.0]  # known after min_speech, ended after min_silence
    utterance = events[1].utterance
    assert utterance.duration_ms == 1000.0
    assert not utterance.truncated
    np.testing.assert_array_equal(utterance.audio, signal[800 * 8 : 2200 * 8])
    assert segmenter.speech_ms_total == 1000.0
    assert segmenter.audio_ms_total == 3000.0
    assert not segmenter.speaking


def test_threshold_is_inclusive() -> None:
    options = replace(OPTIONS, threshold=0.6)
    _, events, _, _ = run(windows((0.0, 100), (0.6, 400), (0.59, 600)), options)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    assert events[1].utterance.end_ms == 500.0


def test_padding_is_clipped_at_the_stream_start() -> None:
    _, events, signal, _ = run(windows((0.0, 60), (1.0, 400), (0.0, 600)))
    utterance = events[-1].utterance
    assert (utterance.start_ms, utterance.end_ms, utterance.audio_start_ms) == (60.0, 460.0, 0.0)
    np.testing.assert_array_equal(utterance.audio, signal[: 660 * 8])


def test_trailing_padding_is_clipped_to_what_exists() -> None:
    # padding longer than the silence that ends an utterance: the audio held so far
    options = replace(OPTIONS, padding_ms=700, min_silence_ms=300)
    _, events, signal, at = run(windows((0.0, 1000), (1.0, 400), (0.0, 2000)), options)
    utterance = events[-1].utterance
    assert at[-1] == 1700.0
    assert utterance.audio_start_ms == 300.0
    np.testing.assert_array_equal(utterance.audio, signal[300 * 8 : 1700 * 8])


def test_positions_offset_on_the_timeline() -> None:
    start = 123_456
    _, events, signal, _ = run(windows((0.0, 400), (1.0, 400), (0.0, 600)), start=start)
    utterance = events[-1].utterance
    assert utterance.start_ms == ms(start) + 400
    assert utterance.audio_start_ms == ms(start) + 200
    check_audio(utterance, signal, start)


@pytest.mark.parametrize(("speech_ms", "expected"), [(180, 0), (200, 2)])
def test_backchannel_shorter_than_min_speech_gives_nothing(speech_ms: int, expected: int) -> None:
    segmenter, events, _, _ = run(windows((0.0, 500), (1.0, speech_ms), (0.0, 1000)), finish=False)
    assert len(events) == expected
    assert segmenter.speech_ms == 0.0  # the run was dropped (or ended): nothing open
    assert segmenter.speech_ms_total == speech_ms


def test_a_dip_in_the_onset_run_does_not_reset_it() -> None:
    # 100 ms, a 300 ms dip, 100 ms: one run, started at its first window, known at 200 ms of
    # speech (the end of the second burst)
    probabilities = windows((0.0, 200), (1.0, 100), (0.0, 300), (1.0, 100), (0.0, 1000))
    _, events, _, _ = run(probabilities)
    assert events[0] == SpeechStarted("inbound", 200.0, 700.0)
    assert events[1].utterance.end_ms == 700.0


def test_a_dip_of_min_silence_drops_the_onset_run() -> None:
    probabilities = windows((0.0, 200), (1.0, 100), (0.0, 500), (1.0, 100), (0.0, 1000))
    _, events, _, _ = run(probabilities)
    assert events == []


def test_speech_ms_counts_only_speech_windows() -> None:
    segmenter = Segmenter("inbound", RATE, OPTIONS)
    seen = []
    for k, p in enumerate(windows((1.0, 60), (0.0, 100), (1.0, 40))):
        segmenter.decide(k * WINDOW, WINDOW, p)
        seen.append(segmenter.speech_ms)
    assert seen == [20, 40, 60, 60, 60, 60, 60, 60, 80, 100]
    assert not segmenter.speaking


def test_dips_inside_an_utterance() -> None:
    # a 480 ms dip keeps the utterance; a 500 ms one ends it at the dip's start
    probabilities = windows((1.0, 300), (0.0, 480), (1.0, 300), (0.0, 500), (1.0, 300))
    _, events, signal, at = run(probabilities, finish=False)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded, SpeechStarted]
    assert events[1].utterance.end_ms == 1080.0
    assert at[1] == 1580.0
    assert events[2] == SpeechStarted("inbound", 1580.0, 1780.0)
    check_audio(events[1].utterance, signal)


def test_truncation_cuts_and_goes_on_without_overlap() -> None:
    options = replace(OPTIONS, max_utterance_seconds=2.0)
    segmenter, events, signal, _ = run(windows((0.0, 500), (1.0, 5000), (0.0, 1000)), options)
    ended = [e.utterance for e in events if isinstance(e, SpeechEnded)]
    started = [e for e in events if isinstance(e, SpeechStarted)]
    assert [(u.start_ms, u.end_ms, u.truncated) for u in ended] == [
        (500.0, 2500.0, True),
        (2500.0, 4500.0, True),
        (4500.0, 5500.0, False),
    ]
    assert [s.start_ms for s in started] == [500.0, 2500.0, 4500.0]
    assert [s.detected_ms for s in started] == [700.0, 2700.0, 4700.0]
    # the pieces join up: padding before the first, after the last, and nothing twice
    assert [u.audio_start_ms for u in ended] == [300.0, 2500.0, 4500.0]
    np.testing.assert_array_equal(
        np.concatenate([u.audio for u in ended]), signal[300 * 8 : 5700 * 8]
    )
    assert segmenter.speech_ms_total == 5000.0


def test_truncation_in_a_pause() -> None:
    # the limit comes 300 ms into a pause: the utterance ends where the pause began
    options = replace(OPTIONS, max_utterance_seconds=2.0)
    _, events, signal, at = run(windows((0.0, 500), (1.0, 1700), (0.0, 1000)), options)
    (ended,) = [e.utterance for e in events if isinstance(e, SpeechEnded)]
    assert (ended.start_ms, ended.end_ms, ended.truncated) == (500.0, 2200.0, True)
    assert at[-1] == 2520.0  # when the window past the limit came
    np.testing.assert_array_equal(ended.audio, signal[300 * 8 : 2400 * 8])


def test_held_audio_is_bounded() -> None:
    options = replace(OPTIONS, max_utterance_seconds=1.0)
    segmenter = Segmenter("inbound", RATE, options)
    cap = RATE * 1 + 2 * 1600 + round(LAG_ALLOWANCE_SECONDS * RATE)
    frame = ramp(WINDOW)
    most = 0
    for k in range(3000):  # a minute of speech, then silence
        segmenter.audio(frame, k * WINDOW)
        segmenter.decide(k * WINDOW, WINDOW, 1.0 if k < 1500 else 0.0)
        most = max(most, segmenter._held)
    assert most <= RATE * 1 + 1600 + WINDOW <= cap
    assert segmenter._held <= 1600 + WINDOW  # silence: only the padding to come
    # decisions that stop coming: the cap holds, and what went is counted
    for k in range(3000, 4000):
        segmenter.audio(frame, k * WINDOW)
    assert segmenter._held <= cap
    assert segmenter.dropped_ms > 0


def test_a_minute_of_held_speech_is_a_few_objects_for_the_cyclic_gc() -> None:
    """Held frames are not one object each: a full collection visits every item of a
    container, and a deque of 3,000 frames cost every collection that much per stream."""
    import gc

    options = replace(OPTIONS, max_utterance_seconds=70.0)
    segmenter = Segmenter("inbound", RATE, options)
    signal = ramp(3000 * WINDOW)
    for k in range(3000):  # a minute of speech, each frame an array of its own
        segmenter.audio(signal[k * WINDOW : (k + 1) * WINDOW].copy(), k * WINDOW)
        segmenter.decide(k * WINDOW, WINDOW, 1.0)
    visited = sum(len(gc.get_referents(value)) for value in vars(segmenter).values())
    assert visited < 10
    (ended,) = [e for e in segmenter.finish() if isinstance(e, SpeechEnded)]
    np.testing.assert_array_equal(ended.utterance.audio, signal)


def test_a_hole_after_everything_held_was_let_go() -> None:
    """With no padding, decided silence leaves nothing held; audio after a jump forward is
    held from the jump on, and an utterance there gets exactly its own samples."""
    options = replace(OPTIONS, padding_ms=0.0)
    segmenter = Segmenter("inbound", RATE, options)
    for k in range(20):  # 400 ms of silence, decided as it comes: nothing needs holding
        segmenter.decide(k * WINDOW, WINDOW, 0.0)
        segmenter.audio(ramp(WINDOW, k * WINDOW), k * WINDOW)
    assert segmenter._held == 0 and len(segmenter._stretches) == 1
    later = 20 * WINDOW + RATE  # a second later
    events: list[SpeechEvent] = []
    for k in range(20):
        segmenter.audio(ramp(WINDOW, later + k * WINDOW), later + k * WINDOW)
        if not k:
            assert len(segmenter._stretches) == 1  # the emptied stretch was reused
        events += segmenter.decide(later + k * WINDOW, WINDOW, 1.0)
    events += segmenter.finish()
    (ended,) = [e.utterance for e in events if isinstance(e, SpeechEnded)]
    assert ended.audio_start_ms == later * 1000 / RATE
    np.testing.assert_array_equal(ended.audio, ramp(20 * WINDOW, later))


def test_audio_of_any_layout_is_held_as_its_samples() -> None:
    """Strided views and other integer types are held as the int16 samples they hold."""
    segmenter = Segmenter("inbound", RATE, OPTIONS)
    signal = ramp(50 * WINDOW)
    doubled = np.repeat(signal, 2)
    for k in range(50):
        frame = doubled[2 * k * WINDOW : 2 * (k + 1) * WINDOW : 2]  # not contiguous
        if k % 2:
            frame = frame.astype(np.int32)
        segmenter.audio(frame, k * WINDOW)
        segmenter.decide(k * WINDOW, WINDOW, 1.0)
    (ended,) = [e for e in segmenter.finish() if isinstance(e, SpeechEnded)]
    np.testing.assert_array_equal(ended.utterance.audio, signal)


def test_forward_gap_between_windows_is_silence() -> None:
    segmenter = Segmenter("inbound", RATE, OPTIONS)
    events: list[SpeechEvent] = []
    for k in range(20):  # 400 ms of speech
        segmenter.audio(ramp(WINDOW, k * WINDOW), k * WINDOW)
        events += segmenter.decide(k * WINDOW, WINDOW, 1.0)
    # the next window comes 600 ms later, and is speech: the gap ended the utterance
    later = 20 * WINDOW + 600 * 8
    segmenter.audio(ramp(WINDOW, later), later)
    events += segmenter.decide(later, WINDOW, 1.0)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    utterance = events[1].utterance
    assert (utterance.start_ms, utterance.end_ms) == (0.0, 400.0)
    # the audio stops at the hole in the audio: nothing is made up
    np.testing.assert_array_equal(utterance.audio, ramp(20 * WINDOW))
    assert segmenter.speech_ms == 20.0  # a new run opened after the gap
    # a short gap inside an utterance is a dip like any other
    for k in range(1, 20):
        position = later + k * WINDOW
        events += segmenter.decide(position, WINDOW, 1.0)
    events += segmenter.decide(later + 20 * WINDOW + 300 * 8, WINDOW, 1.0)
    assert segmenter.speaking


def test_backward_positions_continue() -> None:
    segmenter = Segmenter("inbound", RATE, OPTIONS)
    events: list[SpeechEvent] = []
    for k in range(40):
        position = k * WINDOW - (80 if k == 20 else 0)  # one frame placed 10 ms early
        segmenter.audio(ramp(WINDOW, 5000 + k), max(position, 0))
        events += segmenter.decide(max(position - 400, 0), WINDOW, 1.0)
    events += segmenter.finish()
    utterance = events[-1].utterance
    assert (utterance.start_ms, utterance.end_ms) == (0.0, 800.0)
    assert len(utterance.audio) == 40 * WINDOW


def test_finish() -> None:
    # an open utterance ends at the end of the audio
    _, events, signal, _ = run(windows((0.0, 400), (1.0, 600)))
    assert events[-1].utterance.end_ms == 1000.0
    np.testing.assert_array_equal(events[-1].utterance.audio, signal[200 * 8 :])
    # in its closing silence, where the silence began
    _, events, _, _ = run(windows((0.0, 400), (1.0, 600), (0.0, 300)))
    assert events[-1].utterance.end_ms == 1000.0
    # an open run too short to be an utterance: nothing
    _, events, _, _ = run(windows((0.0, 400), (1.0, 100)))
    assert events == []
    # finish with an explicit end
    segmenter, _, _, _ = run(windows((1.0, 400)), finish=False)
    assert segmenter.speaking
    (ended,) = segmenter.finish(end=400 * 8 + 40)
    assert ended.utterance.end_ms == 405.0
    assert not segmenter.speaking
    assert segmenter.finish() == []


def test_hangover_is_taken_off() -> None:
    # the detector says "speech" 100 ms past the end; the segmenter puts the end back
    segmenter = Segmenter("inbound", RATE, OPTIONS, hangover=800)
    events: list[SpeechEvent] = []
    script = windows((0.0, 500), (1.0, 600), (0.0, 200), (1.0, 80), (0.0, 1000))
    for k, p in enumerate(script):
        events += segmenter.decide(k * WINDOW, WINDOW, p)
    # the dip of 200 ms was one of 300; the 80 ms burst after it (all hangover but its first
    # window) ends the utterance 20 ms after it began, and the silence is counted from there
    assert events[1].utterance.end_ms == 1320.0
    assert segmenter.speech_ms_total == 500.0 + 20.0
    # never before the first window of the speech
    segmenter = Segmenter("inbound", RATE, replace(OPTIONS, min_speech_ms=0), hangover=8000)
    events = []
    for k, p in enumerate(windows((0.0, 100), (1.0, 60), (0.0, 600))):
        events += segmenter.decide(k * WINDOW, WINDOW, p)
    assert events[1].utterance.end_ms == 120.0


def test_other_window_sizes() -> None:
    # silero at 8 kHz: 256-sample (32 ms) windows
    probabilities = [0.0] * 10 + [0.8] * 20 + [0.2] * 20
    _, events, signal, _ = run(probabilities, window=256)
    assert events[0] == SpeechStarted("inbound", ms(2560), ms(2560 + 7 * 256))
    assert events[1].utterance.end_ms == ms(30 * 256)
    check_audio(events[1].utterance, signal)


def oracle(
    speech: list[bool], window: int, options: SpeechOptions
) -> list[tuple[float, float, float, bool]]:
    """(start, detected, end, truncated=False) per utterance, from runs of speech windows."""
    min_speech = options.min_speech_ms * RATE // 1000
    min_silence = options.min_silence_ms * RATE // 1000
    groups: list[list[int]] = []
    for k, is_speech in enumerate(speech):
        if is_speech:
            if groups and (k - groups[-1][-1] - 1) * window < min_silence:
                groups[-1].append(k)
            else:
                groups.append([k])
    out = []
    for group in groups:
        if len(group) * window < min_speech:
            continue
        reached = group[max(0, -(-min_speech // window) - 1)]
        end = group[-1] + 1  # the end of its last speech window (silence, or the audio, after)
        out.append((ms(group[0] * window), ms((reached + 1) * window), ms(end * window), False))
    return out


@settings(max_examples=EXAMPLES)
@given(
    st.lists(st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]), max_size=300),
    st.sampled_from([80, 160, 256]),
    st.sampled_from([0, 20, 200, 300]),
    st.sampled_from([20, 100, 500]),
)
def test_against_oracle(
    probabilities: list[float], window: int, min_speech_ms: int, min_silence_ms: int
) -> None:
    options = replace(OPTIONS, min_speech_ms=min_speech_ms, min_silence_ms=min_silence_ms)
    _, events, signal, at = run(probabilities, options, window=window)
    started = [(e.start_ms, e.detected_ms) for e in events if isinstance(e, SpeechStarted)]
    ended = [e.utterance for e in events if isinstance(e, SpeechEnded)]
    held = [ms(len(signal)) if a is None else a for a, e in zip(at, events, strict=True)]
    held = [h for h, e in zip(held, events, strict=True) if isinstance(e, SpeechEnded)]
    expected = oracle([p >= 0.5 for p in probabilities], window, options)
    assert started == [(s, d) for s, d, _, _ in expected]
    assert [(u.start_ms, u.end_ms, u.truncated) for u in ended] == [
        (s, e, t) for s, _, e, t in expected
    ]
    for utterance, available in zip(ended, held, strict=True):
        low = max(0.0, utterance.start_ms - options.padding_ms)
        high = min(utterance.end_ms + options.padding_ms, available)
        assert utterance.audio_start_ms == low
        assert len(utterance.audio) == round((high - low) * RATE / 1000)
        check_audio(utterance, signal)
