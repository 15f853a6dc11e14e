"""``serve --workers N``: real processes on one port, restarts, drain, per-worker recordings."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import soundfile

from mediastream import MediaServer, StreamHandler, StreamOptions
from mediastream.media import recording
from mediastream.media.recording import (
    WavFile,
    WavRecorder,
    open_recording,
    recover_recordings,
    recover_wav,
    wavfile,
)
from mediastream.simulate import CallPlan, CallResult, plan_call, send_call, synthesize_speechlike
from tests.conftest import ws_url
from tests.processes import REPO, env, healthz
from tests.server.test_resilience import media_texts, send_frames

READY_LINE = re.compile(r"listening on ws://[\d.]+:(\d+)/.*\((\d+) workers\)")
STREAM_ON_WORKER = re.compile(
    r"\[worker (\d+)\] mediastream\.runtime\.connection: stream (\S+): started from"
)
RESTARTED = re.compile(r"worker (\d+) restarted, listening \(pid (\d+)\)")


class Supervised:
    """A ``serve --workers N`` process tree; its output is read by a thread as it comes."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mediastream", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(), cwd=REPO,
        )  # fmt: skip
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = int(self.wait_for(READY_LINE, timeout=60).group(1))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 20) -> re.Match[str]:
        """The first output line matching ``pattern``, waiting for it."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if match := pattern.search(line):
                        return match
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no {pattern.pattern!r} in:\n{self.output()}")
                self._changed.wait(min(left, 0.5))

    def output(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def worker_pids(self) -> set[int]:
        return {int(p) for p in re.findall(r"\(pid (\d+)\)", self.output())}

    def stream_workers(self) -> dict[str, int]:
        """Stream id -> pid of the worker that took it, from the workers' start lines."""
        return {m.group(2): int(m.group(1)) for m in STREAM_ON_WORKER.finditer(self.output())}

    def terminate(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill_all(self) -> None:
        """Every process of the tree, whatever state the test left it in."""
        pids = self.worker_pids()
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(10)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self._reader.join(10)


@contextlib.contextmanager
def supervised(*args: str) -> Iterator[Supervised]:
    server = Supervised(*args)
    try:
        yield server
    finally:
        server.kill_all()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def assert_recorded(record_dir: Path, plan: CallPlan) -> None:
    data, rate = soundfile.read(record_dir / f"{plan.stream_id}.wav", dtype="int16")
    assert rate == plan.sample_rate
    np.testing.assert_array_equal(data, plan.expected_pcm(), err_msg=plan.stream_id)


def realtime_calls(url: str, plans: list[CallPlan]) -> list[asyncio.Task[CallResult]]:
    return [asyncio.create_task(send_call(url, plan, realtime=True)) for plan in plans]


async def wait_until_recording(server: Supervised, plans: list[CallPlan]) -> dict[str, int]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        where = server.stream_workers()
        if all(p.stream_id in where for p in plans):
            return where
        await asyncio.sleep(0.05)
    raise AssertionError(f"not every call started:\n{server.output()}")


# ---------------------------------------------------------------- processes


@pytest.mark.slow
@pytest.mark.both_transports
async def test_two_workers_record_200_calls_sample_exactly(tmp_path: Path, transport: str):
    from mediastream.simulate import simulate

    record_dir = tmp_path / "rec"
    voice = synthesize_speechlike(1.0, 8000)
    args = ("--workers", "2", "--record-dir", str(record_dir), "--transport", transport)
    with supervised(*args) as server:
        assert len(server.worker_pids()) == 2
        results = await simulate(
            f"ws://127.0.0.1:{server.port}/", voice, calls=200, stream_id="many", shuffle_window=5
        )
        assert server.terminate() == 0
        where = server.stream_workers()
    assert not any(r.closed_by_server for r in results)
    assert len(where) == 200
    served = {pid: sum(1 for p in where.values() if p == pid) for pid in set(where.values())}
    assert len(served) == 2, served  # the kernel spread the calls over both workers
    for result in results:
        assert_recorded(record_dir, result.plan)
    assert len(list(record_dir.glob("*.wav"))) == 200


@pytest.mark.slow
@pytest.mark.both_transports
async def test_sigkilled_worker_is_restarted_and_the_other_one_is_unaffected(
    tmp_path: Path, transport: str
):
    record_dir = tmp_path / "rec"
    voice = synthesize_speechlike(4.0, 8000)
    plans = [plan_call(voice, codec="PCMA", stream_id=f"kill-{i}", seed=i) for i in range(16)]
    args = ("--workers", "2", "--record-dir", str(record_dir), "--transport", transport)
    with supervised(*args) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        calls = realtime_calls(url, plans)
        where = await wait_until_recording(server, plans)
        await asyncio.sleep(1.0)
        assert len(set(where.values())) == 2, where  # calls live on both workers
        victim = where[plans[0].stream_id]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        index, new_pid = map(int, server.wait_for(RESTARTED, timeout=20).groups())
        assert new_pid != victim and alive(new_pid)
        assert f"worker {index} (pid {victim}) was killed by SIGKILL" in server.output()
        for _ in range(6):  # both listening sockets answer (the kernel picks one per connection)
            assert (await healthz(server.port))[0] == 200
        after = plan_call(voice[:8000], codec="PCMU", stream_id="after-restart")
        assert not (await send_call(url, after)).closed_by_server
        results = await asyncio.gather(*calls)
        assert server.terminate() == 0
    for plan, result in zip(plans, results, strict=True):
        if where[plan.stream_id] != victim:
            assert not result.closed_by_server
            assert_recorded(record_dir, plan)
            continue
        # the killed worker's calls: cut, but everything up to a second before the kill is
        # there and the file is valid (the restarted worker repaired its header)
        assert result.closed_by_server
        path = record_dir / f"{plan.stream_id}.wav"
        assert recover_wav(path) is False
        data, _ = soundfile.read(path, dtype="int16")
        before = sum(1 for t in result.send_times if t <= killed_at - 1.0)
        assert len(data) >= before * 160 > 0
        np.testing.assert_array_equal(data, plan.expected_pcm()[: len(data)])
    assert_recorded(record_dir, after)


@pytest.mark.slow
@pytest.mark.both_transports
async def test_sigterm_drains_live_calls_on_every_worker(tmp_path: Path, transport: str):
    record_dir = tmp_path / "rec"
    voice = synthesize_speechlike(3.0, 8000)
    plans = [plan_call(voice, codec="PCMU", stream_id=f"drain-{i}", seed=i) for i in range(16)]
    args = ("--workers", "2", "--record-dir", str(record_dir), "--drain-seconds", "20")
    args += ("--transport", transport)
    with supervised(*args) as server:
        calls = realtime_calls(f"ws://127.0.0.1:{server.port}/", plans)
        where = await wait_until_recording(server, plans)
        assert len(set(where.values())) == 2, where
        await asyncio.sleep(0.5)
        pids = server.worker_pids()
        server.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        status, body = await healthz(server.port)
        assert (status, body["status"]) == (503, "draining")
        results = await asyncio.gather(*calls)
        assert server.proc.wait(30) == 0
    assert not any(r.closed_by_server for r in results)
    for plan in plans:
        assert_recorded(record_dir, plan)
    assert not [pid for pid in pids if alive(pid)]
    output = server.output()
    assert output.count("exited with status 0") == 2 and "restart" not in output


def test_workers_refuse_a_port_someone_else_listens_on():
    import socket

    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # even a sharing one
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "mediastream", "serve", "--workers", "2", "--port", str(port)],
            capture_output=True, text=True, env=env(), cwd=REPO, timeout=30,
        )  # fmt: skip
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


