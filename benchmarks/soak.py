"""Soak: N real-time calls against ``mediastream serve --record-dir``, continuously replaced.

A capacity probe (``server_load.py``) says how many streams one core carries for seconds; a
soak says whether the server stays the same for half an hour of calls coming and going: that
memory levels off (no per-call leak), that no recording is ever inexact, that lag does not
creep. It starts ``mediastream serve --port 0 --record-dir DIR`` as a subprocess and runs N
concurrent simulated calls in one asyncio client process (websockets): each call sends
``connected``, ``start``, 20 ms media frames paced in real time (due times on a fixed grid,
so a late frame does not push the next one), and after a random 5-60 s ``stop``; a new call
with a fresh stream id then takes its slot. Every call carries its own known audio: seeded
random codec bytes (any byte string is valid G.711/G.722, and L16 is raw samples), so the
expected recording is regenerated from the seed and decoded independently of mediastream
(audioop for G.711, the ``G722`` package for G.722, numpy for L16).

Every 10 s the server's VmRSS is read from /proc. After ``--seconds`` no call is started, the
live ones finish, the server gets SIGTERM (it drains and finalizes every recording), and every
recording is compared sample for sample with what was sent (length included). Recordings are
checked during the run too, a few seconds after their call ended, by a verifier process, and
deleted once exact (``--keep-recordings`` keeps them), so disk use stays bounded; any that
did not match then is checked again after the server exited.

    python benchmarks/soak.py                     # 150 streams, 30 min (about 31 min in all)
    python benchmarks/soak.py --quick             # 20 streams, 60 s, calls of 5-20 s
    python benchmarks/soak.py --streams 300 --seconds 600 --codec G722 --json soak.json

Reported: calls completed, inexact recordings (with their first mismatch), the RSS series and
whether its last 10 minutes stay within 5 % (max/min), the client's send lag (p50/p99/max:
when a frame went out against when it was due) and its own event-loop lag and CPU (so a busy
client is not mistaken for a slow server), the server's CPU seconds. Exit status 1 if any
recording is inexact or missing, or a call failed.

Linux only (/proc). Loopback only; bounded in time (``--seconds`` + the longest call + the
drain) and count; kills only the server it started.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import contextlib
import gc
import json
import multiprocessing
import os
import random
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
FRAME_SECONDS = 0.020
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
VERIFY_DELAY = 3.0  # the server finalizes a recording just after it closes the socket
LAG_BIN = 0.0001  # send-lag histogram: 0.1 ms bins up to LAG_BINS * LAG_BIN
LAG_BINS = 50_000
RSS_WINDOW = 600.0  # the last 10 minutes must stay within RSS_TOLERANCE
RSS_TOLERANCE = 1.05
LATE_MS = 20.0  # a frame sent a whole frame late counts as late
CODECS = ("PCMU", "PCMA", "G722", "L16")
MEDIA_TEMPLATE = (
    '{"event":"media","sequence_number":"%d","media":{"track":"inbound","chunk":"%d",'
    '"timestamp":"%d","payload":"%s"},"stream_id":"%s"}'
)


# ====================================================================== audio, both sides


def codec_format(codec: str, l16_rate: int) -> tuple[int, int]:
    """(PCM rate, payload bytes per 20 ms frame) of a codec as the server decodes it."""
    if codec in ("PCMU", "PCMA"):
        return 8000, 160
    if codec == "G722":
        return 16000, 160  # 64 kbit/s: 4 bits per 16 kHz sample
    return l16_rate, l16_rate // 50 * 2


def call_payload(seed: int, frames: int, frame_bytes: int) -> bytes:
    """A call's whole encoded audio: seeded random bytes (valid for every codec here)."""
    return np.random.default_rng(seed).bytes(frames * frame_bytes)


