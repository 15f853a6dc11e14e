"""Per-frame cost of recording, old and new side by side: ``WavRecorder.append`` alone.

Variants (each fed the same pre-built frames of many streams, interleaved as a server feeds
them, block writes included):

- ``memory``: the recorder with ``journal=False``, its buffers in process memory (a kill
  loses up to a block: the recorder before the journal);
- ``journal``: the recorder as it is now, its buffers in the journal's shared mapping;
- ``pwrite-frame``: candidate design 2, a stand-in with nothing but one ``pwrite`` per frame
  into a WAV (plus a header per block): the least that design costs;
- ``mmap-data``: candidate design 1, a stand-in that maps the WAV's data region (reserved in
  1 MiB steps with ``posix_fallocate``) and stores each frame and the header in the mapping.

``--tracks 2`` feeds both tracks (stereo files; the stand-ins are mono only and are skipped).
For instruction counts, which a noisy machine does not move, run one variant at two frame
counts under callgrind and divide the difference::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python benchmarks/recorder_frame.py --only journal --frames 100 --rounds 1

Kernel work (the syscalls, page faults) is not counted by callgrind: compare timings for it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import mmap
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mediastream.media.recording import WavRecorder

RATE = 8000
FRAME = 160


@dataclass(slots=True)
class Frame:
    track: str
    pcm: np.ndarray
    sample_rate: int
    position: int


class PerFramePwrite:
    """Candidate 2: every frame ``pwrite``d in place at once, the header once per block."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.frames = 0
        self.header_at = 0
        os.pwrite(self.fd, _header(0), 0)

    def append(self, frame: Frame) -> None:
        os.pwrite(self.fd, frame.pcm, 44 + 2 * frame.position)
        self.frames = max(self.frames, frame.position + len(frame.pcm))
        if self.frames - self.header_at >= RATE // 2:
            os.pwrite(self.fd, _header(self.frames), 0)
            self.header_at = self.frames

    def close(self) -> None:
        os.pwrite(self.fd, _header(self.frames), 0)
        os.close(self.fd)


class MappedData:
    """Candidate 1: the data region mapped, reserved in steps; frame and header stored."""

    STEP = 1 << 20

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.size = 0
        self.map: mmap.mmap | None = None
        self.data: np.ndarray | None = None
        self.frames = 0
        self._grow(44 + self.STEP)
        self._store_header()

    def _grow(self, size: int) -> None:
        os.posix_fallocate(self.fd, 0, size)  # ENOSPC here, never a SIGBUS on a store
        self.data = None
        if self.map is not None:
            self.map.close()
        self.map = mmap.mmap(self.fd, size)
        self.data = np.frombuffer(self.map, dtype=np.int16, offset=44)
        self.size = size

    def _store_header(self) -> None:
        assert self.map is not None
        struct.pack_into("<I", self.map, 4, 36 + 2 * self.frames)
        struct.pack_into("<I", self.map, 40, 2 * self.frames)

    def append(self, frame: Frame) -> None:
        end = frame.position + len(frame.pcm)
        if 44 + 2 * end > self.size:
            self._grow(self.size + self.STEP)
        assert self.data is not None
        self.data[frame.position : end] = frame.pcm
        if end > self.frames:
            self.frames = end
            self._store_header()

    def close(self) -> None:
        self.data = None
        assert self.map is not None
        self.map.close()
        os.ftruncate(self.fd, 44 + 2 * self.frames)
        os.close(self.fd)


def _header(frames: int) -> bytes:
    data = 2 * frames
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + data, b"WAVE", b"fmt ", 16, 1, 1, RATE, 2 * RATE,
        2, 16, b"data", data,
    )  # fmt: skip


def _recorder(kind: str) -> Callable[[Path], object]:
    if kind == "memory":
        return lambda path: WavRecorder(path, RATE, journal=False)
    if kind == "journal":
        return lambda path: WavRecorder(path, RATE, journal=True)
    if kind == "pwrite-frame":
        return PerFramePwrite
    if kind == "mmap-data":
        return MappedData
    raise ValueError(kind)


VARIANTS = ("memory", "journal", "pwrite-frame", "mmap-data")


def one_round(
    kind: str, streams: int, frames: int, tracks: int, directory: Path
) -> tuple[float, float, float]:
    """µs per frame appended, over ``streams`` x ``frames`` (x ``tracks``) frames, then µs
    to open one recording (the journal is made there; a server does it in a thread) and to
    close it (on the event loop, as a server does: the journal is removed there)."""
    rng = np.random.default_rng(1)
    audio = rng.integers(-20000, 20000, frames * FRAME, dtype=np.int16)
    names = ("inbound", "outbound")[:tracks]
    feed = [
        Frame(track, audio[k * FRAME : (k + 1) * FRAME], RATE, k * FRAME)
        for k in range(frames)
        for track in names
    ]
    make = _recorder(kind)
    opened = time.perf_counter()
    recorders = [make(directory / f"{kind}-{n}.wav") for n in range(streams)]
    opening = time.perf_counter() - opened
    appends = [r.append for r in recorders]  # type: ignore[attr-defined]
    gc.collect()
    started = time.perf_counter()
    for frame in feed:
        for append in appends:
            append(frame)
    elapsed = time.perf_counter() - started

    async def close_all() -> float:
        closed = time.perf_counter()
        for r in recorders:
            r.close()  # type: ignore[attr-defined]
        return time.perf_counter() - closed

    closing = asyncio.run(close_all())
    for path in directory.iterdir():
        path.unlink()
    per_frame = elapsed / (streams * len(feed)) * 1e6
    return per_frame, opening / streams * 1e6, closing / streams * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200, help="recorders at once (200)")
    parser.add_argument("--frames", type=int, default=500, help="frames per track (500: 10 s)")
    parser.add_argument("--tracks", type=int, choices=(1, 2), default=1, help="tracks (1)")
    parser.add_argument("--rounds", type=int, default=7, help="best of this many (7)")
    parser.add_argument("--only", choices=VARIANTS, help="one variant (for callgrind)")
    parser.add_argument("--dir", type=Path, help="where the files go (a temporary directory)")
    args = parser.parse_args()
    kinds = [args.only] if args.only else list(VARIANTS)
    if args.tracks == 2:
        kinds = [k for k in kinds if k in ("memory", "journal")]
    directory = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        costs: dict[str, list[tuple[float, float, float]]] = {kind: [] for kind in kinds}
        for _ in range(args.rounds):  # interleaved: every variant sees the same noise
            for kind in kinds:
                costs[kind].append(
                    one_round(kind, args.streams, args.frames, args.tracks, directory)
                )
        for kind in kinds:
            frame, opening, closing = (sorted(c[k] for c in costs[kind]) for k in range(3))
            mid = len(frame) // 2
            print(
                f"{kind:13} best {frame[0]:.2f}  median {frame[mid]:.2f} µs/frame;  "
                f"open {opening[0]:.0f} / {opening[mid]:.0f} µs;  "
                f"close {closing[0]:.0f} / {closing[mid]:.0f} µs  (best / median)"
            )
        print(f"({args.streams} streams, {args.tracks} track(s), {args.rounds} rounds)")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
