"""The server as a process: SIGKILL loses at most the last second, SIGTERM loses nothing."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from mediastream.media.recording import recover_wav
from mediastream.simulate import FRAME_MS, CallPlan, plan_call, synthesize_speechlike
from tests.processes import healthz, start_server

VOICE = synthesize_speechlike(8.0, 8000)


async def send_until(url: str, plan: CallPlan, action_at_frame: int, action) -> list[float]:
    """Send the plan in real time; call ``action()`` after ``action_at_frame`` frames.

    Returns the send time of every frame that was sent. Stops when the socket dies.
    """
    times: list[float] = []
    try:
        async with connect(url) as ws:
            await ws.send(json.dumps({"event": "connected", "version": "1.0.0"}))
            await ws.send(json.dumps(plan.start_frame()))
            t0 = time.monotonic()
            for tick, frame in plan.media_frames():
                delay = t0 + tick * FRAME_MS / 1000 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await ws.send(json.dumps(frame))
                times.append(time.monotonic())
                if len(times) == action_at_frame:
                    action()
    except (ConnectionClosed, OSError):
        pass
    return times


@pytest.mark.slow
async def test_sigkill_mid_call_keeps_all_but_the_last_second(tmp_path: Path):
    record_dir = tmp_path / "rec"
    proc, port = start_server("--record-dir", str(record_dir))
    plan = plan_call(VOICE, codec="PCMU", stream_id="killed-call")
    killed_at: list[float] = []

    def kill() -> None:
        proc.send_signal(signal.SIGKILL)
        killed_at.append(time.monotonic())

    try:
        times = await send_until(f"ws://127.0.0.1:{port}/", plan, 175, kill)  # 3.5 s in
    finally:
        proc.kill()
        proc.wait(10)
    assert killed_at, "the kill did not happen"
    must_have = sum(1 for t in times if t <= killed_at[0] - 1.0)
    assert must_have >= 120

    # the recovery step is part of the next start: start and stop the server again
    again, _ = start_server("--record-dir", str(record_dir))
    again.send_signal(signal.SIGTERM)
    assert again.wait(30) == 0
    assert recover_wav(record_dir / "killed-call.wav") is False  # the restart repaired it

    data, rate = soundfile.read(record_dir / "killed-call.wav", dtype="int16")
    expected = plan.expected_pcm()
    assert rate == 8000
    print(f"frames sent {len(times)}, needed {must_have}, on disk {len(data) / 160}")
    assert len(data) >= must_have * 160, (len(data), must_have * 160)
    np.testing.assert_array_equal(data, expected[: len(data)])


@pytest.mark.slow
async def test_sigterm_mid_call_finalizes_the_recording(tmp_path: Path):
    record_dir = tmp_path / "rec"
    proc, port = start_server("--record-dir", str(record_dir))
    plan = plan_call(VOICE, codec="PCMA", stream_id="terminated-call")
    signalled: list[float] = []

    def terminate() -> None:
        proc.send_signal(signal.SIGTERM)
        signalled.append(time.monotonic())

    try:
        times = await send_until(f"ws://127.0.0.1:{port}/", plan, 100, terminate)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    path = record_dir / "terminated-call.wav"
    assert recover_wav(path) is False  # finalized by the server itself: nothing to repair
    data, _ = soundfile.read(path, dtype="int16")
    sent_before_signal = sum(1 for t in times if t <= signalled[0])
    assert len(data) >= sent_before_signal * 160
    assert len(data) <= len(times) * 160
    np.testing.assert_array_equal(data, plan.expected_pcm()[: len(data)])


@pytest.mark.slow
async def test_sigterm_drains_twenty_live_calls(tmp_path: Path):
    from mediastream.simulate import send_call

    record_dir = tmp_path / "rec"
    proc, port = start_server("--record-dir", str(record_dir), "--drain-seconds", "20")
    voice = synthesize_speechlike(3.0, 8000)
    plans = [plan_call(voice, codec="PCMU", stream_id=f"drain-{i}", seed=i) for i in range(20)]
    try:
        status, body = await healthz(port)
        assert (status, body["status"], body["streams"]) == (200, "ok", 0)
        calls = [
            asyncio.create_task(send_call(f"ws://127.0.0.1:{port}/", p, realtime=True))
            for p in plans
        ]
        await asyncio.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        status, body = await healthz(port)
        assert (status, body["status"]) == (503, "draining") and body["streams"] == 20
        results = await asyncio.gather(*calls)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    assert not any(r.closed_by_server for r in results)
    for plan in plans:
        data, _ = soundfile.read(record_dir / f"{plan.stream_id}.wav", dtype="int16")
        np.testing.assert_array_equal(data, plan.expected_pcm())
