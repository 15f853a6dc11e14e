"""Hostile and broken HTTP on the media port, against a real ``MediaServer`` on 127.0.0.1:
floods of tiny chunks, bodies that never end, no h11, duplicated singleton headers, pipelined
requests, unsigned callbacks, and an auth token spelled in JSON escapes in a capture."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from websockets.asyncio.client import connect

import mediastream.server._websockets_private as http_module
from mediastream import MediaServer, StreamHandler, StreamOptions
from mediastream.config import Config, HttpLimits
from mediastream.errors import SignatureConfigError
from mediastream.server.routes import HttpRoutes
from mediastream.simulate import plan_call, synthesize_speechlike
from tests.conftest import REPO
from tests.telnyx.helpers import FORM, RawResponse, Signer, raw_request

VOICE = synthesize_speechlike(1.0, 8000)
HEAD = (
    b"POST /callbacks/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
    + FORM.encode()
    + b"\r\n"
)
FIELDS = {"StreamEvent": "stream-started", "StreamSid": "flood", "CallSid": "v3:flood"}


class Started(StreamHandler):
    def __init__(self, started: asyncio.Event) -> None:
        self.started = started

    async def on_start(self) -> None:
        self.started.set()


@asynccontextmanager
async def running(
    routes: HttpRoutes | None = None, **kwargs: Any
) -> AsyncIterator[tuple[MediaServer, asyncio.Event]]:
    started = asyncio.Event()
    server = MediaServer(
        lambda: Started(started), host="127.0.0.1", port=0, http=routes or HttpRoutes(), **kwargs
    )
    async with server:
        yield server, started


def parse_response(data: bytes) -> RawResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return RawResponse(int(status_line.split()[1]), headers, body, [])


async def send_raw(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Write ``data`` in one go and read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


async def post_in_pieces(
    port: int, head: bytes, body: bytes, *, piece: int, timeout: float, pause: float = 0.0
) -> tuple[bytes, float]:
    """Send ``head`` + ``body`` in ``piece``-byte writes, sleeping ``pause`` after each (so
    the server reads many small pieces, as from a slow client), while reading the answer.
    Returns the answer and the seconds it took; stops writing once the answer is in."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.perf_counter()
    answer = asyncio.create_task(reader.read())
    try:
        writer.write(head)
        for i in range(0, len(body), piece):
            if answer.done():
                break
            writer.write(body[i : i + piece])
            try:
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.sleep(pause)
        data = await asyncio.wait_for(answer, timeout)
        return data, time.perf_counter() - t0
    finally:
        answer.cancel()
        writer.close()


def one_byte_chunks(body: bytes) -> bytes:
    return b"".join(b"1\r\n%c\r\n" % byte for byte in body) + b"0\r\n\r\n"


FLOOD_CLIENTS = """
import asyncio, sys, time
from tests.server.test_http_faults import HEAD, one_byte_chunks, post_in_pieces

async def main(port: int, clients: int) -> None:
    head = HEAD + b"Transfer-Encoding: chunked\\r\\n\\r\\n"
    body = one_byte_chunks(b"x" * (200 * 1024))
    posts = [
        post_in_pieces(port, head, body, piece=600, timeout=20, pause=0.001)
        for _ in range(clients)
    ]
    print("flooding", flush=True)
    for data, seconds in await asyncio.gather(*posts):
        status, body = data.split(b"\\r\\n", 1)[0], data.rsplit(b"\\r\\n", 1)[-1]
        print(status.decode(), body.decode().strip())

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


async def start_floods(port: int, clients: int) -> asyncio.subprocess.Process:
    """``clients`` concurrent floods from another process (as from clients elsewhere: only
    the server's work is on its loop); it prints each one's status line and body."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", FLOOD_CLIENTS, str(port), str(clients),
        cwd=REPO, stdout=subprocess.PIPE,
    )  # fmt: skip


