"""G.711: bit-exact with ITU-T G.191 in both directions; registry names; L16."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from mediastream import codecs
from mediastream.errors import CodecError, UnsupportedCodecError

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # stdlib below 3.13, audioop-lts above: an independent decoder


def _words(path: Path) -> np.ndarray:
    return np.fromfile(path, dtype="<i2")


@pytest.mark.parametrize(
    ("codec", "codes_file", "decoded_file"),
    [("PCMU", "sweep-r.u", "sweep-r.u-u"), ("PCMA", "sweep-r.a", "sweep-r.a-a")],
)
def test_encode_sweep_matches_g191(itu_stl: Path, codec: str, codes_file: str, decoded_file: str):
    sweep = _words(itu_stl / "g711" / "sweep.src")
    assert len(sweep) == 65536 and sweep.min() == -32768 and sweep.max() == 32767
    reference = (_words(itu_stl / "g711" / codes_file) & 0xFF).astype(np.uint8)
    ours = np.frombuffer(codecs.encoder(codec).encode(sweep), dtype=np.uint8)
    mismatches = np.flatnonzero(ours != reference)
    assert mismatches.size == 0, f"{mismatches.size} codes differ, first at {sweep[mismatches[:5]]}"


@pytest.mark.parametrize(
    ("codec", "codes_file", "decoded_file"),
    [("PCMU", "sweep-r.u", "sweep-r.u-u"), ("PCMA", "sweep-r.a", "sweep-r.a-a")],
)
def test_decode_all_codes_matches_g191(
    itu_stl: Path, codec: str, codes_file: str, decoded_file: str
):
    codes_ = (_words(itu_stl / "g711" / codes_file) & 0xFF).astype(np.uint8)
    reference = _words(itu_stl / "g711" / decoded_file)
    ours = codecs.decoder(codec).decode(codes_.tobytes())
    np.testing.assert_array_equal(ours, reference)
    # the sweep reaches every one of the 256 codes, so this covered the whole decode table
    assert len(np.unique(codes_)) == 256


@pytest.mark.parametrize(
    ("codec", "expand"), [("PCMU", audioop.ulaw2lin), ("PCMA", audioop.alaw2lin)]
)
def test_decode_agrees_with_audioop(codec: str, expand):
    every_code = bytes(range(256))
    expected = np.frombuffer(expand(every_code, 2), dtype=np.int16)
    np.testing.assert_array_equal(codecs.decoder(codec).decode(every_code), expected)


def test_audioop_mulaw_encoder_is_not_g191_exact_but_ours_is(itu_stl: Path):
    sweep = _words(itu_stl / "g711" / "sweep.src")
    reference = (_words(itu_stl / "g711" / "sweep-r.u") & 0xFF).astype(np.uint8)
    theirs = np.frombuffer(audioop.lin2ulaw(sweep.tobytes(), 2), dtype=np.uint8)
    ours = np.frombuffer(codecs.encoder("PCMU").encode(sweep), dtype=np.uint8)
    assert np.count_nonzero(theirs != reference) == 508  # documented audioop deviation
    assert np.count_nonzero(ours != reference) == 0


@pytest.mark.parametrize("name", ["PCMU", "pcmu", "audio/x-mulaw", "AUDIO/X-MULAW"])
def test_mulaw_aliases(name: str):
    assert codecs.normalize_encoding(name) == "PCMU"
    assert codecs.decoder(name).encoding == "PCMU"


def test_alaw_alias():
    assert codecs.decoder("audio/x-alaw").encoding == "PCMA"


def test_unknown_encoding_names_what_is_known():
    with pytest.raises(UnsupportedCodecError, match=r"SPEEX.*PCMU"):
        codecs.decoder("SPEEX")


def test_decode_many_matches_one_by_one():
    dec = codecs.decoder("PCMA")
    payloads = [
        bytes(np.random.default_rng(i).integers(0, 256, 160, dtype=np.uint8)) for i in range(5)
    ]
    for a, b in zip(dec.decode_many(payloads), [dec.decode(p) for p in payloads], strict=True):
        np.testing.assert_array_equal(a, b)


def test_l16_is_big_endian_by_default_and_round_trips():
    pcm = np.array([1, -2, 32767, -32768, 256], dtype=np.int16)
    payload = codecs.encoder("L16", 16000).encode(pcm)
    assert payload[:4] == b"\x00\x01\xff\xfe"
    decoder = codecs.decoder("L16", 8000)
    assert decoder.sample_rate == 8000
    np.testing.assert_array_equal(decoder.decode(payload), pcm)


def test_l16_little_endian_option_and_odd_length():
    pcm = np.array([1, -2], dtype=np.int16)
    payload = codecs.encoder("L16", byteorder="little").encode(pcm)
    assert payload == pcm.astype("<i2").tobytes()
    np.testing.assert_array_equal(codecs.decoder("L16", byteorder="little").decode(payload), pcm)
    with pytest.raises(CodecError, match="odd length"):
        codecs.decoder("L16").decode(b"\x00\x01\x02")
