"""The media endpoint and the Telnyx routes mounted in a Starlette app served by uvicorn on
127.0.0.1: the same recordings as the standalone server, the same routes, the same handler."""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from websockets.asyncio.client import connect

from mediastream import StreamHandler
from mediastream.config import default_instance_id
from mediastream.instance import instance_prefix
from mediastream.server.asgi import MediaApp
from mediastream.server.routes import HttpRoutes
from mediastream.simulate import plan_call, send_call
from mediastream.telnyx.webhooks import StreamStatusEvent
from tests.server.test_websocket import OTHER_VOICE, VOICE, independent_decode, read_wav
from tests.telnyx.helpers import FORM, Signer, raw_request

HERE = instance_prefix(default_instance_id())  # the URLs a server hands out name it


@asynccontextmanager
async def uvicorn_serving(app: Starlette) -> AsyncIterator[int]:
    """Serve ``app`` on a free 127.0.0.1 port until the block ends; yields the port."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, "uvicorn did not start"
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


class Events(StreamHandler):
    log: list[tuple[str, str]]

    def __init__(self, log: list[tuple[str, str]], started: asyncio.Event) -> None:
        self.log, self.started = log, started

    async def on_start(self) -> None:
        self.log.append((self.call.stream_id, "start"))
        self.started.set()

    async def on_status(self, event: StreamStatusEvent) -> None:
        self.log.append((self.call.stream_id, f"status:{event.kind}"))

    async def on_stop(self) -> None:
        self.log.append((self.call.stream_id, "stop"))


def host_app(media: MediaApp) -> Starlette:
    """An existing application of the user's, with its own route, that mounts ours."""

    async def home(request: object) -> PlainTextResponse:
        return PlainTextResponse("the host app\n")

    app = Starlette(routes=[Route("/", home)], lifespan=media.lifespan)
    media.mount(app)
    return app


# ------------------------------------------------------------------ acceptance 5


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
async def test_call_is_recorded_sample_exact_under_uvicorn(record_dir: Path, codec: str):
    media = MediaApp(StreamHandler, record_dir=record_dir)
    async with uvicorn_serving(host_app(media)) as port:
        plan = plan_call(VOICE, codec=codec, stream_id=f"asgi-{codec}")
        result = await send_call(f"ws://127.0.0.1:{port}/stream", plan)
        assert result.media_sent == 100 and not result.closed_by_server
        home = await raw_request(port, "GET", "/")
        assert (home.status, home.body) == (200, b"the host app\n")
    data, rate = read_wav(record_dir, plan.stream_id)
    assert rate == 8000 and data.ndim == 1
    np.testing.assert_array_equal(data, independent_decode(plan))


async def test_shuffled_lossy_stereo_call_under_uvicorn(record_dir: Path):
    media = MediaApp(StreamHandler, record_dir=record_dir)
    plan = plan_call(
        {"inbound": VOICE, "outbound": OTHER_VOICE},
        codec="PCMU",
        tracks=("inbound", "outbound"),
        stream_id="asgi-stereo",
        shuffle_window=4,
        drop={"inbound": {5, 40}},
    )
    async with uvicorn_serving(host_app(media)) as port:
        await send_call(f"ws://127.0.0.1:{port}/stream", plan)
    data, _ = read_wav(record_dir, "asgi-stereo")
    assert data.shape == (16000, 2)
    np.testing.assert_array_equal(data[:, 0], independent_decode(plan, "inbound"))
    np.testing.assert_array_equal(data[:, 1], independent_decode(plan, "outbound"))


async def test_shutdown_finalizes_a_stream_waiting_for_a_reconnect(record_dir: Path):
    log: list[tuple[str, str]] = []
    media = MediaApp(lambda: Events(log, asyncio.Event()), record_dir=record_dir)
    plan = plan_call(VOICE, codec="PCMU", stream_id="asgi-nostop", send_stop=False)
    async with uvicorn_serving(host_app(media)) as port:
        await send_call(f"ws://127.0.0.1:{port}/stream", plan)
        await asyncio.sleep(0.1)
        assert log == [("asgi-nostop", "start")]  # suspended, not stopped: it may resume
    assert log == [("asgi-nostop", "start"), ("asgi-nostop", "stop")]
    data, _ = read_wav(record_dir, "asgi-nostop")
    np.testing.assert_array_equal(data, independent_decode(plan))


