"""How many real-time streams a server carries on one core: mediastream against a bare server.

One run starts, for each codec, three servers pinned to one core:

- ``baseline``: a bare ``websockets`` server written here (same library, same settings) that
  only parses each frame, base64-decodes it and decodes the audio (audioop / the ``G722``
  package), then computes the frame's lag;
- ``noop``: ``mediastream serve`` with a handler that only computes the lag;
- ``record``: the same with ``--record-dir``;
- ``picows-noop``, ``picows-record`` (asked for with ``--servers``): the same two on
  ``serve --transport picows``, and ``picows-baseline``, the bare server on picows (its
  frame callback does the baseline's work); each picows server's ratio is to that one;
- ``...-noreports`` (``noop-noreports``, ``record-noreports``, ``picows-noop-noreports``...):
  the same server with ``--no-reports``, to price the quality report;
- ``noop-webrtc``, ``noop-silero`` (and ``picows-`` ones): the no-op server with
  ``--speech webrtc`` / ``--speech silero`` (speech detection on every caller track).

Load generators run in separate processes on the other core(s). Each opens N streams paced in
real time (one 20 ms frame per stream every 20 ms; streams start 200 per second) on raw
sockets with pre-built frames, so that the generator stays cheap. Every stream's ``start``
carries ``t0``, the monotonic time its first frame is due; a frame's lag is read in the
handler as ``now - (t0 + audio position)``: from the moment the frame was due to the moment the
handler has it. N is stepped up (by 8 %), and at each N every server still in the race is
probed in turn, so that drift of a shared machine hits all three alike; each server's result is
the largest N with p99 lag under 20 ms and no frame lost. The server's CPU time over the
measurement window gives CPU µs per frame. Then resident memory per stream is measured at 500
streams (per server; ``record`` is the figure that counts).

    python benchmarks/server_load.py                 # PCMU and G722, a full run (~25 min)
    python benchmarks/server_load.py --quick         # ~60 s smoke run (small fixed N)
    python benchmarks/server_load.py --codec G722 --servers noop baseline
    python benchmarks/server_load.py --codec PCMU --servers noop record --before 0b4bbf1

``--before REV`` compares two versions of mediastream in one run: REV is exported (``git
archive REV | tar -x``, into the run's temporary directory) and every mediastream server gets
a twin, ``noop@before`` / ``record@before``, that runs ``python -m mediastream serve`` with
PYTHONPATH and cwd at the export (the installed editable package stays behind them on
``sys.path``). The twins join the same N ladder and the same per-N turns, and the table gives
after/before. The handler is this file in both trees (it imports ``StreamHandler`` from where
each tree has it) and prints the ``mediastream`` package it was loaded with; a server whose
package is not the tree it claims stops the run.

Linux only (CPU affinity, /proc). Loopback only, every process bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import heapq
import json
import os
import re
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

try:
    from mediastream.runtime.handler import StreamHandler
except ImportError:  # a tree from before the runtime refactor (--before)
    from mediastream.handler import StreamHandler  # type: ignore[no-redef]
from mediastream.session import Audio

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
FRAME_SECONDS = 0.020
LAG_LIMIT_MS = 20.0
LAG_DIR_ENV = "MEDIASTREAM_BENCH_LAG_DIR"
# Streams start at this rate (a busy carrier trunk, not a thundering herd); lag is measured
# from SETTLE_SECONDS after the last one started: the steady state of N live calls.
STARTS_PER_SECOND = 200
SETTLE_SECONDS = 1.5
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


# ====================================================================== the lag, in the servers


def save_lags(stream_id: str, t0: float, lags: list[float], missing: int) -> None:
    """One file per stream: [t0, missing, lag_0, lag_1, ...] (seconds), read by the driver."""
    directory = os.environ.get(LAG_DIR_ENV)
    if directory:
        data = np.array([t0, float(missing), *lags], dtype=np.float64)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", stream_id)
        np.save(Path(directory) / f"{name}.npy", data)


if os.environ.get(LAG_DIR_ENV) and __name__ != "__main__":  # loaded by a server as its handler
    import mediastream

    print(f"handler loaded with mediastream from {Path(mediastream.__file__).parent}", flush=True)


class LagHandler(StreamHandler):
    """The no-op handler of the benchmark: it only notes how late each frame reached it."""

    t0: float = 0.0
    rate: int = 8000

    async def on_start(self) -> None:
        self.t0 = float(self.call.custom_parameters.get("t0", "0"))
        self.lags: list[float] = []
        self.missing = 0

    async def on_audio(self, audio: Audio) -> None:
        if audio.missing:
            self.missing += 1
        self.lags.append(time.monotonic() - self.t0 - audio.position / audio.sample_rate)

    async def on_stop(self) -> None:
        save_lags(self.call.stream_id, self.t0, self.lags, self.missing)


def run_baseline(
    port: int, codec: str, loop: str = "asyncio", transport: str = "websockets"
) -> None:
    """The bare server: parse, base64-decode, decode, note the lag. Nothing else."""
    from websockets.asyncio.server import serve

    if codec == "G722":
        from G722 import G722

        def make_decoder():  # type: ignore[no-untyped-def]
            return G722(16000, 64000).decode
    else:
        try:
            import audioop  # deprecated in 3.11-3.12; audioop-lts provides it on 3.13+

            def make_decoder():  # type: ignore[no-untyped-def]
                return lambda payload: audioop.ulaw2lin(payload, 2)
        except ImportError:
            from mediastream.codecs.g711 import ULAW_DECODE

            def make_decoder():  # type: ignore[no-untyped-def]
                return lambda payload: ULAW_DECODE.take(np.frombuffer(payload, np.uint8))

    async def handle(ws) -> None:  # type: ignore[no-untyped-def]
        stream_id, t0, decode, lags = "?", 0.0, make_decoder(), []
        async for message in ws:
            frame = json.loads(message)
            event = frame.get("event")
            if event == "media":
                media = frame["media"]
                decode(base64.b64decode(media["payload"]))
                due = t0 + int(media["timestamp"]) / 1000
                lags.append(time.monotonic() - due)
            elif event == "start":
                stream_id = frame["stream_id"]
                t0 = float(frame["start"]["custom_parameters"]["t0"])
            elif event == "stop":
                break
        save_lags(stream_id, t0, lags, 0)

    async def main() -> None:
        async with serve(
            handle, "127.0.0.1", port, compression=None, max_size=1 << 20, ping_interval=None
        ) as server:
            print(f"baseline listening on ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/")
            sys.stdout.flush()
            await asyncio.Future()

    if transport == "picows":
        main = _picows_baseline(port, make_decoder)  # type: ignore[assignment]

    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def _picows_baseline(port: int, make_decoder: Any) -> Callable[[], Coroutine[Any, Any, None]]:
    """``run_baseline`` on picows: the same work per frame, in the frame callback."""
    import picows

    class Listener(picows.WSListener):  # type: ignore[misc]
        def __init__(self) -> None:
            self.stream_id, self.t0, self.decode, self.lags = "?", 0.0, make_decoder(), []

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type == picows.WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()
                return
            message = json.loads(frame.get_payload_as_utf8_text())
            event = message.get("event")
            if event == "media":
                media = message["media"]
                self.decode(base64.b64decode(media["payload"]))
                due = self.t0 + int(media["timestamp"]) / 1000
                self.lags.append(time.monotonic() - due)
            elif event == "start":
                self.stream_id = message["stream_id"]
                self.t0 = float(message["start"]["custom_parameters"]["t0"])
            elif event == "stop":
                save_lags(self.stream_id, self.t0, self.lags, 0)
                transport.send_close(picows.WSCloseCode.OK)
                transport.disconnect()

    async def main() -> None:
        server = await picows.ws_create_server(
            lambda request: Listener(), "127.0.0.1", port, max_frame_size=1 << 20,
            enable_auto_ping=False,
        )  # fmt: skip
        print(f"baseline listening on ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/")
        sys.stdout.flush()
        await asyncio.Future()

    return main


# ====================================================================== the load generator


def _payloads(codec: str, count: int = 50) -> list[str]:
    """Base64 payloads of a real encoded speech-like signal (one per 20 ms frame)."""
    from mediastream.simulate import codec_rate, encode_frames, synthesize_speechlike

    rate = codec_rate(codec)
    pcm = synthesize_speechlike(count * FRAME_SECONDS, rate)
    return [base64.b64encode(p).decode() for p in encode_frames(pcm, codec, rate)][:count]


def _ws_frame(text: str) -> bytes:
    """A masked client text frame; the mask key is zero, so the payload goes as is (RFC 6455
    requires a mask, not a random one from a load generator)."""
    data = text.encode()
    size = len(data)
    if size < 126:
        header = struct.pack("!BB", 0x81, 0x80 | size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, size)
    return header + b"\x00\x00\x00\x00" + data


def _handshake(port: int, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    sock.sendall(request.encode())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("server closed during the handshake")
        response += chunk
    if not response.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(response.split(b"\r\n", 1)[0].decode())
    sock.setblocking(False)
    return sock


def run_generator(
    port: int, codec: str, first: int, count: int, total: int, t_start: float,
    ramp: float, frames: int, run_id: str,
) -> None:  # fmt: skip
    """Streams ``first .. first+count-1`` of ``total``: connect, ``start``, then ``frames``
    paced frames each, ``stop``, close. Prints how late it was itself (JSON)."""
    payloads = _payloads(codec)
    rate = 16000 if codec == "G722" else 8000
    encoding = "G722" if codec == "G722" else "PCMU"
    socks: list[socket.socket] = []
    starts: list[float] = []
    ids: list[str] = []
    for index in range(first, first + count):
        stream_id = f"{run_id}-{index}"
        t0 = t_start + ramp * index / total
        sock = _handshake(port, "/bench")
        start = {
            "event": "start",
            "sequence_number": "1",
            "stream_id": stream_id,
            "start": {
                "call_control_id": f"v3:{stream_id}",
                "custom_parameters": {"t0": repr(t0)},
                "media_format": {"encoding": encoding, "sample_rate": rate, "channels": 1},
            },
        }
        connected = json.dumps({"event": "connected", "version": "1.0.0"})
        sock.sendall(_ws_frame(connected) + _ws_frame(json.dumps(start)))
        socks.append(sock)
        starts.append(t0)
        ids.append(stream_id)
    pending: dict[int, bytes] = {}
    lateness: list[float] = []
    sent = 0
    template = (
        '{"event":"media","sequence_number":"%d","media":{"track":"inbound","chunk":"%d",'
        '"timestamp":"%d","payload":"%s"},"stream_id":"%s"}'
    )
    due_frames = [(starts[i], i, 0) for i in range(count)]  # (due time, stream, frame index)
    heapq.heapify(due_frames)
    next_flush = time.monotonic()
    while due_frames:
        due, i, k = due_frames[0]
        now = time.monotonic()
        if due - now > 0.0005:  # sleeping is coarse: a frame may go up to 0.5 ms early
            if pending and now >= next_flush:
                for j in list(pending):
                    _send(socks[j], j, b"", pending)
                next_flush = now + 0.002
                continue
            time.sleep(due - now)
            now = time.monotonic()
        lateness.append(now - due)
        text = template % (k + 2, k + 1, k * 20, payloads[k % len(payloads)], ids[i])
        _send(socks[i], i, _ws_frame(text), pending)
        sent += 1
        if k + 1 < frames:
            heapq.heapreplace(due_frames, (due + FRAME_SECONDS, i, k + 1))
        else:
            heapq.heappop(due_frames)
    for i, sock in enumerate(socks):
        stop = {"event": "stop", "sequence_number": str(frames + 2), "stream_id": ids[i]}
        _send(sock, i, _ws_frame(json.dumps(stop)) + b"\x88\x82\x00\x00\x00\x00\x03\xe8", pending)
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        for i in list(pending):
            _send(socks[i], i, b"", pending)
        time.sleep(0.01)
    for sock in socks:  # wait for the server's close, so every stream has ended there
        sock.setblocking(True)
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(OSError):
            while sock.recv(4096):
                pass
        sock.close()
    late = np.array(lateness) * 1000 if lateness else np.zeros(1)
    report = {"sent": sent, "late_p99_ms": float(np.percentile(late, 99)), "unsent": len(pending)}
    print(json.dumps(report), flush=True)


def _send(sock: socket.socket, index: int, data: bytes, pending: dict[int, bytes]) -> None:
    """Non-blocking send that keeps what the socket did not take, in order."""
    if index in pending:
        data = pending.pop(index) + data
    if not data:
        return
    try:
        written = sock.send(data)
    except BlockingIOError:
        written = 0
    if written < len(data):
        pending[index] = data[written:]


# ====================================================================== the driver


@dataclass
class Probe:
    streams: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    lost: int
    cpu_us_per_frame: float
    generator_late_p99_ms: float
    rss_mib: float

    @property
    def passed(self) -> bool:
        return self.p99_ms < LAG_LIMIT_MS and self.lost == 0


@dataclass
class ServerResult:
    name: str
    codec: str
    best: Probe | None = None
    probes: list[Probe] = field(default_factory=list)
    memory_kib_per_stream: float | None = None


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime, all threads


def _rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE


def _raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Server:
    """One server process on its core, with a directory for its lag files."""

    def __init__(
        self, name: str, codec: str, core: int, work: Path, loop: str, tree: Path = REPO
    ) -> None:
        self.name, self.codec, self.core = name, codec, core
        self.lag_dir = work / f"lags-{name}-{codec}"
        self.record_dir = work / f"rec-{name}-{codec}"
        self.lag_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, LAG_DIR_ENV: str(self.lag_dir), "PYTHONPATH": str(tree)}
        kind = name.split("@")[0]  # "record@before" is a record server of the --before tree
        if kind in ("baseline", "picows-baseline"):
            command = [sys.executable, str(HERE), "_baseline", "--codec", codec, "--loop", loop]
            if kind == "picows-baseline":
                command += ["--transport", "picows"]
        else:
            command = [
                sys.executable, "-m", "mediastream", "--log-level", "warning", "serve",
                "--port", "0",
                "--handler", f"{HERE}:LagHandler", "--ping-interval", "0",
                "--max-streams", "100000", "--idle-timeout", "600",
            ]  # fmt: skip
            if loop != "asyncio":
                command += ["--loop", loop]
            parts = kind.split("-")  # picows-record-noreports: picows, recording, reports off
            if "picows" in parts:
                command += ["--transport", "picows"]
            if "record" in parts:
                command += ["--record-dir", str(self.record_dir)]
            if "noreports" in parts:
                command += ["--no-reports"]
            if "webrtc" in parts or "silero" in parts:  # speech detection on the caller
                command += ["--speech", "webrtc" if "webrtc" in parts else "silero"]
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=tree,
            preexec_fn=lambda: (os.sched_setaffinity(0, {core}), _raise_fd_limit()),
        )
        assert self.proc.stdout is not None
        self.port = 0
        deadline = time.monotonic() + 60
        lines = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if match := re.search(r"listening on ws://[\d.]+:(\d+)/", line):
                self.port = int(match.group(1))
                break
        if not self.port:
            self.stop()
            raise RuntimeError(f"{name} server did not start:\n" + "".join(lines))
        loaded = [line.split(" from ", 1)[1].strip() for line in lines if "loaded with" in line]
        if not kind.endswith("baseline"):
            if [Path(p).resolve() for p in loaded] != [(tree / "mediastream").resolve()]:
                self.stop()
                raise RuntimeError(f"{name} server loaded mediastream from {loaded}, not {tree}")
            print(f"  {name}: mediastream from {loaded[0]}", flush=True)
        self._drain_output()

    def _drain_output(self) -> None:
        """Read the server's output in the background so a chatty log never blocks it."""
        import threading

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                if "Traceback" in line or "ERROR" in line:
                    print(f"  [{self.name}] {line.rstrip()}", file=sys.stderr)

        threading.Thread(target=pump, daemon=True).start()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def probe(
    server: Server, streams: int, seconds: float, generators: int, gen_cores: set[int],
    run_id: str, profile: Path | None = None,
) -> Probe:  # fmt: skip
    """Drive ``streams`` paced streams for ``seconds``; lag, loss and CPU over the window.
    With ``profile`` (a directory), py-spy samples the server over the window (on the
    generators' cores, without pausing it) into ``<server>-<codec>-<N>.txt``, as collapsed
    stacks (``benchmarks/profile_share.py`` sums them by where the time goes)."""
    for old in server.lag_dir.glob("*.npy"):
        old.unlink()
    shutil.rmtree(server.record_dir, ignore_errors=True)
    server.record_dir.mkdir(exist_ok=True)
    ramp = max(0.5, streams / STARTS_PER_SECOND)
    connect_time = 2.0 + streams / 300  # handshakes of every stream happen before t_start
    t_start = time.monotonic() + connect_time
    frames = round((ramp + SETTLE_SECONDS + seconds) / FRAME_SECONDS)
    share = [streams // generators + (i < streams % generators) for i in range(generators)]
    procs = []
    first = 0
    for g, count in enumerate(share):
        if count == 0:
            continue
        command = [
            sys.executable, str(HERE), "_generate", "--port", str(server.port),
            "--codec", server.codec, "--first", str(first), "--count", str(count),
            "--total", str(streams), "--t-start", repr(t_start), "--ramp", repr(ramp),
            "--frames", str(frames), "--run-id", f"{run_id}-g{g}",
        ]  # fmt: skip
        procs.append(
            subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONPATH": str(REPO)},
                preexec_fn=lambda: (os.sched_setaffinity(0, gen_cores), _raise_fd_limit()),
            )
        )
        first += count
    window_start = t_start + ramp + SETTLE_SECONDS
    window_end = window_start + seconds
    time.sleep(max(0.0, window_start - time.monotonic()))
    sampler = _start_sampler(server, streams, seconds, gen_cores, profile) if profile else None
    cpu_before = _cpu_seconds(server.proc.pid)
    time.sleep(max(0.0, (window_start + window_end) / 2 - time.monotonic()))
    rss = _rss_bytes(server.proc.pid)
    time.sleep(max(0.0, window_end - time.monotonic()))
    cpu = _cpu_seconds(server.proc.pid) - cpu_before
    if sampler is not None:
        sampler.wait(timeout=60)
    reports = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        reports.append(json.loads(out.strip().splitlines()[-1]))
    files = _wait_for_files(server.lag_dir, streams, timeout=60)
    lags, lost = [], 0
    for path in files:
        data = np.load(path)
        t0, missing, stream_lags = data[0], int(data[1]), data[2:]
        due = t0 + np.arange(len(stream_lags)) * FRAME_SECONDS
        in_window = (due >= window_start) & (due < window_end)
        lags.append(stream_lags[in_window])
        lost += frames - (len(stream_lags) - missing)
    lost += (streams - len(files)) * frames
    all_lags = np.concatenate(lags) * 1000 if lags else np.array([np.inf])
    window_frames = max(1, all_lags.size)
    return Probe(
        streams=streams,
        p50_ms=float(np.percentile(all_lags, 50)),
        p99_ms=float(np.percentile(all_lags, 99)),
        max_ms=float(all_lags.max()),
        lost=int(lost),
        cpu_us_per_frame=cpu * 1e6 / window_frames,
        generator_late_p99_ms=max(r["late_p99_ms"] for r in reports),
        rss_mib=rss / 2**20,
    )


