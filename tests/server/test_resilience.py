"""Reconnects, auth, limits, capture and replay against a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import soundfile
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from mediastream import AudioFrame, MediaServer, StreamHandler, StreamOptions
from mediastream.logs import redacting_logger
from mediastream.server.websocket import ServerLimits
from mediastream.simulate import CallPlan, plan_call, send_call, synthesize_speechlike
from tests.conftest import ws_url

pytestmark = pytest.mark.both_transports

VOICE = synthesize_speechlike(2.0, 8000)


CARRIER_LOG = redacting_logger("carrier")  # the test's own carrier keeps the token out of logs


async def send_frames(url: str, frames: list[str], *, stop: bool, headers=None) -> None:
    async with connect(url, additional_headers=headers, logger=CARRIER_LOG) as ws:
        for text in frames:
            await ws.send(text)
        if stop:
            await ws.wait_closed()


def media_texts(
    plan: CallPlan, first: int, last: int, *, restart_counters: bool = False
) -> list[str]:
    """The plan's media frames for chunks first..last; optionally renumbered from 1."""
    out = []
    for _, frame in plan.media_frames():
        chunk = int(frame["media"]["chunk"])
        if first <= chunk <= last:
            if restart_counters:
                n = chunk - first + 1
                frame = {**frame, "media": {**frame["media"], "chunk": str(n),
                                            "timestamp": str((n - 1) * 20)}}  # fmt: skip
            out.append(json.dumps(frame))
    return out


class CountingHandler(StreamHandler):
    instances: ClassVar[list[CountingHandler]] = []

    def __init__(self) -> None:
        self.reconnects = 0
        self.stops = 0
        self.audio_ms: list[float] = []
        CountingHandler.instances.append(self)

    async def on_audio(self, frame: AudioFrame) -> None:
        self.audio_ms.append(frame.timestamp_ms)

    async def on_reconnect(self) -> None:
        self.reconnects += 1

    async def on_stop(self) -> None:
        self.stops += 1


@pytest.mark.parametrize("restart_counters", [False, True])
async def test_call_split_across_two_sockets_is_one_recording(
    record_dir: Path, restart_counters: bool
):
    CountingHandler.instances = []
    plan = plan_call(VOICE, codec="PCMU", stream_id="split-call")
    start = [json.dumps({"event": "connected", "version": "1.0.0"}), json.dumps(plan.start_frame())]
    stop = json.dumps(plan.stop_frame(200))
    async with MediaServer(CountingHandler, port=0, options=StreamOptions(record_dir)) as srv:
        await send_frames(ws_url(srv), start + media_texts(plan, 1, 40), stop=False)
        await asyncio.sleep(0.2)  # the first socket is gone; the stream waits for a resume
        second = media_texts(plan, 41, 100, restart_counters=restart_counters)
        await send_frames(ws_url(srv), [*start, *second, stop], stop=True)
        await asyncio.sleep(0.1)
    data, _ = soundfile.read(record_dir / "split-call.wav", dtype="int16")
    np.testing.assert_array_equal(data, plan.expected_pcm())
    (handler,) = CountingHandler.instances
    assert (handler.reconnects, handler.stops) == (1, 1)
    assert handler.audio_ms == [i * 20.0 for i in range(100)]  # one continuous timeline
    assert sorted(p.name for p in record_dir.glob("*.wav")) == ["split-call.wav"]


async def test_resume_after_grace_period_is_a_new_session_in_a_new_file(record_dir: Path):
    CountingHandler.instances = []
    plan = plan_call(VOICE, codec="PCMA", stream_id="late-resume")
    start = [json.dumps(plan.start_frame())]
    options = StreamOptions(record_dir, resume_grace_seconds=0.3)
    async with MediaServer(CountingHandler, port=0, options=options) as srv:
        await send_frames(ws_url(srv), start + media_texts(plan, 1, 30), stop=False)
        await asyncio.sleep(0.8)
        assert CountingHandler.instances[0].stops == 1  # the grace period ran out
        second = media_texts(plan, 31, 60, restart_counters=True)
        await send_frames(
            ws_url(srv), [*start, *second, json.dumps(plan.stop_frame(99))], stop=True
        )
    assert len(CountingHandler.instances) == 2
    first, _ = soundfile.read(record_dir / "late-resume.wav", dtype="int16")
    again, _ = soundfile.read(record_dir / "late-resume~2.wav", dtype="int16")
    expected = plan.expected_pcm()
    np.testing.assert_array_equal(first, expected[: 30 * 160])
    np.testing.assert_array_equal(again, expected[30 * 160 : 60 * 160])


TOKEN = "s3cr3t-Token-Value-0123456789"


