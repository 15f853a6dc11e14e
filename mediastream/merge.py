"""``mediastream merge``: the pieces of a call, recorded on several hosts, as one recording.

A call whose sockets landed on several instances (a misrouted reconnect, an instance that
died) leaves a recording on each, with its piece description beside it
(``media/recording/piece.py``: where the file sits on the call, which ranges it truly
received). ``merge_recordings`` gathers WAVs from files and folders (as if collected from
several hosts), groups them by stream id, checks that they agree (sample rate), and writes per
call one recording on the call's timeline plus a manifest, ``<out stem>.manifest.json``: which
files, which ranges each contributed, and what was received twice.

The rules: a sample comes from the piece that received it, copied as it is, so where pieces
overlap nothing the result is sample-exact. Where two pieces received the same range, the
piece that had the call first wins (its first received sample is earlier on the call's
timeline; on a tie, its ``started_at``, then its file name); the overlap is
counted (and how many of its samples differ), listed per piece and logged. Ranges no piece
received are silence. The channels are the union of the pieces' tracks, in the recorder's
order (inbound, outbound, playback). A file without a description (an old server, or one
killed before its first audio was placed) is taken whole, at the start of the call, its
stream id read from its name; one whose description is incomplete (its process was killed,
and no restart recovered it) is completed as recovery would (its ranges run to the end of the
file).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from mediastream.errors import InputFileError, RecordingError, UsageError
from mediastream.media.recording.piece import (
    CARRIER_TRACKS,
    PIECE_SUFFIX,
    PLAYBACK,
    Piece,
    base_of,
    complete_in_memory,
    derived_piece,
    read_piece,
)
from mediastream.media.recording.wavfile import read_layout, write_atomic

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"
TRACK_ORDER = (*CARRIER_TRACKS, PLAYBACK)
# a piece whose call starts (``started_at``: its counters' zero, by its host's clock) later
# than the first piece's by more than this had its counters restarted at the reconnect: it is
# placed by the clock instead (to the clocks' agreement, not to the sample)
CLOCK_TOLERANCE_SECONDS = 2.0


@dataclass
class Source:
    """One piece: its WAV (read from disk as it is: header or not, whole frames only) and
    its description."""

    path: Path
    piece: Piece
    description: str  # "complete", "recovered" (completed from the file) or "derived"
    channels: int
    frames: int
    data_offset: int
    overlap: dict[str, int] = field(default_factory=dict)
    differing: int = 0
    shift: int = 0  # added to its call-timeline positions: placed by the clock, not counters

    def samples(self) -> np.ndarray:
        """The file's frames as an (n, channels) int16 array (memory-mapped, read only)."""
        if not self.frames:
            return np.zeros((0, self.channels), dtype=np.int16)
        return np.memmap(
            self.path, dtype="<i2", mode="r", offset=self.data_offset,
            shape=(self.frames, self.channels),
        )  # fmt: skip

    @property
    def key(self) -> str:
        """What groups the pieces of one call: the stream id, else the file's base name."""
        return self.piece.stream_id if self.piece.stream_id is not None else base_of(self.path)


def manifest_path(output: str | os.PathLike[str]) -> Path:
    """``OUT.wav`` -> ``OUT.manifest.json``."""
    path = Path(output)
    return path.with_name(path.stem + MANIFEST_SUFFIX)