def expected_pcm(codec: str, data: bytes) -> np.ndarray:
    """Decode what was sent without mediastream: audioop, the G722 package, numpy."""
    if codec == "L16":
        return np.frombuffer(data, dtype=">i2").astype(np.int16)
    if codec == "G722":
        from G722 import G722

        return np.asarray(G722(16000, 64000).decode(data), dtype=np.int16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop  # stdlib on 3.11/3.12, the audioop-lts package on 3.13+
    decode = audioop.ulaw2lin if codec == "PCMU" else audioop.alaw2lin
    return np.frombuffer(decode(data, 2), dtype=np.int16)


def verify_recording(
    path: str, codec: str, rate: int, frame_bytes: int, seed: int, frames: int, delete: bool
) -> tuple[str, str]:
    """(status, detail) for one recording: ``exact``, ``missing`` or ``inexact``. Runs in the
    verifier process, so reading and decoding never take the client's loop."""
    import soundfile

    file = Path(path)
    if not file.exists():
        return "missing", f"{file.name} does not exist"
    try:
        data, file_rate = soundfile.read(file, dtype="int16", always_2d=True)
    except Exception as exc:  # a torn header is a finding, not a crash of the soak
        return "inexact", f"unreadable: {exc}"
    want = expected_pcm(codec, call_payload(seed, frames, frame_bytes))
    if file_rate != rate or data.shape[1] != 1:
        return "inexact", f"{file_rate} Hz x {data.shape[1]} channels, expected {rate} Hz mono"
    got = data[:, 0]
    if len(got) != len(want) or not np.array_equal(got, want):
        common = min(len(got), len(want))
        diff = np.flatnonzero(got[:common] != want[:common])
        where = int(diff[0]) if len(diff) else common
        first = (
            f"first mismatch at sample {where} ({where / rate:.3f} s): "
            f"{int(got[where])} != {int(want[where])}"
            if len(diff)
            else f"first {common} samples equal"
        )
        return "inexact", f"{len(got)} samples, expected {len(want)}; {first}"
    if delete:
        file.unlink()
    return "exact", ""


# ====================================================================== the server


class Server:
    """``mediastream serve`` in a subprocess, its output going to a log file.

    A file, not a pipe: a pipe needs a reader thread in the client, which would take the GIL
    from the client's loop on every log line. The log is scanned for errors at the end.
    """

    def __init__(self, record_dir: Path, log_path: Path, extra: list[str]) -> None:
        command = [sys.executable, "-m", "mediastream", "serve", "--host", "127.0.0.1",
                   "--port", "0", "--record-dir", str(record_dir), *extra]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
        self.log_path = log_path
        with log_path.open("w") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO
            )
        self.port = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            match = re.search(r"listening on ws://[\d.]+:(\d+)/", log_path.read_text())
            if match:
                self.port = int(match.group(1))
                break
            time.sleep(0.05)
        if not self.port:
            self.kill()
            raise RuntimeError("server did not start:\n" + log_path.read_text())
        self.started = time.monotonic()
        self.cpu_at_start = self.cpu_seconds()

    def error_lines(self) -> tuple[int, list[str]]:
        """(count, first 20) of the log's lines with a traceback or an error."""
        count, first = 0, []
        with self.log_path.open(errors="replace") as log:
            for line in log:
                if "Traceback" in line or "ERROR" in line or "CRITICAL" in line:
                    count += 1
                    if len(first) < 20:
                        first.append(line.rstrip())
        return count, first

    def cpu_seconds(self) -> float:
        """utime + stime of the server, all threads (/proc/<pid>/stat)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_mib(self) -> float:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def terminate(self, timeout: float = 90.0) -> tuple[int | None, float]:
        """SIGTERM (drain, finalize), then wait; SIGKILL past ``timeout``. (exit code, CPU s)"""
        cpu = self.cpu_seconds() - self.cpu_at_start
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode, cpu

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ====================================================================== the client


@dataclass
class CallRecord:
    stream_id: str
    seed: int
    frames: int
    started: float
    ended: float = 0.0
    frames_sent: int = 0
    close_code: int | None = None
    error: str = ""
    status: str = "pending"  # pending | exact | inexact | missing | failed
    detail: str = ""


@dataclass
class RssSample:
    t: float
    rss_mib: float
    live_calls: int
    send_p99_ms: float  # over the interval since the previous sample
    late_frames: int


@dataclass
class Stats:
    """Counters the client keeps per frame: plain ints, never an allocation per frame."""

    lag_hist: list[int] = field(default_factory=lambda: [0] * (LAG_BINS + 1))
    window_hist: list[int] = field(default_factory=lambda: [0] * (LAG_BINS + 1))
    late: int = 0
    window_late: int = 0
    max_lag: float = 0.0
    frames: int = 0
    live: int = 0
    loop_lags: list[float] = field(default_factory=list)
    gc_pauses: list[float] = field(default_factory=list)  # the client's own collections, s

    def add(self, lag: float) -> None:
        index = int(lag / LAG_BIN) if lag > 0 else 0
        index = index if index < LAG_BINS else LAG_BINS
        self.lag_hist[index] += 1
        self.window_hist[index] += 1
        self.frames += 1
        if lag > self.max_lag:
            self.max_lag = lag
        if lag * 1000 > LATE_MS:
            self.late += 1
            self.window_late += 1


def percentile_ms(hist: list[int], q: float) -> float:
    total = sum(hist)
    if not total:
        return 0.0
    target = q / 100 * total
    running = 0
    for index, count in enumerate(hist):
        running += count
        if running >= target:
            return (index + 1) * LAG_BIN * 1000  # upper edge of the bin
    return LAG_BINS * LAG_BIN * 1000


class Soak:
    def __init__(self, args: argparse.Namespace, server: Server, record_dir: Path) -> None:
        self.args = args
        self.server = server
        self.record_dir = record_dir
        self.url = f"ws://127.0.0.1:{server.port}/soak"
        self.rate, self.frame_bytes = codec_format(args.codec, args.l16_rate)
        self.stats = Stats()
        self.calls: list[CallRecord] = []
        self.rss: list[RssSample] = []
        self.rng = random.Random(args.seed)
        self.run_id = f"{int(time.time()) % 100000:05d}"
        self.verifier = concurrent.futures.ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn")
        )
        self.verifications: set[asyncio.Future[Any]] = set()
        self.t0 = 0.0
        self.stop_starting = 0.0

    # ------------------------------------------------------------ the run

    def _watch_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.stats.gc_pauses.append(time.perf_counter() - self._gc_started)

    async def run(self) -> None:
        # what exists now lives for the whole run: frozen, collections never scan it again
        gc.freeze()
        self._gc_started = 0.0
        gc.callbacks.append(self._watch_gc)
        self.t0 = time.monotonic()
        self.stop_starting = self.t0 + self.args.seconds
        n = self.args.streams
        sampler = asyncio.create_task(self._sample_rss())
        loop_probe = asyncio.create_task(self._probe_loop())
        # slots start spread over the first seconds, then each call's random length spreads them
        slots = [
            asyncio.create_task(self._slot(i, self.t0 + i * self.args.ramp / n)) for i in range(n)
        ]
        await asyncio.gather(*slots)
        sampler.cancel()
        loop_probe.cancel()
        self._sample_now()  # the last point, with every call finished
        if self.verifications:
            await asyncio.wait(self.verifications)

    async def _slot(self, index: int, first_start: float) -> None:
        await asyncio.sleep(max(0.0, first_start - time.monotonic()))
        number = 0
        while time.monotonic() < self.stop_starting:
            number += 1
            seconds = self.rng.uniform(self.args.min_call, self.args.max_call)
            record = CallRecord(
                stream_id=f"soak-{self.run_id}-{index}-{number}",
                seed=self.rng.randrange(2**63),
                frames=max(1, round(seconds / FRAME_SECONDS)),
                started=time.monotonic(),
            )
            self.calls.append(record)
            await self._call(record)
            if record.error:
                await asyncio.sleep(1.0)  # a refused call is not retried in a tight loop

    async def _call(self, record: CallRecord) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        stats = self.stats
        payload = call_payload(record.seed, record.frames, self.frame_bytes)
        size = self.frame_bytes
        start = {
            "event": "start",
            "sequence_number": "1",
            "stream_id": record.stream_id,
            "start": {
                "call_control_id": f"v3:{record.stream_id}",
                "media_format": {"encoding": self.args.codec, "sample_rate": self.rate,
                                 "channels": 1},
            },
        }  # fmt: skip
        stats.live += 1
        try:
            async with connect(
                self.url, compression=None, ping_interval=None, open_timeout=30, close_timeout=10
            ) as ws:
                await ws.send(json.dumps({"event": "connected", "version": "1.0.0"}))
                await ws.send(json.dumps(start))
                due = time.monotonic()
                sid = record.stream_id
                for k in range(record.frames):
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    chunk = base64.b64encode(payload[k * size : (k + 1) * size]).decode()
                    await ws.send(MEDIA_TEMPLATE % (k + 2, k + 1, k * 20, chunk, sid))
                    stats.add(time.monotonic() - due)
                    record.frames_sent += 1
                    due += FRAME_SECONDS
                stop = {"event": "stop", "sequence_number": str(record.frames + 2),
                        "stream_id": sid}  # fmt: skip
                await ws.send(json.dumps(stop))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ws.wait_closed(), 10)
                record.close_code = ws.close_code
                if record.close_code != 1000:
                    record.error = f"closed with {record.close_code} {ws.close_reason!r}"
        except (OSError, ConnectionClosed, TimeoutError) as exc:
            record.error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # an unexpected client failure is reported, never hidden
            record.error = f"{type(exc).__name__}: {exc}"
        finally:
            stats.live -= 1
            record.ended = time.monotonic()
        if record.error:
            record.status = "failed"
            return
        loop = asyncio.get_running_loop()
        loop.call_later(VERIFY_DELAY, self._verify_later, record)

    def _verify_later(self, record: CallRecord) -> None:
        future = asyncio.wrap_future(
            self.verifier.submit(
                verify_recording, str(self.record_dir / f"{record.stream_id}.wav"),
                self.args.codec, self.rate, self.frame_bytes, record.seed, record.frames,
                not self.args.keep_recordings,
            )
        )  # fmt: skip
        self.verifications.add(future)

        def done(f: asyncio.Future[tuple[str, str]]) -> None:
            self.verifications.discard(f)
            if f.cancelled() or f.exception() is not None:
                record.status, record.detail = "pending", f"verifier failed: {f.exception()}"
                return
            status, detail = f.result()
            # not exact now may only mean "not finalized yet": checked again after the server
            # exited; exact is final
            record.status = "exact" if status == "exact" else "pending"
            record.detail = detail

        future.add_done_callback(done)

    async def _sample_rss(self) -> None:
        interval = self.args.rss_interval
        next_at = self.t0
        while True:
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            self._sample_now()

    def _sample_now(self) -> None:
        stats = self.stats
        sample = RssSample(
            t=round(time.monotonic() - self.t0, 1),
            rss_mib=round(self.server.rss_mib(), 1),
            live_calls=stats.live,
            send_p99_ms=round(percentile_ms(stats.window_hist, 99), 2),
            late_frames=stats.window_late,
        )
        self.rss.append(sample)
        stats.window_hist = [0] * (LAG_BINS + 1)
        stats.window_late = 0
        if not self.args.quiet:
            print(
                f"  t={sample.t:7.1f} s  server RSS {sample.rss_mib:7.1f} MiB  live calls "
                f"{sample.live_calls:4}  send p99 {sample.send_p99_ms:6.2f} ms  late "
                f"{sample.late_frames}",
                flush=True,
            )

    async def _probe_loop(self) -> None:
        """The client's own event-loop lag: how late a 10 ms sleep wakes up."""
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.010)
            self.stats.loop_lags.append(time.monotonic() - before - 0.010)

    # ------------------------------------------------------------ after the server exited

    def verify_remaining(self) -> None:
        """Every call not yet found exact, now that the server finalized everything."""
        todo = [c for c in self.calls if c.status == "pending"]
        futures = {
            self.verifier.submit(
                verify_recording, str(self.record_dir / f"{c.stream_id}.wav"), self.args.codec,
                self.rate, self.frame_bytes, c.seed, c.frames, not self.args.keep_recordings,
            ): c
            for c in todo
        }  # fmt: skip
        for future, call in futures.items():
            call.status, call.detail = future.result()
        self.verifier.shutdown()