async def test_auth_token_required_and_never_logged(
    record_dir: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    options = StreamOptions(record_dir)
    async with MediaServer(port=0, options=options, auth_token=TOKEN) as srv:
        url = ws_url(srv)
        # wrong header: refused at the handshake
        with pytest.raises(InvalidStatus) as refused:
            await send_call(url, plan_call(VOICE[:800], stream_id="bad-header"),
                            headers={"x-telnyx-streaming-auth-token": "wrong"})  # fmt: skip
        assert refused.value.response.status_code == 401
        # no header and no token in connected: closed with 1008 after connected
        async with connect(url, logger=CARRIER_LOG) as ws:
            await ws.send(json.dumps({"event": "connected", "version": "1.0.0"}))
            await ws.send(json.dumps(plan_call(VOICE[:800], stream_id="no-token").start_frame()))
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd.code == 1008
        assert closed.value.rcvd.reason == "streaming auth token required"
        # the right header: recorded
        good = plan_call(VOICE[:800], stream_id="good-header")
        await send_call(url, good, headers={"x-telnyx-streaming-auth-token": TOKEN})
        # the token in the connected frame: recorded
        in_frame = plan_call(VOICE[:800], stream_id="good-frame")
        connected = {"event": "connected", "version": "1.0.0",
                     "connected": {"x-telnyx-streaming-auth-token": TOKEN}}  # fmt: skip
        frames = [json.dumps(connected), json.dumps(in_frame.start_frame())]
        frames += [json.dumps(f) for _, f in in_frame.media_frames()]
        frames.append(json.dumps(in_frame.stop_frame(50)))
        await send_frames(url, frames, stop=True)
    assert sorted(p.name for p in record_dir.glob("*.wav")) == ["good-frame.wav", "good-header.wav"]
    np.testing.assert_array_equal(
        soundfile.read(record_dir / "good-frame.wav", dtype="int16")[0], in_frame.expected_pcm()
    )
    everything_logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "x-telnyx-streaming-auth-token" in everything_logged.lower()  # headers were logged
    assert TOKEN not in everything_logged
    assert TOKEN not in caplog.text


@pytest.mark.slow
async def test_limits_cut_off_bad_clients_and_spare_the_others(record_dir: Path):
    limits = ServerLimits(max_frame_bytes=64 * 1024, handshake_seconds=0.5, idle_seconds=0.6,
                          max_streams=3)  # fmt: skip
    async with MediaServer(port=0, options=StreamOptions(record_dir), limits=limits) as srv:
        url = ws_url(srv)
        healthy = plan_call(synthesize_speechlike(3.0, 8000), stream_id="healthy")
        healthy_call = asyncio.create_task(send_call(url, healthy, realtime=True))

        # 1. oversized frame: closed with 1009 (message too big)
        async with connect(url, max_size=None) as ws:
            await ws.send(json.dumps(healthy.start_frame()).replace("healthy", "big"))
            await ws.send("x" * (100 * 1024))
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd.code == 1009

        # 2. a TCP client that never finishes the handshake is dropped
        t0 = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) is not None
        handshake_cut = time.monotonic() - t0
        writer.close()
        assert 0.4 < handshake_cut < 2.0

        # 3. a socket that goes silent is closed and its stream finalized
        silent = plan_call(VOICE[:800], stream_id="silent")
        t0 = time.monotonic()
        async with connect(url) as ws:
            await ws.send(json.dumps(silent.start_frame()))
            for _, f in silent.media_frames():
                await ws.send(json.dumps(f))
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd.code == 1001 and "idle" in closed.value.rcvd.reason
        assert 0.5 < time.monotonic() - t0 < 2.5

        # 4. at the stream limit the next socket is refused with its reason
        holders = [await connect(url) for _ in range(2)]  # + the healthy call = 3 streams
        for n, ws in enumerate(holders):  # a socket holds a slot once its stream started
            await ws.send(json.dumps(healthy.start_frame()).replace("healthy", f"holder-{n}"))
        while len(srv.registry) < 3:
            await asyncio.sleep(0.01)
        async with connect(url) as ws:  # a new stream past the limit: closed at its start
            await ws.send(json.dumps(healthy.start_frame()).replace("healthy", "one-more"))
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd.code == 1013 and "stream limit" in closed.value.rcvd.reason
        for ws in holders:
            await ws.close()

        result = await healthy_call
        assert not result.closed_by_server
    np.testing.assert_array_equal(
        soundfile.read(record_dir / "healthy.wav", dtype="int16")[0], healthy.expected_pcm()
    )
    np.testing.assert_array_equal(
        soundfile.read(record_dir / "silent.wav", dtype="int16")[0], silent.expected_pcm()
    )