# ---------------------------------------------------------------- a reconnect that hops


class EventLog(StreamHandler):
    events: ClassVar[list[str]] = []

    async def on_start(self) -> None:
        EventLog.events.append(f"start {id(self)}")

    async def on_reconnect(self) -> None:
        EventLog.events.append(f"reconnect {id(self)}")

    async def on_stop(self) -> None:
        EventLog.events.append(f"stop {id(self)}")


@pytest.mark.parametrize("restart_counters", [False, True])
async def test_a_reconnect_on_another_worker_is_a_new_session_in_a_new_file(
    tmp_path: Path, restart_counters: bool
):
    """What the README promises: two servers on one directory stand for two workers."""
    EventLog.events = []
    plan = plan_call(synthesize_speechlike(2.0, 8000), codec="PCMU", stream_id="hop")
    start = [json.dumps({"event": "connected", "version": "1.0.0"}), json.dumps(plan.start_frame())]
    options = {"resume_grace_seconds": 0.5}
    first = MediaServer(EventLog, port=0, options=StreamOptions(tmp_path, **options))
    other = MediaServer(EventLog, port=0, options=StreamOptions(tmp_path, **options))
    async with first, other:
        await send_frames(ws_url(first), start + media_texts(plan, 1, 40), stop=False)
        await asyncio.sleep(0.1)  # the socket dropped: ``first`` keeps the stream suspended
        second = media_texts(plan, 41, 100, restart_counters=restart_counters)
        stop = json.dumps(plan.stop_frame(200))
        await send_frames(ws_url(other), [*start, *second, stop], stop=True)
        assert len(first.registry) == 1  # still waiting for its own reconnect
        await asyncio.sleep(0.8)  # the grace period ends on ``first``
        assert len(first.registry) == 0
    kinds = [event.split()[0] for event in EventLog.events]
    assert kinds == ["start", "start", "stop", "stop"]  # two handlers, no on_reconnect
    assert len(set(event.split()[1] for event in EventLog.events)) == 2
    expected = plan.expected_pcm()
    before, _ = soundfile.read(tmp_path / "hop.wav", dtype="int16")
    after, _ = soundfile.read(tmp_path / "hop~2.wav", dtype="int16")
    np.testing.assert_array_equal(before, expected[: 40 * 160])
    if restart_counters:  # it starts at the reconnect
        np.testing.assert_array_equal(after, expected[40 * 160 :])
    else:  # aligned with the first file: silence where the first worker has the audio
        np.testing.assert_array_equal(after[: 40 * 160], 0)
        np.testing.assert_array_equal(after[40 * 160 :], expected[40 * 160 :])