def _start_sampler(
    server: Server, streams: int, seconds: float, gen_cores: set[int], profile: Path
) -> subprocess.Popen[bytes]:
    """py-spy over the measured window: 200 samples/s, native frames off, never pausing the
    server (``--nonblocking``), on the generators' cores so the server's core stays its own."""
    profile.mkdir(parents=True, exist_ok=True)
    out = profile / f"{server.name}-{server.codec}-{streams}.txt"
    command = [
        "py-spy", "record", "--pid", str(server.proc.pid), "--duration", str(int(seconds)),
        "--rate", "200", "--nonblocking", "--full-filenames", "--format", "raw",
        "--output", str(out),
    ]  # fmt: skip
    return subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, gen_cores),
    )  # fmt: skip


def _wait_for_files(directory: Path, count: int, timeout: float) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = sorted(directory.glob("*.npy"))
        if len(files) >= count:
            return files
        time.sleep(0.2)
    return sorted(directory.glob("*.npy"))


def ladder(args: argparse.Namespace) -> list[int]:
    """The stream counts tried: ``--quick-streams``, or from ``--start`` up by ``--step``."""
    if args.quick:
        return list(args.quick_streams)
    steps, n = [], float(args.start)
    while n <= args.max_streams:
        rounded = int(round(n / 10) * 10)
        if not steps or rounded > steps[-1]:  # rounding to tens repeats small N: once each
            steps.append(rounded)
        n *= 1 + args.step
    return steps


