"""``serve --upload`` end to end: real server processes, simulated calls, a real SeaweedFS that
goes away for 10 s, a restart with files left over; recordings compared sample for sample."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from mediastream.simulate import CallPlan, plan_call, send_call, synthesize_speechlike
from tests.processes import start_server
from tests.server.test_metrics import Samples, scrape, value
from tests.storage_server import BUCKET, SeaweedS3

pytestmark = pytest.mark.slow  # server processes and a real object store

OUTAGE_SECONDS = 10.0  # how long the store is away: what the test is about, not a wait
# a 1 s call leaves 17 kB (WAV, report, piece description): two finished calls wait within the
# bound, three do not, so the three calls of the outage are admitted in any order
BOUND = 40_000


def plans(prefix: str, count: int, seconds: float = 1.0) -> list[CallPlan]:
    """Calls of distinct audio (one seed each), so that no recording can stand for another."""
    return [
        plan_call(synthesize_speechlike(seconds, 8000, seed=n), stream_id=f"{prefix}-{n}")
        for n in range(count)
    ]


@contextmanager
def serving(*args: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``mediastream serve --port 0 ...``; SIGTERM (a drain) when done, ended by its PID."""
    proc, port = start_server(*args)
    drained = False
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            drained = True
        try:
            output = proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate()[0]
    if drained:  # a drain ends with status 0, the uploads' client shut down cleanly
        assert proc.returncode == 0, output


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def scrape_until(port: int, ready: Callable[[Samples], bool], what: str) -> Samples:
    deadline = time.monotonic() + 10
    while True:
        samples = await scrape(port)
        if ready(samples):
            return samples
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {samples}"
        await asyncio.sleep(0.1)


def local_files(folder: Path) -> dict[str, bytes]:
    """What the record folder holds (its hidden upload lock aside; a file removed by an upload
    between the listing and the read is not there)."""
    found = {}
    for path in folder.iterdir():
        if not path.name.startswith("."):
            with contextlib.suppress(FileNotFoundError):
                found[path.name] = path.read_bytes()
    return found


def finished(folder: Path, stream_ids: list[str]) -> bool:
    """Every stream's WAV finalized (read-only) with its report beside it."""
    return all(
        (folder / f"{s}.json").exists()
        and (folder / f"{s}.wav").exists()
        and not os.stat(folder / f"{s}.wav").st_mode & 0o222
        for s in stream_ids
    )


async def start_closed(url: str, plan: CallPlan) -> tuple[int | None, str]:
    """Send a stream's ``start`` and wait for the server to close the socket: its code, reason."""
    async with connect(url) as ws:
        await ws.send(json.dumps(plan.start_frame()))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    received = closed.value.rcvd
    return (received.code, received.reason) if received is not None else (None, "")


@dataclass
class Continued(CallPlan):
    """A call's next socket: its ``chunk`` and ``timestamp`` go on from where the first left."""

    offset: int = 0  # frames the first socket sent

    def media_frames(self) -> list[tuple[int, dict[str, object]]]:
        frames = super().media_frames()
        for _, frame in frames:
            media: Any = frame["media"]
            media["chunk"] = str(int(media["chunk"]) + self.offset)
            media["timestamp"] = str(int(media["timestamp"]) + self.offset * 20)
        return frames


def continued(first: CallPlan, audio: np.ndarray) -> Continued:
    rest = plan_call(audio, stream_id=first.stream_id)
    return Continued(**vars(rest), offset=len(first.payloads["inbound"]))


