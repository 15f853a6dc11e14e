"""A real server on 127.0.0.1 and real WebSocket clients: recordings are sample-exact."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import soundfile
from websockets.asyncio.client import connect

from mediastream import AudioFrame, MediaServer, StreamHandler, StreamOptions
from mediastream.simulate import CallPlan, plan_call, send_call, synthesize_speechlike
from tests.conftest import ws_url

pytestmark = pytest.mark.both_transports

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

EXPAND = {"PCMU": audioop.ulaw2lin, "PCMA": audioop.alaw2lin}
VOICE = synthesize_speechlike(2.0, 8000)
OTHER_VOICE = synthesize_speechlike(2.0, 8000, seed=99)[::-1].copy()


def independent_decode(plan: CallPlan, track: str = "inbound") -> np.ndarray:
    """What the recording must hold, decoded by audioop (not by our codec); lost -> silence."""
    expand = EXPAND[plan.codec]
    dropped = plan.dropped.get(track, set())
    pieces = [
        np.zeros(len(p), np.int16) if n in dropped else np.frombuffer(expand(p, 2), dtype=np.int16)
        for n, p in enumerate(plan.payloads[track], start=1)
    ]
    return np.concatenate(pieces)


def read_wav(record_dir: Path, stream_id: str) -> tuple[np.ndarray, int]:
    return soundfile.read(record_dir / f"{stream_id}.wav", dtype="int16")


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
async def test_call_is_recorded_sample_exact(server: MediaServer, record_dir: Path, codec: str):
    plan = plan_call(VOICE, codec=codec, stream_id=f"exact-{codec}")
    result = await send_call(ws_url(server), plan)
    assert result.media_sent == 100 and not result.closed_by_server
    await server.stop()
    data, rate = read_wav(record_dir, plan.stream_id)
    assert rate == 8000 and data.ndim == 1
    np.testing.assert_array_equal(data, independent_decode(plan))


async def test_shuffled_call_gives_the_identical_wav(server: MediaServer, record_dir: Path):
    in_order = plan_call(VOICE, codec="PCMU", stream_id="ordered")
    shuffled = plan_call(VOICE, codec="PCMU", stream_id="shuffled", shuffle_window=6, seed=5)
    sent = [int(f["media"]["chunk"]) for _, f in shuffled.media_frames()]
    assert sent != sorted(sent)  # the test really reorders
    await send_call(ws_url(server), in_order)
    await send_call(ws_url(server), shuffled)
    await server.stop()
    a = (record_dir / "ordered.wav").read_bytes()
    b = (record_dir / "shuffled.wav").read_bytes()
    assert a == b
    np.testing.assert_array_equal(read_wav(record_dir, "shuffled")[0], independent_decode(in_order))


async def test_dropped_frames_become_silence_of_their_length(server: MediaServer, record_dir: Path):
    drop = {"inbound": {2, 3, 40, 77}}
    plan = plan_call(VOICE, codec="PCMA", stream_id="lossy", drop=drop, shuffle_window=3)
    await send_call(ws_url(server), plan)
    await server.stop()
    data, _ = read_wav(record_dir, "lossy")
    expected = independent_decode(plan)
    assert len(data) == len(expected) == 100 * 160
    np.testing.assert_array_equal(data, expected)
    for chunk in drop["inbound"]:
        assert not data[(chunk - 1) * 160 : chunk * 160].any()


async def test_both_tracks_give_two_aligned_channels(server: MediaServer, record_dir: Path):
    plan = plan_call(
        {"inbound": VOICE, "outbound": OTHER_VOICE},
        codec="PCMU",
        tracks=("inbound", "outbound"),
        stream_id="stereo",
        shuffle_window=4,
    )
    await send_call(ws_url(server), plan)
    await server.stop()
    data, _ = read_wav(record_dir, "stereo")
    assert data.shape == (16000, 2)
    np.testing.assert_array_equal(data[:, 0], independent_decode(plan, "inbound"))
    np.testing.assert_array_equal(data[:, 1], independent_decode(plan, "outbound"))


class CrashAtChunk25(StreamHandler):
    async def on_audio(self, frame: AudioFrame) -> None:
        if self.call.stream_id.startswith("crash") and frame.chunk == 25:
            raise RuntimeError("handler bug")


@pytest.mark.slow
async def test_abrupt_close_and_crashing_handler_keep_their_audio_and_spare_others(
    record_dir: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO)
    options = StreamOptions(record_dir=record_dir)
    async with MediaServer(CrashAtChunk25, port=0, options=options) as srv:
        healthy = plan_call(VOICE, codec="PCMU", stream_id="healthy")
        no_stop = plan_call(OTHER_VOICE, codec="PCMA", stream_id="nostop", send_stop=False)
        crash = plan_call(VOICE, codec="PCMU", stream_id="crash-1")
        results = await asyncio.gather(
            send_call(ws_url(srv), healthy, realtime=True),
            send_call(ws_url(srv), no_stop, realtime=True),
            send_call(ws_url(srv), crash, realtime=True),
        )
        assert results[2].closed_by_server and results[2].close_code == 1011
        assert not results[0].closed_by_server
        await asyncio.sleep(0.1)
        assert srv.connections == set()
    np.testing.assert_array_equal(read_wav(record_dir, "healthy")[0], independent_decode(healthy))
    np.testing.assert_array_equal(read_wav(record_dir, "nostop")[0], independent_decode(no_stop))
    crashed, _ = read_wav(record_dir, "crash-1")
    np.testing.assert_array_equal(crashed, independent_decode(crash)[: 25 * 160])
    crash_logs = [r for r in caplog.records if "handler bug" in (r.exc_text or "")]
    assert crash_logs and "crash-1" in crash_logs[0].getMessage()


@pytest.mark.parametrize(
    ("stream_id", "file_name"),
    [  # reduced, plus the first 12 hex digits of SHA-256 of the id (README, Recordings)
        ("../../outside", ".._.._outside=e28b700f2449.wav"),
        ("a/b/c", "a_b_c=d76a7b72669c.wav"),
        ("with space", "with_space=b8b8f25a5fc7.wav"),
    ],
)
async def test_hostile_stream_ids_record_inside_the_dir(
    server: MediaServer, record_dir: Path, stream_id: str, file_name: str
):
    before = set(record_dir.parent.parent.rglob("*"))
    plan = plan_call(VOICE[:1600], codec="PCMU", stream_id=stream_id)
    await send_call(ws_url(server), plan)
    await server.stop()
    created = set(record_dir.parent.parent.rglob("*")) - before
    sidecar = (record_dir / file_name).with_suffix(".json")  # the stream's quality report
    piece = (record_dir / file_name).with_suffix(".piece.json")  # what a merge needs
    assert created == {record_dir / file_name, sidecar, piece}
    np.testing.assert_array_equal(read_wav(record_dir, file_name[:-4])[0], independent_decode(plan))


def _media(chunk: int, payload: bytes | str, stream_id: str = "messy") -> str:
    text = payload if isinstance(payload, str) else base64.b64encode(payload).decode()
    media = {"track": "inbound", "chunk": str(chunk), "timestamp": str((chunk - 1) * 20)}
    return json.dumps(
        {"event": "media", "stream_id": stream_id, "media": {**media, "payload": text}}
    )


async def test_bad_input_is_logged_with_stream_id_and_audio_kept(
    server: MediaServer, record_dir: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING)
    plan = plan_call(VOICE[:1600], codec="PCMU", stream_id="messy")  # 10 frames
    p = plan.payloads["inbound"]
    frames = [
        '{"event":"connected","version":"1.0.0"}',
        _media(1, p[0]),  # media before start: held, decoded after start
        json.dumps(plan.start_frame()),
        _media(2, p[1]),
        '{"event": "media", "stream_id": "messy", "media": {"payload": "AAA',  # malformed JSON
        _media(3, p[2]),
        _media(4, "not*base64!"),  # invalid base64: chunk 4 becomes silence
        '{"event":"hologram","stream_id":"messy"}',  # unknown event
        *[_media(n, p[n - 1]) for n in range(5, 11)],
        '{"event":"stop","stream_id":"messy"}',
    ]
    async with connect(ws_url(server)) as ws:
        for text in frames:
            await ws.send(text)
        await ws.wait_closed()
    # the server is still serving: another call goes through
    healthy = plan_call(VOICE[:800], codec="PCMU", stream_id="after")
    await send_call(ws_url(server), healthy)
    await server.stop()
    plan.dropped = {"inbound": {4}}
    np.testing.assert_array_equal(read_wav(record_dir, "messy")[0], independent_decode(plan))
    np.testing.assert_array_equal(read_wav(record_dir, "after")[0], independent_decode(healthy))
    messages = [r.getMessage() for r in caplog.records if r.name == "mediastream.runtime.registry"]
    for kind in ("media_before_start", "malformed_json", "invalid_base64", "unknown_event"):
        hits = [m for m in messages if kind in m]
        assert hits, f"{kind} not logged"
        assert all("stream messy" in m for m in hits), hits


class Recorder(StreamHandler):
    """Collects everything a handler sees, per instance."""

    instances: ClassVar[list[Recorder]] = []

    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []
        Recorder.instances.append(self)

    async def on_start(self) -> None:
        self.seen.append(("start", dict(self.call.custom_parameters)))

    async def on_audio(self, frame: AudioFrame) -> None:
        self.seen.append(("audio", (frame.timestamp_ms, frame.sample_rate, frame.track)))

    async def on_dtmf(self, digit: str) -> None:
        self.seen.append(("dtmf", digit))

    async def on_mark(self, name: str) -> None:
        self.seen.append(("mark", name))

    async def on_stop(self) -> None:
        self.seen.append(("stop", None))


async def test_handler_api_one_instance_per_stream_events_in_order():
    Recorder.instances = []
    async with MediaServer(Recorder, port=0) as srv:
        plan = plan_call(VOICE[:800], codec="PCMU", custom_parameters={"customer": "42"})
        async with connect(ws_url(srv)) as ws:
            await ws.send(json.dumps(plan.start_frame()))
            for _, frame in plan.media_frames():
                await ws.send(json.dumps(frame))
            await ws.send('{"event":"dtmf","dtmf":{"digit":"5"}}')
            await ws.send('{"event":"mark","mark":{"name":"greeting"}}')
            await ws.send(json.dumps(plan.stop_frame(99)))
            await ws.wait_closed()
        await send_call(ws_url(srv), plan_call(VOICE[:160], codec="PCMA"))
    assert len(Recorder.instances) == 2
    seen = Recorder.instances[0].seen
    assert seen[0] == ("start", {"customer": "42"})
    audio = [v for k, v in seen if k == "audio"]
    assert audio == [(i * 20.0, 8000, "inbound") for i in range(5)]
    assert seen[-3:] == [("dtmf", "5"), ("mark", "greeting"), ("stop", None)]


async def test_healthz_on_the_same_port(server: MediaServer):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await writer.drain()
    response = (await reader.read(4096)).decode()
    writer.close()
    head, _, body = response.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200")
    instance = server.config.instance_id
    assert json.loads(body) == {"status": "ok", "streams": 0, "instance": instance}


async def test_many_concurrent_calls_all_exact(server: MediaServer, record_dir: Path):
    plans = [
        plan_call(VOICE, codec="PCMU" if i % 2 else "PCMA", stream_id=f"many-{i}", seed=i,
                  shuffle_window=3)
        for i in range(20)
    ]  # fmt: skip
    await asyncio.gather(*(send_call(ws_url(server), p) for p in plans))
    await server.stop()
    for plan in plans:
        np.testing.assert_array_equal(
            read_wav(record_dir, plan.stream_id)[0], independent_decode(plan)
        )
