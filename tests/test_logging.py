"""What the logs say by default: one line per stream start and end, warnings, nothing per socket.

Real servers on 127.0.0.1 and ``caplog``; the demo runs as a subprocess, as a newcomer runs it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect

from mediastream import MediaServer, StreamHandler, StreamOptions
from mediastream.media.playback import Playback, PlaybackConfig, Player
from mediastream.runtime.lifecycle import StreamState
from mediastream.server.asgi import MediaApp
from mediastream.simulate import CallPlan, plan_call, synthesize_speechlike
from tests.conftest import REPO, ws_url

VOICE = synthesize_speechlike(2.0, 8000)
SUMMARY = re.compile(
    r"stream (?P<id>\S+): ended after [\d.]+ s: (?P<audio>[\d.]+) s of audio, (?P<frames>\d+) "
    r"frames(?: over (?P<sockets>\d+) sockets)? \(lost (?P<lost>\d+), reordered "
    r"(?P<reordered>\d+), late (?P<late>\d+)\); recorded (?P<path>\S+) \((?P<file>[\d.]+) s\)"
)


def media(plan: CallPlan, chunk: int) -> str:
    payload = base64.b64encode(plan.payloads["inbound"][chunk - 1]).decode()
    body = {"track": "inbound", "chunk": str(chunk), "timestamp": str((chunk - 1) * 20),
            "payload": payload}  # fmt: skip
    return json.dumps({"event": "media", "stream_id": plan.stream_id, "media": body})


async def send_socket(url: str, plan: CallPlan, chunks: list[int], *, stop: bool) -> None:
    """One socket of ``plan``: ``start``, the media ``chunks`` in this order, maybe ``stop``;
    then a normal close (1000)."""
    async with connect(url) as ws:
        await ws.send(json.dumps(plan.start_frame()))
        for chunk in chunks:
            await ws.send(media(plan, chunk))
        if stop:
            await ws.send(json.dumps(plan.stop_frame(9999)))
            await ws.wait_closed()


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def summaries(caplog: pytest.LogCaptureFixture) -> list[re.Match[str]]:
    lines = [r for r in caplog.records if r.name == "mediastream.runtime.registry"]
    found = [(r, SUMMARY.search(r.getMessage())) for r in lines]
    assert all(r.levelno == logging.INFO for r, m in found if m), "the end line is INFO"
    return [m for _, m in found if m]


async def test_one_end_line_per_stream_summed_over_its_sockets(
    record_dir: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO)
    async with MediaServer(port=0, options=StreamOptions(record_dir)) as srv:
        url = ws_url(srv)
        # two sockets: 1..30 with 10/11 swapped, closed without stop (suspended), then a
        # resume with 31..60 missing 40 and 45/46 swapped, and stop
        two = plan_call(VOICE[: 60 * 160], stream_id="two-sockets")
        first = [*range(1, 10), 11, 10, *range(12, 31)]
        await send_socket(url, two, first, stop=False)
        await wait_for(lambda: srv.registry.get("two-sockets").state is StreamState.SUSPENDED)
        second = [*range(31, 40), *range(41, 45), 46, 45, *range(47, 61)]
        await send_socket(url, two, second, stop=True)
        # one socket: chunk 5 comes after its slot was given up (late), 15 never comes
        late = plan_call(VOICE[: 20 * 160], stream_id="late-frame")
        order = [*range(1, 5), *range(6, 15), 5, *range(16, 21)]  # 5 after 9 later ones
        await send_socket(url, late, order, stop=True)
        await wait_for(lambda: not len(srv.registry))
    found = {m["id"]: m for m in summaries(caplog)}
    assert len(summaries(caplog)) == 2 and set(found) == {"two-sockets", "late-frame"}
    two_line = found["two-sockets"]
    assert two_line["sockets"] == "2"
    assert (two_line["frames"], two_line["lost"], two_line["reordered"], two_line["late"]) == (
        "59", "1", "2", "0",
    )  # fmt: skip
    assert two_line["audio"] == two_line["file"] == "1.20"
    assert Path(two_line["path"]) == record_dir / "two-sockets.wav"
    late_line = found["late-frame"]
    assert late_line["sockets"] is None  # one socket: not said
    # the late frame is counted as lost too (handlers got silence), and then late
    assert (late_line["frames"], late_line["lost"], late_line["late"]) == ("19", "2", "1")
    assert late_line["audio"] == late_line["file"] == "0.40"
    # the per-socket lines are debug now
    assert not [r for r in caplog.records if r.levelno == logging.INFO
                and re.search(r"socket ended|recording to|kept \d+ s for a reconnect",
                              r.getMessage())]  # fmt: skip


@pytest.mark.slow
def test_demo_prints_a_few_lines_with_the_start_and_the_end(tmp_path: Path):
    out = subprocess.run(
        [sys.executable, "-m", "mediastream", "demo", "--record-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=90, check=True,
    )  # fmt: skip
    lines = (out.stdout + out.stderr).splitlines()
    assert any("demo-call: started from" in line for line in lines), lines
    assert sum("demo-call: ended after" in line for line in lines) == 1, lines
    assert not [line for line in lines if "websockets" in line or " DEBUG " in line], lines
    # the demo's own two lines (where it sends, what it wrote), the start and the end; it was
    # 13 lines (websockets' and per-socket ones), then 6 (the "unsigned callbacks" warning,
    # about a route the demo does not serve, and the file's length on a line of its own)
    assert len(lines) <= 4, lines
    logged = [line for line in lines if re.search(r" (INFO|WARNING|ERROR) ", line)]
    assert len(logged) == 2 and not [line for line in logged if " INFO " not in line], lines
    assert sum(line.startswith("recorded ") and "identical" in line for line in lines) == 1


@pytest.mark.slow
def test_debug_level_shows_websockets_lines(tmp_path: Path):
    out = subprocess.run(
        [sys.executable, "-m", "mediastream", "--log-level", "debug", "demo", "--record-dir",
         str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=90, check=True,
    )  # fmt: skip
    assert "websockets.server: connection open" in out.stderr
    assert "demo-call: socket ended (stop)" in out.stderr


class PlayMp3s(StreamHandler):
    """Queues several MP3 playbacks at start: the caller hangs up in the middle of them."""

    playbacks: ClassVar[list[Playback]] = []

    async def on_start(self) -> None:
        clip = synthesize_speechlike(1.0, 8000, seed=2)
        for _ in range(4):
            PlayMp3s.playbacks.append(await self.call.play(clip, 8000))


async def test_hang_up_during_mp3_playback_is_not_an_error(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG, logger="mediastream")
    PlayMp3s.playbacks = []
    options = StreamOptions(playback=PlaybackConfig(mode="mp3", sample_rate=8000))
    async with MediaServer(PlayMp3s, port=0, options=options) as srv:
        plan = plan_call(VOICE[:1600], stream_id="hang-up")
        ws = await connect(ws_url(srv))
        await ws.send(json.dumps(plan.start_frame()))
        for chunk in range(1, 11):
            await ws.send(media(plan, chunk))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["event"] == "media"
        # the caller hangs up (close 1000, no stop) and is slow to close its TCP side: for
        # that while the server's socket is closing, and the next MP3 (1.1 s after the first)
        # finds it closed
        ws.transport.pause_reading()
        ws.protocol.send_close(1000, "bye")
        ws.send_data()
        await asyncio.sleep(1.5)
        ws.transport.abort()
        results = [await asyncio.wait_for(p.finished(), 5) for p in PlayMp3s.playbacks]
    stopped = [r for r in caplog.records if "socket closed during playback" in r.getMessage()]
    assert len(stopped) == 1 and stopped[0].levelno == logging.DEBUG  # the hang-up was seen
    assert results == [False] * 4  # not heard to the end; no exception for a hang-up
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


async def test_a_socket_that_stops_draining_is_still_an_error(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="mediastream.media.playback")
    never = asyncio.Event()

    async def stuck_send(text: str) -> None:
        await never.wait()

    failures: list[Exception] = []

    async def on_failure(error: Exception) -> None:
        failures.append(error)

    player = Player(stuck_send, PlaybackConfig(send_timeout=0.2), stream_id="stuck",
                    on_failure=on_failure)  # fmt: skip
    playback = await player.play(np.zeros(1600, np.int16), 8000)
    with pytest.raises(Exception, match=r"did not take a frame within 0\.2 s"):
        await asyncio.wait_for(playback.finished(), 5)
    await player.close()
    assert failures and [r.levelno for r in caplog.records] == [logging.ERROR]


async def test_asgi_app_answers_healthz():
    media = MediaApp(metrics=False)
    transport = httpx.ASGITransport(app=media)
    async with httpx.AsyncClient(transport=transport, base_url="http://media") as client:
        response = await client.get("/healthz")
    assert response.status_code == 200
    instance = media.config.instance_id
    assert response.json() == {"status": "ok", "streams": 0, "instance": instance}
