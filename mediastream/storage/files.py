"""Which files of a record folder are finished, ready to upload, and what the waiting ones use.

A recording's session is over when its WAV is finalized: made read-only (no write bit, see
``media/recording/wavfile``), by every process that shares the folder. It goes up with every
other file of its stem (the report ``<stem>.json``, written just after the WAV is finalized;
a piece description ``<stem>.piece.json``; a picture), once the report is there or
``settle_seconds`` after it was finalized. A WAV a killed process left writable is over too
once it has not been written for longer than the grace period (no session continues it then)
and no process holds its lock; the uploader repairs its header and finalizes it first.

A file other than a WAV belongs to the WAV whose stem is the longest one that, followed by
``.``, begins its name (``a.b.json`` is ``a.b.wav``'s if there is one, else ``a.wav``'s). One
whose WAV is gone (written after its WAV went up) goes alone, once settled. Hidden files (the
upload lock, probes), ``*.tmp`` (a sidecar being written) and ``*.journal`` (a recorder's
unwritten audio, placed in its WAV by recovery) are never touched.

Everything here blocks (a directory listing, stats, reads): the uploader runs it in a thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from mediastream.media.recording import FINALIZED_MODE, RecordingError, RecordingLocked
from mediastream.media.recording.naming import recover_recording
from mediastream.media.recording.wavfile import WRITE_BITS, lock

REPORT_SUFFIX = ".json"  # the report sidecar: <stem>.json (runtime/report.py)
LOCK_NAME = ".upload.lock"  # one uploader per folder: the holder of this file's flock
READ_CHUNK = 1 << 20
NEVER_UPLOADED = (".tmp", ".journal")  # a sidecar being written; a recorder's journal


@dataclass
class Group:
    """A recording and the files of its stem, or a lone file whose WAV is gone."""

    stem: str
    files: list[Path] = field(default_factory=list)  # the WAV last
    wav: Path | None = None
    abandoned: bool = False  # the WAV was left writable by a killed process


@dataclass
class Scan:
    """What one look at the folder found."""

    ready: list[Group]
    pending_files: int  # finished files not yet uploaded (ready or settling)
    pending_bytes: int


@dataclass
class _Entry:
    name: str
    path: Path
    size: int
    mode: int
    mtime: float
    ctime: float


def scan(
    directory: Path, *, settle_seconds: float, abandon_after: float, now: float | None = None
) -> Scan:
    """The groups ready to go up, and the files and bytes waiting (live recordings aside)."""
    now = time.time() if now is None else now
    entries: dict[str, _Entry] = {}
    with os.scandir(directory) as listing:
        for item in listing:
            name = item.name
            if name.startswith(".") or name.endswith(NEVER_UPLOADED):
                continue
            try:
                if not item.is_file(follow_symlinks=False):
                    continue
                st = item.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # uploaded (or renamed) meanwhile
            entries[name] = _Entry(name, Path(item.path), st.st_size, st.st_mode, st.st_mtime,
                                   st.st_ctime)  # fmt: skip
    stems = {name[:-4] for name in entries if name.endswith(".wav")}
    sidecars: dict[str, list[_Entry]] = {}
    alone: list[_Entry] = []
    for entry in entries.values():
        if entry.name.endswith(".wav"):
            continue
        owner = _owner(entry.name, stems)
        if owner is None:
            alone.append(entry)
        else:
            sidecars.setdefault(owner, []).append(entry)
    ready: list[Group] = []
    files = size = 0
    for stem in sorted(stems):
        wav = entries[stem + ".wav"]
        mine = sidecars.get(stem, [])
        if wav.mode & WRITE_BITS:  # being written, or left by a killed process
            if now - wav.mtime <= abandon_after:
                continue  # live (or may still be continued): not waiting for upload
            abandoned = True
        else:
            abandoned = False
        files += 1 + len(mine)
        size += wav.size + sum(e.size for e in mine)
        has_report = any(e.name == stem + REPORT_SUFFIX for e in mine)
        if abandoned or has_report or now - wav.ctime >= settle_seconds:
            paths = [e.path for e in sorted(mine, key=lambda e: e.name)] + [wav.path]
            ready.append(Group(stem, paths, wav.path, abandoned))
    for entry in sorted(alone, key=lambda e: e.name):
        files += 1
        size += entry.size
        if now - entry.mtime >= settle_seconds:
            ready.append(Group(entry.name, [entry.path]))
    return Scan(ready, files, size)


def _owner(name: str, stems: set[str]) -> str | None:
    """The longest WAV stem that, followed by ``.``, begins ``name``."""
    end = name.rfind(".")
    while end > 0:
        if name[:end] in stems:
            return name[:end]
        end = name.rfind(".", 0, end)
    return None


def finalize_abandoned(path: Path) -> bool:
    """Make a WAV a killed process left read-only (its session is over), after the recovery
    a start-up runs for it (header, journal, piece description: ``recover_recording``), under its
    lock. False if a live process holds it after all, or it is gone."""
    recover_recording(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        lock(fd, path)
        os.fchmod(fd, FINALIZED_MODE)
    except RecordingError:
        return False
    finally:
        os.close(fd)
    return True


@dataclass(frozen=True)
class Fingerprint:
    """What a file held when it was read: its size and MD5s (whole, and per part)."""

    size: int
    mtime_ns: int
    md5: str
    part_md5s: tuple[bytes, ...]  # the raw digests of each ``part_bytes`` piece

    def etag(self, part_bytes: int) -> str:
        """The ETag S3 gives this file uploaded whole (the MD5), or in parts of
        ``part_bytes`` (the MD5 of the parts' MD5s, ``-`` the number of parts)."""
        if self.size <= part_bytes:
            return self.md5
        joined = hashlib.md5(b"".join(self.part_md5s), usedforsecurity=False).hexdigest()
        return f"{joined}-{len(self.part_md5s)}"


def fingerprint(path: Path, part_bytes: int) -> Fingerprint:
    """Read ``path`` once: its size, whole MD5 and the MD5 of each part."""
    whole = hashlib.md5(usedforsecurity=False)
    parts: list[bytes] = []
    with open(path, "rb") as file:
        st = os.fstat(file.fileno())
        while True:
            part = hashlib.md5(usedforsecurity=False)
            left = part_bytes
            while left:
                chunk = file.read(min(READ_CHUNK, left))
                if not chunk:
                    break
                whole.update(chunk)
                part.update(chunk)
                left -= len(chunk)
            if left == part_bytes:
                break  # nothing more
            parts.append(part.digest())
            if left:
                break  # the last, shorter part
    return Fingerprint(st.st_size, st.st_mtime_ns, whole.hexdigest(), tuple(parts))


def unchanged(path: Path, seen: Fingerprint) -> bool:
    """True if ``path`` still has the size and modification time it had when read."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    return st.st_size == seen.size and st.st_mtime_ns == seen.mtime_ns


def take_folder_lock(directory: Path) -> int | None:
    """The folder's upload lock (a descriptor to keep open), or None if another process holds
    it: processes sharing a record folder (``serve --workers N``) upload through one of them,
    and when it dies the kernel drops its lock and another takes over."""
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        lock(fd, path)  # the recordings' own lock (unlocked where locks are unsupported)
    except (RecordingLocked, OSError):
        os.close(fd)
        return None
    return fd


def release_folder_lock(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
