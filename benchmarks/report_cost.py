"""What the quality report costs per frame (``mediastream/runtime/report.py``).

Three figures, each the best of several rounds of CPU time (``process_time``, so that other
processes on a busy machine count less), the variants interleaved round by round:

* ``figures``: ``StreamFigures`` alone, fed as the runtime feeds it (a transit per media
  frame, ``handled`` per handled frame, a tick every 25 frames), for PCMU (160 samples a
  frame) and G722 (320);
* ``fold``: the levels of one 25-frame window through the level pool
  (``runtime/level_pool.py``: copies, then one compiled pass) against the numpy fold it
  replaced (kept here as the anchor; both give the same figures, checked);
* ``runtime``: ``StreamConnection.receive`` over pre-built frames of many streams (as
  ``runtime_frame.py``), with ``StreamOptions.reports`` on and off: the difference is the
  report's whole cost on the runtime path, hooks included.

    python benchmarks/report_cost.py [--streams 200] [--frames 250] [--rounds 7]

``--once on|off`` runs one runtime round only (reports on or off), for an instruction count:
``valgrind --tool=callgrind`` on the real interpreter (not a pyenv shim), twice with
different ``--frames``; the difference of the totals over the difference of the frames
(times streams) is the instructions per frame, imports and setup cancelled out. With
``--speech`` that round runs the default speech detector on every stream, fed a 5 s
speech-like loop (``--once off --speech`` against ``--once off``: the speech path's cost).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import time
from types import SimpleNamespace
from typing import Any

import numpy as np

from mediastream.config import SpeechOptions, StreamOptions
from mediastream.runtime.connection import StreamConnection
from mediastream.runtime.handler import StreamHandler
from mediastream.runtime.level_pool import LevelPool
from mediastream.runtime.registry import StreamRegistry
from mediastream.runtime.report import CLIP_LEVEL, StreamFigures
from mediastream.session import Audio
from mediastream.simulate import encode_frames, synthesize_speechlike


def figures_round(frame_samples: int, frames: int) -> float:
    """CPU µs per frame of ``StreamFigures`` alone, its ticks included (every 25 frames)."""
    rate = frame_samples * 50
    voice = synthesize_speechlike(frames / 50 + 1, rate)
    events = [
        Audio("inbound", voice[i * frame_samples : (i + 1) * frame_samples].copy(), rate, i)
        for i in range(frames)
    ]
    stream: Any = SimpleNamespace(log_id="bench")
    pool = LevelPool(StreamOptions().digital_silence_peak, CLIP_LEVEL)
    figures = StreamFigures(stream, StreamOptions(), pool)
    session: Any = SimpleNamespace(transits=None)
    figures.follow(session, None)
    transits = session.transits["inbound"]
    figures.audio(events[0])  # the track's state exists, as after a stream's first frame
    gc.collect()
    started = time.process_time()
    for key, event in enumerate(events, start=2):
        transits.append(0.001 * (key % 7))  # what the session adds: arrival less key × 20 ms
        figures.handled(event, 0.0)
        if key % 25 == 0:  # the core's ticker
            pool.tick()
            figures.tick()
    return (time.process_time() - started) / frames * 1e6


def numpy_fold(block: np.ndarray, frames: int, size: int, silence: int, clip: int) -> tuple:
    """The level fold as numpy did it before ``media/levels.py`` (the anchor)."""
    magnitudes = np.abs(block).view(np.uint16)
    peaks = magnitudes.reshape(frames, size).max(axis=1).tolist()
    floats = block.astype(np.float64)
    sumsq = float(np.dot(floats, floats))
    peak = max(peaks)
    silent = len([p for p in peaks if p <= silence])
    clipped = int(np.count_nonzero(magnitudes >= clip)) if peak >= clip else 0
    return sumsq, peak, silent, clipped


def pool_fold(pool: LevelPool, row: int, frames: list[np.ndarray]) -> tuple:
    """The same window through the level pool: copied in as the frame path does, folded."""
    for frame in frames:
        pool.add(row, frame)
    pool.fold()
    return pool.figures(row)


def fold_round(size: int, calls: int = 2000) -> dict[str, float]:
    """µs per 25-frame window of the level fold: the pool (copies and one compiled pass)
    against numpy's fold of the same window; the same figures, checked."""
    rng = np.random.default_rng(size)
    block = rng.integers(-20000, 20000, 25 * size, dtype=np.int16)
    frames = [block[i * size : (i + 1) * size] for i in range(25)]
    pool = LevelPool(8, 32767)
    row = pool.row()
    sumsq, peak, silent, clipped = numpy_fold(block, 25, size, 8, 32767)
    assert pool_fold(pool, row, frames) == (25, 25 * size, sumsq, peak, clipped, silent)
    out = {}
    rounds = (("fold numpy", lambda: numpy_fold(block, 25, size, 8, 32767)),
              ("fold pool", lambda: pool_fold(pool, row, frames)))  # fmt: skip
    for name, fold in rounds:
        started = time.process_time()
        for _ in range(calls):
            fold()
        out[name] = (time.process_time() - started) / calls * 1e6
    return out


