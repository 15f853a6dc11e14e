"""What only the picows adapter does itself (picows leaves it to the listener): UTF-8 checks,
joining fragments within the size limit, pausing a slow stream's reads, send backpressure, the
plain GET routes on the media port and the POST routes on ``http_port``. The suite every
adapter shares is ``test_adapters.py``."""

from __future__ import annotations

import asyncio
import json
import signal
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import soundfile
from websockets.asyncio.client import connect

from mediastream import AudioFrame, StreamHandler
from mediastream.config import Config, PlaybackConfig, ServerLimits, StreamOptions
from mediastream.server.picows import PicowsServer, _Socket
from mediastream.simulate import plan_call, send_call, synthesize_speechlike
from tests.processes import mediastream, start_server
from tests.server.test_faults import closed_code, frame, start, stop
from tests.telnyx.helpers import raw_request

VOICE = synthesize_speechlike(2.0, 8000)


def server_url(server: PicowsServer) -> str:
    return f"ws://127.0.0.1:{server.port}/stream"


def recorded(record_dir: Path, stream_id: str) -> np.ndarray:
    data, _ = soundfile.read(record_dir / f"{stream_id}.wav", dtype="int16")
    return data


async def wav_written(record_dir: Path, stream_id: str) -> None:
    for _ in range(250):
        if (record_dir / f"{stream_id}.wav").exists():
            return
        await asyncio.sleep(0.02)


async def test_text_that_is_not_utf8_closes_with_1007_and_keeps_the_audio(record_dir: Path):
    plan = plan_call(VOICE[:1600], stream_id="bad-text")
    config = Config(port=0, stream=StreamOptions(record_dir, resume_grace_seconds=0))
    async with PicowsServer(config=config) as server:
        async with connect(f"ws://127.0.0.1:{server.port}/") as ws:
            await ws.send(start(plan))
            for chunk in range(1, 6):
                await ws.send(frame(plan, chunk))
            await ws.send(b'{"event": "media", "x": "\xff\xfe"}', text=True)
            assert await closed_code(ws, 5) == 1007
        await wav_written(record_dir, plan.stream_id)
    np.testing.assert_array_equal(recorded(record_dir, "bad-text"), plan.expected_pcm()[:800])


async def test_a_fragmented_message_over_the_limit_closes_with_1009(record_dir: Path):
    limits = ServerLimits(max_frame_bytes=4096)
    config = Config(port=0, stream=StreamOptions(record_dir), limits=limits)
    async with PicowsServer(config=config) as server, connect(server_url(server)) as ws:
        await ws.send(["x" * 3000, "y" * 3000])  # each frame fits, the message does not
        assert await closed_code(ws, 5) == 1009


async def test_fragmented_messages_are_joined_in_order(record_dir: Path):
    plan = plan_call(VOICE, stream_id="fragments")
    async with PicowsServer(config=Config(port=0, stream=StreamOptions(record_dir))) as server:
        async with connect(f"ws://127.0.0.1:{server.port}/") as ws:
            await ws.send(start(plan))
            for chunk in range(1, 101):
                text = frame(plan, chunk)
                third = len(text) // 3
                await ws.send([text[:third], text[third : 2 * third], text[2 * third :]])
            await ws.send(stop(plan))
            assert await closed_code(ws, 5) == 1000
        await wav_written(record_dir, plan.stream_id)
    np.testing.assert_array_equal(recorded(record_dir, "fragments"), plan.expected_pcm())


class Slow(StreamHandler):
    """Takes 2 ms a frame and notes each frame's timestamp."""

    seen: ClassVar[list[float]] = []

    async def on_audio(self, frame: AudioFrame) -> None:
        Slow.seen.append(frame.timestamp_ms)
        await asyncio.sleep(0.002)