# ====================================================================== the report


def rss_flag(samples: list[RssSample], window: float) -> dict[str, Any]:
    """Max/min of RSS over the last ``window`` seconds of the run (or its second half when
    the run is shorter: the first minutes are warm-up, not a leak)."""
    if not samples:
        return {"window_s": 0, "min_mib": None, "max_mib": None, "ratio": None, "stable": None}
    end = samples[-1].t
    span = window if end >= window else end / 2
    values = [s.rss_mib for s in samples if s.t >= end - span]
    low, high = min(values), max(values)
    ratio = high / low if low > 0 else float("inf")
    return {
        "window_s": span,
        "full_window": end >= window,
        "min_mib": low,
        "max_mib": high,
        "ratio": round(ratio, 4),
        "stable": ratio <= RSS_TOLERANCE,
    }


def summarize(soak: Soak, server_cpu: float, exit_code: int | None, wall: float) -> dict[str, Any]:
    args, stats, calls = soak.args, soak.stats, soak.calls
    by_status: dict[str, int] = {}
    for call in calls:
        by_status[call.status] = by_status.get(call.status, 0) + 1
    inexact = [c for c in calls if c.status in ("inexact", "missing")]
    failed = [c for c in calls if c.status == "failed"]
    loop_lags = np.array(stats.loop_lags or [0.0]) * 1000
    error_count, error_lines = soak.server.error_lines()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = usage.ru_utime + usage.ru_stime
    audio_seconds = stats.frames * FRAME_SECONDS
    return {
        "config": {
            "streams": args.streams,
            "seconds": args.seconds,
            "codec": args.codec,
            "call_seconds": [args.min_call, args.max_call],
            "seed": args.seed,
            "server_args": args.server_arg,
            "client_loop": args.loop,
        },
        "wall_seconds": round(wall, 1),
        "calls_started": len(calls),
        "calls_completed": sum(1 for c in calls if not c.error),
        "calls_exact": by_status.get("exact", 0),
        "calls_by_status": by_status,
        "inexact": [
            {"stream_id": c.stream_id, "status": c.status, "detail": c.detail} for c in inexact
        ],
        "failed": [{"stream_id": c.stream_id, "error": c.error} for c in failed[:50]],
        "frames_sent": stats.frames,
        "send_lag_ms": {
            "p50": percentile_ms(stats.lag_hist, 50),
            "p99": percentile_ms(stats.lag_hist, 99),
            "max": round(stats.max_lag * 1000, 2),
            "late_frames": stats.late,
        },
        "client": {
            "loop_lag_ms": {
                "p50": round(float(np.percentile(loop_lags, 50)), 3),
                "p99": round(float(np.percentile(loop_lags, 99)), 3),
                "max": round(float(loop_lags.max()), 3),
            },
            "gc_pause_ms_max": round(max(stats.gc_pauses, default=0.0) * 1000, 2),
            "cpu_seconds": round(client_cpu, 1),
            "cpu_percent_of_a_core": round(100 * client_cpu / wall, 1) if wall else None,
        },
        "server": {
            "cpu_seconds": round(server_cpu, 1),
            "cpu_us_per_frame": round(server_cpu * 1e6 / stats.frames, 1) if stats.frames else None,
            "cpu_percent_of_a_core": round(100 * server_cpu / wall, 1) if wall else None,
            "exit_code": exit_code,
            "error_lines": error_count,
            "first_error_lines": error_lines,
            "log": args.log,
        },
        "audio_seconds_sent": round(audio_seconds, 1),
        "rss": [asdict(s) for s in soak.rss],
        "rss_last_window": rss_flag(soak.rss, RSS_WINDOW),
    }


