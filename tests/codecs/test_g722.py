"""G.722: bit-exact with the ITU-T G.191 vectors (compiled and as plain Python), with the G722
package and with FFmpeg; stateful frame by frame; banks of streams; lazy numba import; cache dir.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mediastream import codecs
from mediastream.codecs import _numba_cache
from mediastream.codecs.g722 import LANES, G722Decoder, G722DecoderBank, G722Encoder
from mediastream.errors import CodecError

try:  # independent implementations to compare with (the test extra installs both)
    import G722
except ImportError:  # pragma: no cover
    G722 = None
try:
    import av
except ImportError:  # pragma: no cover
    av = None

needs_others = pytest.mark.skipif(
    G722 is None or av is None, reason="needs the G722 package and PyAV: pip install -e '.[test]'"
)

REPO = Path(__file__).resolve().parents[2]
FRAME = 160  # octets in 20 ms


def _stl_dir() -> Path:
    override = os.environ.get("MEDIASTREAM_ITU_STL")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[3] / "shared" / "conformance" / "itu-stl"


@dataclass(frozen=True)
class Vectors:
    speech: np.ndarray  # int16 encoder input
    codes: bytes  # 64 kbit/s code octets
    decoded: dict[int, np.ndarray]  # mode -> int16 decoder output


@pytest.fixture(scope="module")
def vectors() -> Vectors:
    folder = _stl_dir() / "g722"
    if not folder.is_dir():
        pytest.skip(
            f"ITU-T G.191 G.722 vectors not found at {folder} "
            "(set MEDIASTREAM_ITU_STL to the itu-stl folder to run conformance tests)"
        )
    words = np.fromfile(folder / "codspw.cod", dtype="<u2")
    assert np.all(words >> 8 == 0), "codspw.cod holds one octet per word, high byte 0"
    return Vectors(
        speech=np.fromfile(folder / "inpsp.bin", dtype="<i2").astype(np.int16),
        codes=(words & 0xFF).astype(np.uint8).tobytes(),
        decoded={m: np.fromfile(folder / f"outsp{m}.bin", dtype="<i2") for m in (1, 2, 3)},
    )


def _encode_frames(encoder: G722Encoder, pcm: np.ndarray, size: int = 2 * FRAME) -> bytes:
    return b"".join(encoder.encode(pcm[i : i + size]) for i in range(0, len(pcm), size))


def _decode_frames(decoder: G722Decoder, codes: bytes, size: int = FRAME) -> np.ndarray:
    return np.concatenate([decoder.decode(codes[i : i + size]) for i in range(0, len(codes), size)])


def _mismatch(ours: bytes | np.ndarray, reference: bytes | np.ndarray) -> str:
    a = np.frombuffer(ours, np.uint8) if isinstance(ours, bytes) else ours
    b = np.frombuffer(reference, np.uint8) if isinstance(reference, bytes) else reference
    if len(a) != len(b):
        return f"lengths differ: {len(a)} != {len(b)}"
    where = np.flatnonzero(a != b)
    return f"{where.size} of {len(a)} differ, first at {where[:5].tolist()}"


# ---------------------------------------------------------------------------------------------
# 1. ITU-T G.191 vectors
# ---------------------------------------------------------------------------------------------
def test_vectors_are_what_the_readme_says(vectors: Vectors):
    assert len(vectors.speech) == 97536 and len(vectors.codes) == 48768
    assert vectors.codes[0] == 0xFA
    assert all(len(d) == 97536 for d in vectors.decoded.values())


@pytest.mark.slow
def test_encoder_matches_g191_whole_and_frame_by_frame(vectors: Vectors):
    whole = G722Encoder().encode(vectors.speech)
    assert whole == vectors.codes, _mismatch(whole, vectors.codes)
    framed = _encode_frames(G722Encoder(), vectors.speech)
    assert framed == vectors.codes, _mismatch(framed, vectors.codes)


@pytest.mark.parametrize("mode", [1, 2, 3])
def test_decoder_matches_g191_whole_and_frame_by_frame(vectors: Vectors, mode: int):
    reference = vectors.decoded[mode]
    whole = G722Decoder(mode=mode).decode(vectors.codes)
    assert whole.dtype == np.int16
    assert np.array_equal(whole, reference), _mismatch(whole, reference)
    framed = _decode_frames(G722Decoder(mode=mode), vectors.codes)
    assert np.array_equal(framed, reference), _mismatch(framed, reference)


def test_registry_builds_the_g722_codec(vectors: Vectors):
    decoder = codecs.decoder("audio/G722", sample_rate=8000, mode=2)
    encoder = codecs.encoder("G.722", sample_rate=8000)
    assert isinstance(decoder, G722Decoder) and isinstance(encoder, G722Encoder)
    assert decoder.encoding == encoder.encoding == "G722"
    # RTP says 8000 for G.722; the audio is 16 kHz whatever the caller passes
    assert decoder.sample_rate == encoder.sample_rate == 16000
    assert np.array_equal(decoder.decode(vectors.codes[:FRAME]), vectors.decoded[2][: 2 * FRAME])
    assert encoder.encode(vectors.speech[: 2 * FRAME]) == vectors.codes[:FRAME]


# ---------------------------------------------------------------------------------------------
# 2. The same source as plain Python (numba disabled)
# ---------------------------------------------------------------------------------------------
_PLAIN_PYTHON_CHECK = """
import json, sys
import numpy as np
from mediastream.codecs import g722
from mediastream.codecs.g722 import G722Decoder, G722Encoder

