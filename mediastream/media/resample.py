"""Stateful resampling with soxr: one stream per call and direction.

Resampling each chunk on its own restarts the filter at every chunk boundary and is audible;
a ``soxr.ResampleStream`` keeps the filter state across chunks. Output lags input by the
filter's delay, which ``flush()`` releases at the end of a playback.

The stream runs in float32 and rounds to int16 itself: soxr's int16 output adds random TPDF
dither, so the same input gave different samples on each run (by up to 2 LSB, on about half
of them) and depended on how it was cut. In float32 the output is the same whatever the piece
sizes, and the same on every run: pieces joined equal the whole input resampled at once.
"""

from __future__ import annotations

import numpy as np
import soxr


class StreamResampler:
    """int16 mono in at ``in_rate``, int16 mono out at ``out_rate``; a no-op when equal."""

    def __init__(self, in_rate: int, out_rate: int, quality: str = "HQ") -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = (
            None
            if in_rate == out_rate
            else soxr.ResampleStream(in_rate, out_rate, 1, "float32", quality)
        )

    def process(self, pcm: np.ndarray, last: bool = False) -> np.ndarray:
        """Resample the next piece; ``last=True`` also returns what the filter still holds."""
        samples = np.ascontiguousarray(pcm, dtype=np.int16)
        if self._stream is None:
            return samples
        out = self._stream.resample_chunk(samples.astype(np.float32) / 32768.0, last=last)
        if last:
            self._stream.clear()
        return np.clip(np.rint(out * 32768.0), -32768, 32767).astype(np.int16)

    def flush(self) -> np.ndarray:
        return self.process(np.zeros(0, dtype=np.int16), last=True)
