"""The WAV file itself: a 16-bit PCM WAV on disk, written at frame offsets, always valid.

``WavFile``'s header is rewritten after every write, so the file on disk is always a valid WAV
of everything written so far. Every write loops until the kernel took all of it: ``pwrite`` may
take less than asked (a nearly full disk does, at a block boundary), and before this loop such
a short write left a 0.2-0.45 s hole of zeros in each file. ``frames`` counts only whole frames
truly on disk, and the header never claims more. ``recover_wav`` repairs what a kill can leave
behind (data written after the last header update).

Every open file holds an exclusive ``flock`` until it is closed, so a file a live process is
writing is never continued or repaired by another; the kernel drops it when the writer dies,
which is what makes a crashed worker's file recoverable. A recording closed normally is made
read-only (``FINALIZED_MODE``): the mark, visible to every process, that its session is over.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mediastream.errors import RecordingError, RecordingFinalized, RecordingLocked

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process exclusivity, everything else works
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

# how long a new file's creator waits for a lock another process took between O_EXCL and flock
CREATE_PATIENCE_SECONDS = 1.0
FINALIZED_MODE = 0o444  # a finished recording: no write bit left
WRITE_BITS = 0o222  # any of them set: the recording's session may still go on

_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")
_HEADER_SIZE = _HEADER.size  # 44


def lock(fd: int, path: Path, *, patience: float = 0.0) -> None:
    """Hold an exclusive ``flock`` on ``fd`` until it is closed, trying for ``patience`` s.

    ``RecordingLocked`` if another open file still holds it then. Where locks are unsupported,
    writing goes on unlocked.
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


def write_atomic(path: Path, text: str, encoding: str = "ascii") -> Path:
    """Write ``text`` to ``path`` atomically (a temporary file beside it, then a rename): a
    reader never sees half of a sidecar (a report, a piece description). Blocking."""
    temporary = path.with_name(path.name + ".tmp")
    try:
        temporary.write_text(text, encoding=encoding)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def is_finalized(path: str | os.PathLike[str]) -> bool:
    """True for a recording closed normally: no write bit (checked as bits, since root may
    write to a read-only file anyway)."""
    return not os.stat(path).st_mode & WRITE_BITS


@dataclass(slots=True)
class WavLayout:
    """Where a 16-bit PCM WAV's audio is, as read from its chunks (recovery, journals, merge)."""

    sample_rate: int
    channels: int
    data_offset: int
    data_bytes: int  # as measured on disk, whole frames only


def read_layout(fd: int) -> WavLayout:
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
            return WavLayout(rate, channels, body, data_bytes)
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
        # (data, channels) of a widening not yet fully over the narrower data (see ``widen``)
        self._widening: tuple[bytes, int] | None = None
        self.written_to = 0  # one past the last whole frame the latest ``write`` put on disk
        self._header_state = (-1, -1)  # (frames, channels) the header on disk declares
        try:
            if patience is None:
                patience = CREATE_PATIENCE_SECONDS if create else 0.0
            # between O_EXCL and flock, a restarting worker's recovery may glance at a new file
            lock(self._fd, self.path, patience=patience)
            st = os.fstat(self._fd)
            try:
                now = os.stat(self.path)
                same = (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)
            except FileNotFoundError:
                same = False
            if not same:  # its creator removed it (it could not write a header): not a recording
                raise RecordingLocked(f"{self.path} was removed while it was being opened")
            if not finalized_ok and not st.st_mode & WRITE_BITS:
                raise RecordingFinalized(f"{self.path} is a finished recording")
        except BaseException:
            os.close(self._fd)
            raise
        try:
            self._created = st.st_size == 0
            if st.st_size == 0:
                self.sample_rate, self.channels, self._data_offset = sample_rate, channels, 44
                self.frames = 0
                self._write_header()
            else:
                layout = read_layout(self._fd)
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

    @property
    def created(self) -> bool:
        """True if this open made the file (it was empty): no earlier writer's journal is
        its own."""
        return self._created

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
            self._finish_widening()  # first: the data on disk is half-way
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
            self._finish_widening()
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
        """Rewrite a mono file as two channels, its audio going to ``existing_channel``."""
        self.widen(2, (existing_channel,))

    def widen(self, channels: int, placement: tuple[int, ...]) -> None:
        """Rewrite the file with ``channels`` channels: old channel ``i`` goes to channel
        ``placement[i]``, the new ones are silence (a no-op if it has that many already).

        The part beyond the old data goes first: it overwrites nothing, and it is the part
        that needs new disk space, so a full disk fails it with the old file intact (cut back
        to its length). If the rewrite of the old part then fails, the new data is kept and
        the next call (or ``read``/``write``) finishes it.
        """
        if self._widening is None:
            if self.channels >= channels:
                return
            if len(placement) != self.channels or len(set(placement)) != len(placement):
                raise RecordingError(f"cannot place {self.channels} channels at {placement}")
            old = self.read(0, self.frames)
            wide = np.zeros((len(old), channels), dtype="<i2")
            wide[:, list(placement)] = old
            raw = wide.tobytes()
            kept = len(old) * 2 * self.channels  # bytes of the old data, rewritten last
            _, error = _pwrite_all(self._fd, raw[kept:], self._data_offset + kept)
            if error is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._data_offset + kept)
                raise error
            self._widening = (raw, channels)
        self._finish_widening()

    def _finish_widening(self) -> None:
        assert self._widening is not None
        raw, channels = self._widening
        self._put(raw[: self.frames * 2 * self.channels], self._data_offset)
        self._widening = None
        self.channels = channels
        self._write_header()

    def finalize(self) -> None:
        """Mark the recording finished: header current, then read-only (``FINALIZED_MODE``)."""
        if self._header_state != (self.frames, self.channels) and self._widening is None:
            self._write_header()
        os.fchmod(self._fd, FINALIZED_MODE)

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


def recover_wav(path: str | os.PathLike[str]) -> bool:
    """Make the header of a WAV cover all whole frames on disk; True if it had to change.

    Raises ``RecordingLocked`` for a file a live process is writing: its header is current
    as far as that writer knows, and patching it under the writer would race it.
    """
    fd = os.open(path, os.O_RDWR)
    try:
        lock(fd, Path(path))
        if os.fstat(fd).st_size == 0:
            return False  # a name just claimed by a writer (or left so): nothing to repair
        layout = read_layout(fd)
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