# with NUMBA_DISABLE_JIT=1, njit hands back the plain functions: prove this is not compiled code
assert not hasattr(g722._decode, "py_func") and not hasattr(g722._adapt, "py_func")
folder, octets = sys.argv[1], int(sys.argv[2])
speech = np.fromfile(folder + "/inpsp.bin", dtype="<i2")[: 2 * octets].astype(np.int16)
codes = (np.fromfile(folder + "/codspw.cod", dtype="<u2") & 0xFF).astype(np.uint8)
codes = codes[:octets].tobytes()
results = {}
def frames(f, data, size):
    return [f(data[i : i + size]) for i in range(0, len(data), size)]
encoder = G722Encoder()
results["encode"] = encoder.encode(speech) == codes
encoder = G722Encoder()
results["encode framed"] = b"".join(frames(encoder.encode, speech, 320)) == codes
for mode in (1, 2, 3):
    reference = np.fromfile(f"{folder}/outsp{mode}.bin", dtype="<i2")[: 2 * octets]
    whole = G722Decoder(mode=mode).decode(codes)
    results[f"decode mode {mode}"] = bool(np.array_equal(whole, reference))
    decoder = G722Decoder(mode=mode)
    framed = np.concatenate(frames(decoder.decode, codes, 160))
    results[f"decode mode {mode} framed"] = bool(np.array_equal(framed, reference))