def open_source(path: Path) -> Source:
    """A WAV and its description; ``InputFileError`` for a file that is not a 16-bit WAV or
    whose description does not fit it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise InputFileError(f"{path} does not exist") from None
    except OSError as exc:
        raise InputFileError(f"cannot read {path}: {exc.strerror}") from None
    try:
        layout = read_layout(fd)
    except RecordingError as exc:
        raise InputFileError(f"{path} is not a 16-bit PCM WAV: {exc}") from None
    finally:
        os.close(fd)
    frames = layout.data_bytes // (2 * layout.channels)
    try:
        piece = read_piece(path)
    except RecordingError as exc:
        raise InputFileError(str(exc)) from None
    if piece is None:
        piece, description = (
            derived_piece(path, layout.sample_rate, frames, layout.channels),
            "derived",
        )
    else:
        description = "complete" if piece.complete else "recovered"
        complete_in_memory(piece, frames, layout.channels)
        if piece.sample_rate != layout.sample_rate:
            raise InputFileError(
                f"{path} holds {layout.sample_rate} Hz audio, its piece description says "
                f"{piece.sample_rate} Hz"
            )
    if len(piece.channels) != layout.channels:
        raise InputFileError(
            f"{path} has {layout.channels} channels, its piece description names "
            f"{len(piece.channels)} ({', '.join(piece.channels)})"
        )
    return Source(path, piece, description, layout.channels, frames, layout.data_offset)


def gather(paths: list[str | os.PathLike[str]]) -> list[Source]:
    """Every recording named: WAV files, piece descriptions (their WAV), and the WAVs of
    folders (not those a merge wrote: a manifest beside them)."""
    found: list[Path] = []
    for given in map(Path, paths):
        if given.is_dir():
            for wav in sorted(given.glob("*.wav")):
                if not manifest_path(wav).exists():
                    found.append(wav)
        elif given.name.endswith(PIECE_SUFFIX):
            found.append(given.with_name(given.name[: -len(PIECE_SUFFIX)] + ".wav"))
        elif given.exists():
            found.append(given)
        else:
            raise InputFileError(f"{given} does not exist")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return [open_source(p) for p in unique]


def _ranges(mask: np.ndarray) -> list[list[int]]:
    """The runs of True in ``mask`` as ``[start, end)`` lists."""
    if not len(mask):
        return []
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.view(np.int8), [0]))))
    return [[int(a), int(b)] for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _first_heard(source: Source) -> tuple[int, bool, float, str]:
    """Which piece had the call first: its first received sample on the call's timeline,
    then its clock, then its name."""
    starts = [spans[0][0] for spans in source.piece.received.values() if spans]
    began = source.piece.started_at
    return (min(starts, default=1 << 62), began is None, began or 0.0, source.path.name)


def merge_call(
    sources: list[Source], output: Path, *, clock_tolerance: float = CLOCK_TOLERANCE_SECONDS
) -> dict[str, Any]:
    """Write the call these pieces make to ``output`` (and its manifest); returns the
    manifest. The pieces must be of one stream."""
    key = sources[0].key
    rates = {s.piece.sample_rate for s in sources}
    if len(rates) > 1:
        listed = ", ".join(f"{s.path.name} {s.piece.sample_rate} Hz" for s in sources)
        raise InputFileError(f"stream {key}: the pieces disagree on the sample rate: {listed}")
    rate = rates.pop()
    order = sorted(sources, key=_first_heard)
    tracks = sorted(
        {t for s in order for t in s.piece.channels},
        key=lambda t: (TRACK_ORDER.index(t) if t in TRACK_ORDER else len(TRACK_ORDER), t),
    )
    origin = order[0].piece.started_at
    for source in order[1:]:
        began = source.piece.started_at
        if origin is not None and began is not None and began - origin > clock_tolerance:
            source.shift = round((began - origin) * rate)
            logger.warning(
                "stream %s: %s starts %.1f s after the call by its clock, not by its "
                "counters (they restarted at the reconnect): placed by the clock",
                key, source.path, began - origin,
            )  # fmt: skip
    length = max((s.piece.timeline_start + s.shift + s.frames for s in order), default=0)
    length = max(length, 0)
    out = np.zeros((length, len(tracks)), dtype=np.int16)
    owner = np.full((length, len(tracks)), -1, dtype=np.int16)
    for index, source in enumerate(order):
        data, start, shift = source.samples(), source.piece.timeline_start, source.shift
        for track, spans in source.piece.received.items():
            if track not in source.piece.channels:
                continue
            src, dst = source.piece.channels.index(track), tracks.index(track)
            for a, b in spans:
                a, b = (
                    max(a + shift, start + shift, 0),
                    min(b + shift, start + shift + source.frames),
                )
                if a >= b:
                    continue
                seg, taken = data[a - start - shift : b - start - shift, src], owner[a:b, dst]
                free = taken < 0
                out[a:b, dst][free] = seg[free]
                owner[a:b, dst][free] = index
                twice = int((~free).sum())
                if twice:
                    source.overlap[track] = source.overlap.get(track, 0) + twice
                    source.differing += int((out[a:b, dst][~free] != seg[~free]).sum())
    pieces = []
    for index, source in enumerate(order):
        contributed = {t: _ranges(owner[:, i] == index) for i, t in enumerate(tracks)}
        pieces.append(
            {
                "file": str(source.path),
                "instance_id": source.piece.instance_id,
                "description": source.description,
                "timeline_start": source.piece.timeline_start + source.shift,
                "placed_by": "clock" if source.shift else "counters",
                "frames": source.frames,
                "received": source.piece.received,
                "contributed": {t: r for t, r in contributed.items() if r},
                "overlap_samples": sum(source.overlap.values()),
                "differing_samples": source.differing,
            }
        )
        if source.overlap:
            logger.warning(
                "stream %s: %d samples of %s were received by an earlier piece too; the "
                "earlier one's are kept (%d differ)",
                key, sum(source.overlap.values()), source.path, source.differing,
            )  # fmt: skip
    received = owner >= 0
    first = int(np.flatnonzero(received.any(axis=1))[0]) if received.any() else 0
    manifest = {
        "version": MANIFEST_VERSION,
        "stream_id": key,
        "call_control_id": next(
            (s.piece.call_control_id for s in order if s.piece.call_control_id), None
        ),
        "recording": str(output),
        "sample_rate": rate,
        "channels": tracks,
        "frames": length,
        "pieces": pieces,
        "overlap_samples": sum(p["overlap_samples"] for p in pieces),
        "differing_samples": sum(p["differing_samples"] for p in pieces),
        # inside the call (from its first received sample), what no piece received: silence
        "unreceived": {
            t: r
            for i, t in enumerate(tracks)
            if (r := [[a + first, b + first] for a, b in _ranges(~received[first:, i])])
        },
    }
    _write(output, out, rate, manifest)
    return manifest


def _write(output: Path, pcm: np.ndarray, rate: int, manifest: dict[str, Any]) -> None:
    """The recording and its manifest, each atomically (a temporary file, then a rename):
    nothing lands unless both were written."""
    temporary = output.with_name(output.name + ".tmp")
    try:
        soundfile.write(temporary, pcm, rate, subtype="PCM_16", format="WAV")
        write_atomic(manifest_path(output), json.dumps(manifest, indent=1) + "\n", "utf-8")
        os.replace(temporary, output)
    finally:
        temporary.unlink(missing_ok=True)


def merge_recordings(
    paths: list[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    clock_tolerance: float = CLOCK_TOLERANCE_SECONDS,
) -> list[dict[str, Any]]:
    """Merge the pieces found in ``paths`` (files, folders) into one recording per call.

    ``output`` is the recording (``OUT.wav``) when the pieces are of one call; for several
    calls, a folder (made if missing) that gets ``<base>.wav`` and ``<base>.manifest.json``
    per call. Returns the manifests. ``InputFileError`` / ``UsageError`` for what a user can
    fix (a missing file, rates that disagree, several calls into one file).
    """
    sources = gather(paths)
    if not sources:
        raise InputFileError("no recordings found in " + ", ".join(map(str, paths)))
    calls: dict[str, list[Source]] = {}
    for source in sources:
        calls.setdefault(source.key, []).append(source)
    target = Path(output)
    into_folder = target.is_dir() or len(calls) > 1
    if into_folder and target.suffix.lower() == ".wav":
        raise UsageError(
            f"the recordings are of {len(calls)} calls ({', '.join(sorted(calls)[:3])}"
            f"{', ...' if len(calls) > 3 else ''}): give -o a folder"
        )
    if into_folder:
        target.mkdir(parents=True, exist_ok=True)
    inputs = {s.path for s in sources}
    manifests = []
    for key, pieces in calls.items():
        out = target / f"{base_of(pieces[0].path)}.wav" if into_folder else target
        if out.resolve() in inputs:
            raise UsageError(f"{out} is one of the pieces: write the merge elsewhere")
        manifests.append(merge_call(pieces, out, clock_tolerance=clock_tolerance))
        logger.debug("stream %s: %d pieces merged into %s", key, len(pieces), out)
    return manifests


def run(paths: list[str], output: str) -> int:
    """``mediastream merge``: one line per call merged."""
    for manifest in merge_recordings(list(paths), output):
        seconds = manifest["frames"] / manifest["sample_rate"]
        twice = manifest["overlap_samples"]
        print(
            f"{manifest['stream_id']}: {len(manifest['pieces'])} piece(s) -> "
            f"{manifest['recording']} ({seconds:.2f} s"
            + (f"; {twice} samples received twice" if twice else "")
            + ")"
        )
    return 0
