"""A quality report per stream: ``StreamFigures`` keeps the figures, the registry writes them.

The server already sees everything a per-call quality report needs: every frame's arrival, the
reorder buffers' verdicts, the decoded audio, the handler's pace, the player. ``StreamFigures``
keeps them as plain numbers while the stream lives (``snapshot()``: what ``GET /streams``
shows), and ``report()`` turns them into the JSON the registry writes beside the WAV when the
stream ends (``<wav stem>.json``), hands to the handler (``Call.report``, before ``on_stop``),
keeps among the recent reports and summarizes in one log line. The fields are documented in
the README ("Quality report"); ``REPORT_VERSION`` changes when their meaning does.

What a frame costs, since every one passes here (``StreamOptions.reports=False`` turns it
all off): appends and one copy, nothing counted. In a loaded server the frame path's Python
runs cold (the event loop, the WebSocket library and every other stream run between two
frames of one), so each line costs several times what it does in a loop: counting a frame
where it passed cost 9-10 µs there (arrival 3.5, level copy 4, lag 2; 60-70 µs a level fold),
against 2 µs in ``benchmarks/report_cost.py``. So the frame path only keeps:

* each media frame's transit (arrival less chunk × 20 ms), appended by the session itself
  (``Session.transits``, set by ``follow``) whatever becomes of the frame;
* per handled frame (``handled``, after ``on_audio``), its lag as one float, and its samples,
  copied into the registry's ``LevelPool``: one ring for all streams, which stays in the
  cache (a window buffer per stream was written cold every frame: about 4 µs of the 10).

``tick`` counts the timing: ``MediaCore`` calls it for every stream once per
``level_window_seconds`` (0.5 s), after one ``LevelPool.tick`` for every stream's levels;
compiled folds (``runtime/timing.py``, ``media/levels.py``) bin the lags and transits and
fold the audio, and the lags go into the socket meter's buckets for ``/metrics`` (a frame is
timed once, for both). ``snapshot`` and ``report`` count what is pending first; without a
ticker, ``PENDING_FRAMES`` bounds it.

Timing figures use histograms of fixed bins (1 ms wide below 50 ms, 10 ms below 500 ms,
100 ms below 5 s, then one bin), so a stream's memory does not grow with its length;
percentiles are the lower edge of their bin (at most the maximum), maxima are exact.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from array import array
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mediastream.config import StreamOptions
from mediastream.media.recording.wavfile import write_atomic
from mediastream.runtime.level_pool import MAX_FRAME_SAMPLES, ROW_SHIFT, LevelPool
from mediastream.session import TRACKS, Audio

if TYPE_CHECKING:
    from mediastream.runtime.observer import SocketMeter
    from mediastream.runtime.registry import Stream
    from mediastream.session import Session

logger = logging.getLogger(__name__)

REPORT_VERSION = 1
FULL_SCALE = 32768.0  # 0 dBFS: the RMS of a full-scale square wave
DBFS_FLOOR = -120.0  # what digital zero reads (below any nonzero 16-bit level, -112 dBFS)
CLIP_LEVEL = 32767  # a sample at ±32767 (or -32768) is clipped

# histogram bins: [lower edge in ms, width in ms) runs; the last bin holds everything above
_RUNS = ((0.0, 1.0, 50), (50.0, 10.0, 45), (500.0, 100.0, 45))
OVERFLOW_BIN = sum(count for _, _, count in _RUNS)  # 140: the index of the last bin
_BINS = OVERFLOW_BIN + 1
# added before binning: 130 ms computed as 129.99999999 belongs in [130, 140), not [120, 130)
EPSILON_MS = 1e-6
# frames a track's figures hold before they fold on the frame path (no ticker: the runtime
# without a core, a stalled loop): 5 s of 20 ms frames; the ticker folds them long before
PENDING_FRAMES = 250
_NO_METER = (np.zeros(0), np.zeros(0, np.int64))  # no meter: no metrics buckets to count
_EDGES = [start + width * i for start, width, count in _RUNS for i in range(count)] + [5000.0]


@functools.cache
def _kernels() -> Any:
    """``runtime/timing.py``'s compiled counts, imported on first use: importing this module
    does not load numba."""
    from mediastream.runtime import timing

    return timing


class _Histogram:
    """Counts of durations in fixed bins, and the exact maximum (``runtime/timing.py``'s
    kernels count into them)."""

    __slots__ = ("counts", "maximum")

    def __init__(self) -> None:
        self.counts = np.zeros(_BINS, np.int64)
        self.maximum = 0.0

    def percentile(self, q: float) -> float | None:
        """The nearest-rank ``q`` quantile, rounded down to its bin (None: nothing counted)."""
        n = int(self.counts.sum())
        if not n:
            return None
        rank = max(1, math.ceil(q * n))
        seen = 0
        for index, count in enumerate(self.counts.tolist()):
            seen += count
            if seen >= rank:
                return round(min(_EDGES[index], self.maximum), 1)
        return round(self.maximum, 1)  # unreachable: the counts sum to n

    def summary(self) -> dict[str, float | None]:
        n = int(self.counts.sum())
        return {
            "p50": self.percentile(0.50),
            "p99": self.percentile(0.99),
            "max": round(self.maximum, 1) if n else None,
        }


def _dbfs(sumsq: float, samples: int) -> float | None:
    """RMS level in dBFS (None: no samples; ``DBFS_FLOOR``: digital zero)."""
    if samples <= 0:
        return None
    if sumsq <= 0.0:
        return DBFS_FLOOR
    level = 10.0 * math.log10(sumsq / samples / (FULL_SCALE * FULL_SCALE))
    return round(max(DBFS_FLOOR, level), 2)


class _Level:
    """One track's audio figures: a row of the registry's ``LevelPool``, where the frame path
    copies each frame and where all streams' frames are folded at once."""

    __slots__ = ("pool", "row")

    def __init__(self, pool: LevelPool) -> None:
        self.pool = pool
        self.row = pool.row()

    def add(self, pcm: np.ndarray) -> None:
        self.pool.add(self.row, pcm)

    @property
    def window(self) -> float | None:
        """dBFS over the last window and what came since (None: no audio in it)."""
        return _dbfs(*self.pool.window(self.row))

    def summary(self) -> dict[str, Any]:
        frames, samples, sumsq, peak, clipped, silent = self.pool.figures(self.row)
        return {
            "rms_dbfs": _dbfs(sumsq, samples),
            "peak": peak,
            "clipped": clipped,
            "digital_silence": round(silent / frames, 4) if frames else None,
            "speech": None,  # set by StreamFigures when a speech detector listens
        }


