"""The journal: a recorder's unwritten audio in a shared file mapping, so a kill loses none.

A recorder gathers in-order audio in one buffer per track and writes it to the WAV once per
block (``flush_seconds``): one ``pwrite`` per block is what keeps recording cheap. While
those buffers were process memory, a SIGKILL (the OOM killer, a supervisor, ``kubectl delete
--force``) lost the block being gathered, up to 0.6 s of audio the recorder had been handed.
The journal puts the same buffers in a shared mapping of a small file beside the WAV,
``<name>.wav.journal``: a frame is copied into it as it was copied into process memory, plus
one 8-byte store of the new length, so no system call is added per frame. The pages are the
kernel's page cache: they outlive the process (not a power cut). Measured in
``benchmarks/recorder_frame.py``.

The next process that takes the WAV's lock places what the journal holds in the WAV and
removes it: ``recover_recordings`` at start-up, or a new session continuing the file. A
journal is only ever touched under its WAV's ``flock``, so it is never read while its
writer lives. A journal is never placed in a file that its opener made (a later recording
that took the name of a removed one): only in a file that was there, as its writer left it.

Its space is taken when it is made, by writing it full of zeros (ext4 and XFS reserve the
blocks of written pages; tmpfs allocates them), so a full disk is an error then (the recorder
goes on without a journal, and says so), never a SIGBUS on a store later. Measured here
(ext4), zeros cost less than ``posix_fallocate``: its unwritten extents made the first store
to each page a 5-7 µs fault (2 µs for a written page). The name goes at ``close``, on the
event loop while still mapped (10-20 µs); the pages and blocks go with the last unmapping,
which the recorder leaves to a worker thread when a loop runs (freeing allocated blocks took
150 µs to 1.7 ms). On a copy-on-write filesystem (btrfs, ZFS) a rewritten page needs
new space, which a full disk would refuse with a SIGBUS: there the recorder keeps its
buffers in process memory, as it does where libc's ``mmap`` cannot be called.

Layout (native byte order: a journal is read back on the machine that wrote it): 8 bytes of
magic, ``_FIELDS`` int64 fields (the rate, the slot size, the recorder's channel layout and
the file's, then per slot: track, first frame, samples held), and
from byte ``_DATA`` one slot of int16 samples per track.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import mmap
import os
import queue
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mediastream.media.recording.wavfile import WRITE_BITS, WavFile, lock, read_layout

logger = logging.getLogger(__name__)

SUFFIX = ".journal"  # CALL.wav -> CALL.wav.journal
SLOTS = 3  # inbound, outbound, playback
TRACK_CODES = {"inbound": 1, "outbound": 2, "playback": 3}
_TRACKS = {code: track for track, code in TRACK_CODES.items()}
_MAGIC = b"MSJRNL01"
_FIELDS = 32
_RATE, _CAPACITY, _LAYOUT, _FILE_LAYOUT, _SLOT0 = 0, 1, 2, 5, 8
_DATA = 4096  # the samples start on the second page
# a slot's three fields: its track's code, the frame its first sample goes to, samples held
TRACK, START, FILL = 0, 1, 2
_MAX_CAPACITY = 1 << 24  # a sanity bound when reading a journal back

# filesystems where rewriting a page needs new space (no journal there: see the docstring)
COPY_ON_WRITE = frozenset({"btrfs", "zfs", "bcachefs"})
_fs_types: dict[int, str] = {}


def journal_path(wav: str | os.PathLike[str]) -> Path:
    """The journal of ``wav``: ``CALL.wav`` has ``CALL.wav.journal``."""
    path = Path(wav)
    return path.with_name(path.name + SUFFIX)


def _fs_type(directory: Path) -> str:
    """The filesystem type of ``directory`` (from /proc/self/mountinfo; "" if unknown),
    cached by device."""
    try:
        dev = os.stat(directory).st_dev
    except OSError:
        return ""
    if dev in _fs_types:
        return _fs_types[dev]
    found, best = "", -1
    try:
        real = os.path.realpath(directory)
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as lines:
            for line in lines:
                head, _, tail = line.partition(" - ")
                fields, kind = head.split(), tail.split()[:1]
                if len(fields) < 5 or not kind:
                    continue
                point = fields[4].replace("\\040", " ")
                inside = real == point or real.startswith(point.rstrip("/") + "/")
                if inside and len(point) > best:
                    found, best = kind[0], len(point)
    except OSError:
        found = ""
    _fs_types[dev] = found
    return found


def _libc_mmap() -> tuple[ctypes._CFuncPtr, ctypes._CFuncPtr] | None:
    """libc's ``mmap`` and ``munmap``: Python's ``mmap`` keeps a duplicate of the file's
    descriptor open while mapped (until 3.13's ``trackfd``), which would make a recording
    cost three descriptors instead of two (the server's limits count two)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        map_, unmap = libc.mmap, libc.munmap
    except (OSError, AttributeError):
        return None
    map_.restype = ctypes.c_void_p
    map_.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                     ctypes.c_int, ctypes.c_long)  # fmt: skip
    unmap.restype = ctypes.c_int
    unmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    return map_, unmap


_MMAP = _libc_mmap() if os.name == "posix" else None
_MAP_FAILED = ctypes.c_void_p(-1).value


def _map_shared(fd: int, size: int) -> ctypes.Array[ctypes.c_char]:
    """``size`` bytes of ``fd`` mapped shared and writable, as a ctypes array; unmapped when
    the last view of it is gone (never under a view: that would be a dangling pointer)."""
    assert _MMAP is not None
    map_, unmap = _MMAP
    address = map_(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
    if address is None or address == _MAP_FAILED:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    buffer = (ctypes.c_char * size).from_address(address)
    # never at exit: a recorder still open then may write into it; the exit unmaps it
    weakref.finalize(buffer, unmap, address, size).atexit = False
    return buffer


_unmapping: queue.SimpleQueue[list[object]] | None = None
_unmapping_lock = threading.Lock()


def let_go(holder: list[object]) -> None:
    """Drop what ``holder`` holds (a removed journal's mapping, its last reference) in a
    thread of its own: the last unmapping frees the file's pages and blocks, 250 µs median
    and up to 1.6 ms on ext4 once written back, which the event loop must not wait for. A
    put on a queue is all the caller pays; the thread waits on the queue, GIL released."""
    global _unmapping
    with _unmapping_lock:
        if _unmapping is None:
            _unmapping = queue.SimpleQueue()
            threading.Thread(
                target=_unmap_forever, args=(_unmapping,), name="journal-unmap", daemon=True
            ).start()
    _unmapping.put(holder)


def _unmap_forever(items: queue.SimpleQueue[list[object]]) -> None:
    while True:
        items.get().clear()


class JournalUnsupported(OSError):
    """No journal here: a copy-on-write filesystem (rewriting a mapped page needs new space),
    or no libc ``mmap`` to call."""


class Journal:
    """One recording's journal, mapped: ``slot(i)`` gives a track's sample buffer and its
    three fields, written in place by the recorder's runs."""

    def __init__(self, wav: WavFile, capacity: int) -> None:
        """Make (or replace: the WAV's lock is ours) ``wav``'s journal with slots of
        ``capacity`` samples. ``OSError`` if it cannot be made, with nothing left behind."""
        self.path = journal_path(wav.path)
        kind = _fs_type(self.path.parent)
        if kind in COPY_ON_WRITE:
            raise JournalUnsupported(errno.EOPNOTSUPP, f"a copy-on-write filesystem ({kind})")
        if _MMAP is None:
            raise JournalUnsupported(errno.EOPNOTSUPP, "no shared file mappings here")
        size = _DATA + SLOTS * capacity * 2
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            zeros, done = memoryview(bytes(size)), 0
            while done < size:  # a new file's own descriptor: plain sequential writes
                written = os.write(fd, zeros[done:])
                if written <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                done += written
            self._map: ctypes.Array[ctypes.c_char] | None = _map_shared(fd, size)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            raise
        os.close(fd)  # the mapping keeps the file
        ctypes.memmove(self._map, _MAGIC, len(_MAGIC))
        as_int64 = np.frombuffer(self._map, dtype=np.int64, count=_FIELDS, offset=len(_MAGIC))
        self._fields = memoryview(as_int64)  # item stores at half the cost of numpy's
        fields = self._fields
        fields[_RATE], fields[_CAPACITY] = wav.sample_rate, capacity
        self.capacity = capacity
        self._views: list[memoryview] = [fields]

    def slot(self, index: int) -> tuple[np.ndarray, memoryview]:
        """Slot ``index``'s buffer (``capacity`` int16 samples) and its fields (``TRACK``,
        ``START``, ``FILL``), both views of the mapping."""
        assert self._map is not None
        buffer = np.frombuffer(
            self._map, dtype=np.int16, count=self.capacity,
            offset=_DATA + index * self.capacity * 2,
        )  # fmt: skip
        fields = self._fields[_SLOT0 + 3 * index : _SLOT0 + 3 * index + 3]
        self._views.append(fields)
        return buffer, fields

    def set_layout(self, layout: Sequence[str], file_layout: Sequence[str]) -> None:
        """The recorder's channels by track, and the channels the file holds now (fewer
        while a widening waits for the next write)."""
        for base, tracks in ((_LAYOUT, layout), (_FILE_LAYOUT, file_layout)):
            for k in range(3):
                self._fields[base + k] = TRACK_CODES[tracks[k]] if k < len(tracks) else 0

    def remove(self) -> ctypes.Array[ctypes.c_char] | None:
        """Delete the journal (everything in it is in the WAV, or counted lost): its slots
        emptied, its name removed, its views released. Returns the mapping, unmapped (and
        the file's pages freed) when the caller drops it and the recorder's runs have
        dropped theirs."""
        for index in range(SLOTS):
            self._fields[_SLOT0 + 3 * index + FILL] = 0
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        for view in reversed(self._views):
            view.release()
        self._views.clear()
        mapping, self._map = self._map, None
        return mapping


@dataclass(frozen=True, slots=True)
class _Contents:
    sample_rate: int
    layout: tuple[str, ...]
    file_layout: tuple[str, ...]
    pieces: list[tuple[str, int, np.ndarray]]  # (track, first frame, samples)


def _read(path: Path) -> _Contents | None:
    """What a journal holds, or None if it is not one (or cut short)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(raw) < _DATA or raw[: len(_MAGIC)] != _MAGIC:
        return None
    fields = np.frombuffer(raw, dtype=np.int64, count=_FIELDS, offset=len(_MAGIC))
    rate, capacity = int(fields[_RATE]), int(fields[_CAPACITY])
    if rate <= 0 or not 0 < capacity <= _MAX_CAPACITY or len(raw) < _DATA + SLOTS * capacity * 2:
        return None

    def tracks(base: int) -> tuple[str, ...]:
        return tuple(_TRACKS[c] for c in (int(x) for x in fields[base : base + 3]) if c in _TRACKS)

    pieces = []
    for index in range(SLOTS):
        code, start, fill = (int(x) for x in fields[_SLOT0 + 3 * index : _SLOT0 + 3 * index + 3])
        if code in _TRACKS and start >= 0 and 0 < fill <= capacity:
            offset = _DATA + index * capacity * 2
            pcm = np.frombuffer(raw, dtype=np.int16, count=fill, offset=offset).copy()
            pieces.append((_TRACKS[code], start, pcm))
    return _Contents(rate, tracks(_LAYOUT), tracks(_FILE_LAYOUT), pieces)


def replay_journal(file: WavFile) -> int:
    """Place what a dead writer's journal holds in ``file`` (open, so locked, and not made
    by this open: see ``WavFile.created``), then remove the journal; the samples placed.

    Audio goes where it belonged, over what the file holds there, a gap before it being
    silence; a file whose second track's channel was still to be added is widened first.
    ``OSError`` if the file cannot be written (the journal is then kept).
    """
    path = journal_path(file.path)
    contents = _read(path)
    if contents is None:
        with contextlib.suppress(FileNotFoundError):
            if path.exists():
                logger.warning("%s is not a recording journal: removed", path)
            path.unlink()
        return 0
    if contents.sample_rate != file.sample_rate:
        logger.warning(
            "journal %s is of %d Hz audio, %s of %d Hz: removed",
            path, contents.sample_rate, file.path, file.sample_rate,
        )  # fmt: skip
        path.unlink(missing_ok=True)
        return 0
    placed = 0
    if contents.pieces:
        layout, held = contents.layout, contents.file_layout
        if len(layout) > file.channels == len(held) and set(held) <= set(layout):
            file.widen(len(layout), tuple(layout.index(track) for track in held))
        tracks = layout if len(layout) == file.channels else held
        channel_of = {track: index for index, track in enumerate(tracks)}
        for track, start, pcm in contents.pieces:
            channel = channel_of.get(track)
            if channel is None or channel >= file.channels:
                logger.error(
                    "journal %s: %d samples of track %s have no channel in %s: lost",
                    path, len(pcm), track, file.path,
                )  # fmt: skip
                continue
            lo, hi = min(start, file.frames), start + len(pcm)
            block = np.zeros((hi - lo, file.channels), dtype=np.int16)
            existing = file.read(lo, hi)
            block[: len(existing)] = existing
            block[start - lo :, channel] = pcm
            file.write(lo, block)
            placed += len(pcm)
        logger.info(
            "recording %s: %.2f s of audio a killed process held in its journal written in place",
            file.path, placed / file.sample_rate,
        )  # fmt: skip
    path.unlink(missing_ok=True)
    return placed


def recover_journal(wav: str | os.PathLike[str]) -> bool:
    """At start-up: place the journal a killed writer left beside ``wav`` (see
    ``replay_journal``); True if it held audio. ``RecordingLocked`` if a live process holds
    the file (its journal is its own)."""
    path = journal_path(wav)
    if not path.exists():
        return False
    fd = os.open(wav, os.O_RDWR)
    try:
        lock(fd, Path(wav))
        st = os.fstat(fd)
        rate = read_layout(fd).sample_rate
        contents = _read(path)
        if contents is None or not contents.pieces:  # all of it was written: the file as it is
            if contents is None and path.exists():
                logger.warning("%s is not a recording journal: removed", path)
            path.unlink(missing_ok=True)
            return False
    finally:
        os.close(fd)  # and the lock: WavFile takes its own
    file = WavFile(wav, rate, finalized_ok=False)
    try:
        placed = replay_journal(file) > 0
    finally:
        file.close()
    # the time its writer left it: the grace period for continuing it counts from then
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns))
    return placed


def remove_orphans(record_dir: str | os.PathLike[str]) -> None:
    """Remove journals whose recording is gone or finished: nothing can place them."""
    for path in Path(record_dir).glob("*.wav" + SUFFIX):
        wav = path.with_name(path.name[: -len(SUFFIX)])
        try:
            finished = not os.stat(wav).st_mode & WRITE_BITS
        except FileNotFoundError:
            finished = True
        except OSError:
            continue
        if finished:
            logger.warning("journal %s has no unfinished recording beside it: removed", path)
            with contextlib.suppress(OSError):
                path.unlink()
