"""Wideband and optional codecs through the real server into WAV files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from mediastream import MediaServer
from mediastream.simulate import CallPlan, plan_call, send_call, synthesize_speechlike
from tests.conftest import ws_url

pytestmark = pytest.mark.both_transports


async def test_g722_call_is_recorded_sample_exact_at_16k(server: MediaServer, record_dir: Path):
    import G722  # an independent decoder (libg722)

    plan = plan_call(synthesize_speechlike(2.0, 16000), codec="G722", stream_id="wideband",
                     shuffle_window=4, drop={"inbound": {30}})  # fmt: skip
    assert plan.sample_rate == 16000 and len(plan.payloads["inbound"][0]) == 160
    await send_call(ws_url(server), plan)
    await server.stop()
    data, rate = soundfile.read(record_dir / "wideband.wav", dtype="int16")
    assert rate == 16000
    reference = G722.G722(16000, 64000)
    pieces = []
    for chunk, payload in enumerate(plan.payloads["inbound"], start=1):
        if chunk == 30:  # lost: the receiver's decoder never sees it
            pieces.append(np.zeros(320, dtype=np.int16))
        else:
            pieces.append(np.asarray(reference.decode(payload), dtype=np.int16))
    np.testing.assert_array_equal(data, np.concatenate(pieces))


async def test_opus_call_records_within_20db_of_ffmpeg(server: MediaServer, record_dir: Path):
    pytest.importorskip("av")
    from tests.codecs.test_ffmpeg import (
        ffmpeg_decode_48k,
        ffmpeg_opus_packets,
        speech_like,
        swr_whole,
    )

    pcm = speech_like(16000)
    packets = ffmpeg_opus_packets(pcm, 16000)
    plan = CallPlan("opus-call", "OPUS", 16000, {"inbound": packets})
    await send_call(ws_url(server), plan)
    await server.stop()
    data, rate = soundfile.read(record_dir / "opus-call.wav", dtype="int16")
    reference = swr_whole(ffmpeg_decode_48k(packets, "libopus"), 16000)
    assert rate == 16000 and abs(len(data) - len(reference)) <= 320
    n = min(len(data), len(reference))
    # FFmpeg's one-shot resampler and our streaming one differ by 16 samples of delay
    best = max(
        10 * np.log10(np.sum(reference[: n - 32].astype(float) ** 2)
                      / max(1.0, np.sum((reference[: n - 32].astype(float)
                                         - data[lag : lag + n - 32].astype(float)) ** 2)))
        for lag in range(32)
    )  # fmt: skip
    assert best >= 20.0, best
