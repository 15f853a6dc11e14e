"""Recordings under faults: short writes, a full disk, an unwritable directory, name clashes.

Real files throughout; the faults are injected by wrapping ``os.pwrite`` / ``os.open``, and
time, where backoff would make a test slow, by driving ``recorder._monotonic``. Every check
reads the WAV back with soundfile and compares it sample for sample with what was sent.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile

from mediastream.media import recording
from mediastream.media.recording import WavFile, WavRecorder, open_recording, recording_path
from mediastream.media.recording import recorder as recorder_module

RATE = 8000
FRAME = 160  # 20 ms at 8 kHz


@dataclass
class Frame:
    track: str
    pcm: np.ndarray
    sample_rate: int
    position: int


def tone(n: int, seed: int) -> np.ndarray:
    """Noise that is never all zero over a frame, so a zero frame in a file means a hole."""
    pcm = np.random.default_rng(seed).integers(-20000, 20000, n, dtype=np.int16)
    pcm[pcm == 0] = 1
    return pcm


def read(path: Path) -> np.ndarray:
    data, rate = soundfile.read(path, dtype="int16")
    assert rate == RATE
    return data


class Clock:
    """The recorder's monotonic clock, moved by the test."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(recorder_module, "_monotonic", c)
    return c


class Disk:
    """``os.pwrite`` as a disk answers it: ``full()`` decides when it is full.

    A full disk is ``hostile`` by default: every other call writes half of what it was
    given (a short count) and the others fail with ENOSPC, rewrites in place included (as
    on a copy-on-write filesystem). With ``hostile = False`` it is an ordinary full disk: a
    file may still grow into the rest of its last 4 KiB block, then ENOSPC.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = os.pwrite
        self.full: Callable[[], bool] = lambda: False
        self.hostile = True
        self.calls = self.refused = 0
        self.block_bound = False  # short writes at every 4 KiB boundary, full or not
        monkeypatch.setattr(os, "pwrite", self.pwrite)

    def pwrite(self, fd: int, data: object, offset: int) -> int:
        view = memoryview(data).cast("B")  # type: ignore[arg-type]
        self.calls += 1
        if self.full() and self.hostile:
            if self.calls % 2:
                return self.real(fd, view[: max(1, len(view) // 2)], offset)
            self.refused += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if self.full():
            allocated = -(-os.fstat(fd).st_size // 4096) * 4096
            if offset >= allocated:
                self.refused += 1
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.real(fd, view[: allocated - offset], offset)
        if self.block_bound:
            room = 4096 - offset % 4096
            return self.real(fd, view[:room], offset)
        return self.real(fd, view, offset)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Disk:
    return Disk(monkeypatch)


# ---------------------------------------------------------------- item 6: short writes


def test_short_writes_at_block_boundaries_leave_no_holes(tmp_path: Path, disk: Disk):
    """A nearly full disk takes writes up to a block boundary: the rest must follow."""
    disk.block_bound = True
    mono = WavRecorder(tmp_path / "mono.wav", RATE)
    both = WavRecorder(tmp_path / "both.wav", RATE, flush_seconds=0.3)
    inbound, outbound = tone(3 * RATE, 1), tone(3 * RATE, 2)
    for at in range(0, 3 * RATE, FRAME):
        mono.append(Frame("inbound", inbound[at : at + FRAME], RATE, at))
        both.append(Frame("inbound", inbound[at : at + FRAME], RATE, at))
        if at >= RATE:  # the second track from 1 s on: the file is widened on a short-writing disk
            both.append(Frame("outbound", outbound[at : at + FRAME], RATE, at))
    mono.close()
    both.close()
    np.testing.assert_array_equal(read(tmp_path / "mono.wav"), inbound)
    stereo = read(tmp_path / "both.wav")
    np.testing.assert_array_equal(stereo[:, 0], inbound)
    np.testing.assert_array_equal(stereo[:RATE, 1], 0)
    np.testing.assert_array_equal(stereo[RATE:, 1], outbound[RATE:])
    assert disk.calls > 40  # the boundaries did cut writes short


def test_a_write_that_fails_part_way_counts_only_what_reached_the_file(tmp_path: Path, disk: Disk):
    path = tmp_path / "partial.wav"
    wav = WavFile(path, RATE)
    first, second = tone(1000, 1), tone(1000, 2)
    wav.write(0, first[:, None])
    disk.full = lambda: True  # the next call writes half (1000 bytes: 500 frames), then ENOSPC
    disk.calls = 0
    with pytest.raises(OSError) as failed:
        wav.write(1000, second[:, None])
    assert failed.value.errno == errno.ENOSPC
    assert wav.frames == 1500  # what is on disk, not what was asked
    declared = soundfile.info(path).frames
    assert declared <= 1500  # the header never claims more than was written
    np.testing.assert_array_equal(read(path), np.concatenate([first, second])[:declared])
    disk.full = lambda: False
    wav.write(1000, second[:, None])  # the retry
    wav.close()
    np.testing.assert_array_equal(read(path), np.concatenate([first, second]))


def test_widening_on_a_full_disk_keeps_the_mono_file_intact(tmp_path: Path, disk: Disk):
    path = tmp_path / "widen.wav"
    wav = WavFile(path, RATE)
    mono = tone(3000, 1)
    wav.write(0, mono[:, None])
    size = path.stat().st_size
    disk.full = lambda: True
    disk.calls = 0
    with pytest.raises(OSError):
        wav.widen_to_stereo(existing_channel=0)
    assert wav.channels == 1 and path.stat().st_size == size
    np.testing.assert_array_equal(read(path), mono)  # still the mono recording, whole
    disk.full = lambda: False
    wav.widen_to_stereo(existing_channel=1)
    wav.close()
    stereo = read(path)
    np.testing.assert_array_equal(stereo[:, 1], mono)
    np.testing.assert_array_equal(stereo[:, 0], 0)


# ---------------------------------------------------------------- item 7: a full disk


@dataclass
class Call:
    """One recorder and what was sent to it, in the order it was sent."""

    recorder: WavRecorder
    name: str
    frames: list[Frame]

    def expected(self) -> np.ndarray:
        end = max(f.position + len(f.pcm) for f in self.frames)
        tracks = {f.track for f in self.frames}
        out = np.zeros((end, 2), np.int16)
        for f in self.frames:
            out[f.position : f.position + len(f.pcm), 1 if f.track == "outbound" else 0] = f.pcm
        return out if len(tracks) == 2 else out[:, 1 if tracks == {"outbound"} else 0]


def plan(seconds: float, seed: int, *, outbound_from: float | None = None,
         shuffle: bool = False) -> list[list[Frame]]:  # fmt: skip
    """Per 20 ms slot, the frames sent in it (both tracks, reordered if asked)."""
    n = int(seconds * RATE) // FRAME
    inbound = tone(n * FRAME, seed)
    outbound = tone(n * FRAME, seed + 100)
    slots: list[list[Frame]] = []
    for i in range(n):
        at = i * FRAME
        slot = [Frame("inbound", inbound[at : at + FRAME], RATE, at)]
        if outbound_from is not None and at >= outbound_from * RATE:
            slot.append(Frame("outbound", outbound[at : at + FRAME], RATE, at))
        slots.append(slot)
    if shuffle:  # neighbours swapped now and then, and one frame 30 slots late
        for i in range(5, n - 1, 7):
            slots[i], slots[i + 1] = slots[i + 1], slots[i]
        late = slots[40].pop(0)
        slots[70].append(late)
    return slots


def run_calls(calls: dict[str, list[list[Frame]]], recorders: dict[str, WavRecorder],
              clock: Clock) -> dict[str, Call]:  # fmt: skip
    """Send every call's slots in step, one slot per 20 ms of the clock, then close."""
    out = {name: Call(recorders[name], name, []) for name in calls}
    for i in range(max(len(s) for s in calls.values())):
        clock.t += FRAME / RATE
        for name, slots in calls.items():
            for frame in slots[i] if i < len(slots) else ():
                recorders[name].append(frame)
                out[name].frames.append(frame)
    for call in out.values():
        call.recorder.close()
    return out


