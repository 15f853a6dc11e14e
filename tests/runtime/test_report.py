"""The quality report (``runtime/report.py``), checked against calls whose every figure is known.

The calls are built with ``plan_call`` and then damaged on purpose, frame by frame: drops, swaps,
duplicates, a frame that comes after its slot was given up, a reconnect, clipped samples and
digital silence. Levels are checked against numpy over the frames that were sent (the oracle);
frame counts against what was sent. Timing figures are exact where the clock is the test's
(``StreamFigures`` fed directly) and within a stated tolerance where it is real time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pytest

from mediastream.config import Config, PlaybackConfig, ServerLimits, StreamOptions
from mediastream.logs import escape
from mediastream.media.recording import recording_base
from mediastream.runtime.core import MediaCore
from mediastream.runtime.handler import AudioFrame, StreamHandler
from mediastream.runtime.level_pool import LevelPool
from mediastream.runtime.report import (
    CLIP_LEVEL,
    PENDING_FRAMES,
    REPORT_VERSION,
    StreamFigures,
)
from mediastream.session import FRAME_SECONDS, Audio
from mediastream.simulate import CallPlan, plan_call, synthesize_speechlike
from tests.runtime.helpers import feed, open_socket

RATE = 8000
FRAME = 160  # samples of a 20 ms frame at 8 kHz
# real-time figures (jitter, handler lag, playback heard) on a shared, loaded test machine:
# the event loop and asyncio.sleep may run this much late
TIMING_TOLERANCE_MS = 25.0


class Keeper(StreamHandler):
    """Keeps what ``on_stop`` saw of ``self.call.report``."""

    made: ClassVar[list[Keeper]] = []

    def __init__(self) -> None:
        self.report_at_stop: dict[str, Any] | None = None
        Keeper.made.append(self)

    async def on_stop(self) -> None:
        self.report_at_stop = self.call.report


@pytest.fixture(autouse=True)
def _fresh() -> None:
    Keeper.made = []


def make_core(record_dir: Path | None, handler: type[StreamHandler] = Keeper, **stream: Any):
    options = StreamOptions(record_dir, **stream)
    return MediaCore(handler, Config(stream=options, limits=ServerLimits(max_streams=100)))


def frames_by_key(plan: CallPlan) -> dict[tuple[str, int], str]:
    """Every media frame of the plan as text, by (track, chunk)."""
    out = {}
    for _, frame in plan.media_frames():
        media: Any = frame["media"]
        out[media["track"], int(media["chunk"])] = json.dumps(frame)
    return out


def level_oracle(pcm: np.ndarray, chunks: set[int]) -> dict[str, Any]:
    """The levels of the frames ``chunks`` of ``pcm``, computed the plain way."""
    frames = [pcm[(c - 1) * FRAME : c * FRAME].astype(np.int64) for c in sorted(chunks)]
    samples = np.concatenate(frames)
    mean_square = float(np.sum(samples * samples)) / len(samples)
    silent = sum(1 for f in frames if np.abs(f).max() <= StreamOptions.digital_silence_peak)
    return {
        "rms_dbfs": round(10 * math.log10(mean_square / 32768.0**2), 2),
        "peak": int(np.abs(samples).max()),
        "clipped": int(np.count_nonzero(np.abs(samples) >= 32767)),
        "digital_silence": round(silent / len(frames), 4),
        "speech": None,
    }


# ---------------------------------------------------------------- a damaged two-track call

CHUNKS = 150  # 3 s
INBOUND = synthesize_speechlike(3.0, RATE)
INBOUND[40 * FRAME : 50 * FRAME] = 0  # chunks 41-50: digital silence
INBOUND[9 * FRAME : 9 * FRAME + 20] = 32767  # chunk 10: 20 samples clipped high
INBOUND[10 * FRAME : 10 * FRAME + 5] = -32768  # chunk 11: 5 at the negative rail ...
INBOUND[10 * FRAME + 5 : 10 * FRAME + 8] = -32767  # ... and 3 just above it
OUTBOUND = (8000 * np.sin(2 * np.pi * 440 * np.arange(3 * RATE) / RATE)).astype(np.int16)

DROPPED = {"inbound": {30, 31, 32}, "outbound": {100}}  # never sent
SWAPPED = {("inbound", 20), ("inbound", 60), ("outbound", 120)}  # sent after the next chunk
DUPLICATED = {("inbound", 70), ("outbound", 5)}  # sent twice in a row
LATE = ("inbound", 130)  # held back until after chunk 140: its slot is given up by then
RECONNECT_AFTER = 75  # the first socket closes (no stop) after chunk 75 of both tracks


def send_order() -> list[tuple[str, int]]:
    """(track, chunk) in the order the damaged call sends them."""
    order: list[tuple[str, int]] = []
    for chunk in range(1, CHUNKS + 1):
        for track in ("inbound", "outbound"):
            key = (track, chunk)
            if chunk in DROPPED[track] or key == LATE:
                continue
            order.append(key)
            if key in DUPLICATED:
                order.append(key)
            if key == ("inbound", 140):
                order.append(LATE)
    for track, chunk in SWAPPED:  # each goes right after its successor
        order.remove((track, chunk))
        order.insert(order.index((track, chunk + 1)) + 1, (track, chunk))
    return order


async def test_a_damaged_two_track_call_gets_an_exact_report_in_its_sidecar(record_dir: Path):
    plan = plan_call(
        {"inbound": INBOUND, "outbound": OUTBOUND},
        codec="L16",
        sample_rate=RATE,
        tracks=("inbound", "outbound"),
        stream_id="damaged",
    )
    texts = frames_by_key(plan)
    order = send_order()
    split = order.index(("outbound", RECONNECT_AFTER)) + 1
    core = make_core(record_dir)
    await core.start()

    first, _ = await open_socket(core)
    assert await feed(core, first, json.dumps(plan.start_frame()))
    assert await feed(core, first, *(texts[key] for key in order[:split]))
    live = core.registry.live_snapshots()
    assert [(s["stream_id"], s["state"], s["tracks"]) for s in live] == [
        ("damaged", "live", ["inbound", "outbound"])
    ]
    await core.finish(first)  # closed without stop: suspended, kept for a reconnect
    assert [s["state"] for s in core.registry.live_snapshots()] == ["suspended"]

    second, _ = await open_socket(core)
    assert await feed(core, second, json.dumps(plan.start_frame()))
    assert await feed(core, second, *(texts[key] for key in order[split:]))
    assert not await feed(core, second, json.dumps(plan.stop_frame(9999)))
    await core.finish(second)
    assert core.registry.live_snapshots() == []

    received = {
        track: set(range(1, CHUNKS + 1)) - DROPPED[track] for track in ("inbound", "outbound")
    }
    sidecar = record_dir / "damaged.json"
    report = json.loads(sidecar.read_text())
    timing = report.pop("jitter_ms")
    assert report == {
        "version": REPORT_VERSION,
        "stream_id": "damaged",
        "call_control_id": "v3:sim-damaged",
        "codec": "L16",
        "sample_rate": RATE,
        "tracks": ["inbound", "outbound"],
        "duration_seconds": 3.0,
        "frames": {
            "received": len(order),  # every message, the duplicates and the late one too
            "lost": 3 + 1 + 1,  # 30-32 and 100 never came; 130 came after its slot
            "reordered": len(SWAPPED),
            "late": 1,
            "duplicated": len(DUPLICATED),
        },
        "gaps": [  # in the order they were given up
            {"track": "inbound", "position_seconds": 29 * 0.02, "frames": 3},
            {"track": "outbound", "position_seconds": 99 * 0.02, "frames": 1},
            {"track": "inbound", "position_seconds": 129 * 0.02, "frames": 1},
        ],
        "handler_lag_p99_ms": 0.0,  # the frames came faster than real time
        "levels": {
            "inbound": level_oracle(INBOUND, received["inbound"]),
            "outbound": level_oracle(OUTBOUND, received["outbound"]),
        },
        "playback": {"items": 0, "heard_ms": 0.0, "cleared": 0},
        "reconnects": [{"at_seconds": RECONNECT_AFTER * 0.02}],
        "recording": str(record_dir / "damaged.wav"),
    }
    levels = report["levels"]["inbound"]
    assert (levels["peak"], levels["clipped"]) == (32768, 28)  # the injected ones
    assert levels["digital_silence"] == round(10 / len(received["inbound"]), 4)
    # fed as fast as the test runs: a frame sent after its successor is 20 ms behind the
    # clock, the late one 10 frames (200 ms); every other frame is on or ahead of it
    assert timing["p50"] == 0.0
    assert 20.0 <= timing["p99"] <= 20.0 + TIMING_TOLERANCE_MS
    assert 200.0 <= timing["max"] <= 200.0 + TIMING_TOLERANCE_MS
    # the same report went to the handler (before on_stop) and into the recent ones
    assert Keeper.made[0].report_at_stop == json.loads(sidecar.read_text())
    [recent] = core.registry.recent_reports()
    assert recent.pop("sidecar") == str(sidecar)
    assert recent == json.loads(sidecar.read_text())
    names = sorted(p.name for p in record_dir.iterdir())
    assert names == ["damaged.json", "damaged.piece.json", "damaged.wav"]
    await core.shutdown()


def reorder_oracle(arrivals: list[int]) -> int:
    """Frames that came while a later one was held (nothing lost, shuffles within the
    reorder depth): what the reorder buffer calls reordered."""
    expected, held, reordered = 1, set(), 0
    for chunk in arrivals:
        if held and chunk < max(held):
            reordered += 1
        held.add(chunk)
        while expected in held:
            held.remove(expected)
            expected += 1
    return reordered


async def test_a_shuffled_call_with_random_drops_counts_every_frame(record_dir: Path):
    plan = plan_call(
        synthesize_speechlike(4.0, RATE),
        stream_id="shuffled",
        shuffle_window=4,
        seed=3,
    )
    arrivals = [int(frame["media"]["chunk"]) for _, frame in plan.media_frames()]  # type: ignore[index]
    assert arrivals != sorted(arrivals)
    core = make_core(record_dir)
    await core.start()
    connection, _ = await open_socket(core)
    await feed(core, connection, json.dumps(plan.start_frame()))
    await feed(core, connection, *(json.dumps(f) for _, f in plan.media_frames()))
    await feed(core, connection, json.dumps(plan.stop_frame(9999)))
    await core.finish(connection)
    frames = json.loads((record_dir / "shuffled.json").read_text())["frames"]
    assert frames == {
        "received": 200,
        "lost": 0,
        "reordered": reorder_oracle(arrivals),
        "late": 0,
        "duplicated": 0,
    }
    assert frames["reordered"] > 0

    dropped = plan_call(
        synthesize_speechlike(4.0, RATE), stream_id="dropping", drop_rate=0.05, seed=11
    )
    lost = sorted(dropped.dropped["inbound"])
    connection, _ = await open_socket(core)
    await feed(core, connection, json.dumps(dropped.start_frame()))
    await feed(core, connection, *(json.dumps(f) for _, f in dropped.media_frames()))
    await feed(core, connection, json.dumps(dropped.stop_frame(9999)))
    await core.finish(connection)
    report = json.loads((record_dir / "dropping.json").read_text())
    assert report["frames"]["received"] == 200 - len(lost)
    assert report["frames"]["lost"] == len(lost) > 0
    runs: list[list[int]] = []  # consecutive drops make one gap
    for chunk in lost:
        if runs and runs[-1][-1] == chunk - 1:
            runs[-1].append(chunk)
        else:
            runs.append([chunk])
    assert report["gaps"] == [
        {"track": "inbound", "position_seconds": round((r[0] - 1) * 0.02, 3), "frames": len(r)}
        for r in runs
    ]
    await core.shutdown()


# ---------------------------------------------------------------- timing, on the test's clock


def figures_for(**options: Any) -> StreamFigures:
    stream: Any = SimpleNamespace(log_id="unit")
    stream_options = StreamOptions(**options)
    pool = LevelPool(stream_options.digital_silence_peak, CLIP_LEVEL)
    return StreamFigures(stream, stream_options, pool)


def folded(figures: StreamFigures, track: str = "inbound") -> tuple[int, int]:
    """Frames folded of ``track``, and frames of the stream's pool waiting to be."""
    level = figures._levels[track]
    return level.pool.figures(level.row)[0], len(level.pool.records)


