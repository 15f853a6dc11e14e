"""A carrier-like client: sends calls to a media server as Telnyx frames them, and plays back
what the server sends as the carrier's far end would.

Sending: it reads audio (any file soundfile reads, any rate, or ``synthesize_speechlike``),
resamples it with soxr to the codec's rate, encodes it in 20 ms frames and sends
``connected``, ``start``, ``media``, ``dtmf`` and (unless told not to) ``stop``, with the
carrier's conventions: per-track ``chunk`` from 1, ``timestamp`` in ms since the stream
started, counters as strings. It paces in real time or sends as fast as it can, streams one
track or both, runs many calls at once, reorders frames within a window, and drops frames
(chosen ones, or at a rate).

Playing back (``FarEndConfig``): ``FarEnd`` plays the server's media on a real-time playout
clock (RTP in one codec, MP3 files, or whichever the first media is), echoes a mark when the
audio before it has played, honours ``clear``, answers MP3 sent too often with the carrier's
rate-limit error, and ends the call with ``PlaybackMismatchError`` when media comes in another
mode than it was told to expect. With both tracks in real time, the outbound track is what the
caller hears, as Telnyx's is: the plan's outbound audio with what the far end played mixed in
(``HeardOutbound``; ``FarEndConfig.outbound_heard=False`` sends the plan's audio alone).

``CallPlan`` says exactly what was sent and ``CallResult`` what came back, so a test can predict
the recording (``CallPlan.expected_pcm``) and check what the caller heard
(``FarEnd.heard_on_call_clock``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import io
import json
import math
import random
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile
import soxr
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from mediastream import codecs
from mediastream.errors import InputFileError, PlaybackMismatchError
from mediastream.logs import redacting_logger
from mediastream.media.resample import StreamResampler

FRAME_MS = 20
DEFAULT_SHUFFLE_WINDOW = 5
# an outbound frame (what the caller heard) goes out this many frames after its time: it has
# played by then, and a resampler has the little it holds back
HEARD_DELAY_TICKS = 2
# a dropped socket (``reconnect_after``) waits at most this long for the server to close its
# side after the end of file, before it is cut
DROP_SECONDS = 2.0


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read an audio file as mono int16 at ``sample_rate`` (mixing channels, resampling).

    A missing or unreadable file is an ``InputFileError`` naming it: libsndfile alone says
    "System error." for a file that does not exist.
    """
    if not Path(path).is_file():
        raise InputFileError(f"audio file {str(path)!r} does not exist (or is not a file)")
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, OSError) as exc:
        detail = getattr(exc, "error_string", None) or str(exc)
        raise InputFileError(f"cannot read {str(path)!r} as audio: {detail}") from None
    mono = data.mean(axis=1)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    return np.clip(np.round(mono * 32768.0), -32768, 32767).astype(np.int16)


