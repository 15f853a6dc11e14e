"""Bidirectional playback through a real server and the simulated far end."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from typing import ClassVar

import numpy as np
import pytest
import soxr
from websockets.asyncio.client import connect

from examples.echo_bot import EchoBot
from mediastream import MediaServer, StreamHandler, StreamOptions, codecs
from mediastream.media.playback import Playback, PlaybackConfig, PlaybackError
from mediastream.simulate import (
    CallPlan,
    FarEnd,
    FarEndConfig,
    plan_call,
    send_call,
    synthesize_speechlike,
)
from tests.conftest import ws_url

pytestmark = pytest.mark.both_transports


def rtp() -> StreamOptions:
    """RTP PCMU 8000 (``bidirectionalMode="rtp"``); the default is Telnyx's, mp3."""
    return StreamOptions(playback=PlaybackConfig(mode="rtp"))


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    ref = reference.astype(float)
    noise = np.sum((ref - test.astype(float)) ** 2)
    return float(10 * np.log10(np.sum(ref**2) / max(noise, 1e-9)))


def best_aligned_snr(reference: np.ndarray, test: np.ndarray, max_lag: int) -> float:
    n = min(len(reference), len(test)) - max_lag
    return max(snr_db(reference[:n], test[lag : lag + n]) for lag in range(max_lag))


def one_round(pcm: np.ndarray, codec: str, rate: int) -> np.ndarray:
    """``pcm`` through one encoder and one decoder, 20 ms at a time, as a call carries it."""
    enc, dec = codecs.encoder(codec, rate), codecs.decoder(codec, rate)
    step = enc.sample_rate // 50
    return np.concatenate(
        [dec.decode(enc.encode(pcm[i : i + step])) for i in range(0, len(pcm), step)]
    )


async def call_until_echoed(
    url: str, plan: CallPlan, config: FarEndConfig, *, samples: int = 0
) -> FarEnd:
    """A real-time call whose caller hangs up once it heard the echo of all it said.

    Playback is paced in real time, so every stall of the server (or of this far end) on a
    loaded machine delays the end of the echo for good: after a fixed linger (``send_call``'s)
    the ``stop`` could come before the last chunks were sent or played (15360 of 16000
    samples heard). EchoBot plays each inbound frame as one playback with its own mark, so
    the echo is complete when the far end has echoed one mark per frame; only then ``stop``.
    With ``samples``, also once it has heard that many: a resampling player sends its filter's
    tail after the last mark, when it has been idle for a moment (``IDLE_FLUSH_SECONDS``).
    """
    far = FarEnd(config, plan.stream_id)
    frames = plan.media_frames()

    async def reply(replies: list[dict[str, object]]) -> None:
        for frame in replies:
            await ws.send(json.dumps(frame))

    async def read() -> None:
        async for message in ws:
            frame, now = json.loads(message), time.monotonic()
            replies = far.advance(now)
            if frame["event"] == "media":
                error = far.on_media(base64.b64decode(frame["media"]["payload"]), now)
                replies += [error] if error else []
            elif frame["event"] == "mark":
                far.on_mark(frame["mark"]["name"], now)
                replies += far.advance(now)
            await reply(replies)

    async def echo_marks() -> None:  # marks fall due between incoming frames too
        while True:
            due = far.next_due()
            if due is None:
                far.mark_queued.clear()
                await far.mark_queued.wait()
                continue
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await reply(far.advance(time.monotonic()))

    async with connect(url, compression=None) as ws:
        tasks = [asyncio.create_task(read()), asyncio.create_task(echo_marks())]
        await ws.send(json.dumps({"event": "connected", "version": "1.0.0"}))
        await ws.send(json.dumps(plan.start_frame()))
        t0 = time.monotonic()
        for tick, frame in frames:
            await asyncio.sleep(max(0.0, t0 + tick * 0.02 - time.monotonic()))
            await ws.send(json.dumps(frame))
        deadline = time.monotonic() + 30  # a lost echo fails the length check, not a hang
        while time.monotonic() < deadline:
            await reply(far.advance(time.monotonic()))  # what played between frames counts
            if len(far.marks_echoed) >= len(frames) and sum(map(len, far.heard)) >= samples:
                break
            await asyncio.sleep(0.02)
        await ws.send(json.dumps(plan.stop_frame(len(frames) + 2)))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    far.advance(time.monotonic())
    return far