def find_capacities(
    servers: list[Server], args: argparse.Namespace, gen_cores: set[int], log: list[str]
) -> list[ServerResult]:
    """Step N up the ladder; at each N probe every server still passing, one after the other,
    so that drift of a shared machine hits them alike. A server is done at its first N that
    fails twice in a row (once in ``--quick``): one host stall (50 ms, seen with the bare
    server too) can fail a window on its own, and every server gets the same second chance."""
    results = {server.name: ServerResult(server.name, server.codec) for server in servers}
    active = list(servers)
    for n in ladder(args):
        for server in list(active):
            result = results[server.name]
            for attempt in range(1 if args.quick else 2):
                run_id = f"{server.name}{n}-{attempt}"
                p = probe(server, n, args.seconds, args.generators, gen_cores, run_id, args.profile)
                result.probes.append(p)
                line = (
                    f"  {server.codec} {server.name:8} N={n:5}  p50 {p.p50_ms:6.2f}"
                    f"  p99 {p.p99_ms:7.2f}  max {p.max_ms:8.2f} ms  lost {p.lost:6}"
                    f"  cpu {p.cpu_us_per_frame:5.1f} µs/frame  gen p99 late"
                    f" {p.generator_late_p99_ms:5.2f} ms  {'ok' if p.passed else 'FAIL'}"
                )
                print(line, flush=True)
                log.append(line)
                if p.passed:
                    break
            if p.passed:
                result.best = p
            elif not args.quick:
                active.remove(server)
        if not active:
            break
    return [results[server.name] for server in servers]