def synthesize_speechlike(seconds: float, sample_rate: int, seed: int = 7) -> np.ndarray:
    """A deterministic voice-like test signal: gliding harmonics in syllable-shaped bursts."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitch = 140 + 40 * np.sin(2 * np.pi * 0.7 * t) + 15 * np.sin(2 * np.pi * 3.1 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 12) if k * 180 < sample_rate / 2)
    syllables = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) ** 0.6
    noise = rng.normal(0, 0.02, len(t))
    signal = 0.35 * voice * syllables + noise
    return np.clip(signal * 32767 * 0.8, -32768, 32767).astype(np.int16)


def codec_rate(codec: str, l16_rate: int = 16000) -> int:
    """PCM rate a codec carries: 8000 for G.711, 16000 for G.722, chosen rate for L16."""
    name = codecs.normalize_encoding(codec)
    return l16_rate if name == "L16" else codecs.encoder(name).sample_rate


def encode_frames(pcm: np.ndarray, codec: str, sample_rate: int) -> list[bytes]:
    """Split int16 PCM into 20 ms frames (last one padded) and encode each, in order."""
    encoder = codecs.encoder(codec, sample_rate)
    step = sample_rate * FRAME_MS // 1000
    frames = []
    for begin in range(0, len(pcm), step):
        chunk = pcm[begin : begin + step]
        if len(chunk) < step:
            chunk = np.concatenate([chunk, np.zeros(step - len(chunk), dtype=np.int16)])
        frames.append(encoder.encode(chunk))
    return frames


@dataclass
class CallPlan:
    """What one simulated call sends: per-track payloads (chunk n is ``payloads[n - 1]``)."""

    stream_id: str
    codec: str
    sample_rate: int
    payloads: dict[str, list[bytes]]
    dropped: dict[str, set[int]] = field(default_factory=dict)
    shuffle_window: int = 0
    seed: int = 0
    custom_parameters: dict[str, str] = field(default_factory=dict)
    send_stop: bool = True

    def start_frame(self) -> dict[str, object]:
        return {
            "event": "start",
            "sequence_number": "1",
            "stream_id": self.stream_id,
            "start": {
                "user_id": "3E6F995F-85F7-4705-9741-53B116D28237",
                "call_control_id": f"v3:sim-{self.stream_id}",
                "call_session_id": str(uuid.uuid5(uuid.NAMESPACE_URL, self.stream_id)),
                "from": "+13122010094",
                "to": "+13122123456",
                "tags": ["simulated"],
                "client_state": None,
                "custom_parameters": self.custom_parameters,
                "media_format": {
                    "encoding": codecs.normalize_encoding(self.codec),
                    "sample_rate": self.sample_rate,
                    "channels": 1,
                },
            },
        }

    def media_frames(self) -> list[tuple[int, dict[str, object]]]:
        """(tick, frame) for every media frame sent, in send order (shuffled if asked)."""
        out: list[tuple[int, dict[str, object]]] = []
        longest = max((len(p) for p in self.payloads.values()), default=0)
        sequence = 2
        for index in range(longest):
            for track, payloads in self.payloads.items():
                chunk = index + 1
                if index >= len(payloads) or chunk in self.dropped.get(track, ()):
                    continue
                media = {
                    "track": track,
                    "chunk": str(chunk),
                    "timestamp": str(index * FRAME_MS),
                    "payload": base64.b64encode(payloads[index]).decode("ascii"),
                }
                frame = {
                    "event": "media",
                    "sequence_number": str(sequence),
                    "media": media,
                    "stream_id": self.stream_id,
                }
                out.append((index, frame))
                sequence += 1
        if self.shuffle_window > 1:
            rng = random.Random(self.seed)
            for begin in range(0, len(out), self.shuffle_window):
                window = out[begin : begin + self.shuffle_window]
                ticks = [tick for tick, _ in window]
                frames = [frame for _, frame in window]
                rng.shuffle(frames)
                out[begin : begin + self.shuffle_window] = list(zip(ticks, frames, strict=True))
        return out

    def stop_frame(self, sequence: int) -> dict[str, object]:
        return {
            "event": "stop",
            "sequence_number": str(sequence),
            "stop": {"user_id": "3E6F995F-85F7-4705-9741-53B116D28237"},
            "stream_id": self.stream_id,
        }

    def expected_pcm(self, track: str = "inbound") -> np.ndarray:
        """The audio a faithful receiver reconstructs for ``track``: lost frames as silence.

        Frames dropped after the last one sent cannot be known to a receiver and are left out.
        """
        decoder = codecs.decoder(self.codec, self.sample_rate)
        dropped = self.dropped.get(track, set())
        payloads = self.payloads[track]
        last_sent = max((n for n in range(1, len(payloads) + 1) if n not in dropped), default=0)
        pieces = []
        frame_samples = len(decoder.decode(payloads[0])) if payloads else 0
        decoder = codecs.decoder(self.codec, self.sample_rate)  # fresh: the probe changed state
        for chunk, payload in enumerate(payloads[:last_sent], start=1):
            if chunk in dropped:  # the receiver's decoder never sees a lost frame
                pieces.append(np.zeros(frame_samples, dtype=np.int16))
            else:
                pieces.append(decoder.decode(payload))
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16)


def looks_like_mp3(payload: bytes) -> bool:
    """An ID3 tag or a valid MPEG audio frame header: what an MP3 file starts with.

    Checked field by field (version, layer, bitrate, rate) because G.711 silence is 0xFF too.
    """
    if payload.startswith(b"ID3"):
        return True
    if len(payload) < 4 or payload[0] != 0xFF or payload[1] & 0xE0 != 0xE0:
        return False
    version, layer = (payload[1] >> 3) & 3, (payload[1] >> 1) & 3
    bitrate, rate = payload[2] >> 4, (payload[2] >> 2) & 3
    return version != 1 and layer != 0 and bitrate not in (0, 15) and rate != 3


def _decode_mp3(payload: bytes) -> tuple[np.ndarray, int] | None:
    try:
        pcm, rate = soundfile.read(io.BytesIO(payload), dtype="int16")
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None
    return (pcm if pcm.ndim == 1 else pcm[:, 0]), rate


@dataclass(eq=False)
class _Taped:
    """A piece of the far end's playout, placed on the call's clock (samples)."""

    at: int
    pcm: np.ndarray

    @property
    def end(self) -> int:
        return self.at + len(self.pcm)


@dataclass
class FarEndConfig:
    """How the simulated carrier plays what the server sends back (bidirectional streaming)."""

    mode: str = "rtp"  # rtp | mp3 | auto (decided by the first media: an MP3 file or not)
    codec: str = "PCMU"
    sample_rate: int = 8000
    mp3_min_interval: float = 1.0
    # the outbound track carries what the caller hears, as Telnyx's does: the plan's outbound
    # audio with what this far end played mixed in, sent as it plays (needs ``realtime``)
    outbound_heard: bool = True


class FarEnd:
    """The carrier's side of playback: a real-time playout queue, mark echoes, ``clear``.

    Audio is "heard" as the playout clock passes over it; a mark is echoed when the audio queued
    before it has played (at once if nothing is queued); ``clear`` drops what was not yet played
    and echoes every queued mark; MP3 messages closer than ``mp3_min_interval`` get the
    ``rate_limit_reached`` error frame, as the carrier does. ``heard_on_call_clock()`` is what
    the caller heard, placed where it played (``call_start`` is sample 0); ``mismatch`` says
    why media in another mode than configured could not be played.
    """

    def __init__(self, config: FarEndConfig, stream_id: str) -> None:
        self.config = config
        self.stream_id = stream_id
        rtp = config.mode != "mp3"
        self.rate = codec_rate(config.codec, config.sample_rate) if rtp else 0
        self._decoder = codecs.decoder(config.codec, config.sample_rate) if rtp else None
        self.segments: list[tuple[float, np.ndarray, int]] = []  # (start time, pcm, rate)
        self.heard: list[np.ndarray] = []
        self.heard_starts: list[float] = []  # when each piece of ``heard`` began to play
        self.call_start: float | None = None  # the call's clock: sample 0 of the heard file
        self.mismatch: str | None = None  # what the server sent that this far end cannot play
        self.media_times: list[float] = []
        self.marks_echoed: list[tuple[str, float]] = []
        self.clears: list[float] = []
        self.heard_at_clear: list[int] = []  # samples heard in all when each clear came
        self.errors_sent = 0
        self._heard_rate = 0
        self._playout_end = 0.0
        self._pending_marks: list[tuple[float, str]] = []
        self.mark_queued = asyncio.Event()  # wakes the echo task only when there is work
        self._sequence = 1000
        # what plays, where it plays on the call's clock (as ``heard_on_call_clock`` places
        # it), kept as it is queued: [at, pcm] at ``_tape_rate``; a clear cuts it as it cuts
        # the playout. The outbound track reads it (``played_between``)
        self._tape: list[_Taped] = []
        self._tape_queued: list[_Taped] = []  # the entries of ``segments``, in order
        self._taping: bool | None = None  # decided at the first media: is there a call clock?
        self._tape_end = 0
        self._tape_rate = 0
        self._tape_read = 0  # entries before this one ended before the last read

    def on_media(self, payload: bytes, now: float) -> dict[str, object] | None:
        """Queue received audio; returns an error frame to send back, if any.

        Audio this far end cannot play in its mode sets ``mismatch`` and is dropped.
        """
        if self.mismatch is not None:
            return None
        if self.config.mode == "auto":  # like a carrier told either mode: the first media says
            mp3 = looks_like_mp3(payload) and _decode_mp3(payload) is not None
            self.config = dataclasses.replace(self.config, mode="mp3" if mp3 else "rtp")
        if self.config.mode == "mp3":
            if self.media_times and now - self.media_times[-1] < self.config.mp3_min_interval:
                self.errors_sent += 1
                return self._frame("error", payload={"code": 100005, "title": "rate_limit_reached",
                                                     "detail": "Too many requests"})  # fmt: skip
            decoded = _decode_mp3(payload)
            if decoded is None:
                self._mismatch(f"{len(payload)}-byte media that is not an MP3 file (raw RTP "
                               "audio?)", "--playback-mode rtp --playback-codec CODEC")  # fmt: skip
                return None
            pcm, rate = decoded
        else:
            assert self._decoder is not None
            if not self.media_times and looks_like_mp3(payload) and _decode_mp3(payload):
                self._mismatch(f"an MP3 file ({len(payload)} bytes)", "--playback-mode mp3")
                return None
            try:
                pcm, rate = self._decoder.decode(payload), self.rate
            except Exception as exc:  # L16 of an odd length, say
                self._mismatch(f"{len(payload)}-byte media it cannot decode ({exc})",
                               "--playback-codec CODEC")  # fmt: skip
                return None
        self.media_times.append(now)
        self._heard_rate = rate
        start = max(now, self._playout_end)
        self.segments.append((start, pcm, rate))
        self._playout_end = start + len(pcm) / rate
        self._tape_add(start, pcm, rate)
        return None

    def _tape_add(self, start: float, pcm: np.ndarray, rate: int) -> None:
        """Place a queued segment on the tape exactly as ``heard_on_call_clock`` will."""
        if self._taping is None:
            self._taping = self.call_start is not None
        if not self._taping:
            return
        assert self.call_start is not None
        if not self._tape_rate:
            self._tape_rate = rate
        if rate != self._tape_rate:  # an MP3 file at another rate: the tape has one
            pcm = soxr.resample(pcm.astype(np.float32), rate, self._tape_rate).astype(np.int16)
            rate = self._tape_rate
        at = max(0, round((start - self.call_start) * rate))
        if abs(at - self._tape_end) <= 1 or at < self._tape_end:
            at = self._tape_end
        entry = _Taped(at, np.asarray(pcm, dtype=np.int16))
        self._tape.append(entry)
        self._tape_queued.append(entry)
        self._tape_end = at + len(pcm)

    def played_between(self, begin: int, end: int) -> np.ndarray:
        """What played in samples ``[begin, end)`` of the call's clock, at the tape's rate
        (silence where nothing did). Only the past is final: a clear may still cut the rest.
        Reads go forward: what ended before the last read's ``begin`` is skipped."""
        out = np.zeros(max(0, end - begin), dtype=np.int16)
        tape = self._tape
        while self._tape_read < len(tape) and tape[self._tape_read].end <= begin:
            self._tape_read += 1
        for entry in tape[self._tape_read :]:
            at, pcm = entry.at, entry.pcm
            if at >= end:
                break
            a, b = max(at, begin), min(entry.end, end)
            if a < b:
                out[a - begin : b - begin] = pcm[a - at : b - at]
        return out

    @property
    def tape_rate(self) -> int:
        """The rate of ``played_between`` (0: nothing played yet)."""
        return self._tape_rate

    def _mismatch(self, got: str, hint: str) -> None:
        cfg = self.config
        expected = "MP3 files" if cfg.mode == "mp3" else f"RTP {cfg.codec} {self.rate} Hz"
        self.mismatch = (
            f"stream {self.stream_id}: the server sent {got}, but the far end expects "
            f"{expected} (--playback-mode {cfg.mode}); try {hint}, or match the server's "
            "bidirectional setting"
        )

    def on_mark(self, name: str, now: float) -> None:
        self._pending_marks.append((max(now, self._playout_end), name))
        self.mark_queued.set()

    def on_clear(self, now: float) -> list[dict[str, object]]:
        """Stop playback now: keep what was heard, echo every queued mark at once."""
        self.clears.append(now)
        echoes = self.advance(now)  # marks whose audio had played are echoed as played
        if self.segments:  # the one playing now is cut where the clock is
            start, pcm, rate = self.segments[0]
            if start < now:
                self.heard.append(pcm[: int((now - start) * rate)])
                self.heard_starts.append(start)
        self._tape_cut(now)
        self.heard_at_clear.append(sum(len(p) for p in self.heard))
        self.segments = []
        self._playout_end = now
        echoes += [self._echo(name, now) for _, name in self._pending_marks]
        self._pending_marks = []
        return echoes

    def advance(self, now: float) -> list[dict[str, object]]:
        """Move the playout clock to ``now``; returns the mark echoes that became due."""
        while self.segments:
            start, pcm, rate = self.segments[0]
            if start + len(pcm) / rate > now:
                break
            self.heard.append(pcm)
            self.heard_starts.append(start)
            self.segments.pop(0)
            if self._taping:
                self._tape_queued.pop(0)
        due = [name for t, name in self._pending_marks if t <= now]
        self._pending_marks = [(t, n) for t, n in self._pending_marks if t > now]
        return [self._echo(name, now) for name in due]

    def _tape_cut(self, now: float) -> None:
        """A clear: the tape keeps what ``on_clear`` keeps of the playing segment, no more."""
        if not self._taping or not self._tape_queued:
            return
        first = self._tape_queued[0]
        start, _, rate = self.segments[0]
        kept = int((now - start) * rate) if start < now else 0
        kept = kept * self._tape_rate // rate
        dropped = self._tape_queued[1:] if kept > 0 else self._tape_queued
        first.pcm = first.pcm[:kept]
        self._tape = [entry for entry in self._tape if not any(entry is d for d in dropped)]
        self._tape_queued = []
        self._tape_end = self._tape[-1].end if self._tape else 0
        self._tape_read = min(self._tape_read, len(self._tape))

    def next_due(self) -> float | None:
        return min((t for t, _ in self._pending_marks), default=None)

    def rate_of_heard(self) -> int:
        """The rate of ``heard_audio()`` (MP3 files carry their own)."""
        return self.segments[0][2] if self.segments else (self._heard_rate or self.rate or 8000)

    def heard_audio(self) -> np.ndarray:
        """Everything heard, glued together (no silence between playbacks)."""
        return np.concatenate(self.heard) if self.heard else np.zeros(0, dtype=np.int16)

    def heard_on_call_clock(self) -> np.ndarray:
        """What the caller heard on the call's clock: sample 0 is the call's start (the first
        inbound frame, where its recording starts too), silence where nothing played.

        So a reply's response time is where it begins in this file, and the file lines up
        with the recording. It ends with the last sample heard.
        """
        rate = self.rate_of_heard()
        origin = (
            self.call_start if self.call_start is not None else min(self.heard_starts, default=0)
        )
        out: list[np.ndarray] = []
        end = 0  # samples placed so far
        for start, pcm in zip(self.heard_starts, self.heard, strict=True):
            at = max(0, round((start - origin) * rate))
            if abs(at - end) <= 1 or at < end:  # back to back (or rounding): no gap, no overlap
                at = end
            if at > end:
                out.append(np.zeros(at - end, dtype=np.int16))
            out.append(np.asarray(pcm, dtype=np.int16))
            end = at + len(pcm)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int16)

    def write_heard(self, path: str | Path) -> Path:
        """Write ``heard_on_call_clock()`` as a 16-bit WAV file; returns its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, self.heard_on_call_clock(), self.rate_of_heard(), subtype="PCM_16")
        return path

    def _echo(self, name: str, now: float) -> dict[str, object]:
        self.marks_echoed.append((name, now))
        return self._frame("mark", mark={"name": name})

    def _frame(self, event: str, **body: object) -> dict[str, object]:
        self._sequence += 1
        return {"event": event, "sequence_number": str(self._sequence), "stream_id": self.stream_id,
                **body}  # fmt: skip


@dataclass
class CallResult:
    plan: CallPlan
    frames_sent: int = 0
    media_sent: int = 0
    closed_by_server: bool = False
    close_code: int | None = None
    received: list[dict[str, object]] = field(default_factory=list)
    send_times: list[float] = field(default_factory=list)
    far_end: FarEnd | None = None
    reconnects: int = 0  # sockets dropped on purpose and opened again (``reconnect_after``)
    dropping: bool = field(default=False, repr=False)  # a drop of ours, not the server's close


def plan_call(
    audio: np.ndarray | dict[str, np.ndarray],
    *,
    codec: str = "PCMU",
    sample_rate: int | None = None,
    tracks: Sequence[str] = ("inbound",),
    stream_id: str | None = None,
    shuffle_window: int = 0,
    drop: dict[str, set[int]] | None = None,
    drop_rate: float = 0.0,
    seed: int = 0,
    custom_parameters: dict[str, str] | None = None,
    send_stop: bool = True,
) -> CallPlan:
    """Encode ``audio`` (int16 at the codec's rate; one array, or one per track) into a plan."""
    rate = sample_rate or codec_rate(codec)
    per_track = audio if isinstance(audio, dict) else {track: audio for track in tracks}
    payloads = {track: encode_frames(per_track[track], codec, rate) for track in tracks}
    dropped = {track: set(s) for track, s in (drop or {}).items()}
    if drop_rate > 0:
        rng = random.Random(seed + 1)
        for track, frames in payloads.items():
            # never the first or the last frame: a receiver cannot see those as gaps
            lost = {n for n in range(2, len(frames)) if rng.random() < drop_rate}
            dropped.setdefault(track, set()).update(lost)
    return CallPlan(
        stream_id=stream_id or str(uuid.uuid4()).upper(),
        codec=codecs.normalize_encoding(codec),
        sample_rate=rate,
        payloads=payloads,
        dropped=dropped,
        shuffle_window=shuffle_window,
        seed=seed,
        custom_parameters=dict(custom_parameters or {}),
        send_stop=send_stop,
    )


async def send_call(
    url: str,
    plan: CallPlan,
    *,
    realtime: bool = False,
    headers: dict[str, str] | None = None,
    linger: float = 0.0,
    far_end: FarEndConfig | None = None,
    dtmf: Sequence[tuple[float, str]] = (),
    reconnect_after: float | None = None,
) -> CallResult:
    """Open a socket to ``url`` and send the plan's frames; collect what the server sends.

    With ``far_end``, also play what the server sends back as the carrier would (see
    ``FarEnd``); ``linger`` keeps the call open that long after the last media frame (before
    ``stop``) so playback can finish; ``dtmf`` sends digits at given seconds into the call.
    Playback in another mode than ``far_end`` expects ends the call (with ``stop``) and raises
    ``PlaybackMismatchError``, whose one-line message says what came and what was expected.

    ``reconnect_after``: that many seconds into the call's audio (its frames' timestamps, so
    the same point with or without ``realtime``), the socket is dropped as a network failure
    drops it (no ``stop``, no close frame; everything sent has left first) and the call goes
    on on a new socket to the same URL: ``connected`` and ``start`` with the same stream id,
    then the media with its ``chunk``/``timestamp`` counters continued, as Telnyx reconnects.
    """
    result = CallResult(plan)
    logger = redacting_logger("mediastream.simulate.websocket")
    if far_end is not None:
        result.far_end = FarEnd(far_end, plan.stream_id)
    media = plan.media_frames()
    heard = _heard_outbound(plan, result.far_end, realtime)
    schedule: list[tuple[int, dict[str, object] | None]] = list(media)
    if heard is not None and media:  # the last outbound frames' turns
        schedule += [(media[-1][0] + k, None) for k in range(1, HEARD_DELAY_TICKS + 1)]
    cut = _reconnect_index(schedule, reconnect_after)
    legs = [schedule] if cut is None else [schedule[:cut], schedule[cut:]]
    held: deque[tuple[int, dict[str, object]]] = deque()  # outbound, until it played
    digits = sorted(dtmf)  # sent ones are taken off: a new socket sends the rest
    t0: float | None = None
    for number, leg in enumerate(legs):
        last = number == len(legs) - 1
        async with connect(url, additional_headers=headers, compression=None, logger=logger) as ws:
            reader = asyncio.create_task(_collect(ws, result))
            marks = asyncio.create_task(_echo_marks(ws, result.far_end))
            keys = asyncio.create_task(_send_dtmf(ws, digits, t0 or time.monotonic()))
            try:
                await ws.send(json.dumps({"event": "connected", "version": "1.0.0"}))
                await ws.send(json.dumps(plan.start_frame()))
                result.frames_sent += 2
                if t0 is None:
                    t0 = time.monotonic()
                    if result.far_end is not None:
                        result.far_end.call_start = t0  # media tick n is sent at t0 + n * 20 ms
                for tick, frame in leg:
                    if realtime:
                        delay = t0 + tick * FRAME_MS / 1000 - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    sending = []
                    while heard is not None and held and held[0][0] + HEARD_DELAY_TICKS <= tick:
                        sending.append(heard.frame(*held.popleft(), time.monotonic()))
                    if frame is not None and heard is not None and _track(frame) == "outbound":
                        held.append((tick, frame))
                    elif frame is not None:
                        sending.append(frame)
                    for each in sending:
                        await ws.send(json.dumps(each))
                        result.send_times.append(time.monotonic())
                        result.frames_sent += 1
                        result.media_sent += 1
                if not last:
                    result.dropping = True
                    await _drop(ws, reader)
                else:
                    if linger:
                        await asyncio.sleep(linger)
                    if plan.send_stop:
                        await ws.send(json.dumps(plan.stop_frame(len(media) + 2)))
                        result.frames_sent += 1
            except ConnectionClosed as exc:
                if not result.dropping:
                    result.closed_by_server = True
                    result.close_code = exc.rcvd.code if exc.rcvd else None
            finally:
                keys.cancel()
                await ws.close()
                await reader
                marks.cancel()
                if last and result.far_end is not None:
                    result.far_end.advance(time.monotonic())
        if result.closed_by_server:
            break  # the server ended the call: nothing to reconnect
        if not last:
            result.dropping = False
            result.reconnects += 1
    if result.far_end is not None and result.far_end.mismatch is not None:
        raise PlaybackMismatchError(result.far_end.mismatch)
    return result


def _reconnect_index(
    schedule: Sequence[tuple[int, dict[str, object] | None]], seconds: float | None
) -> int | None:
    """Where the second socket takes over: the first media frame at or after ``seconds``
    of the call's audio; None if no media frame is left by then (no reconnect)."""
    if seconds is None:
        return None
    tick = math.ceil(seconds * 1000 / FRAME_MS - 1e-9)
    for index, (at, frame) in enumerate(schedule):
        if at >= tick and frame is not None:
            return index
    return None


async def _drop(ws: ClientConnection, reader: asyncio.Task[None]) -> None:
    """End the socket as a network failure would, without losing what was sent: no ``stop``,
    no close frame. Everything written leaves first (a buffered frame would be lost, so a
    test could not predict the recording); then an end of file (FIN), which a proxy passes
    on, and once the server has closed its side, the socket is done."""
    transport = ws.transport
    transport.set_write_buffer_limits(high=0)  # the protocol pauses while anything is buffered
    await ws.drain()  # ... so this returns once all of it is in the kernel
    if transport.can_write_eof():
        transport.write_eof()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), DROP_SECONDS)
    transport.abort()


