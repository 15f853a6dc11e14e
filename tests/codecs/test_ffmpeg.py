"""OPUS and AMR-WB (the ``ffmpeg`` extra), checked against independent encoders and decoders.

Opus packets come from FFmpeg's own libopus encoder through an in-memory Ogg file, not from
``OpusEncoder``; the references are FFmpeg decoders run outside ``OpusDecoder``, including
FFmpeg's native Opus decoder (a separate implementation from libopus). AMR-WB frames come from
the VisualOn encoder (Debian package ``libvo-amrwbenc0``, loaded with ctypes: neither PyPI nor
PyAV's FFmpeg has an AMR-WB encoder), are packed into RTP payloads by a packer written here from
the RFC 4867 layout, and are compared with FFmpeg's decoding of the ``.awb`` file.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soxr

av = pytest.importorskip("av")

from mediastream import codecs  # noqa: E402
from mediastream.codecs.ffmpeg import (  # noqa: E402
    AmrWbDecoder,
    OpusDecoder,
    OpusEncoder,
    detect_amrwb_octet_aligned,
    unpack_amrwb_payload,
)
from mediastream.errors import CodecError, UnsupportedCodecError  # noqa: E402
from mediastream.session import Audio, Session, Started  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------- signals and measures


def speech_like(rate: int, seconds: float = 2.0) -> np.ndarray:
    """Harmonics of a gliding pitch, shaped by two formants, cut into 2.5 Hz syllables."""
    n = int(rate * seconds)
    t = np.arange(n) / rate
    f0 = 140 + 60 * np.sin(2 * np.pi * 0.7 * t) + 20 * np.sin(2 * np.pi * 3.1 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    sig = np.zeros(n)
    for k in range(1, 30):
        fk = k * f0
        weight = np.exp(-(((fk - 700) / 400) ** 2)) + 0.5 * np.exp(-(((fk - 1800) / 600) ** 2))
        weight = np.where(fk < 0.45 * rate, (weight + 0.1) / np.sqrt(k), 0.0)
        sig += weight * np.sin(k * phase)
    sig *= np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) ** 0.7
    return (sig / np.abs(sig).max() * 12000).astype(np.int16)


def snr_db(ref: np.ndarray, test: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    noise = ref - test.astype(np.float64)
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum(noise**2), 1e-9)))


def lag_of(ref: np.ndarray, test: np.ndarray, max_lag: int) -> int:
    """How many samples ``test`` lags ``ref`` (cross-correlation peak within +-max_lag)."""
    n = min(len(ref), len(test))
    size = 1 << int(np.ceil(np.log2(2 * n)))
    spec = np.fft.rfft(test[:n].astype(float), size) * np.conj(
        np.fft.rfft(ref[:n].astype(float), size)
    )
    corr = np.fft.irfft(spec, size)
    lags = np.r_[np.arange(0, max_lag + 1), np.arange(-max_lag, 0)]
    return int(lags[np.argmax(corr[lags])])


def aligned_snr(ref: np.ndarray, test: np.ndarray, max_lag: int) -> tuple[int, float]:
    lag = lag_of(ref, test, max_lag)
    if lag >= 0:
        a, b = ref[: len(ref) - lag], test[lag:]
    else:
        a, b = ref[-lag:], test[: len(test) + lag]
    n = min(len(a), len(b))
    return lag, snr_db(a[:n], b[:n])


def to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 32768.0), -32768, 32767).astype(np.int16)


# ---------------------------------------------------------------- Opus references


def ffmpeg_opus_packets(pcm: np.ndarray, rate: int) -> list[bytes]:
    """Encode with FFmpeg's libopus into an in-memory Ogg file, and demux its packets back."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=rate)
        stream.layout = "mono"
        stream.format = "s16"
        step = rate // 50
        for i in range(0, len(pcm) - step + 1, step):
            frame = av.AudioFrame.from_ndarray(pcm[None, i : i + step], format="s16", layout="mono")
            frame.sample_rate = rate
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    buf.seek(0)
    with av.open(buf) as container:
        return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]