def records(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


@pytest.mark.parametrize("hostile", [False, True], ids=["full", "copy-on-write-full"])
def test_a_full_disk_for_seconds_loses_nothing_and_logs_once(
    tmp_path: Path, disk: Disk, clock: Clock, caplog: pytest.LogCaptureFixture, hostile: bool
):
    """ENOSPC and short counts for 3 s of a 9 s call: every WAV is exactly what was sent."""
    caplog.set_level(logging.INFO, logger="mediastream.media.recording")
    start = clock.t
    disk.hostile = hostile
    disk.full = lambda: start + 2.0 <= clock.t < start + 5.0
    calls = {
        "mono": plan(9, 1),
        "stereo": plan(9, 2, outbound_from=0.0),
        "widened-in-outage": plan(9, 3, outbound_from=3.0),
        "reordered": plan(9, 4, shuffle=True),
    }
    recorders = {
        name: WavRecorder(tmp_path / f"{name}.wav", RATE, stream_id=name) for name in calls
    }
    done = run_calls(calls, recorders, clock)
    assert disk.refused > 0
    for name, call in done.items():
        data = read(tmp_path / f"{name}.wav")
        np.testing.assert_array_equal(data, call.expected(), err_msg=name)
        rec = call.recorder
        assert rec.lost_samples == 0, name
        assert 3 <= rec.write_errors <= 10, (name, rec.write_errors)  # backoff, not per frame
        outage = records(caplog, f"stream {name}: cannot write recording")
        assert len(outage) == 1 and outage[0].levelno == logging.ERROR, name
        assert "No space left on device (ENOSPC)" in outage[0].getMessage()
        assert str(tmp_path / f"{name}.wav") in outage[0].getMessage()
        back = records(caplog, f"stream {name}: recording ")
        back = [r for r in back if "written again" in r.getMessage()]
        assert len(back) == 1 and "0.00 s lost" in back[0].getMessage(), name
    assert not [r for r in caplog.records if r.exc_info], "no tracebacks for a full disk"


def test_audio_beyond_the_backlog_bound_is_counted_and_logged_once(
    tmp_path: Path, disk: Disk, clock: Clock, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="mediastream.media.recording")
    start = clock.t
    disk.hostile = False  # nothing gets through: the backlog fills
    disk.full = lambda: start + 1.0 <= clock.t < start + 4.0
    stats = recording.RecordingStats()
    rec = WavRecorder(
        tmp_path / "bounded.wav", RATE, stream_id="bounded", max_backlog_seconds=1.0,
        retry_max_seconds=0.5, stats=stats,
    )  # fmt: skip
    (call,) = run_calls({"bounded": plan(6, 7)}, {"bounded": rec}, clock).values()
    data, sent = read(tmp_path / "bounded.wav"), call.expected()
    assert len(data) == len(sent)
    frames = data.reshape(-1, FRAME)
    lost = ~frames.any(axis=1)  # whole frames of zeros: audio given up
    np.testing.assert_array_equal(frames[~lost], sent.reshape(-1, FRAME)[~lost])
    assert rec.lost_samples == lost.sum() * FRAME > 0
    assert stats.lost_seconds == pytest.approx(rec.lost_samples / RATE)
    (first,) = np.flatnonzero(np.diff(lost.astype(int)) == 1) + 1  # one contiguous hole...
    assert lost[first:].sum() == lost.sum()
    assert 1.0 <= first * FRAME / RATE - 1.0 <= 1.6  # ... after the outage kept 1 s of audio
    full = records(caplog, "stream bounded: recording backlog full (1 s of audio per track)")
    assert len(full) == 1 and full[0].levelno == logging.ERROR
    (back,) = [r for r in caplog.records if "written again" in r.getMessage()]
    assert f"{rec.lost_samples / RATE:.2f} s lost" in back.getMessage()


@pytest.mark.parametrize("hostile", [False, True], ids=["full", "copy-on-write-full"])
def test_what_cannot_be_written_at_close_is_counted_and_logged(
    tmp_path: Path, disk: Disk, clock: Clock, caplog: pytest.LogCaptureFixture, hostile: bool
):
    start = clock.t
    disk.hostile = hostile
    disk.full = lambda: clock.t >= start + 1.0
    rec = open_recording(tmp_path, "doomed", RATE, resume_within=60)
    (call,) = run_calls({"doomed": plan(3, 9)}, {"doomed": rec}, clock).values()
    path, sent = tmp_path / "doomed.wav", call.expected()
    data = read(path)
    np.testing.assert_array_equal(data, sent[: len(data)])  # a valid WAV of what was written
    assert 0.5 * RATE <= len(data) <= 1.1 * RATE
    assert rec.state == "closed"
    if hostile:  # not even the header could be rewritten: left for recovery, as after a kill
        assert not recording.is_finalized(path)
        disk.full = lambda: False
        recording.recover_recordings(tmp_path)
        data = read(path)
        np.testing.assert_array_equal(data, sent[: len(data)])
    else:
        assert recording.is_finalized(path)  # the session is over all the same
    assert rec.lost_samples == len(sent) - len(data)
    (lost,) = records(caplog, "stream doomed: closing recording")
    assert lost.levelno == logging.ERROR and f"{rec.lost_samples / RATE:.2f} s" in lost.getMessage()
    assert "ENOSPC" in lost.getMessage()


async def test_retries_run_on_a_timer_when_no_frames_come(tmp_path: Path, disk: Disk):
    """A suspended stream sends nothing: the loop's timer alone gets the backlog written."""
    full_until = asyncio.get_running_loop().time() + 0.3
    rec = WavRecorder(
        tmp_path / "quiet.wav", RATE, stream_id="quiet", retry_min_seconds=0.01,
        retry_max_seconds=0.05,
    )  # fmt: skip
    disk.full = lambda: asyncio.get_running_loop().time() < full_until
    sent = tone(RATE, 5)
    for at in range(0, RATE, FRAME):
        rec.append(Frame("inbound", sent[at : at + FRAME], RATE, at))
    rec.flush()
    assert rec.state == "retrying" and rec.error is not None
    assert rec.error.errno == errno.ENOSPC  # type: ignore[attr-defined]
    await asyncio.sleep(0.6)
    assert rec.state == "writing" and rec.frames_on_disk == RATE and rec.backlog_samples == 0
    assert 3 <= rec.write_errors <= 15
    rec.close()
    np.testing.assert_array_equal(read(tmp_path / "quiet.wav"), sent)


def test_a_failing_recorder_costs_a_frame_little(tmp_path: Path, disk: Disk, clock: Clock):
    """While retrying, a frame is a comparison, not a write attempt (and never a traceback)."""
    rec = WavRecorder(tmp_path / "cheap.wav", RATE, stream_id="cheap")
    disk.full = lambda: True
    sent = tone(10 * RATE, 6)
    calls_before = disk.calls
    for at in range(0, 10 * RATE, FRAME):  # 10 s of audio in 500 frames
        clock.t += FRAME / RATE
        rec.append(Frame("inbound", sent[at : at + FRAME], RATE, at))
    assert rec.write_errors <= 8  # 0.1, 0.2, 0.4 ... 3.2 s apart
    assert disk.calls - calls_before <= 3 * rec.write_errors
    disk.full = lambda: False
    rec.close()
    np.testing.assert_array_equal(read(tmp_path / "cheap.wav"), sent)


# ---------------------------------------------------------------- the directory cannot be written


@pytest.fixture
def read_only_dir(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[[Path, Callable[[], bool]], None]]:
    real_open = os.open

    def make(directory: Path, refused: Callable[[], bool]) -> None:
        def fake_open(path: object, flags: int, *args: object, **kwargs: object) -> int:
            if refused() and Path(os.fsdecode(path)).parent == directory:  # type: ignore[arg-type]
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))  # type: ignore[arg-type]
            return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "open", fake_open)

    yield make


