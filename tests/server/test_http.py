"""HTTP routes on the media server's own port: signed status callbacks reach the live stream's
handler, bad signatures get 401, TeXML points calls at the server, and the media path stays
as it was. Everything goes through a real ``MediaServer`` on 127.0.0.1."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlencode

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect

from mediastream import MediaServer, StreamHandler, StreamOptions
from mediastream.cli_http import add_http_arguments, http_routes_from_args
from mediastream.config import default_instance_id
from mediastream.instance import instance_prefix
from mediastream.server.routes import HttpRoutes
from mediastream.simulate import plan_call, send_call
from mediastream.telnyx.texml import Stream
from mediastream.telnyx.webhooks import StreamStatusEvent
from tests.server.test_websocket import VOICE, independent_decode, read_wav
from tests.telnyx.helpers import FORM, RawResponse, Signer, raw_request

HERE = instance_prefix(default_instance_id())  # the URLs a server hands out name it


class StatusLog(StreamHandler):
    """Records what each stream's handler is told."""

    def __init__(self, log: list[tuple[str, StreamStatusEvent]], started: asyncio.Event) -> None:
        self.log = log
        self.started = started

    async def on_start(self) -> None:
        self.started.set()

    async def on_status(self, event: StreamStatusEvent) -> None:
        self.log.append((self.call.stream_id, event))
        if event.event == "stream-explode":
            raise RuntimeError("handler bug in on_status")


class Harness:
    def __init__(self, server: MediaServer, signer: Signer, log: list, started: asyncio.Event):
        self.server = server
        self.signer = signer
        self.log = log
        self.started = started
        self.hooked: list[StreamStatusEvent] = []

    @property
    def port(self) -> int:
        return self.server.port

    async def post(
        self, body: bytes, headers: dict[str, str] | None = None, **kwargs: object
    ) -> RawResponse:
        all_headers = {"Content-Type": FORM, **(headers or {})}
        return await raw_request(
            self.port, "POST", "/callbacks/stream", headers=all_headers, body=body, **kwargs
        )

    async def post_signed(self, fields: dict[str, str]) -> RawResponse:
        body = urlencode(fields).encode()
        return await self.post(body, self.signer.headers(body))

    @asynccontextmanager
    async def live_stream(self, stream_id: str) -> AsyncIterator[ClientConnection]:
        """A socket that has sent ``start`` and stays open (the handler exists)."""
        plan = plan_call(VOICE, codec="PCMU", stream_id=stream_id)
        self.started.clear()
        async with connect(f"ws://127.0.0.1:{self.port}/stream") as ws:
            await ws.send(json.dumps({"event": "connected", "version": "1.0.0"}))
            await ws.send(json.dumps(plan.start_frame()))
            await asyncio.wait_for(self.started.wait(), 5)
            yield ws


@asynccontextmanager
async def running(routes_factory: Callable[[Signer, list], HttpRoutes], record_dir: Path | None):
    signer = Signer()
    log: list[tuple[str, StreamStatusEvent]] = []
    started = asyncio.Event()
    hooked: list[StreamStatusEvent] = []
    routes = routes_factory(signer, hooked)
    server = MediaServer(
        lambda: StatusLog(log, started),
        host="127.0.0.1",
        port=0,
        options=StreamOptions(record_dir=record_dir),
        http=routes,
    )
    async with server:
        harness = Harness(server, signer, log, started)
        harness.hooked = hooked
        yield harness


def signed_routes(signer: Signer, hooked: list) -> HttpRoutes:
    async def hook(event: StreamStatusEvent) -> None:
        hooked.append(event)

    return HttpRoutes(public_key=signer.public_key, on_status=hook)


@pytest.fixture
async def harness(record_dir: Path) -> AsyncIterator[Harness]:
    async with running(signed_routes, record_dir) as h:
        yield h


def fields(event: str = "stream-started", **extra: str) -> dict[str, str]:
    return {
        "AccountSid": "f5586561-8ff0-4291-a51b-c7dfe4139ff9",
        "CallSid": "v3:sim-live-1",
        "StreamEvent": event,
        "StreamName": "my_stream",
        "StreamSid": "live-1",
        "Timestamp": "2024-01-15T10:30:00Z",
        **extra,
    }


# ------------------------------------------------------------------ acceptance 4