def ffmpeg_decode_48k(packets: list[bytes], codec_name: str) -> np.ndarray:
    """All packets through one fresh FFmpeg decoder at 48 kHz (libopus: int16, opus: float)."""
    ctx = av.CodecContext.create(codec_name, "r")
    ctx.layout = "mono"
    pieces = [f.to_ndarray().reshape(-1) for p in packets for f in ctx.decode(av.Packet(p))]
    return np.concatenate(pieces)


def swr_whole(pcm48: np.ndarray, rate: int) -> np.ndarray:
    """One-shot swresample of a whole int16 buffer (with flush)."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    frame = av.AudioFrame.from_ndarray(pcm48[None, :], format="s16", layout="mono")
    frame.sample_rate = 48000
    frames = resampler.resample(frame) + resampler.resample(None)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames])


@pytest.fixture(scope="module", params=[48000, 16000], ids=["src48k", "src16k"])
def opus_stream(request: pytest.FixtureRequest) -> tuple[int, np.ndarray, list[bytes]]:
    rate = request.param
    pcm = speech_like(rate)
    return rate, pcm, ffmpeg_opus_packets(pcm, rate)


# ---------------------------------------------------------------- Opus tests


@pytest.mark.parametrize("rate", [16000, 48000])
def test_opus_decoder_matches_ffmpeg(opus_stream: tuple, rate: int) -> None:
    src_rate, pcm, packets = opus_stream
    dec = codecs.decoder("OPUS", rate)
    assert dec.sample_rate == rate and dec.encoding == "OPUS"
    pieces = [dec.decode(p) for p in packets]
    # every packet gives exactly its duration at the output rate, even the first
    durations = [len(ffmpeg_decode_48k([p], "libopus")) for p in packets]
    assert [len(x) for x in pieces] == [d * rate // 48000 for d in durations]
    assert all(x.dtype == np.int16 for x in pieces)
    ours = np.concatenate(pieces)

    # same decoder and resampler, run by FFmpeg over the whole stream at once: identical but
    # for the resampler's priming, which ours turns into 16 leading zeros at rates below 48 kHz
    libopus = ffmpeg_decode_48k(packets, "libopus")
    same = libopus if rate == 48000 else swr_whole(libopus, rate)
    shift = 0 if rate == 48000 else 16
    np.testing.assert_array_equal(ours[:shift], 0)
    np.testing.assert_array_equal(ours[shift:], same[: len(ours) - shift])

    # FFmpeg's native Opus decoder (not libopus), resampled by soxr instead of swresample
    native = to_int16(soxr.resample(ffmpeg_decode_48k(packets, "opus"), 48000, rate, "VHQ"))
    lag, snr = aligned_snr(native, ours, 64)
    assert lag == shift
    assert snr >= 60  # measured 75-105 dB

    # and the audio is the source's: the codec's 6.5 ms lookahead, then speech
    source = pcm if src_rate == rate else soxr.resample(pcm, src_rate, rate).astype(np.int16)
    lag, snr = aligned_snr(source, ours, rate // 50)
    assert lag == 312 * rate // 48000 + shift
    assert snr >= 25  # measured 28.9 (48 kHz source) and 34.6 (16 kHz source)


def test_opus_decoder_native_fallback_matches(opus_stream: tuple) -> None:
    """The decoder built on FFmpeg's native ``opus`` (used when libopus is missing)."""
    _, _, packets = opus_stream
    native = OpusDecoder(16000, codec_name="opus")
    assert native.codec_name == "opus"
    out = [native.decode(p) for p in packets]
    assert all(len(x) == 320 for x in out[:-1])
    reference = OpusDecoder(16000)  # libopus
    ref = np.concatenate([reference.decode(p) for p in packets])
    assert snr_db(ref, np.concatenate(out)) >= 60