def measure_memory(
    codec: str, args: argparse.Namespace, work: Path, gen_cores: set[int], log: list[str]
) -> dict[str, float]:
    """Resident memory per active stream at ``args.memory_streams`` streams, per server."""
    out: dict[str, float] = {}
    for name, tree in args.variants:
        server = Server(name, codec, args.server_core, work, args.loop, tree)
        try:
            probe(server, 10, 1.0, 1, gen_cores, f"warm-{name}")
            idle = _rss_bytes(server.proc.pid)
            p = probe(server, args.memory_streams, 4.0, args.generators, gen_cores, f"mem-{name}")
            per_stream = (p.rss_mib * 2**20 - idle) / args.memory_streams / 1024
            out[name] = per_stream
            line = (
                f"  {codec} {name:8} memory at {args.memory_streams} streams: idle "
                f"{idle / 2**20:.1f} MiB, loaded {p.rss_mib:.1f} MiB -> {per_stream:.0f} KiB/stream"
                f" (p99 {p.p99_ms:.2f} ms, lost {p.lost})"
            )
            print(line, flush=True)
            log.append(line)
        finally:
            server.stop()
    return out


def report(results: list[ServerResult], memory: dict[str, dict[str, float]]) -> str:
    lines = [
        "| codec | server | streams at p99 < 20 ms | ours / baseline | p99 ms | CPU µs/frame "
        "| lost | memory KiB/stream |",
        "|---|---|---|---|---|---|---|---|",
    ]
    # each server against the bare server of its transport: picows-* against picows-baseline
    baselines = {
        (r.codec, r.name.startswith("picows-")): r.best.streams
        for r in results
        if r.name in ("baseline", "picows-baseline") and r.best
    }
    for r in results:
        best = r.best
        base = baselines.get((r.codec, r.name.startswith("picows-")))
        ratio = f"{best.streams / base:.2f}x" if best and base else "-"
        mem = memory.get(r.codec, {}).get(r.name)
        lines.append(
            f"| {r.codec} | {r.name} | {best.streams if best else 'none'} | {ratio} "
            f"| {best.p99_ms:.2f} | {best.cpu_us_per_frame:.1f} | {best.lost} "
            f"| {'-' if mem is None else f'{mem:.0f}'} |"
            if best
            else f"| {r.codec} | {r.name} | none passed | - | - | - | - | - |"
        )
    bests = {(r.codec, r.name): r.best for r in results if r.best}
    for (codec, name), before in bests.items():  # --before: the twins' ratios
        after = bests.get((codec, name.removesuffix("@before")))
        if name.endswith("@before") and after:
            lines.append(
                f"\n{codec} {name.removesuffix('@before')} after/before: streams "
                f"{after.streams / before.streams:.2f}x, CPU µs/frame "
                f"{after.cpu_us_per_frame / before.cpu_us_per_frame:.2f}x"
            )
    for (codec, name), off in bests.items():  # the quality report's price
        on = bests.get((codec, name.replace("-noreports", "")))
        if name.endswith("-noreports") and on:
            lines.append(
                f"\n{codec} {name.replace('-noreports', '')} reports on/off: streams "
                f"{on.streams / off.streams:.2f}x, CPU µs/frame "
                f"{on.cpu_us_per_frame / off.cpu_us_per_frame:.2f}x"
            )
    return "\n".join(lines)


