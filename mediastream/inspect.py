"""``mediastream inspect``: a recording's quality report, as a table or JSON, and its picture.

The server writes each stream's report beside its WAV (``<stem>.json``, see the README's
"Quality report"); ``inspect`` prints that sidecar when there is one. Without it (a WAV from
elsewhere, or one a killed process left), it computes what a WAV alone can say: duration,
channels, per channel the level, peak, clipped samples and share of digital silence (as the
server defines them, ``runtime/report.py``), and the gaps, taken to be runs of exact digital
silence of at least 20 ms (a lost frame is recorded as zeros of its length; real audio, even
quiet, is never exactly zero for 160 samples). Two figures differ from the server's by what a
WAV cannot tell: a lost frame counts as audio (digital silence) in the level and the silence
share. Frame counts, jitter, handler lag, playback and reconnects exist only in the report.

``--png`` draws the call (matplotlib, the ``inspect`` extra): each channel's waveform on one
time axis, the gaps shaded and the reconnects marked, the level over time, and with
``--spectrogram`` one spectrogram per channel. This is a tool, not part of the media path: it
reads whole files into memory (an hour of 16 kHz stereo is 230 MB).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from mediastream.config import StreamOptions
from mediastream.errors import InputFileError, UsageError, install_hint
from mediastream.runtime.report import (
    CLIP_LEVEL,
    DBFS_FLOOR,
    FULL_SCALE,
    REPORT_VERSION,
    json_safe,
)
from mediastream.session import FRAME_SECONDS

# a run of exact zeros at least this long is a gap (one frame: what a lost frame leaves)
MIN_GAP_SECONDS = FRAME_SECONDS
LEVEL_WINDOW_SECONDS = 0.05  # the picture's level-over-time resolution
LEVEL_FLOOR_DB = -90.0  # digital silence, drawn
MAX_GAPS_SHOWN = 8  # in the table; --json has them all
TRACK_COLORS = ("#2563eb", "#d97706", "#059669", "#7c3aed")
GAP_COLOR = "#dc2626"
RECONNECT_COLOR = "#111827"

Source = Literal["sidecar", "wav"]


@dataclass
class Recording:
    """A WAV's samples (frames x channels, int16) and rate."""

    pcm: np.ndarray
    sample_rate: int

    @property
    def channels(self) -> int:
        return int(self.pcm.shape[1])

    @property
    def seconds(self) -> float:
        return len(self.pcm) / self.sample_rate if self.sample_rate else 0.0


@dataclass
class Inspected:
    """One file's report and where it came from."""

    path: Path
    report: dict[str, Any]
    source: Source
    note: str = ""  # why the sidecar was not used, when it exists

    def as_json(self) -> dict[str, Any]:
        return {"file": str(self.path), "source": self.source, **self.report}


# ------------------------------------------------------------------ reading


def sidecar_path(wav: Path) -> Path:
    """``<stem>.json`` beside the WAV: where the server writes the report."""
    return wav.with_suffix(".json")


def check_wav(path: Path) -> None:
    """A readable WAV file, else one ``InputFileError`` line saying what is wrong."""
    import soundfile

    if not path.exists():
        raise InputFileError(f"{path}: no such file")
    if path.is_dir():
        raise InputFileError(f"{path}: is a directory, not a WAV file")
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, OSError) as exc:
        detail = getattr(exc, "error_string", None) or str(exc)
        raise InputFileError(f"{path}: not a WAV file ({detail})") from None
    if info.format not in ("WAV", "WAVEX", "RF64"):
        raise InputFileError(f"{path}: not a WAV file (it is {info.format_info or info.format})")


def read_recording(path: Path) -> Recording:
    """The whole WAV as int16, one column per channel."""
    import soundfile

    try:
        pcm, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as exc:
        detail = getattr(exc, "error_string", None) or str(exc)
        raise InputFileError(f"{path}: cannot read it as a WAV file ({detail})") from None
    return Recording(pcm, int(rate))


def read_sidecar(wav: Path) -> tuple[dict[str, Any] | None, str]:
    """The server's report for ``wav``, or (None, why not) when absent or unreadable.

    An unreadable sidecar (cut short by a full disk, edited by hand) is not fatal: the WAV
    still says most of what matters, and the note says why it was used instead.
    """
    path = sidecar_path(wav)
    if not path.is_file():
        return None, ""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, f"{path} unreadable ({exc}): computed from the WAV instead"
    if not isinstance(report, dict):
        return None, f"{path} is not a report: computed from the WAV instead"
    return report, ""