def _track(frame: dict[str, object]) -> object:
    media = frame.get("media")
    return media.get("track") if isinstance(media, dict) else None


def _heard_outbound(plan: CallPlan, far: FarEnd | None, realtime: bool) -> HeardOutbound | None:
    """The outbound track's mixer, when it applies: a real-time call with both tracks, played
    back by a far end told to (``FarEndConfig.outbound_heard``), in order (not shuffled)."""
    if far is None or not realtime or not far.config.outbound_heard:
        return None
    if "outbound" not in plan.payloads or plan.shuffle_window > 1:
        return None
    return HeardOutbound(plan, far)


class HeardOutbound:
    """The outbound track as Telnyx sends it: what the caller hears, our playback included.

    Frame n covers the call's clock from n × 20 ms; it goes out ``HEARD_DELAY_TICKS`` frames
    later, when that stretch has played (a clear can no longer cut it) and a resampler has
    what it needs. Its audio is the plan's outbound frame with what the far end played then
    mixed in, coded again in the call's codec. Until anything has played, the plan's payload
    goes out untouched (so a call without playback sends exactly its plan); after that every
    frame is coded again. The encoder sees every frame from the start, so a G.722 stream
    stays close to the plan's (not identical: a coded signal coded again differs a little).
    """

    def __init__(self, plan: CallPlan, far: FarEnd) -> None:
        self.far = far
        self.rate = plan.sample_rate
        self._step = plan.sample_rate * FRAME_MS // 1000
        self._decoder = codecs.decoder(plan.codec, plan.sample_rate)
        self._encoder = codecs.encoder(plan.codec, plan.sample_rate)
        self._resampler: StreamResampler | None = None
        self._fed = 0  # tape samples given to the resampler
        self._out = np.zeros(0, dtype=np.int16)  # resampled, from call sample ``_out_from``
        self._out_from = 0
        self.mixing = False
        self.mixed = 0  # frames sent with playback in them

    def frame(self, tick: int, frame: dict[str, object], now: float) -> dict[str, object]:
        """The outbound frame of ``tick`` as it goes out now."""
        media = frame["media"]
        assert isinstance(media, dict)
        payload = base64.b64decode(media["payload"])
        pcm = self._decoder.decode(payload)
        played = self._played(tick * self._step, tick * self._step + len(pcm), now)
        mixed = np.clip(pcm.astype(np.int32) + played, -32768, 32767).astype(np.int16)
        coded = self._encoder.encode(mixed)  # always: a stateful encoder keeps in step
        if not self.mixing and not played.any():
            return frame
        self.mixing = True
        self.mixed += 1
        media = {**media, "payload": base64.b64encode(coded).decode("ascii")}
        return {**frame, "media": media}

    def _played(self, begin: int, end: int, now: float) -> np.ndarray:
        """What played in call samples ``[begin, end)`` at the call's rate."""
        far, rate = self.far, self.far.tape_rate
        if not rate:
            return np.zeros(end - begin, dtype=np.int16)
        if rate == self.rate:
            return far.played_between(begin, end)
        if self._resampler is None:
            self._resampler = StreamResampler(rate, self.rate)
        assert far.call_start is not None
        final = int((now - far.call_start) * rate) - 2  # the past: nothing can cut it any more
        if final > self._fed:
            out = self._resampler.process(far.played_between(self._fed, final))
            self._fed = final
            self._out = np.concatenate([self._out, out])
        drop = begin - self._out_from
        if drop > 0:
            self._out, self._out_from = self._out[drop:], begin
        piece = self._out[: end - begin]
        return np.pad(piece, (0, end - begin - len(piece)))


