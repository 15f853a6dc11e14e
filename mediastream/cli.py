"""The ``mediastream`` command: serve, demo, simulate, replay, bench, inspect, texml."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import socket
import sys
import traceback
from collections.abc import Awaitable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import numpy as np

from mediastream import __version__
from mediastream.cli_http import (
    add_http_arguments,
    check_handler_playback,
    http_routes_from_args,
    log_instance,
    playback_from_stream,
)
from mediastream.config import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    INSTANCE_ID_ENV,
    INSTANCE_ID_RULE,
    Config,
    HttpLimits,
    PlaybackConfig,
    ServerLimits,
    SpeechOptions,
    StreamOptions,
    UploadOptions,
    default_instance_id,
)
from mediastream.errors import MediaStreamError, UsageError, install_hint
from mediastream.logs import LOG_FORMAT, configure_logging
from mediastream.runtime.handler import StreamHandler
from mediastream.server.base import TRANSPORTS, CoreServer, server_class
from mediastream.server.routes import CALLBACK_PATH, METRICS_PATH, TEXML_PATH
from mediastream.server.websocket import MediaServer
from mediastream.telnyx.texml import add_texml_command

# serve --workers N: every line a worker logs says which worker (process) it comes from
WORKER_LOG_FORMAT = "%(asctime)s %(levelname)s [worker %(process)d] %(name)s: %(message)s"
T = TypeVar("T")


def load_handler(spec: str) -> type[StreamHandler]:
    """``package.module:ClassName`` (or ``path/to/file.py:ClassName``) -> the handler class.

    The current directory goes first on ``sys.path``, as ``python -m`` would put it: the
    console script does not, so ``--handler my_bot:Bot`` next to ``my_bot.py`` failed. Every
    way this can fail is a ``UsageError`` of one line (the module, the class, where Python
    looked), since a 25-line traceback from importlib hides the one thing to fix.
    """
    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name:
        raise UsageError(f"--handler must look like module:Class or path/to/file.py:Class, "
                         f"not {spec!r}")  # fmt: skip
    if module_name.endswith(".py") or os.sep in module_name:
        path = Path(module_name).resolve()
        if not path.is_file():
            raise UsageError(f"--handler {spec}: no such file {str(path)!r}")
        search = str(path.parent)
        module_name = path.stem
    else:
        search = os.getcwd()
    if search in sys.path:
        sys.path.remove(search)
    sys.path.insert(0, search)
    where = f"search path: {', '.join(p or '.' for p in sys.path)}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise UsageError(
                f"--handler {spec}: cannot find module {module_name!r} (for class "
                f"{class_name!r}); {where}"
            ) from None
        raise UsageError(_import_failure(spec, exc)) from None
    except (ImportError, SyntaxError) as exc:
        raise UsageError(_import_failure(spec, exc)) from None
    origin = getattr(module, "__file__", None) or module_name
    handler = getattr(module, class_name, None)
    if handler is None:
        raise UsageError(
            f"--handler {spec}: module {module_name!r} ({origin}) has no class {class_name!r}; "
            f"{where}"
        )
    if not (isinstance(handler, type) and issubclass(handler, StreamHandler)):
        raise UsageError(
            f"--handler {spec}: {class_name!r} in module {module_name!r} ({origin}) is not a "
            f"subclass of mediastream.StreamHandler; {where}"
        )
    return handler


def _import_failure(spec: str, exc: ImportError | SyntaxError) -> str:
    """One line for an error raised while the user's module ran: what, and its file:line."""
    if isinstance(exc, SyntaxError) and exc.filename:
        place = f"{exc.filename}:{exc.lineno}"
        detail = f"SyntaxError: {exc.msg}"
    else:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if not
                  f.filename.startswith("<frozen")]  # fmt: skip
        place = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        detail = f"{type(exc).__name__}: {exc}"
    return f"--handler {spec}: importing it failed at {place}: {detail}"


# ------------------------------------------------------------------ serve