@pytest.mark.parametrize(("rate", "bound"), [(16000, 12.0), (48000, 12.0), (8000, 9.0)])
def test_opus_round_trip(rate: int, bound: float) -> None:
    pcm = speech_like(rate)
    enc, dec = codecs.encoder("OPUS", rate), codecs.decoder("OPUS", rate)
    step = rate // 50
    packets = [enc.encode(pcm[i : i + step]) for i in range(0, len(pcm) - step + 1, step)]
    # one packet per 20 ms frame from the very first call: nothing held back for lookahead
    assert len(packets) == len(pcm) // step and all(packets)
    ours = np.concatenate([dec.decode(p) for p in packets])
    assert len(ours) == len(pcm)
    lag, snr = aligned_snr(pcm, ours, step)
    delay = 312 * rate // 48000 + (0 if rate == 48000 else 16)  # lookahead + resampler
    assert abs(lag - delay) <= 4  # (the correlation peak of a lossy decode wanders a little)
    assert snr >= bound  # measured 13.9 (16 kHz), 13.5 (48 kHz), 10.7 (8 kHz) at 32 kbit/s
    # FFmpeg's native decoder reads our packets too (it trims up to 0.5 ms at the start)
    native = ffmpeg_decode_48k(packets, "opus")
    assert len(packets) * 960 - 24 <= len(native) <= len(packets) * 960


def test_opus_encoder_rejects_wrong_frames() -> None:
    enc = OpusEncoder(16000)
    with pytest.raises(CodecError, match="320"):
        enc.encode(np.zeros(640, dtype=np.int16))
    with pytest.raises(CodecError):
        enc.encode(np.zeros((1, 320), dtype=np.int16))
    with pytest.raises(CodecError, match="int16"):
        enc.encode(np.zeros(320, dtype=np.float32))
    with pytest.raises(UnsupportedCodecError):
        OpusEncoder(44100)
    assert len(enc.encode(np.zeros(320, dtype=np.int16))) > 0


def test_opus_decoder_edges() -> None:
    dec = OpusDecoder(16000)
    assert dec.decode(b"").dtype == np.int16 and len(dec.decode(b"")) == 0
    with pytest.raises(CodecError, match="OPUS"):
        dec.decode(b"\x03\x00")  # code-3 packet announcing zero frames: invalid (RFC 6716)
    with pytest.raises(UnsupportedCodecError):
        OpusDecoder(44100)
    assert OpusDecoder(None).sample_rate == 48000


# ---------------------------------------------------------------- AMR-WB helpers

# speech bits per frame type, RFC 4867 / 3GPP TS 26.201 (FT 14 speech lost, 15 no data: none)
SPEECH_BITS = {0: 132, 1: 177, 2: 253, 3: 285, 4: 317, 5: 365, 6: 397, 7: 461, 8: 477, 9: 40}
SPEECH_BITS |= {14: 0, 15: 0}


def rtp_payload(frames: list[bytes], octet_aligned: bool, cmr: int = 15) -> bytes:
    """Storage-format frames -> one RFC 4867 payload, written out bit by bit as text.

    Octet-aligned: CMR(4) R(4), ToC bytes F(1) FT(4) Q(1) P(2), frames each padded to octets.
    Bandwidth-efficient: CMR(4), ToC entries F FT Q, speech bits back to back, then padding.
    """
    bits = f"{cmr:04b}" + ("0000" if octet_aligned else "")
    for i, frame in enumerate(frames):
        more = int(i < len(frames) - 1)
        bits += f"{more}{frame[0] >> 3:04b}{frame[0] >> 2 & 1}" + ("00" if octet_aligned else "")
    for frame in frames:
        speech = "".join(f"{byte:08b}" for byte in frame[1:])[: SPEECH_BITS[frame[0] >> 3]]
        bits += speech + ("0" * (-len(speech) % 8) if octet_aligned else "")
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))


def _load_vo_amrwbenc() -> ctypes.CDLL | None:
    path = ctypes.util.find_library("vo-amrwbenc")
    if path is None:
        return None
    lib = ctypes.CDLL(path)
    lib.E_IF_init.restype = ctypes.c_void_p
    lib.E_IF_encode.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    lib.E_IF_encode.argtypes += [ctypes.c_int]
    lib.E_IF_exit.argtypes = [ctypes.c_void_p]
    return lib


VO_AMRWBENC = _load_vo_amrwbenc()
needs_encoder = pytest.mark.skipif(
    VO_AMRWBENC is None,
    reason="no AMR-WB encoder: needs Debian's libvo-amrwbenc0 (apt-get install libvo-amrwbenc0)",
)


