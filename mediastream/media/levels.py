"""Level figures of int16 audio in one compiled pass: what the quality report folds.

``runtime/level_pool.py`` copies every handled frame of every stream into one ring and folds
the ring into each frame's row of totals when it is full, or at a tick. The fold in numpy took
six calls and three temporaries per window (``abs`` viewed as uint16, a per-frame ``max``, a
float64 copy for the dot, a comparison for the clipped count): mostly numpy's fixed cost per
call, and temporaries through the cache. ``fold_records`` is one pass with no temporary, over
frames of any streams and sizes.

The sums are exact: each square is at most 2**30 and a frame's are summed as an int64, then
added to a float64 row total (exact below 2**53: 17 minutes of full-scale square wave at
8 kHz): it equals numpy's float64 dot to the bit.
"""

from __future__ import annotations

from mediastream.codecs import _numba_cache  # noqa: F401  (sets NUMBA_CACHE_DIR before numba)

# isort: split

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def fold_records(
    ring: np.ndarray,
    records: np.ndarray,
    silence: int,
    clip: int,
    counts: np.ndarray,
    sums: np.ndarray,
) -> None:
    """Fold the frames laid end to end in ``ring`` (int16), one per record (``row << 20 |
    samples``), into their rows: ``counts[row]`` gets frames, samples, peak (the largest),
    clipped samples and frames of digital silence (columns 0-4) and the samples since the
    last tick (column 5); ``sums[row]`` the sum of squares, in all and since the last tick
    (columns 0-1). Exact as ``fold_levels`` is: each frame's squares are summed as int64."""
    start = 0
    for index in range(len(records)):
        record = records[index]
        row = record >> 20
        size = record & 0xFFFFF
        frame_peak = np.int32(0)
        squares = np.int64(0)
        loud = np.int64(0)
        for sample in range(start, start + size):
            value = np.int32(ring[sample])
            magnitude = abs(value)
            frame_peak = max(frame_peak, magnitude)
            squares += np.int64(value * value)
            loud += np.int64(magnitude >= clip)
        start += size
        counts[row, 0] += 1
        counts[row, 1] += size
        if frame_peak > counts[row, 2]:
            counts[row, 2] = frame_peak
        counts[row, 3] += loud
        if frame_peak <= silence:
            counts[row, 4] += 1
        counts[row, 5] += size
        sums[row, 0] += squares
        sums[row, 1] += squares