print(json.dumps(results))
"""


def _env(**changes: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_plain_python_source_matches_g191(vectors: Vectors):
    """The whole vectors, whole-buffer and frame by frame, in every mode: about 20 s of CPU
    (some 7 ms per 20 ms frame: the plain-Python source is a reference, not a decoder)."""
    octets = len(vectors.codes)
    done = subprocess.run(
        [sys.executable, "-c", _PLAIN_PYTHON_CHECK, str(_stl_dir() / "g722"), str(octets)],
        env=_env(NUMBA_DISABLE_JIT="1"),
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results == dict.fromkeys(results, True) and len(results) == 8, results


# ---------------------------------------------------------------------------------------------
# 3. Other implementations: the G722 package (libg722) and FFmpeg through PyAV
# ---------------------------------------------------------------------------------------------
_BITRATE = {1: 64000, 2: 56000, 3: 48000}


def _package_decode(codes: bytes, mode: int = 1) -> np.ndarray:
    """libg722 at 56 and 48 kbit/s takes 7- and 6-bit codewords (high-band bits on top, the
    lower band's auxiliary-data bits dropped), not G.722 octets: repack them."""
    if mode != 1:
        octets = np.frombuffer(codes, np.uint8)
        drop = mode - 1
        codes = (((octets >> 6) << (6 - drop)) | ((octets & 0x3F) >> drop)).astype(np.uint8)
        codes = codes.tobytes()
    return np.asarray(G722.G722(16000, _BITRATE[mode]).decode(codes), dtype=np.int16)


def _package_encode(pcm: np.ndarray) -> bytes:
    return bytes(G722.G722(16000, 64000).encode(np.ascontiguousarray(pcm, dtype=np.int16)))


def _ffmpeg_decode(codes: bytes, mode: int = 1) -> np.ndarray:
    """One packet per 20 ms frame; FFmpeg's decoder returns each frame's audio at once."""
    context = av.CodecContext.create("g722", "r")
    context.sample_rate = 16000
    context.layout = "mono"
    context.format = "s16"
    context.options = {"bits_per_codeword": str(9 - mode)}  # 8, 7, 6
    out = []
    for i in range(0, len(codes), FRAME):
        frames = context.decode(av.Packet(codes[i : i + FRAME]))
        assert len(frames) == 1  # no buffering: one frame out per packet in
        out.append(frames[0].to_ndarray().reshape(-1))
    return np.concatenate(out)


def _ffmpeg_encode(pcm: np.ndarray) -> bytes:
    """Frames of 320 samples (FFmpeg's frame_size); each gives its 160-octet packet at once."""
    assert len(pcm) % (2 * FRAME) == 0
    context = av.CodecContext.create("g722", "w")
    context.sample_rate = 16000
    context.layout = "mono"
    context.format = "s16"
    out = []
    for i in range(0, len(pcm), 2 * FRAME):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm[None, i : i + 2 * FRAME], dtype=np.int16),
            format="s16",
            layout="mono",
        )
        frame.sample_rate = 16000
        packets = context.encode(frame)
        assert len(packets) == 1 and packets[0].size == FRAME
        out.append(bytes(packets[0]))
    assert context.encode(None) == []  # nothing held back
    return b"".join(out)