async def _collect(ws: ClientConnection, result: CallResult) -> None:
    far = result.far_end
    try:
        async for message in ws:
            if not isinstance(message, str):
                continue
            frame = json.loads(message)
            result.received.append(frame)
            if far is None:
                continue
            now = time.monotonic()
            replies: list[dict[str, object]] = far.advance(now)
            event = frame.get("event")
            if event == "media":
                error = far.on_media(base64.b64decode(frame["media"]["payload"]), now)
                replies += [error] if error else []
                if far.mismatch is not None:  # nothing more to hear: end the call now
                    await ws.send(json.dumps(result.plan.stop_frame(result.frames_sent + 1)))
                    await ws.close()
                    return
            elif event == "mark":
                far.on_mark(frame["mark"]["name"], now)
                replies += far.advance(now)
            elif event == "clear":
                replies += far.on_clear(now)
            for reply in replies:
                await ws.send(json.dumps(reply))
    except ConnectionClosed as exc:
        if not result.dropping:  # the end of a socket we dropped is no close by the server
            result.closed_by_server = True
            result.close_code = exc.rcvd.code if exc.rcvd else None


async def _echo_marks(ws: ClientConnection, far: FarEnd | None) -> None:
    """Echo marks when the audio before them has played, between incoming frames too."""
    if far is None:
        return
    with contextlib.suppress(ConnectionClosed):
        while True:
            due = far.next_due()
            if due is None:
                far.mark_queued.clear()
                await far.mark_queued.wait()
                continue
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            for reply in far.advance(time.monotonic()):
                await ws.send(json.dumps(reply))