async def healthz_latencies(port: int, stop: asyncio.Event) -> list[float]:
    """Poll ``/healthz`` every 10 ms until ``stop``; each answer's latency."""
    latencies = []
    while not stop.is_set():
        t0 = time.perf_counter()
        response = await raw_request(port, "GET", "/healthz")
        latencies.append(time.perf_counter() - t0)
        assert response.status == 200
        await asyncio.sleep(0.01)
    return latencies


# ------------------------------------------------------------------ 12: request bodies


async def test_floods_of_one_byte_chunks_are_refused_fast_while_a_call_goes_on():
    """Six clients each post 200 KiB in 1-byte chunks (1.2 MB on the wire), in 600-byte
    pieces 1 ms apart. The old parser re-read the whole buffer on every read until it passed
    272 KiB: here 0.75 s of the server's CPU, /healthz stalled up to 0.74 s (reads coalesce
    across processes; in-process, 600-byte reads of 40 000 chunks took 6.8 s). Now each
    flood is refused at the chunk limit: 0.05 s of CPU, /healthz under 10 ms (rarely 90)."""
    async with running() as (server, started):
        plan = plan_call(VOICE, codec="PCMU", stream_id="live-call")
        async with connect(f"ws://127.0.0.1:{server.port}/stream") as ws:
            await ws.send(json.dumps(plan.start_frame()))
            await asyncio.wait_for(started.wait(), 5)
            flooding = await start_floods(server.port, 6)
            assert flooding.stdout is not None
            assert await flooding.stdout.readline() == b"flooding\n"  # imports done
            stop = asyncio.Event()
            poller = asyncio.create_task(healthz_latencies(server.port, stop))
            cpu = time.process_time()
            out, _ = await asyncio.wait_for(flooding.communicate(), 60)
            cpu = time.process_time() - cpu
            results = out.decode().splitlines()
            stop.set()
            latencies = await poller
            await ws.send(json.dumps(plan.media_frames()[0][1]))  # the call is still up
    assert results == ["HTTP/1.1 413 Request Entity Too Large body in more than 256 chunks"] * 6
    print(f"six floods: server CPU {cpu:.3f} s; /healthz max {max(latencies):.3f} s")
    assert cpu < 0.3, f"six floods took {cpu:.2f} s of the server's CPU"
    assert latencies and max(latencies) < 0.25, f"/healthz took up to {max(latencies):.3f} s"


async def test_a_body_of_many_chunks_is_parsed_in_linear_time(monkeypatch: pytest.MonkeyPatch):
    """Without the chunk limit, a 40 KB form in 1-byte chunks (40 960 chunks, 240 KB on the
    wire) sent in 200-byte pieces: the old parser took tens of seconds (1 200 re-reads of up
    to 40 000 chunks); parsing once, it is a fraction of a second."""
    form = urlencode({**FIELDS, "pad": "x" * (40 * 1024 - 80)}).encode()
    async with running(config=Config(http=HttpLimits(max_body_chunks=1 << 20))) as (server, _):
        one_chunk = b"%x\r\n%s\r\n0\r\n\r\n" % (len(form), form)
        head = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
        data, single = await post_in_pieces(server.port, head, one_chunk, piece=200, timeout=10)
        assert parse_response(data).status == 200
        data, many = await post_in_pieces(
            server.port, head, one_byte_chunks(form), piece=200, timeout=10
        )
        assert parse_response(data).status == 200
    print(f"one chunk {single:.3f} s, {len(form)} chunks {many:.3f} s")
    assert many < 2.0, f"{len(form)} one-byte chunks took {many:.2f} s (one chunk: {single:.3f})"


async def test_oversized_bodies_get_413_chunked_or_not():
    async with running() as (server, _):
        big = b"x" * (300 * 1024)
        chunked = await raw_request(
            server.port, "POST", "/callbacks/stream", chunks=[big[:65536], big[65536:]]
        )
        assert (chunked.status, chunked.body) == (413, b"body too large\n")
        stated = await send_raw(server.port, HEAD + b"Content-Length: %d\r\n\r\n" % len(big))
        assert parse_response(stated).status == 413  # refused from the head alone


