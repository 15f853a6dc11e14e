"""One suite, every adapter: the standalone websockets and picows servers and the ASGI app
under uvicorn run the same ``MediaCore``, so they must record, limit, time out and drain
alike. Each test runs once per adapter against a real server on 127.0.0.1 and a real client."""

from __future__ import annotations

import asyncio
import json
import logging
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from mediastream import MediaApp, MediaServer, StreamHandler
from mediastream.config import Config, ServerLimits, StreamOptions
from mediastream.server.picows import PicowsServer
from mediastream.simulate import plan_call, send_call, synthesize_speechlike
from tests.server.test_asgi import uvicorn_serving
from tests.server.test_faults import closed_code, frame, start, stop
from tests.server.test_websocket import independent_decode
from tests.telnyx.helpers import raw_request

VOICE = synthesize_speechlike(2.0, 8000)
ADAPTERS = ["websockets", "asgi", "picows"]


@dataclass
class Running:
    """A server under test: where to connect, and how to drain it."""

    url: str
    port: int
    target: MediaServer | MediaApp | PicowsServer

    async def drain(self) -> None:
        await self.target.drain()


@asynccontextmanager
async def running(
    adapter: str, config: Config, handler: type[StreamHandler] = StreamHandler
) -> AsyncIterator[Running]:
    if adapter in ("websockets", "picows"):
        server = MediaServer(handler, config=config) if adapter == "websockets" else (
            PicowsServer(handler, config=config)
        )  # fmt: skip
        async with server:
            yield Running(f"ws://127.0.0.1:{server.port}/stream", server.port, server)
        return
    app = MediaApp(handler, config=config)
    async with uvicorn_serving(app) as port:  # type: ignore[arg-type]
        yield Running(f"ws://127.0.0.1:{port}/stream", port, app)