def cmd_serve(args: argparse.Namespace) -> int:
    worker = args.ready_fd is not None  # started by a --workers supervisor
    if args.http_port is not None and args.transport != "picows":
        raise UsageError("--http-port is for --transport picows (websockets serves every route)")
    if args.http_port == 0 and args.workers > 1:
        raise UsageError("--http-port 0 with --workers: give a port number, the workers share it")
    args.instance_id = instance_id_from_args(args)  # workers get it in their argv or env
    http = http_routes_from_args(args)  # a bad Telnyx flag fails here, before any worker
    handler = load_handler(args.handler) if args.handler else StreamHandler  # and before any
    if args.record_dir and not worker:  # the supervisor probes once for all its workers
        probe_record_dir(Path(args.record_dir))
    if args.upload is not None:
        check_upload(args)  # a bad URL, no --record-dir, no [s3] extra: one line, now
    if args.workers > 1 and not worker:
        return _serve_workers(args)
    # one setting: the flags that write /texml's bidirectional attributes drive the players too
    playback = playback_from_stream(http.stream)
    check_handler_playback(handler, playback)
    log_instance(args.instance_id)
    config = config_from_args(args, playback)
    check_speech_detector(handler.speech or config.stream.speech)
    options = config.stream
    transport = server_class(args.transport)
    server = transport(handler, config=config, http=http, reuse_port=worker)

    listening = False

    def ready(srv: CoreServer) -> None:
        nonlocal listening
        listening = True
        print(_ready_line(srv.host, srv.port, options.record_dir), flush=True)
        if getattr(srv, "http_port", None):  # picows: the routes that take a body are here
            print(f"mediastream: HTTP routes on http://{srv.host}:{srv.http_port}/", flush=True)

    on_ready = ready
    if worker:
        from mediastream.server.workers import worker_ready

        on_ready = worker_ready(args.ready_fd, args.lifeline_fd)  # the supervisor prints it
    # gc.freeze() comes in MediaCore.start, after the codecs' warm-up and the speech modules
    try:
        run_event_loop(server.serve_forever(on_ready=on_ready), args.loop)
    except OSError as exc:
        if listening or worker:  # after start-up an OSError is not the user's flag
            raise
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {_os_reason(exc)}") from None
    return 0


def check_speech_detector(speech: SpeechOptions | None) -> None:
    """A detector whose extra is missing (or whose model does not load) stops ``serve`` at
    start-up, in one line, not at the first call."""
    if speech is None:
        return
    from mediastream.voice.detect import make_detector

    try:
        make_detector(speech, 8000).close()
    except MediaStreamError as exc:
        raise UsageError(str(exc)) from None


def config_from_args(args: argparse.Namespace, playback: PlaybackConfig) -> Config:
    """The ``Config`` the ``serve`` flags describe (their defaults are its defaults: a test
    checks that every flag lands in the field it names)."""
    options = StreamOptions(
        playback=playback,
        record_dir=Path(args.record_dir) if args.record_dir else None,
        reorder_depth=args.reorder_depth,
        resume_grace_seconds=args.resume_grace,
        capture_dir=Path(args.capture_dir) if args.capture_dir else None,
        max_gap_seconds=args.max_gap_seconds,
        takeover_seconds=args.takeover_seconds,
        max_backlog_seconds=args.max_backlog_seconds,
        reports=not args.no_reports,
        speech=None if args.speech == "off" else SpeechOptions(detector=args.speech),
        record_playback=args.record_playback,
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
    config = Config(
        host=args.host,
        port=args.port,
        stream=options,
        limits=limits,
        http=HttpLimits(body_seconds=args.body_timeout),
        auth_token=token,
        metrics=not args.no_metrics,
        allow_public_streams=args.allow_public_streams,
        http_port=args.http_port,
        instance_id=args.instance_id or default_instance_id(),
        upload=upload_from_args(args),
    )
    return config


def upload_from_args(args: argparse.Namespace) -> UploadOptions | None:
    """The ``--upload*`` flags as ``UploadOptions`` (None without ``--upload``)."""
    if args.upload is None:
        return None
    return UploadOptions(
        url=args.upload,
        endpoint=args.upload_endpoint,
        region=args.upload_region,
        concurrency=args.upload_concurrency,
        retry_max_seconds=args.upload_retry_max_seconds,
        max_pending_bytes=args.upload_max_pending_bytes,
        shutdown_seconds=args.upload_shutdown_seconds,
    )


def check_upload(args: argparse.Namespace) -> None:
    """What ``--upload`` needs, checked at start-up: a folder to upload from, an
    ``s3://bucket/prefix`` and the S3 client (the ``[s3]`` extra)."""
    from mediastream.storage import parse_upload_url
    from mediastream.storage.s3 import load_obstore

    if not args.record_dir:
        raise UsageError("--upload needs --record-dir (the folder whose finished recordings "
                         "it uploads)")  # fmt: skip
    parse_upload_url(args.upload)
    load_obstore()


def instance_id_from_args(args: argparse.Namespace) -> str:
    """``--instance-id``, else the default (``$MEDIASTREAM_INSTANCE_ID``, else the host
    name); one that cannot be a URL path element is a usage error."""
    from mediastream.instance import is_instance_id

    given = args.instance_id
    value = given or default_instance_id()
    if not is_instance_id(value):
        source = "--instance-id" if given else f"${INSTANCE_ID_ENV}"
        raise UsageError(
            f"{source} {value!r}: an instance id is {INSTANCE_ID_RULE} (it is a URL path element)"
        )
    return value


def probe_record_dir(record_dir: Path) -> None:
    """Create ``record_dir`` and write and remove a file in it, so a bad one fails at start-up.

    Without this, a typo or a read-only mount shows only when the first call arrives, as a
    recording error in the log while the server looks healthy.
    """
    probe = record_dir / f".mediastream-probe-{os.getpid()}"
    try:
        record_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"probe")
        probe.unlink()
    except FileExistsError:
        raise UsageError(f"--record-dir {record_dir}: exists and is not a directory") from None
    except OSError as exc:
        raise UsageError(
            f"--record-dir {record_dir}: cannot create or write it: {_os_reason(exc)}"
        ) from None


