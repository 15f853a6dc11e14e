"""``MediaCore`` driven with a fake transport and no socket: the stream lifecycle's paths
(reconnect, grace expiry, the same-id policy, a recording that cannot be opened, a drain with
a stuck handler), checked on the recordings they leave, sample for sample."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import soundfile

from mediastream.config import Config, ServerLimits, StreamOptions
from mediastream.runtime.connection import StreamConnection
from mediastream.runtime.core import HttpRequest, MediaCore, Refusal
from mediastream.runtime.handler import AudioFrame, StreamHandler
from mediastream.runtime.lifecycle import CLOSE_POLICY, StreamState
from mediastream.simulate import CallPlan, plan_call, synthesize_speechlike
from tests.runtime.helpers import FakeTransport, feed, open_socket

VOICE = synthesize_speechlike(4.0, 8000)


def frame(plan: CallPlan, chunk: int) -> str:
    media = {
        "track": "inbound",
        "chunk": str(chunk),
        "timestamp": str((chunk - 1) * 20),
        "payload": base64.b64encode(plan.payloads["inbound"][chunk - 1]).decode(),
    }
    return json.dumps({"event": "media", "stream_id": plan.stream_id, "media": media})


def wav(path: Path) -> np.ndarray:
    data, _ = soundfile.read(path, dtype="int16", always_2d=True)
    return data[:, 0]


class Log(StreamHandler):
    made: ClassVar[list[Log]] = []
    events: list[str]

    def __init__(self) -> None:
        self.events = []
        Log.made.append(self)

    async def on_start(self) -> None:
        self.events.append("start")

    async def on_reconnect(self) -> None:
        self.events.append("reconnect")

    async def on_stop(self) -> None:
        self.events.append("stop")


@pytest.fixture(autouse=True)
def _fresh_log() -> None:
    Log.made = []


def make_core(record_dir: Path, handler: type[StreamHandler] = Log, **stream: object) -> MediaCore:
    options = StreamOptions(record_dir, **stream)  # type: ignore[arg-type]
    return MediaCore(handler, Config(stream=options, limits=ServerLimits(max_streams=100)))


async def test_a_reconnect_continues_the_stream_handler_and_file(record_dir: Path):
    plan = plan_call(VOICE, stream_id="again")
    core = make_core(record_dir)
    await core.start()
    first, _ = await open_socket(core)
    assert await feed(core, first, json.dumps(plan.start_frame()))
    assert await feed(core, first, *(frame(plan, c) for c in range(1, 51)))
    await core.finish(first)  # closed without stop
    stream = core.registry.get("again")
    assert stream is not None and stream.state is StreamState.SUSPENDED
    second, _ = await open_socket(core)
    assert await feed(core, second, json.dumps(plan.start_frame()))
    assert stream.state is StreamState.LIVE and stream.owner is second
    await feed(core, second, *(frame(plan, c) for c in range(51, 101)))
    assert not await feed(core, second, json.dumps(plan.stop_frame(100)))
    await core.finish(second)
    assert stream.state is StreamState.ENDED
    assert [h.events for h in Log.made] == [["start", "reconnect", "stop"]]
    np.testing.assert_array_equal(wav(record_dir / "again.wav"), plan.expected_pcm()[:16000])
    await core.shutdown()


async def test_grace_expiry_ends_the_stream_and_finalizes_its_file(record_dir: Path):
    plan = plan_call(VOICE, stream_id="expires")
    core = make_core(record_dir, resume_grace_seconds=0.2)
    await core.start()
    connection, _ = await open_socket(core)
    await feed(
        core, connection, json.dumps(plan.start_frame()), *(frame(plan, c) for c in range(1, 26))
    )
    await core.finish(connection)
    stream = core.registry.get("expires")
    assert stream is not None and stream.state is StreamState.SUSPENDED
    for _ in range(100):  # ended, then finalized (its files written in threads), then on_stop
        if Log.made[0].events[-1] == "stop":
            break
        await asyncio.sleep(0.02)
    assert stream.state is StreamState.ENDED and "expires" not in core.registry
    assert Log.made[0].events == ["start", "stop"]
    np.testing.assert_array_equal(wav(record_dir / "expires.wav"), plan.expected_pcm()[:4000])
    await core.shutdown()


async def test_a_second_socket_is_refused_while_the_owner_keeps_sending(record_dir: Path):
    plan = plan_call(VOICE, stream_id="contested")
    core = make_core(record_dir, takeover_seconds=0.3)
    await core.start()
    owner, _ = await open_socket(core)
    await feed(core, owner, json.dumps(plan.start_frame()))
    newcomer, _ = await open_socket(core)
    claim = asyncio.create_task(core.receive(newcomer, json.dumps(plan.start_frame())))
    for chunk in range(1, 41):  # the owner sends on, every 20 ms
        await feed(core, owner, frame(plan, chunk))
        await asyncio.sleep(0.02)
    assert await claim is False
    assert newcomer.close_code == CLOSE_POLICY
    assert core.registry.get("contested").owner is owner  # type: ignore[union-attr]
    await core.finish(newcomer)
    await feed(core, owner, json.dumps(plan.stop_frame(40)))
    await core.finish(owner)
    np.testing.assert_array_equal(wav(record_dir / "contested.wav"), plan.expected_pcm()[:6400])
    await core.shutdown()


async def test_a_silent_owner_is_taken_over_and_the_audio_does_not_interleave(record_dir: Path):
    plan = plan_call(VOICE, stream_id="taken")
    core = make_core(record_dir, takeover_seconds=0.2)
    await core.start()
    owner, owner_transport = await open_socket(core)
    await feed(core, owner, json.dumps(plan.start_frame()), *(frame(plan, c) for c in range(1, 31)))
    newcomer, _ = await open_socket(core)
    claim = asyncio.create_task(core.receive(newcomer, json.dumps(plan.start_frame())))
    for _ in range(100):  # the core closes the silent owner; its adapter then finishes it
        if owner_transport.closed is not None:
            break
        await asyncio.sleep(0.02)
    assert owner_transport.closed == (CLOSE_POLICY, "stream taken over by a newer socket")
    await core.finish(owner)
    assert await claim is True
    stream = core.registry.get("taken")
    assert stream is not None and stream.owner is newcomer
    await feed(core, newcomer, *(frame(plan, c) for c in range(31, 61)))
    await feed(core, newcomer, json.dumps(plan.stop_frame(60)))
    await core.finish(newcomer)
    assert Log.made[0].events == ["start", "reconnect", "stop"]
    np.testing.assert_array_equal(wav(record_dir / "taken.wav"), plan.expected_pcm()[:9600])
    await core.shutdown()


async def test_a_recording_that_fails_to_open_is_logged_and_a_reconnect_records(
    record_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    from mediastream.runtime import registry

    plan = plan_call(VOICE, stream_id="unopened")
    real = registry.open_recording
    failing = {"on": True}

    def open_recording(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        if failing["on"]:
            raise RuntimeError("injected: cannot make a recorder")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(registry, "open_recording", open_recording)
    core = make_core(record_dir)
    await core.start()
    first, _ = await open_socket(core)
    assert await feed(
        core, first, json.dumps(plan.start_frame()), *(frame(plan, c) for c in range(1, 51))
    )
    stream = core.registry.get("unopened")
    assert stream is not None and stream.recorder is None and stream.state is StreamState.LIVE
    assert any(
        "cannot record" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records
    )
    await core.finish(first)
    failing["on"] = False
    second, _ = await open_socket(core)
    await feed(
        core, second, json.dumps(plan.start_frame()), *(frame(plan, c) for c in range(51, 101))
    )
    await feed(core, second, json.dumps(plan.stop_frame(100)))
    await core.finish(second)
    # what came before the recorder existed was never given to one: it starts at frame 51
    got = wav(record_dir / "unopened.wav")
    np.testing.assert_array_equal(got[8000:], plan.expected_pcm()[8000:16000])
    assert not got[:8000].any()  # silence where nothing could be recorded
    await core.shutdown()


class Stuck(StreamHandler):
    """Never returns from ``on_audio`` once frame 20 came, and ignores nothing else."""

    async def on_audio(self, frame: AudioFrame) -> None:
        if frame.position >= 19 * 160:
            await asyncio.Event().wait()


async def test_a_drain_with_a_stuck_handler_is_bounded_and_keeps_the_audio(record_dir: Path):
    plan = plan_call(VOICE, stream_id="stuck")
    options = StreamOptions(record_dir, handler_stop_seconds=0.2)
    limits = ServerLimits(drain_seconds=0.3)
    core = MediaCore(Stuck, Config(stream=options, limits=limits))
    await core.start()
    opened: list[tuple[StreamConnection, FakeTransport]] = []

    async def reader() -> None:  # what an adapter's task does for one socket
        connection, transport = await open_socket(core)  # accepted in the task that reads
        opened.append((connection, transport))
        try:
            await feed(core, connection, json.dumps(plan.start_frame()))
            await feed(core, connection, *(frame(plan, c) for c in range(1, 41)))
        except asyncio.CancelledError:
            if not core.was_stopped(connection):
                raise
        finally:
            await core.finish(connection)

    task = asyncio.create_task(reader())
    await asyncio.sleep(0.2)
    assert core.health().status == 200
    draining = asyncio.create_task(core.drain())
    await asyncio.sleep(0.05)
    assert core.health().status == 503  # a load balancer sees the drain
    assert isinstance(core.accept("late:1", {}, FakeTransport()), Refusal)
    await asyncio.wait_for(draining, 3)
    assert task.done() and opened[0][1].closed is not None
    # the 19 frames the handler finished and the one it was stuck in are all recorded
    got = wav(record_dir / "stuck.wav")
    assert len(got) >= 20 * 160
    np.testing.assert_array_equal(got, plan.expected_pcm()[: len(got)])
    assert (await core.http(HttpRequest("GET", "/healthz"))).status == 503


class _Node:
    """An object the cyclic GC tracks (it can hold a reference to itself)."""

    def __init__(self) -> None:
        self.me: _Node | None = None


async def test_every_start_collects_then_freezes_what_came_before(record_dir: Path):
    """Start-up objects made since the last start are frozen (full collections never walk
    them), and garbage cycles among them are freed first, not frozen; a process that starts
    servers again (a reload, a test suite) gets the same as its first start."""
    import gc
    import weakref

    for _ in range(2):  # a first start in the process, then another
        live = _Node()
        cycle = _Node()
        cycle.me = cycle  # garbage only a collection frees
        freed = weakref.ref(cycle)
        del cycle
        assert any(obj is live for obj in gc.get_objects())
        core = make_core(record_dir)
        await core.start()
        try:
            assert freed() is None
            assert not any(obj is live for obj in gc.get_objects())  # frozen: not walked
        finally:
            await core.shutdown()
