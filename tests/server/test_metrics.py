"""``GET /metrics``: real servers, real WebSocket calls, real HTTP scrapes, exact values."""

from __future__ import annotations

import asyncio
import inspect
import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from mediastream import AudioFrame, MediaServer, StreamHandler
from mediastream.media.playback import PlaybackConfig
from mediastream.runtime.observer import Observer, SocketMeter
from mediastream.server.asgi import MediaApp
from mediastream.server.metrics import LAG_BUCKETS, ServerMetrics, StreamMeter, mark_worker_dead
from mediastream.session import Session
from mediastream.simulate import CallPlan, plan_call, send_call, synthesize_speechlike
from tests.conftest import ws_url
from tests.processes import start_server
from tests.server.test_asgi import host_app, uvicorn_serving

pytestmark = pytest.mark.both_transports

VOICE = synthesize_speechlike(2.0, 8000)  # 100 frames of PCMU
WIDE = synthesize_speechlike(0.2, 16000)  # 10 frames of L16 at 16 kHz

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(port: int) -> Samples:
    """``GET /metrics`` over HTTP, parsed by prometheus_client's own parser."""
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((f"mediastream_{name}", frozenset(labels.items())))


def labelled(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == f"mediastream_{name}"}


async def scrape_until(
    port: int, ready: Callable[[Samples], bool], timeout: float = 10.0
) -> Samples:
    """Scrape until ``ready`` (the server finishes a socket a moment after the client)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = await scrape(port)
        if ready(samples) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.05)


def idle(samples: Samples) -> bool:
    return value(samples, "active_connections") == 0 and value(samples, "active_streams") == 0


@dataclass
class ScriptedPlan(CallPlan):
    """One track, sent in exactly ``order`` (chunk numbers); ``bad_base64`` chunks garbled."""

    order: list[int] = field(default_factory=list)
    bad_base64: set[int] = field(default_factory=set)

    def media_frames(self) -> list[tuple[int, dict[str, object]]]:
        by_chunk = {int(f["media"]["chunk"]): (t, f) for t, f in super().media_frames()}  # type: ignore[index]
        out = []
        for chunk in self.order:
            tick, frame = by_chunk[chunk]
            if chunk in self.bad_base64:
                frame = {**frame, "media": {**frame["media"], "payload": "not*base64!"}}  # type: ignore[dict-item]
            out.append((tick, frame))
        return out


def messy_pcmu_call() -> ScriptedPlan:
    """100 PCMU frames: 3 lost, 1 garbled, 3 reordered, 1 late (after its slot was given up).

    With the reorder depth of 8: chunk 20 arrives after 21 (1 reordered), 50 and 51 after 52
    (2 reordered); 10, 30, 31 never come and 70 is not base64, so those slots are given up;
    85 comes after 95, when its slot was given up already: dropped, then late.
    """
    plan = plan_call(VOICE, codec="PCMU", stream_id="messy-pcmu", drop={"inbound": {10, 30, 31}})
    order = [n for n in range(1, 101) if n not in (10, 30, 31, 85)]
    order[order.index(20) : order.index(21) + 1] = [21, 20]
    order[order.index(50) : order.index(52) + 1] = [52, 50, 51]
    order.insert(order.index(95) + 1, 85)
    return ScriptedPlan(**vars(plan), order=order, bad_base64={70})


async def test_metrics_count_exactly_what_was_sent(server: MediaServer):
    pcmu = messy_pcmu_call()
    l16 = plan_call(WIDE, codec="L16", stream_id="odd-l16")
    l16.payloads["inbound"][4] = l16.payloads["inbound"][4][:-1]  # odd length: undecodable
    first = await send_call(ws_url(server), pcmu)
    second = await send_call(ws_url(server), l16)
    assert first.media_sent == 97 and second.media_sent == 10
    assert not first.closed_by_server and not second.closed_by_server

    samples = await scrape_until(server.port, idle)
    assert value(samples, "active_streams") == 0
    assert value(samples, "active_connections") == 0
    assert value(samples, "playback_queued_seconds") == 0
    expected = {  # metric: (PCMU, L16)
        "frames_received_total": (97, 10),
        "bytes_received_total": (96 * 160, 9 * 640 + 639),
        "frames_dropped_total": (5, 0),
        "frames_reordered_total": (3, 0),
        "frames_late_total": (1, 0),
    }
    for name, (for_pcmu, for_l16) in expected.items():
        assert labelled(samples, name) == {
            frozenset({("codec", "PCMU")}): for_pcmu,
            frozenset({("codec", "L16")}): for_l16,
        }, name
    assert labelled(samples, "decode_errors_total") == {
        frozenset({("codec", "PCMU"), ("kind", "invalid_base64")}): 1,
        frozenset({("codec", "L16"), ("kind", "decode_error")}): 1,
    }
    assert labelled(samples, "input_errors_total") == {
        frozenset({("kind", "invalid_base64")}): 1,
        frozenset({("kind", "decode_error")}): 1,
    }
    assert value(samples, "handler_errors_total") == 0
    # every frame handed to the handler, silence standing in for lost ones included: 100 + 10
    assert value(samples, "handler_lag_seconds_count") == 110
    buckets = [value(samples, "handler_lag_seconds_bucket", le=str(b)) for b in LAG_BUCKETS]
    assert value(samples, "handler_lag_seconds_bucket", le="+Inf") == 110
    assert buckets == sorted(buckets)  # cumulative
    assert 0 <= value(samples, "handler_lag_seconds_sum") < 110 * 5.0
    # the server's own registry: process metrics too
    assert samples[("process_cpu_seconds_total", frozenset())] > 0

    # a second scrape changes nothing: every count was pushed exactly once
    assert labelled(await scrape(server.port), "frames_received_total") == labelled(
        samples, "frames_received_total"
    )


class CrashAt25(StreamHandler):
    async def on_audio(self, frame: AudioFrame) -> None:
        if frame.chunk == 25:
            raise RuntimeError("handler bug")


async def test_handler_errors_and_lag_of_frames_the_handler_finished():
    async with MediaServer(CrashAt25, port=0) as srv:
        await send_call(ws_url(srv), plan_call(VOICE, codec="PCMA", stream_id="crash"))
        samples = await scrape_until(srv.port, idle)
    assert value(samples, "handler_errors_total") == 1
    assert value(samples, "handler_lag_seconds_count") == 24  # chunks 1-24; 25 raised
    assert value(samples, "active_streams") == 0


async def test_counts_are_pushed_every_second_without_a_scrape():
    async with MediaServer(StreamHandler, port=0) as srv:
        assert srv.metrics is not None and srv.metrics.registry is not None
        plan = plan_call(VOICE[:1600], codec="PCMU", stream_id="live")  # 10 frames
        async with connect(ws_url(srv)) as ws:
            await ws.send(json.dumps(plan.start_frame()))
            for _, frame in plan.media_frames():
                await ws.send(json.dumps(frame))
            registry = srv.metrics.registry  # read directly: no scrape, so no push on demand
            frames = {"codec": "PCMU"}
            deadline = time.monotonic() + 5
            while registry.get_sample_value("mediastream_frames_received_total", frames) != 10:
                assert time.monotonic() < deadline, "no batch pushed within 5 s"
                await asyncio.sleep(0.05)
            assert registry.get_sample_value("mediastream_frames_received_total", frames) == 10
            assert registry.get_sample_value("mediastream_active_connections") == 1
            assert registry.get_sample_value("mediastream_active_streams") == 1
            # the handler lag comes from the quality report, which counts its frames' lags
            # once per level window (0.5 s): in the push after that
            lags = "mediastream_handler_lag_seconds_count"
            while registry.get_sample_value(lags) != 10:
                assert time.monotonic() < deadline, "no handler lag pushed within 5 s"
                await asyncio.sleep(0.05)
            await ws.send(json.dumps(plan.stop_frame(99)))
            await ws.wait_closed()


class TwoPrompts(StreamHandler):
    playback = PlaybackConfig(mode="rtp")  # paced RTP (the default, Telnyx's, is mp3)

    async def on_start(self) -> None:
        await self.call.play(np.zeros(8000, np.int16), 8000)  # 1 s: sent (paced) at once
        await self.call.play(np.zeros(16000, np.int16), 8000)  # 2 s: waits in our queue


async def test_playback_queue_depth_is_a_gauge():
    async with MediaServer(TwoPrompts, port=0) as srv:
        plan = plan_call(VOICE[:1600], codec="PCMU", stream_id="talker")
        async with connect(ws_url(srv)) as ws:
            await ws.send(json.dumps(plan.start_frame()))
            samples = await scrape_until(
                srv.port, lambda s: value(s, "playback_queued_seconds") == pytest.approx(2.0)
            )
            assert value(samples, "playback_queued_seconds") == pytest.approx(2.0)
            assert value(samples, "active_streams") == 1
            await ws.send(json.dumps(plan.stop_frame(99)))
            await ws.wait_closed()
        samples = await scrape_until(srv.port, idle)
        assert value(samples, "playback_queued_seconds") == 0


@pytest.mark.parametrize(
    ("protocol", "implementation"), [(Observer, ServerMetrics), (SocketMeter, StreamMeter)]
)
def test_server_metrics_implement_the_runtime_observer(protocol: type, implementation: type):
    """Every method the runtime calls exists, with the protocol's parameters (names, kinds)."""
    for name, method in vars(protocol).items():
        if name.startswith("_") or not callable(method):
            continue
        wanted = list(inspect.signature(method).parameters.values())
        given = list(inspect.signature(getattr(implementation, name)).parameters.values())
        assert [(p.name, p.kind) for p in given[: len(wanted)]] == [
            (p.name, p.kind) for p in wanted
        ], name
        assert all(p.default is not p.empty for p in given[len(wanted) :]), name
        assert inspect.iscoroutinefunction(method) == inspect.iscoroutinefunction(
            getattr(implementation, name)
        ), name


