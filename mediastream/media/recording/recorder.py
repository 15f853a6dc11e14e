"""The recorder: one stream's audio frames placed by position, buffered, written in blocks.

``WavRecorder`` buffers audio per stream and writes it in blocks of ``flush_seconds``: one
positional write and one header patch per block, from the event loop. Why not a thread: a
block is two ``pwrite`` calls into the page cache (about 10 µs), while every hand-off to a
thread costs a GIL round trip that a busy event loop holds for up to the switch interval
(5 ms). Measured with ``benchmarks/server_load.py``, a writer thread made the server fall
behind at 350 recording streams on one core, where writing from the loop costs nothing
measurable against no recording at all. So the recorder has one way in, ``append(frame)``,
and one way out, ``close()``, both plain calls: nothing in them ever waits.

A kill of the process (SIGKILL, the OOM killer) loses none of the audio ``append`` took: the
buffers a block gathers in are the file's journal, a shared mapping (``journal.py``), so the
page cache keeps them when the process dies, and the next process to take the file puts them
in place (``recover_recordings`` at start-up, or a session continuing the file). A frame
costs the same copy as before plus one 8-byte store (``benchmarks/recorder_frame.py``). A
run that cannot go on (a gap in positions, a late frame) is written at once, so while writing
works no audio waits in process memory; only a failing disk's backlog does (bounded, below),
and a kill loses that, as it could not be written anyway. ``journal=False`` keeps the
buffers in process memory: a kill then loses up to a block.

Faults (a full disk, a read-only or missing directory, no file descriptors) never raise from
``append`` and never cost more than one float comparison per frame: a failed write or open
keeps the audio, at most ``max_backlog_seconds`` per track, and is retried on a timer with
backoff (``retry_min_seconds`` doubling to ``retry_max_seconds``); once it works, the backlog
is written where it belongs, at most ``MAX_WRITE_SECONDS`` of the timeline per write (128 KB at
16 kHz stereo: 50 µs median, 150 µs worst, into the page cache), so draining never blocks the
loop for a millisecond. An outage is logged once when it starts and once when it ends; audio
beyond the bound, or still unwritten at ``close``, is counted (``lost_samples``) and logged.
The counts also go to a ``RecordingStats`` that the server's metrics read in batches.

Layout: mono when one track is streamed; when both are, two channels (0 inbound, 1 outbound)
aligned by position. A mono file becomes stereo the moment the second track shows up.

With ``playback=True`` (``StreamOptions.record_playback``) one more channel, always the last,
holds what our players sent (track ``"playback"``: ``runtime/played.py`` places it on the
timeline where the far end played it). The rule is fixed from the first frame: channel 0 is
inbound (or the one carrier track streamed), then outbound if the carrier streams both tracks,
then playback. So an inbound-only stream is 2 channels (inbound, playback) from its first
block, even if nothing is ever played; with both tracks it is 3 (inbound, outbound, playback).
Carriers start both tracks together, so the 3-channel layout is there from the first block
too; an outbound track that shows up later widens the file to 3 channels (playback moves from
1 to 2, as a mono file widens to stereo today). A continued file keeps its layout: 3 channels
are read as (inbound, outbound, playback) even with ``playback`` off; 2 channels as (inbound,
playback) with it on, (inbound, outbound) with it off. The playback channel has the same
guarantees as the others: ``append`` never waits, its backlog is bounded by
``max_backlog_seconds`` like each track's, and what is lost is counted.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections.abc import Callable, MutableSequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from mediastream.errors import RecordingError
from mediastream.logs import escape
from mediastream.media.recording.journal import (
    TRACK_CODES,
    Journal,
    JournalUnsupported,
    let_go,
    replay_journal,
)
from mediastream.media.recording.naming import claim_session_file
from mediastream.media.recording.piece import CARRIER_TRACKS, PLAYBACK, Coverage, layout_for
from mediastream.media.recording.wavfile import WavFile

logger = logging.getLogger(__name__)

DEFAULT_FLUSH_SECONDS = 0.5
# audio kept per track while the file cannot be written (at least flush_seconds + 0.1 s)
DEFAULT_MAX_BACKLOG_SECONDS = 20.0
DEFAULT_RETRY_MIN_SECONDS = 0.1  # the first retry after a failed write or open ...
DEFAULT_RETRY_MAX_SECONDS = 5.0  # ... doubling up to this
# one write covers at most this much of the timeline (a backlog drains in such steps)
MAX_WRITE_SECONDS = 2.0
_monotonic = time.monotonic  # looked up per call, so tests can drive the clock
TRACKS = CARRIER_TRACKS  # the carrier's tracks, in channel order
PLAYBACK_TRACK = PLAYBACK  # what our players sent: the last channel, when recorded


def _describe(exc: BaseException | None) -> str:
    """``No space left on device (ENOSPC)``: the errno text an operator searches for."""
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        return f"{exc.strerror or os.strerror(exc.errno)} ({name})"
    return repr(exc)


class PositionedAudio(Protocol):
    """What the recorder needs of an audio frame (``AudioFrame`` has it)."""

    track: str
    pcm: np.ndarray
    sample_rate: int
    position: int


@dataclass(eq=False, slots=True)
class RecordingStats:
    """Recording faults as plain numbers: recorders add to them (rarely), and
    ``mediastream.server.metrics.ServerMetrics`` pushes their growth in batches."""

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
    the room the backlog bound leaves, so the per-frame path needs no check of its own.

    Bound to a journal slot (``bind``), the buffer is the journal's mapping and ``mark`` its
    fields (track code, first frame, samples held), kept current with each frame, so the
    audio outlives a kill. ``mark`` is cleared only once the audio is in the WAV
    (``settle``), or when a new run reuses the buffer."""

    __slots__ = ("buffer", "fill", "limit", "mark", "start", "track")

    def __init__(self, capacity: int) -> None:
        self.buffer = np.empty(capacity, dtype=np.int16)
        self.mark: MutableSequence[int] = [0, 0, 0]
        self.track = ""
        self.start = 0
        self.fill = 0
        self.limit = capacity

    def extend(self, track: str, start: int, pcm: np.ndarray) -> bool:
        """Append ``pcm`` if it continues this run (or starts an empty one) and fits."""
        n, fill = len(pcm), self.fill
        if fill + n > self.limit:
            return False
        mark = self.mark
        if fill == 0:  # the slot's old audio is forgotten before its place is reused
            mark[2] = 0
            mark[0], mark[1] = TRACK_CODES.get(track, 0), start
            self.track, self.start = track, start
        elif track != self.track or start != self.start + fill:
            return False
        self.buffer[fill : fill + n] = pcm
        self.fill = fill = fill + n
        mark[2] = fill  # after the samples: a kill in between leaves the frame out, not junk
        return True

    def bind(self, buffer: np.ndarray, mark: MutableSequence[int]) -> None:
        """Gather into ``buffer`` (as large as ours) from now on, what it holds copied."""
        fill = self.fill
        buffer[:fill] = self.buffer[:fill]
        mark[2] = 0
        mark[0], mark[1] = TRACK_CODES.get(self.track, 0), self.start
        mark[2] = fill
        self.buffer, self.mark = buffer, mark

    def take(self) -> _Piece | None:
        """The run as a piece of its own (a copy), leaving the run empty."""
        if self.fill == 0:
            return None
        piece = _Piece(self.track, self.start, self.buffer[: self.fill].copy())
        self.fill = 0
        return piece


