"""The S3 client: obstore (the ``[s3]`` extra), imported here only, and only when used.

Why obstore: against aioboto3 on a local SeaweedFS (``benchmarks/upload.py``,
``benchmarks/RESULTS.md``) it imports several times faster, holds less memory, and uploads
faster; its requests run in Rust threads, so nothing of an upload runs on the event loop (a
file given as a path is read there too). Its own retries are turned off: the uploader retries
with its own backoff, forever, and logs each outage once; one attempt is bounded by
``request_seconds``.

A file up to ``part_bytes`` goes up in one PUT (held in memory by the client while it goes);
a larger one in parts of exactly ``part_bytes``, so that its ETag can be predicted and checked.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from mediastream.config import UploadOptions
from mediastream.errors import UsageError, install_hint
from mediastream.storage.target import UploadTarget

DEFAULT_REGION = "us-east-1"
# an ETag S3 computes from content: an MD5, or the MD5 of the parts' MD5s and their count
_MD5_ETAG = re.compile(r"[0-9a-f]{32}(-[0-9]+)?")


def load_obstore() -> Any:
    """The obstore module, or a ``UsageError`` saying how to install it."""
    try:
        import obstore
        import obstore.store
    except ImportError:
        raise UsageError(f"--upload needs obstore: {install_hint('s3')}") from None
    return obstore


def endpoint_of(options: UploadOptions) -> str | None:
    """The store's address: the option, else ``$AWS_ENDPOINT_URL``, else AWS itself."""
    return options.endpoint or os.environ.get("AWS_ENDPOINT_URL") or None


def region_of(options: UploadOptions) -> str:
    return (
        options.region
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or DEFAULT_REGION
    )


class Bucket:
    """One bucket, through obstore; every method is a coroutine that never blocks the loop."""

    def __init__(self, target: UploadTarget, options: UploadOptions) -> None:
        self._obstore = load_obstore()
        from obstore.store import S3Store

        self.target = target
        self.part_bytes = options.part_bytes
        self.part_concurrency = options.part_concurrency
        endpoint = endpoint_of(options)
        config: dict[str, Any] = {"region": region_of(options)}
        if endpoint is not None:
            config["endpoint"] = endpoint
        self._store = S3Store(
            target.bucket,
            config=config,  # type: ignore[arg-type]
            client_options={
                "allow_http": endpoint is not None and endpoint.startswith("http://"),
                "timeout": timedelta(seconds=options.request_seconds),
                "connect_timeout": timedelta(seconds=options.connect_seconds),
            },
            retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=0)},
        )

    async def head(self, key: str) -> tuple[int, str] | None:
        """The stored object's (size, ETag without quotes), or None if there is none."""
        from obstore.exceptions import NotFoundError

        try:
            meta = await self._obstore.head_async(self._store, key)
        except (NotFoundError, FileNotFoundError):  # obstore raises the latter for a 404
            return None
        return int(meta["size"]), (meta["e_tag"] or "").strip('"').lower()

    async def put(self, path: Path, key: str, size: int) -> None:
        """Upload ``path`` as ``key``: one PUT up to ``part_bytes``, else in parts."""
        await self._obstore.put_async(
            self._store,
            key,
            path,
            use_multipart=size > self.part_bytes,
            chunk_size=self.part_bytes,
            max_concurrency=self.part_concurrency,
        )

    async def md5_of(self, key: str) -> str:
        """The MD5 of the stored object, read back: for a store whose ETags are not MD5s."""
        result = await self._obstore.get_async(self._store, key)
        digest = hashlib.md5(usedforsecurity=False)
        async for chunk in result.stream(min_chunk_size=1 << 20):
            await asyncio.to_thread(digest.update, memoryview(chunk))  # ~2 ms a MiB: off the loop
        return digest.hexdigest()


def is_content_etag(etag: str) -> bool:
    """True if ``etag`` is one S3 computes from the content (checkable against the file)."""
    return _MD5_ETAG.fullmatch(etag) is not None