def amrwb_encode(pcm: np.ndarray, mode: int, dtx: bool = False) -> list[bytes]:
    """16 kHz PCM -> storage-format frames (header byte + speech) from VisualOn's encoder."""
    assert VO_AMRWBENC is not None
    state = VO_AMRWBENC.E_IF_init()
    out = (ctypes.c_ubyte * 64)()
    frames = []
    try:
        for i in range(0, len(pcm) - 319, 320):
            block = np.ascontiguousarray(pcm[i : i + 320], dtype=np.int16)
            size = VO_AMRWBENC.E_IF_encode(state, mode, block.ctypes.data, out, int(dtx))
            frames.append(bytes(out[:size]))
    finally:
        VO_AMRWBENC.E_IF_exit(state)
    return frames


def ffmpeg_awb_decode(frames: list[bytes], codec_name: str | None = None) -> np.ndarray:
    """Decode an ``.awb`` file made of ``frames``: FFmpeg's demuxer splits it, not our code."""
    with av.open(io.BytesIO(b"#!AMR-WB\n" + b"".join(frames)), format="amr") as container:
        stream = container.streams.audio[0]
        ctx = av.CodecContext.create(codec_name, "r") if codec_name else stream.codec_context
        out = [f.to_ndarray().reshape(-1) for p in container.demux(stream) for f in ctx.decode(p)]
    pcm = np.concatenate(out)
    return pcm if pcm.dtype == np.int16 else to_int16(pcm)


def packed(frames: list[bytes], per_payload: int, octet_aligned: bool) -> list[bytes]:
    return [
        rtp_payload(frames[i : i + per_payload], octet_aligned)
        for i in range(0, len(frames), per_payload)
    ]