def test_a_record_dir_that_cannot_be_written_keeps_the_audio_and_retries(
    tmp_path: Path, clock: Clock, read_only_dir: Callable[..., None],
    caplog: pytest.LogCaptureFixture,
):  # fmt: skip
    caplog.set_level(logging.INFO, logger="mediastream.media.recording")
    start = clock.t
    read_only_dir(tmp_path, lambda: clock.t < start + 1.5)
    rec = open_recording(tmp_path, "ro", RATE, resume_within=60)
    assert rec.state == "unopened" and rec.path is None and rec.frames_on_disk == 0
    assert rec.error is not None and rec.error.errno == errno.EROFS  # type: ignore[attr-defined]
    (opened,) = run_calls({"ro": plan(4, 11, outbound_from=0.5)}, {"ro": rec}, clock).values()
    assert rec.path == recording_path(tmp_path, "ro")
    np.testing.assert_array_equal(read(rec.path), opened.expected())
    assert rec.lost_samples == 0 and 2 <= rec.open_errors <= 6
    (failed,) = records(caplog, "stream ro: cannot create recording in")
    assert failed.levelno == logging.ERROR and "(EROFS)" in failed.getMessage()
    assert "keeping up to 20 s of audio and retrying" in failed.getMessage()
    (created,) = records(caplog, "created after")
    assert "0.00 s lost" in created.getMessage()


