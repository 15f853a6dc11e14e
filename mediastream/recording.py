"""WAV recording that places audio by its position and keeps it through disk faults and kills.

``WavFile`` is a 16-bit PCM WAV on disk that can be written at any frame offset; its header is
rewritten after every write, so the file on disk is always a valid WAV of everything written so
far. Every write loops until the kernel took all of it: ``pwrite`` may take less than asked (a
nearly full disk does, at a block boundary), and before this loop such a short write left a
0.2-0.45 s hole of zeros in each file. ``frames`` counts only whole frames truly on disk, and
the header never claims more. ``recover_wav`` repairs what a kill can leave behind (data
written after the last header update).

``WavRecorder`` buffers audio per stream and writes it in blocks of ``flush_seconds``: one
positional write and one header patch per block, from the event loop. Why not a thread: a
block is two ``pwrite`` calls into the page cache (about 10 µs), while every hand-off to a
thread costs a GIL round trip that a busy event loop holds for up to the switch interval
(5 ms). Measured with ``benchmarks/server_load.py``, a writer thread made the server fall
behind at 350 recording streams on one core, where writing from the loop costs nothing
measurable against no recording at all.

Faults (a full disk, a read-only or missing directory, no file descriptors) never raise from
``append`` and never cost more than one float comparison per frame: a failed write or open
keeps the audio, at most ``max_backlog_seconds`` per track, and is retried on a timer with
backoff (``retry_min_seconds`` doubling to ``retry_max_seconds``); once it works, the backlog
is written where it belongs, at most ``MAX_WRITE_SECONDS`` of the timeline per write (128 KB at
16 kHz stereo: 50 µs median, 150 µs worst, into the page cache), so draining never blocks the
loop for a millisecond. An outage is logged once when it starts and once when it ends; audio
beyond the bound, or still unwritten at ``close``, is counted (``lost_samples``) and logged.
The counts also go to a ``RecordingStats`` that ``mediastream.metrics`` reads in batches.

Names (``recording_base``): a plain id is its own base name, anything else is reduced and
suffixed with a hash, so no two ids share a file; later sessions get ``<base>~2.wav`` ....
A recording closed normally is made read-only (mode 0o444): the mark, visible to every
process, that its session is over, so only a file a dead process left writable is continued.

Layout: mono when one track is streamed; when both are, two channels (0 inbound, 1 outbound)
aligned by position. A mono file becomes stereo the moment the second track shows up.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from mediastream.errors import MediaStreamError
from mediastream.logs import escape

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process exclusivity, everything else works
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

DEFAULT_FLUSH_SECONDS = 0.5
# audio kept per track while the file cannot be written (at least flush_seconds + 0.1 s)
DEFAULT_MAX_BACKLOG_SECONDS = 20.0
DEFAULT_RETRY_MIN_SECONDS = 0.1  # the first retry after a failed write or open ...
DEFAULT_RETRY_MAX_SECONDS = 5.0  # ... doubling up to this
# one write covers at most this much of the timeline (a backlog drains in such steps)
MAX_WRITE_SECONDS = 2.0
# how long a new file's creator waits for a lock another process took between O_EXCL and flock
CREATE_PATIENCE_SECONDS = 1.0
MAX_PLAIN_ID = 200  # a plain id this long at most is its own base name
HASHED_PREFIX = 64  # characters of the reduced id kept before ``=<hash>``
HASH_DIGITS = 12  # hex digits of SHA-256 in ``<s>=<h>``
FINALIZED_MODE = 0o444  # a finished recording: no write bit left

_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")
_HEADER_SIZE = _HEADER.size  # 44
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
_PLAIN_ID = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_PLAIN_ID}}}")
_WRITE_BITS = 0o222
_monotonic = time.monotonic  # looked up per call, so tests can drive the clock


class RecordingError(MediaStreamError):
    """A recording file could not be opened or written."""


class RecordingLocked(RecordingError):
    """Another open file (another worker process, usually) is writing this recording."""


class RecordingFinalized(RecordingError):
    """The recording was closed normally (it is read-only): its session is over."""


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


def _describe(exc: BaseException | None) -> str:
    """``No space left on device (ENOSPC)``: the errno text an operator searches for."""
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        return f"{exc.strerror or os.strerror(exc.errno)} ({name})"
    return repr(exc)


# ---------------------------------------------------------------- names


def safe_stream_name(stream_id: str) -> str:
    """The stream id reduced to ``[A-Za-z0-9._-]``: anything else becomes ``_``.

    Not injective (``a/b`` and ``a_b`` meet): capture files use it, with a counter of their
    own; recordings use ``recording_base``.
    """
    name = _SAFE_NAME.sub("_", stream_id)[:MAX_PLAIN_ID]
    return name if name.strip(".") else name.replace(".", "_") or "_"


def recording_base(stream_id: str) -> str:
    """The base file name of ``stream_id``'s recordings: different ids never share one.

    An id of 1 to 200 characters from ``[A-Za-z0-9._-]``, other than ``.`` and ``..``, is its
    own base; any other is ``<s>=<h>``: ``<s>`` the id with every other character replaced by
    ``_``, cut to 64 characters, ``<h>`` the first 12 hex digits of the SHA-256 of its UTF-8
    bytes (lone surrogates, which JSON can carry, encoded as they stand). ``=`` never occurs
    in a plain id and ``~`` in neither form, so names never meet (see ``session_path``).
    """
    if _PLAIN_ID.fullmatch(stream_id) and stream_id not in (".", ".."):
        return stream_id
    digest = hashlib.sha256(stream_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{_SAFE_NAME.sub('_', stream_id[:HASHED_PREFIX])}={digest[:HASH_DIGITS]}"


def _session_path(directory: Path, base: str, session: int) -> Path:
    return directory / (f"{base}.wav" if session == 1 else f"{base}~{session}.wav")


def session_path(record_dir: str | os.PathLike[str], stream_id: str, session: int = 1) -> Path:
    """``DIR/<base>.wav`` for the first session of ``stream_id``, ``DIR/<base>~N.wav`` for
    the N-th; by construction never outside ``DIR``."""
    return _session_path(Path(record_dir), recording_base(stream_id), session)


def recording_path(record_dir: str | os.PathLike[str], stream_id: str) -> Path:
    """The first session's file, ``DIR/<base>.wav``."""
    return session_path(record_dir, stream_id)


