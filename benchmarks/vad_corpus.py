"""A labelled speech corpus for the speech detectors, made on the spot from espeak-ng.

Used by ``benchmarks/vad.py`` (the accuracy table) and ``tests/voice/test_detect.py`` (bounds
on the same figures); nothing here is committed but this code: the audio is synthesized into
a cache directory (``$MEDIASTREAM_VAD_CORPUS``, else ``<tmp>/mediastream-vad-corpus``) the first
time and read back after.

The clip: ``SENTENCES`` spoken by ``VOICES`` (espeak-ng voices and variants, rotating, at
several speeds), one after another with known silences between them (1 s before the first,
0.6-2.0 s between, drawn from a fixed seed, 1 s after the last): about 45 s. Each sentence is
resampled (soxr) from espeak's 22050 Hz to the clip's rate (8000 or 16000) and scaled to an
active speech level of -26 dBFS, the nominal telephone level.

Labels, one per 20 ms frame of the clip (frame ``f`` covers samples ``[f*r/50, (f+1)*r/50)``):
a frame is speech when the clean sentence's RMS in it is within 35 dB of that sentence's
loudest frame; within one sentence, a pause of 100 ms or less between speech frames (stop
closures, word joints) is speech too. Longer pauses inside a sentence (espeak's commas, about
140-220 ms) stay silence, as do the silences between sentences. Each labelled run is a
segment (onset, offset in samples).

Noise: stationary pink (1/f power) Gaussian noise, from a seed fixed per rate and SNR, added
at a signal-to-noise ratio of the speech's active power (over the labelled speech frames) to
the noise's power: 20, 10 and 5 dB (``None``: the clean clip). Deterministic given the espeak-ng
version (which is part of the cache key).

Scoring (``score``): a detector gives a probability per window (its own length); a window at
or above the threshold is speech, raw (no smoothing or hysteresis: that is the segmenter's
job). A 20 ms label frame takes the decision of the window that holds its centre sample.
Latencies are measured when a decision is known, at the end of its window: onset latency is
the end of the first speech window that overlaps a segment minus the segment's onset; offset
latency is the end of the first silence window after the speech run that covers the segment's
end (or, if the detector fell silent before the end, after its last speech window in the
segment) minus the segment's offset. A segment with no speech window is missed.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import soundfile
import soxr

FRAME_MS = 20
ESPEAK_RATE = 22050
LEVEL_DBFS = -26.0  # active speech level of the clean clip
FLOOR_DB = 35.0  # a frame within this of its sentence's loudest frame is speech
FILL_MS = 100  # pauses this short inside a sentence are speech
SNRS: tuple[float | None, ...] = (None, 20.0, 10.0, 5.0)

SENTENCES = (
    "Hello, thank you for calling. How can I help you today?",
    "I would like to check the status of my order, please.",
    "The number is four seven two, nine nine one, eight.",
    "Sure. Can you confirm the name on the account?",
    "It should arrive on Tuesday between nine and five.",
    "No, that is not right. I moved last month.",
    "Let me transfer you to someone who can update the address.",
    "Thanks. Is there anything else I can do for you?",
    "Actually, yes. My last bill was higher than usual.",
    "I see a one time charge for the installation visit.",
    "Okay, that makes sense. Have a good afternoon.",
    "Goodbye.",
)
VOICES = (
    ("en-us", 165),
    ("en-gb+f3", 150),
    ("en-gb-scotland", 175),
    ("en-us+f4", 140),
    ("en-gb-x-rp+m3", 185),
    ("en-029+f2", 160),
)


@dataclass(frozen=True)
class Clip:
    """A labelled clip: int16 audio, a label per 20 ms frame, and the speech segments."""

    rate: int
    snr_db: float | None
    pcm: np.ndarray  # int16
    labels: np.ndarray  # bool, one per 20 ms frame
    segments: tuple[tuple[int, int], ...]  # speech runs, [onset, offset) in samples

    @property
    def frame(self) -> int:
        return self.rate * FRAME_MS // 1000


def espeak_missing() -> str | None:
    """Why the corpus cannot be made here (a skip reason), or None."""
    if shutil.which("espeak-ng") is None:
        return "espeak-ng is not installed (apt-get install espeak-ng): no labelled speech"
    return None


@cache
def _espeak_version() -> str:
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _cache_dir() -> Path:
    root = os.environ.get("MEDIASTREAM_VAD_CORPUS")
    path = Path(root) if root else Path(tempfile.gettempdir()) / "mediastream-vad-corpus"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _speak(text: str, voice: str, speed: int) -> np.ndarray:
    """espeak-ng's 22050 Hz float samples of ``text``, cached on disk."""
    key = hashlib.sha256(f"{_espeak_version()}|{voice}|{speed}|{text}".encode()).hexdigest()
    path = _cache_dir() / f"{key[:24]}.wav"
    if not path.exists():
        wav = subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
            capture_output=True,
            check=True,
        ).stdout
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(wav)
        tmp.replace(path)  # atomic: parallel test runs never read half a file
    samples, rate = soundfile.read(io.BytesIO(path.read_bytes()), dtype="float64")
    assert rate == ESPEAK_RATE, rate
    return samples