def print_summary(report: dict[str, Any]) -> None:
    c, lag, client, server = (
        report["config"],
        report["send_lag_ms"],
        report["client"],
        report["server"],
    )
    flag = report["rss_last_window"]
    print()
    print(
        f"soak: {c['streams']} streams x {c['seconds']:g} s, {c['codec']}, calls of "
        f"{c['call_seconds'][0]:g}-{c['call_seconds'][1]:g} s; {report['wall_seconds']:g} s wall"
    )
    print(
        f"  calls: {report['calls_started']} started, {report['calls_completed']} completed, "
        f"{report['calls_exact']} recordings exact; by status {report['calls_by_status']}"
    )
    for bad in report["inexact"][:10]:
        print(f"  INEXACT {bad['stream_id']}: {bad['status']}: {bad['detail']}")
    for bad in report["failed"][:10]:
        print(f"  FAILED  {bad['stream_id']}: {bad['error']}")
    print(
        f"  client send lag: p50 {lag['p50']:.2f} ms, p99 {lag['p99']:.2f} ms, max "
        f"{lag['max']:.2f} ms, {lag['late_frames']} of {report['frames_sent']} frames > "
        f"{LATE_MS:g} ms late"
    )
    loop = client["loop_lag_ms"]
    print(
        f"  client itself: loop lag p99 {loop['p99']:.2f} ms (max {loop['max']:.2f}), GC pause "
        f"max {client['gc_pause_ms_max']:.1f} ms, CPU "
        f"{client['cpu_seconds']:.1f} s ({client['cpu_percent_of_a_core']}% of a core)"
    )
    print(
        f"  server: CPU {server['cpu_seconds']:.1f} s ({server['cpu_percent_of_a_core']}% of a "
        f"core, {server['cpu_us_per_frame']} µs/frame), exit code {server['exit_code']}, "
        f"{server['error_lines']} error/traceback lines"
    )
    for line in server["first_error_lines"][:5]:
        print(f"    | {line}")
    series = " ".join(f"{s['rss_mib']:.0f}" for s in report["rss"])
    print(f"  server RSS (MiB, every sample): {series}")
    if flag["min_mib"] is not None:
        which = (
            "last 10 min" if flag["full_window"] else f"last {flag['window_s']:.0f} s (short run)"
        )
        verdict = "within" if flag["stable"] else "NOT within"
        print(
            f"  RSS over the {which}: {flag['min_mib']:.1f}-{flag['max_mib']:.1f} MiB, max/min "
            f"{flag['ratio']:.3f}: {verdict} {100 * (RSS_TOLERANCE - 1):.0f} %"
        )


