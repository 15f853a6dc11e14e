"""Pay every lazy start-up cost of the media path once, before a server listens.

The first G.722 frame of a process loads (or, with a cold cache, compiles) its numba kernels:
0.2 to 1.4 s warm, 4.7 to 8.6 s cold, during which the event loop would serve no other call.
The first PyAV codec, soxr resampler and MP3 encoder cost less, but still more than a frame's
budget. ``warm_up()`` runs each of them on a frame of silence and says what it cost.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import time
from array import array

import numpy as np

from mediastream import codecs
from mediastream.errors import UnsupportedCodecError

logger = logging.getLogger(__name__)

_done: dict[str, float] | None = None


def _codec(encoding: str, sample_rate: int | None = None) -> None:
    decoder = codecs.decoder(encoding, sample_rate)
    try:
        encoder = codecs.encoder(encoding, sample_rate)
    except UnsupportedCodecError:  # decode-only (AMR-WB)
        return
    payload = encoder.encode(np.zeros(encoder.sample_rate // 50, dtype=np.int16))
    if payload:
        decoder.decode(payload)


def _resampler() -> None:
    from mediastream.media.resample import StreamResampler

    StreamResampler(16000, 8000).process(np.zeros(320, dtype=np.int16), last=True)


def _report() -> None:  # the quality report's folds: numba kernels
    from mediastream.runtime.level_pool import LevelPool
    from mediastream.runtime.timing import count_jitter, count_lags

    pool = LevelPool(0, 32767)
    pool.add(pool.row(), np.zeros(160, dtype=np.int16))
    pool.fold()
    counts = np.zeros(141, np.int64)
    count_jitter(array("d", [0.0, 0.0]), np.nan, counts, 0.0)
    count_lags(array("d", [0.0]), counts, 0.0, np.ones(1), np.zeros(2, np.int64))  # a meter
    count_lags(array("d", [0.0]), counts, 0.0, np.zeros(0), np.zeros(0, np.int64))  # none


def _mp3() -> None:
    import soundfile

    soundfile.write(
        io.BytesIO(), np.zeros(1152, dtype=np.int16), 8000, format="MP3", subtype="MPEG_LAYER_III"
    )


def warm_up() -> dict[str, float]:
    """Run each lazily initialised part once; seconds per part (done once per process)."""
    global _done
    if _done is not None:
        return dict(_done)
    steps: dict[str, object] = {
        "PCMU": lambda: _codec("PCMU"),
        "PCMA": lambda: _codec("PCMA"),
        "L16": lambda: _codec("L16", 16000),
        "G722": lambda: _codec("G722"),
        "resampler": _resampler,
        "report": _report,
        "MP3": _mp3,
    }
    if importlib.util.find_spec("av") is not None:
        steps["OPUS"] = lambda: _codec("OPUS", 16000)
        steps["AMR-WB"] = lambda: _codec("AMR-WB", 16000)
    costs: dict[str, float] = {}
    for name, step in steps.items():
        started = time.perf_counter()
        try:
            step()  # type: ignore[operator]
        except Exception as exc:  # a missing optional part is not a start-up failure
            logger.debug("warm-up of %s skipped: %s", name, exc)
            continue
        costs[name] = time.perf_counter() - started
    _done = costs
    return dict(costs)
