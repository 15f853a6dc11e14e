"""The quality report's timing figures, counted in one compiled pass per tick.

``runtime/report.py`` keeps, per frame, one float: a media frame's transit (arrival time less
its due time on the 20 ms clock), and a handled frame's lag (how far behind the socket's clock
``on_audio`` returned). The
report's ticker hands each stream's pending values here twice a level window: counting them in
Python on the frame path cost 3-4 µs a frame in a loaded server, where that code ran cold every
time. The bins are ``report.py``'s (1 ms wide below 50 ms, 10 ms below 500 ms, 100 ms below
5 s, then one bin), with the same 1e-6 ms added before binning, so every value lands in the bin
the Python code put it in; ``tests/runtime/test_timing.py`` checks that on the edges.
"""

from __future__ import annotations

from mediastream.codecs import _numba_cache  # noqa: F401  (sets NUMBA_CACHE_DIR before numba)

# isort: split

import numpy as np
from numba import njit

from mediastream.runtime.report import EPSILON_MS, OVERFLOW_BIN


@njit(cache=True)
def delay_bin(ms: float) -> int:
    """The histogram bin of a non-negative duration in ms (``report._bin``, compiled)."""
    ms += EPSILON_MS
    if ms < 50.0:
        return int(ms)
    if ms < 500.0:
        return 50 + int((ms - 50.0) // 10.0)
    if ms < 5000.0:
        return 95 + int((ms - 500.0) // 100.0)
    return OVERFLOW_BIN


@njit(cache=True)
def count_jitter(
    transits: np.ndarray, best: float, counts: np.ndarray, maximum: float
) -> tuple[float, float]:
    """Bin each transit's delay past the least transit so far (``best``; NaN: none yet), in
    order: a new least counts as 0. Returns the new least and the new maximum delay (ms)."""
    for index in range(len(transits)):
        transit = transits[index]
        if not transit >= best:  # NaN best (none yet), or a new least
            best = transit
            counts[0] += 1
            continue
        ms = (transit - best) * 1000.0
        counts[delay_bin(ms)] += 1
        if ms > maximum:
            maximum = ms
    return best, maximum


@njit(cache=True)
def count_lags(
    lags: np.ndarray, counts: np.ndarray, maximum: float, bounds: np.ndarray, buckets: np.ndarray
) -> tuple[float, float, float]:
    """Bin each handled frame's lag (seconds behind the socket's clock; ahead of time counts
    as 0) into ``counts``, and into ``buckets`` by ``bounds`` as well (the metrics' histogram:
    bucket i counts lags <= bounds[i], the last one the rest; empty ``bounds``: none). Returns
    the new maximum and the last lag, in ms, and the lags' sum in seconds."""
    ms = 0.0
    total = 0.0
    for index in range(len(lags)):
        lag = lags[index]
        ms = lag * 1000.0
        if ms > 0.0:
            counts[delay_bin(ms)] += 1
            if ms > maximum:
                maximum = ms
            total += lag
        else:
            ms = 0.0
            lag = 0.0
            counts[0] += 1
        if len(bounds):
            bucket = 0
            while bucket < len(bounds) and lag > bounds[bucket]:
                bucket += 1
            buckets[bucket] += 1
    return maximum, ms, total
