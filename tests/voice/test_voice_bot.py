"""``examples/voice_bot.py`` against ``mediastream simulate --realtime``: a spoken caller
(espeak-ng), a PIN by DTMF, and a recording that holds both voices where they were heard."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile

from benchmarks.vad_corpus import espeak_missing, sentence
from tests.processes import example_server, mediastream

pytest.importorskip("webrtcvad", reason="webrtcvad-wheels (the [vad] extra) is not installed")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(espeak_missing() is not None, reason=str(espeak_missing())),
]

RATE = 8000
SPEAKS_AT_S = 3.5  # after the greeting (about 2.3 s), which cannot be interrupted anyway
PIN = "4711"


def caller_file(path: Path) -> tuple[float, float]:
    """The caller: silence, one sentence, silence; returns the sentence's (onset, offset) s."""
    speech, labels = sentence("I would like to check my account balance please.", RATE)
    lead = np.zeros(int(SPEAKS_AT_S * RATE))
    tail = np.zeros(int(7.0 * RATE))
    soundfile.write(path, np.concatenate([lead, speech, tail]), RATE, subtype="PCM_16")
    speaking = np.flatnonzero(labels)
    return SPEAKS_AT_S + speaking[0] * 0.02, SPEAKS_AT_S + (speaking[-1] + 1) * 0.02


def test_the_voice_bot_answers_takes_a_pin_and_records_both_voices(tmp_path: Path):
    onset_s, offset_s = caller_file(tmp_path / "caller.wav")
    keys_at = offset_s + 3.5  # once the reply has begun
    dtmf = [f"{keys_at + 0.3 * i:.2f}:{key}" for i, key in enumerate(PIN + "#")]
    record_dir, heard_dir = tmp_path / "rec", tmp_path / "heard"
    with example_server("voice_bot.py", "--record-dir", str(record_dir)) as (port, out):
        result = mediastream(
            "simulate", f"ws://127.0.0.1:{port}/", "--stream-id", "bot", "--realtime",
            "--audio", str(tmp_path / "caller.wav"), "--heard-dir", str(heard_dir),
            "--linger", "3", *(a for key in dtmf for a in ("--dtmf", key)),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    log = out[0]
    # one utterance, where the caller spoke (the log line gives the call's timeline in ms)
    spans = [(int(a), int(b)) for a, b in re.findall(r"bot: utterance (\d+)-(\d+) ms", log)]
    assert len(spans) == 1, log
    assert abs(spans[0][0] / 1000 - onset_s) <= 0.06 and abs(spans[0][1] / 1000 - offset_s) <= 0.06
    assert f"bot: PIN '{PIN}' (max_digits)" in log, log  # the '#' after it is swallowed

    recording, rate = soundfile.read(record_dir / "bot.wav", dtype="int16")
    assert rate == RATE and recording.shape[1] == 2  # 0: the caller, 1: what the bot played
    caller, bot = recording[:, 0].astype(float), recording[:, 1].astype(float)
    heard, heard_rate = soundfile.read(heard_dir / "bot.heard.wav", dtype="int16")
    assert heard_rate == RATE
    # both voices: the caller where they spoke, the bot (greeting, reply, thanks) elsewhere
    spoke = slice(int(onset_s * RATE), int(offset_s * RATE))
    assert np.sqrt(np.mean(caller[spoke] ** 2)) > 500
    assert np.sqrt(np.mean(caller[: int(2.0 * RATE)] ** 2)) < 50  # silent while greeted
    played = np.flatnonzero(np.abs(bot) > 1000)
    assert played[0] < 0.5 * RATE  # the greeting, from the start
    assert np.count_nonzero(np.abs(bot[int(offset_s * RATE) :]) > 1000) > 1.5 * RATE  # replies
    # the bot's channel lies where the far end played it: for each piece the caller heard
    # (greeting, reply, thanks), the cross-correlation peak is within 20 ms, and there the
    # channel holds the very samples heard
    pieces = runs(heard, gap=int(0.1 * RATE))
    assert len(pieces) >= 3, pieces
    for begin, end in pieces:
        lag, similarity = best_lag(bot, heard.astype(float), begin, end, int(0.020 * RATE))
        assert abs(lag) <= 0.020 * RATE and similarity > 0.999, (begin, end, lag, similarity)


def runs(x: np.ndarray, gap: int) -> list[tuple[int, int]]:
    """The [begin, end) spans of non-zero samples, split where ``gap`` zeros in a row lie."""
    nonzero = np.flatnonzero(x)
    breaks = np.flatnonzero(np.diff(nonzero) > gap)
    begins = [nonzero[0], *nonzero[breaks + 1]]
    ends = [*(nonzero[breaks] + 1), nonzero[-1] + 1]
    return [(int(b), int(e)) for b, e in zip(begins, ends, strict=True)]


def best_lag(
    channel: np.ndarray, heard: np.ndarray, begin: int, end: int, reach: int
) -> tuple[int, float]:
    """The lag (samples, ±``reach``) at which ``channel`` best matches ``heard[begin:end]``,
    and the normalized correlation there (1.0: the same samples)."""
    piece = heard[begin:end]
    scores = []
    for lag in range(-reach, reach + 1):
        lo, hi = begin + lag, end + lag
        if lo < 0 or hi > len(channel):
            scores.append(-1.0)
            continue
        other = channel[lo:hi]
        norm = np.sqrt(np.dot(piece, piece) * np.dot(other, other)) or 1.0
        scores.append(float(np.dot(piece, other) / norm))
    best = int(np.argmax(scores))
    return best - reach, scores[best]