@pytest.mark.parametrize(
    "head_and_part",
    [
        b"Content-Length: 100\r\n\r\n" + b"StreamEvent=",
        b"Transfer-Encoding: chunked\r\n\r\n" + b"5\r\nStrea",
    ],
    ids=["content-length", "chunked"],
)
async def test_a_stalled_body_gets_408_after_the_deadline(
    monkeypatch: pytest.MonkeyPatch, head_and_part: bytes
):
    async with running(config=Config(http=HttpLimits(body_seconds=0.5))) as (server, _):
        t0 = time.perf_counter()
        data = await send_raw(server.port, HEAD + head_and_part, timeout=5)
        waited = time.perf_counter() - t0
        response = parse_response(data)
        assert response.status == 408
        assert response.body == b"body not complete within 0.5 s\n"
        assert response.headers["connection"] == "close"
        assert 0.45 < waited < 2.0
        # the deadline is per request: a prompt body right after is fine
        ok = await raw_request(
            server.port, "POST", "/callbacks/stream", headers={"Content-Type": FORM},
            body=urlencode(FIELDS).encode(),
        )  # fmt: skip
        assert ok.status == 200


async def test_without_h11_a_body_gets_501_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.setitem(sys.modules, "h11", None)  # import h11 raises ImportError
    monkeypatch.setattr(http_module, "_warned_no_h11", False)
    caplog.set_level(logging.ERROR, logger="mediastream.server._websockets_private")
    async with running() as (server, _):
        body = urlencode(FIELDS).encode()
        for _ in range(2):
            response = await raw_request(
                server.port, "POST", "/callbacks/stream", headers={"Content-Type": FORM}, body=body
            )
            assert response.status == 501
            assert b"pip install 'mediastream[telnyx]'" in response.body
        # bodiless routes need no h11
        assert (await raw_request(server.port, "GET", "/texml")).status == 200
        assert (await raw_request(server.port, "GET", "/healthz")).status == 200
    logged = [r for r in caplog.records if "mediastream[telnyx]" in r.getMessage()]
    assert len(logged) == 1


# ------------------------------------------------------------------ 15b: unsigned callbacks


