"""Speech detectors: accuracy on a labelled corpus, and CPU cost per stream.

    python benchmarks/vad.py [--rates 8000 16000] [--streams 1 16 128 512] [--seconds 3]
                             [--repeat 3] [--json]

Accuracy: every detector (webrtc modes 0-3, silero at thresholds 0.3 / 0.5 / 0.7) on the
espeak-ng corpus of ``benchmarks/vad_corpus.py`` (its docstring says how the labels and the
noise are made, and how latencies are measured), clean and with pink noise at 20, 10 and
5 dB SNR, at 8 and 16 kHz: frame-level precision, recall and F1 of the raw per-window
decisions at the threshold (no hysteresis: the segmenter's ``min_speech_ms`` /
``min_silence_ms`` come after), the median and 90th percentile of onset and offset latency,
and missed segments. Plus the fraction of windows called speech on 30 s of pink noise alone
(at the 10 dB clip's noise level, -36 dBFS). The clip is 63 % speech: a detector that always
says speech scores P 0.63, R 1, F1 0.78, the floor to read the F1 column against.

Cost: N streams (1, 16, 128, 512), each fed its own stretch of the 20 dB clip in 20 ms
frames, all streams frame by frame as a server would; the bank runs every 32 ms of audio
(``bank_interval_ms``), every detector is taken from after each frame. CPU µs of this
process (``time.process_time``: steadier than wall time on a shared machine) per 20 ms of audio
per stream, best of ``--repeat`` after a warm-up pass: the Silero bank, one ``SileroDetector``
per stream (sharing the one session: the difference is batching only), and webrtc. For the
bank also its longest run in wall time, which is how long it blocks the event loop at that N.

Targets (reported PASS/FAIL, never a test): the bank at least 3x cheaper per stream than one
by one at 128 streams; the default detector's (webrtc, ``webrtc_mode``) F1 at least 0.9 at
20 dB SNR. Record the output in benchmarks/RESULTS.md with the machine, date and command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.vad_corpus import SNRS, Clip, clip, espeak_missing, noise_only, score
from mediastream.config import SpeechOptions
from mediastream.voice.detect import (
    SILERO_CONTEXT,
    SILERO_WINDOW,
    SileroBank,
    SileroDetector,
    TrackDetector,
    WebRtcDetector,
    load_model,
)

THRESHOLDS = (0.3, 0.5, 0.7)
# the bank, the bank cut into runs of at most 16 streams, one SileroDetector each, webrtc
KINDS = ("bank", "bank/16", "silero", "webrtc")
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
FRAME_MS = 20


def probabilities(detector: TrackDetector, pcm: np.ndarray) -> list[float]:
    """The detector's probabilities over ``pcm``, fed in 20 ms frames."""
    frame = detector.sample_rate * FRAME_MS // 1000
    out: list[float] = []
    for start in range(0, len(pcm), frame):
        detector.push(pcm[start : start + frame])
        out += detector.take()
    return out