class StreamFigures:
    """One stream's quality figures, fed by the runtime frame by frame (see the module doc)."""

    __slots__ = (
        "_arrivals",
        "_best",
        "_gap_ends",
        "_gaps",
        "_jitter",
        "_lag",
        "_lags",
        "_last_lag_ms",
        "_levels",
        "_max_entries",
        "_noted",
        "_origin",
        "_pool",
        "_reconnects",
        "_session",
        "_stream",
        "lost",
        "meter",
        "recording",
    )

    def __init__(self, stream: Stream, options: StreamOptions, pool: LevelPool) -> None:
        self._stream = stream
        self._pool: LevelPool | None = pool  # the registry's: every stream's level figures
        self._max_entries = options.report_max_entries
        self._levels: dict[str, _Level] = {}
        self.lost = 0  # slots given up and filled with silence
        self._gaps: list[list[Any]] = []  # [track, first sample, frames, one past the last]
        self._gap_ends: dict[str, list[Any]] = {}  # each track's latest gap, to extend it
        self._reconnects: list[int] = []  # timeline positions (samples)
        self._noted: set[str] = set()  # lists that reached ``report_max_entries``
        # the followed socket's session, and its transits per track (appended by the session,
        # counted and emptied here), and this socket's least transit so far per track
        self._session: Session | None = None
        self._arrivals: dict[str, array[float]] = {}
        self._best: dict[str, float] = {}
        self._jitter = _Histogram()
        self._lag = _Histogram()
        self._lags: array[float] = array("d")  # handled frames' lags (s), not counted yet
        self._origin: float | None = None  # this socket's handler clock (as the meter's)
        self._last_lag_ms: float | None = None
        # the owning socket's meter: the lags go there when they are counted (None: none)
        self.meter: SocketMeter | None = None
        self.recording: Path | None = None

    # ------------------------------------------------------------ what the runtime feeds

    def follow(self, session: Session, meter: SocketMeter | None) -> None:
        """The socket of ``session`` now carries the stream: time its media frames' arrivals
        (the session appends each one's transit, an arrival less its counter × 20 ms, for
        ``tick`` to count), and hand the lags counted from now on to ``meter``.

        A frame's deviation from the 20 ms clock is how much later it came than the earliest
        frame so far of its track and socket (RFC 5481's packet delay variation, with the
        minimum so far as the reference).
        """
        self._unfollow()
        session.transits = self._arrivals = {track: array("d") for track in TRACKS}
        self._session, self.meter = session, meter

    def _unfollow(self) -> None:
        if self._session is not None:
            self._session.transits = None  # the old socket's frames are no longer timed
            self._session = None

    def audio(self, event: Audio) -> None:
        """``event`` was placed on the stream's timeline (lost ones as silence)."""
        if event.missing:
            self._missing(event)
            return
        level = self._levels.get(event.track)
        if level is None:
            if self._pool is None:
                return  # released: the report is made (a socket read after its stream ended)
            level = self._levels[event.track] = _Level(self._pool)
        level.add(event.pcm)

    def handled(
        self,
        event: Audio,
        arrived: float,
        _now: Any = time.monotonic,  # bound here: locals are faster than globals
    ) -> None:
        """``on_audio`` returned for ``event``: its audio (as ``audio``), and how far behind
        the socket's real-time clock that was. One call for both, and only appends: the frame
        path's cost is mostly calls and lines (``tick`` counts them, in compiled code).

        The same clock as the metrics' handler lag: it starts at the socket's first handled
        frame (``arrived``: when the frame that released it came in) and runs at the rate.
        The lag goes to ``meter`` when it is counted: the frame is timed once, for both.
        """
        now = _now()
        due = event.position / event.sample_rate
        origin = self._origin
        if origin is None:
            origin = self._origin = min(arrived, now) - due
        lags = self._lags
        lags.append(now - origin - due)
        pcm = event.pcm
        level = self._levels.get(event.track)
        if level is not None and not event.missing:
            pool = self._pool  # ``LevelPool.add``, inlined
            size = len(pcm)
            fill = pool.fill
            end = fill + size
            if 0 < size <= MAX_FRAME_SAMPLES and end <= pool.capacity:
                try:
                    pool.view[fill:end] = pcm
                except (TypeError, ValueError):  # not a plain int16 buffer: numpy converts it
                    pool.ring[fill:end] = pcm
                pool.fill = end
                pool.records.append(level.row << ROW_SHIFT | size)
            else:
                pool.add(level.row, pcm)
        else:
            self.audio(event)
        if len(lags) >= PENDING_FRAMES:
            self.settle()  # no ticker: count here

    def reconnected(self, position: int) -> None:
        """A new socket took the stream up; its audio goes on from ``position`` (samples)."""
        self._count_timing()  # on the old socket's clocks, into its meter
        self._unfollow()
        self._listed(self._reconnects, position, "reconnects")
        self._best.clear()  # a new socket: new arrival and handler clocks
        self._origin = None
        self.meter = None

    def _missing(self, event: Audio) -> None:
        self.lost += 1
        end = event.position + len(event.pcm)
        gap = self._gap_ends.get(event.track)
        if gap is not None and gap[3] == event.position:
            gap[2] += 1
            gap[3] = end
            return
        gap = [event.track, event.position, 1, end]
        self._gap_ends[event.track] = gap  # extended even when not listed: counted in ``lost``
        self._listed(self._gaps, gap, "gaps")

    def _listed(self, entries: list[Any], entry: Any, what: str) -> None:
        """Append ``entry`` unless ``entries`` is full (logged once per stream and list)."""
        if len(entries) < self._max_entries:
            entries.append(entry)
        elif what not in self._noted:
            self._noted.add(what)
            logger.warning(
                "stream %s: its report lists the first %d %s only (report_max_entries)",
                self._stream.log_id, self._max_entries, what,
            )  # fmt: skip

    # ------------------------------------------------------------ counting what was kept

    def tick(self) -> None:
        """Count everything kept since the last tick: ``MediaCore`` calls it for every stream
        once per ``level_window_seconds``; it starts a new live level window."""
        self._count_timing()  # the levels: ``LevelPool.tick``, for all streams at once

    def settle(self) -> None:
        """Count what is kept (the socket that fed it is done: its meter closes next)."""
        self._count_timing()
        self._fold_levels()

    def _fold_levels(self) -> None:
        if self._levels:
            self._pool.fold()

    def release(self) -> None:
        """The stream's report is made: its rows of the pool may serve other streams."""
        if self._pool is not None:
            for level in self._levels.values():
                self._pool.release(level.row)
        self._levels, self._pool = {}, None  # audio that comes after takes no row

    def _count_timing(self) -> None:
        if self._lags:
            self._count_lags()
        self._count_arrivals()

    def _count_arrivals(self) -> None:
        jitter = self._jitter
        for track, pending in self._arrivals.items():
            if pending:
                best, jitter.maximum = _kernels().count_jitter(
                    pending, self._best.get(track, math.nan), jitter.counts, jitter.maximum
                )
                self._best[track] = best
                del pending[:]

    def _count_lags(self) -> None:
        meter, lag = self.meter, self._lag
        bounds, buckets = (meter.lag_bounds, meter.lag_buckets) if meter else _NO_METER
        lag.maximum, self._last_lag_ms, total = _kernels().count_lags(
            self._lags, lag.counts, lag.maximum, bounds, buckets
        )
        del self._lags[:]
        if meter is not None:
            meter.lag_sum += total

    # ------------------------------------------------------------ what it tells

    @property
    def last_lag_ms(self) -> float | None:
        """The handler lag of the last frame counted (by the last tick or ``snapshot``), ms."""
        return self._last_lag_ms

    def tracks(self) -> list[str]:
        return [track for track in TRACKS if track in self._levels]

    def _track_summary(self, track: str) -> dict[str, Any]:
        summary = self._levels[track].summary()
        voice = self._stream.voice
        if voice is not None:  # the share of the track's audio that was speech
            share = voice.speech_share(track)
            summary["speech"] = round(share, 4) if share is not None else None
        return summary

    def live_levels(self) -> dict[str, float | None]:
        """Each track's level over the last window (two ticks; dBFS), for the live view."""
        return {track: self._levels[track].window for track in self.tracks()}

    def snapshot(self) -> dict[str, Any]:
        """The live view of the stream (JSON-ready): what ``GET /streams`` shows. What was
        kept since the last tick is counted first: the view is as of now."""
        self.settle()
        return live_view(self._stream, self)

    def report(self) -> dict[str, Any]:
        """The stream's quality report (JSON-ready); final once the stream has ended."""
        self.settle()
        stream = self._stream
        rate = stream.sample_rate or 1
        received, reordered, late, duplicated = _counts(stream)
        lag = self._lag.percentile(0.99)
        return {
            "version": REPORT_VERSION,
            "stream_id": stream.stream_id,
            "call_control_id": stream.call.call_control_id,
            "codec": stream.call.media_format.encoding,
            "sample_rate": stream.sample_rate,
            "tracks": self.tracks(),
            "duration_seconds": round(stream.end_position / rate, 3),
            "frames": {
                "received": received,
                "lost": self.lost,
                "reordered": reordered,
                "late": late,
                "duplicated": duplicated,
            },
            "gaps": [
                {"track": g[0], "position_seconds": round(g[1] / rate, 3), "frames": g[2]}
                for g in self._gaps
            ],
            "jitter_ms": self._jitter.summary(),
            "handler_lag_p99_ms": lag,
            "levels": {track: self._track_summary(track) for track in self.tracks()},
            "playback": _playback(stream),
            "reconnects": [{"at_seconds": round(p / rate, 3)} for p in self._reconnects],
            "recording": str(self.recording) if self.recording is not None else None,
        }


