"""The report's level fold (``media/levels.py``) against numpy, exactly, on the edges that
matter: -32768 (whose magnitude is 32768), the clip level, digital silence, partial windows."""

from __future__ import annotations

import numpy as np
import pytest

from mediastream.media.levels import fold_levels

CLIP = 32767


def by_numpy(
    block: np.ndarray, frames: int, size: int, silence: int
) -> tuple[float, int, int, int]:
    samples = block[: frames * size]
    magnitudes = np.abs(samples.astype(np.int64))
    peaks = magnitudes.reshape(frames, size).max(axis=1)
    floats = samples.astype(np.float64)
    return (
        float(np.dot(floats, floats)),
        int(peaks.max()),
        int(np.count_nonzero(peaks <= silence)),
        int(np.count_nonzero(magnitudes >= CLIP)),
    )


@pytest.mark.parametrize("size", [160, 320])
@pytest.mark.parametrize("frames", [1, 7, 25])
def test_the_fold_equals_numpy_to_the_bit(size: int, frames: int) -> None:
    rng = np.random.default_rng(size * 100 + frames)
    block = rng.integers(-32768, 32768, frames * size + 17, dtype=np.int16)  # past the frames
    block[3] = -32768
    block[size - 1] = 32767
    if frames > 2:
        block[size : 2 * size] = rng.integers(-8, 9, size, dtype=np.int16)  # quiet
        block[2 * size : 3 * size] = 0  # digital zero
    got = fold_levels(block, frames, size, 8, CLIP)
    assert got == by_numpy(block, frames, size, 8)
    assert got[1] == 32768  # -32768's magnitude


def test_a_full_scale_window_sums_exactly() -> None:
    block = np.full(25 * 320, -32768, dtype=np.int16)
    sumsq, peak, silent, clipped = fold_levels(block, 25, 320, 0, CLIP)
    assert sumsq == 25 * 320 * 32768**2 and peak == 32768
    assert (silent, clipped) == (0, 25 * 320)