def _speech_like(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """Harmonics of a gliding pitch under a syllable-rate envelope, plus noise; peak 24000."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    f0 = 140 + 50 * np.sin(2 * np.pi * 0.8 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    voiced = sum(
        np.sin(k * phase + rng.uniform(0, 2 * np.pi))
        * (1 + 0.5 * np.sin(2 * np.pi * 0.37 * k * t))
        / k
        for k in range(1, 40)
    )
    envelope = np.abs(np.sin(2 * np.pi * 2.5 * t)) ** 0.7
    x = voiced * envelope + rng.normal(0, 0.03, t.size)
    return np.round(x / np.abs(x).max() * 24000).astype(np.int16)


def _square(period: int, seconds: float = 1.0) -> np.ndarray:
    n = int(16000 * seconds)
    return np.where((np.arange(n) // (period // 2)) % 2 == 0, 32767, -32768).astype(np.int16)


def _clipped_sine(freq: float, gain: float, seconds: float = 1.0) -> np.ndarray:
    x = gain * 32767 * np.sin(2 * np.pi * freq * np.arange(int(16000 * seconds)) / 16000)
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


# inputs on which every implementation must agree octet for octet (full-range white noise does
# overload the QMF analysis, yet the codes agree: there the quantizer is at its top level with
# or without G.191's limit)
AGREED = {
    "speech-like": _speech_like(),
    "speech-like, other seed": _speech_like(seed=7),
    "white noise, full range": np.random.default_rng(3)
    .integers(-32768, 32768, 32000)
    .astype(np.int16),
    "sine 1 kHz, full scale": _clipped_sine(1000, 1.0),
    "sine 150 Hz, full scale": _clipped_sine(150, 1.0),
    "DC +32767": np.full(3200, 32767, np.int16),
    "DC -32768": np.full(3200, -32768, np.int16),
    "silence": np.zeros(3200, np.int16),
}
# full-scale inputs whose QMF analysis overshoots: here G.191 and libg722/FFmpeg part ways
OVERLOADING = {
    "square 200 Hz, +32767/-32768": _square(80),
    "square 1 kHz, +32767/-32768": _square(16),
    "sine 440 Hz clipped (3x full scale)": _clipped_sine(440, 3.0),
    "sine 3 kHz clipped (1.5x full scale)": _clipped_sine(3000, 1.5),
}

_QMF = np.array(
    [3, -11, -11, 53, 12, -156, 32, 362, -210, -805, 951, 3876,
     3876, 951, -805, -210, 362, 32, -156, 12, 53, -11, -11, 3],
    dtype=np.int64,
)  # fmt: skip


def _first_qmf_overload(pcm: np.ndarray) -> int | None:
    """Index of the first sample pair whose G.191 QMF analysis output (``xl`` or ``xh``, before
    ``limit``) leaves -16384..16383, computed independently of the codec, or None."""
    x = np.concatenate([np.zeros(22, np.int64), pcm.astype(np.int64)])
    pairs = np.arange(len(pcm) // 2)
    # delay line of pair t, newest first: x[2t+1], x[2t], x[2t-1], ..., x[2t-22]
    taps = x[22 + 2 * pairs[:, None] + 1 - np.arange(24)[None, :]] * (2 * _QMF)
    a, b = taps[:, 0::2].sum(axis=1), taps[:, 1::2].sum(axis=1)
    xl, xh = (2 * (a + b)) >> 16, (2 * (a - b)) >> 16
    out = (xl < -16384) | (xl > 16383) | (xh < -16384) | (xh > 16383)
    return int(np.argmax(out)) if out.any() else None


@needs_others
@pytest.mark.parametrize("name", list(AGREED))
def test_encoder_agrees_with_g722_package_and_ffmpeg(name: str):
    pcm = AGREED[name]
    ours = G722Encoder().encode(pcm)
    assert ours == _package_encode(pcm), _mismatch(ours, _package_encode(pcm))
    assert ours == _ffmpeg_encode(pcm), _mismatch(ours, _ffmpeg_encode(pcm))


@needs_others
@pytest.mark.parametrize("name", list(OVERLOADING))
def test_overloaded_encoders_differ_only_by_g191_qmf_limit(name: str):
    """Known difference, not a bug of ours: G.191's ``qmf_tx`` clips the analysis outputs with
    ``limit()`` to -16384..16383; libg722 (the G722 package) and FFmpeg, both from the spandsp
    lineage, do not. Clipped full-scale input makes the QMF overshoot, and from that pair on the
    codes can differ. Before it everything must match, and the two of them must agree."""
    pcm = OVERLOADING[name]
    first = _first_qmf_overload(pcm)
    assert first is not None
    ours = G722Encoder().encode(pcm)
    package = _package_encode(pcm)
    assert package == _ffmpeg_encode(pcm)
    assert ours[:first] == package[:first]
    assert ours != package  # the difference is real on these signals
    # each side's codes decode identically everywhere: the decoders do agree
    for codes_ in (ours, package):
        expected = G722Decoder().decode(codes_)
        assert np.array_equal(_package_decode(codes_), expected)
        assert np.array_equal(_ffmpeg_decode(codes_), expected)


def _random_codes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


@needs_others
@pytest.mark.parametrize("mode", [1, 2, 3])
def test_decoder_agrees_with_g722_package_and_ffmpeg_on_random_octets(mode: int):
    for seed in range(3):
        codes_ = _random_codes(200 * FRAME, seed)
        ours = G722Decoder(mode=mode).decode(codes_)
        package = _package_decode(codes_, mode)
        assert np.array_equal(ours, package), _mismatch(ours, package)
        ffmpeg = _ffmpeg_decode(codes_, mode)
        assert np.array_equal(ours, ffmpeg), _mismatch(ours, ffmpeg)
    # random octets drive the decoder to its limits: both saturation bounds are reached
    assert ours.min() == -32768 and ours.max() == 32767


@needs_others
@pytest.mark.parametrize("name", [*AGREED, *OVERLOADING])
def test_decoders_agree_on_encoded_signals(name: str):
    pcm = {**AGREED, **OVERLOADING}[name]
    codes_ = G722Encoder().encode(pcm)
    for mode in (1, 2, 3):
        ours = G722Decoder(mode=mode).decode(codes_)
        assert np.array_equal(ours, _package_decode(codes_, mode))
        assert np.array_equal(ours, _ffmpeg_decode(codes_, mode))


# ---------------------------------------------------------------------------------------------
# 4. State: frame by frame, banks
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [1, 2, 3])
@pytest.mark.parametrize("size", [1, 7, FRAME, 161])
def test_decoding_in_pieces_equals_whole_buffer(mode: int, size: int):
    codes_ = _random_codes(20 * FRAME + 3, seed=size)
    whole = G722Decoder(mode=mode).decode(codes_)
    assert len(whole) == 2 * len(codes_)
    assert np.array_equal(_decode_frames(G722Decoder(mode=mode), codes_, size), whole)


def test_decode_many_is_consecutive_payloads_of_one_stream():
    payloads = [_random_codes(n, seed=n) for n in (160, 0, 80, 161)]
    whole = G722Decoder().decode(b"".join(payloads))
    parts = G722Decoder().decode_many(payloads)
    assert [len(p) for p in parts] == [320, 0, 160, 322]
    assert np.array_equal(np.concatenate(parts), whole)


@pytest.mark.parametrize("size", [2, 14, 2 * FRAME, 2 * FRAME + 6])
def test_encoding_in_pieces_equals_whole_buffer(size: int):
    pcm = _speech_like(1.0, seed=size)
    whole = G722Encoder().encode(pcm)
    assert len(whole) == len(pcm) // 2
    assert _encode_frames(G722Encoder(), pcm, size) == whole


def test_decoder_reset_returns_to_the_g191_reset_state():
    decoder = G722Decoder()
    first = decoder.decode(_random_codes(FRAME, 1))
    decoder.decode(_random_codes(FRAME, 2))
    decoder.reset()
    assert np.array_equal(decoder.decode(_random_codes(FRAME, 1)), first)


def test_encoder_rejects_odd_lengths_and_bad_modes():
    with pytest.raises(CodecError):
        G722Encoder().encode(np.zeros(321, np.int16))
    with pytest.raises(CodecError):
        G722Encoder().encode(np.zeros((2, 320), np.int16))
    with pytest.raises(CodecError):
        G722Decoder(mode=4)
    assert G722Encoder().encode(np.zeros(0, np.int16)) == b""
    assert G722Decoder().decode(b"").shape == (0,)


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize(("n_streams", "mode"), [(1, 1), (LANES, 1), (2 * LANES + 3, 1), (11, 3)])
def test_bank_equals_individual_decoders(n_streams: int, mode: int, parallel: bool):
    rng = np.random.default_rng(n_streams)
    bank = G722DecoderBank(n_streams, mode=mode, parallel=parallel)
    singles = [G722Decoder(mode=mode) for _ in range(n_streams)]
    for size in (FRAME, FRAME, 80, FRAME, 0, 1):
        payloads = [rng.integers(0, 256, size, dtype=np.uint8).tobytes() for _ in singles]
        out = bank.decode_many(payloads)
        assert out.shape == (n_streams, 2 * size) and out.dtype == np.int16
        expected = np.stack([d.decode(p) for d, p in zip(singles, payloads, strict=True)])
        assert np.array_equal(out, expected)
    for j, single in enumerate(singles):
        assert np.array_equal(bank.state_of(j), single._state)


def test_bank_resets_one_stream_and_checks_its_input():
    bank = G722DecoderBank(3)
    payloads = [_random_codes(FRAME, seed) for seed in range(3)]
    first = bank.decode_many(payloads)
    bank.decode_many([_random_codes(FRAME, 10 + s) for s in range(3)])
    bank.reset(1)
    again = bank.decode_many(payloads)
    assert np.array_equal(again[1], first[1])
    assert not np.array_equal(again[0], first[0])
    with pytest.raises(CodecError):
        bank.decode_many(payloads[:2])
    with pytest.raises(CodecError):  # same total length, different lengths
        bank.decode_many([bytes(2), bytes(1), bytes(3)])
    with pytest.raises(IndexError):
        bank.reset(3)


# ---------------------------------------------------------------------------------------------
# 5. numba stays out of `import mediastream`
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_importing_the_package_does_not_import_numba():
    check = (
        "import sys, mediastream, mediastream.codecs\n"
        "mediastream.codecs.decoder('PCMU')\n"
        "assert 'numba' not in sys.modules, 'numba imported'\n"
        "import mediastream.codecs.g722\n"
        "assert 'numba' in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], env=_env(), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------------------------
# 6. numba's cache directory when the package is read-only
# ---------------------------------------------------------------------------------------------
def test_choose_cache_dir():
    choose = _numba_cache.choose_cache_dir
    assert choose("/pkg", writable=True, environ={}) is None
    assert choose("/pkg", writable=False, environ={"NUMBA_CACHE_DIR": "/mine"}) is None
    assert choose("/pkg", writable=False, environ={"XDG_CACHE_HOME": "/xdg"}) == os.path.join(
        "/xdg", "mediastream", "numba"
    )
    home = os.path.join(os.path.expanduser("~"), ".cache", "mediastream", "numba")
    assert choose("/pkg", writable=False, environ={}) == home


_CACHE_CHECK = """
import os, sys
package = sys.argv[1]
if os.geteuid() == 0:
    # root may write anywhere, so os.access says yes even on a read-only directory: report the
    # truth for the copied package the way an ordinary user would see it
    real_access = os.access
    def access(path, mode, **kwargs):
        if mode & os.W_OK and os.path.realpath(path).startswith(package):
            return False
        return real_access(path, mode, **kwargs)
    os.access = access
import numpy as np
from mediastream.codecs import _numba_cache, g722
import numba
assert g722.__file__.startswith(package), g722.__file__
print(_numba_cache.CACHE_DIR)
print(numba.config.CACHE_DIR)
print(len(g722.G722Decoder().decode(bytes(160))))
"""


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_read_only_package_caches_kernels_in_the_user_cache(tmp_path: Path):
    copy = tmp_path / "site"
    shutil.copytree(
        REPO / "mediastream", copy / "mediastream", ignore=shutil.ignore_patterns("__pycache__")
    )
    codecs_dir = copy / "mediastream" / "codecs"
    read_only = [p for p in (copy / "mediastream").rglob("*")] + [copy / "mediastream"]
    for path in read_only:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    xdg = tmp_path / "xdg"
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CACHE_CHECK, str(copy.resolve() / "mediastream")],
            env=_env(PYTHONPATH=str(copy), XDG_CACHE_HOME=str(xdg), NUMBA_CACHE_DIR=None),
            cwd=tmp_path,  # not the checkout: ``python -c`` puts the working directory first
            capture_output=True,
            text=True,
            timeout=280,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        chosen, numba_dir, samples = done.stdout.split()
        assert chosen == numba_dir == str(xdg / "mediastream" / "numba")
        assert samples == "320"
        cached = list(Path(chosen).rglob("*.nbi"))
        assert cached and any(Path(chosen).rglob("*.nbc")), "numba wrote nothing to the cache"
        assert not (codecs_dir / "__pycache__").exists()
    finally:
        for path in read_only:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
