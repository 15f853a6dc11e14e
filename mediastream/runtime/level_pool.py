"""Every stream's audio level figures in one place: a shared ring the frame path copies into,
folded for all streams at once.

The quality report's levels (RMS, peak, clipped samples, digital silence) need every sample.
A buffer per stream and track was written cold on every frame in a loaded server (it was last
touched a window earlier, and the streams' buffers together are larger than the cache): that
write cost about 4 µs a frame. Here every stream copies its frames into one ring of
``RING_SAMPLES`` samples (hot: it is written in order, and small), with one record per frame
(its row and length); when the ring is full, and at every tick, one compiled pass
(``media/levels.py``'s ``fold_records``) adds each frame to its row's totals. A row is one
track of one stream: ``counts`` and ``sums`` hold its figures, ``last`` its previous tick's.
"""

from __future__ import annotations

from array import array
from typing import Any

import numpy as np

RING_SAMPLES = 1 << 15  # 64 KiB: 200 PCMU frames, 100 G.722 ones
ROW_SHIFT = 20  # a record is ``row << 20 | samples``: a frame has fewer than 2**20 samples
MAX_FRAME_SAMPLES = (1 << ROW_SHIFT) - 1
# counts' columns; sums' are (sum of squares, since the last tick)
FRAMES, SAMPLES, PEAK, CLIPPED, SILENT, TICKED = range(6)


class LevelPool:
    """The rows of every live stream's tracks, and the ring their frames wait in."""

    def __init__(self, silence: int, clip: int, rows: int = 64) -> None:
        self.silence, self.clip = silence, clip
        self.ring = np.zeros(RING_SAMPLES, np.int16)
        self.view = memoryview(self.ring)  # a slice assignment costs half of numpy's
        self.capacity = RING_SAMPLES
        self.fill = 0
        self.records = array("q")
        self.counts = np.zeros((rows, 6), np.int64)
        self.sums = np.zeros((rows, 2), np.float64)
        # the last tick's (sum of squares, samples) per row: the live level's window
        self.last = np.zeros((rows, 2), np.float64)
        self._free = list(range(rows - 1, -1, -1))

    # ------------------------------------------------------------ rows

    def row(self) -> int:
        """A zeroed row for a new track; the arrays grow (doubled) when none is free."""
        if not self._free:
            old = len(self.counts)
            self.fold()  # records name rows of the arrays about to be replaced: none left
            self.counts = _grown(self.counts)
            self.sums = _grown(self.sums)
            self.last = _grown(self.last)
            self._free = list(range(2 * old - 1, old - 1, -1))
        return self._free.pop()

    def release(self, row: int) -> None:
        """The track's stream ended (its report is written): the row may serve another."""
        self.fold()
        self.counts[row] = 0
        self.sums[row] = 0.0
        self.last[row] = 0.0
        self._free.append(row)

    # ------------------------------------------------------------ frames

    def add(self, row: int, pcm: np.ndarray) -> None:
        """One frame of ``row`` (``StreamFigures.handled`` inlines the usual case)."""
        size = len(pcm)
        if not size:
            return
        if size > MAX_FRAME_SAMPLES or size > self.capacity:  # a frame larger than the ring
            self.fold()
            self._fold_alone(row, pcm)
            return
        end = self.fill + size
        if end > self.capacity:
            self.fold()
            end = size
        self.ring[end - size : end] = pcm  # any array numpy can cast (usually int16)
        self.fill = end
        self.records.append(row << ROW_SHIFT | size)

    def fold(self) -> None:
        """Fold every frame in the ring into its row (one compiled pass for all streams)."""
        if not self.records:
            return
        from mediastream.media.levels import fold_records  # numba: loaded on first use

        fold_records(self.ring, self.records, self.silence, self.clip, self.counts, self.sums)
        del self.records[:]
        self.fill = 0

    def _fold_alone(self, row: int, pcm: np.ndarray) -> None:
        from mediastream.media.levels import fold_records

        block = np.ascontiguousarray(pcm, dtype=np.int16)
        records = array("q", [row << ROW_SHIFT | len(chunk) for chunk in _chunks(block)])
        fold_records(block, records, self.silence, self.clip, self.counts, self.sums)

    def tick(self) -> None:
        """Fold the ring; what every row folded since the last tick becomes its live window."""
        self.fold()
        self.last[:, 0] = self.sums[:, 1]
        self.last[:, 1] = self.counts[:, TICKED]
        self.sums[:, 1] = 0.0
        self.counts[:, TICKED] = 0

    # ------------------------------------------------------------ what a row tells

    def figures(self, row: int) -> tuple[int, int, float, int, int, int]:
        """Frames, samples, sum of squares, peak, clipped samples, silent frames (folded)."""
        counts = self.counts[row].tolist()
        return (
            counts[FRAMES], counts[SAMPLES], float(self.sums[row, 0]), counts[PEAK],
            counts[CLIPPED], counts[SILENT],
        )  # fmt: skip

    def window(self, row: int) -> tuple[float, int]:
        """(sum of squares, samples) over the last tick's window and what came since."""
        return (
            float(self.last[row, 0] + self.sums[row, 1]),
            int(self.last[row, 1]) + int(self.counts[row, TICKED]),
        )


def _grown(table: np.ndarray) -> Any:
    grown = np.zeros((2 * len(table), table.shape[1]), table.dtype)
    grown[: len(table)] = table
    return grown


def _chunks(block: np.ndarray) -> list[np.ndarray]:
    """A frame too large for one record, as records' worth (its peak and silence are then per
    chunk: such a frame is not a carrier's 20 ms)."""
    return [block[i : i + MAX_FRAME_SAMPLES] for i in range(0, len(block), MAX_FRAME_SAMPLES)]
