"""``Uploader``: every finished recording of a record folder goes to the bucket, then is removed.

The rules (``README.md``, "Recordings in object storage"):

- a recording goes up once its session is over (``files``), with every file of its stem, the
  WAV last; each file's object is then read back by a HEAD and compared with the local file:
  the same size and the same MD5 (the ETag of a single PUT, or the MD5 of the parts' MD5s for
  a multipart one; a store whose ETags are something else is read back whole). Only then is
  the local file removed, the WAV last: a crash in between leaves the WAV, and the next try
  finds the objects already there (same size and checksum) and does not send them again;
- an object of the same key with other content (a later session of the same stream id, named
  ``<id>.wav`` again once the first went up) is never overwritten: the group goes up as
  ``<stem>+2``, ``<stem>+3``, ... (``+`` never occurs in a recording's name);
- while the store fails, every attempt waits ``retry_min_seconds``, doubling up to
  ``retry_max_seconds``, and never gives up; the outage is logged once when it starts and once
  when it ends;
- the folder is scanned every ``scan_seconds`` (a listing and stats, in a thread), so files
  left by an earlier run are found like new ones;
- the files waiting may use ``max_pending_bytes`` of disk: beyond, ``refusal()`` tells the core
  to refuse new streams (1013, so the carrier tries elsewhere); streams already running, and
  reconnects of them, go on, and nothing received is dropped;
- at shutdown, what is under way and what the shutdown finalized get ``shutdown_seconds``;
  the rest stays for the next start.

Nothing here blocks the event loop: listings, checksums and removals run in threads, and the
client's requests in its own. At most ``concurrency`` groups are in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from mediastream.config import UploadOptions
from mediastream.errors import MediaStreamError
from mediastream.storage import files
from mediastream.storage.files import Fingerprint, Group
from mediastream.storage.s3 import Bucket, is_content_etag
from mediastream.storage.stats import UploadStats, upload_stats
from mediastream.storage.target import object_key, parse_upload_url

logger = logging.getLogger(__name__)

RENAME_MARK = "+"  # <stem>+N: a group whose key holds another object already
MAX_RENAMES = 1000


class UploadReadError(MediaStreamError):
    """A recording's file could not be read for upload (not the store's fault); it stays."""


class Uploader:
    """Uploads ``record_dir``'s finished recordings to ``options.url``, then removes them."""

    def __init__(
        self,
        options: UploadOptions,
        record_dir: Path,
        *,
        instance_id: str,
        resume_grace_seconds: float,
        stats: UploadStats | None = None,
    ) -> None:
        self.options = options
        self.target = parse_upload_url(options.url)
        self.record_dir = Path(record_dir)
        self.instance_id = instance_id
        # a writable WAV not written for this long is a killed process's, and finished
        self.abandon_after = resume_grace_seconds + options.settle_seconds
        self.stats = stats if stats is not None else upload_stats
        self.pending_bytes = 0  # what waits in the folder, whoever uploads it (the bound)
        self.bucket: Bucket | None = None
        self._lock_fd: int | None = None
        self._queue: asyncio.Queue[Group] = asyncio.Queue()
        self._queued: set[str] = set()  # stems queued or in flight
        self._tasks: list[asyncio.Task[None]] = []
        self._retry_delay = 0.0
        self._retry_at = 0.0
        self._down_since: float | None = None
        self._full = False

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Make the client (a missing extra is a ``UsageError``), then scan and upload."""
        self.bucket = Bucket(self.target, self.options)
        await self._scan()
        self._tasks.append(asyncio.create_task(self._scan_forever()))
        for _ in range(self.options.concurrency):
            self._tasks.append(asyncio.create_task(self._work()))
        logger.info(
            "uploading finished recordings of %s to %s/%s/",
            self.record_dir, self.target.url.rstrip("/"), self.instance_id,
        )  # fmt: skip

    def refusal(self) -> tuple[str, str] | None:
        """Why a new stream may not start now (reason, metric label), or None."""
        if self.pending_bytes < self.options.max_pending_bytes:
            return None
        reason = (
            f"upload backlog full ({self.pending_bytes} bytes of recordings wait for upload, "
            f"bound {self.options.max_pending_bytes})"
        )
        return reason, "upload_backlog"

    async def close(self) -> None:
        """Give what is under way, and what the shutdown finished, ``shutdown_seconds``; leave
        the rest for the next start."""
        scanner, workers = self._tasks[:1], self._tasks[1:]
        for task in scanner:
            task.cancel()
        await asyncio.gather(*scanner, return_exceptions=True)
        if workers:
            await self._scan(settle_seconds=0.0)  # nothing of ours is still being written
            with contextlib.suppress(TimeoutError):  # each queued group tried once, at most
                await asyncio.wait_for(self._queue.join(), self.options.shutdown_seconds)
            if self.stats.pending_files:
                logger.warning(
                    "upload: %d file(s) not uploaded at shutdown; they stay in %s for the next "
                    "start", self.stats.pending_files, self.record_dir,
                )  # fmt: skip
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        self._tasks.clear()
        self.bucket = None  # the client's connections close now, not at interpreter exit
        if self._lock_fd is not None:
            files.release_folder_lock(self._lock_fd)
            self._lock_fd = None
        self.stats.pending_files = self.stats.pending_bytes = 0

    # ------------------------------------------------------------ scanning

    async def _scan_forever(self) -> None:
        while True:
            await asyncio.sleep(self.options.scan_seconds)
            try:
                await self._scan()
            except Exception:
                logger.exception("upload: scanning %s failed", self.record_dir)

    async def _scan(self, *, settle_seconds: float | None = None) -> None:
        """Look at the folder: queue what is ready (if this process holds its upload lock),
        and measure what waits, for the bound."""
        if self._lock_fd is None:
            self._lock_fd = await asyncio.to_thread(files.take_folder_lock, self.record_dir)
        settle = self.options.settle_seconds if settle_seconds is None else settle_seconds
        found = await asyncio.to_thread(
            files.scan, self.record_dir, settle_seconds=settle, abandon_after=self.abandon_after
        )
        self.pending_bytes = found.pending_bytes
        self._judge_bound()
        if self._lock_fd is None:  # another process uploads this folder
            self.stats.pending_files = self.stats.pending_bytes = 0
            return
        self.stats.pending_files = found.pending_files
        self.stats.pending_bytes = found.pending_bytes
        for group in found.ready:
            if group.stem not in self._queued:
                self._queued.add(group.stem)
                self._queue.put_nowait(group)

    def _judge_bound(self) -> None:
        full = self.refusal() is not None
        if full and not self._full:
            logger.warning(
                "upload backlog full: %d bytes of recordings in %s wait for upload (bound %d, "
                "--upload-max-pending-bytes): new streams are refused (1013) until uploads "
                "catch up; streams already running go on",
                self.pending_bytes, self.record_dir, self.options.max_pending_bytes,
            )  # fmt: skip
        elif self._full and not full:
            logger.info(
                "upload backlog below its bound again (%d bytes wait): new streams accepted",
                self.pending_bytes,
            )
        self._full = full

    # ------------------------------------------------------------ uploading

    async def _work(self) -> None:
        while True:
            group = await self._queue.get()
            try:
                await self._wait_for_retry()
                await self._upload(group)
            except asyncio.CancelledError:
                raise
            except UploadReadError as exc:
                self.stats.failed("local")
                logger.error("upload: cannot read %s: %s; it stays", group.stem, exc)
            except Exception as exc:
                self._failed(exc)
            else:
                self._succeeded()
            finally:
                self._queued.discard(group.stem)
                self._queue.task_done()

    async def _wait_for_retry(self) -> None:
        delay = self._retry_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def _failed(self, exc: BaseException) -> None:
        """One more failed attempt: wait longer before the next one; log the outage once."""
        options = self.options
        self._retry_delay = min(
            options.retry_max_seconds, max(options.retry_min_seconds, self._retry_delay * 2)
        )
        self._retry_at = time.monotonic() + self._retry_delay
        if not isinstance(exc, UploadVerifyError):
            self.stats.failed("request")
        if self._down_since is None:
            self._down_since = time.monotonic()
            logger.error(
                "upload to %s failing: %s; files stay in %s, retried after %g s, doubling "
                "up to %g s",
                self.target.url, _describe(exc), self.record_dir,
                options.retry_min_seconds, options.retry_max_seconds,
            )  # fmt: skip
        else:
            logger.debug("upload to %s still failing: %s", self.target.url, _describe(exc))

    def _succeeded(self) -> None:
        self._retry_delay = 0.0
        self._retry_at = 0.0
        if self._down_since is not None:
            logger.warning(
                "upload to %s works again after %.1f s; %d file(s) wait",
                self.target.url, time.monotonic() - self._down_since, self.stats.pending_files,
            )  # fmt: skip
            self._down_since = None

    async def _upload(self, group: Group) -> None:
        """Upload, verify and remove one group; raises on any failure (nothing removed)."""
        assert self.bucket is not None
        if group.abandoned:
            assert group.wav is not None
            if not await asyncio.to_thread(files.finalize_abandoned, group.wav):
                return  # a live process holds it after all
        try:
            prints = [await asyncio.to_thread(self._fingerprint, path) for path in group.files]
        except FileNotFoundError:
            return  # uploaded by another process meanwhile
        stem = await self._free_stem(group, prints)
        for path, seen in zip(group.files, prints, strict=True):
            key = object_key(self.target, self.instance_id, _renamed(path.name, group, stem))
            stored = await self.bucket.head(key)
            if stored is None or not await self._matches(key, stored, seen):
                await self.bucket.put(path, key, seen.size)
                stored = await self.bucket.head(key)
                if stored is None or not await self._matches(key, stored, seen):
                    self.stats.failed("verify")
                    raise UploadVerifyError(f"{key}: stored {stored} differs from {path}")
            logger.debug("uploaded %s to %s (%d bytes)", path, key, seen.size)
        for path, seen in zip(group.files, prints, strict=True):
            if await asyncio.to_thread(_remove_if_unchanged, path, seen):
                self.stats.uploaded_files += 1
                self.stats.uploaded_bytes += seen.size
                # what waits is less by this much now, not only at the next scan
                self.pending_bytes = max(0, self.pending_bytes - seen.size)
                self.stats.pending_files = max(0, self.stats.pending_files - 1)
                self.stats.pending_bytes = max(0, self.stats.pending_bytes - seen.size)
        self._judge_bound()

    def _fingerprint(self, path: Path) -> Fingerprint:
        try:
            return files.fingerprint(path, self.options.part_bytes)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise UploadReadError(str(exc)) from exc

    async def _matches(self, key: str, stored: tuple[int, str], seen: Fingerprint) -> bool:
        """The stored object is this file: same size, same MD5."""
        assert self.bucket is not None
        size, etag = stored
        if size != seen.size:
            return False
        if is_content_etag(etag):
            return etag == seen.etag(self.options.part_bytes)
        return await self.bucket.md5_of(key) == seen.md5

    async def _free_stem(self, group: Group, prints: list[Fingerprint]) -> str:
        """The group's stem in the bucket: its own, unless its WAV's key holds another object
        (then ``<stem>+N``, the first free or already holding this WAV)."""
        assert self.bucket is not None
        if group.wav is None:
            return group.stem
        seen = prints[-1]
        for n in range(1, MAX_RENAMES):
            stem = group.stem if n == 1 else f"{group.stem}{RENAME_MARK}{n}"
            key = object_key(self.target, self.instance_id, _renamed(group.wav.name, group, stem))
            stored = await self.bucket.head(key)
            if stored is None or await self._matches(key, stored, seen):
                if n > 1:
                    logger.warning(
                        "upload: %s is taken by another recording; uploading %s as %s",
                        group.wav.name, group.stem, stem,
                    )  # fmt: skip
                return stem
        raise UploadVerifyError(f"no free name for {group.stem} after {MAX_RENAMES} tries")


class UploadVerifyError(MediaStreamError):
    """The stored object is not the local file (size or checksum): it stays, and is retried."""


def _renamed(name: str, group: Group, stem: str) -> str:
    return stem + name[len(group.stem) :] if stem != group.stem else name


def _remove_if_unchanged(path: Path, seen: Fingerprint) -> bool:
    """Remove ``path`` if it is still what was uploaded (a sidecar rewritten meanwhile stays,
    and goes up again)."""
    if not files.unchanged(path, seen):
        return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _describe(exc: BaseException) -> str:
    """One line for a log: the error's first sentence or so (obstore appends a debug dump)."""
    text = " ".join(str(exc).split()).split(" Debug source:")[0]
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
