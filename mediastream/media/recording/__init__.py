"""WAV recording that places audio by its position and keeps it through disk faults and kills.

One concern per module, each importing only the ones before it:

- ``wavfile``: the file itself, a 16-bit PCM WAV written at frame offsets with its header
  current after every write, short writes finished, its lock, and header repair after a kill;
- ``journal``: the recorder's unwritten audio in a shared file mapping beside the WAV, so a
  killed process loses none of it, and putting it in place after the kill;
- ``naming``: which file a stream's session writes (names never shared by two ids, never
  outside the directory), continuing what a killed process left, and recovery at start-up;
- ``recorder``: ``WavRecorder``, the per-stream buffer that writes blocks from the event loop
  and keeps audio through disk faults (``append`` to add, ``close`` to finish), and
  ``open_recording``, which gives one for a new session.
"""

from __future__ import annotations

from mediastream.errors import RecordingError, RecordingFinalized, RecordingLocked
from mediastream.media.recording.naming import (
    recording_base,
    recording_path,
    recover_recordings,
    safe_stream_name,
    session_path,
)
from mediastream.media.recording.recorder import (
    DEFAULT_FLUSH_SECONDS,
    DEFAULT_MAX_BACKLOG_SECONDS,
    DEFAULT_RETRY_MAX_SECONDS,
    DEFAULT_RETRY_MIN_SECONDS,
    MAX_WRITE_SECONDS,
    PendingFile,
    PositionedAudio,
    RecordingStats,
    WavRecorder,
    open_recording,
    process_stats,
)
from mediastream.media.recording.wavfile import (
    FINALIZED_MODE,
    WavFile,
    is_finalized,
    recover_wav,
)

__all__ = [
    "DEFAULT_FLUSH_SECONDS",
    "DEFAULT_MAX_BACKLOG_SECONDS",
    "DEFAULT_RETRY_MAX_SECONDS",
    "DEFAULT_RETRY_MIN_SECONDS",
    "FINALIZED_MODE",
    "MAX_WRITE_SECONDS",
    "PendingFile",
    "PositionedAudio",
    "RecordingError",
    "RecordingFinalized",
    "RecordingLocked",
    "RecordingStats",
    "WavFile",
    "WavRecorder",
    "is_finalized",
    "open_recording",
    "process_stats",
    "recording_base",
    "recording_path",
    "recover_recordings",
    "recover_wav",
    "safe_stream_name",
    "session_path",
]