def is_finalized(path: str | os.PathLike[str]) -> bool:
    """True for a recording closed normally: no write bit (checked as bits, since root may
    write to a read-only file anyway)."""
    return not os.stat(path).st_mode & _WRITE_BITS


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


def _pwrite_all(
    fd: int, data: bytes | memoryview | np.ndarray, offset: int
) -> tuple[int, OSError | None]:
    """Write all of ``data`` at ``offset``; the bytes written, and the error that stopped it.

    ``pwrite`` may write less than asked: the rest goes in the next call. An error part-way
    leaves the caller knowing exactly how much reached the file, never more.
    """
    view = memoryview(data).cast("B")
    done, size = 0, len(view)
    while done < size:
        try:
            n = os.pwrite(fd, view[done:], offset + done)
        except OSError as exc:
            return done, exc
        if n <= 0:  # no progress and no error: looping would spin
            return done, OSError(errno.EIO, "pwrite wrote nothing")
        done += n
    return done, None


class WavFile:
    """A 16-bit PCM WAV written at frame offsets, its header current after every write."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        sample_rate: int,
        channels: int = 1,
        *,
        create: bool = False,
        patience: float | None = None,
        finalized_ok: bool = True,
    ) -> None:
        """Open (or make) ``path`` and lock it; ``create`` insists on a new file (O_EXCL), so
        processes racing for a name each get their own: ``FileExistsError`` if it exists.
        ``RecordingLocked`` if another open file holds it (with ``create``: still holds it
        after ``patience`` s, default 1, so that other process has made the new file its
        own). ``finalized_ok=False`` refuses a finished recording (``RecordingFinalized``)
        before touching it. A new file whose header cannot be written is removed again."""
        self.path = Path(path)
        flags = os.O_RDWR | os.O_CREAT | (os.O_EXCL if create else 0)
        self._fd = os.open(self.path, flags, 0o644)
        self._widening: bytes | None = None  # stereo data not yet fully over the mono data
        self.written_to = 0  # one past the last whole frame the latest ``write`` put on disk
        self._header_state = (-1, -1)  # (frames, channels) the header on disk declares
        try:
            if patience is None:
                patience = CREATE_PATIENCE_SECONDS if create else 0.0
            # between O_EXCL and flock, a restarting worker's recovery may glance at a new file
            _lock(self._fd, self.path, patience=patience)
            st = os.fstat(self._fd)
            try:
                now = os.stat(self.path)
                same = (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)
            except FileNotFoundError:
                same = False
            if not same:  # its creator removed it (it could not write a header): not a recording
                raise RecordingLocked(f"{self.path} was removed while it was being opened")
            if not finalized_ok and not st.st_mode & _WRITE_BITS:
                raise RecordingFinalized(f"{self.path} is a finished recording")
        except BaseException:
            os.close(self._fd)
            raise
        try:
            if st.st_size == 0:
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
            if create:  # ours (O_EXCL, locked) and empty: leave no stray name behind
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
            os.close(self._fd)
            raise

    def _put(self, data: bytes | memoryview, offset: int) -> None:
        _, error = _pwrite_all(self._fd, data, offset)
        if error is not None:
            raise error

    def _write_header(self) -> None:
        data_bytes = self.frames * 2 * self.channels
        if self._data_offset == _HEADER_SIZE:
            header = _HEADER.pack(
                b"RIFF", 36 + data_bytes, b"WAVE", b"fmt ", 16, 1, self.channels,
                self.sample_rate, self.sample_rate * 2 * self.channels, 2 * self.channels, 16,
                b"data", data_bytes,
            )  # fmt: skip
            self._put(header, 0)
        else:  # a file with extra chunks: patch the two sizes in place
            self._put(struct.pack("<I", self._data_offset + data_bytes - 8), 4)
            self._put(struct.pack("<I", data_bytes), self._data_offset - 4)
        self._header_state = (self.frames, self.channels)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames ``[start, stop)`` as an (n, channels) int16 array (clipped to what exists)."""
        if self._widening is not None:
            self.widen_to_stereo(0)  # finish it first: the data on disk is half-way
        stop = min(stop, self.frames)
        if stop <= start:
            return np.zeros((0, self.channels), dtype=np.int16)
        block = 2 * self.channels
        raw = os.pread(self._fd, (stop - start) * block, self._data_offset + start * block)
        return np.frombuffer(raw, dtype="<i2").reshape(-1, self.channels).astype(np.int16)

    def write(self, start: int, block: np.ndarray) -> None:
        """Write (n, channels) int16 frames at ``start`` (at most the current end), then header.

        On an error part-way, ``frames`` covers the whole frames that reached the file, and
        the error is raised; writing the same block again is how to retry.
        """
        if self._widening is not None:
            self.widen_to_stereo(0)
        if start > self.frames:
            raise RecordingError(f"write at frame {start} would leave a hole after {self.frames}")
        data = np.ascontiguousarray(block, dtype="<i2")
        if data.ndim != 2 or data.shape[1] != self.channels:
            raise RecordingError(f"block shape {data.shape} does not fit {self.channels} channels")
        frame_bytes = 2 * self.channels
        self.written_to = start
        done, error = _pwrite_all(self._fd, data, self._data_offset + start * frame_bytes)
        self.written_to = start + done // frame_bytes
        self.frames = max(self.frames, self.written_to)
        if error is not None:
            raise error
        self._write_header()

    def widen_to_stereo(self, existing_channel: int) -> None:
        """Rewrite a mono file as two channels, its audio going to ``existing_channel``.

        The half beyond the mono data goes first: it overwrites nothing, and it is the part
        that needs new disk space, so a full disk fails it with the mono file intact (cut
        back to its length). If the rewrite of the mono part then fails, the stereo data is
        kept and the next call (or ``read``/``write``) finishes it.
        """
        if self.channels == 2:
            return
        if self._widening is None:
            mono = self.read(0, self.frames)[:, 0]
            stereo = np.zeros((len(mono), 2), dtype="<i2")
            stereo[:, existing_channel] = mono
            raw = stereo.tobytes()
            half = len(raw) // 2
            _, error = _pwrite_all(self._fd, raw[half:], self._data_offset + half)
            if error is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._data_offset + half)
                raise error
            self._widening = raw
        raw = self._widening
        self._put(raw[: len(raw) // 2], self._data_offset)
        self._widening = None
        self.channels = 2
        self._write_header()

    def finalize(self) -> None:
        """Mark the recording finished: header current, then read-only (``FINALIZED_MODE``)."""
        if self._header_state != (self.frames, self.channels) and self._widening is None:
            self._write_header()
        os.fchmod(self._fd, FINALIZED_MODE)

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        """Close the file, its header brought up to date if that is still possible."""
        if self._fd >= 0:
            try:
                if self._header_state != (self.frames, self.channels) and self._widening is None:
                    with contextlib.suppress(OSError):  # it then claims less: never more
                        self._write_header()
            finally:
                os.close(self._fd)
                self._fd = -1


def _claim(
    directory: Path,
    base: str,
    stream_id: str,
    sample_rate: int,
    channels: int,
    *,
    resume_within: float | None,
    patience: float | None,
) -> WavFile:
    """The file of a new session: the series' latest file if a dead process left it unfinished
    within ``resume_within`` seconds (None: never), else the next free name, claimed with
    O_EXCL so that workers sharing the directory never pick the same one."""
    n, latest, latest_mtime, latest_mode = 1, None, 0.0, 0
    while True:  # names are claimed in order, so the first gap ends the series
        path = _session_path(directory, base, n)
        try:
            st = path.stat()
        except FileNotFoundError:
            break
        if latest is None or st.st_mtime >= latest_mtime:
            latest, latest_mtime, latest_mode = path, st.st_mtime, st.st_mode
        n += 1
    if (
        resume_within is not None
        and latest is not None
        and latest_mode & _WRITE_BITS  # unfinished: its writer never closed it
        and time.time() - latest_mtime <= resume_within
    ):
        try:
            return WavFile(latest, sample_rate, channels, finalized_ok=False)
        except RecordingLocked:
            logger.info(
                "stream %s: %s is being written by another process; starting a new file",
                escape(stream_id), latest,
            )  # fmt: skip
        except RecordingFinalized:
            pass  # finished between our look and our lock
        except RecordingError as exc:
            logger.warning(
                "stream %s: cannot continue %s (%s); starting a new file",
                escape(stream_id),
                latest,
                exc,
            )
    while True:
        try:
            path = _session_path(directory, base, n)
            return WavFile(path, sample_rate, channels, create=True, patience=patience)
        except (FileExistsError, RecordingLocked):
            n += 1  # another process claimed it first


def open_recording(
    record_dir: str | os.PathLike[str],
    stream_id: str,
    sample_rate: int,
    *,
    resume_within: float,
    flush_seconds: float = DEFAULT_FLUSH_SECONDS,
    append: bool = True,
    max_backlog_seconds: float = DEFAULT_MAX_BACKLOG_SECONDS,
    retry_min_seconds: float = DEFAULT_RETRY_MIN_SECONDS,
    retry_max_seconds: float = DEFAULT_RETRY_MAX_SECONDS,
    stats: RecordingStats | None = None,
) -> WavRecorder:
    """The recorder for a new session of ``stream_id`` in ``record_dir``.

    The stream's latest file (``<base>.wav``, ``<base>~2.wav`` ...) is continued only if a
    process that died left it unfinished (writable: a finished one is read-only), within
    ``resume_within`` seconds, and no live process holds it; otherwise a new file. Blocking
    (up to a second, for a racing worker): run it in a thread.

    If the directory cannot be written (EROFS, EACCES, ENOSPC, EMFILE ...), this does not
    raise: the recorder is ``"unopened"`` (``path`` None, ``error`` set), keeps up to
    ``max_backlog_seconds`` of audio per track and retries creating a new file (never
    continuing one) on its backoff timer, without blocking, then writes the audio in place.
    Other keywords are ``WavRecorder``'s; the recorder marks its file finished at ``close``.
    """
    directory, base = Path(record_dir), recording_base(stream_id)
    recorder = WavRecorder.__new__(WavRecorder)
    recorder._setup(
        sample_rate, flush_seconds=flush_seconds, stream_id=stream_id, append=append,
        finalize=True, max_backlog_seconds=max_backlog_seconds,
        retry_min_seconds=retry_min_seconds, retry_max_seconds=retry_max_seconds, stats=stats,
    )  # fmt: skip
    try:
        file = _claim(
            directory, base, stream_id, sample_rate, 1, resume_within=resume_within, patience=None
        )
    except OSError as exc:

        def reopen() -> WavFile:  # on the event loop: no waiting for locks
            channels = recorder.channels
            return _claim(
                directory, base, stream_id, sample_rate, channels, resume_within=None, patience=0.0
            )

        recorder._defer(reopen, directory, exc)
        return recorder
    recorder._attach(file)
    return recorder


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
        _, error = _pwrite_all(fd, struct.pack("<I", end - 8), 4)
        if error is None:
            _, error = _pwrite_all(fd, struct.pack("<I", layout.data_bytes), layout.data_offset - 4)
        if error is not None:
            raise error
        return True
    finally:
        os.close(fd)  # and with it the lock


def recover_recordings(record_dir: str | os.PathLike[str]) -> list[Path]:
    """Repair every WAV in ``record_dir`` left behind by a killed process; returns those fixed.

    Finished recordings (read-only) are complete and skipped; so are files other live
    processes are writing (other workers on the same directory). Repaired files stay
    writable: a dead process's session may still be continued within its grace period.
    """
    fixed = []
    for path in sorted(Path(record_dir).glob("*.wav")):
        try:
            if is_finalized(path):
                continue
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


@dataclass(eq=False, slots=True)
class RecordingStats:
    """Recording faults as plain numbers: recorders add to them (rarely), and
    ``mediastream.metrics.ServerMetrics`` pushes their growth in batches."""

    open_errors: int = 0  # failed attempts to create or open a recording
    write_errors: int = 0  # failed attempts to write one
    lost_seconds: float = 0.0  # audio given up (per track: stereo counts both)


# the recorders' default sink: what a server's metrics read unless given another one
process_stats = RecordingStats()


@dataclass(slots=True)
class _Piece:
    track: str
    position: int
    pcm: np.ndarray


class _Run:
    """In-order audio of one track gathered in a reused buffer: a frame that continues the
    run costs one copy and leaves no object behind (nothing for the collector to promote),
    and the block is written from the buffer as it is. ``limit`` (at most the capacity) is
    the room the backlog bound leaves, so the per-frame path needs no check of its own."""

    __slots__ = ("buffer", "fill", "limit", "start", "track")

    def __init__(self, capacity: int) -> None:
        self.buffer = np.empty(capacity, dtype=np.int16)
        self.track = ""
        self.start = 0
        self.fill = 0
        self.limit = capacity

    def extend(self, track: str, start: int, pcm: np.ndarray) -> bool:
        """Append ``pcm`` if it continues this run (or starts an empty one) and fits."""
        n, fill = len(pcm), self.fill
        if fill + n > self.limit:
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


_NEVER = float("-inf")  # ``_retry_at`` while writing works: every flush may go ahead


class WavRecorder:
    """Records one stream's audio frames to a WAV, placed by position, buffered in blocks.

    ``await write(frame)`` buffers; every ``flush_seconds`` of audio it writes a block, and
    ``await close()`` writes the rest. If the file already exists, audio continues after what
    it holds (``append``), or is placed at its absolute position (``append=False``, for
    callers that track the timeline themselves). ``create`` insists on a new file
    (``FileExistsError`` otherwise); an existing file another live process is writing raises
    ``RecordingLocked``: the file stays locked until ``close``. ``finalize`` makes the file
    read-only at ``close``, the mark ``open_recording`` reads as "this session is over".

    Faults after opening never raise: see the module docstring. ``state`` is ``"unopened"``
    (no file yet), ``"writing"``, ``"retrying"`` (the last attempt failed: ``error``) or
    ``"closed"``; ``open_errors``, ``write_errors`` count failed attempts, ``lost_samples``
    the audio given up (per track); each also goes to ``stats`` (default ``process_stats``).
    """

    path: Path | None

    def __init__(
        self,
        path: str | os.PathLike[str],
        sample_rate: int,
        *,
        flush_seconds: float = DEFAULT_FLUSH_SECONDS,
        stream_id: str | None = None,
        append: bool = True,
        create: bool = False,
        finalize: bool = False,
        max_backlog_seconds: float = DEFAULT_MAX_BACKLOG_SECONDS,
        retry_min_seconds: float = DEFAULT_RETRY_MIN_SECONDS,
        retry_max_seconds: float = DEFAULT_RETRY_MAX_SECONDS,
        stats: RecordingStats | None = None,
    ) -> None:
        self._setup(
            sample_rate, flush_seconds=flush_seconds, stream_id=stream_id, append=append,
            finalize=finalize, max_backlog_seconds=max_backlog_seconds,
            retry_min_seconds=retry_min_seconds, retry_max_seconds=retry_max_seconds,
            stats=stats,
        )  # fmt: skip
        self._attach(WavFile(path, sample_rate, create=create))

    def _setup(
        self,
        sample_rate: int,
        *,
        flush_seconds: float,
        stream_id: str | None,
        append: bool,
        finalize: bool,
        max_backlog_seconds: float,
        retry_min_seconds: float,
        retry_max_seconds: float,
        stats: RecordingStats | None,
    ) -> None:
        self.path = None
        self.sample_rate = sample_rate
        self.stream_id = stream_id
        self._log_id = escape(stream_id) if stream_id is not None else "?"
        self.max_backlog_seconds = max_backlog_seconds
        self.error: BaseException | None = None  # why the last attempt failed (None: it worked)
        self.open_errors = 0
        self.write_errors = 0
        self.lost_samples = 0
        self._stats = stats if stats is not None else process_stats
        self._append = append
        self._finalize = finalize
        self._file: WavFile | None = None
        self._opener: Callable[[], WavFile] | None = None
        self._where: Path | None = None  # the directory of a recording not yet opened
        self._offset = 0
        self._flush_frames = max(1, int(flush_seconds * sample_rate))
        self._write_frames = max(self._flush_frames, int(MAX_WRITE_SECONDS * sample_rate))
        # one run per track, so two tracks' frames interleaved still continue their runs
        self._run = _Run(self._flush_frames + sample_rate // 10)  # inbound
        self._run_out = _Run(len(self._run.buffer))  # outbound
        self._backlog_frames = max(int(max_backlog_seconds * sample_rate), len(self._run.buffer))
        self._tracks: list[str] = []
        self._pending: list[_Piece] = []  # audio that did not continue the run, by arrival
        self._queued = {"inbound": 0, "outbound": 0}  # samples in ``_pending``, per track
        self._pending_hi = 0
        self._written_hi = 0  # one past the highest sample written
        self._closed = False
        self._retry_min = retry_min_seconds
        self._retry_max = retry_max_seconds
        self._delay = retry_min_seconds
        self._retry_at = _NEVER  # monotonic time before which append does not try again
        self._timer: asyncio.TimerHandle | None = None
        self._outage_start: float | None = None  # monotonic time of the outage's first failure
        self._outage_opening = False
        self._outage_failures = 0
        self._outage_written = 0
        self._outage_lost = 0
        self._loss_logged = False

    def _attach(self, file: WavFile) -> None:
        self._file, self.path = file, file.path
        if self._append:
            self._offset = file.frames  # positions count from the end of what the file holds
        if file.channels == 2:
            for track in ("inbound", "outbound"):
                if track not in self._tracks:
                    self._tracks.append(track)
        self._written_hi = max(self._written_hi, file.frames)
        self._update_room()

    def _defer(self, opener: Callable[[], WavFile], where: Path, error: OSError) -> None:
        """No file yet: buffer, and call ``opener`` on the retry timer until it works."""
        self._opener, self._where = opener, where
        self._failed(error, opening=True)

    def _update_room(self) -> None:
        queued, cap = self._queued, len(self._run.buffer)
        self._run.limit = min(cap, self._backlog_frames - queued["inbound"])
        self._run_out.limit = min(cap, self._backlog_frames - queued["outbound"])

    def _buffered(self) -> int:
        return (
            self._queued["inbound"] + self._queued["outbound"] + self._run.fill + self._run_out.fill
        )

    def _count_pending(self) -> None:
        queued = self._queued
        queued["inbound"] = queued["outbound"] = 0
        for piece in self._pending:
            queued[piece.track] += len(piece.pcm)
        self._update_room()

    @property
    def channels(self) -> int:
        if self._file is not None:
            return self._file.channels
        return 2 if len(self._tracks) == 2 else 1

    @property
    def frames_on_disk(self) -> int:
        return self._file.frames if self._file is not None else 0

    @property
    def state(self) -> str:
        """``"unopened"``, ``"writing"``, ``"retrying"`` or ``"closed"``."""
        if self._closed:
            return "closed"
        if self._file is None:
            return "unopened"
        return "retrying" if self.error is not None else "writing"

    @property
    def backlog_samples(self) -> int:
        """Samples buffered and not yet written (per track, summed)."""
        return self._buffered()

    @property
    def lost_seconds(self) -> float:
        return self.lost_samples / self.sample_rate

    async def write(self, frame: PositionedAudio) -> None:
        """Buffer one frame; write a block once ``flush_seconds`` of audio is buffered."""
        self.append(frame)

    def append(self, frame: PositionedAudio) -> None:
        """``write`` without a coroutine, for the server's per-frame path."""
        run = self._run_out if frame.track == "outbound" else self._run
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
        if self._pending_hi - self._written_hi >= self._flush_frames and (
            _monotonic() >= self._retry_at  # while failing: one call and a comparison per frame
        ):
            self.flush()

    def add(self, frame: PositionedAudio) -> None:
        """Queue one frame without writing (the synchronous half of ``write``)."""
        if self._closed:
            raise RecordingError(f"recording {self._name()} is closed")
        if frame.sample_rate != self.sample_rate:
            raise RecordingError(
                f"frame at {frame.sample_rate} Hz cannot go into a {self.sample_rate} Hz recording"
            )
        track = "outbound" if frame.track == "outbound" else "inbound"
        if track not in self._tracks:
            self._tracks.append(track)
            self._update_room()
        pcm = frame.pcm
        n = len(pcm)
        run = self._run_out if track == "outbound" else self._run
        if self._queued[track] + run.fill + n > self._backlog_frames:
            self._lose(n)
            return
        start = self._offset + frame.position
        if not run.extend(track, start, pcm):
            self._end_run(run)
            if not run.extend(track, start, pcm):
                self._pending.append(_Piece(track, start, pcm))
                self._queued[track] += n
                self._update_room()
        self._pending_hi = max(self._pending_hi, start + n)
        if self.error is not None and self._timer is None:
            # failed where no loop runs (open_recording's thread): retry from this loop
            self._schedule(max(0.0, self._retry_at - _monotonic()))

    def _end_run(self, run: _Run | None = None) -> None:
        """Move ``run`` (default: both) into the pending pieces, after what came before it
        (later pieces win overlaps; the two tracks never overlap, being two channels)."""
        for each in (run,) if run is not None else (self._run, self._run_out):
            piece = each.take()
            if piece is not None:
                self._pending.append(piece)
                self._queued[piece.track] += len(piece.pcm)
        self._update_room()

    def _name(self) -> str:
        return str(self.path) if self.path is not None else f"in {self._where} (not created)"

    def _lose(self, n: int) -> None:
        """``n`` samples do not fit the backlog: counted, and logged once per outage."""
        self.lost_samples += n
        self._stats.lost_seconds += n / self.sample_rate
        self._outage_lost += n
        if not self._loss_logged:
            self._loss_logged = True
            logger.error(
                "stream %s: recording backlog full (%g s of audio per track): dropping audio "
                "until %s can be written; it is counted as lost",
                self._log_id, self.max_backlog_seconds, self._name(),
            )  # fmt: skip

    # ------------------------------------------------------------ writing and retrying

    def flush(self) -> None:
        """Write what is buffered now (of a long backlog, its first ``MAX_WRITE_SECONDS``).

        Never raises for a fault: the audio is kept and retried on the backoff timer (and by
        ``append`` once the retry is due). Called directly, it tries at once.
        """
        if self._file is None and not self._open():
            return
        written = 0
        if self._pending or self._run.fill or self._run_out.fill:
            before = self._buffered()
            try:
                self._write_step()
            except Exception as exc:  # OSError: the disk; anything else: a bug (logged so)
                self._failed(exc, opening=False)
                return
            written = before - self._buffered()
        self._wrote(written)

    def _open(self) -> bool:
        assert self._opener is not None
        try:
            file = self._opener()
        except (OSError, RecordingError) as exc:
            self._failed(exc, opening=True)
            return False
        self._attach(file)
        return True

    def _write_step(self) -> None:
        run, file = self._run if self._run.fill else self._run_out, self._file
        assert file is not None
        if (
            not self._pending
            and file.channels == 1
            and len(self._tracks) < 2
            and run.start == file.frames
            and run.fill
        ):  # the usual block: one run continuing a mono file, written from the buffer
            try:
                file.write(run.start, run.buffer[: run.fill, None])
            except BaseException:
                if file.written_to > run.start:  # part of it is on disk: keep only the rest
                    self._end_run()
                    self._drop_written(file.written_to)
                raise
            run.fill = 0
            self._written_hi = max(self._written_hi, self._pending_hi)
        else:
            self._end_run()
            self._write_pieces(tuple(self._tracks))

    def _write_pieces(self, tracks: tuple[str, ...]) -> None:
        """Merge the pieces over what the file holds and write the first ``_write_frames``."""
        pieces, file = self._pending, self._file
        assert file is not None
        if not pieces:
            return
        if len(tracks) == 2 and file.channels == 1:
            file.widen_to_stereo(existing_channel=1 if tracks[0] == "outbound" else 0)
        lo = min(min(p.position for p in pieces), file.frames)
        hi = max(p.position + len(p.pcm) for p in pieces)
        cut = min(hi, lo + self._write_frames)
        block = np.zeros((cut - lo, file.channels), dtype=np.int16)
        existing = file.read(lo, cut)  # keep what is there (the other channel, earlier writes)
        block[: len(existing)] = existing
        stereo = file.channels == 2
        rest = []
        for piece in pieces:
            position, pcm = piece.position, piece.pcm
            end = position + len(pcm)
            a, b = max(position, lo), min(end, cut)
            if a < b:
                channel = 1 if stereo and piece.track == "outbound" else 0
                block[a - lo : b - lo, channel] = pcm[a - position : b - position]
            if end > cut:  # beyond this write: kept, in order, for the next one
                rest.append(
                    piece if position >= cut else _Piece(piece.track, cut, pcm[cut - position :])
                )
        try:
            file.write(lo, block)
        except BaseException:
            if file.written_to > lo:
                self._drop_written(file.written_to)
            raise
        self._pending = rest
        self._count_pending()
        self._written_hi = max(self._written_hi, cut if rest else self._pending_hi)

    def _drop_written(self, upto: int) -> None:
        """A write failed after putting frames before ``upto`` on disk (every pending piece
        there was in its block): those are written, neither kept nor counted lost."""
        rest = []
        for piece in self._pending:
            position, pcm = piece.position, piece.pcm
            if position + len(pcm) > upto:
                rest.append(
                    piece if position >= upto else _Piece(piece.track, upto, pcm[upto - position :])
                )
        self._pending = rest
        self._count_pending()
        self._written_hi = max(self._written_hi, upto)

    def _failed(self, exc: BaseException, *, opening: bool) -> None:
        """An attempt failed: count it, log the outage once, retry after the backoff."""
        now = _monotonic()
        if opening:
            self.open_errors += 1
            self._stats.open_errors += 1
        else:
            self.write_errors += 1
            self._stats.write_errors += 1
        if self._outage_start is None:
            self._outage_start, self._outage_opening = now, opening
            self._outage_failures = self._outage_written = self._outage_lost = 0
            self._delay = self._retry_min
            if not self._closed:  # at close, the loss is what gets logged
                self._log_outage(exc, opening)
        else:
            self._delay = min(self._delay * 2, self._retry_max)
        self._outage_failures += 1
        self.error = exc
        self._retry_at = now + self._delay
        self._schedule(self._delay)

    def _log_outage(self, exc: BaseException, opening: bool) -> None:
        keep = self.max_backlog_seconds
        if opening:
            logger.error(
                "stream %s: cannot create recording in %s: %s; keeping up to %g s of audio "
                "and retrying",
                self._log_id, self._where, _describe(exc), keep,
            )  # fmt: skip
        elif isinstance(exc, OSError):
            logger.error(
                "stream %s: cannot write recording %s: %s; keeping up to %g s of audio and "
                "retrying",
                self._log_id, self.path, _describe(exc), keep,
            )  # fmt: skip
        else:  # not the disk: a bug, so the traceback (once)
            logger.error(
                "stream %s: writing recording %s failed; keeping up to %g s of audio and "
                "retrying",
                self._log_id, self.path, keep, exc_info=exc,
            )  # fmt: skip

    def _wrote(self, written: int) -> None:
        """An attempt worked: back to normal, and the outage is over once the backlog is."""
        if self.error is not None:
            self.error = None
            self._delay = self._retry_min
            self._retry_at = _NEVER
        if self._outage_start is not None:
            self._outage_written += written
        if self._pending:  # more backlog: the next step soon, whether frames come or not
            self._schedule(0.0)
            return
        if self._timer is not None:  # a retry still due: nothing left for it
            self._timer.cancel()
            self._timer = None
        self._loss_logged = False
        if self._outage_start is not None:
            rate = self.sample_rate
            logger.warning(
                "stream %s: recording %s %s after %.2f s (%d failed attempts): %.2f s of "
                "backlog written in place, %.2f s lost",
                self._log_id, self.path,
                "created" if self._outage_opening else "written again",
                _monotonic() - self._outage_start, self._outage_failures,
                self._outage_written / rate, self._outage_lost / rate,
            )  # fmt: skip
            self._outage_start = None

    def _schedule(self, delay: float) -> None:
        """Retry (or go on draining) after ``delay`` s on the running loop, if there is one:
        without it (a thread, code with no loop) ``append`` and ``close`` do the retrying."""
        if self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self._closed:
            self.flush()

    # ------------------------------------------------------------ closing

    async def close(self) -> None:
        """Write everything still pending and close the file (idempotent)."""
        self.close_sync()

    def close_sync(self) -> None:
        """``close`` for code that is not running an event loop.

        One last attempt at everything buffered (opening the file first if it never was);
        what still cannot be written is counted as lost and logged.
        """
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            if self._file is None and self._opener is not None:
                self._open()
            while self._file is not None and self._buffered():
                before = self._buffered()
                try:
                    self._write_step()
                except Exception as exc:
                    self._failed(exc, opening=False)
                    break
                self._wrote(before - self._buffered())
            left = self._buffered()
            if left:
                self.lost_samples += left
                self._stats.lost_seconds += left / self.sample_rate
                self._pending, self._run.fill, self._run_out.fill = [], 0, 0
                self._count_pending()
                logger.error(
                    "stream %s: closing recording %s with %.2f s of audio that could not be "
                    "written: lost (%s)",
                    self._log_id, self._name(), left / self.sample_rate, _describe(self.error),
                )  # fmt: skip
        finally:
            self._close_file()

    def _close_file(self) -> None:
        file = self._file
        if file is None:
            return
        try:
            if self._finalize:
                try:
                    file.finalize()
                except OSError as exc:
                    logger.warning(
                        "stream %s: cannot mark recording %s finished (%s): it stays writable, "
                        "so a new session of the stream within the grace period may continue it",
                        self._log_id, file.path, _describe(exc),
                    )  # fmt: skip
        finally:
            file.close()