def test_lag_histogram_counts_what_the_meters_saw():
    """Bulk-added bucket counts come out as a standard, cumulative histogram."""
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry=registry)
    session = Session()
    meter = metrics.socket_opened(session)
    meter.lag_counts[0] += 3  # what ``handled`` does per frame, set directly
    meter.lag_counts[4] += 2
    meter.lag_counts[-1] += 1  # beyond the last bound
    meter.lag_sum = 0.05 + 7.0
    metrics.flush()
    meter.close()
    metrics.flush()  # nothing pushed twice
    sample = registry.get_sample_value
    assert sample("mediastream_handler_lag_seconds_count") == 6
    assert sample("mediastream_handler_lag_seconds_sum") == pytest.approx(7.05)
    cumulative = [
        sample("mediastream_handler_lag_seconds_bucket", {"le": str(b)}) for b in LAG_BUCKETS
    ]
    assert cumulative == [3, 3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 5]
    assert sample("mediastream_handler_lag_seconds_bucket", {"le": "+Inf"}) == 6
    assert sample("mediastream_handler_lag_seconds_created") is not None


async def test_metrics_can_be_switched_off():
    async with MediaServer(StreamHandler, port=0, metrics=False) as srv:
        assert srv.metrics is None
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{srv.port}/metrics")
        assert response.status_code != 200
        await send_call(ws_url(srv), plan_call(VOICE[:800], codec="PCMU"))