@pytest.mark.slow
async def test_capture_then_replay_reproduces_the_recording(tmp_path: Path):
    from mediastream.replay import replay_files

    original_dir, replay_dir, capture_dir = tmp_path / "a", tmp_path / "b", tmp_path / "cap"
    plan = plan_call(VOICE, codec="PCMU", stream_id="captured", shuffle_window=5, seed=3,
                     drop={"inbound": {9, 10, 55}})  # fmt: skip
    options = StreamOptions(original_dir, capture_dir=capture_dir)
    async with MediaServer(port=0, options=options) as srv:
        await send_call(ws_url(srv), plan, realtime=True)
    captures = sorted(capture_dir.iterdir())
    assert [p.name for p in captures] == ["captured.1.jsonl"]
    lines = captures[0].read_text().splitlines()
    assert len(lines) == 2 + plan_media_count(plan) + 1
    assert json.loads(lines[-1])["t"] > 1.5  # receive times kept (the call took 2 s)

    async with MediaServer(port=0, options=StreamOptions(replay_dir)) as srv:
        t0 = time.monotonic()
        [(_, sent, _code)] = await replay_files(captures, ws_url(srv))
        assert time.monotonic() - t0 > 1.5  # original timing
    assert sent == len(lines)
    a = (original_dir / "captured.wav").read_bytes()
    b = (replay_dir / "captured.wav").read_bytes()
    assert a == b
    np.testing.assert_array_equal(
        soundfile.read(replay_dir / "captured.wav", dtype="int16")[0], plan.expected_pcm()
    )


def plan_media_count(plan: CallPlan) -> int:
    return len(plan.media_frames())


async def test_binary_frame_is_rejected_with_a_reason_and_the_stream_goes_on(
    server: MediaServer, record_dir: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING)
    plan = plan_call(VOICE[:1600], stream_id="binary")
    frames = [json.dumps(plan.start_frame())]
    media = [json.dumps(f) for _, f in plan.media_frames()]
    async with connect(ws_url(server)) as ws:
        for text in frames + media[:5]:
            await ws.send(text)
        await ws.send(b"\x00\x01raw audio")
        for text in [*media[5:], json.dumps(plan.stop_frame(20))]:
            await ws.send(text)
        await ws.wait_closed()
    await server.stop()
    np.testing.assert_array_equal(
        soundfile.read(record_dir / "binary.wav", dtype="int16")[0], plan.expected_pcm()
    )
    assert any("binary frame rejected" in r.getMessage() and "binary" in r.getMessage()
               for r in caplog.records)  # fmt: skip


async def test_unsupported_codec_ends_that_stream_naming_the_codec(server: MediaServer):
    plan = plan_call(VOICE[:800], stream_id="speex-call")
    start = plan.start_frame()
    start["start"]["media_format"]["encoding"] = "SPEEX"
    async with connect(ws_url(server)) as ws:
        await ws.send(json.dumps(start))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd.code == 1003 and "SPEEX" in closed.value.rcvd.reason
    ok = plan_call(VOICE[:800], stream_id="still-fine")
    result = await send_call(ws_url(server), ok)
    assert not result.closed_by_server


async def test_malformed_frames_logged_once_per_kind_with_a_sample(
    server: MediaServer, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO)
    plan = plan_call(VOICE[:1600], stream_id="noisy")
    frames = [json.dumps(plan.start_frame())]
    for _, frame in plan.media_frames():
        frames += [json.dumps(frame), '{"event": "media", "oops']
    async with connect(ws_url(server)) as ws:
        for text in [*frames, json.dumps(plan.stop_frame(99))]:
            await ws.send(text)
        await ws.wait_closed()
    await server.stop()
    malformed = [r.getMessage() for r in caplog.records if "malformed_json" in r.getMessage()]
    assert len(malformed) == 2  # the first, with a sample; then one summary with the count
    assert 'frame began \'{"event": "media", "oops\'' in malformed[0]
    assert "'malformed_json': 10" in malformed[1]


async def test_capture_never_holds_the_auth_token(tmp_path: Path):
    capture_dir = tmp_path / "cap"
    options = StreamOptions(capture_dir=capture_dir)
    async with MediaServer(port=0, options=options, auth_token=TOKEN) as srv:
        plan = plan_call(VOICE[:800], stream_id="secret-call")
        connected = {"event": "connected", "connected": {"x-telnyx-streaming-auth-token": TOKEN}}
        frames = [json.dumps(connected), json.dumps(plan.start_frame())]
        frames += [json.dumps(f) for _, f in plan.media_frames()]
        await send_frames(ws_url(srv), [*frames, json.dumps(plan.stop_frame(9))], stop=True)
    (capture,) = capture_dir.iterdir()
    text = capture.read_text()
    assert TOKEN not in text and "<redacted>" in text
    assert text.count("\n") == len(frames) + 1