@pytest.mark.parametrize(
    ("codec", "rate"), [("PCMU", 8000), ("PCMA", 8000), ("G722", 16000), ("L16", 16000)]
)
@pytest.mark.slow
async def test_echo_bot_caller_hears_their_own_audio(codec: str, rate: int):
    options = StreamOptions(playback=PlaybackConfig(mode="rtp", codec=codec, sample_rate=rate))
    async with MediaServer(EchoBot, port=0, options=options) as srv:
        plan = plan_call(synthesize_speechlike(2.0, rate), codec=codec, sample_rate=rate)
        far = FarEndConfig(codec=codec, sample_rate=rate)
        far_end = await call_until_echoed(ws_url(srv), plan, far)
    heard = far_end.heard_audio()
    expected = one_round(plan.expected_pcm(), codec, rate)
    assert len(heard) == len(expected) == 2 * rate
    np.testing.assert_array_equal(heard, expected)


@pytest.mark.slow
async def test_echo_bot_with_resampling_keeps_30db():
    """The call is 8 kHz PCMU; the bot answers in 16 kHz L16, so its soxr stream resamples."""
    options = StreamOptions(playback=PlaybackConfig(mode="rtp", codec="L16", sample_rate=16000))
    async with MediaServer(EchoBot, port=0, options=options) as srv:
        plan = plan_call(synthesize_speechlike(2.0, 8000), codec="PCMU")
        far = FarEndConfig(codec="L16", sample_rate=16000)
        reference = soxr.resample(plan.expected_pcm(), 8000, 16000, quality="HQ")
        # hang up once every frame's echo (one mark each) and the resampler's tail have
        # played, not after a fixed linger that a stalled server could outlast
        tail_heard = len(reference) - 64  # the least the length check below accepts
        far_end = await call_until_echoed(ws_url(srv), plan, far, samples=tail_heard)
    assert len(far_end.marks_echoed) == len(plan.media_frames())
    heard = far_end.heard_audio()
    assert abs(len(heard) - len(reference)) <= 64
    assert best_aligned_snr(reference, heard, 64) >= 30


class PlayOnStart(StreamHandler):
    """Plays what the test sets up in ``script`` and keeps every Playback for inspection."""

    script: ClassVar[object] = None
    playbacks: ClassVar[list[Playback]] = []
    results: ClassVar[list[tuple[int, bool, float]]] = []
    marks: ClassVar[list[str]] = []
    errors: ClassVar[list[BaseException]] = []

    async def on_start(self) -> None:
        self.watchers: list[asyncio.Task[None]] = []
        self.task = asyncio.create_task(type(self).script(self))  # type: ignore[misc]

    async def on_mark(self, name: str) -> None:
        type(self).marks.append(name)

    async def on_dtmf(self, digit: str) -> None:
        await self.call.clear()
        beep = await self.call.play(np.full(1600, 3000, dtype=np.int16), 8000)
        await self.call.mark("after-clear")
        PlayOnStart.playbacks.append(beep)

    async def watch(self, index: int, playback: Playback) -> None:
        played = await playback.finished()
        PlayOnStart.results.append((index, played, time.monotonic()))


@pytest.fixture(autouse=True)
def _reset_bot():
    PlayOnStart.playbacks, PlayOnStart.results, PlayOnStart.marks = [], [], []
    PlayOnStart.errors = []


@pytest.mark.slow
async def test_mp3_mode_plays_whole_files_never_faster_than_once_a_second():
    clip = synthesize_speechlike(2.0, 16000, seed=3)

    async def script(bot: PlayOnStart) -> None:
        for i in range(5):  # a burst
            playback = await bot.call.play(clip if i == 0 else clip[:4000], 16000)
            PlayOnStart.playbacks.append(playback)
            bot.watchers.append(asyncio.create_task(bot.watch(i, playback)))

    PlayOnStart.script = script
    options = StreamOptions(playback=PlaybackConfig(mode="mp3", sample_rate=16000))
    async with MediaServer(PlayOnStart, port=0, options=options) as srv:
        plan = plan_call(np.zeros(8000, np.int16), codec="PCMU")
        far = FarEndConfig(mode="mp3")
        result = await send_call(ws_url(srv), plan, realtime=True, linger=6.5, far_end=far)
    far_end = result.far_end
    assert far_end.errors_sent == 0
    gaps = np.diff(far_end.media_times)
    assert len(far_end.media_times) == 5 and gaps.min() >= 1.0, gaps
    assert [r[1] for r in sorted(PlayOnStart.results)] == [True] * 5
    heard = far_end.heard_audio()
    first = heard[: len(clip) + 3000]
    assert best_aligned_snr(clip, first, 3000) >= 20


