"""The ``mediastream`` command: serve, demo, simulate, bench, texml."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mediastream.handler import StreamHandler, StreamOptions
from mediastream.server.http import add_http_arguments, http_routes_from_args
from mediastream.server.websocket import DEFAULT_HOST, DEFAULT_PORT, MediaServer, ServerLimits
from mediastream.telnyx.texml import add_texml_command

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# serve --workers N: every line a worker logs says which worker (process) it comes from
WORKER_LOG_FORMAT = "%(asctime)s %(levelname)s [worker %(process)d] %(name)s: %(message)s"


def load_handler(spec: str) -> type[StreamHandler]:
    """``package.module:ClassName`` (or ``path/to/file.py:ClassName``) -> the handler class."""
    module_name, sep, class_name = spec.partition(":")
    if not sep or not class_name:
        raise SystemExit(f"--handler must look like module:Class, not {spec!r}")
    if module_name.endswith(".py"):
        path = Path(module_name).resolve()
        sys.path.insert(0, str(path.parent))
        module_name = path.stem
    module = importlib.import_module(module_name)
    handler = getattr(module, class_name, None)
    if not (isinstance(handler, type) and issubclass(handler, StreamHandler)):
        raise SystemExit(f"{spec!r} is not a StreamHandler subclass")
    return handler


# ------------------------------------------------------------------ serve


def cmd_serve(args: argparse.Namespace) -> int:
    worker = args.ready_fd is not None  # started by a --workers supervisor
    http = http_routes_from_args(args)  # a bad Telnyx flag fails here, before any worker
    if args.workers > 1 and not worker:
        return _serve_workers(args)
    handler = load_handler(args.handler) if args.handler else StreamHandler
    options = StreamOptions(
        record_dir=Path(args.record_dir) if args.record_dir else None,
        reorder_depth=args.reorder_depth,
        resume_grace_seconds=args.resume_grace,
        capture_dir=Path(args.capture_dir) if args.capture_dir else None,
        max_gap_seconds=args.max_gap_seconds,
        takeover_seconds=args.takeover_seconds,
        max_backlog_seconds=args.max_backlog_seconds,
    )
    limits = ServerLimits(
        max_frame_bytes=args.max_frame_bytes,
        max_streams=args.max_streams,
        handshake_seconds=args.handshake_timeout,
        auth_seconds=args.auth_timeout,
        idle_seconds=args.idle_timeout,
        ping_interval=args.ping_interval or None,
        ping_timeout=args.ping_interval or None,
        drain_seconds=args.drain_seconds,
    )
    token = args.auth_token or os.environ.get("MEDIASTREAM_AUTH_TOKEN") or None
    server = MediaServer(
        handler,
        host=args.host,
        port=args.port,
        options=options,
        limits=limits,
        auth_token=token,
        http=http,
        reuse_port=worker,
        metrics=not args.no_metrics,
    )

    def ready(srv: MediaServer) -> None:
        print(_ready_line(srv.host, srv.port, options.record_dir), flush=True)

    on_ready = ready
    if worker:
        from mediastream.server.workers import worker_ready

        on_ready = worker_ready(args.ready_fd, args.lifeline_fd)  # the supervisor prints it
    run_event_loop(server.serve_forever(on_ready=on_ready), args.loop)
    return 0


def run_event_loop(main: Coroutine[Any, Any, None], loop: str = "asyncio") -> None:
    """``asyncio.run``, or the same on uvloop (``--loop uvloop``)."""
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise SystemExit(
                "--loop uvloop needs uvloop: pip install 'mediastream[uvloop]'"
            ) from None
        uvloop.run(main)
    else:
        asyncio.run(main)


def _ready_line(host: str, port: int, record_dir: Path | None) -> str:
    where = f" recording to {record_dir}/" if record_dir else ""
    return f"mediastream: listening on ws://{host}:{port}/{where}"


def _serve_workers(args: argparse.Namespace) -> int:
    """``serve --workers N``: this process supervises N ``serve`` processes on one port."""
    from mediastream.server.workers import run_supervisor

    record_dir = Path(args.record_dir) if args.record_dir else None

    def ready(port: int) -> None:
        line = _ready_line(args.host, port, record_dir)
        print(f"{line} ({args.workers} workers)", flush=True)

    try:
        return run_supervisor(
            getattr(args, "argv", sys.argv[1:]),  # set by main()
            workers=args.workers,
            host=args.host,
            port=args.port,
            on_ready=ready,
        )
    except OSError as exc:  # the port is taken, the host unknown ...
        raise SystemExit(f"mediastream serve: {exc}") from None


# ------------------------------------------------------------------ demo


async def _demo(record_dir: Path, codec: str, seconds: float, realtime: bool) -> int:
    import soundfile

    from mediastream.simulate import codec_rate, plan_call, send_call, synthesize_speechlike

    rate = codec_rate(codec)
    clip = synthesize_speechlike(seconds, rate)
    plan = plan_call(clip, codec=codec, stream_id="demo-call")
    async with MediaServer(StreamHandler, host="127.0.0.1", port=0, record_dir=record_dir) as srv:
        path = record_dir / f"{plan.stream_id}.wav"
        path.unlink(missing_ok=True)  # a fresh demo, not a continuation of the last one
        url = f"ws://127.0.0.1:{srv.port}/demo"
        print(f"server on {url}; sending a {seconds:.1f} s {plan.codec} call ...", flush=True)
        await send_call(url, plan, realtime=realtime)
    info = soundfile.info(str(path))
    recorded, _ = soundfile.read(str(path), dtype="int16")
    expected = plan.expected_pcm()
    exact = np.array_equal(recorded, expected)
    print(f"recorded {path.resolve()}")
    print(
        f"  {info.duration:.2f} s, {info.samplerate} Hz, {info.channels} channel(s); "
        f"{'identical to' if exact else 'DIFFERS from'} the decoded audio that was sent"
    )
    return 0 if exact else 1


def cmd_demo(args: argparse.Namespace) -> int:
    record_dir = Path(args.record_dir)
    record_dir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_demo(record_dir, args.codec, args.seconds, args.realtime))


# ------------------------------------------------------------------ simulate


async def _simulate(args: argparse.Namespace) -> int:
    import soundfile

    from mediastream.simulate import (
        DEFAULT_SHUFFLE_WINDOW,
        FarEndConfig,
        codec_rate,
        load_audio,
        simulate,
        synthesize_speechlike,
    )

    rate = codec_rate(args.codec, args.l16_rate)
    audio = load_audio(args.audio, rate) if args.audio else synthesize_speechlike(3.0, rate)
    tracks = ("inbound", "outbound") if args.track == "both" else (args.track,)
    far_end = FarEndConfig(args.playback_mode, args.playback_codec, args.playback_rate)
    dtmf = [_parse_dtmf(spec) for spec in args.dtmf]
    results = await simulate(
        args.url,
        audio,
        calls=args.calls,
        realtime=args.realtime,
        stagger=args.stagger,
        codec=args.codec,
        sample_rate=rate,
        tracks=tracks,
        stream_id=args.stream_id,
        shuffle_window=DEFAULT_SHUFFLE_WINDOW if args.shuffle else 0,
        drop_rate=args.drop_rate,
        seed=args.seed,
        send_stop=not args.no_stop,
        far_end=far_end,
        dtmf=dtmf,
        linger=args.linger,
    )
    failed = 0
    for result in results:
        plan = result.plan
        lost = sum(len(s) for s in plan.dropped.values())
        note = f", closed by server (code {result.close_code})" if result.closed_by_server else ""
        failed += result.closed_by_server and result.close_code not in (None, 1000)
        print(
            f"{plan.stream_id}: {result.media_sent} media frames sent, "
            f"{lost} dropped on purpose{note}"
        )
        heard = result.far_end
        if heard is not None and heard.media_times:
            line = f"  heard {len(heard.heard_audio()) / heard.rate_of_heard():.2f} s back"
            line += f", {len(heard.marks_echoed)} marks echoed, {len(heard.clears)} clear(s)"
            if args.heard_dir:
                path = Path(args.heard_dir) / f"{plan.stream_id}.heard.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                soundfile.write(path, heard.heard_audio(), heard.rate_of_heard(), subtype="PCM_16")
                line += f"; written to {path}"
            print(line)
    return 1 if failed else 0


def _parse_dtmf(spec: str) -> tuple[float, str]:
    at, sep, digit = spec.partition(":")
    if not sep or not digit:
        raise SystemExit(f"--dtmf takes SECONDS:DIGIT, not {spec!r}")
    return float(at), digit


def cmd_simulate(args: argparse.Namespace) -> int:
    return asyncio.run(_simulate(args))


# ------------------------------------------------------------------ replay


def cmd_replay(args: argparse.Namespace) -> int:
    from mediastream.replay import replay_files

    results = asyncio.run(replay_files(args.files, args.url, fast=args.fast))
    for path, sent, code in results:
        note = f", closed by server with code {code}" if code not in (None, 1000) else ""
        print(f"{path}: {sent} frames replayed{note}")
    return 0


# ------------------------------------------------------------------ bench


def cmd_bench(args: argparse.Namespace) -> int:
    from mediastream.bench import main as bench_main

    return bench_main(args)


# ------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mediastream",
        description="Receive live phone-call audio from Telnyx media streaming over WebSocket.",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "serve",
        help="run the media server",
        description="Accept carrier WebSocket streams on any path (plus GET /healthz), decode "
        "their audio and hand it to a handler; optionally record every stream to WAV. "
        "Stops cleanly on Ctrl-C or SIGTERM, finishing every recording.",
    )
    p.add_argument("--host", default=DEFAULT_HOST, help="listen address (default %(default)s)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default %(default)s)")
    p.add_argument("--record-dir", metavar="DIR", help="write DIR/<stream_id>.wav per stream")
    p.add_argument(
        "--handler", metavar="module:Class", help="your StreamHandler subclass to run per stream"
    )
    p.add_argument(
        "--reorder-depth",
        type=int,
        default=8,
        help="frames held to reorder before a missing one counts as lost (default %(default)s)",
    )
    limits = ServerLimits()
    stream_defaults = StreamOptions()
    p.add_argument(
        "--auth-token",
        metavar="TOKEN",
        help="require this x-telnyx-streaming-auth-token (header or connected frame); "
        "also read from $MEDIASTREAM_AUTH_TOKEN, which keeps it out of the process list",
    )
    p.add_argument(
        "--resume-grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="a stream whose socket closed without stop may resume this long (%(default)s)",
    )
    p.add_argument("--capture-dir", metavar="DIR", help="write raw inbound frames as JSON lines")
    p.add_argument(
        "--max-frame-bytes",
        type=int,
        default=limits.max_frame_bytes,
        help="largest frame accepted; bigger closes the socket with 1009 (%(default)s)",
    )
    p.add_argument(
        "--max-streams",
        type=int,
        default=limits.max_streams,
        help="streams at most, live or suspended (waiting for a reconnect); more are refused "
        "with HTTP 503; lowered to what the file descriptor limit allows (%(default)s)",
    )
    p.add_argument(
        "--auth-timeout",
        type=float,
        default=limits.auth_seconds,
        metavar="SECONDS",
        help="with --auth-token and no token header, the first frame must carry it by then "
        "(%(default)s)",
    )
    p.add_argument(
        "--max-gap-seconds",
        type=float,
        default=stream_defaults.max_gap_seconds,
        metavar="SECONDS",
        help="a counter jump or first timestamp beyond this restarts the timeline instead of "
        "filling silence (%(default)s)",
    )
    p.add_argument(
        "--max-backlog-seconds",
        type=float,
        default=stream_defaults.max_backlog_seconds,
        metavar="SECONDS",
        help="audio per recording kept in memory while the disk refuses writes; more is "
        "counted and logged as lost (%(default)s)",
    )
    p.add_argument(
        "--takeover-seconds",
        type=float,
        default=stream_defaults.takeover_seconds,
        metavar="SECONDS",
        help="a second socket for a live stream id takes over once the first is closed or "
        "silent this long; refused if the first keeps sending (%(default)s)",
    )
    p.add_argument(
        "--handshake-timeout",
        type=float,
        default=limits.handshake_seconds,
        metavar="SECONDS",
        help="time for a client to complete the WebSocket handshake (%(default)s)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=limits.idle_seconds,
        metavar="SECONDS",
        help="close a socket that sends nothing this long, finishing its stream (%(default)s)",
    )
    p.add_argument(
        "--ping-interval",
        type=float,
        default=limits.ping_interval,
        metavar="SECONDS",
        help="keepalive ping period and timeout, to detect half-open sockets; 0 disables "
        "(%(default)s)",
    )
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=limits.drain_seconds,
        help="on SIGTERM, time live streams (and handler methods) get to finish before they "
        "are closed (and cancelled) (%(default)s)",
    )
    p.add_argument(
        "--loop",
        default="asyncio",
        choices=["asyncio", "uvloop"],
        help="event loop: asyncio or uvloop (extra [uvloop]) (%(default)s)",
    )
    p.add_argument(
        "--no-metrics",
        action="store_true",
        help="do not serve GET /metrics (Prometheus; summed over workers with --workers N)",
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="worker processes sharing the port (SO_REUSEPORT, Linux); a supervisor restarts "
        "any that dies and drains them all on SIGTERM (%(default)s: one process, no supervisor)",
    )
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)  # set by the supervisor
    p.add_argument("--lifeline-fd", type=int, help=argparse.SUPPRESS)  # set by the supervisor
    add_http_arguments(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "demo",
        help="server + one simulated call in one process; writes a WAV",
        description="Start a server on a free local port, send it one simulated call and "
        "print the path and length of the WAV it recorded.",
    )
    p.add_argument("--record-dir", default="recordings", help="where the WAV goes (%(default)s)")
    p.add_argument("--codec", default="PCMU", help="codec of the simulated call (%(default)s)")
    p.add_argument("--seconds", type=float, default=3.0, help="length of the call (%(default)s)")
    p.add_argument("--realtime", action="store_true", help="pace frames in real time")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "simulate",
        help="send carrier-like calls to a server",
        description="Act as the carrier: send connected/start/media/stop frames to URL, built "
        "from an audio file (any format and rate soundfile reads).",
    )
    p.add_argument("url", help="server WebSocket URL, e.g. ws://127.0.0.1:8765/stream")
    p.add_argument("--audio", metavar="FILE", help="audio to send (default: a synthesized voice)")
    p.add_argument("--codec", default="PCMU", help="PCMU, PCMA, G722 or L16 (%(default)s)")
    p.add_argument("--l16-rate", type=int, default=16000, help="L16 sample rate (%(default)s)")
    p.add_argument("--track", default="inbound", choices=["inbound", "outbound", "both"])
    p.add_argument("--calls", type=int, default=1, help="concurrent calls (%(default)s)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--realtime", action="store_true", help="one frame per 20 ms per track")
    pace.add_argument("--fast", action="store_true", help="as fast as possible (default)")
    p.add_argument("--stagger", type=float, default=0.0, help="seconds between call starts")
    p.add_argument("--shuffle", action="store_true", help="reorder frames within small windows")
    p.add_argument("--drop-rate", type=float, default=0.0, help="fraction of frames to drop")
    p.add_argument("--seed", type=int, default=0, help="seed for shuffle and drops")
    p.add_argument("--stream-id", help="stream id (with --calls N: ID-1 .. ID-N)")
    p.add_argument("--no-stop", action="store_true", help="close the socket without a stop frame")
    far = p.add_argument_group(
        "far end (bidirectional)",
        "what the simulated carrier does with audio the server sends back: plays it in real "
        "time, echoes marks when the audio before them has played, honours clear",
    )
    far.add_argument("--playback-mode", default="rtp", choices=["rtp", "mp3"])
    far.add_argument("--playback-codec", default="PCMU", help="bidirectionalCodec (%(default)s)")
    far.add_argument("--playback-rate", type=int, default=8000, help="its rate (%(default)s)")
    far.add_argument("--heard-dir", metavar="DIR", help="write what the caller heard as WAV")
    far.add_argument(
        "--dtmf", action="append", default=[], metavar="SECONDS:DIGIT", help="press a key"
    )
    far.add_argument(
        "--linger", type=float, default=1.0, help="seconds to stay after the audio (%(default)s)"
    )
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "replay",
        help="send captured frames to a server with their original timing",
        description="Replay capture files written by serve --capture-dir (one socket per "
        "file, in the order given), with the original timing or as fast as possible.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="capture file(s), .jsonl")
    p.add_argument("url", help="server WebSocket URL")
    p.add_argument("--fast", action="store_true", help="ignore the original timing")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser(
        "bench",
        help="codec throughput against the reference implementations installed",
        description="Time decode and encode of 20 ms frames for each codec, side by side with "
        "every installed anchor (audioop, the G722 package, PyAV), and print the ratios.",
    )
    p.add_argument("--codec", action="append", help="codec to measure (repeatable; default all)")
    p.add_argument("--seconds", type=float, default=1.0, help="time per measurement (%(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_bench)

    add_texml_command(sub)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for serve --workers N
    worker = getattr(args, "ready_fd", None) is not None
    logging.basicConfig(
        level=args.log_level.upper(), format=WORKER_LOG_FORMAT if worker else LOG_FORMAT
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
