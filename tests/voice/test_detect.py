"""Speech detectors on real audio: espeak-ng speech in pink noise (``benchmarks/vad_corpus.py``)
for accuracy, a voice-like signal for the bank's equivalence with one-by-one Silero.

Bounds on F1 are the figures ``benchmarks/vad.py`` measured, less a margin (see each test);
nothing here is timed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import tomllib
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from benchmarks.vad_corpus import clip, espeak_missing, noise_only, score
from mediastream.config import SpeechOptions
from mediastream.errors import MediaStreamError, install_hint
from mediastream.simulate import synthesize_speechlike
from mediastream.voice import detect
from mediastream.voice.detect import (
    BankDetector,
    SileroBank,
    SileroDetector,
    TrackDetector,
    WebRtcDetector,
    detector_rate,
    load_model,
    make_detector,
)

REPO = Path(__file__).resolve().parents[2]

needs_webrtc = pytest.mark.skipif(
    importlib.util.find_spec("webrtcvad") is None,
    reason=f"webrtcvad is not installed ({install_hint('vad')})",
)
needs_onnx = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None,
    reason=f"onnxruntime is not installed ({install_hint('silero')})",
)
needs_espeak = pytest.mark.skipif(espeak_missing() is not None, reason=str(espeak_missing()))
RATES = pytest.mark.parametrize("rate", [8000, 16000])

# measured by benchmarks/vad.py (RESULTS.md), less a margin: F1 at 20 dB SNR, and the largest
# fraction of windows called speech on pink noise alone
# (2026-12-01, espeak-ng 1.51: webrtc mode 3 0.949 / 0.948, noise 0.003; silero at 0.5
# 0.959 / 0.954, noise 0.000)
WEBRTC_F1 = {8000: 0.92, 16000: 0.92}
WEBRTC_NOISE = 0.05
SILERO_F1 = {8000: 0.92, 16000: 0.92}
SILERO_NOISE = 0.02


def feed(detector: TrackDetector, pcm: np.ndarray, sizes: list[int] | None = None) -> list[float]:
    """Push ``pcm`` in 20 ms frames (or the given sizes, cycled) and take everything."""
    sizes = sizes or [detector.sample_rate // 50]
    out: list[float] = []
    start, k = 0, 0
    while start < len(pcm):
        size = sizes[k % len(sizes)]
        detector.push(pcm[start : start + size])
        out += detector.take()
        start += size
        k += 1
    return out


def voice(rate: int, seconds: float, seed: int) -> np.ndarray:
    """A voice-like signal with silences in it, so that the state goes up and down."""
    x = synthesize_speechlike(seconds, rate, seed=seed)
    x[int(0.3 * len(x)) : int(0.45 * len(x))] = 0
    return x


# ------------------------------------------------------------------ accuracy


@needs_espeak
@needs_webrtc
@RATES
def test_webrtc_flags_speech_not_noise(rate: int) -> None:
    """Default mode (3) at 20 dB pink noise: measured F1 0.949 (8 kHz), 0.948 (16 kHz)."""
    mode = SpeechOptions().webrtc_mode
    c = clip(rate, 20.0)
    s = score(feed(WebRtcDetector(mode, rate), c.pcm), rate // 50, c)
    assert s.f1 >= WEBRTC_F1[rate], s
    assert s.missed == 0, s
    on_noise = feed(WebRtcDetector(mode, rate), noise_only(rate, 10.0))
    assert np.mean(on_noise) <= WEBRTC_NOISE, np.mean(on_noise)
    assert feed(WebRtcDetector(mode, rate), np.zeros(rate, np.int16)) == [0.0] * 50


@needs_espeak
@needs_onnx
@RATES
def test_silero_flags_speech_not_noise(rate: int) -> None:
    """Threshold 0.5 at 20 dB pink noise: measured F1 0.959 (8 kHz), 0.954 (16 kHz)."""
    c = clip(rate, 20.0)
    detector = SileroDetector(rate)
    s = score(feed(detector, c.pcm), detector.window, c, SpeechOptions().threshold)
    assert s.f1 >= SILERO_F1[rate], s
    assert s.missed == 0, s
    on_noise = np.asarray(feed(SileroDetector(rate), noise_only(rate, 10.0)))
    threshold = SpeechOptions().threshold
    assert np.mean(on_noise >= threshold) <= SILERO_NOISE, np.mean(on_noise >= threshold)
    silence = feed(SileroDetector(rate), np.zeros(rate, np.int16))
    assert len(silence) == rate // detector.window
    assert max(silence) < 0.1


# ------------------------------------------------------------------ windows and the bank


@needs_onnx
def test_model_contract() -> None:
    """The shipped model's inputs and outputs are those the detectors are written for."""
    session = load_model()
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert inputs == {"input": [None, None], "state": [2, None, 128], "sr": []}
    assert [o.name for o in session.get_outputs()] == ["output", "stateN"]