async def test_a_slow_handler_pauses_reading_and_gets_every_frame_in_order(
    record_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    pauses: list[int] = []
    push = _Socket._push

    def counting_push(self: _Socket, message: object) -> None:
        was = self._paused
        push(self, message)  # type: ignore[arg-type]
        if self._paused and not was:
            pauses.append(len(self.inbox))

    monkeypatch.setattr(_Socket, "_push", counting_push)
    Slow.seen = []
    plan = plan_call(VOICE, stream_id="slow")
    limits = ServerLimits(inbox_high_water=8)
    config = Config(port=0, stream=StreamOptions(record_dir, reorder_depth=0), limits=limits)
    async with PicowsServer(Slow, config=config) as server:
        async with connect(f"ws://127.0.0.1:{server.port}/") as ws:
            await ws.send(start(plan))
            for chunk in range(1, 101):  # as fast as the socket takes them
                await ws.send(frame(plan, chunk))
            await ws.send(stop(plan))
            assert await closed_code(ws, 10) == 1000
        await wav_written(record_dir, plan.stream_id)
    assert pauses and max(pauses) <= 8 + 64  # paused at the mark (plus one read's frames)
    assert Slow.seen == [20.0 * n for n in range(100)]
    np.testing.assert_array_equal(recorded(record_dir, "slow"), plan.expected_pcm())


async def test_a_send_waits_while_the_peer_reads_nothing_then_times_out(record_dir: Path):
    options = StreamOptions(record_dir, playback=PlaybackConfig(send_timeout=0.5))
    server = PicowsServer(config=Config(port=0, stream=options))
    async with server, connect(server_url(server), max_queue=1) as ws:
        plan = plan_call(VOICE[:1600], stream_id="backpressure")
        await ws.send(start(plan))
        for _ in range(100):
            if server.connections:
                break
            await asyncio.sleep(0.01)
        (connection,) = server.connections
        sock = connection.transport
        assert isinstance(sock, _Socket) and sock.ws is not None
        buffered: list[int] = []
        big = "x" * 60_000
        with pytest.raises(TimeoutError):
            for _ in range(2000):  # the client reads nothing: the kernel buffers fill
                await sock.send(big)
                buffered.append(sock.ws.underlying_transport.get_write_buffer_size())
        assert max(buffered) <= 64 * 1024 + len(big) + 64  # the high-water mark + a frame
        await ws.send(stop(plan))


async def test_get_routes_on_the_media_port_and_post_routes_on_the_http_port(record_dir: Path):
    config = Config(port=0, http_port=0, stream=StreamOptions(record_dir))
    async with PicowsServer(config=config) as server:
        assert server.http_port and server.http_port != server.port
        health = await raw_request(server.port, "GET", "/healthz")
        assert (health.status, json.loads(health.body)["status"]) == (200, "ok")
        texml = await raw_request(server.port, "GET", "/texml")
        assert texml.status == 200 and b"<Stream" in texml.body
        refused = await raw_request(server.port, "POST", "/texml", body=b"x=1")
        assert refused.status == 400  # picows refuses bodies
        posted = await raw_request(server.http_port, "POST", "/texml", body=b"x=1")
        assert posted.status == 200
        here = f"/i/{server.config.instance_id}"  # the URLs name this instance
        urls = (
            f'url="ws://127.0.0.1:{server.port}{here}/stream" '
            f'statusCallback="http://127.0.0.1:{server.http_port}{here}/callbacks/stream"'
        ).encode()
        assert urls in texml.body and urls in posted.body  # each URL on its own port
        callback = await raw_request(server.http_port, "POST", "/callbacks/stream", body=b"{}")
        assert callback.status in (200, 400)  # answered by the routes, not refused
        assert (await raw_request(server.port, "GET", "/streams")).status == 404


async def test_the_ping_settings_come_from_the_limits() -> None:
    limits = replace(ServerLimits(), ping_interval=0.2, ping_timeout=0.2)
    server = PicowsServer(config=Config(port=0, limits=limits))
    async with server, connect(server_url(server), ping_interval=None) as ws:
        pong = await ws.ping()  # picows answers pings itself
        await asyncio.wait_for(pong, 2)
        await asyncio.sleep(0.6)  # the client answers the server's pings: still open
        assert ws.state.name == "OPEN"


def test_serve_transport_picows_records_and_stops_cleanly_on_sigterm(record_dir: Path):
    proc, port = start_server(
        "--transport", "picows", "--http-port", "0", "--record-dir", str(record_dir)
    )  # fmt: skip
    try:
        plan = plan_call(VOICE, codec="PCMA", stream_id="cli-picows")
        result = asyncio.run(send_call(f"ws://127.0.0.1:{port}/stream", plan))
        assert result.media_sent == 100
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    np.testing.assert_array_equal(recorded(record_dir, "cli-picows"), plan.expected_pcm())


def test_http_port_without_picows_is_a_one_line_error():
    result = mediastream("serve", "--port", "0", "--http-port", "0")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "mediastream: error: --http-port is for --transport picows (websockets serves every route)"
    ]


async def test_a_repeated_auth_token_header_is_refused_with_400():
    config = Config(port=0, auth_token="s3cret")
    async with PicowsServer(config=config) as server:
        token = "x-telnyx-streaming-auth-token"
        response = await raw_request(
            server.port, "GET", "/stream",
            headers={"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                     "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", token: "s3cret",
                     token.upper(): "wrong"},
        )  # fmt: skip
        assert (response.status, response.body) == (400, f"duplicate {token} header\n".encode())


async def test_an_echo_plays_back_bit_exact_with_a_mark_per_frame():
    """Playback and marks over picows' synchronous send: what the caller hears is what it
    said, through one encode and decode (``EchoBot`` plays each frame, marking each)."""
    from mediastream.cli import load_handler
    from mediastream.simulate import FarEndConfig
    from tests.media.test_playback import call_until_echoed
    from tests.test_bidirectional import one_round

    bot = load_handler("examples/echo_bot.py:EchoBot")
    playback = PlaybackConfig(mode="rtp", codec="PCMA")
    plan = plan_call(VOICE[:8000], codec="PCMA", stream_id="echo")
    server = PicowsServer(bot, config=Config(port=0, stream=StreamOptions(playback=playback)))
    async with server:
        far = await call_until_echoed(server_url(server), plan, FarEndConfig("rtp", "PCMA", 8000))
    heard = far.heard_audio()
    np.testing.assert_array_equal(heard, one_round(plan.expected_pcm(), "PCMA", 8000))
