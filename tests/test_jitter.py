"""Reorder buffer: order restored, gaps named after a bounded wait, duplicates dropped."""

from __future__ import annotations

import random

from mediastream.jitter import MAX_GAP_FRAMES, ReorderBuffer


def _keys(releases) -> list:
    return [(r.key, r.item is None) for r in releases]


def test_in_order_passes_straight_through():
    buf = ReorderBuffer(depth=4)
    assert _keys(buf.push(1, "a")) == [(1, False)]
    assert _keys(buf.push(2, "b")) == [(2, False)]
    assert len(buf) == 0


def test_swapped_pair_is_reordered():
    buf = ReorderBuffer(depth=4)
    buf.push(1, 1)
    assert buf.push(3, 3) == []
    assert [r.item for r in buf.push(2, 2)] == [2, 3]
    assert buf.stats.reordered == 1


def test_first_frame_late_is_waited_for():
    buf = ReorderBuffer(depth=4)
    assert buf.push(2, 2) == []
    assert [r.key for r in buf.push(1, 1)] == [1, 2]


def test_lost_frame_becomes_gap_after_depth_frames():
    buf = ReorderBuffer(depth=3)
    buf.push(1, 1)
    out = []
    for key in (3, 4, 5):
        out += buf.push(key, key)
    assert out == []  # still waiting for 2
    out = buf.push(6, 6)
    assert _keys(out) == [(2, True), (3, False), (4, False), (5, False), (6, False)]
    assert buf.stats.gaps == 1


def test_late_frame_after_gap_is_released_once_marked_late():
    buf = ReorderBuffer(depth=1)
    buf.push(1, 1)
    buf.push(3, 3)
    buf.push(4, 4)  # 2 declared lost
    (late,) = buf.push(2, 2)
    assert (late.key, late.item, late.late) == (2, 2, True)
    assert buf.push(2, 2) == []  # a second copy is a duplicate
    assert (buf.stats.late, buf.stats.duplicates) == (1, 1)


def test_frame_older_than_the_first_released_is_late_not_duplicate():
    buf = ReorderBuffer(depth=1)
    buf.push(3, 3)
    buf.push(4, 4)  # released from 3 on: 1 and 2 have not been seen
    assert [(r.key, r.late) for r in buf.push(1, 1)] == [(1, True)]
    assert buf.push(3, 3) == []


def test_duplicates_dropped_whether_released_or_held():
    buf = ReorderBuffer(depth=4)
    buf.push(1, 1)
    assert buf.push(1, 1) == []
    buf.push(3, 3)
    assert buf.push(3, 3) == []
    assert buf.stats.duplicates == 2


def test_flush_names_gaps_between_held_frames():
    buf = ReorderBuffer(depth=10)
    buf.push(1, 1)
    buf.push(4, 4)
    buf.push(6, 6)
    assert _keys(buf.flush()) == [(2, True), (3, True), (4, False), (5, True), (6, False)]


def test_frames_without_counter_pass_through():
    buf = ReorderBuffer(depth=4)
    assert _keys(buf.push(None, "x")) == [(None, False)]


def test_shuffled_windows_come_out_sorted_with_no_gap():
    rng = random.Random(3)
    keys = list(range(1, 401))
    for begin in range(0, len(keys), 5):
        window = keys[begin : begin + 5]
        rng.shuffle(window)
        keys[begin : begin + 5] = window
    buf = ReorderBuffer(depth=8)
    out = []
    for key in keys:
        out += buf.push(key, key)
    out += buf.flush()
    assert [r.item for r in out] == list(range(1, 401))
    assert buf.stats.gaps == 0


def test_huge_jump_is_a_discontinuity_not_millions_of_gaps():
    buf = ReorderBuffer(depth=2)
    buf.push(1, 1)
    big = 10 * MAX_GAP_FRAMES
    out = []
    for key in (big, big + 1, big + 2):
        out += buf.push(key, key)
    assert [r.item for r in out] == [big, big + 1, big + 2]
    assert buf.stats.gaps == 0 and buf.stats.discontinuities == 1


def test_counter_restart_far_below_is_a_discontinuity():
    buf = ReorderBuffer(depth=2)
    for key in range(5000, 5003):
        buf.push(key, key)
    out = buf.push(1, "restart")
    assert [r.item for r in out][-1] == "restart"
    assert buf.stats.discontinuities == 1
