"""Per-track reorder buffer: frames out in counter order, gaps named, duplicates dropped.

The carrier does not guarantee media order. Frames are held until the next expected counter is
present, or until more than ``depth`` later frames are waiting: then the missing counter is
declared lost and released as a gap, so a lost frame delays audio by at most ``depth`` frames.
Frames without a counter cannot be ordered and pass straight through. The buffer is pure data:
no clock, no I/O, so it is deterministic to test.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

from mediastream.config import StreamOptions

T = TypeVar("T")

DEFAULT_DEPTH = StreamOptions.reorder_depth  # the one default, in config.py
# A jump larger than this is a counter discontinuity (restart, wrap), not a run of lost frames:
# 500 frames is 10 s of 20 ms frames. Beyond it, or once the silence filled in would exceed the
# audio received plus this much, the timeline restarts after the last frame instead of filling
# the jump with silence: what a track inserts stays proportional to what it received.
MAX_GAP_FRAMES = 500
_REMEMBERED_GAPS = 256


@dataclass(slots=True)
class Release(Generic[T]):
    """One released slot: ``item`` is None when the frame with ``key`` was lost.

    ``late`` marks a frame that arrived after its slot was given up (released as a gap, or
    before the first frame released): it belongs back in that slot, out of order.
    """

    key: int | None
    item: T | None
    late: bool = False


@dataclass(slots=True)
class ReorderStats:
    released: int = 0
    reordered: int = 0
    duplicates: int = 0
    late: int = 0
    gaps: int = 0
    discontinuities: int = 0


class ReorderBuffer(Generic[T]):
    """Orders items by integer key (``chunk``, or ``sequence_number`` when there is no chunk)."""

    def __init__(
        self, depth: int = DEFAULT_DEPTH, first_key: int = 1, max_gap: int = MAX_GAP_FRAMES
    ) -> None:
        if depth < 0 or max_gap < 0:
            raise ValueError("depth and max_gap must be >= 0")
        self.depth = depth
        self.max_gap = max_gap
        self.first_key = first_key
        self.next_key: int | None = None
        self.stats = ReorderStats()
        self._pending: dict[int, T] = {}
        self._gap_keys: deque[int] = deque(maxlen=_REMEMBERED_GAPS)
        self._first_released: int | None = None
        self._late_seen: deque[int] = deque(maxlen=_REMEMBERED_GAPS)

    def __len__(self) -> int:
        return len(self._pending)

    def push(self, key: int | None, item: T) -> list[Release[T]]:
        """Add one frame; return whatever can now be released, in order."""
        if key is None:
            self.stats.released += 1
            return [Release(None, item)]
        if self.next_key is not None and key < self.next_key:
            if self.next_key - key > self.max_gap:
                return self._restart(key, item)
            return self._late(key, item)
        if key in self._pending:
            self.stats.duplicates += 1
            return []
        if self._pending and key < max(self._pending):
            self.stats.reordered += 1
        self._pending[key] = item
        return self._release()

    def take_in_order(self, key: int | None) -> bool:
        """Release ``key`` now if it is the next one expected and nothing is held: the common
        case, answered without building ``Release`` objects. False: ``push`` it instead."""
        if key is None or key != self.next_key or self._pending:
            return False
        self.next_key = key + 1
        self.stats.released += 1
        return True

    def flush(self) -> list[Release[T]]:
        """Release everything held, naming the gaps between held frames (end of stream)."""
        out: list[Release[T]] = []
        while self._pending:
            if self.next_key is None or self.next_key not in self._pending:
                lowest = min(self._pending)
                if self.next_key is None:
                    self.next_key = lowest
                elif self._too_far(lowest):
                    self.stats.discontinuities += 1
                    self.next_key = lowest
                else:
                    out.extend(self._gaps_until(lowest))
            out.extend(self._run())
        return out

    # ------------------------------------------------------------------ internals

    def _too_far(self, key: int) -> bool:
        """Whether filling the gap up to ``key`` with lost frames would exceed the bounds."""
        assert self.next_key is not None
        gap = key - self.next_key
        return gap > self.max_gap or self.stats.gaps + gap > self.stats.released + self.max_gap

    def _late(self, key: int, item: T) -> list[Release[T]]:
        """A key behind ``next_key``: a late frame for a given-up slot, or a duplicate."""
        first = self._first_released
        if key in self._gap_keys:
            self._gap_keys.remove(key)
        elif first is None or key >= first or key in self._late_seen:
            self.stats.duplicates += 1
            return []
        self._late_seen.append(key)
        self.stats.late += 1
        return [Release(key, item, late=True)]

    def _restart(self, key: int, item: T) -> list[Release[T]]:
        out = self.flush()
        self.stats.discontinuities += 1
        self.next_key = None
        self._pending[key] = item
        return out + self._release()

    def _release(self) -> list[Release[T]]:
        if self.next_key is None:
            lowest = min(self._pending)
            if lowest > self.first_key and len(self._pending) <= self.depth:
                return []  # the first frame may still be on its way
            self.next_key = lowest
        out = self._run()
        while len(self._pending) > self.depth:
            lowest = min(self._pending)
            if self._too_far(lowest):
                self.stats.discontinuities += 1
                self.next_key = lowest
            else:
                out.extend(self._gaps_until(lowest))
            out.extend(self._run())
        return out

    def _run(self) -> list[Release[T]]:
        out: list[Release[T]] = []
        assert self.next_key is not None
        while self.next_key in self._pending:
            out.append(Release(self.next_key, self._pending.pop(self.next_key)))
            self.next_key += 1
        if out and self._first_released is None:
            self._first_released = out[0].key
        self.stats.released += len(out)
        return out

    def _gaps_until(self, key: int) -> list[Release[T]]:
        assert self.next_key is not None
        out: list[Release[T]] = [Release(k, None) for k in range(self.next_key, key)]
        self._gap_keys.extend(range(self.next_key, key))
        self.stats.gaps += len(out)
        self.next_key = key
        return out
