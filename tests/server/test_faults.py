"""Faults on the socket path, against a real server on 127.0.0.1: hostile frames, two sockets
with one stream id, reconnects between a pair of frames, amplification, limits, log injection.
Every test checks the audio in the WAV sample by sample."""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
import re
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import soundfile
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from mediastream import MediaServer, StreamHandler, StreamOptions
from mediastream.server.websocket import ServerLimits
from mediastream.simulate import CallPlan, plan_call, synthesize_speechlike
from tests.conftest import ws_url

pytestmark = pytest.mark.both_transports

VOICE = synthesize_speechlike(4.0, 8000)


def frame(plan: CallPlan, chunk: int, *, track: str = "inbound", renumber: int = 0) -> str:
    """Media frame ``chunk`` of ``plan`` (1-based); ``renumber`` shifts its counters down."""
    n = chunk - renumber
    payload = plan.payloads[track][chunk - 1]
    media = {
        "track": track,
        "chunk": str(n),
        "timestamp": str((n - 1) * 20),
        "payload": base64.b64encode(payload).decode(),
    }
    return json.dumps({"event": "media", "stream_id": plan.stream_id, "media": media})


def start(plan: CallPlan) -> str:
    return json.dumps(plan.start_frame())


def stop(plan: CallPlan) -> str:
    return json.dumps(plan.stop_frame(9999))


async def closed_code(ws: ClientConnection, timeout: float) -> int | None:
    """The close code the server sent, waiting at most ``timeout`` (None: still open)."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None
    except TimeoutError:
        return None


async def ended(srv: MediaServer, stream_id: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while stream_id in srv.registry:
        assert time.monotonic() < deadline, f"stream {stream_id} never ended"
        await asyncio.sleep(0.02)


def wav(path: Path) -> np.ndarray:
    data, _ = soundfile.read(path, dtype="int16", always_2d=True)
    return data


# ---------------------------------------------------------------- item 1: a bad frame


@pytest.mark.parametrize(
    "hostile",
    [
        "[" * 1500 + "]" * 1500,  # RecursionError in json.loads
        '{"event": "media", "media": {"chunk": "' + "9" * 5000 + '", "payload": ""}}',
        '{"event": "media", "media": {"chunk": ' + "9" * 5000 + ', "payload": ""}}',
        '{"event": "media", "sequence_number": "' + "1" * 4400 + '", "media": {"payload": ""}}',
    ],
    ids=["nested", "chunk-digits", "chunk-number", "sequence-digits"],
)
async def test_a_malformed_frame_is_an_input_error_and_the_stream_goes_on(
    record_dir: Path, hostile: str
):
    plan = plan_call(VOICE[:16000], stream_id="hostile")
    async with MediaServer(port=0, options=StreamOptions(record_dir)) as srv:
        async with connect(ws_url(srv)) as ws:
            await ws.send(start(plan))
            for chunk in range(1, 51):
                await ws.send(frame(plan, chunk))
            await ws.send(hostile)
            for chunk in range(51, 101):
                await ws.send(frame(plan, chunk))
            await ws.send(stop(plan))
            assert await closed_code(ws, 5) == 1000
        await ended(srv, "hostile")
    np.testing.assert_array_equal(wav(record_dir / "hostile.wav")[:, 0], plan.expected_pcm())


@pytest.mark.parametrize("rate", [-8000, 0, 10**10, 10**9, 12345])
async def test_an_impossible_l16_rate_ends_the_stream_at_once_with_a_reason(
    record_dir: Path, rate: int
):
    plan = plan_call(VOICE[:1600], codec="L16", sample_rate=8000, stream_id="l16-rate")
    start_frame = plan.start_frame()
    start_frame["start"]["media_format"]["sample_rate"] = rate  # type: ignore[index]
    async with (
        MediaServer(port=0, options=StreamOptions(record_dir)) as srv,
        connect(ws_url(srv)) as ws,
    ):
        await ws.send(json.dumps(start_frame))
        await ws.send(frame(plan, 1))
        began = time.monotonic()
        assert await closed_code(ws, 1) == 1003
        assert time.monotonic() - began < 1
        assert "L16" in ws.close_reason and "not supported" in ws.close_reason
    assert list(record_dir.iterdir()) == []  # no recording of an unknown format


class FailingPlacement:
    """Fault injection: the runtime's own code raises on the 60th frame of one stream."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from mediastream.runtime.connection import StreamConnection

        original = StreamConnection._placed
        self.calls = 0

        def place(connection, stream, event):  # type: ignore[no-untyped-def]
            if stream.stream_id == "internal-error":
                self.calls += 1
                if self.calls == 60:
                    raise RuntimeError("injected fault")
            return original(connection, stream, event)

        monkeypatch.setattr(StreamConnection, "_placed", place)