@pytest.mark.slow
async def test_barge_in_cuts_the_prompt_and_reports_what_was_heard():
    prompt = synthesize_speechlike(10.0, 8000)

    async def script(bot: PlayOnStart) -> None:
        playback = await bot.call.play(prompt, 8000)
        PlayOnStart.playbacks.append(playback)
        await bot.watch(0, playback)

    PlayOnStart.script = script
    async with MediaServer(PlayOnStart, port=0, options=rtp()) as srv:
        plan = plan_call(np.zeros(8000 * 5, np.int16), codec="PCMU")
        result = await send_call(ws_url(srv), plan, realtime=True, linger=0.5,
                                 far_end=FarEndConfig(), dtmf=[(3.0, "1")])  # fmt: skip
    far_end = result.far_end
    heard_prompt_s = far_end.heard_at_clear[0] / 8000
    assert 2.7 <= heard_prompt_s <= 3.2
    prompt_playback, beep = PlayOnStart.playbacks
    assert PlayOnStart.results[0][1] is False and prompt_playback.interrupted
    assert abs(prompt_playback.heard_ms - heard_prompt_s * 1000) <= 100
    cut = far_end.heard_at_clear[0]
    np.testing.assert_array_equal(
        far_end.heard_audio()[:cut], one_round(prompt, "PCMU", 8000)[:cut]
    )
    # later plays and marks work normally
    assert await asyncio.wait_for(beep.finished(), 1) is True
    assert PlayOnStart.marks == ["after-clear"]
    assert len(far_end.heard_audio()) == far_end.heard_at_clear[0] + 1600


@pytest.mark.slow
async def test_marks_report_in_order_and_cleared_ones_report_false():
    clip = synthesize_speechlike(0.3, 8000)

    async def script(bot: PlayOnStart) -> None:
        for i in range(5):
            playback = await bot.call.play(clip, 8000)
            bot.watchers.append(asyncio.create_task(bot.watch(i, playback)))
        await asyncio.sleep(2.0)
        queued = [await bot.call.play(clip, 8000) for _ in range(3)]
        await asyncio.sleep(0.1)
        await bot.call.clear()  # the first is playing, the others are still queued
        PlayOnStart.playbacks.extend(queued)

    PlayOnStart.script = script
    async with MediaServer(PlayOnStart, port=0, options=rtp()) as srv:
        plan = plan_call(np.zeros(8000 * 3, np.int16), codec="PCMU")
        result = await send_call(
            ws_url(srv), plan, realtime=True, linger=0.3, far_end=FarEndConfig()
        )
    ordered = sorted(PlayOnStart.results, key=lambda r: r[2])
    assert [(i, played) for i, played, _ in ordered] == [(i, True) for i in range(5)]
    assert [await p.finished() for p in PlayOnStart.playbacks] == [False, False, False]
    assert 50 <= PlayOnStart.playbacks[0].heard_ms <= 150
    assert [p.heard_ms for p in PlayOnStart.playbacks[1:]] == [0.0, 0.0]
    assert PlayOnStart.marks == []  # our own marks never reach on_mark
    assert len(result.far_end.clears) == 1


@pytest.mark.slow
async def test_socket_that_stops_reading_fails_play_within_the_timeout(record_dir):
    config = PlaybackConfig(mode="rtp", codec="L16", sample_rate=16000, chunk_ms=1000,
                            lead_ms=600_000, send_timeout=1.0)  # fmt: skip
    long_audio = synthesize_speechlike(120.0, 16000)

    async def script(bot: PlayOnStart) -> None:
        if bot.call.stream_id != "stuck":
            return
        started = time.monotonic()
        playback = await bot.call.play(long_audio, 16000)
        try:
            await playback.finished()
        except PlaybackError as exc:
            PlayOnStart.errors.append(exc)
            PlayOnStart.results.append((0, False, time.monotonic() - started))

    PlayOnStart.script = script
    options = StreamOptions(record_dir=record_dir, playback=config)
    async with MediaServer(PlayOnStart, port=0, options=options) as srv:
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", srv.port))
        from websockets.asyncio.client import connect

        stuck = await connect(ws_url(srv), sock=raw, max_queue=1)
        stuck_plan = plan_call(np.zeros(160, np.int16), stream_id="stuck")
        await stuck.send(json.dumps(stuck_plan.start_frame()))
        healthy = plan_call(synthesize_speechlike(3.0, 8000), stream_id="healthy")
        result = await send_call(ws_url(srv), healthy, realtime=True)
        stuck.transport.abort()
    assert PlayOnStart.errors, "play did not fail"
    assert "did not take a frame within 1 s" in str(PlayOnStart.errors[0])
    assert PlayOnStart.results[0][2] < 3.0
    assert not result.closed_by_server
    import soundfile

    data, _ = soundfile.read(record_dir / "healthy.wav", dtype="int16")
    np.testing.assert_array_equal(data, healthy.expected_pcm())
