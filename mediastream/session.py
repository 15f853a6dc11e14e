"""The per-stream state machine, sans I/O: feed it frames, get typed events and outbound text.

A ``Session`` knows the protocol, the codecs and the reorder buffers, and nothing about sockets,
tasks or files, so every behaviour (ordering, gaps, duplicates, bad input) is testable with
plain function calls. Errors in the input never raise: they become ``Error`` events, and the
audio around them is kept.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

import numpy as np

from mediastream import codecs
from mediastream.errors import CodecError, ProtocolError, UnsupportedCodecError
from mediastream.jitter import DEFAULT_DEPTH, MAX_GAP_FRAMES, ReorderBuffer, ReorderStats
from mediastream.logs import redact_secrets
from mediastream.protocol.dialects import TELNYX_OUTBOUND, Outbound
from mediastream.protocol.frames import (
    ConnectedFrame,
    DtmfFrame,
    ErrorFrame,
    InboundFrame,
    MarkFrame,
    MediaFormat,
    MediaFrame,
    StartFrame,
    StartInfo,
    StopFrame,
    UnknownFrame,
    counter,
    decode_base64,
    parse_frame,
    parse_media,
)

# Media that arrives before ``start`` is held (up to this many frames) and decoded once the
# format is known, instead of being thrown away.
MAX_EARLY_FRAMES = 500
# Timestamps larger than this (ms) are not "ms since stream start"; they are not used to place
# the first frame of a track.
MAX_TRUSTED_TIMESTAMP_MS = 6 * 3600 * 1000
MAX_REMEMBERED_GAPS = 512
TRACKS = ("inbound", "outbound")  # what a carrier streams; other names are refused
FRAME_SECONDS = 0.020  # the carriers' frame: chunk n is due n × 20 ms after chunk 0


class State(Enum):
    AWAITING_START = "awaiting_start"
    STREAMING = "streaming"
    STOPPED = "stopped"


# ---------------------------------------------------------------- events


@dataclass(slots=True)
class Connected:
    version: str | None
    auth_token: str | None = field(repr=False, default=None)


@dataclass(slots=True)
class Started:
    stream_id: str
    info: StartInfo
    media_format: MediaFormat
    sample_rate: int  # the decoded PCM rate (16000 for G722 whatever the frame says)


@dataclass(slots=True)
class Audio:
    """Decoded audio of one frame (or silence standing in for a lost one).

    ``position`` is the index of the first sample on the track's timeline, counted from the
    start of the stream at ``sample_rate``: it is what places audio in a recording. ``late``
    audio arrived after its slot was given up (and played as silence): it is out of order, for
    recordings to put back in place; handlers are not given it.
    """

    track: str
    pcm: np.ndarray
    sample_rate: int
    position: int
    chunk: int | None = None
    missing: bool = False
    late: bool = False

    @property
    def timestamp_ms(self) -> float:
        return self.position * 1000.0 / self.sample_rate

    @property
    def duration_ms(self) -> float:
        return len(self.pcm) * 1000.0 / self.sample_rate


@dataclass(slots=True)
class Dtmf:
    digit: str
    occurred_at: str | None = None


@dataclass(slots=True)
class MarkEcho:
    name: str


@dataclass(slots=True)
class Error:
    """Something wrong in the input (``source="protocol"``/``"codec"``) or reported by the carrier.

    ``fatal`` errors end the stream (an unsupported codec, for example); others are reported
    and the stream goes on.
    """

    kind: str
    message: str
    source: Literal["protocol", "codec", "carrier"] = "protocol"
    code: int | str | None = None
    title: str | None = None
    detail: str | None = None
    fatal: bool = False


@dataclass(slots=True)
class Stopped:
    reason: Literal["stop", "closed"]


Event = Connected | Started | Audio | Dtmf | MarkEcho | Error | Stopped


# ---------------------------------------------------------------- per-track state


@dataclass(slots=True)
class _Track:
    name: str
    decoder: codecs.Decoder
    buffer: ReorderBuffer[tuple[bytes, int | str | None]]
    position: int | None = None
    frame_samples: int = 0
    first_key: int | None = None
    first_position: int = 0
    # where given-up slots sit, so a frame arriving after its slot was filled can go back there
    gap_positions: dict[int, int] = field(default_factory=dict)

    def remember_gap(self, key: int | None, position: int) -> None:
        if key is None:
            return
        self.gap_positions[key] = position
        if len(self.gap_positions) > MAX_REMEMBERED_GAPS:
            del self.gap_positions[next(iter(self.gap_positions))]


@dataclass(slots=True)
class SessionStats:
    frames: int = 0
    media_frames: int = 0
    audio_bytes: int = 0
    errors: int = 0


class Session:
    """One stream's protocol state. Not thread-safe; one per socket (or per resumed stream)."""

    def __init__(
        self,
        *,
        reorder_depth: int = DEFAULT_DEPTH,
        codec_options: dict[str, dict[str, object]] | None = None,
        max_gap_frames: int = MAX_GAP_FRAMES,
    ) -> None:
        self.state = State.AWAITING_START
        self.stream_id: str | None = None
        # the id a frame named before ``start`` (so early problems can be logged with it)
        self.claimed_stream_id: str | None = None
        self.start: StartFrame | None = None
        self.media_format: MediaFormat | None = None
        self.sample_rate: int | None = None
        self.stats = SessionStats()
        # outbound frame text, in the dialect ``start`` arrived in (decided once per stream)
        self.outbound: Outbound = TELNYX_OUTBOUND
        self._reorder_depth = reorder_depth
        self._max_gap_frames = max_gap_frames
        self._codec_options = codec_options or {}
        self._tracks: dict[str, _Track] = {}
        self._early: list[MediaFrame] = []
        self._early_reported = False
        # the decoder made to validate the codec at start serves the first track
        self._probe_decoder: codecs.Decoder | None = None
        # arrival timing (``runtime/report.py``), when someone asked for it: per track, each
        # media frame's transit (``now`` less its counter × 20 ms), whatever became of the
        # frame, appended here; whoever set it takes them. None: not timed.
        self.transits: dict[str, array[float]] | None = None
        self.now = 0.0  # set by the caller before ``receive_text``: when the frame came in

    # ------------------------------------------------------------ input

    def receive_text(self, text: str | bytes) -> list[Event]:
        """Parse and handle one text frame. Malformed input becomes an ``Error`` event."""
        self.stats.frames += 1
        if self.state is State.STREAMING:  # nearly every frame: media, read without a model
            media = parse_media(text)
            if media is not None:
                self.stats.media_frames += 1
                return self._media(media.track, media.key, media.timestamp, media.payload)
        try:
            frame = parse_frame(text)
        except ProtocolError as exc:
            kind = "malformed_json" if "not valid JSON" in str(exc) else "invalid_frame"
            return [self._error(kind, f"{exc}; frame began {_sample(text)}")]
        except Exception as exc:  # a parser bug must not end the stream: it is bad input too
            message = f"frame could not be read ({type(exc).__name__}: {exc})"
            return [self._error("invalid_frame", f"{message}; frame began {_sample(text)}")]
        return self.receive_frame(frame)

    def receive_frame(self, frame: InboundFrame | UnknownFrame) -> list[Event]:
        if self.stream_id is None and self.claimed_stream_id is None:
            self.claimed_stream_id = getattr(frame, "stream_id", None)
        if isinstance(frame, MediaFrame):
            return self._on_media(frame)
        if isinstance(frame, StartFrame):
            return self._on_start(frame)
        if isinstance(frame, StopFrame):
            return self._on_stop("stop")
        if isinstance(frame, DtmfFrame):
            return [Dtmf(frame.dtmf.digit, frame.occurred_at)]
        if isinstance(frame, MarkFrame):
            return [MarkEcho(frame.mark.name)]
        if isinstance(frame, ErrorFrame):
            p = frame.payload
            return [
                Error(
                    "carrier_error",
                    f"carrier reported error {p.code} {p.title}: {p.detail}",
                    source="carrier",
                    code=p.code,
                    title=p.title,
                    detail=p.detail,
                )
            ]
        if isinstance(frame, ConnectedFrame):
            return [Connected(frame.version, frame.auth_token)]
        return [self._error("unknown_event", f"unknown event {frame.event!r} ignored")]

    def close(self) -> list[Event]:
        """The socket went away: release held audio and end, as if ``stop`` had come."""
        if self.state is State.STOPPED:
            return []
        events: list[Event] = []
        if self._early:
            events.append(
                self._error(
                    "media_before_start",
                    f"{len(self._early)} media frames arrived but no start: audio format unknown",
                )
            )
        return events + self._on_stop("closed")

    # ------------------------------------------------------------ output

    # In the dialect of the stream's ``start`` (``self.outbound``): Twilio drops frames
    # without its ``streamSid``; Telnyx frames carry no stream id.

    def media(self, payload: bytes) -> str:
        """Outbound ``media`` frame text for an encoded payload (RTP payload or MP3 file)."""
        return self.outbound.media(payload)

    def mark(self, name: str) -> str:
        return self.outbound.mark(name)

    def clear(self) -> str:
        return self.outbound.clear()

    # ------------------------------------------------------------ handlers

    def _on_start(self, frame: StartFrame) -> list[Event]:
        if self.state is not State.AWAITING_START:
            if frame.stream_id == self.stream_id:
                return [self._error("duplicate_start", "second start for the stream ignored")]
            return [
                self._error(
                    "unexpected_start",
                    f"start for another stream {frame.stream_id!r} on this socket ignored",
                )
            ]
        self.stream_id = frame.stream_id
        fmt = frame.start.media_format
        options = self._codec_options.get(fmt.encoding, {})
        try:
            probe = codecs.decoder(fmt.encoding, fmt.sample_rate, **options)
        except UnsupportedCodecError as exc:
            self.state = State.STOPPED
            return [self._error("unsupported_codec", str(exc), source="codec", fatal=True)]
        self.start = frame
        self.outbound = Outbound.for_stream(frame.dialect, frame.stream_id)
        self.media_format = fmt
        self.sample_rate = probe.sample_rate
        self.state = State.STREAMING
        self._probe_decoder = probe
        events: list[Event] = [Started(frame.stream_id, frame.start, fmt, probe.sample_rate)]
        early, self._early = self._early, []
        for media in early:
            events.extend(self._on_media(media))
        return events

    def _on_media(self, frame: MediaFrame) -> list[Event]:
        self.stats.media_frames += 1
        if self.state is State.AWAITING_START:
            if not self._early_reported:
                self._early_reported = True
                report = [self._error("media_before_start", "media before start: held until start")]
            else:
                report = []
            if len(self._early) < MAX_EARLY_FRAMES:
                self._early.append(frame)
            return report
        if self.state is State.STOPPED:
            return [self._error("media_after_stop", "media after the stream ended ignored")]
        media = frame.media
        key = media.chunk if media.chunk is not None else frame.sequence_number
        return self._media(media.track, key, media.timestamp, media.payload)

    def _media(
        self, track_name: str, key: int | None, timestamp: int | str | None, payload_text: str
    ) -> list[Event]:
        """One media frame of a started stream: decoded now if it is the next one expected
        (the common case), else through the reorder buffer."""
        transits = self.transits
        if transits is not None and key is not None:  # one append: the report counts later
            pending = transits.get(track_name)
            if pending is not None:
                pending.append(self.now - key * FRAME_SECONDS)
        try:
            payload = decode_base64(payload_text, stream_id=self.stream_id)
        except ProtocolError as exc:
            return [self._error("invalid_base64", str(exc))]
        self.stats.audio_bytes += len(payload)
        track = self._tracks.get(track_name)
        if track is None:
            if track_name not in TRACKS:  # its audio would land on a real track's channel
                return [self._error("unknown_track", f"media on unknown track {track_name!r}")]
            track = self._track(track_name)
        if track.buffer.take_in_order(key):
            events: list[Event] = []
            self._decode_slot(track, key, (payload, timestamp), events)
            return events
        buffer = track.buffer
        restarts = buffer.stats.discontinuities
        events = self._decode_released(track, buffer.push(key, (payload, timestamp)))
        if buffer.stats.discontinuities != restarts:
            events.append(self._timeline_restart(track, key))
        return events

    def _on_stop(self, reason: Literal["stop", "closed"]) -> list[Event]:
        if self.state is State.STOPPED:
            return [self._error("duplicate_stop", "stop after the stream ended ignored")]
        events: list[Event] = []
        for track in self._tracks.values():
            restarts = track.buffer.stats.discontinuities
            events.extend(self._decode_released(track, track.buffer.flush()))
            if track.buffer.stats.discontinuities != restarts:
                events.append(self._timeline_restart(track, None))
        self.state = State.STOPPED
        events.append(Stopped(reason))
        return events

    # ------------------------------------------------------------ audio

    def _track(self, name: str) -> _Track:
        track = self._tracks.get(name)
        if track is None:
            assert self.media_format is not None
            fmt = self.media_format
            decoder = self._probe_decoder
            self._probe_decoder = None
            if decoder is None:
                options = self._codec_options.get(fmt.encoding, {})
                decoder = codecs.decoder(fmt.encoding, fmt.sample_rate, **options)
            buffer: ReorderBuffer[tuple[bytes, int | str | None]] = ReorderBuffer(
                self._reorder_depth, max_gap=self._max_gap_frames
            )
            track = _Track(name, decoder, buffer)
            self._tracks[name] = track
        return track

    def _decode_released(self, track: _Track, released: list) -> list[Event]:
        events: list[Event] = []
        for slot in released:
            if slot.late:
                events.extend(self._late_audio(track, slot.key, slot.item))
            else:
                self._decode_slot(track, slot.key, slot.item, events)
        return events

    def _decode_slot(
        self,
        track: _Track,
        key: int | None,
        item: tuple[bytes, int | str | None] | None,
        events: list[Event],
    ) -> None:
        """Decode the track's next slot onto ``events`` (``item`` None: the frame was lost)."""
        rate = track.decoder.sample_rate
        pcm = None
        if item is not None:
            payload, timestamp = item
            try:
                pcm = track.decoder.decode(payload)
            except (CodecError, ValueError) as exc:
                events.append(
                    self._error("decode_error", f"{track.name} frame {key}: {exc}", "codec")
                )
            if pcm is not None and track.position is None:
                track.position = track.first_position = _first_position(counter(timestamp), rate)
                track.first_key = key
        if pcm is None:  # lost, or undecodable: silence of a frame's length
            if track.position is None or not track.frame_samples:
                return
            pcm = np.zeros(track.frame_samples, dtype=np.int16)
            track.remember_gap(key, track.position)
            events.append(Audio(track.name, pcm, rate, track.position, key, True))
        else:
            track.frame_samples = len(pcm) or track.frame_samples
            events.append(Audio(track.name, pcm, rate, track.position, key))
        track.position += len(pcm)

    def _late_audio(
        self, track: _Track, key: int | None, item: tuple[bytes, int | str | None] | None
    ) -> list[Event]:
        """Decode a frame that missed its slot and say where it belongs.

        Only stateless codecs can decode a frame out of order; for the others (G.722) the
        frame is reported and dropped, since decoding it would corrupt the predictor state.
        """
        if key is None or item is None:
            return []
        position = track.gap_positions.pop(key, None)
        if position is None and track.first_key is not None and key < track.first_key:
            position = track.first_position - (track.first_key - key) * track.frame_samples
        if position is None or position < 0 or not track.decoder.stateless:
            return [self._error("late_frame", f"{track.name} frame {key} too late, dropped")]
        try:
            pcm = track.decoder.decode(item[0])
        except (CodecError, ValueError) as exc:
            return [self._error("decode_error", f"{track.name} frame {key}: {exc}", "codec")]
        return [Audio(track.name, pcm, track.decoder.sample_rate, position, key, late=True)]

    def _timeline_restart(self, track: _Track, key: int | None) -> Error:
        return self._error(
            "timeline_restart",
            f"{track.name} counter jumped past the gap bound at frame {key} "
            f"({self._max_gap_frames} frames, or more silence than audio received): "
            "audio continues right after the last frame",
        )

    def _error(
        self,
        kind: str,
        message: str,
        source: Literal["protocol", "codec", "carrier"] = "protocol",
        fatal: bool = False,
    ) -> Error:
        self.stats.errors += 1
        return Error(kind, message, source=source, fatal=fatal)

    def reorder_stats(self) -> dict[str, ReorderStats]:
        return {name: track.buffer.stats for name, track in self._tracks.items()}


def _sample(text: str | bytes, limit: int = 80) -> str:
    """The start of an offending frame, for logs (an auth token in it is redacted)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return repr(redact_secrets(text[:limit]))


def _first_position(timestamp_ms: int | None, rate: int) -> int:
    """Where a track's first frame sits: its timestamp (ms since stream start), when plausible."""
    if timestamp_ms is None or not 0 <= timestamp_ms <= MAX_TRUSTED_TIMESTAMP_MS:
        return 0
    return timestamp_ms * rate // 1000