def _frame_rms(x: np.ndarray, frame: int) -> np.ndarray:
    n = len(x) // frame
    return np.sqrt(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1))


def _sentence(text: str, voice: str, speed: int, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """One sentence at ``rate``, trimmed to its labelled speech, at the active level; and its
    frame labels (the clip places sentences on the frame grid, so labels line up)."""
    x = soxr.resample(_speak(text, voice, speed), ESPEAK_RATE, rate)
    frame = rate * FRAME_MS // 1000
    x = np.concatenate((x, np.zeros(-len(x) % frame)))
    db = 20 * np.log10(_frame_rms(x, frame) + 1e-12)
    active = db > db.max() - FLOOR_DB
    first, last = np.flatnonzero(active)[[0, -1]]
    active = active[first : last + 1]
    x = x[first * frame : (last + 1) * frame]
    labels = active.copy()
    fill = FILL_MS // FRAME_MS
    silent = np.flatnonzero(~active)
    if len(silent):  # runs of silent frames, each short one becomes speech
        breaks = np.flatnonzero(np.diff(silent) > 1)
        for run in np.split(silent, breaks + 1):
            if len(run) <= fill:
                labels[run] = True
    level = np.sqrt(np.mean(x.reshape(-1, frame)[labels] ** 2))
    return x * (10 ** (LEVEL_DBFS / 20) / level), labels


def _pink(n: int, seed: int) -> np.ndarray:
    """Unit-power pink noise: white Gaussian noise shaped to 1/f power in the frequency domain."""
    rng = np.random.default_rng(seed)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spectrum), dtype=np.float64)
    f[0] = 1.0
    noise = np.fft.irfft(spectrum / np.sqrt(f), n)
    return noise / np.sqrt(np.mean(noise**2))


