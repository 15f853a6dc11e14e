"""Races in the stream lifecycle, against a real server: takeovers of half-open sockets,
players made while a socket closes, resumes at the stream limit, handlers that ignore their
cancellation, tracks whose counters disagree after a reconnect, expiries during shutdown."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from mediastream import MediaServer, StreamHandler, StreamOptions
from mediastream.server.websocket import ServerLimits
from mediastream.simulate import CallPlan, plan_call, synthesize_speechlike
from tests.server.test_faults import closed_code, ended, frame, outbound_media, start, stop, wav

pytestmark = pytest.mark.both_transports

VOICE = synthesize_speechlike(4.0, 8000)
TONE = (np.sin(np.arange(1600) / 3) * 8000).astype(np.int16)


def url(srv: MediaServer) -> str:
    return f"ws://127.0.0.1:{srv.port}/stream"


# ------------------------------------------------------------------ 1: half-open owner


class Greeter(StreamHandler):
    async def on_reconnect(self) -> None:
        await self.call.play(TONE, 8000)


@pytest.mark.slow
async def test_takeover_of_a_half_open_owner_is_bounded_by_takeover_seconds(record_dir: Path):
    """The usual reason a carrier reconnects: the old socket is half-open (reads nothing).
    README: the newcomer waits up to --takeover-seconds (1 s) + the handover (<= 1 s)."""
    plan = plan_call(VOICE, stream_id="half-open")
    async with MediaServer(Greeter, port=0, options=StreamOptions(record_dir)) as srv:
        first = await connect(url(srv))
        await first.send(start(plan))
        for chunk in range(1, 61):
            await first.send(frame(plan, chunk))
        await asyncio.sleep(0.2)
        first.transport.pause_reading()  # half-open: never answers the close frame
        await asyncio.sleep(1.1)  # silent for longer than takeover_seconds
        async with connect(url(srv)) as second:
            began = time.monotonic()
            await second.send(start(plan))
            got = 0
            while not got and time.monotonic() - began < float(
                __import__("os").environ.get("WAIT", "3")
            ):
                got = await outbound_media(second, 0.2)  # greeting once the newcomer owns it
            took = time.monotonic() - began
            assert got > 0 and took < 3, f"takeover took {took:.1f} s (README: ~1-2 s)"
            await second.send(stop(plan))
        first.transport.abort()


# ------------------------------------------------------------------ 2: stale player


class PlaysWhenBusy(StreamHandler):
    """Answers speech with a tone; the answer may be decided after the socket dropped."""

    instances: ClassVar[list[PlaysWhenBusy]] = []

    def __init__(self) -> None:
        self.frames = 0
        self.reconnect_error: BaseException | None = None
        PlaysWhenBusy.instances.append(self)

    async def on_audio(self, frame) -> None:  # type: ignore[no-untyped-def]
        self.frames += 1
        if self.frames == 40:
            await asyncio.sleep(0.5)  # thinking; the socket closes meanwhile
            await self.call.play(TONE, 8000)

    async def on_reconnect(self) -> None:
        try:
            await self.call.play(TONE, 8000)
        except BaseException as exc:
            self.reconnect_error = exc
            raise


@pytest.mark.slow
async def test_a_player_made_after_the_socket_closed_does_not_break_the_resume(
    record_dir: Path,
):
    PlaysWhenBusy.instances = []
    plan = plan_call(VOICE, stream_id="stale-player")
    async with MediaServer(PlaysWhenBusy, port=0, options=StreamOptions(record_dir)) as srv:
        async with connect(url(srv)) as first:
            await first.send(start(plan))
            for chunk in range(1, 61):
                await first.send(frame(plan, chunk))
        await asyncio.sleep(1.0)  # handler wakes, plays to the dead socket; stream suspended
        assert "stale-player" in srv.registry
        async with connect(url(srv)) as second:
            await second.send(start(plan))
            got = await outbound_media(second, 1.0)
            handler = PlaysWhenBusy.instances[0]
            assert handler.reconnect_error is None, repr(handler.reconnect_error)
            assert got > 0
            for chunk in range(61, 121):
                await second.send(frame(plan, chunk))
            await second.send(stop(plan))
            assert await closed_code(second, 5) == 1000
        await ended(srv, "stale-player")


# ------------------------------------------------------------------ 3: resume at the limit


async def test_a_suspended_stream_can_resume_when_the_stream_limit_is_reached(record_dir: Path):
    limits = ServerLimits(max_streams=2)
    plans = [plan_call(VOICE[:8000], stream_id=f"full-{n}") for n in range(2)]
    async with MediaServer(port=0, options=StreamOptions(record_dir), limits=limits) as srv:
        for plan in plans:
            async with connect(url(srv)) as ws:
                await ws.send(start(plan))
                for chunk in range(1, 11):
                    await ws.send(frame(plan, chunk))
        await asyncio.sleep(0.2)
        assert len(srv.registry) == 2 and not srv.connections
        try:
            async with connect(url(srv)) as ws:  # full-0 reconnects within the grace period
                await ws.send(start(plans[0]))
                for chunk in range(11, 21):
                    await ws.send(frame(plans[0], chunk))
                await ws.send(stop(plans[0]))
                assert await closed_code(ws, 5) == 1000
        except InvalidStatus as exc:
            pytest.fail(f"a resume of a suspended stream was refused: {exc.response.body!r}")
        await ended(srv, "full-0")
    np.testing.assert_array_equal(
        wav(record_dir / "full-0.wav")[:, 0], plans[0].expected_pcm()[: 20 * 160]
    )


# ------------------------------------------------------------------ 4: cancel swallowed


class Swallower(StreamHandler):
    async def on_audio(self, frame) -> None:  # type: ignore[no-untyped-def]
        if frame.timestamp_ms >= 200:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                await asyncio.sleep(3600)  # a handler that swallows one cancellation


async def test_stop_is_bounded_even_when_a_handler_swallows_cancellation(record_dir: Path):
    plan = plan_call(VOICE, stream_id="swallow")
    options = StreamOptions(record_dir, handler_stop_seconds=0.5)
    srv = MediaServer(Swallower, port=0, options=options)
    await srv.start()
    ws = await connect(url(srv))
    await ws.send(start(plan))
    for chunk in range(1, 51):
        await ws.send(frame(plan, chunk))
    await asyncio.sleep(0.3)
    began = time.monotonic()
    stopping = asyncio.ensure_future(srv.stop())
    done, _ = await asyncio.wait({stopping}, timeout=5)
    took = time.monotonic() - began
    for task in srv.core.readers():
        task.cancel()  # clean up for the test run
    if not done:
        await asyncio.wait({stopping}, timeout=2)
    ws.transport.abort()
    assert done, f"MediaServer.stop() still running after {took:.1f} s"
    assert (record_dir / "swallow.wav").exists()
    got = wav(record_dir / "swallow.wav")[:, 0]
    np.testing.assert_array_equal(got, plan.expected_pcm()[: 50 * 160])


# ------------------------------------------------------------------ 5: mixed counters


async def record_mixed_counters(record_dir: Path, stream_id: str) -> tuple[np.ndarray, CallPlan]:
    """A two-track call split over two sockets: inbound counters continue across the
    reconnect, outbound ones restart. Returns the recording and the plan."""
    audio = {"inbound": VOICE, "outbound": (VOICE // 3)[::-1].copy()}
    plan = plan_call(audio, tracks=("inbound", "outbound"), stream_id=stream_id)
    async with MediaServer(port=0, options=StreamOptions(record_dir)) as srv:
        async with connect(url(srv)) as first:
            await first.send(start(plan))
            for chunk in range(1, 101):
                await first.send(frame(plan, chunk, track="inbound"))
                await first.send(frame(plan, chunk, track="outbound"))
        await asyncio.sleep(0.1)
        async with connect(url(srv)) as second:
            await second.send(start(plan))
            for chunk in range(101, 151):
                await second.send(frame(plan, chunk, track="inbound"))  # continues
                await second.send(frame(plan, chunk, track="outbound", renumber=100))  # restarts
            await second.send(stop(plan))
            assert await closed_code(second, 5) == 1000
        await ended(srv, stream_id)
    return wav(record_dir / f"{stream_id}.wav"), plan


async def test_one_track_continues_the_other_restarts_nothing_is_overwritten(record_dir: Path):
    """The outbound audio of the first socket must not be overwritten by the second's."""
    got, plan = await record_mixed_counters(record_dir, "mixed")
    outbound = plan.expected_pcm("outbound")
    # the first socket's outbound audio is still where it was
    np.testing.assert_array_equal(got[: 100 * 160, 1], outbound[: 100 * 160])
    # inbound counters continue: its chunks 101..150 belong right after chunk 100
    inbound = plan.expected_pcm("inbound")
    assert len(got) <= 150 * 160 + 160, f"file is {len(got)} samples for 150 frames per track"
    np.testing.assert_array_equal(got[: 150 * 160, 0], inbound[: 150 * 160])


