"""The configuration tree: every setting a server takes, and the only place a default is written.

``Config`` holds one frozen section per concern: ``stream`` (what shapes every stream: the
recording, reordering, reconnects, playback), ``limits`` (what protects the server: sizes,
counts, timeouts, the drain), ``http`` (plain HTTP beside the media socket) and the auth
token. ``serve``, every server adapter and the CLI take it; the CLI's flags are checked
against these fields by a test (``tests/test_config.py``), so a default written here is the one
``--help`` shows. The sections are frozen: a server never changes the object it was given
(``dataclasses.replace`` makes a changed copy).

This module imports nothing of mediastream: every layer may read it.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765

# An instance id is one URL path element and a DNS label at once (a StatefulSet pod name, a
# HAProxy server name): letters, digits, ``.``, ``_``, ``-``, starting with a letter or digit
INSTANCE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# the rule above in words, for the errors that refuse an id (a URL path element, a DNS label)
INSTANCE_ID_RULE = "1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit"
INSTANCE_ID_ENV = "MEDIASTREAM_INSTANCE_ID"


def default_instance_id() -> str:
    """``$MEDIASTREAM_INSTANCE_ID``, else the host name made URL-safe (lower case, other
    characters as ``-``): stable across restarts, and a StatefulSet pod's own name
    (``mediastream-0``), which is what a load balancer routes reconnects by."""
    given = os.environ.get(INSTANCE_ID_ENV)
    if given:
        return given
    name = re.sub(r"[^a-z0-9._-]+", "-", socket.gethostname().lower()).strip("-._")
    return name[:63] or "mediastream"


@dataclass(frozen=True)
class PlaybackConfig:
    """How audio goes back to the carrier; mirrors the ``<Stream>`` bidirectional attributes.

    The start frame does not say which playback codec was requested, so the application
    declares it here (server-wide in ``StreamOptions``, or per handler as ``playback``). The
    defaults are Telnyx's (``bidirectionalMode`` mp3, PCMU, 8000 Hz): a server that asks the
    carrier for nothing sends what the carrier then expects. ``serve`` builds this from the
    same flags that write the TeXML (``server.http.playback_from_stream``). Twilio plays only
    μ-law at 8 kHz, so a Twilio stream in mp3 mode gets that instead (see ``Player``).
    """

    mode: Literal["rtp", "mp3"] = "mp3"  # bidirectionalMode
    codec: str = "PCMU"  # bidirectionalCodec
    sample_rate: int = 8000  # bidirectionalSamplingRate (L16/OPUS); G.711 is 8000, G.722 16000
    chunk_ms: int = 20
    lead_ms: int = 60
    send_timeout: float = 5.0
    mp3_min_interval: float = 1.1  # the carrier allows one a second; keep a margin for jitter
    codec_options: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class SpeechOptions:
    """Speech detection per track, and the barge-in it drives (``mediastream.voice``).

    A detector gives a speech probability per window (webrtc: 0 or 1 per 20 ms; silero: per
    32 ms); the segmenter turns those into utterances with hysteresis. Defaults were chosen by
    measurement (``benchmarks/vad.py``, ``benchmarks/RESULTS.md``).
    """

    # "webrtc" (extra [vad]: webrtcvad-wheels, 2-8 µs a frame) or "silero" (extra [silero]:
    # onnxruntime; the model ships in mediastream; run as one bank batched across streams)
    detector: Literal["webrtc", "silero"] = "webrtc"
    tracks: tuple[str, ...] = ("inbound",)  # the tracks listened to (inbound: the caller)
    threshold: float = 0.5  # a window with a probability at or above this is speech
    webrtc_mode: int = 3  # webrtcvad's aggressiveness, 0-3
    # speech windows adding up to this start an utterance (dips shorter than min_silence_ms
    # are tolerated; only speech counts)
    min_speech_ms: int = 200
    min_silence_ms: int = 500  # silence this long in a row ends it
    padding_ms: int = 200  # audio kept before the onset and after the end, in the utterance
    # an utterance longer than this is ended and a new one starts (audio held per track)
    max_utterance_seconds: float = 30.0
    # barge-in: the caller's speech adding up to this (as min_speech_ms counts it) while an
    # interruptible playback plays clears it; shorter sounds ("mm", "yes") do not. None: off
    barge_in_ms: int | None = 300
    # the silero bank runs every stream's ready windows in one batch this often ...
    bank_interval_ms: int = 32
    # ... in runs of at most this many streams, yielding to the event loop between them: one
    # run of 128 streams held the loop 7-9 ms, of 16 about 1.5 ms, for 8-60 % more CPU
    # (``benchmarks/vad.py``). None: one run for all
    bank_max_batch: int | None = 16


@dataclass(frozen=True)
class StreamOptions:
    """What shapes every stream of a server."""

    record_dir: Path | None = None
    reorder_depth: int = 8  # frames held to put reordered ones back in place
    flush_seconds: float = 0.5  # a recording's blocks go to disk at least this often
    codec_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # a stream whose socket closed without ``stop`` may resume on a new socket this long
    resume_grace_seconds: float = 30.0
    capture_dir: Path | None = None
    playback: PlaybackConfig = field(default_factory=PlaybackConfig)
    # a gap (counter jump, or a track's first timestamp) longer than this is a discontinuity:
    # the timeline restarts after the last audio instead of filling the jump with silence
    max_gap_seconds: float = 10.0
    # a second socket naming a live stream id waits this long: it takes over if the first one
    # closes or sends nothing for this long, and is refused (1008) if the first keeps sending
    takeover_seconds: float = 1.0
    # audio a recording keeps in memory while the disk refuses it; more is counted as lost
    max_backlog_seconds: float = 20.0
    # after the drain deadline, each handler method still called (``on_stop``) gets this long
    handler_stop_seconds: float = 2.0
    # a quality report per stream (``runtime/report.py``): figures kept per frame, a JSON
    # sidecar beside the WAV, ``Call.report``, a summary line; off: none of it is computed
    reports: bool = True
    # reports of ended streams kept in memory, newest first (``StreamRegistry.recent_reports``)
    recent_reports: int = 100
    # entries a report lists in ``gaps`` and in ``reconnects`` each; more are counted in
    # ``frames.lost`` but not listed (logged once per stream)
    report_max_entries: int = 1000
    # the quality report counts what it kept (arrivals, lags, audio) for every stream once
    # per window, off the frame path; a live level (``StreamRegistry.live_snapshots``)
    # covers the last window and what came since
    level_window_seconds: float = 0.5
    # a frame whose samples all lie within ±this is digital silence: 0 for μ-law and L16,
    # 8 covers A-law's quietest code (decoded ±8)
    digital_silence_peak: int = 8
    # speech detection on every stream (None: off; a handler's ``speech`` attribute wins)
    speech: SpeechOptions | None = None
    # the recording also holds what our players sent, placed by the playout clock, as its own
    # channel after the carrier's tracks (off: today's layout, the carrier's tracks only)
    record_playback: bool = False
    # received ranges a recording's piece description (``<stem>.piece.json``) lists per track;
    # beyond, a new range joins the last one (the gap between counts as received: it is
    # silence), counted and logged once
    piece_max_spans: int = 10_000

    def __post_init__(self) -> None:
        for name in ("record_dir", "capture_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))


@dataclass(frozen=True)
class ServerLimits:
    """What protects a server reachable from the internet; every one is a ``serve`` flag."""

    max_frame_bytes: int = 1 << 20
    # streams live or suspended (each holds its open recording); also capped by ``max_sockets``
    max_streams: int = 10_000
    # sockets open at once, authenticated or not; None: what the file descriptor limit allows
    # (each stream may hold a socket and a recording)
    max_sockets: int | None = None
    handshake_seconds: float = 10.0
    # with an auth token and no token header, the first frame (``connected``) must come by then
    auth_seconds: float = 5.0
    idle_seconds: float = 60.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    drain_seconds: float = 30.0
    # a socket's messages read and not yet handled: above this many, reading from it pauses
    # (until its reader has taken them all), so a slow handler holds back only its own peer
    inbox_high_water: int = 64
    # picows: each socket's first read buffer (it doubles when a frame needs more); its own
    # default, 16 KiB, cost 36 KiB per open socket against 24 KiB at 4 KiB (a media frame is
    # well under 1 KiB)
    read_buffer_bytes: int = 4096


@dataclass(frozen=True)
class HttpLimits:
    """Plain HTTP requests on the media port (status callbacks, TeXML, the live view)."""

    max_head_bytes: int = 16 * 1024
    max_body_bytes: int = 256 * 1024
    # h11 takes about 8 µs a chunk, all on the event loop: 2 ms per request at most
    max_body_chunks: int = 256
    # below the handshake timeout (10 s), so that the 408 gets sent
    body_seconds: float = 5.0
    # most streams (or ended-stream reports) one ``GET /streams`` returns: ``?limit=`` is
    # capped here, so that a poll costs the same at 1,000 streams as at 100: measured at 1,000
    # two-track streams, 1 ms of the event loop for the live page's 50, 2 ms for 100
    max_streams_page: int = 100


@dataclass(frozen=True)
class UploadOptions:
    """Finalized recordings to an S3-compatible object store (``serve --upload``, run by
    ``mediastream.storage``). Credentials are never kept here: the client reads the standard
    AWS variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``)."""

    url: str  # s3://bucket/prefix: objects are <prefix>/<instance id>/<file name>
    endpoint: str | None = None  # None: $AWS_ENDPOINT_URL, else AWS's own for the region
    region: str | None = None  # None: $AWS_REGION, $AWS_DEFAULT_REGION, else us-east-1
    concurrency: int = 4  # files in flight at once
    # while the store fails, the next attempt waits this long, doubling up to the maximum
    retry_min_seconds: float = 0.5
    retry_max_seconds: float = 30.0
    scan_seconds: float = 1.0  # how often the record folder is looked at for finished files
    # a finalized WAV whose report sidecar is not there yet waits this long for it (with
    # reports on, the sidecar follows within milliseconds); then it goes without
    settle_seconds: float = 5.0
    # files waiting for upload (finalized, not yet confirmed by the store) may use this much
    # disk; beyond, new streams are refused with 1013 (live ones and reconnects go on)
    max_pending_bytes: int = 4 << 30
    # at shutdown, uploads under way and files finished by the shutdown get this long; the
    # rest is uploaded by the next start
    shutdown_seconds: float = 10.0
    # a larger file goes up in multipart parts of this size (a single PUT is held in memory)
    part_bytes: int = 8 << 20
    # parts of one file in flight at once: with ``concurrency`` files, at most
    # concurrency × part_concurrency × part_bytes of parts in memory (64 MiB by default)
    part_concurrency: int = 2
    request_seconds: float = 60.0  # one request (a PUT, a part, a HEAD) at most
    connect_seconds: float = 5.0  # connecting to the store at most


@dataclass(frozen=True)
class Config:
    """Everything a server is told, in one tree."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    stream: StreamOptions = field(default_factory=StreamOptions)
    limits: ServerLimits = field(default_factory=ServerLimits)
    http: HttpLimits = field(default_factory=HttpLimits)
    # the streaming auth token a socket must present (header or ``connected`` frame)
    auth_token: str | None = None
    metrics: bool = True  # ``GET /metrics`` and the counting behind it
    # ``serve --transport picows``: picows refuses request bodies, so every HTTP route (POST
    # ones: status callbacks, ``POST /texml``) is also served on this second port by uvicorn
    # (None: no second port, and no POST route; 0: any free port)
    http_port: int | None = None
    # ``GET /streams``, ``/calls`` and ``/reports/`` on a non-loopback address with no auth
    # token: refused (403) unless this is set (``serve --allow-public-streams``)
    allow_public_streams: bool = False
    # this server's name in every URL it hands the carrier (``/i/<id>/stream``, ``/i/<id>/
    # callbacks/stream``), so a load balancer sends reconnects and callbacks back to it;
    # ``serve --workers N`` workers share their supervisor's (``MediaCore`` refuses an id that
    # is not ``INSTANCE_ID_PATTERN``)
    instance_id: str = field(default_factory=default_instance_id)
    # finalized recordings go to object storage (``serve --upload``; needs ``stream.record_dir``)
    upload: UploadOptions | None = None

    @classmethod
    def merged(
        cls,
        config: Config | None,
        *,
        host: str | None = None,
        port: int | None = None,
        record_dir: str | Path | None = None,
        options: StreamOptions | None = None,
        limits: ServerLimits | None = None,
        auth_token: str | None = None,
        metrics: bool | None = None,
    ) -> Config:
        """``config`` (or the defaults) with the servers' older keyword arguments applied
        (they win): ``MediaServer(port=0, options=...)`` keeps working beside ``config=``."""
        config = config or cls()
        stream = options or config.stream
        if record_dir is not None:
            stream = replace(stream, record_dir=Path(record_dir))
        changes: dict[str, Any] = {"stream": stream}
        for name, value in (("host", host), ("port", port), ("limits", limits)):
            if value is not None:
                changes[name] = value
        if auth_token is not None:
            changes["auth_token"] = auth_token or None
        if metrics is not None:
            changes["metrics"] = metrics
        return replace(config, **changes)