@needs_onnx
@RATES
def test_silero_push_sizes_do_not_matter(rate: int) -> None:
    pcm = voice(rate, 3.0, seed=1)
    whole = feed(SileroDetector(rate), pcm, [SileroDetector(rate).window])
    rng = np.random.default_rng(5)
    ragged = feed(SileroDetector(rate), pcm, rng.integers(1, 701, 400).tolist())
    assert len(whole) == len(pcm) // (256 if rate == 8000 else 512)
    assert ragged == whole  # same windows, same context: bit for bit


@needs_webrtc
@RATES
def test_webrtc_push_sizes_do_not_matter(rate: int) -> None:
    pcm = voice(rate, 3.0, seed=2)
    whole = feed(WebRtcDetector(3, rate), pcm)
    ragged = feed(
        WebRtcDetector(3, rate), pcm, np.random.default_rng(6).integers(1, 701, 400).tolist()
    )
    assert len(whole) == 150
    assert ragged == whole
    assert 0 < sum(whole) < len(whole)


@needs_webrtc
@RATES
def test_webrtc_frame_scores_agree_with_its_documented_api(rate: int) -> None:
    """``score`` calls webrtcvad's C function under ``Vad.is_speech`` (``_webrtc_process``):
    on real speech-like audio and noise, every frame's decision is ``is_speech``'s, frame by
    frame from one state, as a fresh ``webrtcvad.Vad`` in the same mode decides it."""
    import webrtcvad

    pcm = np.concatenate([voice(rate, 3.0, seed=4), noise_only(rate, 1.0, seed=5)])
    window = rate // 50
    frames = [pcm[i : i + window] for i in range(0, len(pcm) - window + 1, window)]
    reference = webrtcvad.Vad(3)
    expected = [1.0 if reference.is_speech(f.tobytes(), rate) else 0.0 for f in frames]
    detector = WebRtcDetector(3, rate)
    scored = [detector.score(f) for f in frames]
    assert scored == expected
    assert 0 < sum(expected) < len(expected)  # both decisions occur
    # not one whole frame, or something pending: no score, the caller pushes instead
    assert detector.score(frames[0][:-1]) is None
    assert detector.score(frames[0].astype(np.int32)) is None
    detector.push(frames[0][:10])
    assert detector.score(frames[1]) is None


@needs_onnx
@RATES
@pytest.mark.parametrize("max_batch", [None, 3])
def test_bank_matches_one_by_one_with_streams_joining_and_leaving(
    rate: int, max_batch: int | None
) -> None:
    """Streams join and leave between runs (freed slots get reused), push ragged sizes, and
    runs come at uneven times (several windows wait in some); each stream's probabilities are
    one-by-one Silero's on the same audio, whether a round is one run or cut into several."""
    bank = SileroBank(SpeechOptions(detector="silero"), rate, max_batch=max_batch)
    rng = np.random.default_rng(rate)
    audio = {k: voice(rate, 2.0 + 0.25 * k, seed=10 + k) for k in range(10)}
    joins = {0: [0, 1, 2], 5: [3], 9: [4, 5], 20: [6, 7], 31: [8, 9]}
    leaves = {30: [1], 40: [4, 0]}  # 0 and 1 leave mid-way: the test below covers what ran
    seats: dict[int, tuple[BankDetector, int]] = {}  # stream -> (detector, samples pushed)
    got: dict[int, list[float]] = {k: [] for k in audio}
    for step in range(400):  # long enough for every stream to push all its audio
        for k in joins.get(step, []):
            seats[k] = (bank.detector(), 0)
        for k in leaves.get(step, []):
            detector, _ = seats.pop(k)
            got[k] += detector.take()
            detector.close()
        for k, (detector, pushed) in list(seats.items()):
            size = int(rng.integers(1, 701))
            detector.push(audio[k][pushed : pushed + size])
            seats[k] = (detector, pushed + size)
        if rng.random() < 0.6:
            bank.run()
        for k, (detector, _) in seats.items():
            got[k] += detector.take()
    bank.run()
    for k, (detector, _) in seats.items():
        got[k] += detector.take()
    assert len(bank) == len(seats)
    for k, pcm in audio.items():
        expected = feed(SileroDetector(rate), pcm)
        assert len(got[k]) > 10
        n = len(got[k])
        if k not in (0, 1, 4):  # stayed to the end: every window scored
            assert n == len(expected)
        np.testing.assert_allclose(got[k], expected[:n], atol=1e-5, rtol=0)