def random_frames(frame_types: list[int], seed: int = 5) -> list[bytes]:
    """Storage-format frames with random speech bits (zero padding), for decoder plumbing."""
    rng = np.random.default_rng(seed)
    frames = []
    for ft in frame_types:
        bits = SPEECH_BITS[ft]
        speech = bytearray(rng.integers(0, 256, (bits + 7) // 8, dtype=np.uint8).tobytes())
        if bits % 8:
            speech[-1] &= 0xFF << (8 - bits % 8) & 0xFF
        frames.append(bytes([ft << 3 | 4]) + bytes(speech))
    return frames


# ---------------------------------------------------------------- AMR-WB tests


def test_amrwb_unpack_hand_built_payloads() -> None:
    """One SID frame, d(0)..d(39) = A5 5A FF 00 3C, laid out by hand from RFC 4867 4.3/4.4."""
    speech = bytes.fromhex("a55aff003c")
    # bandwidth-efficient: 1111 | 0 1001 1 | 40 speech bits | 000000 padding
    be = bytes.fromhex("f4e956bfc00f00")
    # octet-aligned: 1111 0000 | 0 1001 1 00 | 5 speech bytes
    oa = bytes.fromhex("f04c") + speech
    assert unpack_amrwb_payload(be, octet_aligned=False) == [(9, True, speech)]
    assert unpack_amrwb_payload(oa, octet_aligned=True) == [(9, True, speech)]
    assert rtp_payload([bytes([9 << 3 | 4]) + speech], False) == be
    assert rtp_payload([bytes([9 << 3 | 4]) + speech], True) == oa
    assert detect_amrwb_octet_aligned(be) is False
    assert detect_amrwb_octet_aligned(oa) is True
    # several frames, with speech lost (14) and no data (15) taking no bits, and Q=0
    frames = [*random_frames([2, 14, 8, 15]), bytes([0 << 3]) + bytes(17)]
    expect = [(f[0] >> 3, bool(f[0] & 4), f[1:]) for f in frames]
    for octet_aligned in (True, False):
        payload = rtp_payload(frames, octet_aligned)
        assert unpack_amrwb_payload(payload, octet_aligned) == expect
        assert detect_amrwb_octet_aligned(payload) is octet_aligned


def test_amrwb_unpack_rejects_bad_payloads() -> None:
    good = rtp_payload(random_frames([2, 2]), octet_aligned=False)
    with pytest.raises(CodecError, match="too short"):
        unpack_amrwb_payload(good[:-3], octet_aligned=False)
    with pytest.raises(CodecError, match="left after"):
        unpack_amrwb_payload(good + b"\x00", octet_aligned=False)
    with pytest.raises(CodecError, match="reserved"):
        unpack_amrwb_payload(bytes([0xF0, 10 << 3]) + bytes(40), octet_aligned=True)
    with pytest.raises(CodecError, match="past the payload"):
        unpack_amrwb_payload(bytes([0xF0, 0x80 | 2 << 3]), octet_aligned=True)
    with pytest.raises(CodecError):
        detect_amrwb_octet_aligned(b"\xff" * 7)
    dec = AmrWbDecoder()
    assert len(dec.decode(b"")) == 0
    with pytest.raises(CodecError):
        dec.decode(good[:-3])


@pytest.mark.parametrize("codec_name", ["libopencore_amrwb", "amrwb"])
def test_amrwb_decodes_synthetic_frames_of_every_type(codec_name: str) -> None:
    types = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14, 15]
    frames = random_frames(types)
    dec = AmrWbDecoder(octet_aligned=False, codec_name=codec_name)
    out = [dec.decode(rtp_payload([f], octet_aligned=False)) for f in frames]
    assert [len(o) for o in out] == [320] * len(types)  # every frame is 20 ms, even SID/lost
    if codec_name == "libopencore_amrwb":
        ref = ffmpeg_awb_decode(frames, "libopencore_amrwb")
        np.testing.assert_array_equal(np.concatenate(out), ref)
    else:  # native amrwb cannot decode SID or lost frames: silence stands in
        assert not out[9].any() and not out[10].any() and not out[11].any()


@needs_encoder
@pytest.mark.parametrize("mode", [0, 2, 8])
@pytest.mark.parametrize("octet_aligned", [True, False], ids=["octet", "bwe"])
@pytest.mark.parametrize("per_payload", [1, 3])
def test_amrwb_matches_ffmpeg_decode_of_awb(mode: int, octet_aligned: bool, per_payload: int):
    pcm = speech_like(16000)
    frames = amrwb_encode(pcm, mode)
    assert {f[0] >> 3 for f in frames} == {mode} and len(frames) == 100
    payloads = packed(frames, per_payload, octet_aligned)

    # the unpacker gives back the encoder's own storage frames, bit for bit
    unpacked = [f for p in payloads for f in unpack_amrwb_payload(p, octet_aligned)]
    assert [bytes([ft << 3 | q << 2]) + s for ft, q, s in unpacked] == frames

    # default decoder (libopencore-amrwb) == FFmpeg decoding the .awb file with that decoder
    for given in (octet_aligned, None):  # the SDP's octet-align, or detection
        dec = codecs.decoder("AMR-WB", 16000, octet_aligned=given)
        ours = np.concatenate([dec.decode(p) for p in payloads])
        assert dec.sample_rate == 16000 and len(ours) == 320 * len(frames)
        np.testing.assert_array_equal(ours, ffmpeg_awb_decode(frames, "libopencore_amrwb"))
        assert dec.octet_aligned is octet_aligned

    # FFmpeg's native decoder, the one av.open picks for .awb: identical through ours too
    native = AmrWbDecoder(octet_aligned=octet_aligned, codec_name="amrwb")
    ours_native = np.concatenate([native.decode(p) for p in payloads])
    default_ffmpeg = ffmpeg_awb_decode(frames)
    np.testing.assert_array_equal(ours_native, default_ffmpeg)
    # the two FFmpeg decoders differ (the 6.4-7 kHz band is synthesised from noise)
    assert snr_db(default_ffmpeg, ours) >= {0: 17, 2: 28, 8: 28}[mode]  # 19.2/32.4/31.4 dB
    lag, snr = aligned_snr(pcm, ours, 400)
    assert lag == 95 and snr >= {0: 9, 2: 12, 8: 12}[mode]  # 10.6/13.1/13.4 dB vs the source


@needs_encoder
def test_amrwb_dtx_comfort_noise_and_lost_frames() -> None:
    rng = np.random.default_rng(3)
    pcm = speech_like(16000, 3.0)
    pcm[16000:] = rng.normal(0, 30, len(pcm) - 16000).astype(np.int16)  # 2 s of line noise
    frames = amrwb_encode(pcm, 2, dtx=True)
    assert {9, 15} <= {f[0] >> 3 for f in frames}  # SID and no-data frames appear
    frames[20] = bytes([14 << 3 | 4])  # a frame lost upstream
    for octet_aligned in (True, False):
        dec = AmrWbDecoder()
        ours = np.concatenate([dec.decode(p) for p in packed(frames, 2, octet_aligned)])
        np.testing.assert_array_equal(ours, ffmpeg_awb_decode(frames, "libopencore_amrwb"))
        assert dec.octet_aligned is octet_aligned
    native = AmrWbDecoder(codec_name="amrwb")
    out = [native.decode(p) for p in packed(frames, 1, False)]
    assert all(len(o) == 320 for o in out)


# ---------------------------------------------------------------- without PyAV


def test_missing_pyav_names_the_extra() -> None:
    code = """
import sys
sys.modules["av"] = None  # "import av" now raises ImportError
from mediastream import codecs
from mediastream.errors import UnsupportedCodecError
for make in (codecs.decoder, codecs.encoder):
    for name in ("OPUS", "AMR-WB", "audio/opus"):
        try:
            make(name)
        except UnsupportedCodecError as exc:
            print(exc)
        else:
            raise SystemExit(f"{name} did not fail")
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 6
    # AMR-WB has no encoder at all: that error says so instead of naming the extra
    assert sum("pip install 'mediastream[ffmpeg]'" in line for line in lines) == 5
    assert "not encoded" in lines[4]


# ---------------------------------------------------------------- through a Session


def _start(encoding: str, rate: int) -> str:
    fmt = {"encoding": encoding, "sample_rate": rate, "channels": 1}
    return json.dumps({"event": "start", "stream_id": "S1", "start": {"media_format": fmt}})


def _media(chunk: int, payload: bytes) -> str:
    body = {
        "track": "inbound",
        "chunk": str(chunk),
        "timestamp": str((chunk - 1) * 20),
        "payload": base64.b64encode(payload).decode(),
    }
    return json.dumps({"event": "media", "sequence_number": str(chunk + 1), "media": body})


def _session_audio(encoding: str, rate: int, payloads: list[bytes]) -> tuple[int, np.ndarray]:
    session = Session()
    frames = [_start(encoding, rate)] + [_media(i + 1, p) for i, p in enumerate(payloads)]
    events = [e for text in frames for e in session.receive_text(text)] + session.close()
    started = [e for e in events if isinstance(e, Started)]
    audio = [e for e in events if isinstance(e, Audio)]
    assert len(started) == 1 and len(audio) == len(payloads)
    assert [e.position for e in audio] == [320 * i for i in range(len(audio))]
    return started[0].sample_rate, np.concatenate([e.pcm for e in audio])


def test_session_decodes_an_opus_stream() -> None:
    pcm = speech_like(48000)
    packets = ffmpeg_opus_packets(pcm, 48000)[:-1]  # all 20 ms
    rate, audio = _session_audio("OPUS", 16000, packets)
    assert rate == 16000
    fresh = codecs.decoder("OPUS", 16000)
    np.testing.assert_array_equal(audio, np.concatenate([fresh.decode(p) for p in packets]))
    native = to_int16(soxr.resample(ffmpeg_decode_48k(packets, "opus"), 48000, 16000, "VHQ"))
    lag, snr = aligned_snr(native, audio, 64)
    assert lag == 16 and snr >= 20


def test_session_decodes_an_amrwb_stream() -> None:
    frames = random_frames([8] * 20 + [15] * 3 + [2] * 10)
    payloads = packed(frames, 1, octet_aligned=True)
    rate, audio = _session_audio("AMR-WB", 16000, payloads)
    assert rate == 16000
    np.testing.assert_array_equal(audio, ffmpeg_awb_decode(frames, "libopencore_amrwb"))