async def test_a_signed_callback_reaches_the_live_streams_on_status(harness: Harness):
    async with harness.live_stream("live-1"), harness.live_stream("other-1"):
        response = await harness.post_signed(fields())
        assert (response.status, response.body) == (200, b"ok\n")
        assert [(sid, e.kind, e.event) for sid, e in harness.log] == [
            ("live-1", "started", "stream-started")
        ]
        event = harness.log[0][1]
        assert (event.stream_sid, event.call_sid, event.stream_name) == (
            "live-1",
            "v3:sim-live-1",
            "my_stream",
        )
    assert [e.stream_sid for e in harness.hooked] == ["live-1"]


async def test_a_callback_finds_the_stream_by_call_id_when_the_stream_id_differs(
    harness: Harness,
):
    async with harness.live_stream("live-1"), harness.live_stream("other-1"):
        response = await harness.post_signed(
            fields("stream-error", StreamSid="telnyx-side-id", StreamError="Connection timeout")
        )
        assert response.status == 200
    assert [(sid, e.kind, e.error) for sid, e in harness.log] == [
        ("live-1", "failed", "Connection timeout")
    ]


async def test_get_and_json_callbacks_reach_the_stream_too(harness: Harness):
    async with harness.live_stream("live-1"):
        query = urlencode(fields("stream-stopped"))
        get = await raw_request(
            harness.port, "GET", f"/callbacks/stream?{query}", headers=harness.signer.headers(b"")
        )
        body = json.dumps(fields("stream-failed")).encode()
        post = await harness.post(
            body, {"Content-Type": "application/json", **harness.signer.headers(body)}
        )
        assert (get.status, post.status) == (200, 200)
    assert [(sid, e.kind, e.event) for sid, e in harness.log] == [
        ("live-1", "stopped", "stream-stopped"),
        ("live-1", "failed", "stream-failed"),
    ]


async def test_a_callback_for_no_stream_here_is_acknowledged_and_hooked(harness: Harness):
    response = await harness.post_signed(fields(StreamSid="nobody", CallSid="v3:nobody"))
    assert response.status == 200  # Telnyx would retry anything else
    assert harness.log == []
    assert [e.stream_sid for e in harness.hooked] == ["nobody"]


async def test_an_on_status_exception_ends_that_stream_only(
    harness: Harness, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.ERROR)
    async with harness.live_stream("live-1") as ws:
        response = await harness.post_signed(fields("stream-explode"))
        assert response.status == 200
        media = plan_call(VOICE, codec="PCMU", stream_id="live-1").media_frames()[0][1]
        await ws.send(json.dumps(media))
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1011
    assert "on_status raised" in caplog.text and "live-1" in caplog.text


# ------------------------------------------------------------------ acceptance 3


async def test_a_realistic_client_with_a_signed_body_is_accepted(harness: Harness):
    body = urlencode(fields(StreamSid="x")).encode()
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"http://127.0.0.1:{harness.port}/callbacks/stream",
            content=body,
            headers={"Content-Type": FORM, **harness.signer.headers(body)},
        )
    assert (response.status_code, response.text) == (200, "ok\n")


def _changed_body(h: Harness, body: bytes) -> tuple[bytes, dict[str, str]]:
    return body.replace(b"started", b"stopped"), h.signer.headers(body)