async def test_an_internal_error_closes_that_socket_at_once_and_keeps_its_audio(
    record_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    FailingPlacement(monkeypatch)
    plan = plan_call(VOICE[:16000], stream_id="internal-error")
    other = plan_call(VOICE[16000:32000], stream_id="bystander")
    async with (
        MediaServer(port=0, options=StreamOptions(record_dir)) as srv,
        connect(ws_url(srv)) as ws,
        connect(ws_url(srv)) as calm,
    ):
        await calm.send(start(other))
        for chunk in range(1, 21):
            await calm.send(frame(other, chunk))
        await ws.send(start(plan))
        for chunk in range(1, 100):
            await ws.send(frame(plan, chunk))
        began = time.monotonic()
        assert await closed_code(ws, 1) == 1011
        assert time.monotonic() - began < 1
        assert ws.close_reason == "internal error (RuntimeError)"
        await ended(srv, "internal-error")
        for chunk in range(21, 51):  # the other call never noticed
            await calm.send(frame(other, chunk))
        await calm.send(stop(other))
        assert await closed_code(calm, 5) == 1000
    # the 59 frames before the fault are in the file, finalized
    got = wav(record_dir / "internal-error.wav")[:, 0]
    np.testing.assert_array_equal(got, plan.expected_pcm()[: 59 * 160])
    np.testing.assert_array_equal(
        wav(record_dir / "bystander.wav")[:, 0], other.expected_pcm()[:8000]
    )
    logged = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert logged and "stream internal-error" in logged[0].getMessage()


# ---------------------------------------------------------------- item 3: one id, two sockets


class Greeter(StreamHandler):
    """Plays a short tone on start and again on every reconnect: playback must go to the
    socket that owns the stream."""

    instances: ClassVar[list[Greeter]] = []
    TONE = (np.sin(np.arange(1600) / 3) * 8000).astype(np.int16)

    def __init__(self) -> None:
        self.reconnects = 0
        Greeter.instances.append(self)

    async def on_reconnect(self) -> None:
        self.reconnects += 1
        await self.call.play(self.TONE, 8000)


async def outbound_media(ws: ClientConnection, seconds: float) -> int:
    """How many media frames the server sends to ``ws`` within ``seconds``."""
    count = 0
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            message = json.loads(await asyncio.wait_for(ws.recv(), left))
            count += message.get("event") == "media"
    except (TimeoutError, ConnectionClosed):
        pass
    return count


@pytest.mark.slow
async def test_a_second_socket_is_refused_while_the_first_is_sending(record_dir: Path):
    plan = plan_call(VOICE, stream_id="contested")
    intruder = plan_call(VOICE[::-1].copy(), stream_id="contested")
    async with MediaServer(Greeter, port=0, options=StreamOptions(record_dir)) as srv:
        async with connect(ws_url(srv)) as first, connect(ws_url(srv)) as second:
            await first.send(start(plan))
            for chunk in range(1, 51):
                await first.send(frame(plan, chunk))

            async def keep_sending() -> None:
                for chunk in range(51, 151):
                    await first.send(frame(plan, chunk))
                    await asyncio.sleep(0.02)

            sender = asyncio.create_task(keep_sending())
            await second.send(start(intruder))
            for chunk in range(1, 150):
                await second.send(frame(intruder, chunk))
            assert await closed_code(second, 3) == 1008
            assert second.close_reason == "stream id is live on another socket"
            await sender
            await first.send(stop(plan))
            assert await closed_code(first, 5) == 1000
        await ended(srv, "contested")
    np.testing.assert_array_equal(
        wav(record_dir / "contested.wav")[:, 0], plan.expected_pcm()[:24000]
    )
    assert [h.reconnects for h in Greeter.instances[-1:]] == [0]


async def test_a_silent_first_socket_is_taken_over_and_playback_follows(record_dir: Path):
    Greeter.instances = []
    plan = plan_call(VOICE, stream_id="taken-over")
    async with MediaServer(Greeter, port=0, options=StreamOptions(record_dir)) as srv:
        async with connect(ws_url(srv)) as first, connect(ws_url(srv)) as second:
            await first.send(start(plan))
            for chunk in range(1, 61):
                await first.send(frame(plan, chunk))
            await asyncio.sleep(0.1)
            began = time.monotonic()
            await second.send(start(plan))  # the carrier reconnects; the first went silent
            for chunk in range(61, 121):
                await second.send(frame(plan, chunk))
            assert await closed_code(first, 3) == 1008  # the silent one is let go
            assert time.monotonic() - began < 2.5
            assert first.close_reason == "stream taken over by a newer socket"
            assert await outbound_media(second, 0.5) > 0  # the greeting goes to the new owner
            await second.send(stop(plan))
            assert await closed_code(second, 5) == 1000
        await ended(srv, "taken-over")
    assert [h.reconnects for h in Greeter.instances] == [1]
    np.testing.assert_array_equal(
        wav(record_dir / "taken-over.wav")[:, 0], plan.expected_pcm()[: 120 * 160]
    )


async def test_a_closed_first_socket_is_resumed_at_once(record_dir: Path):
    Greeter.instances = []
    plan = plan_call(VOICE, stream_id="closed-first")
    async with MediaServer(Greeter, port=0, options=StreamOptions(record_dir)) as srv:
        async with connect(ws_url(srv)) as first:
            await first.send(start(plan))
            for chunk in range(1, 61):
                await first.send(frame(plan, chunk))
        async with connect(ws_url(srv)) as second:
            began = time.monotonic()
            await second.send(start(plan))
            assert await outbound_media(second, 0.5) > 0
            assert time.monotonic() - began < 1.0  # no takeover wait for a closed socket
            for chunk in range(61, 121):
                await second.send(frame(plan, chunk))
            await second.send(stop(plan))
            assert await closed_code(second, 5) == 1000
        await ended(srv, "closed-first")
    np.testing.assert_array_equal(
        wav(record_dir / "closed-first.wav")[:, 0], plan.expected_pcm()[: 120 * 160]
    )


# ---------------------------------------------------------------- item 4: a pair split


@pytest.mark.parametrize("restart", [False, True], ids=["counters-continue", "counters-restart"])
async def test_a_two_track_reconnect_between_a_pair_keeps_every_frame_in_place(
    record_dir: Path, restart: bool
):
    audio = {"inbound": VOICE, "outbound": (VOICE // 3)[::-1].copy()}
    plan = plan_call(audio, tracks=("inbound", "outbound"), stream_id="pair")
    async with MediaServer(port=0, options=StreamOptions(record_dir)) as srv:
        async with connect(ws_url(srv)) as first:
            await first.send(start(plan))
            for chunk in range(1, 131):
                await first.send(frame(plan, chunk, track="inbound"))
                if chunk <= 129:
                    await first.send(frame(plan, chunk, track="outbound"))
        await asyncio.sleep(0.1)
        async with connect(ws_url(srv)) as second:
            await second.send(start(plan))
            for chunk in range(130, 201):
                if chunk >= 131:
                    await second.send(frame(plan, chunk, renumber=130 * restart))
                await second.send(frame(plan, chunk, track="outbound", renumber=129 * restart))
            await second.send(stop(plan))
            assert await closed_code(second, 5) == 1000
        await ended(srv, "pair")
    got = wav(record_dir / "pair.wav")
    inbound, outbound = plan.expected_pcm("inbound"), plan.expected_pcm("outbound")
    if not restart:  # every frame where its own counters put it
        np.testing.assert_array_equal(got[:, 0], inbound[: 200 * 160])
        np.testing.assert_array_equal(got[:, 1], outbound[: 200 * 160])
        return
    # restarted: both tracks resume together, right after the longer one (inbound chunk 130)
    resume = 130 * 160
    np.testing.assert_array_equal(got[:resume, 0], inbound[:resume])
    np.testing.assert_array_equal(got[: 129 * 160, 1], outbound[: 129 * 160])
    np.testing.assert_array_equal(got[resume : resume + 70 * 160, 0], inbound[resume : 200 * 160])
    np.testing.assert_array_equal(
        got[resume : resume + 71 * 160, 1], outbound[129 * 160 : 200 * 160]
    )


# ---------------------------------------------------------------- item 9: amplification


async def test_counter_jumps_cannot_amplify_a_recording(record_dir: Path):
    plan = plan_call(VOICE, stream_id="jumps")
    async with MediaServer(port=0, options=StreamOptions(record_dir)) as srv:
        async with connect(ws_url(srv)) as ws:
            await ws.send(start(plan))
            for n in range(20):  # chunk jumps of 2,999 (60 s) every frame
                text = json.loads(frame(plan, n + 1))
                text["media"]["chunk"] = str(1 + 2999 * n)
                text["media"]["timestamp"] = str(2999 * 20 * n)
                await ws.send(json.dumps(text))
            for n in range(20):  # and jumps of 499 (just under 10 s) every frame
                text = json.loads(frame(plan, n + 21))
                text["media"]["chunk"] = str(10**6 + 499 * n)
                await ws.send(json.dumps(text))
            await ws.send(stop(plan))
            assert await closed_code(ws, 10) == 1000
        await ended(srv, "jumps")
    got = wav(record_dir / "jumps.wav")[:, 0]
    # 40 frames received: at most their audio plus one gap bound (10 s) of silence was added
    assert len(got) <= 40 * 160 + 10 * 8000
    heard = got[got != 0]
    expected = plan.expected_pcm()[: 40 * 160]
    np.testing.assert_array_equal(heard, expected[expected != 0])  # every frame, in order


async def test_a_first_timestamp_far_away_does_not_write_into_the_void(record_dir: Path):
    plan = plan_call(VOICE, stream_id="far-start")
    async with MediaServer(port=0, options=StreamOptions(record_dir)) as srv:
        async with connect(ws_url(srv)) as ws:
            await ws.send(start(plan))
            for n in (1, 2):
                text = json.loads(frame(plan, n))
                text["media"]["timestamp"] = str(6 * 3600 * 1000 - 1000 + 20 * n)
                await ws.send(json.dumps(text))
            await ws.send(stop(plan))
            assert await closed_code(ws, 5) == 1000
        await ended(srv, "far-start")
    np.testing.assert_array_equal(
        wav(record_dir / "far-start.wav")[:, 0], plan.expected_pcm()[:320]
    )


# ---------------------------------------------------------------- items 10, 11: limits


async def test_suspended_streams_count_against_the_stream_limit(record_dir: Path):
    limits = ServerLimits(max_streams=5)
    async with MediaServer(port=0, options=StreamOptions(record_dir), limits=limits) as srv:
        for n in range(5):  # each starts and closes without stop: suspended, file open
            plan = plan_call(VOICE[:1600], stream_id=f"held-{n}")
            async with connect(ws_url(srv)) as ws:
                await ws.send(start(plan))
                await ws.send(frame(plan, 1))
        await asyncio.sleep(0.1)
        assert len(srv.registry) == 5 and not srv.connections
        newcomer = plan_call(VOICE[:1600], stream_id="one-too-many")
        async with connect(ws_url(srv)) as ws:
            await ws.send(start(newcomer))
            await ws.send(frame(newcomer, 1))
            assert await closed_code(ws, 2) == 1013
            assert ws.close_reason == "stream limit reached (5 streams, live or suspended)"
        # a suspended stream still resumes at the limit: it needs no new slot
        again = plan_call(VOICE[:1600], stream_id="held-2")
        async with connect(ws_url(srv)) as ws:
            await ws.send(start(again))
            await ws.send(frame(again, 2))
            await ws.send(stop(again))
            assert await closed_code(ws, 2) == 1000
        await ended(srv, "held-2")
    assert not (record_dir / "one-too-many.wav").exists()
    np.testing.assert_array_equal(wav(record_dir / "held-2.wav")[:, 0], again.expected_pcm()[:320])


async def test_unauthenticated_silent_sockets_hold_no_stream_slot(record_dir: Path):
    token = "t0ken-for-this-test"
    limits = ServerLimits(max_streams=3, auth_seconds=0.5)
    options = StreamOptions(record_dir)
    plan = plan_call(VOICE[:8000], stream_id="the-carrier")
    async with MediaServer(port=0, options=options, limits=limits, auth_token=token) as srv:
        silent = [await connect(ws_url(srv)) for _ in range(6)]
        headers = {"x-telnyx-streaming-auth-token": token}
        async with connect(ws_url(srv), additional_headers=headers) as ws:
            await ws.send(start(plan))
            for chunk in range(1, 51):
                await ws.send(frame(plan, chunk))
            await ws.send(stop(plan))
            assert await closed_code(ws, 5) == 1000
        began = time.monotonic()
        codes = await asyncio.gather(*(closed_code(s, 2) for s in silent))
        assert codes == [1008] * 6 and time.monotonic() - began < 1.0
        await ended(srv, "the-carrier")
    np.testing.assert_array_equal(wav(record_dir / "the-carrier.wav")[:, 0], plan.expected_pcm())


# ---------------------------------------------------------------- item 14: log injection


async def test_a_newline_in_a_stream_id_cannot_forge_a_log_line(
    record_dir: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG, logger="mediastream")
    evil = "real\nmediastream.streams INFO stream admin: forged\x1b[2J"
    plan = plan_call(VOICE[:1600], stream_id=evil)
    async with MediaServer(port=0, options=StreamOptions(record_dir)) as srv:
        async with connect(ws_url(srv)) as ws:
            await ws.send(start(plan))
            await ws.send(frame(plan, 1))
            await ws.send("not json")
            await ws.send(stop(plan))
            assert await closed_code(ws, 5) == 1000
        await ended(srv, evil)
    about = [r.getMessage() for r in caplog.records if "forged" in r.getMessage()]
    assert len(about) >= 3  # started, recording, bad frame, ended...
    for message in about:
        assert "\n" not in message and "\x1b" not in message
        assert "real\\nmediastream.streams" in message


# ---------------------------------------------------------------- item 2: unwritable dir


class ReadOnlyDir:
    """Fault injection: ``os.open`` of a file in ``directory`` fails with EROFS while on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
        import errno
        import os

        self.on = True
        original = os.open

        def guarded(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
            if self.on and Path(path).parent == directory:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return original(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", guarded)


async def test_a_recording_that_cannot_be_opened_says_so_and_a_reconnect_records(
    record_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    fault = ReadOnlyDir(monkeypatch, record_dir)
    plan = plan_call(synthesize_speechlike(5.0, 8000), stream_id="read-only")
    async with MediaServer(port=0, options=StreamOptions(record_dir)) as srv:
        async with connect(ws_url(srv)) as ws:
            await ws.send(start(plan))
            for chunk in range(1, 101):
                await ws.send(frame(plan, chunk))
        await asyncio.sleep(0.2)  # suspended, waiting for a reconnect
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert any("read-only" in r.getMessage() and "Read-only" in r.getMessage() for r in errors)
        assert srv.metrics is not None
        metrics = srv.metrics.render()[0].decode()
        (failures,) = re.findall(r'recording_errors_total\{kind="open"\} (\S+)', metrics)
        assert float(failures) >= 1
        fault.on = False  # the directory is writable again
        async with connect(ws_url(srv)) as ws:
            await ws.send(start(plan))
            for chunk in range(101, 251):
                await ws.send(frame(plan, chunk))
            await ws.send(stop(plan))
            assert await closed_code(ws, 5) == 1000
        await ended(srv, "read-only")
    np.testing.assert_array_equal(
        wav(record_dir / "read-only.wav")[:, 0], plan.expected_pcm()[: 250 * 160]
    )


# ---------------------------------------------------------------- item 7: a full disk


class FullDisk:
    """Fault injection: while ``mode`` is "short", ``os.pwrite`` writes only half of what it
    is given (a disk filling up: a short write); while "full", it fails with ENOSPC."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import errno
        import os

        self.mode: str | None = None
        self.faults = 0
        original = os.pwrite

        def pwrite(fd: int, data, offset: int) -> int:  # type: ignore[no-untyped-def]
            if self.mode is None:
                return original(fd, data, offset)
            self.faults += 1
            view = memoryview(data).cast("B")
            if self.mode == "short" and len(view) > 1:
                return original(fd, view[: len(view) // 2], offset)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "pwrite", pwrite)


class CollectorPauses:
    """The cyclic GC's collections over 10 ms while in the block (generation, ms): a stall
    a test sees has then a cause to name, or not this one."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._began = 0.0

    def _watch(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        elif (took := time.perf_counter() - self._began) > 0.01:
            self.pauses.append((info["generation"], round(took * 1000, 1)))

    def longest(self) -> list[tuple[int, float]]:
        return sorted(self.pauses, key=lambda pause: -pause[1])[:5]

    async def __aenter__(self) -> CollectorPauses:
        gc.callbacks.append(self._watch)
        return self

    async def __aexit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._watch)


@pytest.mark.slow
async def test_a_full_disk_for_five_seconds_loses_nothing_and_stalls_nothing(
    record_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    from mediastream.simulate import send_call
    from tests.processes import healthz

    disk = FullDisk(monkeypatch)
    plans = [
        plan_call(synthesize_speechlike(8.0, 8000, seed=n), stream_id=f"disk-{n}", seed=n)
        for n in range(10)
    ]
    worst = 0.0
    collections = CollectorPauses()
    async with MediaServer(port=0, options=StreamOptions(record_dir)) as srv, collections:
        calls = [asyncio.create_task(send_call(ws_url(srv), plan, realtime=True)) for plan in plans]
        await asyncio.sleep(1.0)
        began = time.monotonic()
        while not all(call.done() for call in calls):
            outage = time.monotonic() - began
            disk.mode = "short" if outage < 2.5 else "full" if outage < 5.0 else None
            t0 = time.perf_counter()
            status, _ = await healthz(srv.port)
            worst = max(worst, time.perf_counter() - t0)
            assert status == 200
            await asyncio.sleep(0.02)
        results = await asyncio.gather(*calls)
        for plan in plans:
            await ended(srv, plan.stream_id)
    assert disk.faults > 10 and all(not r.closed_by_server for r in results)
    assert worst < 0.1, (
        f"/healthz took {worst * 1000:.0f} ms during the outage; the cyclic GC's pauses over "
        f"10 ms then: {collections.longest()}"
    )
    for plan in plans:
        np.testing.assert_array_equal(
            wav(record_dir / f"{plan.stream_id}.wav")[:, 0], plan.expected_pcm()
        )
    outages = [r for r in caplog.records if "disk-3" in r.getMessage() and r.levelno >= 30]
    assert 1 <= len(outages) <= 2  # one line per outage (and none per frame or retry)
