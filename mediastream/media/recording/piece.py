"""What a merge needs to know of one recording: the piece description, ``<stem>.piece.json``.

A call whose sockets land on several hosts (a load balancer that misrouted a reconnect, an
instance that died) leaves one recording on each: the pieces of the call. Each host places its
audio by the carrier's ``chunk``/``timestamp``, but a host that sees a stream first more than
``max_gap_seconds`` into the call starts its file at the reconnect (a recording stays
proportional to what it received), and a lost frame is silence just like audio nobody
received. So the WAV alone cannot say where it sits on the call or which of its samples are
real; the piece description does:

- ``timeline_start``: the call-timeline sample (the carrier's counters, at ``sample_rate``) of
  the WAV's first frame;
- ``received``: per track, the call-timeline ranges ``[start, end)`` of audio that truly came
  (not silence filled for lost frames or a leading offset);
- ``channels``: the WAV's channels by track; ``stream_id``, ``call_control_id``,
  ``instance_id``, ``sample_rate``, ``frames``.

Why a file of its own rather than fields of the quality report: the report can be turned off
(``StreamOptions.reports``), it is versioned for people and dashboards, and it is written only
when a stream ends; a piece description must exist for every recording, including one whose
process was killed. So it is written twice, atomically: when the stream's first audio is
placed (``complete: false``: where the piece sits), and when the recording is finalized
(``complete: true``: everything). After a kill the first one is what is left; recovery at the
next start (``recover_piece``) completes it from the WAV (``recovered: true``: the ranges after
the last one known are taken to run to the end of the file).

``Coverage`` gathers the received ranges as the recording is written: per block written, not
per frame (a call into it costs 0.3 µs on a shared 2-core VM, 3 % of a frame's path), plus
one per lost frame.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mediastream.config import StreamOptions
from mediastream.errors import RecordingError
from mediastream.media.recording.wavfile import read_layout, write_atomic

logger = logging.getLogger(__name__)

PIECE_VERSION = 1
PIECE_SUFFIX = ".piece.json"
CARRIER_TRACKS = ("inbound", "outbound")
PLAYBACK = "playback"
DEFAULT_MAX_SPANS = StreamOptions.piece_max_spans  # the one default, in config.py


def piece_path(recording: str | os.PathLike[str]) -> Path:
    """``DIR/CALL.wav`` -> ``DIR/CALL.piece.json`` (``CALL~2.wav`` -> ``CALL~2.piece.json``)."""
    path = Path(recording)
    return path.with_name(path.stem + PIECE_SUFFIX)


def layout_for(channels: int, tracks: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The recorder's channel rule for a file of ``channels`` channels: one track is itself
    (the first known carrier track, else inbound); two are inbound, outbound unless the known
    tracks say (inbound, playback); three are inbound, outbound, playback."""
    carrier = [t for t in tracks if t in CARRIER_TRACKS]
    if channels <= 1:
        return [carrier[0] if carrier else "inbound"]
    if channels == 2:
        return ["inbound", PLAYBACK] if PLAYBACK in tracks else list(CARRIER_TRACKS)
    return [*CARRIER_TRACKS, PLAYBACK, *(f"channel{i}" for i in range(3, channels))]


class Coverage:
    """The file ranges ``[start, end)`` each track truly received, in file frames.

    Kept off the per-frame path: the recorder adds what each write put in the file (a block
    every ``flush_seconds``), and the runtime names the frames that were silence for a lost
    one (``hole``), which are rare; a late frame put back in its slot takes its hole away
    (``fill``). At most ``max_spans`` ranges and as many holes per track: beyond, a new
    range joins the last one and a hole is not kept (that silence counts as received),
    counted in ``bridged``."""

    __slots__ = ("bridged", "holes", "max_spans", "spans")

    def __init__(self, max_spans: int = DEFAULT_MAX_SPANS) -> None:
        self.spans: dict[str, list[list[int]]] = {}
        self.holes: dict[str, list[list[int]]] = {}
        self.max_spans = max_spans
        self.bridged = 0

    def add(self, track: str, start: int, end: int) -> None:
        """File frames ``[start, end)`` of ``track`` are in the file."""
        if start >= end:
            return
        spans = self.spans.setdefault(track, [])
        if not spans or start > spans[-1][1]:  # after a gap (a restart), or the first
            if len(spans) < self.max_spans:
                spans.append([start, end])
            else:
                self.bridged += 1
                spans[-1][1] = max(spans[-1][1], end)
        elif start >= spans[-1][0]:  # continues or overlaps the latest range: the usual
            spans[-1][1] = max(spans[-1][1], end)
        else:  # before the latest range (a late frame, pieces out of order): re-merge
            spans[:] = union_spans([*spans, [start, end]])

    def hole(self, track: str, start: int, end: int) -> None:
        """File frames ``[start, end)`` of ``track`` are silence standing in for a lost frame."""
        holes = self.holes.setdefault(track, [])
        if holes and holes[-1][1] == start:
            holes[-1][1] = end
        elif len(holes) < self.max_spans:
            holes.append([start, end])
        else:
            self.bridged += 1

    def fill(self, track: str, start: int, end: int) -> None:
        """A late frame's audio came back to ``[start, end)``: no longer a hole."""
        holes = self.holes.get(track)
        if holes:
            self.holes[track] = subtract_spans(holes, [[start, end]])

    def received(self) -> dict[str, list[list[int]]]:
        """Per track, the ranges in the file less the holes."""
        out = {}
        for track, spans in self.spans.items():
            holes = self.holes.get(track)
            kept = subtract_spans(spans, union_spans(holes)) if holes else spans
            out[track] = [list(span) for span in kept]
        return out

    def shifted(self, by: int) -> dict[str, list[list[int]]]:
        """The received ranges moved by ``by`` frames (file to call timeline)."""
        return {t: [[a + by, b + by] for a, b in r] for t, r in self.received().items()}