@needs_onnx
@pytest.mark.parametrize("max_batch", [None, 2])
async def test_bank_runs_on_the_loop_and_stop_scores_the_rest(max_batch: int | None) -> None:
    options = SpeechOptions(detector="silero", bank_interval_ms=10)
    bank = SileroBank(options, 8000, max_batch=max_batch)
    detectors = [bank.detector() for _ in range(5)]
    pcm = voice(8000, 1.0, seed=3)
    bank.start()
    for d in detectors:
        d.push(pcm[:4000])
    for _ in range(500):  # until the periodic run has happened (not a timing assertion)
        await asyncio.sleep(0.01)
        if bank.runs:
            break
    assert bank.runs >= 1
    for d in detectors:
        d.push(pcm[4000:])
    await bank.stop()
    expected = feed(SileroDetector(8000), pcm)
    for d in detectors:
        np.testing.assert_allclose(d.take(), expected, atol=1e-5, rtol=0)
        d.close()
    assert len(bank) == 0 and bank.failures == 0
    assert bank.windows == len(detectors) * len(expected)
    if max_batch:  # every run held at most 2 of the 5 streams
        assert bank.runs >= bank.windows / max_batch
    else:  # every run held all 5
        assert bank.runs == len(expected)


@needs_onnx
def test_closed_detectors_refuse_audio() -> None:
    bank = SileroBank(None, 16000)
    d = bank.detector()
    d.close()
    d.close()  # twice is fine
    with pytest.raises(RuntimeError):
        d.push(np.zeros(512, np.int16))
    with pytest.raises(TypeError):
        bank.detector().push(np.zeros(512, np.float32))


# ------------------------------------------------------------------ choosing and errors


def test_detector_rate() -> None:
    for name in ("webrtc", "silero"):
        options = SpeechOptions(detector=name)  # type: ignore[arg-type]
        assert [detector_rate(options, r) for r in (8000, 16000, 24000, 48000)] == [
            8000,
            16000,
            16000,
            16000,
        ]


@needs_webrtc
@needs_onnx
def test_make_detector() -> None:
    web = make_detector(SpeechOptions(webrtc_mode=1), 16000)
    assert isinstance(web, WebRtcDetector) and (web.mode, web.sample_rate, web.window) == (
        1,
        16000,
        320,
    )
    silero = SpeechOptions(detector="silero")
    one = make_detector(silero, 8000)
    assert isinstance(one, SileroDetector) and (one.sample_rate, one.window) == (8000, 256)
    bank = SileroBank(silero, 16000)
    seat = make_detector(silero, 48000, bank)
    assert isinstance(seat, BankDetector) and seat.window == 512 and len(bank) == 1
    with pytest.raises(ValueError, match="one bank per rate"):
        make_detector(silero, 8000, bank)
    with pytest.raises(ValueError, match="unknown speech detector"):
        make_detector(SpeechOptions(detector="nope"), 8000)  # type: ignore[arg-type]


def test_missing_webrtc_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "webrtcvad", None)  # import webrtcvad raises ImportError
    with pytest.raises(MediaStreamError) as caught:
        make_detector(SpeechOptions(), 8000)
    assert str(caught.value) == f"speech detector 'webrtc' needs webrtcvad: {install_hint('vad')}"


def test_missing_onnxruntime_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    load_model.cache_clear()  # a loaded session would not import onnxruntime again
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    try:
        with pytest.raises(MediaStreamError) as caught:
            SileroBank(SpeechOptions(detector="silero"), 8000)
    finally:
        load_model.cache_clear()
    message = f"speech detector 'silero' needs onnxruntime: {install_hint('silero')}"
    assert str(caught.value) == message


def test_model_ships_in_the_package() -> None:
    data = resources.files(detect.__package__) / "data"
    assert (data / "silero_vad.onnx").is_file()
    assert "MIT License" in (data / "LICENSE-silero-vad").read_text()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    shipped = project["tool"]["setuptools"]["package-data"]["mediastream.voice"]
    assert {"data/silero_vad.onnx", "data/LICENSE-silero-vad"} <= set(shipped)