def _os_reason(exc: OSError) -> str:
    """The plain reason ("Address already in use"): asyncio wraps it in its own sentence."""
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if exc.errno and exc.errno > 0:
        return os.strerror(exc.errno)
    return exc.strerror or str(exc)


def run_event_loop(main: Coroutine[Any, Any, None], loop: str = "asyncio") -> None:
    """``asyncio.run``, or the same on uvloop (``--loop uvloop``)."""
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise UsageError(f"--loop uvloop needs uvloop: {install_hint('uvloop')}") from None
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
    except OSError as exc:  # the port is taken, the host unknown ... (already worded)
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {_os_reason(cause)}") from None


# ------------------------------------------------------------------ demo


async def _demo(record_dir: Path, codec: str, seconds: float, realtime: bool) -> int:
    import soundfile

    from mediastream.server.routes import HttpRoutes
    from mediastream.simulate import codec_rate, plan_call, send_call, synthesize_speechlike

    rate = codec_rate(codec)
    clip = synthesize_speechlike(seconds, rate)
    plan = plan_call(clip, codec=codec, stream_id="demo-call")
    # no Telnyx routes: nothing calls back to a demo, so no "unsigned callbacks" warning either
    http = HttpRoutes(callback_path=None, texml_path=None)
    server = MediaServer(StreamHandler, host="127.0.0.1", port=0, record_dir=record_dir, http=http)
    async with server as srv:
        path = record_dir / f"{plan.stream_id}.wav"
        path.unlink(missing_ok=True)  # a fresh demo, not a continuation of the last one
        url = f"ws://127.0.0.1:{srv.port}/demo"
        print(f"server on {url}; sending a {seconds:.1f} s {plan.codec} call ...", flush=True)
        await send_call(url, plan, realtime=realtime)
    info = soundfile.info(str(path))
    recorded, _ = soundfile.read(str(path), dtype="int16")
    expected = plan.expected_pcm()
    exact = np.array_equal(recorded, expected)
    print(  # one line: with the server's line and the stream's two, 4 lines in all
        f"recorded {path.resolve()}: {info.duration:.2f} s, {info.samplerate} Hz, "
        f"{info.channels} channel(s); "
        f"{'identical to' if exact else 'DIFFERS from'} the decoded audio that was sent"
    )
    return 0 if exact else 1


def cmd_demo(args: argparse.Namespace) -> int:
    record_dir = Path(args.record_dir)
    probe_record_dir(record_dir)
    _codec_rate("--codec", args.codec, 16000)
    return asyncio.run(_demo(record_dir, args.codec, args.seconds, args.realtime))


# ------------------------------------------------------------------ simulate


async def _simulate(args: argparse.Namespace) -> int:
    from mediastream.simulate import (
        DEFAULT_SHUFFLE_WINDOW,
        FarEndConfig,
        load_audio,
        simulate,
        synthesize_speechlike,
    )

    check_ws_url(args.url)
    rate = _codec_rate("--codec", args.codec, args.l16_rate)
    if args.playback_mode == "rtp":
        _codec_rate("--playback-codec", args.playback_codec, args.playback_rate, encode=False)
    audio = load_audio(args.audio, rate) if args.audio else synthesize_speechlike(3.0, rate)
    tracks = ("inbound", "outbound") if args.track == "both" else (args.track,)
    far_end = FarEndConfig(args.playback_mode, args.playback_codec, args.playback_rate)
    dtmf = [_parse_dtmf(spec) for spec in args.dtmf]
    results = await _connected(
        args.url,
        simulate(
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
            reconnect_after=args.reconnect_after,
        ),
    )
    failed = 0
    for result in results:
        plan = result.plan
        lost = sum(len(s) for s in plan.dropped.values())
        note = f", closed by server (code {result.close_code})" if result.closed_by_server else ""
        note = f", reconnected {result.reconnects} time(s)" + note if result.reconnects else note
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
                heard.write_heard(path)  # on the call's clock: lines up with the recording
                line += f"; written to {path}"
            print(line)
    return 1 if failed else 0


def _parse_dtmf(spec: str) -> tuple[float, str]:
    at, sep, digit = spec.partition(":")
    try:
        seconds = float(at)
    except ValueError:
        seconds = -1.0
    if not sep or not digit or not seconds >= 0:
        raise UsageError(f"--dtmf takes SECONDS:DIGIT, not {spec!r}")
    return seconds, digit


def _codec_rate(flag: str, codec: str, rate: int, *, encode: bool = True) -> int:
    """The codec's PCM rate, checking it works here (encodes, or decodes): else a UsageError."""
    from mediastream import codecs
    from mediastream.errors import UnsupportedCodecError
    from mediastream.simulate import codec_rate

    try:
        if encode:
            codecs.encoder(codec, rate)
            return codec_rate(codec, rate)
        return codecs.decoder(codec, rate).sample_rate
    except (UnsupportedCodecError, ValueError) as exc:
        raise UsageError(f"{flag} {codec}: {exc}") from None