def union_spans(spans: list[list[int]]) -> list[list[int]]:
    merged: list[list[int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return merged


def subtract_spans(spans: list[list[int]], cuts: list[list[int]]) -> list[list[int]]:
    """``spans`` less ``cuts`` (both sorted, each disjoint)."""
    out: list[list[int]] = []
    i = 0
    for a, b in spans:
        while i < len(cuts) and cuts[i][1] <= a:
            i += 1
        j, start = i, a
        while j < len(cuts) and cuts[j][0] < b:
            if cuts[j][0] > start:
                out.append([start, cuts[j][0]])
            start = max(start, cuts[j][1])
            j += 1
        if start < b:
            out.append([start, b])
    return out


@dataclass
class Piece:
    """One recording's place in its call (see the module docstring for each field)."""

    stream_id: str | None
    recording: str  # the WAV's file name (the directory may move: uploads, copies)
    sample_rate: int
    channels: list[str]
    timeline_start: int
    frames: int = 0
    received: dict[str, list[list[int]]] = field(default_factory=dict)
    call_control_id: str | None = None
    instance_id: str | None = None
    started_at: float | None = None  # Unix time of the call timeline's zero, by this host's clock
    ended_at: float | None = None  # Unix time of finalization
    complete: bool = False
    recovered: bool = False
    version: int = PIECE_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True, ensure_ascii=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Piece:
        if data.get("version") != PIECE_VERSION:
            raise RecordingError(f"piece description version {data.get('version')!r} unknown")
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


def write_piece(recording: str | os.PathLike[str], piece: Piece) -> Path:
    """Write ``piece`` beside ``recording`` atomically (a temporary file, then a rename).
    Blocking: the registry runs it in a thread."""
    return write_atomic(piece_path(recording), piece.to_json())


def read_piece(recording: str | os.PathLike[str]) -> Piece | None:
    """The description beside ``recording``; None if there is none. ``RecordingError`` for
    one that cannot be read as a piece description."""
    path = piece_path(recording)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError("not an object")
        return Piece.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise RecordingError(f"{path} is not a piece description: {exc}") from None


def recover_piece(recording: Path, sample_rate: int, frames: int, channels: int) -> Piece | None:
    """Complete the description of a recording a killed process left (``frames`` frames of
    ``channels`` channels at ``sample_rate`` on disk, the header repaired): the ranges after
    the last one known run to the end of the file, marked ``recovered``. Without a
    description, one is derived from the file alone (stream id unknown, placed at the start
    of the call, all received).
    Returns the description written, or None if it was already complete."""
    try:
        piece = read_piece(recording)
    except RecordingError as exc:
        logger.warning("cannot recover %s: %s", piece_path(recording), exc)
        return None
    if piece is not None and (piece.complete or (piece.recovered and piece.frames == frames)):
        return None
    if piece is None:
        piece = derived_piece(recording, sample_rate, frames, channels)
    else:
        complete_in_memory(piece, frames, channels)
    write_piece(recording, piece)
    return piece


def base_of(recording: str | os.PathLike[str]) -> str:
    """The base name a recording's file name was made from: ``CALL~2.wav`` -> ``CALL``."""
    return Path(recording).stem.partition("~")[0]


def derived_piece(recording: Path, sample_rate: int, frames: int, channels: int) -> Piece:
    """What the file alone tells: its stream id if its name is the id itself (a hashed name
    cannot be reversed), placed at the start of the call, every frame taken as received."""
    base = base_of(recording)
    layout = layout_for(channels)
    piece = Piece(None if "=" in base else base, recording.name, sample_rate, layout, 0, frames)
    piece.received = {t: [[0, frames]] for t in layout if t != PLAYBACK}
    piece.recovered = True
    return piece


def wav_layout(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """(sample rate, whole frames on disk, channels) of a 16-bit WAV, trusting the file size
    over a header a killed writer left behind. ``RecordingError`` if it is not one."""
    fd = os.open(path, os.O_RDONLY)
    try:
        layout = read_layout(fd)
    finally:
        os.close(fd)
    return layout.sample_rate, layout.data_bytes // (2 * layout.channels), layout.channels


def complete_in_memory(piece: Piece, frames: int, channels: int) -> Piece:
    """What ``recover_piece`` would write, without writing: for a merge of files no server
    recovered."""
    if piece.complete:
        return piece
    end_of_file = piece.timeline_start + frames
    piece.channels = layout_for(channels, [*piece.channels, *piece.received])
    for track in piece.channels:
        if track == PLAYBACK and track not in piece.received:
            continue
        spans = piece.received.setdefault(track, [])
        if spans:
            spans[-1][1] = max(spans[-1][1], end_of_file)
        else:
            first = min((s[0][0] for s in piece.received.values() if s), default=0)
            spans.append([first, end_of_file])
    piece.frames = frames
    piece.recovered = True
    return piece
