"""The runtime's side of a recording's piece description (``media/recording/piece.py``).

The recorder knows which file frames truly received audio (``WavRecorder.coverage``: what
it wrote, less the frames the connection marked as silence for lost ones); only the
runtime knows where the file sits on the call: the carrier's position of the stream's first
audio against the file frame it went to. ``StreamPiece`` joins the two and writes the
description twice: at the first audio (so that a killed process leaves where its piece sits)
and when the recording is finalized. Both writes run in a thread (a small file and a rename,
off the event loop), the second after the first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from mediastream.errors import RecordingError
from mediastream.logs import escape
from mediastream.media.recording import WavRecorder
from mediastream.media.recording.piece import (
    Piece,
    complete_in_memory,
    read_piece,
    union_spans,
    write_piece,
)

logger = logging.getLogger(__name__)


class StreamPiece:
    """One recording's piece description, kept up by its stream."""

    def __init__(
        self,
        recorder: WavRecorder,
        stream_id: str,
        call_control_id: str | None,
        instance_id: str | None,
        max_spans: int,
    ) -> None:
        self.recorder = recorder
        self.stream_id = stream_id
        self.call_control_id = call_control_id
        self.instance_id = instance_id
        # frames the file held before this session (a killed process's file, continued;
        # they count on the stream's timeline, so the file's frames are its positions)
        self.inherited_frames = recorder.frames_on_disk
        recorder.coverage.max_spans = max_spans
        self.timeline_start: int | None = None  # call-timeline sample of file frame 0
        self.started_at: float | None = None
        self.inherited: Piece | None = None  # the continued file's own description
        self._first: asyncio.Future[None] | None = None

    def placed(self, track: str, carrier_position: int, stream_position: int, samples: int) -> None:
        """The stream's first audio (``samples`` of ``track``): the carrier put it at
        ``carrier_position``, the stream (and the file) at ``stream_position``. Writes the
        first description (in a thread): after a kill, its ranges are taken to run from this
        frame to the end of the file."""
        if self.timeline_start is not None:
            return
        self.timeline_start = carrier_position - stream_position
        self.started_at = time.time() - carrier_position / max(1, self.recorder.sample_rate)
        path = self.recorder.path
        if path is not None:  # built here, on the loop that changes it; written in a thread
            first = self.describe(path, complete=False)
            if not any(first.received.values()):  # nothing written yet: this frame, at least
                first.received = {track: [[carrier_position, carrier_position + samples]]}
            self._first = asyncio.ensure_future(asyncio.to_thread(self._write_first, first))

    def _write_first(self, piece: Piece) -> None:
        path = self.recorder.path
        assert path is not None
        if self.inherited_frames:
            try:
                self.inherited = read_piece(path)
            except RecordingError as exc:
                logger.warning("stream %s: %s", escape(self.stream_id), exc)
            inherited = self.inherited
            if inherited is not None:  # frame 0 was placed by the process that died
                complete_in_memory(inherited, self.inherited_frames, len(inherited.channels))
                delta = inherited.timeline_start - piece.timeline_start
                ours = {
                    t: [[a + delta, b + delta] for a, b in r] for t, r in piece.received.items()
                }
                self.timeline_start = piece.timeline_start = inherited.timeline_start
                piece.started_at = inherited.started_at
                piece.received = ours
                for track, spans in inherited.received.items():
                    piece.received[track] = union_spans([*spans, *ours.get(track, [])])
        write_piece(path, piece)

    def describe(self, path: Path, *, complete: bool) -> Piece:
        """The description as it stands now."""
        recorder = self.recorder
        start = self.timeline_start if self.timeline_start is not None else 0
        received = recorder.coverage.shifted(start)
        inherited = self.inherited
        if inherited is not None:
            for track, spans in inherited.received.items():
                received[track] = union_spans([*spans, *received.get(track, [])])
        return Piece(
            stream_id=self.stream_id,
            recording=path.name,
            sample_rate=recorder.sample_rate,
            channels=list(recorder.layout),
            timeline_start=start,
            frames=recorder.frames_on_disk,
            received=received,
            call_control_id=self.call_control_id,
            instance_id=self.instance_id,
            started_at=inherited.started_at if inherited is not None else self.started_at,
            ended_at=time.time() if complete else None,
            complete=complete,
        )

    async def finish(self) -> None:
        """The recording was finalized: write the complete description (after the first)."""
        path = self.recorder.path
        if self._first is not None:
            try:
                await self._first
            except Exception as exc:
                logger.error(
                    "stream %s: cannot write the piece description beside %s: %s",
                    escape(self.stream_id), path, exc,
                )  # fmt: skip
        if path is None:
            return
        if self.inherited_frames and self._first is None:  # no audio of ours: keep its own
            return
        if self.recorder.coverage.bridged:
            logger.warning(
                "stream %s: %s lists at most %d received ranges per track; %d later gaps "
                "were joined to the last range",
                escape(self.stream_id), path, self.recorder.coverage.max_spans,
                self.recorder.coverage.bridged,
            )  # fmt: skip
        piece = self.describe(path, complete=True)
        await asyncio.to_thread(write_piece, path, piece)