def audio(chunk: int, pcm: np.ndarray | None = None, *, missing: bool = False) -> Audio:
    pcm = np.full(FRAME, 1000, np.int16) if pcm is None else pcm
    return Audio("inbound", pcm, RATE, (chunk - 1) * FRAME, chunk, missing=missing)


def test_jitter_is_the_delay_past_the_earliest_frame_on_the_20_ms_clock():
    figures = figures_for()
    session = SimpleNamespace(transits=None)
    figures.follow(session, None)  # type: ignore[arg-type]

    def arrive(track: str, chunk: int, at: float) -> None:  # what Session._media appends
        session.transits[track].append(at - chunk * FRAME_SECONDS)

    delays_ms = {1: 3.0, 2: 0.0, 3: 0.0, 4: 7.5, 5: 0.0, 6: 130.0, 7: 0.0, 8: 0.0, 9: 42.0}
    for chunk, delay in delays_ms.items():  # chunk 2 sets the clock: 3 ms earlier than chunk 1
        arrive("inbound", chunk, 100.0 + chunk * 0.020 + delay / 1000)
    assert figures._jitter.summary()["max"] is None  # kept, not counted before a tick
    figures.tick()
    assert not session.transits["inbound"]  # taken
    jitter = figures._jitter.summary()
    # deviations 0 (the first sets the clock), 0, 0, 7.5, 0, 130, 0, 0, 42: p50 is the 5th
    # smallest, p99 the 9th; bins are 1 ms wide below 50 ms, 10 ms wide to 500 ms
    assert jitter == {"p50": 0.0, "p99": 130.0, "max": 130.0}
    assert figures._jitter.percentile(0.8) == 42.0  # the 8th of 9 (42 sits in [42, 43))
    assert figures._jitter.percentile(0.7) == 7.0  # 7.5 ms, rounded down to its 1 ms bin
    arrive("outbound", 5, 900.0)  # another track: its own clock
    arrive("outbound", 6, 900.021)
    figures.reconnected(0)  # a new socket: a new clock (its frames may be far later)
    assert session.transits is None  # the old socket is no longer timed
    session = SimpleNamespace(transits=None)
    figures.follow(session, None)  # type: ignore[arg-type]
    arrive("inbound", 10, 900.0)
    arrive("inbound", 11, 900.02)
    figures.tick()
    assert figures._jitter.maximum == pytest.approx(130.0)
    assert int(figures._jitter.counts.sum()) == 13
    assert figures._jitter.counts[1] == 1  # outbound's 1 ms


