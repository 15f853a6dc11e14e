"""Which files of a record folder are finished and ready to go up (``storage/files.py``): real
files in a tmp folder, with their modes and times set as the recorder leaves them."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from mediastream.media.recording import FINALIZED_MODE
from mediastream.storage.files import fingerprint, scan, take_folder_lock

NOW = 1_000_000.0


def make(path: Path, size: int, *, finalized: bool, age: float) -> Path:
    """A file of ``size`` bytes, last written (and finalized) ``age`` seconds before NOW."""
    path.write_bytes(os.urandom(size))
    if finalized:
        os.chmod(path, FINALIZED_MODE)
    os.utime(path, (NOW - age, NOW - age))
    return path


def names(group_files: list[Path]) -> list[str]:
    return [p.name for p in group_files]


def test_a_finalized_wav_goes_with_every_file_of_its_stem_the_wav_last(tmp_path: Path) -> None:
    make(tmp_path / "a.wav", 100, finalized=True, age=0)
    make(tmp_path / "a.json", 10, finalized=False, age=0)
    make(tmp_path / "a.piece.json", 5, finalized=False, age=0)
    make(tmp_path / "a.b.wav", 50, finalized=True, age=0)  # stream id "a.b": its own stem
    make(tmp_path / "a.b.json", 7, finalized=False, age=0)
    make(tmp_path / "a.json.tmp", 3, finalized=False, age=99)  # a sidecar being written
    make(tmp_path / ".upload.lock", 0, finalized=False, age=99)
    found = scan(tmp_path, settle_seconds=5, abandon_after=35, now=NOW)
    groups = {g.stem: names(g.files) for g in found.ready}
    assert groups == {"a": ["a.json", "a.piece.json", "a.wav"], "a.b": ["a.b.json", "a.b.wav"]}
    assert (found.pending_files, found.pending_bytes) == (5, 100 + 10 + 5 + 50 + 7)


def test_a_wav_without_its_report_waits_to_settle(tmp_path: Path) -> None:
    wav = make(tmp_path / "b.wav", 100, finalized=True, age=0)
    # ctime is when it was finalized (now, for real): settle is measured from it
    ctime = wav.stat().st_ctime
    early = scan(tmp_path, settle_seconds=5, abandon_after=35, now=ctime + 4)
    assert early.ready == [] and early.pending_bytes == 100  # waiting counts against the bound
    late = scan(tmp_path, settle_seconds=5, abandon_after=35, now=ctime + 5)
    assert [g.stem for g in late.ready] == ["b"]


def test_live_recordings_are_neither_ready_nor_pending_until_abandoned(tmp_path: Path) -> None:
    make(tmp_path / "live.wav", 100, finalized=False, age=10)
    make(tmp_path / "live.json", 10, finalized=False, age=10)  # e.g. a piece description
    found = scan(tmp_path, settle_seconds=5, abandon_after=35, now=NOW)
    assert (found.ready, found.pending_files, found.pending_bytes) == ([], 0, 0)
    # a killed process's file, not written for longer than grace + settle: over
    make(tmp_path / "live.wav", 100, finalized=False, age=36)
    (group,) = scan(tmp_path, settle_seconds=5, abandon_after=35, now=NOW).ready
    assert group.abandoned and names(group.files) == ["live.json", "live.wav"]


def test_a_sidecar_whose_wav_is_gone_goes_alone_once_settled(tmp_path: Path) -> None:
    make(tmp_path / "c.json", 10, finalized=False, age=1)
    assert scan(tmp_path, settle_seconds=5, abandon_after=35, now=NOW).ready == []
    make(tmp_path / "c.json", 10, finalized=False, age=6)
    (group,) = scan(tmp_path, settle_seconds=5, abandon_after=35, now=NOW).ready
    assert group.wav is None and names(group.files) == ["c.json"]


def test_the_fingerprint_predicts_single_and_multipart_etags(tmp_path: Path) -> None:
    part = 1000
    data = os.urandom(2 * part + 17)
    path = tmp_path / "x.wav"
    path.write_bytes(data)
    seen = fingerprint(path, part)
    assert seen.size == len(data) and seen.md5 == hashlib.md5(data).hexdigest()
    digests = b"".join(hashlib.md5(data[i : i + part]).digest() for i in (0, part, 2 * part))
    assert seen.etag(part) == hashlib.md5(digests).hexdigest() + "-3"
    assert seen.etag(len(data)) == seen.md5  # fits one PUT: the plain MD5
    exact = tmp_path / "y.wav"
    exact.write_bytes(data[: 2 * part])  # a multiple of the part size: no empty last part
    assert fingerprint(exact, part).etag(part).endswith("-2")


def test_one_process_holds_the_folders_upload_lock(tmp_path: Path) -> None:
    first = take_folder_lock(tmp_path)
    assert first is not None
    assert take_folder_lock(tmp_path) is None  # another open file: refused
    os.close(first)
    second = take_folder_lock(tmp_path)
    assert second is not None
    os.close(second)
