"""L16: linear 16-bit PCM, big-endian (network order, RFC 3551) unless ``byteorder="little"``.

A payload cannot tell its byte order, and carriers disagree in practice, so a stream's order is
configured: ``StreamOptions(codec_options={"L16": {"byteorder": "little"}})``. The rate is the
one ``start`` states (16000 Hz if none); only ``SAMPLE_RATES`` are accepted, so a wrong rate is
an ``UnsupportedCodecError`` at ``start``, not a huge recording. Decoding is a byte swap per
sample: stateless, and an odd-length payload is a ``CodecError``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from mediastream.errors import CodecError, UnsupportedCodecError

DEFAULT_SAMPLE_RATE = 16000
# The rates an L16 stream may state: Telnyx documents 8000 to 48000 Hz; anything else is a
# wrong ``start`` (a rate of 10**9 would make a recording of gigabytes from a few frames).
SAMPLE_RATES = frozenset({8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000})


def _rate(sample_rate: int | None) -> int:
    rate = DEFAULT_SAMPLE_RATE if sample_rate is None else sample_rate
    if type(rate) is not int or rate not in SAMPLE_RATES:
        allowed = ", ".join(str(r) for r in sorted(SAMPLE_RATES))
        raise UnsupportedCodecError(f"L16 at {sample_rate!r} Hz is not supported (only {allowed})")
    return rate


ByteOrder = Literal["big", "little"]


def _dtype(byteorder: str) -> np.dtype:
    if byteorder not in ("big", "little"):
        raise ValueError(f"L16 byteorder must be 'big' or 'little', not {byteorder!r}")
    return np.dtype(">i2" if byteorder == "big" else "<i2")


class L16Decoder:
    encoding = "L16"
    stateless = True  # a byte swap: a frame decodes the same in any order

    def __init__(self, sample_rate: int | None = None, byteorder: ByteOrder = "big") -> None:
        self.sample_rate = _rate(sample_rate)
        self._dtype = _dtype(byteorder)

    def decode(self, payload: bytes) -> np.ndarray:
        if len(payload) % 2:
            raise CodecError(f"L16 payload has an odd length ({len(payload)} bytes)")
        return np.frombuffer(payload, dtype=self._dtype).astype(np.int16)


class L16Encoder:
    encoding = "L16"

    def __init__(self, sample_rate: int | None = None, byteorder: ByteOrder = "big") -> None:
        self.sample_rate = _rate(sample_rate)
        self._dtype = _dtype(byteorder)

    def encode(self, pcm: np.ndarray) -> bytes:
        return np.asarray(pcm, dtype=np.int16).astype(self._dtype).tobytes()
