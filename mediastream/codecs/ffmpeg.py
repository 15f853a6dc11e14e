"""OPUS and AMR-WB through FFmpeg (PyAV): the optional ``ffmpeg`` extra.

Both codecs are far too large to re-implement, and FFmpeg wraps the reference decoders (libopus
from Xiph, libopencore-amrwb from the 3GPP fixed-point code) that every other implementation is
checked against. PyAV is imported at the top on purpose: without the extra, importing this module
raises ImportError, which the registry turns into an error naming the extra and how to install
it (``mediastream.errors.install_hint("ffmpeg")``).

What goes over the WebSocket for these codecs is undocumented; we assume one RTP payload (no RTP
header) per ``media`` frame, as for the other codecs: one Opus packet (RFC 7587), or one AMR-WB
payload of one or more frames (RFC 4867, octet-aligned or bandwidth-efficient).
"""

from __future__ import annotations

import av
import numpy as np

from mediastream.errors import CodecError, UnsupportedCodecError

__all__ = [
    "AMRWB_FRAME_SAMPLES",
    "AMRWB_SAMPLE_RATE",
    "AMRWB_SPEECH_BITS",
    "OPUS_SAMPLE_RATES",
    "AmrWbDecoder",
    "OpusDecoder",
    "OpusEncoder",
    "detect_amrwb_octet_aligned",
    "storage_frame",
    "unpack_amrwb_payload",
]

OPUS_SAMPLE_RATES = (8000, 12000, 16000, 24000, 48000)
OPUS_FRAME_MS = 20
AMRWB_SAMPLE_RATE = 16000
AMRWB_FRAME_SAMPLES = 320  # every AMR-WB frame, speech or not, stands for 20 ms
# speech bits per frame type (3GPP TS 26.201 table 2); None = reserved frame types 10..13
AMRWB_SPEECH_BITS: tuple[int | None, ...] = (
    132, 177, 253, 285, 317, 365, 397, 461, 477,  # FT 0..8: modes 6.60 .. 23.85 kbit/s
    40,  # FT 9: SID (comfort noise)
    None, None, None, None,  # FT 10..13: reserved
    0,  # FT 14: speech lost
    0,  # FT 15: no data
)  # fmt: skip
FT_SID = 9
FT_SPEECH_LOST = 14
FT_NO_DATA = 15

_EMPTY = np.zeros(0, dtype=np.int16)
_EMPTY.setflags(write=False)


def _has_codec(name: str, mode: str) -> bool:
    try:
        av.Codec(name, mode)
    except ValueError:  # av.codec.codec.UnknownCodecError
        return False
    return True


def _open_decoder(encoding: str, wanted: str | None, preference: tuple[str, ...]) -> str:
    """Name of the FFmpeg decoder to use: ``wanted`` if given, else the first one built in."""
    names = (wanted,) if wanted else preference
    for name in names:
        if _has_codec(name, "r"):
            return name
    raise UnsupportedCodecError(
        f"{encoding}: this PyAV build has no FFmpeg decoder named {' or '.join(names)}"
    )


def _to_int16(frame: av.AudioFrame) -> np.ndarray:
    """Mono int16 samples of a decoded frame, float converted as FFmpeg's swresample does."""
    data = frame.to_ndarray()
    if data.dtype == np.int16:
        return data.reshape(-1)
    return np.clip(np.rint(data.reshape(-1) * 32768.0), -32768, 32767).astype(np.int16)


# ---------------------------------------------------------------- Opus