def inspect_file(path: Path, recording: Recording | None = None) -> Inspected:
    """The report of one WAV: its sidecar's, else computed from ``recording`` (read if
    not given)."""
    report, note = read_sidecar(path)
    if report is not None:
        version = report.get("version")
        if isinstance(version, int) and version > REPORT_VERSION:
            note = f"report version {version} is newer than this inspect (version 1) knows"
        return Inspected(path, report, "sidecar", note)
    return Inspected(path, report_from_wav(path, recording or read_recording(path)), "wav", note)


# ------------------------------------------------------------------ from the WAV alone


def track_names(channels: int) -> list[str]:
    """The recording layout: mono is one track (which one, the WAV does not say); in stereo,
    channel 0 is inbound and channel 1 outbound; further channels are numbered."""
    if channels == 1:
        return ["mono"]
    names = ["inbound", "outbound"]
    return [names[i] if i < 2 else f"channel {i + 1}" for i in range(channels)]


def zero_runs(samples: np.ndarray, min_length: int) -> list[tuple[int, int]]:
    """(start, length) of each run of exact zeros at least ``min_length`` samples long."""
    if len(samples) == 0 or min_length < 1:
        return []
    zero = np.concatenate(([False], samples == 0, [False]))
    edges = np.flatnonzero(np.diff(zero.astype(np.int8)))
    starts, ends = edges[0::2], edges[1::2]
    keep = (ends - starts) >= min_length
    return [(int(s), int(e - s)) for s, e in zip(starts[keep], ends[keep], strict=True)]


def dbfs(samples: np.ndarray) -> float | None:
    """RMS level in dBFS as the report has it: a full-scale square wave is 0, digital zero
    ``DBFS_FLOOR``, no samples None."""
    if not len(samples):
        return None
    floats = samples.astype(np.float64)
    sumsq = float(floats @ floats)
    if sumsq <= 0:
        return DBFS_FLOOR
    level = 10 * math.log10(sumsq / len(samples) / (FULL_SCALE * FULL_SCALE))
    return round(max(DBFS_FLOOR, level), 2)


