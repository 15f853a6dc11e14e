"""``Uploader`` in this process against a real SeaweedFS: multipart uploads checked against the
store's ETag, keys never overwritten, files removed only once the store holds them."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mediastream.config import UploadOptions
from mediastream.media.recording import FINALIZED_MODE
from mediastream.storage import UploadStats
from mediastream.storage.uploader import Uploader
from tests.storage_server import BUCKET, SeaweedS3

pytestmark = pytest.mark.slow  # a real object store


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def finished(path: Path, data: bytes) -> Path:
    """A recording as the recorder leaves it once its stream ended: read-only."""
    path.write_bytes(data)
    os.chmod(path, FINALIZED_MODE)
    return path


async def upload_until_gone(up: Uploader, *paths: Path) -> None:
    """Run ``up`` until every one of ``paths`` was uploaded and removed, then close it."""
    await up.start()
    try:
        await until(lambda: not any(path.exists() for path in paths))
    finally:
        await up.close()


def uploader(record: Path, prefix: str, **options: object) -> Uploader:
    settings = UploadOptions(
        url=f"s3://{BUCKET}/{prefix}", scan_seconds=0.05, retry_min_seconds=0.05, **options
    )  # type: ignore[arg-type]
    return Uploader(
        settings, record, instance_id="unit", resume_grace_seconds=30, stats=UploadStats()
    )


async def test_a_large_recording_goes_up_in_parts_and_only_then_is_removed(
    s3_env: SeaweedS3, tmp_path: Path
) -> None:
    part = 5 << 20  # S3's smallest part
    data = os.urandom(2 * part + 4321)
    wav = finished(tmp_path / "big.wav", data)
    report = tmp_path / "big.json"
    sidecar = b'{"stream_id": "big"}\n'
    report.write_bytes(sidecar)
    up = uploader(tmp_path, "parts", part_bytes=part)
    await upload_until_gone(up, wav, report)
    objects = s3_env.objects("parts/")
    assert objects == {"parts/unit/big.wav": data, "parts/unit/big.json": sidecar}
    import obstore

    etag = obstore.head(s3_env.store(), "parts/unit/big.wav")["e_tag"]
    assert etag is not None and etag.strip('"').endswith("-3")  # three parts, and checked
    assert (up.stats.uploaded_files, up.stats.uploaded_bytes) == (2, len(data) + len(sidecar))
    assert up.stats.failures == {"request": 0, "verify": 0, "local": 0}


async def test_a_key_holding_another_recording_is_never_overwritten(
    s3_env: SeaweedS3, tmp_path: Path
) -> None:
    import obstore

    store = s3_env.store()
    earlier = b"RIFF an earlier session of the same id, uploaded before"
    obstore.put(store, "taken/unit/call.wav", earlier)
    wav = finished(tmp_path / "call.wav", os.urandom(3000))
    data = wav.read_bytes()
    report = tmp_path / "call.json"
    report.write_text("{}\n")
    up = uploader(tmp_path, "taken")
    await upload_until_gone(up, wav, report)
    assert s3_env.objects("taken/") == {
        "taken/unit/call.wav": earlier,  # untouched
        "taken/unit/call+2.wav": data,
        "taken/unit/call+2.json": b"{}\n",
    }


async def test_a_recording_already_in_the_store_is_not_sent_again(
    s3_env: SeaweedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between the upload and the removal: the next start finds the same object
    (size and checksum), removes the file and counts it, without a second copy."""
    import obstore

    from mediastream.storage.s3 import Bucket

    puts: list[str] = []
    put = Bucket.put

    async def counted(self: Bucket, path: Path, key: str, size: int) -> None:
        puts.append(key)
        await put(self, path, key, size)

    monkeypatch.setattr(Bucket, "put", counted)
    data = os.urandom(2000)
    obstore.put(s3_env.store(), "again/unit/done.wav", data)
    wav = finished(tmp_path / "done.wav", data)
    os.utime(wav, (time.time() - 60, time.time() - 60))
    up = uploader(tmp_path, "again", settle_seconds=0.0)
    await upload_until_gone(up, wav)
    assert s3_env.objects("again/") == {"again/unit/done.wav": data}
    assert up.stats.uploaded_files == 1
    assert puts == []  # found in the store: not sent


async def test_without_md5_etags_the_object_is_read_back_and_hashed(
    s3_env: SeaweedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some stores' ETags are not MD5s (AWS with SSE-KMS): the check reads the object back.
    Here SeaweedFS's ETags are taken as opaque, so that path runs against the real store."""
    from mediastream.storage import uploader as module

    monkeypatch.setattr(module, "is_content_etag", lambda etag: False)
    data = os.urandom(3 << 20)
    wav = finished(tmp_path / "opaque.wav", data)
    os.utime(wav, (time.time() - 60, time.time() - 60))
    up = uploader(tmp_path, "opaque", settle_seconds=0.0)
    await upload_until_gone(up, wav)
    assert s3_env.objects("opaque/") == {"opaque/unit/opaque.wav": data}
    assert up.stats.failures["verify"] == 0