class OpusDecoder:
    """One Opus packet (an RFC 7587 RTP payload) -> mono int16 at ``sample_rate``.

    FFmpeg's Opus decoders always produce 48 kHz whatever the context asks for, so other rates
    go through a stateful swresample resampler. Its filter holds back a few samples (16 at
    every Opus rate); the decoder keeps a small backlog and starts the stream with that much
    silence, so every call returns exactly the packet's duration at ``sample_rate`` (320
    samples for 20 ms at 16 kHz) and the audio is delayed by about 1 ms. Prefers ``libopus``
    (the reference decoder, which also outputs int16 directly) over FFmpeg's native ``opus``.
    """

    encoding = "OPUS"
    stateless = False  # the decoder's and the resampler's state carry over between packets

    def __init__(self, sample_rate: int | None = None, *, codec_name: str | None = None) -> None:
        rate = 48000 if sample_rate is None else int(sample_rate)
        if rate not in OPUS_SAMPLE_RATES:
            raise UnsupportedCodecError(f"OPUS decodes at {OPUS_SAMPLE_RATES} Hz, not {rate}")
        self.sample_rate = rate
        self.codec_name = _open_decoder("OPUS", codec_name, ("libopus", "opus"))
        self._ctx = av.CodecContext.create(self.codec_name, "r")
        self._ctx.layout = "mono"  # stereo packets are downmixed by the decoder
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        self._in_samples = 0  # at the decoder's own rate (48 kHz)
        self._in_rate = 48000
        self._out_samples = 0
        self._backlog = _EMPTY

    def decode(self, payload: bytes) -> np.ndarray:
        if not payload:
            return _EMPTY.copy()
        try:
            frames = self._ctx.decode(av.Packet(payload))
            pieces = []
            for frame in frames:
                self._in_samples += frame.samples
                self._in_rate = frame.sample_rate
                pieces.extend(_to_int16(out) for out in self._resampler.resample(frame))
        except av.FFmpegError as exc:
            raise CodecError(
                f"OPUS: FFmpeg ({self.codec_name}) rejected a {len(payload)}-byte packet: {exc}"
            ) from exc
        return self._exact(pieces)

    def _exact(self, pieces: list[np.ndarray]) -> np.ndarray:
        """Return exactly the samples due so far; the resampler's priming becomes leading zeros."""
        due = self._in_samples * self.sample_rate // self._in_rate - self._out_samples
        buf = np.concatenate([self._backlog, *pieces]) if pieces else self._backlog
        if len(buf) < due:
            buf = np.concatenate([np.zeros(due - len(buf), dtype=np.int16), buf])
        out, self._backlog = buf[:due], buf[due:]
        self._out_samples += len(out)
        return np.array(out, dtype=np.int16)


class OpusEncoder:
    """Mono int16 PCM, exactly one 20 ms frame per call -> one Opus packet (one RTP payload).

    A ``media`` frame carries one RTP payload, so ``encode`` is strictly one frame in, one
    packet out. FFmpeg's ``libopus`` wrapper keeps that: it encodes every full frame at once and
    returns its packet, even the first one. Opus's 6.5 ms lookahead (312 samples at 48 kHz, the
    "pre-skip" of Ogg files) is inside the packets rather than held back, so the far end simply
    hears the audio 6.5 ms late; nothing needs priming or flushing in a live stream. FFmpeg's
    native ``opus`` encoder is not used: it is experimental and queues frames for its lookahead,
    which would break one packet per frame, so a PyAV build without libopus cannot encode.
    """

    encoding = "OPUS"

    def __init__(
        self,
        sample_rate: int | None = None,
        *,
        bitrate: int = 32000,
        application: str = "voip",
    ) -> None:
        rate = 48000 if sample_rate is None else int(sample_rate)
        if rate not in OPUS_SAMPLE_RATES:
            raise UnsupportedCodecError(f"OPUS encodes at {OPUS_SAMPLE_RATES} Hz, not {rate}")
        if not _has_codec("libopus", "w"):
            raise UnsupportedCodecError("OPUS: this PyAV build has no libopus encoder")
        self.sample_rate = rate
        self.frame_samples = rate * OPUS_FRAME_MS // 1000
        ctx = av.CodecContext.create("libopus", "w")
        ctx.sample_rate = rate
        ctx.layout = "mono"
        ctx.format = "s16"
        ctx.bit_rate = bitrate
        ctx.options = {"application": application, "frame_duration": str(OPUS_FRAME_MS)}
        try:
            ctx.open()
        except av.FFmpegError as exc:
            raise CodecError(f"OPUS: cannot open the libopus encoder: {exc}") from exc
        self._ctx = ctx
        self._pts = 0

    def encode(self, pcm: np.ndarray) -> bytes:
        samples = np.asarray(pcm)
        if samples.ndim != 1 or len(samples) != self.frame_samples:
            raise CodecError(
                f"OPUS: encode takes one {OPUS_FRAME_MS} ms frame of {self.frame_samples} mono"
                f" samples at {self.sample_rate} Hz, got shape {samples.shape}"
            )
        if samples.dtype != np.int16:
            if not np.issubdtype(samples.dtype, np.integer):
                raise CodecError(f"OPUS: encode takes int16 PCM, got {samples.dtype}")
            samples = np.clip(samples, -32768, 32767)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.int16)[None, :], format="s16", layout="mono"
        )
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        self._pts += self.frame_samples
        try:
            packets = self._ctx.encode(frame)
        except av.FFmpegError as exc:
            raise CodecError(f"OPUS: libopus could not encode a frame: {exc}") from exc
        if len(packets) != 1:
            raise CodecError(f"OPUS: expected one packet per frame, libopus gave {len(packets)}")
        return bytes(packets[0])


