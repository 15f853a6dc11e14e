"""Codec throughput harness: ours against every installed anchor, measured in one run.

Each case is timed in short rounds, interleaved with its anchors, and the median round is kept,
so a noisy machine shifts both sides alike; the figure to read is the ratio, not the absolute.
Two shapes are measured: one 20 ms frame per call (what a live stream does) and a long buffer
(bulk throughput, what a batch job does); for G.722 also one frame of each of 256 streams
(``G722DecoderBank.decode_many`` against the G722 package decoding them one by one).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from mediastream import codecs
from mediastream.errors import UsageError

FRAME_MS = 20
BULK_SECONDS = 60
ALL_CODECS = ("PCMU", "PCMA", "G722")
BANK = 256  # streams decoded together by ``decode_many``


@dataclass
class Result:
    codec: str
    direction: str  # decode | encode
    shape: str  # frame (one 20 ms frame) | bulk (60 s buffer) | 256x (a frame of 256 streams)
    implementation: str
    us_per_frame: float  # µs per 20 ms of audio
    realtime_factor: float  # seconds of audio per second of one core
    ratio_to_ours: float | None = None  # this time / our time (>1: ours is faster)


def _time_per_call(fn: Callable[[], object], seconds: float, rounds: int = 5) -> float:
    """Median seconds per call over ``rounds`` rounds of about ``seconds / rounds`` each."""
    fn()  # warm up (and compile, where a kernel is compiled)
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < 0.02:
        fn()
        calls += 1
    per_call = (time.perf_counter() - start) / calls
    batch = max(1, int(seconds / rounds / per_call))
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter() - t0) / batch)
    return statistics.median(samples)


def _audioop() -> object | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import audioop  # stdlib below 3.13, audioop-lts above
        except ImportError:
            return None
    return audioop


def _speech(rate: int, seconds: float) -> np.ndarray:
    rng = np.random.default_rng(1)
    t = np.arange(int(rate * seconds)) / rate
    signal = 8000 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 1.5 * t) ** 2
    return (signal + rng.normal(0, 300, len(t))).clip(-32768, 32767).astype(np.int16)


Case = tuple[str, str, str, Callable[[], object], int]  # direction, shape, impl, fn, frames


def _g711_cases(codec: str) -> list[Case]:
    rate = 8000
    step = rate * FRAME_MS // 1000
    frame_pcm = _speech(rate, FRAME_MS / 1000)
    bulk_pcm = _speech(rate, BULK_SECONDS)
    bulk_frames = len(bulk_pcm) // step
    enc, dec = codecs.encoder(codec), codecs.decoder(codec)
    frame_code, bulk_code = enc.encode(frame_pcm), enc.encode(bulk_pcm)
    cases: list[Case] = [
        ("decode", "frame", "mediastream", lambda: dec.decode(frame_code), 1),
        ("decode", "bulk", "mediastream", lambda: dec.decode(bulk_code), bulk_frames),
        ("encode", "frame", "mediastream", lambda: enc.encode(frame_pcm), 1),
        ("encode", "bulk", "mediastream", lambda: enc.encode(bulk_pcm), bulk_frames),
    ]
    audioop = _audioop()
    if audioop is not None:
        to_lin = audioop.ulaw2lin if codec == "PCMU" else audioop.alaw2lin  # type: ignore[attr-defined]
        to_log = audioop.lin2ulaw if codec == "PCMU" else audioop.lin2alaw  # type: ignore[attr-defined]
        frame_bytes, bulk_bytes = frame_pcm.tobytes(), bulk_pcm.tobytes()
        cases += [
            ("decode", "frame", "audioop", lambda: to_lin(frame_code, 2), 1),
            ("decode", "bulk", "audioop", lambda: to_lin(bulk_code, 2), bulk_frames),
            ("encode", "frame", "audioop", lambda: to_log(frame_bytes, 2), 1),
            ("encode", "bulk", "audioop", lambda: to_log(bulk_bytes, 2), bulk_frames),
        ]
    return cases


def _g722_cases() -> list[Case]:
    rate = 16000
    frame_pcm = _speech(rate, FRAME_MS / 1000)
    enc, dec = codecs.encoder("G722"), codecs.decoder("G722")
    frame_code = enc.encode(frame_pcm)
    cases: list[Case] = [
        ("decode", "frame", "mediastream", lambda: dec.decode(frame_code), 1),
        ("encode", "frame", "mediastream", lambda: enc.encode(frame_pcm), 1),
    ]
    from mediastream.codecs.g722 import G722DecoderBank

    rng = np.random.default_rng(2)
    many = [bytes(rng.integers(0, 256, len(frame_code), dtype=np.uint8)) for _ in range(BANK)]
    bank = G722DecoderBank(BANK)
    cases.append(("decode", f"{BANK}x", "mediastream", lambda: bank.decode_many(many), BANK))
    if importlib.util.find_spec("G722") is not None:
        import G722

        lib_dec, lib_enc = G722.G722(rate, 64000), G722.G722(rate, 64000)
        libs = [G722.G722(rate, 64000) for _ in range(BANK)]

        def lib_many() -> object:
            return [lib.decode(p) for lib, p in zip(libs, many, strict=True)]

        cases += [
            ("decode", "frame", "G722 package", lambda: lib_dec.decode(frame_code), 1),
            ("encode", "frame", "G722 package", lambda: lib_enc.encode(frame_pcm), 1),
            ("decode", f"{BANK}x", "G722 package", lib_many, BANK),
        ]
    if importlib.util.find_spec("av") is not None:
        cases += _pyav_g722_cases(frame_code, frame_pcm)
    return cases


def _pyav_g722_cases(frame_code: bytes, frame_pcm: np.ndarray) -> list[Case]:
    import av

    dec = av.CodecContext.create("g722", "r")
    dec.sample_rate, dec.layout, dec.format = 16000, "mono", "s16"
    enc = av.CodecContext.create("g722", "w")
    enc.sample_rate, enc.layout, enc.format = 16000, "mono", "s16"
    frame = av.AudioFrame.from_ndarray(frame_pcm[None, :], format="s16", layout="mono")
    frame.sample_rate = 16000

    def decode() -> object:
        return [f.to_ndarray() for f in dec.decode(av.Packet(frame_code))]

    def encode() -> object:
        return [bytes(p) for p in enc.encode(frame)]

    return [
        ("decode", "frame", "PyAV/FFmpeg", decode, 1),
        ("encode", "frame", "PyAV/FFmpeg", encode, 1),
    ]


def measure(codec_names: list[str], seconds: float, progress: bool = True) -> list[Result]:
    results: list[Result] = []
    for codec in codec_names:
        cases = _g722_cases() if codec == "G722" else _g711_cases(codec)
        ours: dict[tuple[str, str], float] = {}
        for direction, shape, impl, fn, frames in cases:
            if progress:
                print(f"  {codec} {direction} {shape}: {impl} ...", file=sys.stderr, flush=True)
            per_frame = _time_per_call(fn, seconds) / frames
            if impl == "mediastream":
                ours[(direction, shape)] = per_frame
            mine = ours.get((direction, shape))
            results.append(
                Result(
                    codec, direction, shape, impl,
                    us_per_frame=per_frame * 1e6,
                    realtime_factor=(FRAME_MS / 1000) / per_frame,
                    ratio_to_ours=None if mine is None else per_frame / mine,
                )
            )  # fmt: skip
    return results


def format_table(results: list[Result]) -> str:
    header = (
        f"{'codec':6} {'dir':6} {'shape':5} {'implementation':15} "
        f"{'µs/20ms':>9} {'x realtime':>11} {'anchor/ours':>11}"
    )
    lines = [header, "-" * len(header)]
    order = {"decode": 0, "encode": 1, "frame": 0, "bulk": 1, f"{BANK}x": 2}
    rows = sorted(
        results,
        key=lambda r: (
            r.codec,
            order[r.direction],
            order[r.shape],
            r.implementation != "mediastream",
        ),
    )
    for r in rows:
        ratio = "" if r.implementation == "mediastream" else f"{r.ratio_to_ours:.2f}"
        lines.append(
            f"{r.codec:6} {r.direction:6} {r.shape:5} {r.implementation:15} "
            f"{r.us_per_frame:9.3f} {r.realtime_factor:11,.0f} {ratio:>11}"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    names = [codecs.normalize_encoding(c) for c in (args.codec or ALL_CODECS)]
    unknown = [n for n in names if n not in ALL_CODECS]
    if unknown:
        choices = ", ".join(ALL_CODECS)
        raise UsageError(f"--codec: cannot benchmark {', '.join(unknown)}; choose from {choices}")
    if not args.seconds > 0:
        raise UsageError(f"--seconds must be more than 0, not {args.seconds:g}")
    results = measure(names, args.seconds, progress=not args.json)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(format_table(results))
        print("anchor/ours > 1 means ours takes less time than the anchor.")
    return 0