# ---------------------------------------------------------------- files shared by workers


def tone(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-20000, 20000, n, dtype=np.int16)


class Frame:
    def __init__(self, pcm: np.ndarray, position: int) -> None:
        self.track, self.pcm, self.sample_rate, self.position = "inbound", pcm, 8000, position


def stale_header_file(path: Path) -> bytes:
    """What a killed writer leaves: audio on disk past what the header declares."""
    wav = WavFile(path, 8000)
    wav.write(0, tone(800, 1)[:, None])
    wav.close()
    with open(path, "ab") as f:
        f.write(tone(400, 2).tobytes())
    return path.read_bytes()


@contextlib.contextmanager
def locked_by_another_process(path: Path) -> Iterator[subprocess.Popen[str]]:
    """A process holding ``path`` open for writing, as a live worker does."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()",
         str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        yield holder
    finally:
        holder.kill()
        holder.wait(10)


def test_a_file_another_process_writes_is_neither_continued_nor_recovered(tmp_path: Path):
    path = tmp_path / "call.wav"
    before = stale_header_file(path)
    with locked_by_another_process(path) as holder:
        assert recover_recordings(tmp_path) == []
        assert path.read_bytes() == before
        with pytest.raises(recording.RecordingLocked):
            WavRecorder(path, 8000)
        rec = open_recording(tmp_path, "call", 8000, resume_within=60)  # recent, but not ours
        assert rec.path == tmp_path / "call~2.wav" and rec.frames_on_disk == 0
        rec.close()
        holder.kill()  # the writer crashed: the kernel drops its lock
        holder.wait(10)
        assert recover_recordings(tmp_path) == [path]
    data, _ = soundfile.read(path, dtype="int16")
    np.testing.assert_array_equal(data, np.concatenate([tone(800, 1), tone(400, 2)]))
    # and now a resume may continue it: the latest file of the stream, written just now
    os.utime(tmp_path / "call~2.wav", (0, 0))
    rec = open_recording(tmp_path, "call", 8000, resume_within=60)
    assert rec.path == path and rec.frames_on_disk == 1200
    rec.close()


async def test_two_recorders_of_one_stream_get_two_files(tmp_path: Path):
    first = open_recording(tmp_path, "same-id", 8000, resume_within=60)
    first.append(Frame(tone(800, 1), 0))
    first.flush()  # written just now: a resume would continue it, if nobody held it
    second = open_recording(tmp_path, "same-id", 8000, resume_within=60)
    assert (first.path.name, second.path.name) == ("same-id.wav", "same-id~2.wav")
    second.append(Frame(tone(800, 2), 0))
    first.append(Frame(tone(800, 3), 800))
    second.close()
    first.close()
    a, _ = soundfile.read(first.path, dtype="int16")
    b, _ = soundfile.read(second.path, dtype="int16")
    np.testing.assert_array_equal(a, np.concatenate([tone(800, 1), tone(800, 3)]))
    np.testing.assert_array_equal(b, tone(800, 2))


def test_racing_new_sessions_claim_distinct_names(tmp_path: Path):
    def claim(_: int) -> WavRecorder:
        return open_recording(tmp_path, "race", 8000, resume_within=-1)  # never resume

    with ThreadPoolExecutor(8) as pool:
        recorders = list(pool.map(claim, range(16)))
    names = sorted(r.path.name for r in recorders)
    for rec in recorders:
        rec.close()
    expected = ["race.wav", *(f"race~{n}.wav" for n in range(2, 17))]
    assert names == sorted(expected)


def test_without_fcntl_recording_still_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(wavfile, "fcntl", None)
    rec = open_recording(tmp_path, "plain", 8000, resume_within=60)
    rec.append(Frame(tone(160, 1), 0))
    rec.close()
    assert recover_wav(tmp_path / "plain.wav") is False
    data, _ = soundfile.read(tmp_path / "plain.wav", dtype="int16")
    np.testing.assert_array_equal(data, tone(160, 1))