def suspended(port: int, stream_id: str) -> bool:
    """``GET /streams`` lists the stream as waiting for a reconnect."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/streams", timeout=5) as response:
        streams = json.load(response)["streams"]
    return any(s["stream_id"] == stream_id and s["state"] == "suspended" for s in streams)


def samples_of(wav: bytes) -> np.ndarray:
    data, _ = soundfile.read(io.BytesIO(wav), dtype="int16")
    return data


async def test_every_recording_lands_exact_through_a_10_s_store_outage(
    s3_env: SeaweedS3, tmp_path: Path
) -> None:
    record = tmp_path / "recordings"
    prefix, instance = "outage", "host-a"
    args = ("--record-dir", str(record), "--upload", f"s3://{BUCKET}/{prefix}",
            "--instance-id", instance, "--upload-retry-max-seconds", "1",
            "--upload-max-pending-bytes", str(BOUND))  # fmt: skip
    key = f"{prefix}/{instance}/"
    long_call = plans("long", 1)[0]
    long_call.send_stop = False
    long_rest = continued(long_call, synthesize_speechlike(1.0, 8000, seed=99))
    try:
        with serving(*args) as (_, port):
            url = f"ws://127.0.0.1:{port}/stream"
            before = plans("before", 3)
            await asyncio.gather(*(send_call(url, p) for p in before))
            await until(lambda: not local_files(record), 20, "the first calls' uploads")
            await scrape_until(port, lambda s: value(s, "upload_pending_bytes") == 0, "none wait")
            first = len(s3_env.objects(key))
            # a call whose socket drops (no stop): it waits for its reconnect
            await send_call(url, long_call)
            await until(lambda: suspended(port, "long-0"), 10, "the call to be suspended")

            s3_env.stop_s3()
            stopped = time.monotonic()
            during = plans("during", 3)  # started together: admitted before any is finished
            results = await asyncio.gather(*(send_call(url, p) for p in during))
            assert [r.close_code for r in results] == [None] * 3  # we hung up, with stop
            ids = [p.stream_id for p in during]
            await until(lambda: finished(record, ids), 10, "the recordings to be finalized")
            waiting = {n: d for n, d in local_files(record).items() if n.split(".")[0] in ids}
            # each WAV with its report (and piece description)
            assert {f"{s}.{ext}" for s in ids for ext in ("json", "wav")} <= set(waiting)

            # the store is unreachable: pending files counted, failed attempts too
            samples = await scrape_until(
                port,
                lambda s: (
                    value(s, "upload_pending_files") == len(waiting)
                    and (value(s, "upload_failures_total", kind="request") or 0) >= 1
                ),
                "pending uploads and failures in /metrics",
            )
            assert value(samples, "upload_pending_bytes") == sum(map(len, waiting.values()))
            per_call = [sum(len(d) for n, d in waiting.items() if n.startswith(i)) for i in ids]
            assert 2 * max(per_call) < BOUND < sum(per_call)  # as BOUND's comment says
            # the backlog is over its bound: a new stream is refused, to go elsewhere
            code, reason = await start_closed(url, plans("refused", 1)[0])
            assert code == 1013 and "upload backlog full" in reason
            # ... while a call already under way reconnects and goes on
            resumed = await send_call(url, long_rest)
            assert resumed.close_code is None
            await until(lambda: finished(record, ["long-0"]), 10, "the long call's end")
            kept = local_files(record)

            await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped)))
            assert local_files(record) == kept  # nothing removed while the store is away
            s3_env.start_s3()
            await until(lambda: not local_files(record), 20, "the uploads after the outage")
            samples = await scrape_until(
                port, lambda s: value(s, "upload_pending_files") == 0, "no pending uploads"
            )
            assert value(samples, "uploaded_files_total") == first + len(kept)
            again = await send_call(url, plans("again", 1)[0])  # below the bound: admitted
            assert again.close_code is None
    finally:
        if not s3_env.s3_running:
            s3_env.start_s3()
    objects = s3_env.objects(key)
    for name, data in kept.items():
        assert objects[key + name] == data  # byte for byte what was on disk
    whole = np.concatenate([long_call.expected_pcm(), long_rest.expected_pcm()])
    np.testing.assert_array_equal(samples_of(objects[key + "long-0.wav"]), whole)
    for plan in before + during:
        wav = objects[key + f"{plan.stream_id}.wav"]
        np.testing.assert_array_equal(samples_of(wav), plan.expected_pcm())
        report = objects[key + f"{plan.stream_id}.json"].decode()
        assert f'"stream_id": "{plan.stream_id}"' in report
    assert not any("refused" in k for k in objects)


async def test_a_restarted_server_uploads_what_was_left(s3_env: SeaweedS3, tmp_path: Path) -> None:
    """Finished recordings of a server that ran without --upload, and the open one of a
    server killed mid-call, go up when a server with --upload starts on the folder."""
    record = tmp_path / "recordings"
    done = plans("left", 2)
    killed = plans("killed", 1)[0]
    killed.send_stop = False  # the socket just closes: the stream waits for a reconnect
    with serving("--record-dir", str(record)) as (proc, port):
        url = f"ws://127.0.0.1:{port}/stream"
        await asyncio.gather(*(send_call(url, p) for p in done))
        await send_call(url, killed)
        ids = [p.stream_id for p in done]
        await until(lambda: finished(record, ids), 10, "the finished recordings")
        await until(lambda: suspended(port, killed.stream_id), 10, "the call to be suspended")
        proc.kill()  # SIGKILL: the open recording stays writable, as a crash leaves it
        proc.wait(10)
    left = local_files(record)
    assert {"killed-0.wav", "left-0.json", "left-0.wav", "left-1.json", "left-1.wav"} <= set(left)
    prefix, instance = "restart", "host-b"
    args = ("--record-dir", str(record), "--upload", f"s3://{BUCKET}/{prefix}",
            "--instance-id", instance, "--resume-grace", "1")  # fmt: skip
    with serving(*args):
        # the killed process's file is over once not written for longer than the grace
        # period and the settle time (1 + 5 s): no session continues it then
        await until(lambda: not local_files(record), 20, "the leftovers' uploads")
    key = f"{prefix}/{instance}/"
    objects = s3_env.objects(key)
    # everything but a journal, which recovery placed in its WAV and removed
    assert sorted(objects) == sorted(key + n for n in left if not n.endswith(".journal"))
    for name, data in left.items():
        if name.startswith("left-"):  # finished before: byte for byte what was on disk
            assert objects[key + name] == data
    for plan in [*done, killed]:
        wav = objects[key + f"{plan.stream_id}.wav"]
        np.testing.assert_array_equal(samples_of(wav), plan.expected_pcm())
