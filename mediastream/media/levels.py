"""Level figures of int16 audio in one compiled pass: what the quality report folds per window.

``runtime/report.py`` copies every handled frame into a window buffer and folds the window into
its totals once it is full (25 frames). The fold in numpy took six calls and three temporaries
(``abs`` viewed as uint16, a per-frame ``max``, a float64 copy for the dot, a comparison for the
clipped count): about 75,000 instructions a window, mostly numpy's fixed cost per call, and 40
KB of temporaries through the cache. ``fold_levels`` is one pass with no temporary.

The sums are exact: each square is at most 2**30 and is summed as an int64, and the total goes
to a float64 only at the end (a window's is far below 2**53): it equals numpy's float64 dot to
the bit.
"""

from __future__ import annotations

from mediastream.codecs import _numba_cache  # noqa: F401  (sets NUMBA_CACHE_DIR before numba)

# isort: split

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def fold_levels(
    block: np.ndarray, frames: int, size: int, silence: int, clip: int
) -> tuple[float, int, int, int]:
    """Over the first ``frames`` frames of ``size`` samples in ``block`` (int16): the sum of
    squares, the peak magnitude (32768 for -32768), how many frames peak at or below
    ``silence`` (digital silence), and how many samples reach ``clip`` in magnitude.

    Integer reductions with no branch in the inner loop, so that LLVM vectorizes it: 6.3 µs
    a window of 25 frames of 160 samples, against 9.3 µs with branches and 18.6 µs in numpy
    (best of 7 × 2,000 calls, this 2-core VM)."""
    total = np.int64(0)
    peak = np.int32(0)
    silent = 0
    clipped = np.int64(0)
    for frame in range(frames):
        frame_peak = np.int32(0)
        squares = np.int64(0)
        loud = np.int64(0)
        for index in range(frame * size, (frame + 1) * size):
            value = np.int32(block[index])
            magnitude = abs(value)
            frame_peak = max(frame_peak, magnitude)
            squares += np.int64(value * value)
            loud += np.int64(magnitude >= clip)
        total += squares
        clipped += loud
        if frame_peak <= silence:
            silent += 1
        peak = max(peak, frame_peak)
    return float(total), int(peak), silent, int(clipped)