async def test_routes_without_a_key_warn_once_at_start_up(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="mediastream.server._websockets_private")
    async with running():
        pass
    warnings = [r for r in caplog.records if "not authenticated" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "TELNYX_PUBLIC_KEY" in warnings[0].getMessage()
    assert "--require-signatures" in warnings[0].getMessage()
    caplog.clear()
    async with running(HttpRoutes(public_key=Signer().public_key)):
        pass
    assert not [r for r in caplog.records if "not authenticated" in r.getMessage()]


def test_require_signatures_without_a_key_is_an_error():
    with pytest.raises(SignatureConfigError, match="public key"):
        HttpRoutes(require_signatures=True)


def test_serve_require_signatures_without_a_key_exits_2_with_one_line():
    env = {k: v for k, v in os.environ.items() if k != "TELNYX_PUBLIC_KEY"}
    done = subprocess.run(
        [sys.executable, "-m", "mediastream", "serve", "--port", "0", "--require-signatures"],
        capture_output=True, text=True, timeout=60, cwd=REPO, env=env,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mediastream: error: "), done.stderr
    assert "public key" in lines[0]


async def test_require_signatures_with_a_key_refuses_unsigned_callbacks():
    signer = Signer()
    routes = HttpRoutes(public_key=signer.public_key, require_signatures=True)
    async with running(routes) as (server, _):
        body = urlencode(FIELDS).encode()
        unsigned = await raw_request(
            server.port, "POST", "/callbacks/stream", headers={"Content-Type": FORM}, body=body
        )
        assert unsigned.status == 401
        signed = await raw_request(
            server.port, "POST", "/callbacks/stream",
            headers={"Content-Type": FORM, **signer.headers(body)}, body=body,
        )  # fmt: skip
        assert signed.status == 200


# ------------------------------------------------------------------ 15c: duplicate headers


def handshake(*extra: str) -> bytes:
    lines = [
        "GET /stream HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(
    ("extra", "name"),
    [
        (
            ["x-telnyx-streaming-auth-token: right", "x-telnyx-streaming-auth-token: wrong"],
            "x-telnyx-streaming-auth-token",
        ),
        (["Upgrade: websocket"], "upgrade"),
    ],
    ids=["auth-token", "upgrade"],
)
async def test_duplicate_singleton_headers_get_400_and_a_warning(
    caplog: pytest.LogCaptureFixture, extra: list[str], name: str
):
    caplog.set_level(logging.WARNING, logger="mediastream.server._websockets_private")
    async with running(auth_token="right") as (server, _):
        response = parse_response(await send_raw(server.port, handshake(*extra)))
        assert response.status == 400
        assert response.body == f"duplicate {name} header\n".encode()
        # the same handshake with each header once is a media socket
        token = {"x-telnyx-streaming-auth-token": "right"}
        async with connect(f"ws://127.0.0.1:{server.port}/stream", additional_headers=token):
            pass
    refused = [r.getMessage() for r in caplog.records if "duplicate" in r.getMessage()]
    assert len(refused) == 1 and re.search(r"from 127\.0\.0\.1:\d+", refused[0])
    assert "right" not in caplog.text and "wrong" not in caplog.text  # no token in the log


# ------------------------------------------------------------------ 15d: pipelining


async def test_two_pipelined_gets_get_the_first_answered():
    async with running() as (server, _):
        request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        data = await send_raw(server.port, request * 2)
        response = parse_response(data)
        assert response.status == 200
        assert response.headers["connection"] == "close"  # so the second goes unanswered
        length = int(response.headers["content-length"])
        assert json.loads(response.body[:length])["status"] == "ok"
        # the same for a route of http.py, and for a body-bearing request followed by another
        texml = parse_response(
            await send_raw(server.port, b"GET /texml HTTP/1.1\r\nHost: h\r\n\r\n" + request)
        )
        assert texml.status == 200 and texml.body.startswith(b"<?xml")
        body = urlencode(FIELDS).encode()
        post = HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        assert parse_response(await send_raw(server.port, post + request)).status == 200


# ------------------------------------------------------------------ 15a: capture redaction


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _unescape_everywhere(text: str) -> str:
    """Every \\uXXXX decoded wherever it stands, repeatedly (an independent oracle)."""
    for _ in range(4):
        text = re.sub(r"\\+u([0-9a-fA-F]{4})", lambda m: chr(int(m[1], 16)), text)
    return text


async def test_a_token_in_json_escapes_never_reaches_the_capture(tmp_path: Path):
    token = "s3cret-Token-42"
    escaped = "".join(f"\\u{ord(c):04x}" for c in token)
    connected = (
        '{"event": "connected", "version": "1.0.0", '
        f'"x-telnyx-streaming-auth-token": "{escaped}"}}'
    )
    assert (
        token not in connected and json.loads(connected)["x-telnyx-streaming-auth-token"] == token
    )
    capture_dir, record_dir = tmp_path / "capture", tmp_path / "rec"
    options = StreamOptions(record_dir, capture_dir=capture_dir)
    plan = plan_call(VOICE, codec="PCMU", stream_id="escaped-token")
    server_running = running(options=options, auth_token=token)
    async with server_running as (server, started), connect(f"ws://127.0.0.1:{server.port}") as ws:
        await ws.send(connected)
        await ws.send(json.dumps(plan.start_frame()))
        await asyncio.wait_for(started.wait(), 5)  # the escaped token was accepted
        for _, frame in plan.media_frames()[:5]:
            await ws.send(json.dumps(frame))
        await ws.send(json.dumps(plan.stop_frame(5)))
        await ws.wait_closed()
    files = sorted(capture_dir.iterdir())
    assert files
    raw = b"".join(path.read_bytes() for path in files)
    assert b'"event\\": \\"connected' in raw  # the connected frame is in the capture
    assert token.encode() not in raw
    text = raw.decode()
    assert token not in _unescape_everywhere(text)
    for line in text.splitlines():
        frame_text = json.loads(line)["text"]
        assert all(token not in s for s in _strings(json.loads(frame_text)))