def _wrong_key(h: Harness, body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, Signer().headers(body)


def _stale(h: Harness, body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, h.signer.headers(body, timestamp=time.time() - 301)


def _missing(h: Harness, body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, {}


def _x_prefixed(h: Harness, body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, {f"x-{k}": v for k, v in h.signer.headers(body).items()}


def _no_timestamp(h: Harness, body: bytes) -> tuple[bytes, dict[str, str]]:
    headers = h.signer.headers(body)
    del headers["telnyx-timestamp"]
    return body, headers


@pytest.mark.parametrize(
    "forge", [_changed_body, _wrong_key, _stale, _missing, _x_prefixed, _no_timestamp]
)
async def test_bad_signatures_get_401_through_the_real_server(
    harness: Harness, forge: Callable[[Harness, bytes], tuple[bytes, dict[str, str]]]
):
    body, headers = forge(harness, urlencode(fields()).encode())
    async with harness.live_stream("live-1"):
        response = await harness.post(body, headers)
    assert response.status == 401
    assert response.body == b"signature rejected\n"
    assert harness.log == [] and harness.hooked == []


async def test_a_signed_get_with_a_changed_query_is_still_accepted_so_we_warn(
    harness: Harness, caplog: pytest.LogCaptureFixture
):
    """The signature covers only timestamp|body: GET query strings are not authenticated."""
    caplog.set_level(logging.WARNING)
    response = await raw_request(
        harness.port, "GET", "/callbacks/stream?StreamEvent=stream-stopped&StreamSid=s",
        headers=harness.signer.headers(b""),
    )  # fmt: skip
    assert response.status == 200
    assert "statusCallbackMethod=POST" in caplog.text


async def test_without_a_key_unsigned_callbacks_are_accepted(record_dir: Path):
    async with running(lambda s, h: HttpRoutes(), record_dir) as harness:
        async with harness.live_stream("live-1"):
            response = await harness.post(urlencode(fields()).encode())
        assert response.status == 200
        assert [sid for sid, _ in harness.log] == ["live-1"]


# ------------------------------------------------------------------ bodies on a websockets port


async def test_a_chunked_body_with_expect_continue_is_read_and_verified(harness: Harness):
    body = urlencode(fields(StreamSid="chunky")).encode()
    headers = {"Content-Type": FORM, "Expect": "100-continue", **harness.signer.headers(body)}
    response = await raw_request(
        harness.port,
        "POST",
        "/callbacks/stream",
        headers=headers,
        chunks=[body[:10], body[10:11], body[11:]],
        wait_for_continue=True,
    )
    assert response.interim == [100]
    assert response.status == 200
    assert [e.stream_sid for e in harness.hooked] == ["chunky"]


async def test_bodies_that_cannot_be_read_get_clear_statuses(harness: Harness):
    big = b"StreamEvent=stream-started&pad=" + b"x" * (300 * 1024)
    too_big = await harness.post(big, harness.signer.headers(big))
    assert too_big.status == 413
    not_a_number = await raw_request(
        harness.port, "POST", "/callbacks/stream", headers={"Content-Length": "12abc"}
    )
    assert not_a_number.status == 400
    gzip = await raw_request(
        harness.port,
        "POST",
        "/callbacks/stream",
        headers={"Transfer-Encoding": "gzip, chunked"},
        body=b"0\r\n\r\n",
    )
    assert gzip.status == 501
    assert harness.hooked == []


async def test_unknown_routes_and_methods(harness: Harness):
    assert (await raw_request(harness.port, "POST", "/nope", body=b"a=1")).status == 404
    put = await raw_request(harness.port, "PUT", "/callbacks/stream", body=b"a=1")
    assert put.status == 405 and put.headers["allow"] == "GET, POST"
    unsigned_garbage = await harness.post(b"hello", harness.signer.headers(b"hello"))
    assert unsigned_garbage.status == 400  # verified, but not a status callback


async def test_the_media_path_and_healthz_are_unchanged(harness: Harness, record_dir: Path):
    health = await raw_request(harness.port, "GET", "/healthz")
    assert health.status == 200 and json.loads(health.body)["status"] == "ok"
    plan = plan_call(VOICE, codec="PCMA", stream_id="on-callback-path")
    # a WebSocket upgrade is media on any path, even the callback path
    result = await send_call(f"ws://127.0.0.1:{harness.port}/callbacks/stream", plan)
    assert result.media_sent == 100 and not result.closed_by_server
    await harness.server.stop()
    data, _ = read_wav(record_dir, plan.stream_id)
    np.testing.assert_array_equal(data, independent_decode(plan))


# ------------------------------------------------------------------ TeXML


def texml_stream(document: bytes) -> ET.Element:
    node = ET.fromstring(document).find("Connect/Stream")
    assert node is not None
    return node


async def test_texml_points_the_call_at_this_server(harness: Harness):
    response = await raw_request(harness.port, "GET", "/texml")
    assert response.status == 200
    assert response.headers["content-type"] == "text/xml; charset=utf-8"
    node = texml_stream(response.body)
    assert node.attrib == {
        "url": f"ws://127.0.0.1:{harness.port}{HERE}/stream",
        "statusCallback": f"http://127.0.0.1:{harness.port}{HERE}/callbacks/stream",
    }


async def test_texml_behind_a_tls_proxy_uses_wss_and_the_public_host(harness: Harness):
    telnyx_fetch = b"CallSid=v3%3Aabc&From=%2B13122010094&To=%2B13122123456&Direction=inbound"
    response = await raw_request(
        harness.port,
        "POST",
        "/texml",
        headers={
            "Content-Type": FORM,
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "calls.example.com",
        },
        body=telnyx_fetch,
    )
    assert response.status == 200
    node = texml_stream(response.body)
    assert node.get("url") == f"wss://calls.example.com{HERE}/stream"
    assert node.get("statusCallback") == f"https://calls.example.com{HERE}/callbacks/stream"


async def test_texml_uses_the_configured_stream_options(record_dir: Path):
    template = Stream(
        url="wss://media.example.com/stream?tenant=a&b=1",
        track="both_tracks",
        bidirectional_mode="rtp",
        bidirectional_codec="PCMA",
        parameters={"tenant": "a&b"},
    )
    async with running(lambda s, h: HttpRoutes(stream=template), record_dir) as harness:
        response = await raw_request(harness.port, "GET", "/texml")
    node = texml_stream(response.body)
    assert node.attrib == {
        "url": f"wss://media.example.com{HERE}/stream?tenant=a&b=1",
        "track": "both_tracks",
        "bidirectionalMode": "rtp",
        "bidirectionalCodec": "PCMA",
        "statusCallback": f"https://media.example.com{HERE}/callbacks/stream",
    }
    assert node.find("Parameter").attrib == {"name": "tenant", "value": "a&b"}  # type: ignore[union-attr]


async def test_a_call_following_the_texml_answer_is_recorded(harness: Harness, record_dir: Path):
    response = await raw_request(harness.port, "GET", "/texml")
    url = texml_stream(response.body).get("url")
    assert url is not None
    plan = plan_call(VOICE, codec="PCMU", stream_id="via-texml")
    await send_call(url, plan)
    await harness.server.stop()
    data, rate = read_wav(record_dir, "via-texml")
    assert rate == 8000
    np.testing.assert_array_equal(data, independent_decode(plan))


# ------------------------------------------------------------------ serve flags


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serve")
    add_http_arguments(parser)
    return parser


def test_serve_flags_build_the_routes(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("TELNYX_PUBLIC_KEY", raising=False)
    signer = Signer()
    args = serve_parser().parse_args(
        [
            "--public-url", "wss://calls.example.com/stream",
            "--track", "both_tracks",
            "--bidirectional-mode", "rtp",
            "--param", "tenant=a",
            "--texml-verb", "start",
            "--texml-pause", "3600",
            "--telnyx-public-key", signer.public_key,
        ]
    )  # fmt: skip
    routes = http_routes_from_args(args)
    assert routes.verifier is not None
    assert (routes.verb, routes.pause) == ("start", 3600)
    assert routes.stream.attributes() == {
        "url": "wss://calls.example.com/stream",
        "track": "both_tracks",
        "bidirectionalMode": "rtp",
    }
    assert [(p.name, p.value) for p in routes.stream.parameters] == [("tenant", "a")]


def test_serve_flags_read_the_key_from_the_environment_and_refuse_bad_values(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("TELNYX_PUBLIC_KEY", Signer().public_key)
    assert http_routes_from_args(serve_parser().parse_args([])).verifier is not None
    monkeypatch.setenv("TELNYX_PUBLIC_KEY", "bm90IDMyIGJ5dGVz")
    with pytest.raises(SystemExit, match="32 bytes"):
        http_routes_from_args(serve_parser().parse_args([]))
    monkeypatch.delenv("TELNYX_PUBLIC_KEY")
    bad_url = serve_parser().parse_args(["--public-url", "https://calls.example.com/stream"])
    with pytest.raises(SystemExit, match="url"):
        http_routes_from_args(bad_url)


def test_mediastream_serve_has_the_telnyx_flags(monkeypatch: pytest.MonkeyPatch):
    """Through the real CLI parser (needs the cli.py registration)."""
    from mediastream.cli import build_parser

    monkeypatch.delenv("TELNYX_PUBLIC_KEY", raising=False)
    args = build_parser().parse_args(
        ["serve", "--public-url", "wss://calls.example.com/stream", "--track", "both_tracks"]
    )
    assert http_routes_from_args(args).stream.attributes() == {
        "url": "wss://calls.example.com/stream",
        "track": "both_tracks",
    }