# ---------------------------------------------------------------- AMR-WB payload format


def _speech_bits(frame_type: int) -> int:
    bits = AMRWB_SPEECH_BITS[frame_type]
    if bits is None:
        raise CodecError(f"AMR-WB: frame type {frame_type} is reserved")
    return bits


def _unpack_octet_aligned(payload: bytes, strict: bool) -> list[tuple[int, bool, bytes]]:
    # | CMR (4) | R (4) | ToC bytes: F (1) FT (4) Q (1) P (2) ... | frames, each octet-padded |
    if strict and payload[0] & 0x0F:
        raise CodecError("AMR-WB octet-aligned: reserved bits after CMR are set")
    toc: list[tuple[int, bool]] = []
    pos = 1
    while True:
        if pos >= len(payload):
            raise CodecError("AMR-WB octet-aligned: table of contents runs past the payload")
        entry = payload[pos]
        pos += 1
        if strict and entry & 0x03:
            raise CodecError("AMR-WB octet-aligned: ToC padding bits are set")
        toc.append(((entry >> 3) & 0x0F, bool(entry & 0x04)))
        if not entry & 0x80:
            break
    frames = []
    for frame_type, quality in toc:
        bits = _speech_bits(frame_type)
        size = (bits + 7) // 8
        if pos + size > len(payload):
            raise CodecError(
                f"AMR-WB octet-aligned: payload of {len(payload)} bytes too short for its ToC"
            )
        speech = bytearray(payload[pos : pos + size])
        if bits % 8:  # padding bits of the last octet are zero in the storage format too
            speech[-1] &= (0xFF << (8 - bits % 8)) & 0xFF
        frames.append((frame_type, quality, bytes(speech)))
        pos += size
    if pos != len(payload):
        raise CodecError(
            f"AMR-WB octet-aligned: {len(payload) - pos} bytes left after the last frame"
        )
    return frames


def _unpack_bandwidth_efficient(payload: bytes, strict: bool) -> list[tuple[int, bool, bytes]]:
    # | CMR (4) | ToC entries: F (1) FT (4) Q (1) ... | speech bits back to back | zero padding |
    total = 8 * len(payload)
    value = int.from_bytes(payload, "big")

    def take(pos: int, count: int) -> int:
        return (value >> (total - pos - count)) & ((1 << count) - 1)

    toc: list[tuple[int, bool]] = []
    pos = 4
    while True:
        if pos + 6 > total:
            raise CodecError("AMR-WB bandwidth-efficient: table of contents runs past the payload")
        entry = take(pos, 6)
        pos += 6
        toc.append(((entry >> 1) & 0x0F, bool(entry & 0x01)))
        if not entry & 0x20:
            break
    frames = []
    for frame_type, quality in toc:
        bits = _speech_bits(frame_type)
        if pos + bits > total:
            raise CodecError(
                f"AMR-WB bandwidth-efficient: payload of {len(payload)} bytes too short for its ToC"
            )
        size = (bits + 7) // 8
        speech = (take(pos, bits) << (8 * size - bits)).to_bytes(size, "big")
        frames.append((frame_type, quality, speech))
        pos += bits
    if total - pos >= 8:
        raise CodecError(
            f"AMR-WB bandwidth-efficient: {(total - pos) // 8} bytes left after the last frame"
        )
    if strict and take(pos, total - pos):
        raise CodecError("AMR-WB bandwidth-efficient: padding bits are set")
    return frames


def unpack_amrwb_payload(payload: bytes, octet_aligned: bool) -> list[tuple[int, bool, bytes]]:
    """Split an RFC 4867 AMR-WB RTP payload into ``(frame_type, quality, speech_bytes)``.

    ``speech_bytes`` are the frame's speech bits, in the payload's (= 3GPP's sensitivity) order,
    left-aligned and zero-padded to whole octets: what follows the header byte in the ``.awb``
    storage format. The CMR (the sender's mode request) is ignored: we only receive. The
    payload length must match its table of contents exactly. Not supported: interleaving, CRCs,
    robust sorting and multi-channel sessions (SDP options Telnyx does not document).
    """
    if not payload:
        raise CodecError("AMR-WB: empty payload")
    if octet_aligned:
        return _unpack_octet_aligned(payload, strict=False)
    return _unpack_bandwidth_efficient(payload, strict=False)


