"""Server CPU per media frame: ``MediaConnection``'s inbox against websockets' ``async for``.

``server/connection.py`` overrides websockets' private ``process_event`` so that complete
messages go into a deque (``ws.inbox``) that the stream's task pops after
``ws.wait_for_messages()``, instead of websockets' public path (``recv()`` / ``async for
message in ws``, through its assembler). This measures what that saves, in one run, with two
server processes built on ``websockets.asyncio.server.serve`` (same settings):

- ``A``: ``create_connection=MediaConnection``, read as ``server/websocket.py``'s ``_read``
  does (``wait_for_messages()``, then pop ``inbox`` until empty);
- ``B``: a plain ``ServerConnection``, read with ``async for message in ws``;
- ``C`` (only with ``--variants``): ``HttpBodyConnection`` (the class ``MediaConnection``
  extends, what the server would keep for its HTTP routes) read with ``async for``.

Both hand every message to a real ``mediastream.session.Session().receive_text`` (the media
fast path's JSON validation, base64 and PCMU decode) and do nothing else. The servers share one
core; the load generator runs in its own process on the other core(s), with pre-encoded PCMU
payloads (a speech-like signal) in Telnyx frames (``connected``, ``start``, ``media``...,
``stop``). Loads:

- ``paced``: ``--streams`` sockets (200), each one 20 ms frame every 20 ms, phases spread;
- ``flat``: one socket sending flat out (the server is the bottleneck): frames/s;
- ``flatN``: ``--streams`` sockets, all flat out (many frames per read and per wake-up).

Rounds alternate A/B/A/B... per load (``--paced-rounds`` / ``--rounds`` each). In each round
the server process itself reports ``getrusage(RUSAGE_SELF)`` and its sessions' frame counts at
the start and the end of a window that begins once every socket is open and streaming: the
metric is server CPU milliseconds per 1,000 frames (= µs per frame). Reported: per-round values,
median and min-max per variant, and B/A as the ratio of the medians and as the median (min-max)
of each B round over the mean of the A rounds either side of it.

On a shared machine a core's speed changes from one second to the next (other processes, their
caches, the hypervisor), by more than the difference sought. Hence two more loads, ``paced2``
and ``flat2``, where every server gets the same load (half the paced sockets, or one flat-out
socket) at the same time, on the same core, from its own client process: each window's B/A is
then taken under one noise. (Each server also wakes the other's caches up cold, so costs per
frame there are not those of a server alone; the ratio is what they are for.) "sleeps/1k" is
the server's voluntary context switches per 1,000 frames (how often its loop went idle: lower
means more frames per wake-up), "preempted" its involuntary ones in the window.

    python benchmarks/read_path.py                        # about 4.5 minutes
    python benchmarks/read_path.py --rounds 3 --window 2  # a quick look
    python benchmarks/read_path.py --variants A B C --loads paced
    PYTHONPATH=<checkout> python benchmarks/read_path.py  # that checkout's mediastream

Linux (CPU affinity, getrusage). Loopback only; every process it starts stops by itself
(servers exit when their stdin closes or after ``--budget`` plus a margin).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import heapq
import importlib.util
import json
import os
import platform
import re
import select
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
if importlib.util.find_spec("mediastream") is None:  # PYTHONPATH=<checkout> wins
    sys.path.insert(0, str(REPO))
FRAME_SECONDS = 0.020
PAYLOADS = 50  # distinct 20 ms payloads, cycled
RCVBUF = 64 * 1024  # the servers' socket receive buffer (the kernel doubles it)
SNDBUF = {"paced": None, "flat": 4 << 20, "flatN": 128 << 10}  # the client's, per socket

MEDIA_TEMPLATE = (
    '{"event":"media","sequence_number":"%d","media":{"track":"inbound","chunk":"%d",'
    '"timestamp":"%d","payload":"%s"},"stream_id":"%s"}'
)


# ====================================================================== the servers


def run_server(variant: str, max_seconds: float) -> None:
    """One server; prints ``listening <port>``, then answers ``snap`` lines on stdin with a
    JSON line (frames read so far, CPU seconds, wall time). Exits at stdin's end."""
    import asyncio
    import gc
    import resource

    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosedError

    from mediastream.session import Session

    try:  # the layout after the websockets hooks moved into one module
        from mediastream.server._websockets_private import (
            HttpBodyConnection,
            InvalidText,
            MediaConnection,
        )
    except ImportError:  # before: server/connection.py and server/http.py
        from mediastream.server.connection import InvalidText, MediaConnection
        from mediastream.server.http import HttpBodyConnection

    live: set[Session] = set()
    done = {"frames": 0, "media": 0, "audio_bytes": 0, "errors": 0, "sockets": 0}

    def retire(session: Session) -> None:
        live.discard(session)
        stats = session.stats
        done["frames"] += stats.frames
        done["media"] += stats.media_frames
        done["audio_bytes"] += stats.audio_bytes
        done["errors"] += stats.errors
        done["sockets"] += 1

    async def handle_inbox(ws: MediaConnection) -> None:  # server/websocket.py's _read
        session = Session()
        live.add(session)
        receive, inbox = session.receive_text, ws.inbox
        try:
            while await ws.wait_for_messages():
                while inbox:
                    message = inbox.popleft()
                    if isinstance(message, InvalidText):
                        await ws.close(1007, "invalid UTF-8")
                        return
                    receive(message)
        finally:
            retire(session)

    async def handle_iter(ws: ServerConnection) -> None:  # the public path
        session = Session()
        live.add(session)
        receive = session.receive_text
        try:
            async for message in ws:
                receive(message)
        except ConnectionClosedError:  # a flat-out round ends with a reset
            pass
        finally:
            retire(session)

    handler, connection_class = {
        "A": (handle_inbox, MediaConnection),
        "B": (handle_iter, ServerConnection),
        "C": (handle_iter, HttpBodyConnection),
    }[variant]

    def snapshot() -> dict[str, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out: dict[str, float] = {
            "wall": time.monotonic(),
            "cpu": usage.ru_utime + usage.ru_stime,
            "nivcsw": usage.ru_nivcsw,
            "nvcsw": usage.ru_nvcsw,
            "live": len(live),
        }
        for key in ("frames", "media", "audio_bytes", "errors", "sockets"):
            out[key] = done[key]
        for session in live:
            stats = session.stats
            out["frames"] += stats.frames
            out["media"] += stats.media_frames
            out["audio_bytes"] += stats.audio_bytes
            out["errors"] += stats.errors
        return out

    def warm() -> None:  # pydantic's validator and the PCMU decoder, once
        payload = base64.b64encode(bytes(range(160))).decode()
        session = Session()
        session.receive_text(json.dumps({"event": "connected", "version": "1.0.0"}))
        session.receive_text(
            json.dumps(
                {"event": "start", "stream_id": "w", "start": {"media_format": {
                    "encoding": "PCMU", "sample_rate": 8000, "channels": 1}}}
            )
        )  # fmt: skip
        for k in range(20):
            session.receive_text(MEDIA_TEMPLATE % (k + 2, k + 1, k * 20, payload, "w"))
        assert session.stats.errors == 0, "warm-up frames were refused"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        warm()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        async with serve(
            handler,
            "127.0.0.1",
            0,
            create_connection=connection_class,
            compression=None,
            max_size=1 << 20,
            ping_interval=None,
            open_timeout=30,
        ) as server:
            # A fixed receive buffer, inherited by every accepted socket (both servers alike): a
            # flat-out round leaves at most this much per socket unread in the kernel, drained
            # in well under a second, where autotuning would let it grow to megabytes. A paced
            # socket never fills it.
            server.sockets[0].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            gc.freeze()  # as MediaServer.serve_forever does
            port = server.sockets[0].getsockname()[1]
            print(f"listening {port}", flush=True)
            deadline = loop.time() + max_seconds
            while loop.time() < deadline:
                try:
                    line = await asyncio.wait_for(reader.readline(), deadline - loop.time())
                except TimeoutError:
                    break
                if not line:
                    break
                if line.strip() == b"snap":
                    print(json.dumps(snapshot()), flush=True)

    asyncio.run(main())


# ====================================================================== the load generator


def _ws_frame(text: str) -> bytes:
    """A masked client text frame with a zero mask key (the payload goes as is)."""
    data = text.encode()
    size = len(data)
    if size < 126:
        header = struct.pack("!BB", 0x81, 0x80 | size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, size)
    return header + b"\x00\x00\x00\x00" + data


CLOSE_FRAME = b"\x88\x82\x00\x00\x00\x00\x03\xe8"  # masked close, code 1000


def _handshake(port: int, sndbuf: int | None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if sndbuf:  # flat out, the kernel keeps sending from here while the client sleeps
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /bench HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
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
    return sock


def _opening(stream_id: str) -> bytes:
    connected = {"event": "connected", "version": "1.0.0"}
    start = {
        "event": "start",
        "sequence_number": "1",
        "stream_id": stream_id,
        "start": {
            "call_control_id": f"v3:{stream_id}",
            "custom_parameters": {},
            "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
        },
    }
    return _ws_frame(json.dumps(connected)) + _ws_frame(json.dumps(start))


def _closing(stream_id: str, sequence: int) -> bytes:
    stop = {"event": "stop", "sequence_number": str(sequence), "stream_id": stream_id}
    return _ws_frame(json.dumps(stop)) + CLOSE_FRAME


def _media(stream_id: str, k: int, payloads: list[str]) -> bytes:
    return _ws_frame(
        MEDIA_TEMPLATE % (k + 2, k + 1, k * 20, payloads[k % len(payloads)], stream_id)
    )


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


def _abort(socks: list[socket.socket]) -> None:
    """End flat-out streams with a reset: what the client's send buffers still hold is
    dropped, not sent; the server reads what its own buffer holds, then the reset."""
    for sock in socks:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def _finish(socks: list[socket.socket], ids: list[str], sent: list[int],
            pending: dict[int, bytes]) -> int:  # fmt: skip
    """Send every stream's stop and close, wait for the server's close; unsent streams."""
    for i, sock in enumerate(socks):
        _send(sock, i, _closing(ids[i], sent[i] + 2), pending)
    deadline = time.monotonic() + 20
    while pending and time.monotonic() < deadline:
        for i in list(pending):
            _send(socks[i], i, b"", pending)
        time.sleep(0.005)
    for sock in socks:
        sock.setblocking(True)
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass
        sock.close()
    return len(pending)


def run_client(port: int, mode: str, streams: int, seconds: float, payload_file: str) -> None:
    """Open the sockets, print ``streaming <t0>``, send for ``seconds``, then stop and close.
    Prints a JSON report last."""
    payloads = json.loads(Path(payload_file).read_text())
    count = 1 if mode == "flat" else streams
    run = f"{os.getpid()}"
    ids = [f"{mode}-{run}-{i}" for i in range(count)]
    socks = []
    for stream_id in ids:
        sock = _handshake(port, SNDBUF[mode])
        sock.sendall(_opening(stream_id))
        sock.setblocking(False)
        socks.append(sock)
    pending: dict[int, bytes] = {}
    sent = [0] * count
    lateness: list[float] = []
    t0 = time.monotonic() + 0.05
    t_end = t0 + seconds
    print(f"streaming {t0!r}", flush=True)
    if mode == "paced":
        due_frames = [(t0 + FRAME_SECONDS * i / count, i) for i in range(count)]
        heapq.heapify(due_frames)
        next_flush = time.monotonic()
        while due_frames:
            due, i = due_frames[0]
            now = time.monotonic()
            if due - now > 0.0005:
                if pending and now >= next_flush:
                    for j in list(pending):
                        _send(socks[j], j, b"", pending)
                    next_flush = now + 0.002
                    continue
                time.sleep(due - now)
                now = time.monotonic()
            lateness.append(now - due)
            _send(socks[i], i, _media(ids[i], sent[i], payloads), pending)
            sent[i] += 1
            if due + FRAME_SECONDS < t_end:
                heapq.heapreplace(due_frames, (due + FRAME_SECONDS, i))
            else:
                heapq.heappop(due_frames)
    else:  # flat out: batches of frames to whichever socket can take them
        batch = 32
        selector = selectors.DefaultSelector()
        for i, sock in enumerate(socks):
            selector.register(sock, selectors.EVENT_WRITE, i)
        while time.monotonic() < t_end:
            for key, _ in selector.select(timeout=0.05):
                i = key.data
                if i in pending:
                    _send(socks[i], i, b"", pending)
                    continue
                k = sent[i]
                data = b"".join(_media(ids[i], k + n, payloads) for n in range(batch))
                sent[i] += batch
                _send(socks[i], i, data, pending)
        selector.close()
    if mode == "paced":
        unsent = _finish(socks, ids, sent, pending)
    else:
        _abort(socks)
        unsent = 0
    late_ms = sorted(x * 1000 for x in lateness) or [0.0]
    report = {
        "sent": sum(sent),
        "late_p99_ms": late_ms[min(len(late_ms) - 1, int(0.99 * len(late_ms)))],
        "unsent_streams": unsent,
    }
    print(json.dumps(report), flush=True)


# ====================================================================== the driver


class ServerProcess:
    def __init__(self, variant: str, core: set[int], max_seconds: float) -> None:
        self.variant = variant
        path = [p for p in (os.environ.get("PYTHONPATH"), str(REPO)) if p]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE), "_server", variant, "--max-seconds", str(max_seconds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
            preexec_fn=(lambda: os.sched_setaffinity(0, core)) if core else None,
        )
        line = _readline(self.proc, 60)
        match = re.match(r"listening (\d+)", line)
        if not match:
            self.stop()
            raise RuntimeError(f"server {variant} did not start: {line!r}")
        self.port = int(match.group(1))

    def snap(self) -> dict[str, float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("snap\n")
        self.proc.stdin.flush()
        return json.loads(_readline(self.proc, 30))

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # our own child, by its Popen
            self.proc.wait()


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError(f"no output from {proc.args} in {timeout} s")
    return proc.stdout.readline()


def _payloads(path: Path) -> None:
    """Base64 payloads of a speech-like signal, PCMU-encoded by mediastream (20 ms each)."""
    from mediastream.simulate import encode_frames, synthesize_speechlike

    pcm = synthesize_speechlike(PAYLOADS * FRAME_SECONDS, 8000)
    frames = encode_frames(pcm, "PCMU", 8000)[:PAYLOADS]
    path.write_text(json.dumps([base64.b64encode(p).decode() for p in frames]))


def one_round(
    servers: list[ServerProcess], load: str, args: argparse.Namespace, payload_file: Path,
    client_cores: set[int], settle: float, window: float,
) -> list[dict[str, float]]:  # fmt: skip
    """One window of ``load`` on each of ``servers`` at the same time (one client process
    each): the measurements, in the order of ``servers``."""
    mode = load.rstrip("2")
    streams = {"paced": args.streams, "paced2": args.streams // 2, "flatN": args.streams}
    seconds = settle + window + 0.3
    began = time.monotonic()
    clients = []
    try:
        for server in servers:
            command = [
                sys.executable, str(HERE), "_client", str(server.port), mode,
                "--streams", str(streams.get(load, 1)), "--seconds", str(seconds),
                "--payloads", str(payload_file),
            ]  # fmt: skip
            clients.append(
                subprocess.Popen(
                    command,
                    stdout=subprocess.PIPE,
                    text=True,
                    preexec_fn=(lambda: os.sched_setaffinity(0, client_cores))
                    if client_cores
                    else None,
                )
            )
        t0 = 0.0
        for client in clients:
            line = _readline(client, 60)
            match = re.match(r"streaming (\S+)", line)
            if not match:
                raise RuntimeError(f"client did not start: {line!r}")
            t0 = max(t0, float(match.group(1)))
        time.sleep(max(0.0, t0 + settle - time.monotonic()))
        firsts = [server.snap() for server in servers]
        time.sleep(max(0.0, firsts[0]["wall"] + window - time.monotonic()))
        lasts = [server.snap() for server in servers]
        reports = [json.loads(_readline(client, seconds + 40)) for client in clients]
        for client in clients:
            client.wait(10)
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()  # our own child, by its Popen
                client.wait()
    deadline = time.monotonic() + 30  # the next round starts on an idle core
    for server in servers:
        while server.snap()["live"] and time.monotonic() < deadline:
            time.sleep(0.05)
    return [
        _measurement(first, last, report, time.monotonic() - began)
        for first, last, report in zip(firsts, lasts, reports, strict=True)
    ]


def _measurement(first: dict[str, float], last: dict[str, float], report: dict[str, float],
                 seconds: float) -> dict[str, float]:  # fmt: skip
    frames = last["frames"] - first["frames"]
    cpu = last["cpu"] - first["cpu"]
    wall = last["wall"] - first["wall"]
    return {
        "frames": frames,
        "cpu_ms_per_1k": cpu / frames * 1e6 if frames else float("nan"),
        "frames_per_s": frames / wall,
        "cpu_share": cpu / wall,
        "nivcsw": last["nivcsw"] - first["nivcsw"],
        "sleeps_per_1k": (last["nvcsw"] - first["nvcsw"]) / frames * 1000 if frames else 0.0,
        "round_seconds": seconds,
        "errors": last["errors"] - first["errors"],
        "bytes_per_media": (last["audio_bytes"] - first["audio_bytes"])
        / max(1, last["media"] - first["media"]),
        "client_sent": report["sent"],
        "client_late_p99_ms": report["late_p99_ms"],
        "unsent_streams": report["unsent_streams"],
    }


def _pair_ratios(a: list[float], b: list[float], together: bool) -> list[float]:
    """Round by round B/A. Alternating, each B round (run right after A round i) is set
    against the mean of A rounds i and i+1, either side of it, so that a steady drift of the
    machine cancels out; together, against the A window it shared."""
    out = []
    for i, value in enumerate(b[: len(a)]):
        around = a[i : i + 1] if together else a[i : i + 2]
        mean = sum(around) / len(around)
        out.append(value / mean if mean else float("nan"))
    return out


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):8.2f}  ({min(values):.2f}-{max(values):.2f})"


LOADS = {  # in the order they run
    "paced": "{streams} sockets, one 20 ms PCMU frame each every 20 ms; A/B alternating",
    "paced2": "{half} paced sockets on each server, all servers at once (one core, one noise)",
    "flat": "1 socket, flat out; A/B alternating",
    "flat2": "1 flat-out socket on each server, all servers at once (sharing the core)",
    "flatN": "{streams} sockets, all flat out; A/B alternating",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds per variant, flat loads (6)")
    parser.add_argument("--paced-rounds", type=int, default=8, help="the same, paced (8)")
    parser.add_argument("--streams", type=int, default=200, help="sockets of the paced load (200)")
    parser.add_argument("--window", type=float, default=3.0, help="measured seconds per round (3)")
    parser.add_argument("--loads", nargs="+", default=list(LOADS), choices=list(LOADS))
    parser.add_argument("--variants", nargs="+", default=["A", "B"], choices=["A", "B", "C"])
    parser.add_argument("--budget", type=float, default=300.0,
                        help="start no round after this many seconds (300)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write every round here")
    args = parser.parse_args()
    started = time.monotonic()

    cores = sorted(os.sched_getaffinity(0))
    server_cores = {cores[0]} if len(cores) > 1 else set()
    client_cores = set(cores[1:]) if len(cores) > 1 else set()
    if client_cores:
        os.sched_setaffinity(0, client_cores)  # the driver mostly sleeps; keep core 0 free

    import websockets

    import mediastream

    print(f"mediastream from {Path(mediastream.__file__).parent}")
    print(
        f"python {platform.python_version()}, websockets {websockets.__version__}, "
        f"{len(cores)} cores; servers on {sorted(server_cores) or 'any'}, "
        f"clients on {sorted(client_cores) or 'any'}"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f} (other processes share this machine)")
    print(f"variants {args.variants}, loads {args.loads}, {args.paced_rounds} paced and "
          f"{args.rounds} flat rounds each, {args.window:g} s windows", flush=True)  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="read_path-"))
    payload_file = work / "payloads.json"
    _payloads(payload_file)
    servers: dict[str, ServerProcess] = {}
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    try:
        for variant in args.variants:
            servers[variant] = ServerProcess(variant, server_cores, args.budget + 120)
        for variant in args.variants:  # warm-up, not measured
            one_round([servers[variant]], "paced", args, payload_file, client_cores, 0.5, 1.0)
        for load in args.loads:
            together = load.endswith("2")
            settle = 1.0 if load.startswith("paced") else 0.5
            results[load] = {v: [] for v in args.variants}
            text = LOADS[load].format(streams=args.streams, half=args.streams // 2)
            print(f"\n{load}: {text}")
            print("  round var   frames  cpu ms/1k frames  frames/s  cpu share  "
                  "sleeps/1k  preempted  client p99 late ms  round s")  # fmt: skip
            for n in range(args.paced_rounds if load.startswith("paced") else args.rounds):
                if time.monotonic() - started > args.budget:
                    print(f"  budget of {args.budget:g} s spent: no more rounds")
                    break
                groups = [args.variants] if together else [[v] for v in args.variants]
                for group in groups:
                    measured = one_round([servers[v] for v in group], load, args, payload_file,
                                         client_cores, settle, args.window)  # fmt: skip
                    for variant, r in zip(group, measured, strict=True):
                        results[load][variant].append(r)
                        _print_round(n, variant, r)
    finally:
        for server in servers.values():
            server.stop()
        with contextlib.suppress(OSError):
            payload_file.unlink()
            work.rmdir()

    print("\nsummary: median (min-max) over rounds; B/A: ratio of the medians, then the median "
          "(min-max) of the round-by-round ratios")  # fmt: skip
    for load, per_variant in results.items():
        metrics = ["cpu_ms_per_1k"] + (["frames_per_s"] if "flat" in load else [])
        for metric in metrics:
            label = "cpu ms/1k frames" if metric == "cpu_ms_per_1k" else "frames/s"
            for variant, rounds in per_variant.items():
                if rounds:
                    values = [r[metric] for r in rounds]
                    print(f"  {load:6s} {label:16s} {variant}    {_summary(values)}")
            a_values = [r[metric] for r in per_variant.get("A", [])]
            for other in (v for v in per_variant if v != "A"):
                values = [r[metric] for r in per_variant[other]]
                if not values or not a_values:
                    continue
                pairs = _pair_ratios(a_values, values, load.endswith("2"))
                of_medians = statistics.median(values) / statistics.median(a_values)
                print(
                    f"  {load:6s} {label:16s} {other}/A  {of_medians:8.3f}  "
                    f"rounds {statistics.median(pairs):.3f} ({min(pairs):.3f}-{max(pairs):.3f})"
                )
    print(f"\nrun took {time.monotonic() - started:.0f} s; load average after: "
          f"{os.getloadavg()[0]:.2f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def _print_round(n: int, variant: str, r: dict[str, float]) -> None:
    flags = []
    if r["errors"]:
        flags.append(f"{r['errors']:.0f} session errors")
    if r["unsent_streams"]:
        flags.append(f"{r['unsent_streams']} streams not sent to the end")
    if r["bytes_per_media"] != 160:
        flags.append(f"{r['bytes_per_media']:.1f} bytes per frame")
    print(
        f"  {n + 1:5d}  {variant}  {r['frames']:8.0f}  {r['cpu_ms_per_1k']:16.2f}"
        f"  {r['frames_per_s']:8.0f}  {r['cpu_share'] * 100:8.1f}%"
        f"  {r['sleeps_per_1k']:9.0f}  {r['nivcsw']:9.0f}"
        f"  {r['client_late_p99_ms']:18.2f}  {r['round_seconds']:7.1f}"
        + (f"  ! {'; '.join(flags)}" if flags else ""),
        flush=True,
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_server":
        sub = argparse.ArgumentParser()
        sub.add_argument("cmd")
        sub.add_argument("variant", choices=["A", "B", "C"])
        sub.add_argument("--max-seconds", type=float, default=600.0)
        a = sub.parse_args()
        run_server(a.variant, a.max_seconds)
    elif len(sys.argv) > 1 and sys.argv[1] == "_client":
        sub = argparse.ArgumentParser()
        sub.add_argument("cmd")
        sub.add_argument("port", type=int)
        sub.add_argument("mode", choices=["paced", "flat", "flatN"])
        sub.add_argument("--streams", type=int, default=200)
        sub.add_argument("--seconds", type=float, default=6.0)
        sub.add_argument("--payloads", required=True)
        a = sub.parse_args()
        run_client(a.port, a.mode, a.streams, a.seconds, a.payloads)
    else:
        main()