async def _send_dtmf(ws: ClientConnection, digits: list[tuple[float, str]], t0: float) -> None:
    """Press ``digits`` (sorted; seconds after ``t0``), taking each off once it is sent."""
    with contextlib.suppress(ConnectionClosed):
        while digits:
            at, digit = digits[0]
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            await ws.send(json.dumps({"event": "dtmf", "dtmf": {"digit": digit}}))
            digits.pop(0)


async def simulate(
    url: str,
    audio: np.ndarray | dict[str, np.ndarray],
    *,
    calls: int = 1,
    realtime: bool = False,
    stagger: float = 0.0,
    far_end: FarEndConfig | None = None,
    dtmf: Sequence[tuple[float, str]] = (),
    linger: float = 0.0,
    reconnect_after: float | None = None,
    **plan_options: object,
) -> list[CallResult]:
    """Run ``calls`` simulated calls at once (ids derived from ``stream_id`` when given)."""
    base_id = plan_options.pop("stream_id", None)
    plans = []
    for n in range(calls):
        stream_id = None if base_id is None else (base_id if calls == 1 else f"{base_id}-{n + 1}")
        seed = int(plan_options.get("seed", 0)) + n  # type: ignore[call-overload]
        options = {**plan_options, "seed": seed}
        plans.append(plan_call(audio, stream_id=stream_id, **options))  # type: ignore[arg-type]

    async def one(index: int, plan: CallPlan) -> CallResult:
        if stagger:
            await asyncio.sleep(stagger * index)
        return await send_call(
            url, plan, realtime=realtime, far_end=far_end, dtmf=dtmf, linger=linger,
            reconnect_after=reconnect_after,
        )  # fmt: skip

    return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(plans))))
