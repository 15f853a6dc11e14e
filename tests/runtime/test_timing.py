"""The report's compiled timing counts (``runtime/timing.py``) against the rules they replace
(the bins by their edges, and the per-frame code they came from), on every bin edge."""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, bisect_right

import numpy as np
import pytest

from mediastream.runtime.report import _BINS, _EDGES, EPSILON_MS
from mediastream.runtime.timing import count_jitter, count_lags, delay_bin


def _bin(ms: float) -> int:
    """The bin by its edges (the README's rule): the last edge at or below ms + 1e-6 ms."""
    return min(bisect_right(_EDGES, ms + EPSILON_MS) - 1, _BINS - 1)


def edge_values() -> list[float]:
    """Every bin edge, a hair below and above it, and values spread over the whole range."""
    values = [0.0, 1e-9, 4999.99, 5000.0, 5000.0001, 123456.0]
    for edge in _EDGES:
        values += [edge, math.nextafter(edge, 0.0), math.nextafter(edge, math.inf), edge - 1e-6]
    values += np.random.default_rng(7).uniform(0.0, 6000.0, 2000).tolist()
    return [v for v in values if v >= 0.0]


def test_the_compiled_bin_is_the_bin_its_edges_give_everywhere():
    for ms in edge_values():
        assert delay_bin(ms) == _bin(ms), ms


def python_jitter(transits: list[float]) -> tuple[list[int], float]:
    """The per-frame rule as ``StreamFigures.arrived`` applied it before it was compiled."""
    counts, best, maximum = [0] * _BINS, None, 0.0
    for transit in transits:
        if best is None or transit < best:
            best = transit
            counts[0] += 1
            continue
        ms = (transit - best) * 1000.0
        counts[_bin(ms)] += 1
        maximum = max(maximum, ms)
    return counts, maximum


def test_jitter_counts_equal_the_per_frame_rule_across_two_calls():
    rng = np.random.default_rng(3)
    chunks = np.arange(1, 3001)
    arrivals = 50.0 + chunks * 0.020 + rng.exponential(0.004, chunks.size)
    arrivals[1000] += 0.7  # one late by 700 ms
    transits = (arrivals - chunks * 0.020).tolist()
    expected, maximum = python_jitter(transits)
    counts = np.zeros(_BINS, np.int64)
    best, got_max = count_jitter(array("d", transits[:1700]), math.nan, counts, 0.0)
    best, got_max = count_jitter(array("d", transits[1700:]), best, counts, got_max)
    assert counts.tolist() == expected
    assert got_max == maximum and best == min(transits)


def test_lags_are_binned_clamped_at_zero_and_counted_in_the_metrics_buckets():
    lags = array("d", [-0.003, 0.0, 0.0004, 0.001, 0.002, 0.0499999999, 0.130, 7.5])
    counts = np.zeros(_BINS, np.int64)
    bounds = np.array([0.001, 0.002, 0.1])
    buckets = np.zeros(len(bounds) + 1, np.int64)
    maximum, last, total = count_lags(lags, counts, 0.0, bounds, buckets)
    expected = [0] * _BINS
    for ms in (0.0, 0.0, 0.4, 1.0, 2.0, 49.9999999, 130.0, 7500.0):
        expected[_bin(ms)] += 1
    assert counts.tolist() == expected
    assert expected[50] == 1  # 49.9999999 ms, within the 1e-6 ms allowance: [50, 60)
    assert (maximum, last) == (7500.0, 7500.0)
    assert total == pytest.approx(0.0004 + 0.001 + 0.002 + 0.0499999999 + 0.130 + 7.5)
    expected_buckets = [bisect_left(bounds.tolist(), max(0.0, lag)) for lag in lags]
    assert buckets.tolist() == [expected_buckets.count(i) for i in range(4)] == [4, 1, 1, 2]
    empty = np.zeros(0, np.int64)
    assert count_lags(lags, counts, 0.0, np.zeros(0), empty)[2] == total  # no meter: no buckets