# ====================================================================== main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=150, help="concurrent calls (150)")
    parser.add_argument("--seconds", type=float, default=1800.0, help="new calls start this long")
    parser.add_argument("--min-call", type=float, default=5.0, help="shortest call, s (5)")
    parser.add_argument("--max-call", type=float, default=60.0, help="longest call, s (60)")
    parser.add_argument("--codec", default="PCMU", choices=CODECS)
    parser.add_argument("--l16-rate", type=int, default=16000, choices=[8000, 16000])
    parser.add_argument("--ramp", type=float, default=5.0, help="first calls start over this, s")
    parser.add_argument("--rss-interval", type=float, default=10.0, help="RSS sample period, s")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="20 streams, 60 s, calls of 5-20 s")
    parser.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop"],
                        help="the client's event loop")  # fmt: skip
    parser.add_argument(
        "--server-arg", action="append", default=[], metavar="ARG",
        help="extra argument for mediastream serve (repeat), e.g. --server-arg=--loop=uvloop",
    )  # fmt: skip
    parser.add_argument("--record-dir", type=Path, help="default: a temporary directory")
    parser.add_argument("--keep-recordings", action="store_true", help="do not delete exact ones")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    parser.add_argument("--log", metavar="FILE", help="keep the server's log here")
    parser.add_argument("--quiet", action="store_true", help="no line per RSS sample")
    args = parser.parse_args(argv)
    if args.quick:
        args.streams, args.seconds, args.min_call, args.max_call = 20, 60.0, 5.0, 20.0
    if not (0 < args.min_call <= args.max_call) or args.streams < 1 or args.seconds <= 0:
        parser.error("need 0 < --min-call <= --max-call, --streams >= 1, --seconds > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path("/proc/self/status").exists():
        print("soak: error: needs Linux /proc", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        if args.record_dir is None:
            record_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        else:
            record_dir = args.record_dir
            record_dir.mkdir(parents=True, exist_ok=True)
        log_path = Path(args.log) if args.log else record_dir.parent / f"{record_dir.name}.log"
        if args.log is None:
            stack.callback(lambda: log_path.unlink(missing_ok=True))
        server = Server(record_dir, log_path, args.server_arg)
        stack.callback(server.kill)  # whatever happens, the server we started does not outlive us
        longest = args.seconds + args.max_call + 60
        print(
            f"server pid {server.proc.pid} on port {server.port}, recording to {record_dir}; "
            f"{args.streams} streams of {args.codec}, new calls for {args.seconds:g} s "
            f"(done within ~{longest:.0f} s)",
            flush=True,
        )
        soak = Soak(args, server, record_dir)
        started = time.monotonic()
        runner = soak.run()
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(asyncio.wait_for(runner, longest))
        else:
            asyncio.run(asyncio.wait_for(runner, longest))
        wall = time.monotonic() - started
        exit_code, server_cpu = server.terminate()
        soak.verify_remaining()
        report = summarize(soak, server_cpu, exit_code, wall)
    print_summary(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    ok = not report["inexact"] and not report["failed"] and exit_code == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
