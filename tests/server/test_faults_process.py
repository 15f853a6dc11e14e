"""Faults of a whole ``mediastream serve`` process: stuck handlers at SIGTERM, a first G.722
stream on a cold kernel cache, and a file descriptor limit far below the stream limit."""

from __future__ import annotations

import asyncio
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from mediastream.simulate import plan_call, send_call, synthesize_speechlike
from tests.processes import REPO, env, healthz
from tests.server.test_faults import closed_code, frame, start

VOICE = synthesize_speechlike(3.0, 8000)

HANDLERS = """
import asyncio
from mediastream import StreamHandler


class StuckStop(StreamHandler):
    async def on_stop(self):
        await asyncio.Event().wait()  # never returns


class StuckAudio(StreamHandler):
    async def on_audio(self, frame):
        if frame.timestamp_ms >= 1000:
            await asyncio.Event().wait()
"""


def serve(
    *args: str, environ: dict[str, str] | None = None, log_level: str = "info", **popen: object
):
    """``mediastream serve --port 0 ...``: (process, port, its output lines, read by a thread
    so that the server never blocks on a full pipe)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mediastream", "--log-level", log_level, "serve", "--port", "0",
         *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
        env=environ or env(), **popen,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    listening = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if re.search(r"listening on ws://[\d.]+:(\d+)/", line):
                listening.set()
        listening.set()

    threading.Thread(target=read, daemon=True).start()
    listening.wait(90)
    for line in lines:
        if match := re.search(r"listening on ws://[\d.]+:(\d+)/", line):
            return proc, int(match[1]), lines
    proc.kill()
    raise RuntimeError("server did not start:\n" + "".join(lines))


def finish(proc: subprocess.Popen[str], lines: list[str], timeout: float) -> tuple[int, str]:
    proc.wait(timeout=timeout)
    time.sleep(0.1)  # the reader thread takes the last lines
    return proc.returncode, "".join(lines)


def serve_stuck(tmp_path: Path, handler: str):
    """``serve`` with one of ``HANDLERS``, recording, and a 1 s drain."""
    (tmp_path / "stuck.py").write_text(HANDLERS)
    record_dir = tmp_path / "rec"
    proc, port, lines = serve(
        "--handler", f"{tmp_path / 'stuck.py'}:{handler}", "--record-dir", str(record_dir),
        "--drain-seconds", "1",
    )  # fmt: skip
    return proc, port, lines, record_dir


@pytest.mark.slow
async def test_sigterm_with_a_handler_stuck_in_on_stop_exits_0_with_the_recording(
    tmp_path: Path,
):
    proc, port, lines, record_dir = serve_stuck(tmp_path, "StuckStop")
    try:
        plan = plan_call(VOICE, stream_id="stuck-stop")
        await send_call(f"ws://127.0.0.1:{port}/", plan)  # on_stop now hangs forever
        await asyncio.sleep(0.5)
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code, output = await asyncio.to_thread(finish, proc, lines, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, output
    assert time.monotonic() - began < 10
    assert "StuckStop.on_stop was still running at the end of the drain; cancelled" in output
    data, _ = soundfile.read(record_dir / "stuck-stop.wav", dtype="int16")
    np.testing.assert_array_equal(data, plan.expected_pcm())


@pytest.mark.slow
async def test_sigterm_with_a_handler_stuck_in_on_audio_keeps_every_frame(tmp_path: Path):
    proc, port, lines, record_dir = serve_stuck(tmp_path, "StuckAudio")
    plan = plan_call(VOICE, stream_id="stuck-audio")
    try:
        async with connect(f"ws://127.0.0.1:{port}/") as ws:
            await ws.send(start(plan))
            for chunk in range(1, 91):  # the handler sticks at frame 51 (1 s)
                await ws.send(frame(plan, chunk))
            await asyncio.sleep(0.5)
            began = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert await closed_code(ws, 15) is not None
        code, output = await asyncio.to_thread(finish, proc, lines, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, output
    assert time.monotonic() - began < 10
    assert "StuckAudio.on_audio was still running at the end of the drain; cancelled" in output
    data, _ = soundfile.read(record_dir / "stuck-audio.wav", dtype="int16")
    np.testing.assert_array_equal(data, plan.expected_pcm()[: 90 * 160])


@pytest.mark.slow
async def test_the_first_g722_stream_on_a_cold_cache_stalls_no_call(tmp_path: Path):
    environ = {**env(), "NUMBA_CACHE_DIR": str(tmp_path / "cold-numba-cache")}
    t0 = time.monotonic()
    # "codecs ready" is a debug line
    proc, port, lines = serve("--record-dir", str(tmp_path / "rec"), environ=environ,
                              log_level="debug")  # fmt: skip
    startup = time.monotonic() - t0
    try:
        url = f"ws://127.0.0.1:{port}/"
        worst = 0.0
        done = asyncio.Event()

        async def probe() -> None:
            nonlocal worst
            while not done.is_set():
                began = time.perf_counter()
                status, _ = await healthz(port)
                assert status == 200
                worst = max(worst, time.perf_counter() - began)
                await asyncio.sleep(0.01)

        prober = asyncio.create_task(probe())
        await asyncio.sleep(0.2)
        g722 = plan_call(synthesize_speechlike(1.0, 16000), codec="G722", stream_id="first-g722")
        result = await send_call(url, g722)
        await asyncio.sleep(0.2)
        done.set()
        await prober
        proc.send_signal(signal.SIGTERM)
        code, output = await asyncio.to_thread(finish, proc, lines, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0 and not result.closed_by_server, output
    match = re.search(r"codecs ready in ([\d.]+) s \(.*G722 ([\d.]+) s", output)
    assert match, output  # the start-up cost is reported, and paid before listening
    assert float(match[2]) < startup
    assert worst < 0.1, f"/healthz took {worst * 1000:.0f} ms while the first G.722 call ran"
    data, rate = soundfile.read(tmp_path / "rec" / "first-g722.wav", dtype="int16")
    assert rate == 16000
    np.testing.assert_array_equal(data, g722.expected_pcm())


def low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


@pytest.mark.slow
async def test_a_low_file_descriptor_limit_bounds_streams_instead_of_failing_accept(
    tmp_path: Path,
):
    record_dir = tmp_path / "rec"
    proc, port, lines = serve(
        "--record-dir", str(record_dir), "--resume-grace", "3", preexec_fn=low_fd_limit
    )
    try:
        url = f"ws://127.0.0.1:{port}/"
        refused = 0

        async def hold(n: int) -> None:
            """A socket that starts a stream and leaves without stop: suspended, file open."""
            nonlocal refused
            plan = plan_call(VOICE[:800], stream_id=f"held-{n}")
            try:
                async with connect(url, open_timeout=10) as ws:
                    await ws.send(start(plan))
                    await ws.send(frame(plan, 1))
                    await asyncio.sleep(0.3)
            except InvalidStatus as exc:
                assert exc.response.status_code == 503
                refused += 1

        await asyncio.gather(*(hold(n) for n in range(150)))
        began = time.perf_counter()
        status, _ = await healthz(port)
        assert status == 200 and time.perf_counter() - began < 1.0
        assert refused >= 150 - (256 - 64) // 2
        await asyncio.sleep(3.5)  # the suspended streams expire and close their files
        plan = plan_call(VOICE, stream_id="after-the-flood")
        result = await send_call(url, plan)
        assert not result.closed_by_server
        proc.send_signal(signal.SIGTERM)
        code, output = await asyncio.to_thread(finish, proc, lines, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, output
    assert "Too many open files" not in output and "Traceback" not in output
    assert "file descriptor limit allows 96 streams" in output
    data, _ = soundfile.read(record_dir / "after-the-flood.wav", dtype="int16")
    np.testing.assert_array_equal(data, plan.expected_pcm())
    kept = [p for p in record_dir.glob("*.wav") if p.name.startswith("held-")]
    assert len(kept) == 150 - refused  # every accepted stream has its file
