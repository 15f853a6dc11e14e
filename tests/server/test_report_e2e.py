"""The quality report from a real server: a call over a real WebSocket leaves its sidecar, whose
levels agree with an independent decoder (audioop) over the frames that were sent."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from mediastream import MediaServer
from mediastream.simulate import plan_call, send_call, synthesize_speechlike
from tests.conftest import ws_url

pytestmark = pytest.mark.both_transports

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop


async def test_a_real_call_leaves_a_report_beside_its_wav(server: MediaServer, record_dir: Path):
    voice = synthesize_speechlike(2.0, 8000)
    plan = plan_call(
        {"inbound": voice, "outbound": voice[::-1].copy()},
        codec="PCMA",
        tracks=("inbound", "outbound"),
        stream_id="over-the-wire",
        shuffle_window=3,
        drop={"inbound": {10, 11}, "outbound": {50}},
    )
    await send_call(ws_url(server), plan)
    await server.stop()
    report = json.loads((record_dir / "over-the-wire.json").read_text())
    assert report["recording"] == str(record_dir / "over-the-wire.wav")
    assert (report["codec"], report["sample_rate"], report["tracks"]) == (
        "PCMA",
        8000,
        ["inbound", "outbound"],
    )
    assert report["duration_seconds"] == 2.0
    assert report["frames"]["received"] == 200 - 3
    assert (report["frames"]["lost"], report["frames"]["duplicated"]) == (3, 0)
    assert report["gaps"] == [
        {"track": "inbound", "position_seconds": 0.18, "frames": 2},
        {"track": "outbound", "position_seconds": 0.98, "frames": 1},
    ]
    for track in ("inbound", "outbound"):
        sent = [
            np.frombuffer(audioop.alaw2lin(payload, 2), np.int16).astype(np.int64)
            for chunk, payload in enumerate(plan.payloads[track], start=1)
            if chunk not in plan.dropped[track]
        ]
        samples = np.concatenate(sent)
        level = report["levels"][track]
        mean_square = float(np.sum(samples * samples)) / len(samples)
        assert level["rms_dbfs"] == round(10 * math.log10(mean_square / 32768.0**2), 2)
        assert level["peak"] == int(np.abs(samples).max())
        assert level["clipped"] == 0
        silent = sum(1 for frame in sent if np.abs(frame).max() <= 8)
        assert level["digital_silence"] == round(silent / len(sent), 4)
