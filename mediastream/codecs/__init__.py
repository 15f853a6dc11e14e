"""Codec registry: ``decoder(name)`` and ``encoder(name)`` keyed by the carrier's encoding name.

Every codec is a pair of small stateful objects (one per stream and direction) so that codecs
with memory, like G.722's ADPCM predictors, work frame by frame exactly as on a whole buffer.
Codec modules are imported on first use: ``import mediastream`` never pulls in numba or PyAV.
"""

from __future__ import annotations

import importlib
from typing import Protocol, runtime_checkable

import numpy as np

from mediastream.errors import UnsupportedCodecError, install_hint

__all__ = [
    "Decoder",
    "Encoder",
    "available_encodings",
    "decoder",
    "encoder",
    "normalize_encoding",
]


@runtime_checkable
class Decoder(Protocol):
    """Turns one RTP payload into int16 PCM at ``sample_rate``.

    ``stateless`` is true when a payload decodes the same whatever came before it (G.711,
    L16): only then may a frame that arrives after its slot still be decoded and placed. A
    codec with memory (G.722's predictors, Opus, AMR-WB) says false, and late frames are dropped.
    """

    encoding: str
    sample_rate: int
    stateless: bool

    def decode(self, payload: bytes) -> np.ndarray: ...


@runtime_checkable
class Encoder(Protocol):
    """Turns int16 PCM at ``sample_rate`` into RTP payload bytes."""

    encoding: str
    sample_rate: int

    def encode(self, pcm: np.ndarray) -> bytes: ...


_ALIASES: dict[str, str] = {
    "AUDIO/X-MULAW": "PCMU",
    "AUDIO/PCMU": "PCMU",
    "MULAW": "PCMU",
    "ULAW": "PCMU",
    "G711U": "PCMU",
    "AUDIO/X-ALAW": "PCMA",
    "AUDIO/PCMA": "PCMA",
    "ALAW": "PCMA",
    "G711A": "PCMA",
    "AUDIO/G722": "G722",
    "G.722": "G722",
    "AUDIO/L16": "L16",
    "AMR_WB": "AMR-WB",
    "AMRWB": "AMR-WB",
    "AUDIO/OPUS": "OPUS",
}

# encoding -> (module, decoder class, encoder class or None, extra needed)
_REGISTRY: dict[str, tuple[str, str, str | None, str | None]] = {
    "PCMU": ("g711", "MulawDecoder", "MulawEncoder", None),
    "PCMA": ("g711", "AlawDecoder", "AlawEncoder", None),
    "L16": ("l16", "L16Decoder", "L16Encoder", None),
    "G722": ("g722", "G722Decoder", "G722Encoder", None),
    "OPUS": ("ffmpeg", "OpusDecoder", "OpusEncoder", "ffmpeg"),
    "AMR-WB": ("ffmpeg", "AmrWbDecoder", None, "ffmpeg"),
}


def normalize_encoding(name: str) -> str:
    """Return the canonical upper-case name (``audio/x-mulaw`` -> ``PCMU``)."""
    key = name.strip().upper()
    return _ALIASES.get(key, key)


def available_encodings() -> list[str]:
    """Names the registry knows (some may need an optional extra)."""
    return list(_REGISTRY)


def _load(name: str, *, role: int) -> type:
    canonical = normalize_encoding(name)
    entry = _REGISTRY.get(canonical)
    if entry is None:
        known = ", ".join(_REGISTRY)
        raise UnsupportedCodecError(f"unsupported encoding {name!r}; known: {known}")
    module_name, decoder_cls, encoder_cls, extra = entry
    class_name = decoder_cls if role == 0 else encoder_cls
    if class_name is None:
        raise UnsupportedCodecError(f"encoding {canonical} can be decoded but not encoded")
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
    except ImportError as exc:
        if extra is None:
            raise
        raise UnsupportedCodecError(
            f"encoding {canonical} needs the optional extra: {install_hint(extra)} ({exc})"
        ) from exc
    return getattr(module, class_name)


def decoder(encoding: str, sample_rate: int | None = None, **options: object) -> Decoder:
    """A new decoder; ``sample_rate`` matters only where the codec allows several rates."""
    return _load(encoding, role=0)(sample_rate=sample_rate, **options)


def encoder(encoding: str, sample_rate: int | None = None, **options: object) -> Encoder:
    """A new encoder; ``sample_rate`` matters only where the codec allows several rates."""
    return _load(encoding, role=1)(sample_rate=sample_rate, **options)