@cache
def _clean(rate: int) -> tuple[np.ndarray, np.ndarray]:
    frame = rate * FRAME_MS // 1000
    gaps = np.random.default_rng(20260).uniform(0.6, 2.0, len(SENTENCES) - 1)
    pieces: list[np.ndarray] = [np.zeros(rate)]
    labels: list[np.ndarray] = [np.zeros(rate // frame, dtype=bool)]
    for i, text in enumerate(SENTENCES):
        voice, speed = VOICES[i % len(VOICES)]
        x, lab = _sentence(text, voice, speed, rate)
        pieces.append(x)
        labels.append(lab)
        gap_frames = round(gaps[i] * 1000 / FRAME_MS) if i < len(gaps) else 1000 // FRAME_MS
        pieces.append(np.zeros(gap_frames * frame))
        labels.append(np.zeros(gap_frames, dtype=bool))
    return np.concatenate(pieces), np.concatenate(labels)


def _segments(labels: np.ndarray, frame: int) -> tuple[tuple[int, int], ...]:
    edges = np.diff(np.concatenate(([0], labels.astype(np.int8), [0])))
    onsets, offsets = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return tuple((int(a) * frame, int(b) * frame) for a, b in zip(onsets, offsets, strict=True))


@cache
def clip(rate: int, snr_db: float | None) -> Clip:
    """The labelled clip at ``rate`` (8000 or 16000) with pink noise at ``snr_db`` (None: clean)."""
    clean, labels = _clean(rate)
    frame = rate * FRAME_MS // 1000
    x = clean.copy()
    if snr_db is not None:
        speech_power = np.mean(clean.reshape(-1, frame)[labels] ** 2)
        seed = rate * 100 + int(snr_db)
        x += _pink(len(x), seed) * np.sqrt(speech_power / 10 ** (snr_db / 10))
    pcm = np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16)
    return Clip(rate, snr_db, pcm, labels, _segments(labels, frame))


def noise_only(rate: int, seconds: float, seed: int = 7) -> np.ndarray:
    """Pink noise alone at the level of the 10 dB SNR clip's noise (int16): no speech in it."""
    level = 10 ** ((LEVEL_DBFS - 10) / 20)
    x = _pink(int(rate * seconds), seed) * level
    return np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16)


# ------------------------------------------------------------------ scoring


@dataclass(frozen=True)
class Score:
    """Frame-level agreement with the labels, and latencies (ms) per segment."""

    precision: float
    recall: float
    f1: float
    onsets_ms: tuple[float, ...]
    offsets_ms: tuple[float, ...]
    missed: int  # segments with no speech window at all
    segments: int


def frame_decisions(
    probabilities: list[float] | np.ndarray, window: int, clip: Clip, threshold: float
) -> np.ndarray:
    """Each 20 ms label frame's decision: that of the window holding its centre sample."""
    positive = np.asarray(probabilities, dtype=np.float64) >= threshold
    centres = np.arange(len(clip.labels)) * clip.frame + clip.frame // 2
    index = centres // window
    out = np.zeros(len(clip.labels), dtype=bool)
    ok = index < len(positive)  # a last partial window was never scored: silence
    out[ok] = positive[index[ok]]
    return out


def score(
    probabilities: list[float] | np.ndarray, window: int, clip: Clip, threshold: float = 0.5
) -> Score:
    """Raw per-window decisions at ``threshold`` against the clip's labels."""
    decided = frame_decisions(probabilities, window, clip, threshold)
    labels = clip.labels
    tp = int(np.sum(decided & labels))
    fp = int(np.sum(decided & ~labels))
    fn = int(np.sum(~decided & labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    positive = np.asarray(probabilities, dtype=np.float64) >= threshold
    n = len(positive)
    ms = 1000 / clip.rate
    onsets: list[float] = []
    offsets: list[float] = []
    missed = 0
    for on, off in clip.segments:
        first = on // window
        last = min((off - 1) // window, n - 1)
        hits = np.flatnonzero(positive[first : last + 1])
        if not len(hits):
            missed += 1
            continue
        onsets.append(((first + hits[0] + 1) * window - on) * ms)
        if positive[last]:  # speech at the end: the run goes on until the first silence window
            after = np.flatnonzero(~positive[last:])
            end = last + (int(after[0]) if len(after) else n - last)
        else:  # fell silent early: the window after the last speech one
            end = first + int(hits[-1]) + 1
        offsets.append(((end + 1) * window - off) * ms)
    return Score(precision, recall, f1, tuple(onsets), tuple(offsets), missed, len(clip.segments))


def sentence(
    text: str, rate: int, voice: str = "en-us", speed: int = 160
) -> tuple[np.ndarray, np.ndarray]:
    """One sentence at ``rate`` as the clip has it: float samples trimmed to its labelled
    speech at the active level, and its 20 ms frame labels (for tests that place speech
    themselves)."""
    return _sentence(text, voice, speed, rate)