class LagMeter:
    """What a ``SocketMeter`` offers the report: buckets to count its lags into, and a sum."""

    lag_bounds = np.array([0.001, 0.01, 0.1])

    def __init__(self) -> None:
        self.lag_buckets = np.zeros(4, np.int64)
        self.lag_sum = 0.0

    @property
    def buckets(self) -> list[int]:
        return self.lag_buckets.tolist()


def test_handler_lag_runs_on_the_clock_of_the_first_handled_frame():
    figures = figures_for()
    clock = iter([10.000, 10.020, 10.090, 10.065, 10.080])  # when each on_audio returned

    def now() -> float:
        return next(clock)

    arrived = 10.000  # the first frame came in at 10.000: frame n is due at 10 + n × 20 ms
    figures.meter = meter = LagMeter()  # type: ignore[assignment]
    for chunk in range(1, 6):
        figures.handled(audio(chunk), arrived, _now=now)
    assert (figures.last_lag_ms, meter.buckets) == (None, [0, 0, 0, 0])  # at the next tick
    figures.tick()
    # lags: 0, 0, 50 (due 10.040, done 10.090), 5 (due 10.060), 0 (due 10.080)
    assert figures._lag.percentile(0.99) == 50.0
    assert figures._lag.percentile(0.50) == 0.0
    assert figures.last_lag_ms == pytest.approx(0.0)
    # timed once, for both: <= 1 ms three times, 5 ms (<= 10 ms), 50 ms (<= 100 ms)
    assert meter.buckets == [3, 1, 1, 0] and meter.lag_sum == pytest.approx(0.055)
    figures.tick()
    assert meter.buckets == [3, 1, 1, 0]  # counted once