def channel_levels(
    samples: np.ndarray, rate: int, silence_peak: int = StreamOptions.digital_silence_peak
) -> dict[str, Any]:
    """Level, peak, clipped samples and share of digital silence of one channel, defined as
    in the report: clipped is at ±32767 (or -32768); digital silence is the share of 20 ms
    frames whose samples all lie within ±``silence_peak``."""
    wide = samples.astype(np.int32)
    frame = max(1, round(FRAME_SECONDS * rate))
    count = -(-len(wide) // frame)  # a last, shorter frame counts too
    silent = 0
    if count:
        padded = np.zeros(count * frame, dtype=np.int32)
        padded[: len(wide)] = np.abs(wide)
        silent = int(np.count_nonzero(padded.reshape(count, frame).max(axis=1) <= silence_peak))
    return {
        "rms_dbfs": dbfs(samples),
        "peak": int(np.max(np.abs(wide))) if len(wide) else 0,
        "clipped": int(np.count_nonzero(np.abs(wide) >= CLIP_LEVEL)),
        "digital_silence": round(silent / count, 4) if count else None,
        "speech": None,
    }


def _min_gap(rate: int) -> int:
    return max(1, round(MIN_GAP_SECONDS * rate))


def gaps_of(recording: Recording, tracks: Sequence[str]) -> list[dict[str, Any]]:
    """Runs of exact digital silence of 20 ms or more, as frames of 20 ms, by position."""
    rate = recording.sample_rate
    frame = max(1, round(FRAME_SECONDS * rate))
    gaps = []
    for channel, track in enumerate(tracks):
        for start, length in zero_runs(recording.pcm[:, channel], _min_gap(rate)):
            position = round(start / rate, 3)
            gaps.append({"track": track, "position_seconds": position, "frames": length // frame})
    return sorted(gaps, key=lambda g: (g["position_seconds"], g["track"]))


def report_from_wav(path: Path, recording: Recording) -> dict[str, Any]:
    """The report's fields a WAV alone can fill; the others are None."""
    tracks = track_names(recording.channels)
    rate = recording.sample_rate
    return {
        "version": REPORT_VERSION,
        "stream_id": _stream_id_of(path),
        "call_control_id": None,
        "codec": None,
        "sample_rate": rate,
        "tracks": tracks,
        "duration_seconds": round(recording.seconds, 3),
        "frames": None,
        "gaps": gaps_of(recording, tracks),
        "jitter_ms": None,
        "handler_lag_p99_ms": None,
        "levels": {t: channel_levels(recording.pcm[:, i], rate) for i, t in enumerate(tracks)},
        "playback": None,
        "reconnects": None,
        "recording": str(path),
    }


def _stream_id_of(path: Path) -> str | None:
    """The id a recording is named after, when its name is the id itself (``<id>.wav`` or
    ``<id>~N.wav``); a hashed name (``<s>=<h>``) cannot be turned back."""
    base = path.stem.rsplit("~", 1)[0] if "~" in path.stem else path.stem
    return None if "=" in base or not base else base


# ------------------------------------------------------------------ the table


def format_table(item: Inspected) -> str:
    """The report as aligned lines, one subject each; unknown figures are left out."""
    r = item.report
    lines = [str(item.path)]

    def row(label: str, value: str | None) -> None:
        if value:
            lines.append(f"  {label:<12} {value}")

    if item.source == "sidecar":
        row("report", f"{sidecar_path(item.path)} (version {r.get('version', '?')})")
    else:
        row("report", "none beside it: computed from the WAV (frames, jitter, playback and "
                      "reconnects are only in the server's report)")  # fmt: skip
    if item.note:
        row("note", item.note)
    ids = _text(r.get("stream_id"))
    if r.get("call_control_id"):
        ids += f" (call {r['call_control_id']})"
    row("stream", ids if r.get("stream_id") else None)
    tracks = r.get("tracks") or []
    audio = [_text(r.get("codec")) if r.get("codec") else "", _hz(r.get("sample_rate"))]
    audio.append(f"{len(tracks)} track{'s' if len(tracks) != 1 else ''} ({', '.join(tracks)})")
    row("audio", ", ".join(a for a in audio if a))
    row("duration", _seconds(r.get("duration_seconds")))
    frames = r.get("frames")
    if isinstance(frames, Mapping):
        names = ("received", "lost", "reordered", "late", "duplicated")
        row("frames", " · ".join(f"{frames.get(n, '–')} {n}" for n in names))
    row("gaps", _gaps(r.get("gaps")))
    jitter = r.get("jitter_ms")
    if isinstance(jitter, Mapping):
        row("jitter", " · ".join(f"{k} {_ms(jitter.get(k))}" for k in ("p50", "p99", "max")))
    if r.get("handler_lag_p99_ms") is not None:
        row("handler lag", f"p99 {_ms(r['handler_lag_p99_ms'])}")
    playback = r.get("playback")
    if isinstance(playback, Mapping):
        row("playback", f"{playback.get('items', '–')} items · "
                        f"{_ms(playback.get('heard_ms'), 0)} heard · "
                        f"{playback.get('cleared', '–')} cleared")  # fmt: skip
    reconnects = r.get("reconnects")
    if isinstance(reconnects, list):
        at = ", ".join(_seconds(x.get("at_seconds")) for x in reconnects if isinstance(x, Mapping))
        row("reconnects", f"{len(reconnects)}" + (f": at {at}" if at else ""))
    if item.source == "sidecar" and r.get("recording"):
        row("recording", _text(r["recording"]))
    levels = r.get("levels")
    if isinstance(levels, Mapping) and levels:
        lines.append("")
        lines += _levels_table(levels)
    return "\n".join(lines)


def _levels_table(levels: Mapping[str, Any]) -> list[str]:
    header = ("track", "level", "peak", "clipped", "digital silence", "speech")
    rows = [header]
    for track, level in levels.items():
        level = level if isinstance(level, Mapping) else {}
        rows.append(
            (
                str(track),
                _db(level.get("rms_dbfs")),
                _text(level.get("peak")),
                _text(level.get("clipped")),
                _share(level.get("digital_silence")),
                _share(level.get("speech")),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    out = []
    for cells in rows:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        out.append("  " + "  ".join([first, *rest]).rstrip())
    return out


def _gaps(gaps: Any) -> str | None:
    if not isinstance(gaps, list):
        return None
    if not gaps:
        return "none"
    shown = []
    for gap in gaps[:MAX_GAPS_SHOWN]:
        frames = gap.get("frames")
        count = f"{frames} frame{'s' if frames != 1 else ''}" if frames is not None else "?"
        shown.append(f"{gap.get('track', '?')} at {_seconds(gap.get('position_seconds'))} "
                     f"({count})")  # fmt: skip
    more = f", and {len(gaps) - MAX_GAPS_SHOWN} more (--json)" if len(gaps) > MAX_GAPS_SHOWN else ""
    return f"{len(gaps)}: " + ", ".join(shown) + more


def _text(value: Any) -> str:
    return "–" if value is None else str(value)


def _hz(value: Any) -> str:
    return f"{value} Hz" if isinstance(value, int | float) else ""


def _seconds(value: Any) -> str:
    return f"{value:.2f} s" if isinstance(value, int | float) else "–"


def _ms(value: Any, digits: int = 1) -> str:
    return f"{value:.{digits}f} ms" if isinstance(value, int | float) else "–"


def _db(value: Any) -> str:
    if isinstance(value, int | float) and value <= DBFS_FLOOR:
        return "silent"  # digital zero (also -inf, as another tool may write it)
    if isinstance(value, int | float) and math.isfinite(value):
        return f"{value:.1f} dBFS"
    return "–"


def _share(value: Any) -> str:
    return f"{100 * value:.1f} %" if isinstance(value, int | float) else "–"


# ------------------------------------------------------------------ the picture


def level_curve(samples: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(times, dBFS) per 50 ms window; digital silence at ``LEVEL_FLOOR_DB``."""
    window = max(1, round(LEVEL_WINDOW_SECONDS * rate))
    count = len(samples) // window
    if count == 0:
        return np.zeros(0), np.zeros(0)
    blocks = samples[: count * window].astype(np.float64).reshape(count, window)
    rms = np.sqrt(np.mean(blocks * blocks, axis=1))
    with np.errstate(divide="ignore"):
        level = 20 * np.log10(rms / FULL_SCALE)
    level = np.maximum(np.nan_to_num(level, neginf=LEVEL_FLOOR_DB), LEVEL_FLOOR_DB)
    times = (np.arange(count) + 0.5) * window / rate
    return times, level


def envelope(samples: np.ndarray, rate: int, bins: int) -> tuple[np.ndarray, ...]:
    """(times, low, high) of ``samples`` in ``bins`` columns: a waveform drawn at any length
    costs the same (plotting every sample of an hour-long call would take minutes)."""
    if len(samples) <= bins * 2:
        times = np.arange(len(samples)) / rate
        values = samples / FULL_SCALE
        return times, values, values
    step = -(-len(samples) // bins)
    columns = -(-len(samples) // step)
    padded = np.empty(columns * step, dtype=samples.dtype)
    padded[: len(samples)] = samples
    padded[len(samples) :] = samples[-1]  # the last column: its own samples' range
    cut = padded.reshape(columns, step)
    times = np.minimum((np.arange(columns) + 0.5) * step, len(samples)) / rate
    return times, cut.min(axis=1) / FULL_SCALE, cut.max(axis=1) / FULL_SCALE


def load_matplotlib() -> Any:
    """matplotlib's Figure and Agg canvas (no pyplot: no global state, no display), or one
    ``UsageError`` line naming the extra to install."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError(f"--png needs matplotlib: {install_hint('inspect')}") from None
    return Figure, FigureCanvasAgg


Box = tuple[int, int, int, int]  # left, top, right, bottom in pixels, from the top left


def draw_call(
    item: Inspected, recording: Recording, out: Path, *, spectrogram: bool = False
) -> dict[str, Box]:
    """Write the picture of one call to ``out``; each panel's box in the image, by name
    (``waveform inbound``, ``level``, ``spectrogram outbound`` ...)."""
    figure_class, canvas_class = load_matplotlib()
    tracks = _picture_tracks(item, recording)
    rate, seconds = recording.sample_rate, recording.seconds
    ratios = [2.0] * len(tracks) + [1.6] + ([1.6] * len(tracks) if spectrogram else [])
    height = 0.9 + 1.35 * sum(ratios) / 2
    figure = figure_class(figsize=(12, height), dpi=100, layout="constrained")
    canvas_class(figure)
    axes = figure.subplots(len(ratios), 1, sharex=True, gridspec_kw={"height_ratios": ratios})
    axes = list(np.atleast_1d(axes))
    figure.suptitle(_title(item), fontsize=11, x=0.01, ha="left")
    panels: dict[str, Any] = {}
    gaps = _gap_spans(item.report.get("gaps"), rate)
    reconnects = _reconnects(item.report.get("reconnects"))
    for channel, track in enumerate(tracks):
        ax = axes[channel]
        panels[f"waveform {track}"] = ax
        times, low, high = envelope(recording.pcm[:, channel], rate, 3000)
        color = TRACK_COLORS[channel % len(TRACK_COLORS)]
        ax.fill_between(times, low, high, color=color, linewidth=0.6, edgecolor=color)
        ax.set_ylim(-1.05, 1.05)
        ax.set_yticks([-1, 0, 1])
        ax.set_ylabel(track, rotation=0, ha="right", va="center", fontsize=10)
        for gap_track, start, length in gaps:
            if gap_track in (track, None) or gap_track not in tracks:
                ax.axvspan(start, start + length, color=GAP_COLOR, alpha=0.25, linewidth=0)
    level_ax = axes[len(tracks)]
    panels["level"] = level_ax
    for channel, track in enumerate(tracks):
        times, level = level_curve(recording.pcm[:, channel], rate)
        color = TRACK_COLORS[channel % len(TRACK_COLORS)]
        level_ax.plot(times, level, color=color, linewidth=1.0, label=track)
    level_ax.set_ylim(LEVEL_FLOOR_DB - 3, 3)
    level_ax.set_ylabel("level\ndBFS", rotation=0, ha="right", va="center", fontsize=10)
    level_ax.grid(axis="y", color="#e5e7eb", linewidth=0.6)
    if len(tracks) > 1:
        level_ax.legend(loc="lower right", fontsize=8, ncols=len(tracks), frameon=False)
    if spectrogram:
        for channel, track in enumerate(tracks):
            ax = axes[len(tracks) + 1 + channel]
            panels[f"spectrogram {track}"] = ax
            samples = recording.pcm[:, channel].astype(np.float64) / FULL_SCALE
            if len(samples) >= 256:
                with np.errstate(divide="ignore"):  # a gap's power is zero: drawn blank
                    ax.specgram(samples, NFFT=256, Fs=rate, noverlap=128, cmap="magma", vmin=-140)
            ax.set_ylabel(f"{track}\nHz", rotation=0, ha="right", va="center", fontsize=10)
    for ax in axes:
        for at in reconnects:
            ax.axvline(at, color=RECONNECT_COLOR, linestyle="--", linewidth=1.2)
        ax.set_xlim(0, max(seconds, 1 / rate))
        ax.tick_params(labelsize=8)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    axes[-1].set_xlabel("seconds", fontsize=9)
    _legend(axes[0], bool(gaps), bool(reconnects))
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.canvas.draw()
    boxes = {name: _box(ax, figure) for name, ax in panels.items()}
    figure.savefig(str(out), facecolor="white")
    return boxes


def _picture_tracks(item: Inspected, recording: Recording) -> list[str]:
    """Channel names: the report's tracks when they match the channels, else the layout."""
    tracks = item.report.get("tracks")
    if isinstance(tracks, list) and len(tracks) == recording.channels:
        return [str(t) for t in tracks]
    return track_names(recording.channels)


def _title(item: Inspected) -> str:
    r = item.report
    parts = [str(r.get("stream_id") or item.path.name)]
    if r.get("codec"):
        parts.append(f"{r['codec']} {r.get('sample_rate', '')} Hz".strip())
    if isinstance(r.get("duration_seconds"), int | float):
        parts.append(f"{r['duration_seconds']:.1f} s")
    frames = r.get("frames")
    if isinstance(frames, Mapping) and frames.get("lost") is not None:
        parts.append(f"{frames['lost']} frames lost")
    gaps = r.get("gaps")
    if isinstance(gaps, list):
        parts.append(f"{len(gaps)} gap{'s' if len(gaps) != 1 else ''}")
    reconnects = r.get("reconnects")
    if isinstance(reconnects, list):
        parts.append(f"{len(reconnects)} reconnect{'s' if len(reconnects) != 1 else ''}")
    return "  ·  ".join(parts)


def _gap_spans(gaps: Any, rate: int) -> list[tuple[str | None, float, float]]:
    """(track, start, length) in seconds; a gap of under a pixel is still drawn."""
    spans = []
    for gap in gaps if isinstance(gaps, list) else ():
        if not isinstance(gap, Mapping) or not isinstance(gap.get("position_seconds"), int | float):
            continue
        frames = gap.get("frames") if isinstance(gap.get("frames"), int | float) else 1
        length = max(frames, 1) * FRAME_SECONDS
        spans.append((gap.get("track"), float(gap["position_seconds"]), length))
    return spans


def _reconnects(reconnects: Any) -> list[float]:
    return [
        float(r["at_seconds"])
        for r in (reconnects if isinstance(reconnects, list) else ())
        if isinstance(r, Mapping) and isinstance(r.get("at_seconds"), int | float)
    ]


def _legend(ax: Any, gaps: bool, reconnects: bool) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = []
    if gaps:
        handles.append(Patch(color=GAP_COLOR, alpha=0.25, label="gap (lost audio)"))
    if reconnects:
        handles.append(Line2D([], [], color=RECONNECT_COLOR, linestyle="--", label="reconnect"))
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=8, ncols=2, frameon=False)


def _box(ax: Any, figure: Any) -> Box:
    extent = ax.get_window_extent()
    height = figure.bbox.height
    return (
        round(extent.x0),
        round(height - extent.y1),
        round(extent.x1),
        round(height - extent.y0),
    )


# ------------------------------------------------------------------ the command


class Progress:
    """``inspect 3/40 name.wav`` on stderr: redrawn in place on a terminal, one line per file
    otherwise (a log keeps every line)."""

    def __init__(self, total: int, stream: IO[str] | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self._shown = False

    def step(self, index: int, path: Path) -> None:
        done = index + 1
        if self.tty:
            width = 24
            filled = round(width * done / self.total)
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(f"\r\x1b[Kinspect [{bar}] {done}/{self.total} {path.name}")
            self._shown = True
        else:
            self.stream.write(f"inspect: {done}/{self.total} {path}\n")
        self.stream.flush()

    def clear(self) -> None:
        """Before other output on the same terminal."""
        if self.tty and self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False

    def close(self) -> None:
        self.clear()
        if self.tty:
            seconds = time.monotonic() - self.started
            self.stream.write(f"inspect: {self.total} files in {seconds:.1f} s\n")
            self.stream.flush()


def picture_path(wav: Path, png: str | None, many: bool) -> Path | None:
    """Where ``--png`` puts a file's picture: at the path given, or as ``<stem>.png`` in the
    folder given (always so for several files). ``--png`` with the record folder puts each
    picture beside its WAV, where the live page (``GET /calls``) looks for it."""
    if png is None:
        return None
    target = Path(png)
    if many or target.is_dir() or png.endswith(("/", "\\")):
        return target / f"{wav.stem}.png"
    return target


def inspect_files(
    paths: Sequence[Path],
    *,
    png: str | None = None,
    spectrogram: bool = False,
    progress: Progress | None = None,
) -> Iterator[tuple[Inspected, Path | None]]:
    """Each file's report (and picture, with ``png``), in order; every file is checked
    first, so a typo in the 40th name fails before any output."""
    if png is not None:
        load_matplotlib()
        if len(paths) > 1 and Path(png).exists() and not Path(png).is_dir():
            raise UsageError(f"--png {png}: with several files, --png takes a folder")
    for path in paths:
        check_wav(path)
    for index, path in enumerate(paths):
        if progress is not None:
            progress.step(index, path)
        target = picture_path(path, png, len(paths) > 1)
        recording = None
        if target is not None or not sidecar_path(path).is_file():
            recording = read_recording(path)
        item = inspect_file(path, recording)
        if target is not None:
            assert recording is not None
            draw_call(item, recording, target, spectrogram=spectrogram)
        yield item, target


def run(
    files: Sequence[str],
    *,
    as_json: bool = False,
    png: str | None = None,
    spectrogram: bool = False,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> int:
    """``mediastream inspect``: tables (or JSON) on ``out``, progress and notes on ``err``."""
    out = out or sys.stdout
    err = err or sys.stderr
    if spectrogram and png is None:
        raise UsageError("--spectrogram draws into the picture: add --png")
    paths = [Path(f) for f in files]
    progress = Progress(len(paths), err) if len(paths) > 1 else None
    results = []
    for index, (item, picture) in enumerate(
        inspect_files(paths, png=png, spectrogram=spectrogram, progress=progress)
    ):
        if as_json:
            results.append({**item.as_json(), **({"picture": str(picture)} if picture else {})})
            continue
        if progress is not None:
            progress.clear()
        out.write(("\n" if index else "") + format_table(item) + "\n")
        if picture is not None:
            out.write(f"  {'picture':<12} {picture}\n")
        out.flush()
    if progress is not None:
        progress.close()
    if as_json:
        document: Any = results[0] if len(results) == 1 else results
        out.write(json.dumps(json_safe(document), indent=2, allow_nan=False) + "\n")
    return 0