def export_tree(rev: str, work: Path) -> Path:
    """``git archive rev`` unpacked under ``work``: the code of ``--before``."""
    tree = work / "before"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="role")
    base = sub.add_parser("_baseline")
    base.add_argument("--codec", default="PCMU")
    base.add_argument("--port", type=int, default=0)
    base.add_argument("--loop", default="asyncio")
    base.add_argument("--transport", default="websockets", choices=["websockets", "picows"])
    gen = sub.add_parser("_generate")
    for name in ("port", "first", "count", "total", "frames"):
        gen.add_argument(f"--{name}", type=int, required=True)
    for name in ("t-start", "ramp"):
        gen.add_argument(f"--{name}", type=float, required=True)
    gen.add_argument("--codec", required=True)
    gen.add_argument("--run-id", required=True)
    parser.add_argument("--codec", nargs="+", default=["PCMU", "G722"], choices=["PCMU", "G722"])
    parser.add_argument(
        "--servers", nargs="+", default=["baseline", "noop", "record"],
        choices=[
            "baseline", "noop", "record", "noop-noreports", "record-noreports", "picows-baseline",
            "picows-noop", "picows-record", "picows-noop-noreports", "picows-record-noreports",
            "noop-webrtc", "noop-silero", "picows-noop-webrtc", "picows-noop-silero",
        ],
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="~60 s smoke run, small fixed N")
    parser.add_argument("--quick-streams", type=int, nargs="+", default=[100])
    parser.add_argument("--seconds", type=float, help="measured window per probe (10; --quick: 3)")
    parser.add_argument("--start", type=int, default=200, help="first N tried")
    parser.add_argument("--step", type=float, default=0.08, help="N grows by this fraction")
    parser.add_argument("--max-streams", type=int, default=4000)
    parser.add_argument("--generators", type=int, default=1, help="load generator processes")
    parser.add_argument("--memory-streams", type=int, default=500)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop"])
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--json", metavar="FILE", help="also write every probe as JSON")
    parser.add_argument(
        "--profile", metavar="DIR", type=Path,
        help="py-spy each probe's window into DIR (collapsed stacks; needs py-spy)",
    )  # fmt: skip
    parser.add_argument(
        "--before", metavar="REV",
        help="also run each mediastream server from git revision REV, as NAME@before",
    )  # fmt: skip
    args = parser.parse_args(argv)

    if args.role == "_baseline":
        run_baseline(args.port, args.codec, args.loop, args.transport)
        return 0
    if args.role == "_generate":
        run_generator(
            args.port, args.codec, args.first, args.count, args.total, args.t_start,
            args.ramp, args.frames, args.run_id,
        )  # fmt: skip
        return 0

    if args.seconds is None:
        args.seconds = 3.0 if args.quick else 10.0
    if args.quick:
        args.no_memory = True
    cores = os.sched_getaffinity(0)
    gen_cores = (cores - {args.server_core}) or cores
    started = time.monotonic()
    print(
        f"server on core {args.server_core}, load generators on {sorted(gen_cores)}; "
        f"{'quick' if args.quick else 'full'} run, {args.seconds:g} s windows",
        flush=True,
    )
    results: list[ServerResult] = []
    memory: dict[str, dict[str, float]] = {}
    log: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mediastream-load-") as tmp:
        work = Path(tmp)
        before = export_tree(args.before, work) if args.before else None
        args.variants = []  # (name, tree): each server, with its --before twin after it
        for name in args.servers:
            args.variants.append((name, REPO))
            new_flags = ("noreports", "webrtc", "silero")  # flags the --before tree lacks
            if before and name != "baseline" and not any(f in name for f in new_flags):
                args.variants.append((f"{name}@before", before))
        for codec in args.codec:
            servers: list[Server] = []
            try:
                for name, tree in args.variants:
                    servers.append(Server(name, codec, args.server_core, work, args.loop, tree))
                results.extend(find_capacities(servers, args, gen_cores, log))
            finally:
                for server in servers:
                    server.stop()
            if not args.no_memory:
                memory[codec] = measure_memory(codec, args, work, gen_cores, log)
    table = report(results, memory)
    print()
    print(table)
    print(f"\n{time.monotonic() - started:.0f} s")
    if args.json:
        payload = {
            "results": [{**asdict(r), "best": asdict(r.best) if r.best else None} for r in results],
            "memory_kib_per_stream": memory,
            "log": log,
        }
        Path(args.json).write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