def detect_amrwb_octet_aligned(payload: bytes) -> bool | None:
    """Which RFC 4867 mode ``payload`` is in: True, False, or None when it is valid in both.

    A payload is taken as valid in a mode only if its length matches its table of contents
    exactly and its reserved and padding bits are zero (RFC 4867 says senders set them to
    zero). The two layouts almost never fit the same bytes: the octet-aligned header's four
    reserved zero bits fall where a bandwidth-efficient payload has its first ToC entry, and
    the lengths must match too. Raises CodecError when the payload is valid in neither.
    """
    fits = []
    for octet_aligned in (True, False):
        try:
            if octet_aligned:
                _unpack_octet_aligned(payload, strict=True)
            else:
                _unpack_bandwidth_efficient(payload, strict=True)
        except CodecError:
            continue
        fits.append(octet_aligned)
    if not fits:
        raise CodecError(
            f"AMR-WB: {len(payload)}-byte payload is valid neither octet-aligned"
            " nor bandwidth-efficient (RFC 4867)"
        )
    return fits[0] if len(fits) == 1 else None


def storage_frame(frame_type: int, quality: bool, speech: bytes) -> bytes:
    """One frame in the ``.awb`` storage format (RFC 4867 section 5.3): header byte + speech."""
    return bytes([(frame_type << 3) | (int(quality) << 2)]) + speech


class AmrWbDecoder:
    """AMR-WB RTP payloads (RFC 4867) -> 16 kHz mono int16, 320 samples per frame.

    ``octet_aligned`` is the SDP's ``octet-align`` parameter. None (the default) detects it:
    the first payload that fits only one layout fixes the mode for the stream (it is negotiated
    once per call); until then a payload that fits both is read bandwidth-efficient, the RFC's
    default. Frames go one by one, in storage format, to FFmpeg's ``libopencore_amrwb`` (the
    3GPP reference decoder: comfort noise for SID and no-data frames, concealment for lost or
    damaged ones) or, if the build lacks it, FFmpeg's native ``amrwb``, which cannot decode SID
    or lost frames: those become 20 ms of silence there. ``sample_rate`` is ignored: AMR-WB is
    always 16 kHz.
    """

    encoding = "AMR-WB"
    sample_rate = AMRWB_SAMPLE_RATE
    stateless = False  # predictive, with concealment from the frames before

    def __init__(
        self,
        sample_rate: int | None = None,
        *,
        octet_aligned: bool | None = None,
        codec_name: str | None = None,
    ) -> None:
        del sample_rate
        self.octet_aligned = octet_aligned
        self.codec_name = _open_decoder("AMR-WB", codec_name, ("libopencore_amrwb", "amrwb"))
        self._ctx = av.CodecContext.create(self.codec_name, "r")
        self._native = self.codec_name == "amrwb"

    def _mode(self, payload: bytes) -> bool:
        if self.octet_aligned is not None:
            return self.octet_aligned
        detected = detect_amrwb_octet_aligned(payload)
        if detected is None:
            return False
        self.octet_aligned = detected
        return detected

    def decode(self, payload: bytes) -> np.ndarray:
        if not payload:
            return _EMPTY.copy()
        frames = unpack_amrwb_payload(payload, self._mode(payload))
        pieces = []
        for frame_type, quality, speech in frames:
            if self._native and frame_type in (FT_SID, FT_SPEECH_LOST):
                packet = bytes([FT_NO_DATA << 3])  # native amrwb mutes no-data frames
            else:
                packet = storage_frame(frame_type, quality, speech)
            try:
                decoded = self._ctx.decode(av.Packet(packet))
            except av.FFmpegError as exc:
                raise CodecError(
                    f"AMR-WB: FFmpeg ({self.codec_name}) rejected a frame of type"
                    f" {frame_type}: {exc}"
                ) from exc
            pieces.extend(_to_int16(frame) for frame in decoded)
        return np.concatenate(pieces) if pieces else _EMPTY.copy()