async def test_an_unwritable_dir_at_start_is_retried_from_the_loop(
    tmp_path: Path, read_only_dir: Callable[..., None]
):
    """As the server does it: opened in a thread, fed and retried on the loop."""
    loop = asyncio.get_running_loop()
    until = loop.time() + 0.25
    read_only_dir(tmp_path, lambda: loop.time() < until)
    rec = await asyncio.to_thread(
        open_recording, tmp_path, "later", RATE, resume_within=60, retry_min_seconds=0.01,
        retry_max_seconds=0.05,
    )  # fmt: skip
    assert rec.state == "unopened"
    sent = tone(RATE // 2, 8)
    for at in range(0, RATE // 2, FRAME):
        rec.append(Frame("inbound", sent[at : at + FRAME], RATE, at))
    await asyncio.sleep(0.5)  # no frames meanwhile: the timer opens the file and writes
    assert rec.state == "writing" and rec.frames_on_disk == RATE // 2
    rec.close()
    np.testing.assert_array_equal(read(recording_path(tmp_path, "later")), sent)


# ---------------------------------------------------------------- item 8: names


@pytest.mark.parametrize(
    "ids",
    [
        ["x" * 200 + "A" * 9800, "x" * 200 + "B" * 9800],
        [".", ""],
        ["a\0b", "a/b", "a_b"],
        ["a", "a.2", "a"],
    ],
    ids=["long", "dot-empty", "reduced", "numbered"],
)
def test_ids_that_used_to_share_a_file_get_one_each(tmp_path: Path, ids: list[str]):
    paths = []
    for n, stream_id in enumerate(ids):
        rec = open_recording(tmp_path, stream_id, RATE, resume_within=60)
        assert rec.frames_on_disk == 0  # nothing of another id (or an ended session) continued
        rec.append(Frame("inbound", tone(800, n), RATE, 0))
        rec.close()
        assert rec.path is not None and rec.path.parent == tmp_path
        paths.append(rec.path)
    assert len(set(paths)) == len(ids)
    for n, path in enumerate(paths):
        np.testing.assert_array_equal(read(path), tone(800, n))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    if ids == ["a", "a.2", "a"]:
        assert [p.name for p in paths] == ["a.wav", "a.2.wav", "a~2.wav"]


def test_a_finished_recording_is_never_continued(tmp_path: Path):
    first = open_recording(tmp_path, "done", RATE, resume_within=60)
    first.append(Frame("inbound", tone(800, 1), RATE, 0))
    first.close()
    assert recording.is_finalized(first.path)
    mtime = first.path.stat().st_mtime_ns
    assert recording.recover_recordings(tmp_path) == []
    again = open_recording(tmp_path, "done", RATE, resume_within=60)  # within the grace period
    assert again.path == tmp_path / "done~2.wav" and again.frames_on_disk == 0
    again.append(Frame("inbound", tone(800, 2), RATE, 0))
    again.close()
    third = open_recording(tmp_path, "done", RATE, resume_within=60)
    assert third.path == tmp_path / "done~3.wav"
    third.close()
    np.testing.assert_array_equal(read(tmp_path / "done.wav"), tone(800, 1))
    np.testing.assert_array_equal(read(tmp_path / "done~2.wav"), tone(800, 2))
    assert first.path.stat().st_mtime_ns == mtime


DIE_WHILE_RECORDING = """
import os, sys
import numpy as np
from mediastream.media.recording import open_recording

class Frame:
    track, sample_rate = "inbound", 8000
    def __init__(self, pcm, position):
        self.pcm, self.position = pcm, position

rec = open_recording(sys.argv[1], sys.argv[2], 8000, resume_within=60)
pcm = np.frombuffer(bytes.fromhex(sys.argv[3]), dtype="<i2")
rec.append(Frame(pcm, 0))
rec.flush()
os._exit(0)  # killed: never closed
"""


def test_a_file_a_dead_process_left_is_continued_within_the_grace_period(tmp_path: Path):
    before = tone(800, 1)
    for stream_id in ("crashed", "crashed-long-ago"):
        subprocess.run(
            [sys.executable, "-c", DIE_WHILE_RECORDING, str(tmp_path), stream_id,
             before.astype("<i2").tobytes().hex()],
            check=True, timeout=60,
        )  # fmt: skip
        assert not recording.is_finalized(tmp_path / f"{stream_id}.wav")
    os.utime(tmp_path / "crashed-long-ago.wav", (0, 0))
    assert recording.recover_recordings(tmp_path) == []  # its header was current
    rec = open_recording(tmp_path, "crashed", RATE, resume_within=60)
    assert rec.path == tmp_path / "crashed.wav" and rec.frames_on_disk == 800
    rec.append(Frame("inbound", tone(800, 2), RATE, 0))  # positions after what it holds
    rec.close()
    np.testing.assert_array_equal(read(rec.path), np.concatenate([before, tone(800, 2)]))
    old = open_recording(tmp_path, "crashed-long-ago", RATE, resume_within=60)
    assert old.path == tmp_path / "crashed-long-ago~2.wav"  # past the grace period: new file
    old.close()


# ---------------------------------------------------------------- metrics


def test_recording_faults_reach_the_metrics(
    tmp_path: Path, disk: Disk, clock: Clock, read_only_dir: Callable[..., None]
):
    from prometheus_client import CollectorRegistry

    from mediastream.server.metrics import ServerMetrics

    stats = recording.RecordingStats()
    metrics = ServerMetrics(registry=CollectorRegistry(), recording_stats=stats)
    start = clock.t
    read_only_dir(tmp_path, lambda: clock.t < start + 0.3)
    disk.full = lambda: start + 1.0 <= clock.t < start + 4.0
    rec = open_recording(
        tmp_path, "metered", RATE, resume_within=60, max_backlog_seconds=1.0, stats=stats
    )
    run_calls({"metered": plan(5, 12)}, {"metered": rec}, clock)
    metrics.flush()
    value = metrics.registry.get_sample_value  # type: ignore[union-attr]
    assert value("mediastream_recording_errors_total", {"kind": "open"}) == rec.open_errors > 0
    assert value("mediastream_recording_errors_total", {"kind": "write"}) == rec.write_errors > 0
    assert value("mediastream_recording_lost_seconds_total") == pytest.approx(
        rec.lost_samples / RATE
    )
    assert rec.lost_samples > 0
    metrics.flush()  # pushed once, not again
    assert value("mediastream_recording_errors_total", {"kind": "write"}) == rec.write_errors