def test_without_a_ticker_what_is_kept_is_counted_every_pending_frames():
    figures = figures_for()
    session = SimpleNamespace(transits=None)
    figures.follow(session, None)  # type: ignore[arg-type]
    for chunk in range(1, PENDING_FRAMES + 1):
        session.transits["inbound"].append(100.0)
        figures.handled(audio(chunk), 100.0 + chunk * 0.020, _now=lambda: 1e6)
    assert folded(figures) == (PENDING_FRAMES, 0)
    assert int(figures._jitter.counts.sum()) == int(figures._lag.counts.sum()) == PENDING_FRAMES
    assert not figures._lags and not session.transits["inbound"]


def test_levels_fold_at_each_tick_and_the_live_level_is_the_last_window():
    figures = figures_for()
    pool = figures._pool
    loud = np.full(FRAME, 16384, np.int16)  # -6.02 dBFS
    quiet = np.full(FRAME, -8, np.int16)  # A-law's quietest code: -72.25 dBFS
    for chunk in range(1, 4):
        figures.audio(audio(chunk, loud))
    level = figures._levels["inbound"]
    assert (level.window, *folded(figures)) == (None, 0, 3)  # not folded yet
    pool.tick()  # the core ticks the pool: every stream's levels at once
    assert (level.window, *folded(figures)) == (-6.02, 3, 0)
    for chunk in range(4, 7):
        figures.audio(audio(chunk, quiet))
    assert level.window == -6.02  # until the next tick
    pool.tick()  # the window: this tick's quiet frames (the loud ones were the last)
    assert level.window == round(20 * math.log10(8 / 32768), 2)
    figures.audio(audio(7, loud))
    figures._fold_levels()  # as a snapshot does: what came since the tick counts too
    assert level.window == round(10 * math.log10((3 * 64 + 16384**2) / 4 / 32768**2), 2)
    pool.tick()
    pool.tick()
    assert level.window is None  # no audio in the last window
    for chunk in range(8, 12):
        figures.audio(audio(chunk, quiet))
    figures.audio(audio(12, missing=True, pcm=np.zeros(FRAME, np.int16)))
    figures.audio(audio(13, loud[: FRAME // 2]))  # another size, in the same pool
    assert folded(figures) == (7, 5)
    summary = (figures._fold_levels(), level.summary())[1]
    assert summary == {
        "rms_dbfs": round(
            10 * math.log10((4.5 * FRAME * 16384**2 + 7 * FRAME * 64) / (11.5 * FRAME) / 32768**2),
            2,
        ),
        "peak": 16384,
        "clipped": 0,
        "digital_silence": round(7 / 12, 4),  # the lost frame is not audio received
        "speech": None,
    }
    assert figures.lost == 1


def test_a_released_stream_gives_its_rows_back_and_takes_no_more():
    figures = figures_for()
    pool = figures._pool
    assert pool is not None
    figures.audio(audio(1))
    figures.audio(Audio("outbound", np.ones(FRAME, np.int16), RATE, 0, 1))
    rows = [level.row for level in figures._levels.values()]
    assert len(rows) == 2
    figures.release()
    assert sorted(pool._free[-2:]) == sorted(rows)  # free again, zeroed
    assert all(pool.figures(row) == (0, 0, 0.0, 0, 0, 0) for row in rows)
    free = len(pool._free)
    figures.audio(audio(2))  # the socket is still read after the stream ended
    figures.handled(audio(3), 0.0, _now=lambda: 1.0)
    assert len(pool._free) == free and not figures._levels


async def test_the_core_ticks_every_streams_report_once_a_window(record_dir: Path):
    core = make_core(record_dir, level_window_seconds=0.1)  # a tick every 0.1 s
    await core.start()
    plan = plan_call(INBOUND, codec="L16", sample_rate=RATE, stream_id="ticked")
    texts = frames_by_key(plan)
    connection, _ = await open_socket(core)
    await feed(core, connection, json.dumps(plan.start_frame()))
    await feed(core, connection, *(texts["inbound", c] for c in range(1, 4)))
    [stream] = list(core.registry)
    assert stream.figures is not None
    level = stream.figures._levels["inbound"]
    assert folded(stream.figures) == (0, 3)
    for _ in range(100):  # the ticker folds them within a tick (0.1 s)
        if folded(stream.figures)[0]:
            break
        await asyncio.sleep(0.01)
    assert folded(stream.figures) == (3, 0)
    assert int(stream.figures._jitter.counts.sum()) == 3  # the arrivals are counted with them
    pcm = INBOUND[: 3 * FRAME].astype(np.float64)  # chunks 1-3, L16: exact
    assert level.window == round(10 * math.log10(np.dot(pcm, pcm) / len(pcm) / 32768**2), 2)
    await feed(core, connection, json.dumps(plan.stop_frame(9999)))
    await core.finish(connection)
    await core.shutdown()


# ---------------------------------------------------------------- the live API and its bounds


async def test_live_snapshots_and_recent_reports_are_bounded_and_newest_first(record_dir: Path):
    core = make_core(record_dir, recent_reports=2, report_max_entries=2)
    await core.start()
    for n in range(3):
        plan = plan_call(INBOUND, codec="L16", sample_rate=RATE, stream_id=f"call-{n}")
        texts = frames_by_key(plan)
        connection, _ = await open_socket(core)
        await feed(core, connection, json.dumps(plan.start_frame()))
        # four gaps of one frame (chunks 10, 20, 30, 40): only two are listed
        chunks = [c for c in range(1, 61) if c % 10 or c > 40]
        await feed(core, connection, *(texts["inbound", c] for c in chunks))
        [snapshot] = core.registry.live_snapshots()
        assert snapshot == {
            "stream_id": f"call-{n}",
            "state": "live",
            "codec": "L16",
            "tracks": ["inbound"],
            "age_seconds": snapshot["age_seconds"],
            "frames": 56,
            "lost": 4,
            "handler_lag_ms": 0.0,
            "playback": {"queued_ms": 0.0},
            # the last full window (chunks 30-55 without 30 and 40: 25 frames from 31 on)
            "levels": {"inbound": snapshot["levels"]["inbound"]},
        }
        assert -40.0 < snapshot["levels"]["inbound"] < 0.0
        json.dumps(snapshot)  # JSON-ready
        await feed(core, connection, json.dumps(plan.stop_frame(9999)))
        await core.finish(connection)
    recent = core.registry.recent_reports()
    assert [r["stream_id"] for r in recent] == ["call-2", "call-1"]
    assert recent[0]["frames"]["lost"] == 4 and len(recent[0]["gaps"]) == 2
    assert recent[0]["sidecar"] == str(record_dir / "call-2.json")
    recent[0].pop("sidecar")  # each call gives new dicts at the top (nested ones are shared)
    assert "sidecar" in core.registry.recent_reports()[0]
    await core.shutdown()


async def test_a_sidecar_that_cannot_be_written_is_logged_and_the_stream_ends_normally(
    record_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    from mediastream.runtime import registry

    def refuse(recording: Path, text: str) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(registry, "write_sidecar", refuse)
    caplog.set_level(logging.INFO, logger="mediastream")
    stream_id = "odd\nid\x1b"
    plan = plan_call(INBOUND[:8000], codec="L16", sample_rate=RATE, stream_id=stream_id)
    core = make_core(record_dir)
    await core.start()
    connection, _ = await open_socket(core)
    await feed(core, connection, json.dumps(plan.start_frame()))
    await feed(core, connection, *(json.dumps(f) for _, f in plan.media_frames()))
    await feed(core, connection, json.dumps(plan.stop_frame(9999)))
    await core.finish(connection)
    [failure] = [r for r in caplog.records if "cannot write its report" in r.getMessage()]
    assert failure.levelno == logging.ERROR
    assert escape(stream_id) in failure.getMessage() and stream_id not in failure.getMessage()
    assert Keeper.made[0].report_at_stop is not None  # the handler still got it
    [recent] = core.registry.recent_reports()
    assert recent["sidecar"] is None and recent["stream_id"] == stream_id
    # no sidecar, no temporary left behind (the piece description is a file of its own)
    piece = f"{recording_base(stream_id)}.piece.json"
    assert [p.name for p in record_dir.glob("*.json*")] == [piece]
    assert any("quality: jitter" in r.getMessage() for r in caplog.records)
    await core.shutdown()


async def test_reports_off_computes_nothing_but_the_live_view_still_lists_streams(
    record_dir: Path,
):
    plan = plan_call(INBOUND, codec="L16", sample_rate=RATE, stream_id="plain")
    core = make_core(record_dir, reports=False)
    await core.start()
    connection, _ = await open_socket(core)
    await feed(core, connection, json.dumps(plan.start_frame()))
    await feed(core, connection, *(json.dumps(f) for _, f in plan.media_frames()[:50]))
    [snapshot] = core.registry.live_snapshots()
    assert core.registry.get("plain").figures is None  # type: ignore[union-attr]
    assert (snapshot["frames"], snapshot["tracks"], snapshot["levels"]) == (50, ["inbound"], {})
    assert snapshot["handler_lag_ms"] is None
    await feed(core, connection, json.dumps(plan.stop_frame(9999)))
    await core.finish(connection)
    assert Keeper.made[0].report_at_stop is None
    assert core.registry.recent_reports() == []
    # no report; the piece description is written all the same (media/recording/piece.py)
    assert sorted(p.name for p in record_dir.iterdir()) == ["plain.piece.json", "plain.wav"]
    await core.shutdown()


async def test_without_a_recording_the_report_goes_to_the_handler_only():
    plan = plan_call(INBOUND[:8000], codec="L16", sample_rate=RATE, stream_id="unrecorded")
    core = make_core(None)
    await core.start()
    connection, _ = await open_socket(core)
    await feed(core, connection, json.dumps(plan.start_frame()))
    await feed(core, connection, *(json.dumps(f) for _, f in plan.media_frames()))
    await feed(core, connection, json.dumps(plan.stop_frame(9999)))
    await core.finish(connection)
    report = Keeper.made[0].report_at_stop
    assert report is not None and report["recording"] is None
    assert report["frames"]["received"] == 50 and report["duration_seconds"] == 1.0
    assert core.registry.recent_reports()[0]["sidecar"] is None
    await core.shutdown()


# ---------------------------------------------------------------- real time


class Player(Keeper):
    playback = PlaybackConfig(mode="rtp")


async def test_playback_figures_count_items_heard_and_cleared(record_dir: Path):
    plan = plan_call(INBOUND[:8000], codec="L16", sample_rate=RATE, stream_id="talker")
    core = make_core(record_dir, Player)
    await core.start()
    connection, transport = await open_socket(core)
    await feed(core, connection, json.dumps(plan.start_frame()))
    call = Keeper.made[0].call
    first = await call.play(np.zeros(800, np.int16), RATE)  # 100 ms
    for _ in range(200):  # the player sends its audio, then its mark
        if any('"mark"' in text for text in transport.sent):
            break
        await asyncio.sleep(0.01)
    echo = {"event": "mark", "stream_id": "talker", "mark": {"name": first.mark_name}}
    await feed(core, connection, json.dumps(echo))
    assert await first.finished() is True
    await call.play(np.zeros(16000, np.int16), RATE)  # 2 s, being sent
    await call.play(np.zeros(16000, np.int16), RATE)  # 2 s, queued behind it
    await asyncio.sleep(0.05)
    [snapshot] = core.registry.live_snapshots()
    assert snapshot["playback"] == {"queued_ms": 2000.0}
    await call.clear()  # barge-in: both cut short
    await feed(core, connection, json.dumps(plan.stop_frame(9999)))
    await core.finish(connection)
    playback = json.loads((record_dir / "talker.json").read_text())["playback"]
    assert (playback["items"], playback["cleared"]) == (3, 2)
    # heard: all of the first (its mark came back), and of the second what the player's
    # model of the far end had played when the clear came: at most the 50 ms since it was
    # sent (it starts once the first has played out, by the model)
    assert 100.0 <= playback["heard_ms"] <= 100.0 + 50.0 + TIMING_TOLERANCE_MS
    await core.shutdown()


class Stalls(Keeper):
    """Takes 150 ms over chunk 30: its socket is not read meanwhile, as in a server."""

    async def on_audio(self, frame: AudioFrame) -> None:
        if frame.chunk == 30:
            await asyncio.sleep(0.150)


async def test_real_time_jitter_and_handler_lag_within_the_stated_tolerance(record_dir: Path):
    plan = plan_call(INBOUND[: 60 * FRAME], codec="L16", sample_rate=RATE, stream_id="paced")
    core = make_core(record_dir, Stalls)
    await core.start()
    connection, _ = await open_socket(core)
    await feed(core, connection, json.dumps(plan.start_frame()))
    started = time.monotonic()
    for index, (_, frame) in enumerate(plan.media_frames()):  # on a 20 ms clock
        delay = started + index * 0.020 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await feed(core, connection, json.dumps(frame))
    await feed(core, connection, json.dumps(plan.stop_frame(9999)))
    await core.finish(connection)
    report = json.loads((record_dir / "paced.json").read_text())
    # chunk 30's on_audio returned 150 ms after it was due; chunks 31-37 waited for it and
    # came in 130, 110, ..., 10 ms behind the clock; the other 53 frames on time
    jitter = report["jitter_ms"]
    assert jitter["p50"] <= TIMING_TOLERANCE_MS / 5
    assert 130.0 - TIMING_TOLERANCE_MS <= jitter["max"] <= 130.0 + TIMING_TOLERANCE_MS
    assert jitter["p99"] <= jitter["max"]
    lag = report["handler_lag_p99_ms"]  # of 60 frames: the largest
    assert 150.0 <= lag <= 150.0 + TIMING_TOLERANCE_MS
    await core.shutdown()
