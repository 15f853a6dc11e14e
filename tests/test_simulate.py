"""The simulator's reconnect (``send_call(..., reconnect_after=S)``, ``simulate
--reconnect-after S``): the socket is dropped mid-call without ``stop`` and the call goes on on
a new one, same stream id, counters continued, so the server resumes it and records it exactly."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile

from mediastream import MediaServer
from mediastream.simulate import _reconnect_index, plan_call, send_call, synthesize_speechlike
from tests.conftest import ws_url
from tests.processes import mediastream, start_server

VOICE = synthesize_speechlike(2.0, 8000)
OTHER = synthesize_speechlike(2.0, 8000, seed=3)


def test_the_cut_is_the_first_media_frame_at_or_after_the_time() -> None:
    schedule = [(0, {}), (0, {}), (1, {}), (1, {}), (2, {}), (3, None)]
    assert _reconnect_index(schedule, 0.02) == 2  # tick 1 = 20 ms
    assert _reconnect_index(schedule, 0.021) == 4
    assert _reconnect_index(schedule, 0.0) == 0
    assert _reconnect_index(schedule, 0.06) is None  # only a turn without a frame is left
    assert _reconnect_index(schedule, None) is None


async def test_a_reconnect_mid_call_resumes_the_stream_and_the_recording_is_exact(
    server: MediaServer, record_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mediastream")
    plan = plan_call({"inbound": VOICE, "outbound": OTHER}, tracks=("inbound", "outbound"),
                     stream_id="hop")  # fmt: skip
    result = await send_call(ws_url(server), plan, reconnect_after=0.7)
    assert (result.reconnects, result.closed_by_server, result.media_sent) == (1, False, 200)
    await server.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert "stream hop: resumed on a new socket" in messages
    assert [m for m in messages if m.startswith("stream hop: started from")] != []
    data, rate = soundfile.read(record_dir / "hop.wav", dtype="int16")
    assert rate == 8000
    np.testing.assert_array_equal(data[:, 0], plan.expected_pcm("inbound"))
    np.testing.assert_array_equal(data[:, 1], plan.expected_pcm("outbound"))
    assert sorted(p.name for p in record_dir.glob("*.wav")) == ["hop.wav"]


@pytest.mark.slow
def test_simulate_reconnect_after_on_the_command_line(tmp_path: Path) -> None:
    record_dir = tmp_path / "rec"
    proc, port = start_server("--record-dir", str(record_dir))
    try:
        done = mediastream("simulate", f"ws://127.0.0.1:{port}/stream", "--stream-id", "cli-hop",
                           "--reconnect-after", "1.5")  # fmt: skip
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout
        == "cli-hop: 150 media frames sent, 0 dropped on purpose, reconnected 1 time(s)\n"
    )
    assert "stream cli-hop: resumed on a new socket" in output
    expected = plan_call(synthesize_speechlike(3.0, 8000), stream_id="cli-hop").expected_pcm()
    data, _ = soundfile.read(record_dir / "cli-hop.wav", dtype="int16")
    np.testing.assert_array_equal(data, expected)