async def test_two_servers_in_one_process_keep_separate_counts():
    async with (
        MediaServer(StreamHandler, port=0) as a,
        MediaServer(StreamHandler, port=0) as b,
    ):
        await send_call(ws_url(a), plan_call(VOICE[:1600], codec="PCMU"))
        samples_a = await scrape_until(a.port, idle)
        samples_b = await scrape(b.port)
    assert value(samples_a, "frames_received_total", codec="PCMU") == 10
    assert value(samples_b, "frames_received_total", codec="PCMU") is None


async def test_asgi_app_serves_metrics_too(record_dir: Path):
    media = MediaApp(StreamHandler, record_dir=record_dir)
    async with uvicorn_serving(host_app(media)) as port:
        plan = plan_call(VOICE, codec="PCMA", stream_id="asgi", drop={"inbound": {5, 6, 7}})
        await send_call(f"ws://127.0.0.1:{port}/stream", plan)
        samples = await scrape_until(port, idle)
    assert value(samples, "frames_received_total", codec="PCMA") == 97
    assert value(samples, "frames_dropped_total", codec="PCMA") == 3
    assert value(samples, "handler_lag_seconds_count") == 100


# ------------------------------------------------------------------ multiprocess


@pytest.mark.slow
async def test_multiprocess_workers_are_summed_and_dead_ones_leave_the_gauges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Two ``serve`` processes sharing one PROMETHEUS_MULTIPROC_DIR, as workers do."""
    folder = tmp_path / "prometheus"
    folder.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))  # tests.processes passes env on
    first, port_a = start_server()
    second, port_b = start_server()
    try:
        # one whole call to each
        lossy = plan_call(VOICE, codec="PCMU", stream_id="a", drop={"inbound": {7, 8}})
        await send_call(f"ws://127.0.0.1:{port_a}/", lossy)
        await send_call(f"ws://127.0.0.1:{port_b}/", plan_call(VOICE[:8000], codec="PCMU"))
        for port in (port_a, port_b):  # either worker shows both
            samples = await scrape_until(  # each worker pushes at stream end, a moment later
                port, lambda s: idle(s) and value(s, "handler_lag_seconds_count") == 150
            )
            assert value(samples, "frames_received_total", codec="PCMU") == 98 + 50
            assert value(samples, "bytes_received_total", codec="PCMU") == (98 + 50) * 160
            assert value(samples, "frames_dropped_total", codec="PCMU") == 2
            assert value(samples, "handler_lag_seconds_count") == 100 + 50
            assert value(samples, "active_streams") == 0
            assert ("process_cpu_seconds_total", frozenset()) not in samples

        # a stream still open in the first worker: its gauge reaches the second one's scrape
        plan = plan_call(VOICE[:1600], codec="PCMU", stream_id="open")
        async with connect(f"ws://127.0.0.1:{port_a}/") as ws:
            await ws.send(json.dumps(plan.start_frame()))
            for _, frame in plan.media_frames():
                await ws.send(json.dumps(frame))
            samples = await scrape_until(  # the first worker pushes once a second
                port_b,
                lambda s: (
                    value(s, "frames_received_total", codec="PCMU") == 98 + 50 + 10
                    and value(s, "active_streams") == 1
                ),
            )
            assert value(samples, "active_streams") == 1
            assert value(samples, "frames_received_total", codec="PCMU") == 98 + 50 + 10
            first.send_signal(signal.SIGKILL)  # dies with the stream open
            first.wait(timeout=10)
        samples = await scrape(port_b)
        assert value(samples, "active_streams") == 1  # until the supervisor says it is dead
        mark_worker_dead(first.pid, folder)
        samples = await scrape(port_b)
        assert value(samples, "active_streams") == 0
        assert value(samples, "frames_received_total", codec="PCMU") == 98 + 50 + 10  # kept
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait(timeout=10)