def _counts(stream: Stream) -> tuple[int, int, int, int]:
    """Frames received, reordered, late, duplicated: the stream's totals, plus what its
    owning socket has counted so far (totals take a socket's counts when it is done)."""
    t = stream.totals
    received, reordered, late, duplicated = t.frames, t.reordered, t.late, t.duplicated
    owner = stream.owner
    if owner is not None and not owner.counted:
        received += owner.session.stats.media_frames
        for stats in owner.session.reorder_stats().values():
            reordered += stats.reordered
            late += stats.late
            duplicated += stats.duplicates
    return received, reordered, late, duplicated


def _playback(stream: Stream) -> dict[str, Any]:
    items, heard_ms, cleared = stream.call.playback_totals()
    return {"items": items, "heard_ms": round(heard_ms, 1), "cleared": cleared}


def live_view(stream: Stream, figures: StreamFigures | None) -> dict[str, Any]:
    """A live or suspended stream, JSON-ready. Without figures (reports off): the counts the
    stream keeps anyway; no handler lag, no levels."""
    received = _counts(stream)[0]
    if figures is not None:
        lost = figures.lost
        tracks = figures.tracks()
        lag = round(figures.last_lag_ms, 1) if figures.last_lag_ms is not None else None
        levels = figures.live_levels()
    else:
        lost = stream.totals.lost
        tracks = [track for track in TRACKS if track in stream.track_ends]
        lag, levels = None, {}
    view = {
        "stream_id": stream.stream_id,
        "state": stream.state.value,
        "codec": stream.call.media_format.encoding,
        "tracks": tracks,
        "age_seconds": round(time.monotonic() - stream.opened_at, 1),
        "frames": received,
        "lost": lost,
        "handler_lag_ms": lag,
        "playback": {"queued_ms": round(stream.call.queued_ms, 1)},
        "levels": levels,
    }
    voice = stream.voice
    if voice is not None:  # per listened track, whether someone is speaking now
        view["speaking"] = {track: voice.speaking(track) for track in voice.options.tracks}
    return view