def check_ws_url(url: str) -> None:
    """A ``ws://`` or ``wss://`` URL with a host, else a ``UsageError`` saying so."""
    parsed = urlsplit(url)
    if parsed.scheme not in ("ws", "wss") or not parsed.hostname:
        raise UsageError(f"URL must look like ws://HOST:PORT/PATH or wss://..., not {url!r}")


async def _connected(url: str, work: Awaitable[T]) -> T:
    """Await ``work``, turning "no server there" (refused, unknown host, timeout, an HTTP
    refusal of the upgrade) into one line: the user's URL or server, not a bug of ours."""
    from websockets.exceptions import InvalidHandshake, InvalidURI

    try:
        return await work
    except (OSError, InvalidHandshake, InvalidURI) as exc:
        reason = _os_reason(exc) if isinstance(exc, OSError) else str(exc)
        raise UsageError(f"cannot connect to {url}: {reason}") from None


def cmd_simulate(args: argparse.Namespace) -> int:
    return asyncio.run(_simulate(args))


# ------------------------------------------------------------------ replay


def cmd_replay(args: argparse.Namespace) -> int:
    from mediastream.replay import replay_files

    urls = [f for f in args.files if f.startswith(("ws://", "wss://"))]
    if urls and not args.url.startswith(("ws://", "wss://")):
        raise UsageError(f"replay takes FILE... URL, the URL last; got {urls[0]!r} first")
    check_ws_url(args.url)

    results = asyncio.run(_connected(args.url, replay_files(args.files, args.url, fast=args.fast)))
    for path, sent, code in results:
        note = f", closed by server with code {code}" if code not in (None, 1000) else ""
        print(f"{path}: {sent} frames replayed{note}")
    return 0


# ------------------------------------------------------------------ bench


def cmd_bench(args: argparse.Namespace) -> int:
    from mediastream.bench import main as bench_main

    return bench_main(args)


# ------------------------------------------------------------------ inspect


def cmd_inspect(args: argparse.Namespace) -> int:
    from mediastream.inspect import run

    return run(args.files, as_json=args.json, png=args.png, spectrogram=args.spectrogram)


def cmd_merge(args: argparse.Namespace) -> int:
    from mediastream.merge import run

    return run(args.files, args.output)


# ------------------------------------------------------------------ parser