def _pct(values: tuple[float, ...], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def accuracy(rates: list[int]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for rate in rates:
        noise = noise_only(rate, 30.0)
        for snr in SNRS:
            c: Clip = clip(rate, snr)
            for mode in range(4):
                probs = probabilities(WebRtcDetector(mode, rate), c.pcm)
                noise_probs = probabilities(WebRtcDetector(mode, rate), noise)
                rows.append(_scored(f"webrtc mode {mode}", 0.5, probs, rate // 50, c, noise_probs))
            silero = SileroDetector(rate)
            probs = probabilities(silero, c.pcm)
            noise_probs = probabilities(SileroDetector(rate), noise)
            for threshold in THRESHOLDS:
                rows.append(
                    _scored(f"silero {threshold}", threshold, probs, silero.window, c, noise_probs)
                )
    return rows


def _scored(
    name: str, threshold: float, probs: list[float], window: int, c: Clip, noise: list[float]
) -> dict[str, Any]:
    s = score(probs, window, c, threshold)
    return {
        "detector": name,
        "rate": c.rate,
        "snr_db": c.snr_db,
        "precision": s.precision,
        "recall": s.recall,
        "f1": s.f1,
        "onset_p50_ms": _pct(s.onsets_ms, 50),
        "onset_p90_ms": _pct(s.onsets_ms, 90),
        "offset_p50_ms": _pct(s.offsets_ms, 50),
        "offset_p90_ms": _pct(s.offsets_ms, 90),
        "missed": s.missed,
        "segments": s.segments,
        "noise_speech": float(np.mean(np.asarray(noise) >= threshold)) if noise else 0.0,
    }


def _feeds(rate: int, streams: int, seconds: float) -> np.ndarray:
    """[streams, samples]: each stream its own stretch of the 20 dB clip (wrapping)."""
    pcm = clip(rate, 20.0).pcm
    n = int(rate * seconds)
    step = max(1, (len(pcm) - n) // max(1, streams))
    rows = [np.take(pcm, np.arange(i * step, i * step + n), mode="wrap") for i in range(streams)]
    return np.stack(rows)


def _drive(kind: str, rate: int, feeds: np.ndarray) -> tuple[float, float, float, float]:
    """CPU seconds (this process) and wall seconds to run ``feeds`` through ``kind``; for a
    bank its longest and its mean ``session.run`` (wall seconds: how long the loop is held)."""
    streams, samples = feeds.shape
    frame = rate * FRAME_MS // 1000
    bank: SileroBank | None = None
    if kind.startswith("bank"):
        max_batch = int(kind.split("/")[1]) if "/" in kind else None
        bank = SileroBank(SpeechOptions(detector="silero"), rate, max_batch=max_batch)
        detectors: list[TrackDetector] = [bank.detector() for _ in range(streams)]
    elif kind == "silero":
        detectors = [SileroDetector(rate) for _ in range(streams)]
    else:
        detectors = [WebRtcDetector(SpeechOptions().webrtc_mode, rate) for _ in range(streams)]
    interval = SpeechOptions().bank_interval_ms
    next_run = interval
    in_runs = 0.0
    frames = [[feeds[i, s : s + frame] for i in range(streams)] for s in range(0, samples, frame)]
    c0, t0 = time.process_time(), time.perf_counter()
    for k, row in enumerate(frames):
        for detector, pcm in zip(detectors, row, strict=True):
            detector.push(pcm)
        if bank is not None and (k + 1) * FRAME_MS >= next_run:
            next_run += interval
            r0 = time.perf_counter()
            bank.run()
            in_runs += time.perf_counter() - r0
        for detector in detectors:
            detector.take()
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    for detector in detectors:
        detector.close()
    if bank is None:
        return cpu, wall, 0.0, 0.0
    return cpu, wall, bank.longest_run, in_runs / max(1, bank.runs)


def cost(rates: list[int], counts: list[int], seconds: float, repeat: int) -> list[dict]:
    """Each kind in turn within each repeat (a drifting load hits them all alike); the best
    CPU time of each, and the shortest of its longest runs (the least disturbed)."""
    rows = []
    for rate in rates:
        for streams in counts:
            feeds = _feeds(rate, streams, seconds)
            frames = streams * (feeds.shape[1] // (rate * FRAME_MS // 1000))
            for kind in KINDS:
                _drive(kind, rate, feeds[:, : rate // 5])  # warm: first runs of each shape
            got: dict[str, list[tuple[float, float, float, float]]] = {k: [] for k in KINDS}
            for _ in range(repeat):
                for kind in KINDS:
                    got[kind].append(_drive(kind, rate, feeds))
            for kind in KINDS:
                bank = kind.startswith("bank")
                rows.append(
                    {
                        "kind": kind,
                        "rate": rate,
                        "streams": streams,
                        "us_per_20ms": min(g[0] for g in got[kind]) / frames * 1e6,
                        "wall_us_per_20ms": min(g[1] for g in got[kind]) / frames * 1e6,
                        "longest_run_ms": min(g[2] for g in got[kind]) * 1e3 if bank else None,
                        "mean_run_ms": min(g[3] for g in got[kind]) * 1e3 if bank else None,
                    }
                )
    return rows


def batch_curve(rates: list[int], repeat: int) -> list[dict]:
    """The model alone: CPU µs per window per stream of one ``session.run`` at batch size B
    (real audio, state carried), so that the bank's gain and ``max_batch`` can be read off."""
    session = load_model()
    rows = []
    for rate in rates:
        window, context = SILERO_WINDOW[rate], SILERO_CONTEXT[rate]
        pcm = clip(rate, 20.0).pcm.astype(np.float32) / 32768
        sr = np.array(rate, dtype=np.int64)
        for b in BATCHES:
            runs = max(8, 1024 // b)
            starts = (np.arange(b) * 997) % (len(pcm) - (runs + 1) * window - context)
            inputs = [
                np.stack([pcm[s + k * window : s + (k + 1) * window + context] for s in starts])
                for k in range(runs)
            ]
            best = float("inf")
            for _ in range(repeat):
                state = np.zeros((2, b, 128), dtype=np.float32)
                c0 = time.process_time()
                for x in inputs:
                    _, state = session.run(None, {"input": x, "state": state, "sr": sr})
                best = min(best, time.process_time() - c0)
            rows.append({"rate": rate, "batch": b, "us_per_window": best / runs / b * 1e6})
    return rows


def _f(x: float | None, spec: str) -> str:
    return "-" if x is None or x != x else format(x, spec)


def report(acc: list[dict], costs: list[dict], curve: list[dict]) -> list[str]:
    lines = [
        "accuracy (raw per-window decisions at the threshold; latencies at the end of the window"
        " that decides)",
        f"{'detector':<16} {'rate':>5} {'SNR':>5} {'P':>5} {'R':>5} {'F1':>5}"
        f" {'onset p50/p90 ms':>17} {'offset p50/p90 ms':>18} {'missed':>7} {'noise':>6}",
    ]
    for r in acc:
        snr = "clean" if r["snr_db"] is None else f"{r['snr_db']:.0f}dB"
        lines.append(
            f"{r['detector']:<16} {r['rate']:>5} {snr:>5} {r['precision']:5.3f}"
            f" {r['recall']:5.3f} {r['f1']:5.3f}"
            f" {_f(r['onset_p50_ms'], '7.0f')}/{_f(r['onset_p90_ms'], '<9.0f')}"
            f" {_f(r['offset_p50_ms'], '8.0f')}/{_f(r['offset_p90_ms'], '<9.0f')}"
            f" {r['missed']:>3}/{r['segments']:<3} {r['noise_speech']:6.3f}"
        )
    if not acc:
        lines = []
    lines += [
        "",
        "cost (CPU µs per 20 ms of audio per stream, best of the repeats; bank: the mean and"
        " longest session.run in wall ms, which is how long it holds the event loop)",
    ]
    lines.append(
        f"{'rate':>5} {'streams':>7} {'bank':>7} {'bank/16':>7} {'1x1':>7} {'webrtc':>7}"
        f" {'1x1/bank':>8} {'1x1/bank16':>10} {'run ms mean/max':>16} {'(bank/16)':>12}"
    )
    by = {(c["kind"], c["rate"], c["streams"]): c for c in costs}
    for rate, streams in sorted({(c["rate"], c["streams"]) for c in costs}):
        bank, b16, one, web = (by[(k, rate, streams)] for k in KINDS)
        lines.append(
            f"{rate:>5} {streams:>7} {bank['us_per_20ms']:7.1f} {b16['us_per_20ms']:7.1f}"
            f" {one['us_per_20ms']:7.1f} {web['us_per_20ms']:7.1f}"
            f" {one['us_per_20ms'] / bank['us_per_20ms']:7.1f}x"
            f" {one['us_per_20ms'] / b16['us_per_20ms']:9.1f}x"
            f" {bank['mean_run_ms']:7.2f}/{bank['longest_run_ms']:<8.2f}"
            f" {b16['mean_run_ms']:5.2f}/{b16['longest_run_ms']:<6.2f}"
        )
    if curve:
        lines += ["", "the model alone: CPU µs per window per stream at batch size B"]
        rates = sorted({r["rate"] for r in curve})
        lines.append(f"{'B':>5} " + " ".join(f"{r:>7}" for r in rates))
        at = {(r["rate"], r["batch"]): r["us_per_window"] for r in curve}
        for b in BATCHES:
            lines.append(f"{b:>5} " + " ".join(f"{at[(r, b)]:7.1f}" for r in rates))
    lines.append("")
    mode = SpeechOptions().webrtc_mode
    for rate in sorted({c["rate"] for c in costs}):
        b, o = by.get(("bank", rate, 128)), by.get(("silero", rate, 128))
        if b and o:
            ratio = o["us_per_20ms"] / b["us_per_20ms"]
            verdict = "PASS" if ratio >= 3 else "FAIL"
            lines.append(f"{verdict} {rate} Hz bank at 128 streams: {ratio:.1f}x (target >= 3x)")
    for r in acc:
        if r["detector"] == f"webrtc mode {mode}" and r["snr_db"] == 20.0:
            verdict = "PASS" if r["f1"] >= 0.9 else "FAIL"
            lines.append(
                f"{verdict} {r['rate']} Hz webrtc mode {mode} F1 at 20 dB: {r['f1']:.3f}"
                " (target >= 0.9)"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=int, nargs="+", default=[8000, 16000])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 16, 128, 512])
    parser.add_argument("--seconds", type=float, default=3.0, help="audio per stream (cost)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    reason = espeak_missing()
    if reason:
        sys.exit(f"vad.py: {reason}")
    load = os.getloadavg()[0]  # before: the run itself adds one
    t0 = time.perf_counter()
    load_model()
    load_ms = (time.perf_counter() - t0) * 1e3
    acc = [] if args.skip_accuracy else accuracy(args.rates)
    costs = [] if args.skip_cost else cost(args.rates, args.streams, args.seconds, args.repeat)
    curve = [] if args.skip_cost else batch_curve(args.rates, args.repeat)
    if args.json:
        out = {"accuracy": acc, "cost": costs, "batch_curve": curve, "load_ms": load_ms}
        print(json.dumps(out, indent=1))
        return
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs,"
        f" Python {platform.python_version()}, onnxruntime {onnxruntime.__version__},"
        f" load average {load:.2f} at the start; model load {load_ms:.0f} ms"
    )
    print("\n".join(report(acc, costs, curve)))


if __name__ == "__main__":
    main()
