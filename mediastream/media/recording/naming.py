"""Where a stream's recordings go: file names, the choice of file per session, recovery.

Names (``recording_base``): a plain id is its own base name, anything else is reduced and
suffixed with a hash, so no two ids share a file; later sessions get ``<base>~2.wav`` ....
A new session continues the latest file only if a dead process left it unfinished (still
writable, unlocked, within the grace period); otherwise it claims the next free name with
O_EXCL, so workers sharing a directory never pick the same one. ``recover_recordings`` repairs
the headers of what killed processes left, at start-up.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from pathlib import Path

from mediastream.errors import RecordingError, RecordingFinalized, RecordingLocked
from mediastream.logs import escape
from mediastream.media.recording.journal import recover_journal, remove_orphans
from mediastream.media.recording.piece import recover_piece, wav_layout
from mediastream.media.recording.wavfile import WRITE_BITS, WavFile, is_finalized, recover_wav

logger = logging.getLogger(__name__)

MAX_PLAIN_ID = 200  # a plain id this long at most is its own base name
HASHED_PREFIX = 64  # characters of the reduced id kept before ``=<hash>``
HASH_DIGITS = 12  # hex digits of SHA-256 in ``<s>=<h>``

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
_PLAIN_ID = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_PLAIN_ID}}}")


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


def claim_session_file(
    directory: Path,
    stream_id: str,
    sample_rate: int,
    channels: int,
    *,
    resume_within: float | None,
    patience: float | None,
) -> WavFile:
    """The file of a new session: the series' latest file if a dead process left it unfinished
    within ``resume_within`` seconds (None: never), else the next free name, claimed with
    O_EXCL so that workers sharing the directory never pick the same one. Blocks up to
    ``patience`` s (None: ``CREATE_PATIENCE_SECONDS``) for a racing worker's lock."""
    base = recording_base(stream_id)
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
        and latest_mode & WRITE_BITS  # unfinished: its writer never closed it
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


def recover_recording(path: Path) -> bool:
    """``recover_recordings`` for one WAV: True if its audio needed repair (header or journal).
    A finished file, or one another live process is writing, is left alone."""
    try:
        if is_finalized(path):
            return False
        repaired = recover_wav(path)
        placed = recover_journal(path)  # the audio a killed writer still held
        recover_piece(path, *wav_layout(path))  # complete its piece description
        return placed or repaired
    except RecordingLocked:
        logger.debug("recording %s is being written by another process: left alone", path)
    except (OSError, RecordingError) as exc:
        logger.warning("cannot recover recording %s: %s", path, exc)
    return False


def recover_recordings(record_dir: str | os.PathLike[str]) -> list[Path]:
    """Repair every WAV in ``record_dir`` left behind by a killed process; returns those fixed.

    Finished recordings (read-only) are complete and skipped; so are files other live
    processes are writing (other workers on the same directory). Repaired files stay
    writable: a dead process's session may still be continued within its grace period. The
    audio a killed writer still held in its journal (``journal.py``) is placed first. The
    piece description of each (``piece.py``) is completed from what the file holds.
    """
    fixed = [path for path in sorted(Path(record_dir).glob("*.wav")) if recover_recording(path)]
    remove_orphans(record_dir)
    if fixed:
        logger.info("recovered %d recording(s) in %s", len(fixed), record_dir)
    return fixed