class _NoTransport:
    async def send(self, text: str) -> None:
        del text

    async def close(self, code: int = 1000, reason: str = "") -> None:
        del code, reason


def _texts(stream_id: str, count: int, payloads: list[str]) -> list[str]:
    fmt = {"encoding": "PCMU", "sample_rate": 8000}
    out = [json.dumps({"event": "start", "stream_id": stream_id, "start": {"media_format": fmt}})]
    for chunk in range(1, count + 1):
        media = {"track": "inbound", "chunk": str(chunk), "timestamp": str((chunk - 1) * 20)}
        media["payload"] = payloads[(chunk - 1) % len(payloads)]
        out.append(json.dumps({"event": "media", "stream_id": stream_id, "media": media}))
    return out


async def runtime_round(
    streams: int, frames: int, reports: bool, payloads: list[str], speech: bool = False
) -> float:
    """CPU µs per frame of ``StreamConnection.receive``, no recording (``speech``: the default
    detector on the caller's track, as ``serve --speech webrtc``)."""
    options = StreamOptions(reports=reports, speech=SpeechOptions() if speech else None)
    registry = StreamRegistry(StreamHandler, options)
    texts = [_texts(f"s{n}", frames, payloads) for n in range(streams)]
    connections = []
    for n in range(streams):
        connection = StreamConnection(registry, _NoTransport())
        await connection.receive(texts[n][0])
        connections.append(connection)
    gc.collect()
    started = time.process_time()
    for k in range(1, frames + 1):
        for n, connection in enumerate(connections):
            await connection.receive(texts[n][k])
    elapsed = time.process_time() - started
    for connection in connections:
        await connection.finish()
    return elapsed / (streams * frames) * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200, help="streams (200)")
    parser.add_argument("--frames", type=int, default=250, help="frames per stream (250)")
    parser.add_argument("--rounds", type=int, default=7, help="best of this many (7)")
    parser.add_argument("--once", choices=("on", "off"), help="one runtime round (callgrind)")
    parser.add_argument(
        "--speech",
        action="store_true",
        help="with --once: speech detection on (webrtc), fed a 5 s speech-like loop",
    )
    args = parser.parse_args()
    from mediastream import codecs

    voice = synthesize_speechlike(0.02, 8000)
    payloads = [base64.b64encode(codecs.encoder("PCMU").encode(voice[:160])).decode()]
    if args.once is not None:
        if args.speech:  # a detector fed one repeated frame would decide the same every time
            loop = synthesize_speechlike(5.0, 8000)
            payloads = [base64.b64encode(b).decode() for b in encode_frames(loop, "PCMU", 8000)]
        on = args.once == "on"
        cost = await runtime_round(args.streams, args.frames, on, payloads, args.speech)
        speech = " speech=webrtc" if args.speech else ""
        print(f"runtime reports={args.once}{speech} {cost:6.2f} µs/frame (once)")
        return
    costs: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for samples, name in ((160, "figures PCMU"), (320, "figures G722")):
            costs.setdefault(name, []).append(figures_round(samples, 5000))
            for fold, cost in fold_round(samples).items():  # per window, not per frame
                costs.setdefault(f"{fold} {name.split()[1]}", []).append(cost)
        for reports in (True, False):
            cost = await runtime_round(args.streams, args.frames, reports, payloads)
            costs.setdefault(f"runtime reports={'on' if reports else 'off'}", []).append(cost)
    for name, values in costs.items():
        unit = "window of 25 frames" if name.startswith("fold") else "frame"
        print(f"{name:22} {min(values):6.2f} µs/{unit} (best of {args.rounds})")
    on, off = min(costs["runtime reports=on"]), min(costs["runtime reports=off"])
    print(f"{'runtime difference':22} {on - off:6.2f} µs/frame ({(on - off) / off:.1%})")


if __name__ == "__main__":
    asyncio.run(main())