# ---------------------------------------------------------------- the sidecar and the log line


def sidecar_path(recording: Path) -> Path:
    """``<wav stem>.json`` beside the recording."""
    return recording.with_suffix(".json")


def write_sidecar(recording: Path, text: str) -> Path:
    """Write the report beside ``recording``, atomically (a temporary file, then a rename):
    a reader never sees half a report. Blocking: the registry runs it in a thread."""
    return write_atomic(sidecar_path(recording), text)


def describe(report: dict[str, Any]) -> str:
    """The report's summary line: timing, then each track's level."""
    jitter = report["jitter_ms"]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:g}"

    parts = [
        f"quality: jitter p50/p99/max {ms(jitter['p50'])}/{ms(jitter['p99'])}/"
        f"{ms(jitter['max'])} ms, handler lag p99 {ms(report['handler_lag_p99_ms'])} ms"
    ]
    frames = report["frames"]
    if frames["lost"] or frames["duplicated"]:
        parts.append(
            f"{frames['lost']} lost in {len(report['gaps'])} gaps, "
            f"{frames['duplicated']} duplicated"
        )
    for track, level in report["levels"].items():
        silence = level["digital_silence"]
        share = f", {silence:.0%} digital silence" if silence else ""
        clipped = f", {level['clipped']} clipped" if level["clipped"] else ""
        parts.append(f"{track} {ms(level['rms_dbfs'])} dBFS peak {level['peak']}{clipped}{share}")
    if report["reconnects"]:
        parts.append(f"reconnects {len(report['reconnects'])}")
    playback = report["playback"]
    if playback["items"]:
        parts.append(
            f"played {playback['items']} ({playback['heard_ms']:g} ms heard, "
            f"{playback['cleared']} cleared)"
        )
    return "; ".join(parts)


def json_safe(value: Any) -> Any:
    """``value`` as strict JSON: NaN and infinities (a silent track's dBFS, as Python's
    ``json`` writes them) become None, numpy scalars plain numbers."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def encode(report: dict[str, Any]) -> str:
    """The sidecar's text: indented JSON, ASCII (a stream id's odd characters escaped)."""
    return json.dumps(report, indent=2, allow_nan=False) + "\n"
