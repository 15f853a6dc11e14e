"""The report's level pool (``runtime/level_pool.py`` and ``media/levels.py``'s fold) against
numpy, exactly, on the edges that matter: -32768 (whose magnitude is 32768), the clip level,
digital silence, frames of several streams and sizes interleaved, a full ring, rows reused."""

from __future__ import annotations

import numpy as np
import pytest

from mediastream.runtime.level_pool import RING_SAMPLES, LevelPool

CLIP = 32767
SILENCE = 8


def by_numpy(frames: list[np.ndarray]) -> tuple[int, int, float, int, int, int]:
    """Frames, samples, sum of squares, peak, clipped samples, silent frames."""
    if not frames:
        return (0, 0, 0.0, 0, 0, 0)
    samples = np.concatenate(frames)
    magnitudes = np.abs(samples.astype(np.int64))
    floats = samples.astype(np.float64)
    return (
        len(frames),
        len(samples),
        float(np.dot(floats, floats)),
        int(magnitudes.max()),
        int(np.count_nonzero(magnitudes >= CLIP)),
        sum(int(np.abs(f.astype(np.int64)).max()) <= SILENCE for f in frames),
    )


def frames_of(rng: np.random.Generator, count: int, size: int) -> list[np.ndarray]:
    frames = [rng.integers(-32768, 32768, size, dtype=np.int16) for _ in range(count)]
    frames[0][3] = -32768
    frames[-1][size - 1] = 32767
    if count > 2:
        frames[1] = rng.integers(-SILENCE, SILENCE + 1, size, dtype=np.int16)  # quiet
        frames[2] = np.zeros(size, np.int16)  # digital zero
    return frames


@pytest.mark.parametrize("count", [1, 7, 400])  # 400 × 160 and × 320 samples: the ring fills
def test_interleaved_streams_fold_to_numpys_figures_to_the_bit(count: int) -> None:
    rng = np.random.default_rng(count)
    pool = LevelPool(SILENCE, CLIP)
    streams = {pool.row(): frames_of(rng, count, size) for size in (160, 320, 80)}
    for index in range(count):  # frame by frame, the streams' frames interleaved
        for row, frames in streams.items():
            pool.add(row, frames[index])
    pool.fold()
    for row, frames in streams.items():
        assert pool.figures(row) == by_numpy(frames)
    assert pool.figures(next(iter(streams)))[3] == 32768  # -32768's magnitude
    if count == 400:
        assert RING_SAMPLES < 400 * (160 + 320 + 80)  # folded on the way, when it was full


def test_a_full_scale_frame_sums_exactly_and_a_huge_frame_folds_alone() -> None:
    pool = LevelPool(0, CLIP)
    row = pool.row()
    pool.add(row, np.full(320, -32768, dtype=np.int16))
    pool.add(row, np.full(3 * RING_SAMPLES, 1000, dtype=np.int16))  # larger than the ring
    pool.fold()
    frames, samples, sumsq, peak, clipped, silent = pool.figures(row)
    assert (frames, samples, peak, clipped, silent) == (2, 320 + 3 * RING_SAMPLES, 32768, 320, 0)
    assert sumsq == 320 * 32768**2 + 3 * RING_SAMPLES * 1000**2


def test_ticks_make_the_window_and_rows_are_reused_zeroed_and_grow() -> None:
    pool = LevelPool(SILENCE, CLIP, rows=2)
    a, b = pool.row(), pool.row()
    pool.add(a, np.full(160, 100, np.int16))
    assert pool.window(a) == (0.0, 0)  # not folded yet
    pool.tick()
    assert pool.window(a) == (160 * 100**2, 160)
    pool.add(a, np.full(160, 10, np.int16))
    pool.fold()  # as a snapshot does: the window and what came since
    assert pool.window(a) == (160 * 100**2 + 160 * 10**2, 320)
    pool.tick()
    assert pool.window(a) == (160 * 10**2, 160)
    c = pool.row()  # a third row: the arrays doubled, the others kept
    assert pool.figures(a)[:2] == (2, 320) and pool.figures(c) == (0, 0, 0.0, 0, 0, 0)
    pool.release(a)
    assert pool.row() == a and pool.figures(a) == (0, 0, 0.0, 0, 0, 0)
    assert pool.window(a) == (0.0, 0)
    assert pool.figures(b) == (0, 0, 0.0, 0, 0, 0)