# ------------------------------------------------------------------ routes, shared code


async def test_signed_callbacks_reach_on_status_and_bad_ones_get_401(record_dir: Path):
    signer = Signer()
    log: list[tuple[str, str]] = []
    started = asyncio.Event()
    media = MediaApp(
        lambda: Events(log, started),
        record_dir=record_dir,
        http=HttpRoutes(public_key=signer.public_key),
    )
    plan = plan_call(VOICE, codec="PCMU", stream_id="asgi-live")
    body = urlencode(
        {"StreamEvent": "stream-started", "StreamSid": "asgi-live", "CallSid": "v3:x"}
    ).encode()
    async with uvicorn_serving(host_app(media)) as port:
        async with connect(f"ws://127.0.0.1:{port}/stream") as ws:
            await ws.send(json.dumps({"event": "connected", "version": "1.0.0"}))
            await ws.send(json.dumps(plan.start_frame()))
            await asyncio.wait_for(started.wait(), 5)
            tampered = await raw_request(
                port,
                "POST",
                "/callbacks/stream",
                headers={"Content-Type": FORM, **signer.headers(body)},
                body=body.replace(b"started", b"stopped"),
            )
            good = await raw_request(
                port,
                "POST",
                "/callbacks/stream",
                headers={"Content-Type": FORM, **signer.headers(body)},
                body=body,
            )
        assert (tampered.status, good.status) == (401, 200)
    assert log == [("asgi-live", "start"), ("asgi-live", "status:started"), ("asgi-live", "stop")]


async def test_texml_and_media_under_a_mount_prefix(record_dir: Path):
    media = MediaApp(StreamHandler, record_dir=record_dir)
    app = Starlette(routes=[Mount("/telnyx", app=media)], lifespan=media.lifespan)
    async with uvicorn_serving(app) as port:
        response = await raw_request(
            port, "POST", "/telnyx/texml", headers={"Content-Type": FORM}, body=b"CallSid=v3%3Aa"
        )
        assert response.status == 200
        node = ET.fromstring(response.body).find("Connect/Stream")
        assert node is not None
        assert node.attrib == {
            "url": f"ws://127.0.0.1:{port}/telnyx{HERE}/stream",
            "statusCallback": f"http://127.0.0.1:{port}/telnyx{HERE}/callbacks/stream",
        }
        plan = plan_call(VOICE, codec="PCMA", stream_id="asgi-mounted")
        result = await send_call(node.attrib["url"], plan)
        assert not result.closed_by_server
        missing = await raw_request(port, "GET", "/telnyx/elsewhere")
        assert missing.status == 404
    data, _ = read_wav(record_dir, "asgi-mounted")
    np.testing.assert_array_equal(data, independent_decode(plan))


async def test_oversized_frames_and_wrong_tokens_are_refused(record_dir: Path):
    media = MediaApp(StreamHandler, record_dir=record_dir, max_frame_bytes=4096, auth_token="t0k")
    async with uvicorn_serving(host_app(media)) as port:
        url = f"ws://127.0.0.1:{port}/stream"
        async with connect(url, additional_headers={"x-telnyx-streaming-auth-token": "t0k"}) as ws:
            await ws.send("x" * 5000)
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == 1009
        async with connect(url) as ws:  # no token in the headers: the first frame must carry it
            await ws.send(json.dumps({"event": "connected", "version": "1.0.0"}))
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == 1008
        plan = plan_call(VOICE, codec="PCMU", stream_id="asgi-token")
        result = await send_call(url, plan, headers={"x-telnyx-streaming-auth-token": "t0k"})
        assert not result.closed_by_server
    assert read_wav(record_dir, "asgi-token")[0].shape == (16000,)