async def test_one_track_continues_the_other_restarts_the_new_audio_is_kept(record_dir: Path):
    got, plan = await record_mixed_counters(record_dir, "mixed2")
    outbound = plan.expected_pcm("outbound")
    # the second socket's outbound audio (chunks 101..150) must be somewhere in channel 1
    tail = outbound[100 * 160 : 150 * 160]
    ch = got[:, 1]
    found = any(
        np.array_equal(ch[i : i + len(tail)], tail) for i in range(0, len(ch) - len(tail) + 1, 160)
    )
    assert found, "the second socket's outbound audio is not in the recording"


# ------------------------------------------------------------------ 6: three sockets


@pytest.mark.slow
async def test_a_third_socket_does_not_take_over_a_newcomer_that_is_sending(record_dir: Path):
    plan = plan_call(synthesize_speechlike(20.0, 8000), stream_id="three")
    async with MediaServer(port=0, options=StreamOptions(record_dir)) as srv:
        a = await connect(url(srv))
        await a.send(start(plan))
        for chunk in range(1, 51):
            await a.send(frame(plan, chunk))
        await asyncio.sleep(0.2)
        a.transport.pause_reading()  # half-open
        await asyncio.sleep(1.1)
        b = await connect(url(srv))
        await b.send(start(plan))

        async def keep_sending() -> None:
            for chunk in range(51, 900):
                await b.send(frame(plan, chunk))
                await asyncio.sleep(0.02)

        sender = asyncio.create_task(keep_sending())
        await asyncio.sleep(0.5)
        c = await connect(url(srv))
        await c.send(start(plan))
        code_c = await closed_code(c, 14)
        sender.cancel()
        code_b = await closed_code(b, 0.5)
        a.transport.abort()
        assert code_b is None, f"B (sending) was closed: {code_b} {b.close_reason!r}"
        assert code_c == 1008


# ------------------------------------------------------------------ 7: expiry during stop


class SlowStop(StreamHandler):
    finished: ClassVar[list[str]] = []

    async def on_stop(self) -> None:
        await asyncio.sleep(0.5)  # say, uploading the recording
        SlowStop.finished.append(self.call.stream_id)


async def test_stop_waits_for_a_stream_whose_grace_expired_just_before(record_dir: Path):
    SlowStop.finished = []
    plan = plan_call(VOICE[:8000], stream_id="expiring")
    options = StreamOptions(record_dir, resume_grace_seconds=0.3)
    srv = MediaServer(SlowStop, port=0, options=options)
    await srv.start()
    async with connect(url(srv)) as ws:
        await ws.send(start(plan))
        for chunk in range(1, 11):
            await ws.send(frame(plan, chunk))
    await asyncio.sleep(0.45)  # the grace ran out: the stream is being ended by its timer
    await srv.stop()
    assert SlowStop.finished == ["expiring"], "stop() returned with on_stop still running"