def recorded(record_dir: Path, stream_id: str) -> np.ndarray:
    data, _ = soundfile.read(record_dir / f"{stream_id}.wav", dtype="int16")
    return data


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_calls_are_recorded_sample_exact(adapter: str, record_dir: Path):
    config = Config(stream=StreamOptions(record_dir))
    plans = [plan_call(VOICE, codec=c, stream_id=f"{adapter}-{c}") for c in ("PCMU", "PCMA")]
    async with running(adapter, config) as server:
        results = await asyncio.gather(*(send_call(server.url, p) for p in plans))
    assert [r.media_sent for r in results] == [100, 100]
    for plan in plans:
        np.testing.assert_array_equal(
            recorded(record_dir, plan.stream_id), independent_decode(plan)
        )


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_the_stream_limit_refuses_the_next_start_with_1013(adapter: str, record_dir: Path):
    config = Config(stream=StreamOptions(record_dir), limits=ServerLimits(max_streams=2))
    plans = [plan_call(VOICE[:3200], stream_id=f"limit-{n}") for n in range(3)]
    async with running(adapter, config) as server:
        sockets = [await connect(server.url) for _ in plans]
        for ws, plan in zip(sockets[:2], plans, strict=False):
            await ws.send(start(plan))
            await ws.send(frame(plan, 1))
        await asyncio.sleep(0.2)
        await sockets[2].send(start(plans[2]))
        assert await closed_code(sockets[2], 5) == 1013
        for ws, plan in zip(sockets[:2], plans, strict=False):
            for chunk in range(2, 21):
                await ws.send(frame(plan, chunk))
            await ws.send(stop(plan))
            assert await closed_code(ws, 5) == 1000
    for plan in plans[:2]:
        np.testing.assert_array_equal(recorded(record_dir, plan.stream_id), plan.expected_pcm())
    assert not (record_dir / "limit-2.wav").exists()


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_a_wrong_auth_token_is_refused_before_any_stream(adapter: str, record_dir: Path):
    config = Config(stream=StreamOptions(record_dir), auth_token="s3cret")
    plan = plan_call(VOICE[:1600], stream_id="intruder")
    async with running(adapter, config) as server:
        with pytest.raises(InvalidStatus):
            await send_call(server.url, plan, headers={"x-telnyx-streaming-auth-token": "wrong"})
        good = plan_call(VOICE[:1600], stream_id="invited")
        await send_call(server.url, good, headers={"x-telnyx-streaming-auth-token": "s3cret"})
    assert sorted(p.name for p in record_dir.glob("*.wav")) == ["invited.wav"]


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_an_idle_socket_is_closed_and_its_audio_kept(adapter: str, record_dir: Path):
    limits = ServerLimits(idle_seconds=0.6)
    config = Config(stream=StreamOptions(record_dir, resume_grace_seconds=0), limits=limits)
    plan = plan_call(VOICE, stream_id=f"idle-{adapter}")
    async with running(adapter, config) as server, connect(server.url) as ws:
        await ws.send(start(plan))
        for chunk in range(1, 31):
            await ws.send(frame(plan, chunk))
        assert await closed_code(ws, 5) == 1001
        for _ in range(100):  # the stream ends once its socket is gone
            if (record_dir / f"{plan.stream_id}.wav").exists():
                break
            await asyncio.sleep(0.02)
    np.testing.assert_array_equal(recorded(record_dir, plan.stream_id), plan.expected_pcm()[:4800])


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_healthz_answers_and_says_draining_during_a_drain(adapter: str, record_dir: Path):
    limits = ServerLimits(drain_seconds=5)
    config = Config(stream=StreamOptions(record_dir), limits=limits)
    plan = plan_call(VOICE, stream_id=f"drained-{adapter}")
    async with running(adapter, config) as server:
        ok = await raw_request(server.port, "GET", "/healthz")
        assert (ok.status, json.loads(ok.body)["status"]) == (200, "ok")
        ws = await connect(server.url)
        await ws.send(start(plan))
        for chunk in range(1, 51):
            await ws.send(frame(plan, chunk))
        draining = asyncio.create_task(server.drain())
        await asyncio.sleep(0.3)
        busy = await raw_request(server.port, "GET", "/healthz")
        assert (busy.status, json.loads(busy.body)) == (
            503, {"status": "draining", "streams": 1, "instance": config.instance_id}
        )  # fmt: skip
        with pytest.raises((InvalidStatus, ConnectionClosed, OSError)):
            async with connect(server.url) as late:  # new sockets are refused while draining
                await late.send(start(plan_call(VOICE[:160], stream_id="late")))
                await asyncio.wait_for(late.recv(), 2)
        for chunk in range(51, 101):  # the live call finishes within the drain time
            await ws.send(frame(plan, chunk))
        await ws.send(stop(plan))
        assert await closed_code(ws, 5) == 1000
        await asyncio.wait_for(draining, 10)
    np.testing.assert_array_equal(recorded(record_dir, plan.stream_id), plan.expected_pcm())
    assert not (record_dir / "late.wav").exists()


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_paths_naming_an_instance_are_served_whichever_it_names(
    adapter: str, record_dir: Path, caplog: pytest.LogCaptureFixture
):
    """``/i/<id>/...`` (the URLs a server hands out) is served here, and so is a path naming
    another instance (misrouted, or its instance died): logged with the stream id."""
    caplog.set_level(logging.INFO, logger="mediastream.runtime.connection")
    config = Config(stream=StreamOptions(record_dir), instance_id="here")
    names = ("here", "elsewhere")
    plans = [plan_call(VOICE, stream_id=f"{adapter}-{name}") for name in names]
    async with running(adapter, config) as server:
        base = f"ws://127.0.0.1:{server.port}"
        for plan, name in zip(plans, names, strict=True):
            assert (await send_call(f"{base}/i/{name}/stream", plan)).media_sent == 100
        for name in names:
            health = await raw_request(server.port, "GET", f"/i/{name}/healthz")
            assert (health.status, json.loads(health.body)["instance"]) == (200, "here")
        texml = await raw_request(server.port, "GET", "/i/elsewhere/texml")
        node = ET.fromstring(texml.body).find("Connect/Stream")
        assert node is not None and node.get("url") == f"{base}/i/here/stream"
        if adapter != "picows":  # picows: POST routes are on --http-port only
            body = b"StreamEvent=stream-started&StreamSid=nobody"
            form = {"Content-Type": "application/x-www-form-urlencoded"}
            posted = await raw_request(
                server.port, "POST", "/i/elsewhere/callbacks/stream", headers=form, body=body
            )
            assert (posted.status, posted.body) == (200, b"ok\n")
    for plan in plans:
        np.testing.assert_array_equal(
            recorded(record_dir, plan.stream_id), independent_decode(plan)
        )
    misrouted = [r.getMessage() for r in caplog.records if "names instance" in r.getMessage()]
    assert misrouted == [
        f"stream {adapter}-elsewhere: its URL names instance elsewhere, not this one; served here"
    ]
