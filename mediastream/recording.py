"""WAV recording that places audio by its position and survives a killed process.

``WavFile`` is a 16-bit PCM WAV on disk that can be written at any frame offset; its header is
rewritten after every write, so the file on disk is always a valid WAV of everything written so
far. ``recover_wav`` repairs the one thing a kill can leave behind (data written after the last
header update). ``WavRecorder`` buffers audio per stream and writes it in blocks of
``flush_seconds``: one positional write and one header patch per block, from the event loop.

Why not a thread: a block is two ``pwrite`` calls into the page cache (about 10 µs), while every
hand-off to a thread costs a GIL round trip that a busy event loop holds for up to the switch
interval (5 ms). Measured with ``benchmarks/server_load.py``, a writer thread made the server
fall behind at 350 recording streams on one core, where writing from the loop costs nothing
measurable against no recording at all.

Layout: mono when one track is streamed; when both are, two channels (0 inbound, 1 outbound)
aligned by position. A mono file becomes stereo the moment the second track shows up.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from mediastream.errors import MediaStreamError

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process exclusivity, everything else works
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

DEFAULT_FLUSH_SECONDS = 0.5
_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")
_HEADER_SIZE = _HEADER.size  # 44
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
_MAX_NAME = 200


class RecordingError(MediaStreamError):
    """A recording file could not be opened or written."""


class RecordingLocked(RecordingError):
    """Another open file (another worker process, usually) is writing this recording."""


def _lock(fd: int, path: Path, *, patience: float = 0.0) -> None:
    """Hold an exclusive ``flock`` on ``fd`` until it is closed, trying for ``patience`` s.

    Every writer holds one, so a file being written by a live process is never continued or
    repaired by another; the kernel drops it when the writer dies, which is what makes a
    crashed worker's file recoverable. Where locks are unsupported, writing goes on unlocked.
    """
    if fcntl is None:
        return
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise RecordingLocked(f"{path} is being written by another process") from None
            time.sleep(0.01)
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            logger.debug("no file locks on %s (%s): writing without one", path, exc)
            return


def safe_stream_name(stream_id: str) -> str:
    """The stream id reduced to ``[A-Za-z0-9._-]``: anything else becomes ``_``."""
    name = _SAFE_NAME.sub("_", stream_id)[:_MAX_NAME]
    return name if name.strip(".") else name.replace(".", "_") or "_"


def recording_path(record_dir: str | os.PathLike[str], stream_id: str) -> Path:
    """``DIR/<safe id>.wav``; by construction never outside ``DIR``."""
    return Path(record_dir) / f"{safe_stream_name(stream_id)}.wav"


# ---------------------------------------------------------------- the file


@dataclass(slots=True)
class _Layout:
    sample_rate: int
    channels: int
    data_offset: int
    data_bytes: int  # as measured on disk, whole frames only


def _read_layout(fd: int) -> _Layout:
    """Find ``fmt `` and ``data`` in a RIFF/WAVE file; trust the file size over the header."""
    size = os.fstat(fd).st_size
    head = os.pread(fd, 12, 0)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise RecordingError("not a RIFF/WAVE file")
    offset, rate, channels = 12, None, None
    while offset + 8 <= size:
        chunk_id, chunk_size = struct.unpack("<4sI", os.pread(fd, 8, offset))
        body = offset + 8
        if chunk_id == b"fmt ":
            fmt_tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", os.pread(fd, 16, body))
            if fmt_tag != 1 or bits != 16:
                raise RecordingError(f"only 16-bit PCM WAV can be continued (format {fmt_tag})")
        elif chunk_id == b"data":
            if rate is None or channels is None:
                raise RecordingError("WAV data chunk before fmt chunk")
            block = 2 * channels
            data_bytes = (size - body) // block * block
            return _Layout(rate, channels, body, data_bytes)
        offset = body + chunk_size + (chunk_size & 1)
    raise RecordingError("WAV file has no data chunk")


class WavFile:
    """A 16-bit PCM WAV written at frame offsets, its header current after every write."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        sample_rate: int,
        channels: int = 1,
        *,
        create: bool = False,
    ) -> None:
        """Open (or make) ``path`` and lock it; ``create`` insists on a new file (O_EXCL), so
        processes racing for a name each get their own: ``FileExistsError`` if it exists.
        ``RecordingLocked`` if another open file holds it (with ``create``: still holds it
        after a second, so that other process has made the new file its own)."""
        self.path = Path(path)
        flags = os.O_RDWR | os.O_CREAT | (os.O_EXCL if create else 0)
        self._fd = os.open(self.path, flags, 0o644)
        try:
            # between O_EXCL and flock, a restarting worker's recovery may glance at a new file
            _lock(self._fd, self.path, patience=1.0 if create else 0.0)
            if os.fstat(self._fd).st_size == 0:
                self.sample_rate, self.channels, self._data_offset = sample_rate, channels, 44
                self.frames = 0
                self._write_header()
            else:
                layout = _read_layout(self._fd)
                if layout.sample_rate != sample_rate:
                    raise RecordingError(
                        f"{self.path} holds {layout.sample_rate} Hz audio, not {sample_rate} Hz"
                    )
                self.sample_rate, self.channels = layout.sample_rate, layout.channels
                self._data_offset = layout.data_offset
                self.frames = layout.data_bytes // (2 * layout.channels)
                os.ftruncate(self._fd, self._data_offset + layout.data_bytes)
                self._write_header()
        except BaseException:
            os.close(self._fd)
            raise

    def _write_header(self) -> None:
        data_bytes = self.frames * 2 * self.channels
        if self._data_offset == _HEADER_SIZE:
            header = _HEADER.pack(
                b"RIFF", 36 + data_bytes, b"WAVE", b"fmt ", 16, 1, self.channels,
                self.sample_rate, self.sample_rate * 2 * self.channels, 2 * self.channels, 16,
                b"data", data_bytes,
            )  # fmt: skip
            os.pwrite(self._fd, header, 0)
        else:  # a file with extra chunks: patch the two sizes in place
            os.pwrite(self._fd, struct.pack("<I", self._data_offset + data_bytes - 8), 4)
            os.pwrite(self._fd, struct.pack("<I", data_bytes), self._data_offset - 4)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames ``[start, stop)`` as an (n, channels) int16 array (clipped to what exists)."""
        stop = min(stop, self.frames)
        if stop <= start:
            return np.zeros((0, self.channels), dtype=np.int16)
        block = 2 * self.channels
        raw = os.pread(self._fd, (stop - start) * block, self._data_offset + start * block)
        return np.frombuffer(raw, dtype="<i2").reshape(-1, self.channels).astype(np.int16)

    def write(self, start: int, block: np.ndarray) -> None:
        """Write (n, channels) int16 frames at ``start`` (at most the current end), then header."""
        if start > self.frames:
            raise RecordingError(f"write at frame {start} would leave a hole after {self.frames}")
        data = np.ascontiguousarray(block, dtype="<i2")
        if data.ndim != 2 or data.shape[1] != self.channels:
            raise RecordingError(f"block shape {data.shape} does not fit {self.channels} channels")
        os.pwrite(self._fd, data, self._data_offset + start * 2 * self.channels)
        self.frames = max(self.frames, start + len(data))
        self._write_header()

    def widen_to_stereo(self, existing_channel: int) -> None:
        """Rewrite a mono file as two channels, its audio going to ``existing_channel``."""
        if self.channels == 2:
            return
        mono = self.read(0, self.frames)[:, 0]
        stereo = np.zeros((len(mono), 2), dtype=np.int16)
        stereo[:, existing_channel] = mono
        self.channels = 2
        os.pwrite(self._fd, stereo.astype("<i2").tobytes(), self._data_offset)
        self._write_header()

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _numbered_path(record_dir: Path, name: str, n: int) -> Path:
    return record_dir / (f"{name}.wav" if n == 1 else f"{name}.{n}.wav")


def open_recording(
    record_dir: str | os.PathLike[str],
    stream_id: str,
    sample_rate: int,
    *,
    resume_within: float,
    flush_seconds: float = DEFAULT_FLUSH_SECONDS,
    append: bool = True,
) -> WavRecorder:
    """The recorder for a new session of ``stream_id`` in ``record_dir``.

    The stream's latest file (``<id>.wav``, ``<id>.2.wav`` ...) is continued if it was written
    within ``resume_within`` seconds and no live process holds it: a resume across a restart,
    or after the worker that wrote it crashed. Otherwise a new file, its name claimed with
    O_EXCL so that workers sharing the directory never pick the same one. Blocking: run it in
    a thread. ``flush_seconds`` and ``append`` are ``WavRecorder``'s.
    """
    directory, name = Path(record_dir), safe_stream_name(stream_id)

    def recorder(path: Path, create: bool) -> WavRecorder:
        return WavRecorder(
            path, sample_rate, flush_seconds=flush_seconds, stream_id=stream_id, append=append,
            create=create,
        )  # fmt: skip

    n, latest, latest_mtime = 1, None, 0.0
    while True:  # names are claimed in order, so the first gap ends the series
        path = _numbered_path(directory, name, n)
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            break
        if latest is None or mtime >= latest_mtime:
            latest, latest_mtime = path, mtime
        n += 1
    if latest is not None and time.time() - latest_mtime <= resume_within:
        try:
            return recorder(latest, create=False)
        except RecordingLocked:
            logger.info(
                "stream %s: %s is being written by another process; starting a new file",
                stream_id, latest,
            )  # fmt: skip
    while True:
        try:
            return recorder(_numbered_path(directory, name, n), create=True)
        except (FileExistsError, RecordingLocked):
            n += 1  # another process claimed it first


def recover_wav(path: str | os.PathLike[str]) -> bool:
    """Make the header of a WAV cover all whole frames on disk; True if it had to change.

    Raises ``RecordingLocked`` for a file a live process is writing: its header is current
    as far as that writer knows, and patching it under the writer would race it.
    """
    fd = os.open(path, os.O_RDWR)
    try:
        _lock(fd, Path(path))
        if os.fstat(fd).st_size == 0:
            return False  # a name just claimed by a writer (or left so): nothing to repair
        layout = _read_layout(fd)
        end = layout.data_offset + layout.data_bytes
        (declared,) = struct.unpack("<I", os.pread(fd, 4, layout.data_offset - 4))
        if declared == layout.data_bytes and os.fstat(fd).st_size == end:
            return False
        os.ftruncate(fd, end)  # a torn last sample goes
        os.pwrite(fd, struct.pack("<I", end - 8), 4)
        os.pwrite(fd, struct.pack("<I", layout.data_bytes), layout.data_offset - 4)
        return True
    finally:
        os.close(fd)  # and with it the lock


def recover_recordings(record_dir: str | os.PathLike[str]) -> list[Path]:
    """Repair every WAV in ``record_dir`` left behind by a killed process; returns those fixed.

    Files other live processes are writing (other workers on the same directory) are skipped.
    """
    fixed = []
    for path in sorted(Path(record_dir).glob("*.wav")):
        try:
            if recover_wav(path):
                fixed.append(path)
        except RecordingLocked:
            logger.debug("recording %s is being written by another process: left alone", path)
        except (OSError, RecordingError) as exc:
            logger.warning("cannot recover recording %s: %s", path, exc)
    if fixed:
        logger.info("recovered %d recording(s) in %s", len(fixed), record_dir)
    return fixed


# ---------------------------------------------------------------- the recorder


class PositionedAudio(Protocol):
    """What the recorder needs of an audio frame (``AudioFrame`` has it)."""

    track: str
    pcm: np.ndarray
    sample_rate: int
    position: int


@dataclass(slots=True)
class _Piece:
    track: str
    position: int
    pcm: np.ndarray


class _Run:
    """In-order audio of one track gathered in a reused buffer: a frame that continues the
    run costs one copy and leaves no object behind (nothing for the collector to promote),
    and the block is written from the buffer as it is."""

    __slots__ = ("buffer", "fill", "start", "track")

    def __init__(self, capacity: int) -> None:
        self.buffer = np.empty(capacity, dtype=np.int16)
        self.track = ""
        self.start = 0
        self.fill = 0

    def extend(self, track: str, start: int, pcm: np.ndarray) -> bool:
        """Append ``pcm`` if it continues this run (or starts an empty one) and fits."""
        n, fill = len(pcm), self.fill
        if fill + n > len(self.buffer):
            return False
        if fill == 0:
            self.track, self.start = track, start
        elif track != self.track or start != self.start + fill:
            return False
        self.buffer[fill : fill + n] = pcm
        self.fill = fill + n
        return True

    def take(self) -> _Piece | None:
        """The run as a piece of its own (a copy), leaving the run empty."""
        if self.fill == 0:
            return None
        piece = _Piece(self.track, self.start, self.buffer[: self.fill].copy())
        self.fill = 0
        return piece


class WavRecorder:
    """Records one stream's audio frames to a WAV, placed by position, buffered in blocks.

    ``await write(frame)`` buffers; every ``flush_seconds`` of audio it writes a block, and
    ``await close()`` writes the rest. If the file already exists, audio continues after what
    it holds (``append``), or is placed at its absolute position (``append=False``, for
    callers that track the timeline themselves). ``create`` insists on a new file
    (``FileExistsError`` otherwise); an existing file another live process is writing raises
    ``RecordingLocked``: the file stays locked until ``close``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        sample_rate: int,
        *,
        flush_seconds: float = DEFAULT_FLUSH_SECONDS,
        stream_id: str | None = None,
        append: bool = True,
        create: bool = False,
    ) -> None:
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.stream_id = stream_id
        self._file = WavFile(self.path, sample_rate, create=create)
        # append: positions count from the end of what the file holds; else they are absolute
        self._offset = self._file.frames if append else 0
        self._flush_frames = max(1, int(flush_seconds * sample_rate))
        self._tracks: list[str] = ["inbound"] if self._file.channels == 2 else []
        if self._file.channels == 2:
            self._tracks.append("outbound")
        self._pending: list[_Piece] = []  # audio that did not continue the run, by position
        self._run = _Run(self._flush_frames + sample_rate // 10)
        self._pending_hi = 0
        self._written_hi = self._file.frames  # one past the highest sample written
        self._closed = False

    @property
    def channels(self) -> int:
        return self._file.channels

    @property
    def frames_on_disk(self) -> int:
        return self._file.frames

    async def write(self, frame: PositionedAudio) -> None:
        """Buffer one frame; write a block once ``flush_seconds`` of audio is buffered."""
        self.append(frame)

    def append(self, frame: PositionedAudio) -> None:
        """``write`` without a coroutine, for the server's per-frame path."""
        run = self._run
        start = self._offset + frame.position
        if (  # the usual frame continues the run of its track; add() checks everything else
            run.fill
            and frame.sample_rate == self.sample_rate
            and not self._closed
            and run.extend(frame.track, start, frame.pcm)
        ):
            self._pending_hi = max(self._pending_hi, start + len(frame.pcm))
        else:
            self.add(frame)
        if self._pending_hi - self._written_hi >= self._flush_frames:
            self.flush()

    def add(self, frame: PositionedAudio) -> None:
        """Queue one frame without writing (the synchronous half of ``write``)."""
        if self._closed:
            raise RecordingError(f"recording {self.path} is closed")
        if frame.sample_rate != self.sample_rate:
            raise RecordingError(
                f"frame at {frame.sample_rate} Hz cannot go into a {self.sample_rate} Hz recording"
            )
        track = "outbound" if frame.track == "outbound" else "inbound"
        if track not in self._tracks:
            self._tracks.append(track)
        start = self._offset + frame.position
        if not self._run.extend(track, start, frame.pcm):
            self._end_run()
            if not self._run.extend(track, start, frame.pcm):
                self._pending.append(_Piece(track, start, frame.pcm))
        self._pending_hi = max(self._pending_hi, start + len(frame.pcm))

    def _end_run(self) -> None:
        piece = self._run.take()
        if piece is not None:
            self._pending.append(piece)  # after what came before it: later pieces win overlaps

    def flush(self) -> None:
        """Write everything buffered now; a failure is logged, and the audio kept for a retry."""
        run, file = self._run, self._file
        if not self._pending and not run.fill:
            return
        try:
            if (
                not self._pending
                and file.channels == 1
                and len(self._tracks) < 2
                and (run.start == file.frames)
            ):  # the usual block: one run continuing a mono file, written from the buffer
                file.write(run.start, run.buffer[: run.fill, None])
                run.fill = 0
            else:
                self._end_run()
                self._write_pieces(self._pending, tuple(self._tracks))
        except Exception:
            logger.exception("stream %s: writing %s failed", self.stream_id, self.path)
            return
        self._pending = []
        self._written_hi = max(self._written_hi, self._pending_hi)

    def _write_pieces(self, pieces: list[_Piece], tracks: tuple[str, ...]) -> None:
        if not pieces:
            return
        file = self._file
        if len(tracks) == 2 and file.channels == 1:
            file.widen_to_stereo(existing_channel=1 if tracks[0] == "outbound" else 0)
        lo = min(min(p.position for p in pieces), file.frames)
        hi = max(p.position + len(p.pcm) for p in pieces)
        block = np.zeros((hi - lo, file.channels), dtype=np.int16)
        existing = file.read(lo, hi)  # keep what is there (the other channel, earlier writes)
        block[: len(existing)] = existing
        for piece in pieces:
            at = piece.position - lo
            channel = 1 if file.channels == 2 and piece.track == "outbound" else 0
            block[at : at + len(piece.pcm), channel] = piece.pcm
        file.write(lo, block)

    async def close(self) -> None:
        """Write everything still pending and close the file (idempotent)."""
        self.close_sync()

    def close_sync(self) -> None:
        """``close`` for code that is not running an event loop."""
        if not self._closed:
            self._closed = True
            try:
                self.flush()
            finally:
                self._file.close()