# directories whose recordings have no journal (a copy-on-write filesystem), logged once
_unjournaled: set[Path] = set()
_NO_BUFFER = np.empty(0, dtype=np.int16)  # a closed recorder's runs
_NEVER = float("-inf")  # ``_retry_at`` while writing works: every flush may go ahead


@dataclass(frozen=True, slots=True)
class PendingFile:
    """A recording whose file could not be created yet: ``create(channels)`` tries again.

    ``directory`` is where it goes and ``error`` why the first attempt failed; the recorder
    calls ``create`` on its retry timer, from the event loop, so it must not wait for locks.
    """

    directory: Path
    create: Callable[[int], WavFile]
    error: OSError


class WavRecorder:
    """Records one stream's audio frames to a WAV, placed by position, buffered in blocks.

    ``append(frame)`` buffers; every ``flush_seconds`` of audio it writes a block, and
    ``close()`` writes the rest (``flush()`` writes now). If the file already exists, audio
    continues after what it holds (``append=True``), or is placed at its absolute position
    (``append=False``, for callers that track the timeline themselves). ``create`` insists on
    a new file (``FileExistsError`` otherwise); an existing file another live process is
    writing raises ``RecordingLocked``: the file stays locked until ``close``. ``finalize``
    makes the file read-only at ``close``, the mark ``open_recording`` reads as "this session
    is over".

    Faults after opening never raise: see the module docstring. ``state`` is ``"unopened"``
    (no file yet), ``"writing"``, ``"retrying"`` (the last attempt failed: ``error``) or
    ``"closed"``; ``open_errors``, ``write_errors`` count failed attempts, ``lost_samples``
    the audio given up (per track); each also goes to ``stats`` (default ``process_stats``).
    """

    path: Path | None

    def __init__(
        self,
        path: str | os.PathLike[str] | WavFile | PendingFile,
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
        playback: bool = False,
        journal: bool = True,
    ) -> None:
        """Record to ``path``: a file name (opened here), a ``WavFile`` already open, or a
        ``PendingFile`` (no file yet: buffer and retry creating it, see ``open_recording``).
        ``playback``: the file has a ``playback`` channel after the carrier's tracks, from its
        first frame (see the module docstring). ``journal``: gather audio in the file's
        journal (``journal.py``), so a kill of the process loses none of it; without it, in
        process memory (a kill loses up to a block)."""
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
        self._use_journal = journal
        self._journal: Journal | None = None  # the runs' buffers, once the file is open
        self._pending_file: PendingFile | None = None  # how to create a file not yet opened
        self._offset = 0
        self._flush_frames = max(1, int(flush_seconds * sample_rate))
        self._write_frames = max(self._flush_frames, int(MAX_WRITE_SECONDS * sample_rate))
        # one run per track, so two tracks' frames interleaved still continue their runs
        self._run = _Run(self._flush_frames + sample_rate // 10)  # inbound
        self._run_out = _Run(len(self._run.buffer))  # outbound
        self._runs = {"inbound": self._run, "outbound": self._run_out}
        self._playback = playback
        if playback:  # what our players sent (``PLAYBACK_TRACK``)
            self._runs[PLAYBACK_TRACK] = _Run(len(self._run.buffer))
        self._backlog_frames = max(int(max_backlog_seconds * sample_rate), len(self._run.buffer))
        self._tracks: list[str] = []  # in the order they showed up
        # the file's channels, by track (None: mono, holding its first carrier track)
        self._file_layout: tuple[str, ...] | None = None
        self._pending: list[_Piece] = []  # audio that did not continue the run, by arrival
        self._queued = dict.fromkeys(self._runs, 0)  # samples in ``_pending``, per track
        self._pending_hi = 0
        self._written_hi = 0  # one past the highest sample written
        self._closed = False
        # the file ranges each track truly received (not silence for lost frames): what the
        # recording's piece description (``piece.py``) lists
        self.coverage = Coverage()
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
        if isinstance(path, PendingFile):
            self._pending_file = path
            self._failed(path.error, opening=True)
        else:
            self._attach(
                path if isinstance(path, WavFile) else WavFile(path, sample_rate, create=create)
            )

    def _attach(self, file: WavFile) -> None:
        self._file, self.path = file, file.path
        if self._use_journal and not file.created:
            self._replay(file)  # a killed writer's audio first: what the file holds counts it
        if self._append:
            self._offset = file.frames  # positions count from the end of what the file holds
        if file.channels == 3 and not self._playback:  # written with playback: keep it so
            self._playback = True
            self._runs[PLAYBACK_TRACK] = _Run(len(self._run.buffer))
            self._queued[PLAYBACK_TRACK] = 0
        # what a wide file's channels hold, by the rule; a new one's 2 channels (playback)
        # are decided by the first frames
        if file.channels > 1 and (file.frames or not self._playback or file.channels > 2):
            carrier = ["inbound"] if self._playback and file.channels == 2 else TRACKS
            for track in carrier:
                if track not in self._tracks:
                    self._tracks.append(track)
            self._file_layout = self._layout()
        if self._use_journal:
            self._open_journal(file)
        self._written_hi = max(self._written_hi, file.frames)
        self._update_room()

    def _replay(self, file: WavFile) -> None:
        """Place what a killed writer left in the file's journal (see ``journal.py``)."""
        try:
            replay_journal(file)
        except (OSError, RecordingError) as exc:
            logger.error(
                "stream %s: cannot place the journal of %s (%s): the audio a killed process "
                "held in it is lost",
                self._log_id, file.path, _describe(exc),
            )  # fmt: skip

    def _open_journal(self, file: WavFile) -> None:
        """Gather the runs in a journal of the file's. Without one, they stay in memory."""
        try:
            journal = Journal(file, len(self._run.buffer))
        except OSError as exc:
            if isinstance(exc, JournalUnsupported):  # by design: said once per directory
                if file.path.parent not in _unjournaled:
                    _unjournaled.add(file.path.parent)
                    logger.info(
                        "recordings in %s gather audio in memory, not a journal: %s",
                        file.path.parent, exc.strerror,
                    )  # fmt: skip
            else:
                logger.warning(
                    "stream %s: no journal for recording %s (%s): a kill of the process may "
                    "lose up to %.1f s of its audio",
                    self._log_id, file.path, _describe(exc),
                    len(self._run.buffer) / self.sample_rate,
                )  # fmt: skip
            return
        self._journal = journal
        for index, run in enumerate(self._runs.values()):
            run.bind(*journal.slot(index))
        self._note_layout()

    def _disk_layout(self) -> tuple[str, ...]:
        """The channels the file holds now, by track (see ``_write_pieces``)."""
        file = self._file
        assert file is not None
        if self._file_layout is not None:
            return self._file_layout
        if file.channels == 1:
            return (layout_for(1, self._tracks)[0],)
        return self._layout()[: file.channels]  # nothing in it yet: any placement will do

    def _note_layout(self) -> None:
        """Tell the journal how tracks map to channels (they change once or twice a call)."""
        if self._journal is not None:
            self._journal.set_layout(self._layout(), self._disk_layout())

    def _layout(self) -> tuple[str, ...]:
        """The file's channels by track: the carrier's tracks seen (one: itself; both:
        inbound, outbound), then ``playback`` if recorded (with no carrier track yet, the
        first is taken to be inbound)."""
        carrier = [track for track in self._tracks if track in TRACKS]
        if len(carrier) == 2:
            carrier = list(TRACKS)
        elif not carrier and self._playback:
            carrier = ["inbound"]
        return (*carrier, PLAYBACK_TRACK) if self._playback else tuple(carrier)

    def _update_room(self) -> None:
        queued, cap = self._queued, len(self._run.buffer)
        for track, run in self._runs.items():
            run.limit = min(cap, self._backlog_frames - queued[track])

    def _buffered(self) -> int:
        return sum(self._queued.values()) + sum(run.fill for run in self._runs.values())

    def _count_pending(self) -> None:
        queued = self._queued
        for track in queued:
            queued[track] = 0
        for piece in self._pending:
            queued[piece.track] += len(piece.pcm)
        self._update_room()

    def not_received(self, frame: PositionedAudio) -> None:
        """``frame`` (appended already) is silence for a lost frame, not audio that came: the
        piece description leaves it out of the received ranges. Rare: the runtime calls it
        for those frames only, so the usual frame costs nothing here."""
        start = self._offset + frame.position
        self.coverage.hole(frame.track, start, start + len(frame.pcm))

    @property
    def layout(self) -> tuple[str, ...]:
        """The file's channels by track (``("inbound",)``, ``("inbound", "outbound")`` ...)."""
        return self._layout() or ("inbound",)

    @property
    def channels(self) -> int:
        if self._file is not None:
            return self._file.channels
        return max(1, len(self._layout()))

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

    def append(self, frame: PositionedAudio) -> None:
        """Buffer one frame; write a block once ``flush_seconds`` of audio is buffered.

        Raises ``RecordingError`` only for a caller's mistake (closed, another sample rate),
        never for a fault of the disk.
        """
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
            self._add(frame)
        if self._pending_hi - self._written_hi >= self._flush_frames and (
            _monotonic() >= self._retry_at  # while failing: one call and a comparison per frame
        ):
            self.flush()

    def _add(self, frame: PositionedAudio) -> None:
        """``append``'s slow path: check the frame, then queue it (a new run, or a piece)."""
        if self._closed:
            raise RecordingError(f"recording {self._name()} is closed")
        if frame.sample_rate != self.sample_rate:
            raise RecordingError(
                f"frame at {frame.sample_rate} Hz cannot go into a {self.sample_rate} Hz recording"
            )
        track = frame.track if frame.track in self._runs else "inbound"
        if track == "inbound" and frame.track == PLAYBACK_TRACK:
            raise RecordingError(f"recording {self._name()} has no {PLAYBACK_TRACK} channel")
        if track not in self._tracks:
            self._tracks.append(track)
            self._update_room()
            self._note_layout()
        pcm = frame.pcm
        n = len(pcm)
        run = self._runs[track]
        if self._queued[track] + run.fill + n > self._backlog_frames:
            self._lose(n)
            return
        start = self._offset + frame.position
        if not run.extend(track, start, pcm):
            if self._journal is not None and self.error is None and run.fill:
                self.flush()  # into the WAV before a new run reuses the run's journal slot
            self._end_run(run)
            if not run.extend(track, start, pcm):
                self._pending.append(_Piece(track, start, pcm))
                self._queued[track] += n
                self._update_room()
        self._pending_hi = max(self._pending_hi, start + n)
        if getattr(frame, "late", False):  # back in the slot a lost frame's silence held
            self.coverage.fill(track, start, start + n)
        if self.error is not None and self._timer is None:
            # failed where no loop runs (open_recording's thread): retry from this loop
            self._schedule(max(0.0, self._retry_at - _monotonic()))

    def _end_run(self, run: _Run | None = None) -> None:
        """Move ``run`` (default: both) into the pending pieces, after what came before it
        (later pieces win overlaps; the two tracks never overlap, being two channels)."""
        for each in (run,) if run is not None else tuple(self._runs.values()):
            piece = each.take()
            if piece is not None:
                self._pending.append(piece)
                self._queued[piece.track] += len(piece.pcm)
        self._update_room()

    def _name(self) -> str:
        if self.path is not None or self._pending_file is None:
            return str(self.path)
        return f"in {self._pending_file.directory} (not created)"

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
        if self._pending or any(run.fill for run in self._runs.values()):
            before = self._buffered()
            try:
                self._write_step()
            except Exception as exc:  # OSError: the disk; anything else: a bug (logged so)
                self._failed(exc, opening=False)
                return
            written = before - self._buffered()
        self._wrote(written)

    def _open(self) -> bool:
        assert self._pending_file is not None
        try:
            file = self._pending_file.create(self.channels)
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
            and not self._playback
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
            self.coverage.add(run.track, run.start, run.start + run.fill)
            run.fill = 0
            run.mark[2] = 0  # in the WAV: the journal slot holds nothing now
            self._written_hi = max(self._written_hi, self._pending_hi)
        else:
            self._end_run()
            self._write_pieces()
            for each in self._runs.values():  # emptied by _end_run, now in the WAV:
                each.mark[2] = 0  # their journal slots hold nothing

    def _write_pieces(self) -> None:
        """Merge the pieces over what the file holds and write the first ``_write_frames``."""
        pieces, file = self._pending, self._file
        assert file is not None
        if not pieces:
            return
        layout = self._layout()
        if len(layout) > file.channels:  # a track showed up: its channel joins the file
            if not file.frames:  # nothing in it yet: any placement will do
                placement = tuple(range(file.channels))
            else:  # a mono file holds its first carrier track
                old = self._file_layout or (layout_for(1, self._tracks)[0],)
                placement = tuple(layout.index(track) for track in old)
            file.widen(len(layout), placement)
        if layout != self._file_layout:
            self._file_layout = layout
            self._note_layout()
        channel_of = {track: index for index, track in enumerate(layout)}
        lo = min(min(p.position for p in pieces), file.frames)
        hi = max(p.position + len(p.pcm) for p in pieces)
        cut = min(hi, lo + self._write_frames)
        block = np.zeros((cut - lo, file.channels), dtype=np.int16)
        existing = file.read(lo, cut)  # keep what is there (the other channel, earlier writes)
        block[: len(existing)] = existing
        rest = []
        written = []  # (track, start, end) of this write: what the file then holds
        for piece in pieces:
            position, pcm = piece.position, piece.pcm
            end = position + len(pcm)
            a, b = max(position, lo), min(end, cut)
            if a < b:
                block[a - lo : b - lo, channel_of[piece.track]] = pcm[a - position : b - position]
                written.append((piece.track, a, b))
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
        for track, a, b in written:
            self.coverage.add(track, a, b)
        self._pending = rest
        self._count_pending()
        self._written_hi = max(self._written_hi, cut if rest else self._pending_hi)

    def _drop_written(self, upto: int) -> None:
        """A write failed after putting frames before ``upto`` on disk (every pending piece
        there was in its block): those are written, neither kept nor counted lost."""
        rest = []
        for piece in self._pending:
            position, pcm = piece.position, piece.pcm
            self.coverage.add(piece.track, position, min(position + len(pcm), upto))
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
                self._log_id, self._pending_file and self._pending_file.directory,
                _describe(exc), keep,
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

    def close(self) -> None:
        """Write everything still pending and close the file (idempotent).

        One last attempt at everything buffered (opening the file first if it never was);
        what still cannot be written is counted as lost and logged. A plain call, like
        ``append``: its writes go to the page cache, in ``MAX_WRITE_SECONDS`` steps.
        """
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            if self._file is None and self._pending_file is not None:
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
                self._pending = []
                for run in self._runs.values():
                    run.fill = 0
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
        journal, self._journal = self._journal, None
        if journal is not None:  # all of it is in the WAV, or counted lost: before finalizing
            for run in self._runs.values():
                run.buffer, run.mark = _NO_BUFFER, [0, 0, 0]  # the mapping's last views go
            try:
                let_go([journal.remove()])
            except OSError as exc:
                logger.warning(
                    "stream %s: cannot remove the journal of %s (%s)",
                    self._log_id, file.path, _describe(exc),
                )  # fmt: skip
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
    playback: bool = False,
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
    A new file with ``playback`` has its 2 channels from the start.
    """
    directory = Path(record_dir)
    target: WavFile | PendingFile
    channels = 2 if playback else 1
    try:
        target = claim_session_file(
            directory, stream_id, sample_rate, channels, resume_within=resume_within,
            patience=None,
        )  # fmt: skip
    except OSError as exc:

        def create(channels: int) -> WavFile:  # on the event loop: no waiting for locks
            return claim_session_file(
                directory, stream_id, sample_rate, channels, resume_within=None, patience=0.0
            )

        target = PendingFile(directory, create, exc)
    return WavRecorder(
        target, sample_rate, flush_seconds=flush_seconds, stream_id=stream_id, append=append,
        finalize=True, max_backlog_seconds=max_backlog_seconds,
        retry_min_seconds=retry_min_seconds, retry_max_seconds=retry_max_seconds, stats=stats,
        playback=playback,
    )  # fmt: skip