LOG_LEVELS = ["debug", "info", "warning", "error"]


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric flag, checked after parsing (``main``).

    Checked there, not by an argparse ``type``, so a value out of range is one line like every
    other user error instead of the whole usage followed by the message.
    """

    low: float | None = None
    high: float | None = None
    above: bool = False  # ``low`` itself is not allowed

    def check(self, flag: str, value: float | None) -> None:
        if value is None:
            return
        low_ok = self.low is None or (value > self.low if self.above else value >= self.low)
        if not (low_ok and (self.high is None or value <= self.high)):  # NaN fails too
            raise UsageError(f"{flag} must be {self}, not {value:g}")

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"from {self.low:g} to {self.high:g}"
        if self.low is not None:
            return f"{'more than' if self.above else 'at least'} {self.low:g}"
        return f"at most {self.high:g}"


POSITIVE = Range(0, above=True)
NOT_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)


def check_ranges(args: argparse.Namespace) -> None:
    """Every ``Range`` the chosen command declared (``set_defaults(ranges=...)``)."""
    for flag, allowed in getattr(args, "ranges", {}).items():
        allowed.check(flag, getattr(args, flag.lstrip("-").replace("-", "_")))


class Parser(argparse.ArgumentParser):
    """argparse, with its errors in the form of every other one: ``mediastream: error: ...``.

    Each subcommand's parser is one of these too, so a bad flag after ``serve`` prints the
    usage of ``serve``, then the error line with a pointer to that command's ``--help``.
    """

    commands: dict[str, argparse.ArgumentParser]  # the top-level parser's subcommands

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"mediastream: error: {message} (see '{self.prog} --help')\n")


def _add_log_level(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--log-level",
        default=default,
        choices=LOG_LEVELS,
        help="least severe log records shown, on stderr (default: info)",
    )


def build_parser() -> Parser:
    parser = Parser(
        prog="mediastream",
        description="Receive live phone-call audio from Telnyx media streaming over WebSocket.",
        epilog="--log-level may also follow the command: mediastream serve --log-level debug",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_log_level(parser, "info")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = sub.choices  # each command's own parser, for its usage on a bad flag

    p = sub.add_parser(
        "serve",
        help="run the media server",
        description=f"Accept carrier WebSocket streams on any path, decode their audio and "
        f"hand it to a handler; optionally record every stream to WAV. Plain HTTP on the same "
        f"port: GET /healthz (liveness and stream counts), GET {METRICS_PATH} (Prometheus; "
        f"off with --no-metrics), GET /streams and GET /calls (the live calls, as JSON and "
        f"as a page), GET or POST {TEXML_PATH} (TeXML that streams a call here) "
        f"and POST {CALLBACK_PATH} (Telnyx stream status callbacks). Stops cleanly on Ctrl-C "
        f"or SIGTERM, finishing every recording.",
    )
    p.add_argument("--host", default=DEFAULT_HOST, help="listen address (default: %(default)s)")
    p.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="TCP port; 0 picks a free one (default: %(default)s)",
    )
    p.add_argument(
        "--record-dir",
        metavar="DIR",
        help="write DIR/<stream_id>.wav per stream; DIR is created and test-written at "
        "start-up (default: no recording)",
    )
    p.add_argument(
        "--handler",
        metavar="module:Class",
        help="your StreamHandler subclass, one instance per stream: module:Class (found from "
        "the current directory first) or path/to/file.py:Class (default: none, audio is only "
        "recorded)",
    )
    limits = ServerLimits()
    stream_defaults = StreamOptions()
    p.add_argument(
        "--reorder-depth",
        type=int,
        default=stream_defaults.reorder_depth,
        metavar="FRAMES",
        help="frames held to reorder before a missing one counts as lost (default: "
        "%(default)s frames)",
    )
    p.add_argument(
        "--auth-token",
        metavar="TOKEN",
        help="require this x-telnyx-streaming-auth-token (header or connected frame); "
        "also read from $MEDIASTREAM_AUTH_TOKEN, which keeps it out of the process list "
        "(default: none, no token required)",
    )
    p.add_argument(
        "--resume-grace",
        type=float,
        default=stream_defaults.resume_grace_seconds,
        metavar="SECONDS",
        help="a stream whose socket closed without stop may resume this long (default: "
        "%(default)s s)",
    )
    p.add_argument(
        "--capture-dir",
        metavar="DIR",
        help="write raw inbound frames as JSON lines, for mediastream replay (default: none)",
    )
    p.add_argument(
        "--max-frame-bytes",
        type=int,
        default=limits.max_frame_bytes,
        metavar="BYTES",
        help="largest frame accepted; bigger closes the socket with 1009 (default: "
        "%(default)s bytes)",
    )
    p.add_argument(
        "--max-streams",
        type=int,
        default=limits.max_streams,
        metavar="N",
        help="streams at most, live or suspended (waiting for a reconnect); the start of a "
        "new one past it is closed with 1013; lowered to what the file descriptor limit "
        "allows (default: "
        "%(default)s)",
    )
    p.add_argument(
        "--auth-timeout",
        type=float,
        default=limits.auth_seconds,
        metavar="SECONDS",
        help="with --auth-token and no token header, the first frame must carry it by then "
        "(default: %(default)s s)",
    )
    p.add_argument(
        "--max-gap-seconds",
        type=float,
        default=stream_defaults.max_gap_seconds,
        metavar="SECONDS",
        help="a counter jump or first timestamp beyond this restarts the timeline instead of "
        "filling silence (default: %(default)s s)",
    )
    p.add_argument(
        "--max-backlog-seconds",
        type=float,
        default=stream_defaults.max_backlog_seconds,
        metavar="SECONDS",
        help="audio per recording kept in memory while the disk refuses writes; more is "
        "counted and logged as lost (default: %(default)s s)",
    )
    p.add_argument(
        "--takeover-seconds",
        type=float,
        default=stream_defaults.takeover_seconds,
        metavar="SECONDS",
        help="a second socket for a live stream id takes over once the first is closed or "
        "silent this long; refused if the first keeps sending (default: %(default)s s)",
    )
    p.add_argument(
        "--handshake-timeout",
        type=float,
        default=limits.handshake_seconds,
        metavar="SECONDS",
        help="time for a client to complete the WebSocket handshake (default: %(default)s s)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=limits.idle_seconds,
        metavar="SECONDS",
        help="close a socket that sends nothing this long, finishing its stream (default: "
        "%(default)s s)",
    )
    p.add_argument(
        "--ping-interval",
        type=float,
        default=limits.ping_interval,
        metavar="SECONDS",
        help="keepalive ping period and timeout, to detect half-open sockets; 0 disables "
        "(default: %(default)s s)",
    )
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=limits.drain_seconds,
        metavar="SECONDS",
        help="on SIGTERM, time live streams (and handler methods) get to finish before they "
        "are closed (and cancelled) (default: %(default)s s)",
    )
    p.add_argument(
        "--transport",
        default="websockets",
        choices=list(TRANSPORTS),
        help="WebSocket library: websockets (every route on one port) or picows (faster; "
        "extra [picows]; POST routes need --http-port) (default: %(default)s)",
    )
    p.add_argument(
        "--http-port",
        type=int,
        default=Config().http_port,
        metavar="PORT",
        help="with --transport picows: a second port serving every HTTP route, POST ones "
        "(status callbacks, POST /texml) included; 0 picks a free one (default: none)",
    )
    p.add_argument(
        "--loop",
        default="asyncio",
        choices=["asyncio", "uvloop"],
        help="event loop: asyncio or uvloop (extra [uvloop]) (default: %(default)s)",
    )
    p.add_argument(
        "--no-metrics",
        action="store_true",
        help=f"do not serve GET {METRICS_PATH} (Prometheus; summed over workers with "
        "--workers N) (default: served)",
    )
    p.add_argument(
        "--speech",
        default="off",
        choices=["off", "webrtc", "silero"],
        help="speech detection on the caller's track: on_speech_start/on_speech_end, "
        "barge-in (the caller speaking over a playback clears it), the report's share of "
        "speech; webrtc needs the [vad] extra, silero the [silero] extra (default: %(default)s)",
    )
    p.add_argument(
        "--record-playback",
        action="store_true",
        help="also record what the server played to the caller, placed where it played, as "
        "the recording's last channel (default: off, the carrier's tracks only)",
    )
    p.add_argument(
        "--no-reports",
        action="store_true",
        help="do not collect the per-stream quality report (no <stem>.json sidecar, no "
        "call.report, a shorter end line; saves a few µs per frame) (default: collected)",
    )
    p.add_argument(
        "--allow-public-streams",
        action="store_true",
        help="serve GET /streams and /calls (the live calls, their levels) on a non-loopback "
        "--host without --auth-token (default: refused, 403, unless the host is loopback or a "
        "token is set)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes sharing the port (SO_REUSEPORT, Linux); a supervisor restarts "
        "any that dies and drains them all on SIGTERM (default: %(default)s, one process and "
        "no supervisor)",
    )
    p.add_argument(
        "--instance-id",
        metavar="ID",
        help="this server's name in every URL it hands the carrier (/i/ID/stream, "
        "/i/ID/callbacks/stream), so a load balancer routes reconnects and callbacks back to "
        f"it; workers share it (default: ${INSTANCE_ID_ENV}, else the host name made URL-safe)",
    )
    upload = UploadOptions(url="")
    p.add_argument(
        "--upload",
        metavar="s3://BUCKET/PREFIX",
        help="upload every finished recording (and its sidecars) to this S3 bucket as "
        "PREFIX/INSTANCE-ID/FILE, verified by size and MD5, then remove it locally; needs "
        "--record-dir and the [s3] extra; credentials from $AWS_ACCESS_KEY_ID and "
        "$AWS_SECRET_ACCESS_KEY (default: no upload)",
    )
    p.add_argument(
        "--upload-endpoint",
        metavar="URL",
        help="the S3-compatible store's address, e.g. http://127.0.0.1:8333 (default: "
        "$AWS_ENDPOINT_URL, else AWS)",
    )
    p.add_argument(
        "--upload-region",
        metavar="REGION",
        help="the bucket's region (default: $AWS_REGION or $AWS_DEFAULT_REGION, else us-east-1)",
    )
    p.add_argument(
        "--upload-concurrency",
        type=int,
        default=upload.concurrency,
        metavar="N",
        help="recordings uploaded at once (default: %(default)s)",
    )
    p.add_argument(
        "--upload-retry-max-seconds",
        type=float,
        default=upload.retry_max_seconds,
        metavar="SECONDS",
        help=f"while the store fails, retries wait from {upload.retry_min_seconds:g} s, "
        "doubling up to this; never giving up (default: %(default)s s)",
    )
    p.add_argument(
        "--upload-max-pending-bytes",
        type=int,
        default=upload.max_pending_bytes,
        metavar="BYTES",
        help="disk the finished recordings waiting for upload may use; beyond, new streams "
        "are refused with 1013 while running ones go on, 4 GiB by default "
        "(default: %(default)s bytes)",
    )
    p.add_argument(
        "--upload-shutdown-seconds",
        type=float,
        default=upload.shutdown_seconds,
        metavar="SECONDS",
        help="at shutdown, after the drain, time left for uploads; what is not uploaded by "
        "then is uploaded by the next start (default: %(default)s s)",
    )
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)  # set by the supervisor
    p.add_argument("--lifeline-fd", type=int, help=argparse.SUPPRESS)  # set by the supervisor
    add_http_arguments(p)
    p.set_defaults(
        func=cmd_serve,
        ranges={
            "--port": Range(0, 65535),
            "--http-port": Range(0, 65535),
            "--reorder-depth": NOT_NEGATIVE,
            "--resume-grace": NOT_NEGATIVE,
            "--max-frame-bytes": AT_LEAST_ONE,
            "--max-streams": AT_LEAST_ONE,
            "--auth-timeout": POSITIVE,
            "--max-gap-seconds": POSITIVE,
            "--max-backlog-seconds": NOT_NEGATIVE,
            "--takeover-seconds": NOT_NEGATIVE,
            "--handshake-timeout": POSITIVE,
            "--idle-timeout": POSITIVE,
            "--ping-interval": NOT_NEGATIVE,
            "--drain-seconds": NOT_NEGATIVE,
            "--workers": AT_LEAST_ONE,
            "--upload-concurrency": AT_LEAST_ONE,
            "--upload-retry-max-seconds": POSITIVE,
            "--upload-max-pending-bytes": AT_LEAST_ONE,
            "--upload-shutdown-seconds": NOT_NEGATIVE,
        },
    )

    p = sub.add_parser(
        "demo",
        help="server + one simulated call in one process; writes a WAV",
        description="Start a server on a free local port, send it one simulated call and "
        "print the path and length of the WAV it recorded.",
    )
    p.add_argument(
        "--record-dir",
        default="recordings",
        metavar="DIR",
        help="where the WAV goes (default: %(default)s)",
    )
    p.add_argument(
        "--codec", default="PCMU", help="codec of the simulated call (default: %(default)s)"
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="length of the call (default: %(default)s s)",
    )
    p.add_argument(
        "--realtime",
        action="store_true",
        help="pace frames in real time (default: as fast as possible)",
    )
    p.set_defaults(func=cmd_demo, ranges={"--seconds": POSITIVE})

    p = sub.add_parser(
        "simulate",
        help="send carrier-like calls to a server",
        description="Act as the carrier: send connected/start/media/stop frames to URL, built "
        "from an audio file (any format and rate soundfile reads).",
    )
    p.add_argument("url", help="server WebSocket URL, e.g. ws://127.0.0.1:8765/stream")
    p.add_argument(
        "--audio",
        metavar="FILE",
        help="audio to send, any format and rate soundfile reads (default: 3 s of a "
        "synthesized voice)",
    )
    p.add_argument("--codec", default="PCMU", help="PCMU, PCMA, G722 or L16 (default: %(default)s)")
    p.add_argument(
        "--l16-rate",
        type=int,
        default=16000,
        metavar="HZ",
        help="L16 sample rate (default: %(default)s Hz)",
    )
    p.add_argument(
        "--track",
        default="inbound",
        choices=["inbound", "outbound", "both"],
        help="track(s) to send (default: %(default)s)",
    )
    p.add_argument(
        "--calls", type=int, default=1, metavar="N", help="concurrent calls (default: %(default)s)"
    )
    pace = p.add_mutually_exclusive_group()
    pace.add_argument(
        "--realtime",
        action="store_true",
        help="one frame per 20 ms per track (default: off, see --fast)",
    )
    pace.add_argument(
        "--fast",
        action="store_true",
        help="send frames as fast as possible (default: on, unless --realtime)",
    )
    p.add_argument(
        "--stagger",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="time between call starts (default: %(default)s s)",
    )
    p.add_argument(
        "--shuffle",
        action="store_true",
        help="reorder frames within small windows (default: in order)",
    )
    p.add_argument(
        "--drop-rate",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="fraction of frames to drop, 0 to 1 (default: %(default)s)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed for shuffle and drops (default: %(default)s)"
    )
    p.add_argument(
        "--stream-id",
        metavar="ID",
        help="stream id, with --calls N: ID-1 .. ID-N (default: a random UUID per call)",
    )
    p.add_argument(
        "--no-stop",
        action="store_true",
        help="close the socket without a stop frame (default: send stop)",
    )
    p.add_argument(
        "--reconnect-after",
        type=float,
        metavar="SECONDS",
        help="that far into each call's audio (by its timestamps, with or without "
        "--realtime), drop the socket abruptly (no stop) and go on with the same stream id "
        "on a new socket to the same URL, chunk and timestamp counters continued, as Telnyx "
        "reconnects (default: no reconnect)",
    )
    far = p.add_argument_group(
        "far end (bidirectional)",
        "what the simulated carrier does with audio the server sends back: plays it in real "
        "time, echoes marks when the audio before them has played, honours clear",
    )
    far.add_argument(
        "--playback-mode",
        default="auto",
        choices=["auto", "rtp", "mp3"],
        help="bidirectionalMode the server sends in; auto: MP3 if the first media is an MP3 "
        "file, else RTP in --playback-codec (default: %(default)s)",
    )
    far.add_argument(
        "--playback-codec",
        default="PCMU",
        metavar="CODEC",
        help="bidirectionalCodec (default: %(default)s)",
    )
    far.add_argument(
        "--playback-rate",
        type=int,
        default=8000,
        metavar="HZ",
        help="bidirectionalSamplingRate (default: %(default)s Hz)",
    )
    far.add_argument(
        "--heard-dir",
        metavar="DIR",
        help="write what the caller heard to DIR/<stream_id>.heard.wav, on the call's clock "
        "(default: not written)",
    )
    far.add_argument(
        "--dtmf",
        action="append",
        default=[],
        metavar="SECONDS:DIGIT",
        help="press DIGIT that long into the call; repeatable (default: no keys)",
    )
    far.add_argument(
        "--linger",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="time to stay after the audio, before stop (default: %(default)s s)",
    )
    p.set_defaults(
        func=cmd_simulate,
        ranges={
            "--l16-rate": AT_LEAST_ONE,
            "--calls": AT_LEAST_ONE,
            "--stagger": NOT_NEGATIVE,
            "--drop-rate": Range(0, 1),
            "--playback-rate": AT_LEAST_ONE,
            "--linger": NOT_NEGATIVE,
            "--reconnect-after": NOT_NEGATIVE,
        },
    )

    p = sub.add_parser(
        "replay",
        help="send captured frames to a server with their original timing",
        description="Replay capture files written by serve --capture-dir (one socket per "
        "file, in the order given), with the original timing or as fast as possible.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="capture file(s), .jsonl")
    p.add_argument("url", help="server WebSocket URL, after the files")
    p.add_argument(
        "--fast",
        action="store_true",
        help="ignore the original timing (default: keep it)",
    )
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser(
        "bench",
        help="codec throughput against the reference implementations installed",
        description="Time decode and encode of 20 ms frames for each codec, side by side with "
        "every installed anchor (audioop, the G722 package, PyAV), and print the ratios.",
    )
    p.add_argument(
        "--codec",
        action="append",
        help="codec to measure; repeatable (default: all of PCMU, PCMA, G722)",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="time per measurement (default: %(default)s s)",
    )
    p.add_argument(
        "--json", action="store_true", help="print JSON instead of a table (default: a table)"
    )
    p.set_defaults(func=cmd_bench, ranges={"--seconds": POSITIVE})

    p = sub.add_parser(
        "inspect",
        help="a recording's quality report as a table or JSON; --png draws the call",
        description="Print each WAV's quality report: the server's (the <stem>.json sidecar "
        "beside it) when there is one, else what the WAV alone tells (duration, per channel "
        "level, peak, clipped samples, digital silence, and gaps: runs of exact digital "
        "silence of 20 ms or more).",
    )
    p.add_argument("files", nargs="+", metavar="FILE.wav", help="recording(s) to inspect")
    p.add_argument(
        "--json",
        action="store_true",
        help="print JSON: the report object for one file, a list of them for several "
        "(default: a table)",
    )
    p.add_argument(
        "--png",
        metavar="OUT",
        help="draw the call (waveform per channel, gaps, reconnects, level over time) to "
        "OUT.png, or as <stem>.png into folder OUT (for several files; --png DIR with the "
        "record folder puts each beside its WAV, where GET /calls links it); needs the "
        "inspect extra (default: no picture)",
    )
    p.add_argument(
        "--spectrogram",
        action="store_true",
        help="with --png, add a spectrogram per channel (default: off)",
    )
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "merge",
        help="the pieces of a call recorded on several hosts, as one recording",
        description="Group the recordings (files, or the WAVs of folders gathered from several "
        "hosts) by stream id and write each call as one recording on its timeline, with a "
        "manifest (OUT.manifest.json) of which file contributed which ranges. Samples are "
        "copied as they are; where two pieces received the same range, the one that had the "
        "call first wins (counted in the manifest).",
    )
    p.add_argument("files", nargs="+", metavar="FILE_OR_DIR", help="recordings, or folders of them")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="the merged recording (OUT.wav), or for several calls a folder that gets "
        "<base>.wav and <base>.manifest.json per call (required)",
    )
    p.set_defaults(func=cmd_merge)

    p = add_texml_command(sub)
    p.set_defaults(func=cmd_texml)
    for command in sub.choices.values():
        _add_log_level(command, argparse.SUPPRESS)  # keeps the value given before the command
    return parser


def cmd_texml(args: argparse.Namespace) -> int:
    """``texml``: print the document; a bad value is a ``TexmlError``, printed by ``main``."""
    from mediastream.telnyx.texml import for_instance, stream_from_args, stream_texml

    if args.verb != "stop" and not args.stream_url:
        raise UsageError(f"texml --verb {args.verb}: --url is required (the ws:// or wss:// "
                         "address Telnyx streams the call to)")  # fmt: skip
    stream = for_instance(stream_from_args(args), args.instance_id)
    print(stream_texml(stream, args.verb, pause=args.pause), end="")
    return 0


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line, as the ``mediastream: error:`` rule wants."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run the command; every expected user error ends here as one line, exit 2.

    The rule: such errors are ``MediaStreamError`` subclasses (``UsageError`` for flags,
    ``InputFileError`` for files, ``TexmlError``, ``UnsupportedCodecError`` ...), raised
    anywhere below and printed by this one handler; anything else is a bug and keeps its
    traceback.
    """
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:  # argparse would blame the top-level parser; the command's usage helps more
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extras)}")
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for serve --workers N
    worker = getattr(args, "ready_fd", None) is not None
    try:
        check_ranges(args)
        configure_logging(args.log_level, WORKER_LOG_FORMAT if worker else LOG_FORMAT)
        return int(args.func(args) or 0)
    except MediaStreamError as exc:
        print(f"mediastream: error: {one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
