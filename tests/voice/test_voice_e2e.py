"""Speech detection and barge-in through a real server, on real speech (espeak-ng).

Each call is sent in real time by the simulator, whose far end plays the server's audio on a
real-time playout clock and records when a ``clear`` came. The caller says one sentence,
placed at a known time, while the bot plays a tone: the utterance must come at the labels'
times (within ±60 ms), the barge-in must clear the tone within 100 ms of the moment the
caller's speech reached ``barge_in_ms``, a protected playback must never be cleared, and a
backchannel shorter than ``barge_in_ms`` must not interrupt.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import numpy as np
import pytest

from benchmarks.vad_corpus import espeak_missing, sentence
from mediastream import MediaServer, StreamHandler, StreamOptions
from mediastream.config import PlaybackConfig, SpeechOptions
from mediastream.media.playback import Playback
from mediastream.session import Audio
from mediastream.simulate import FarEndConfig, plan_call, send_call
from mediastream.voice.segment import Utterance

pytest.importorskip("webrtcvad", reason="webrtcvad-wheels (the [vad] extra) is not installed")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(espeak_missing() is not None, reason=str(espeak_missing())),
]

RATE = 8000
LEAD_S = 1.0  # silence before the caller speaks
OPTIONS = SpeechOptions()  # the defaults: webrtc, min speech 200 ms, barge-in 300 ms


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (5000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


def caller(speech: np.ndarray, tail_s: float = 1.5) -> np.ndarray:
    """``LEAD_S`` of silence, the speech, ``tail_s`` of silence, as int16."""
    pcm = np.round(np.clip(speech, -1, 1) * 32767).astype(np.int16)
    lead, tail = np.zeros(int(LEAD_S * RATE), np.int16), np.zeros(int(tail_s * RATE), np.int16)
    return np.concatenate([lead, pcm, tail])


class TalkingBot(StreamHandler):
    """Plays ``PROMPT_S`` of tone at the start; notes every speech event on the call's
    timeline (the end of the last frame handled when it came)."""

    speech = OPTIONS
    playback = PlaybackConfig(mode="rtp")
    PROMPT_S: ClassVar[float] = 6.0
    INTERRUPTIBLE: ClassVar[bool] = True
    events: ClassVar[list[tuple[str, Any, float]]] = []
    prompts: ClassVar[list[Playback]] = []
    reports: ClassVar[list[dict[str, Any] | None]] = []

    async def on_start(self) -> None:
        self.at_ms = 0.0
        prompt = await self.call.play(tone(self.PROMPT_S), RATE, interruptible=self.INTERRUPTIBLE)
        TalkingBot.prompts.append(prompt)

    async def on_audio(self, frame: Audio) -> None:
        self.at_ms = frame.timestamp_ms + frame.duration_ms

    async def on_speech_start(self, track: str) -> None:
        TalkingBot.events.append(("start", track, self.at_ms))

    async def on_speech_end(self, utterance: Utterance) -> None:
        TalkingBot.events.append(("end", utterance, self.at_ms))

    async def on_interrupted(self, playback: Playback) -> None:
        TalkingBot.events.append(("interrupted", playback, self.at_ms))

    async def on_stop(self) -> None:
        TalkingBot.reports.append(self.call.report)


@pytest.fixture(autouse=True)
def _fresh_bot() -> None:
    TalkingBot.events, TalkingBot.prompts, TalkingBot.reports = [], [], []
    TalkingBot.PROMPT_S, TalkingBot.INTERRUPTIBLE = 6.0, True


SPEAKING: list[tuple[float, bool]] = []  # (call time s, the live view's "speaking")


async def call(audio: np.ndarray, linger: float = 1.0) -> Any:
    options = StreamOptions(playback=PlaybackConfig(mode="rtp"))
    SPEAKING.clear()
    async with MediaServer(TalkingBot, port=0, options=options) as server:

        async def watch() -> None:  # what GET /streams shows, every 50 ms
            began = asyncio.get_running_loop().time()
            while True:
                for view in server.registry.live_snapshots():
                    now = asyncio.get_running_loop().time() - began
                    SPEAKING.append((now, view["speaking"]["inbound"]))
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        url = f"ws://127.0.0.1:{server.port}/"
        plan = plan_call(audio, codec="PCMU")
        result = await send_call(url, plan, realtime=True, linger=linger, far_end=FarEndConfig())
        watcher.cancel()
    return result.far_end


def kinds() -> list[str]:
    return [kind for kind, _, _ in TalkingBot.events]


async def test_an_utterance_at_its_labels_times_clears_the_prompt_within_100_ms():
    speech, labels = sentence("Wait, I would like to speak to a person please.", RATE)
    onset_ms = LEAD_S * 1000 + np.flatnonzero(labels)[0] * 20
    offset_ms = LEAD_S * 1000 + (np.flatnonzero(labels)[-1] + 1) * 20
    far = await call(caller(speech))

    assert kinds()[:3] == ["start", "interrupted", "end"], kinds()
    [utterance] = [u for kind, u, _ in TalkingBot.events if kind == "end"]
    assert utterance.track == "inbound"
    assert abs(utterance.start_ms - onset_ms) <= 60, (utterance.start_ms, onset_ms)
    assert abs(utterance.end_ms - offset_ms) <= 60, (utterance.end_ms, offset_ms)
    # the utterance's audio is the caller's, from its padded start (μ-law-decoded)
    assert utterance.sample_rate == RATE and utterance.duration_ms > 1000

    [(_, cut, trigger_ms)] = [e for e in TalkingBot.events if e[0] == "interrupted"]
    [prompt] = TalkingBot.prompts
    assert cut is prompt and prompt.interrupted
    assert await asyncio.wait_for(prompt.finished(), 1) is False
    # the barge-in came once the speech reached barge_in_ms (a frame's worth either way)
    assert OPTIONS.barge_in_ms is not None
    assert trigger_ms - utterance.start_ms >= OPTIONS.barge_in_ms - 20
    assert trigger_ms - onset_ms <= OPTIONS.barge_in_ms + 200  # webrtc's dips, at most
    # the far end got the clear within 100 ms of that moment, on the call's clock
    [clear_at] = far.clears
    clear_ms = (clear_at - far.call_start) * 1000
    assert -20 <= clear_ms - trigger_ms <= 100, (clear_ms, trigger_ms)
    # what the prompt's playback says was heard is what the far end played
    heard_ms = far.heard_at_clear[0] * 1000 / RATE
    assert abs(prompt.heard_ms - heard_ms) <= 100, (prompt.heard_ms, heard_ms)
    # the live view said "speaking" while the caller spoke, and only then (±0.3 s)
    spoke = [t for t, speaking in SPEAKING if speaking]
    assert spoke and not [t for t, s in SPEAKING if not s and onset_ms / 1000 + 0.3 < t <
                          offset_ms / 1000 - 0.3]  # fmt: skip
    # the report's share of speech (the windows the detector called speech, over the audio
    # received): the labels' share, within the detector's misses on one sentence (F1 0.95)
    [report] = TalkingBot.reports
    assert report is not None
    share = report["levels"]["inbound"]["speech"]
    expected = np.count_nonzero(labels) * 20 / report["duration_seconds"] / 1000
    assert expected - 0.1 <= share <= expected + 0.02, (share, expected)


async def test_a_protected_prompt_is_never_cleared():
    TalkingBot.PROMPT_S, TalkingBot.INTERRUPTIBLE = 3.0, False
    speech, _ = sentence("Hold on, hold on, I need to say something now.", RATE)
    far = await call(caller(speech, tail_s=2.0))

    assert "start" in kinds() and "end" in kinds()  # the caller was heard speaking ...
    assert "interrupted" not in kinds()  # ... over the prompt, which played to the end
    assert far.clears == []
    [prompt] = TalkingBot.prompts
    assert await asyncio.wait_for(prompt.finished(), 1) is True
    assert prompt.heard_ms == pytest.approx(3000, abs=1)


async def test_a_backchannel_shorter_than_barge_in_ms_does_not_interrupt():
    TalkingBot.PROMPT_S = 3.0
    speech, labels = sentence("Yes.", RATE, speed=250)  # 280 ms of speech
    speaking_ms = np.count_nonzero(labels) * 20
    assert OPTIONS.barge_in_ms is not None and speaking_ms < OPTIONS.barge_in_ms, speaking_ms
    far = await call(caller(speech, tail_s=2.5))

    assert kinds() == ["start", "end"], TalkingBot.events  # heard as speech, yet ...
    [(_, utterance, _)] = [e for e in TalkingBot.events if e[0] == "end"]
    assert utterance.duration_ms < OPTIONS.barge_in_ms  # ... shorter than barge_in_ms
    assert far.clears == []
    [prompt] = TalkingBot.prompts
    assert await asyncio.wait_for(prompt.finished(), 1) is True
