"""``collect_digits``: read what the caller types (a PIN, an account number, a menu choice).

``DigitCollector`` is the state machine, sans-I/O: ``feed(digit, now)``, ``deadline()``,
``expired(now)``, ``end()``, on any clock. ``TypeAhead`` keeps the keys pressed while no
collection runs. ``DigitRouter`` is one call's asyncio side, behind ``Call.collect_digits``:
the runtime hands it every key before the handler's ``on_dtmf`` (which gets every key too).

Timing, after what IVR builders asked of jambonz (feature-server #534, #1306, #1348: "if the
caller has started typing, the timeout should stop"):

- ``first_digit_timeout`` runs from the start until the first key (nothing typed);
- ``inter_digit_timeout`` runs from each key to the next: every key extends the collection,
  and once a key is in, only this timer (and ``total_timeout``) can end it by time, so a slow
  but steady caller is never cut off;
- ``total_timeout`` is a hard ceiling from the start that no key extends. It is off by default
  (None): set it when a call must move on whatever the caller does. When it falls due with
  another timer, the reason is ``total_timeout``.

Every result carries the keys typed so far, whatever the reason (the application decides
whether three digits of a four-digit PIN are worth a retry prompt). The terminator is never
among the digits. After ``max_digits`` the caller often presses the terminator anyway: that
one key, within ``inter_digit_timeout``, is dropped rather than ending the next collection.

Type-ahead: a caller who knows the menu types during the prompt, before the application asks.
Keys pressed while no collection runs are kept (at most ``MAX_TYPE_AHEAD_KEYS``, oldest
dropped, counted and logged); a collection starts with the keys pressed within its
``type_ahead_seconds`` (``TYPE_AHEAD_SECONDS``), as if typed at its start, and those older are
dropped (counted and logged). Keys past a completed collection stay for the next one. A key
the application already acted on in ``on_dtmf`` is type-ahead too: a collection started for
a menu choice made in ``on_dtmf`` passes ``type_ahead_seconds=0`` to start empty.

Media level, as the rest of ``voice/``: asyncio and the standard library, never the runtime.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

logger = logging.getLogger(__name__)

KEYS = frozenset("0123456789*#ABCD")  # the sixteen DTMF keys
TYPE_AHEAD_SECONDS = 5.0
"""Keys pressed this long before a collection starts still count (a prompt's length: a caller
who knows the menu types while it plays). Older ones are dropped."""
MAX_TYPE_AHEAD_KEYS = 32
"""Keys kept while no collection runs; past it the oldest goes (counted and logged once)."""
TERMINATOR_GRACE_SECONDS = 3.0
"""After ``max_digits``, a terminator this soon is swallowed, when no ``inter_digit_timeout``
says how long the caller takes between keys."""

Reason = Literal[
    "max_digits",
    "terminator",
    "first_digit_timeout",
    "inter_digit_timeout",
    "total_timeout",
    "stream_ended",
]


@dataclass(frozen=True, slots=True)
class DigitResult:
    """What a collection got: ``digits`` typed (never the terminator), and why it ended.

    ``terminator`` is the key that ended it when ``reason == "terminator"`` (one of several,
    if several were allowed), else None.
    """

    digits: str
    reason: Reason
    terminator: str | None = None

    @property
    def timed_out(self) -> bool:
        """Ended by one of the three timeouts."""
        return self.reason.endswith("_timeout")


def _positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{name} must be positive or None, not {value!r}")


class DigitCollector:
    """One collection's state: keys in, a ``DigitResult`` out, on the caller's clock.

    ``feed`` does not look at the clock: call ``expired(now)`` first (a key that comes after
    a deadline belongs to no collection). ``deadline()`` is when to call ``expired`` next.
    """

    def __init__(
        self,
        now: float,
        *,
        max_digits: int | None = None,
        terminator: str | None = "#",
        first_digit_timeout: float | None = 5.0,
        inter_digit_timeout: float | None = 3.0,
        total_timeout: float | None = None,
    ) -> None:
        if max_digits is not None and (not isinstance(max_digits, int) or max_digits < 1):
            raise ValueError(f"max_digits must be a whole number >= 1 or None, not {max_digits!r}")
        if terminator is not None:
            terminator = terminator.upper()
            if not terminator or not set(terminator) <= KEYS:
                raise ValueError(f"terminator must be DTMF keys (0-9 * # A-D), not {terminator!r}")
        _positive("first_digit_timeout", first_digit_timeout)
        _positive("inter_digit_timeout", inter_digit_timeout)
        _positive("total_timeout", total_timeout)
        ways = (max_digits, terminator, first_digit_timeout, inter_digit_timeout, total_timeout)
        if all(way is None for way in ways):
            raise ValueError("collect_digits needs max_digits, a terminator or a timeout to end")
        self.max_digits, self.terminator = max_digits, terminator
        self.first_digit_timeout = first_digit_timeout
        self.inter_digit_timeout = inter_digit_timeout
        self.total_timeout = total_timeout
        self.started_at = now
        self.last_key_at: float | None = None
        self.digits: list[str] = []
        self.result: DigitResult | None = None

    @property
    def done(self) -> bool:
        return self.result is not None

    def feed(self, digit: str, now: float) -> DigitResult | None:
        """One key (one of ``KEYS``); returns the result if it ended the collection."""
        if self.result is not None:
            raise RuntimeError("DigitCollector.feed after the collection ended")
        key = digit.upper()
        if key not in KEYS:
            raise ValueError(f"not a DTMF key: {digit!r}")
        self.last_key_at = now
        if self.terminator is not None and key in self.terminator:
            return self._end("terminator", key)
        self.digits.append(key)
        if self.max_digits is not None and len(self.digits) >= self.max_digits:
            return self._end("max_digits")
        return None

    def _key_deadline(self) -> float | None:
        """The first- or inter-digit deadline, whichever applies now."""
        if self.last_key_at is None:
            timeout, since = self.first_digit_timeout, self.started_at
        else:
            timeout, since = self.inter_digit_timeout, self.last_key_at
        return None if timeout is None else since + timeout

    def _total_deadline(self) -> float | None:
        return None if self.total_timeout is None else self.started_at + self.total_timeout

    def deadline(self) -> float | None:
        """When the collection times out if no key comes (None: never, or it ended)."""
        if self.result is not None:
            return None
        due = [d for d in (self._key_deadline(), self._total_deadline()) if d is not None]
        return min(due, default=None)

    def expired(self, now: float) -> DigitResult | None:
        """The result if a deadline has passed at ``now`` (it ends the collection)."""
        if self.result is not None:
            return None
        total, key = self._total_deadline(), self._key_deadline()
        if total is not None and now >= total and (key is None or total <= key):
            return self._end("total_timeout")
        if key is not None and now >= key:
            first = self.last_key_at is None
            return self._end("first_digit_timeout" if first else "inter_digit_timeout")
        return None

    def end(self) -> DigitResult:
        """The stream ended: the keys so far, reason ``stream_ended`` (or the result already
        reached)."""
        return self.result if self.result is not None else self._end("stream_ended")

    def terminator_grace(self) -> float:
        """How soon after ``max_digits`` a terminator is taken as its own, and swallowed."""
        return self.inter_digit_timeout or TERMINATOR_GRACE_SECONDS

    def _end(self, reason: Reason, terminator: str | None = None) -> DigitResult:
        self.result = DigitResult("".join(self.digits), reason, terminator)
        return self.result


class TypeAhead:
    """Keys pressed while no collection runs, with when, for the next collection."""

    def __init__(self, max_keys: int = MAX_TYPE_AHEAD_KEYS) -> None:
        self.max_keys = max_keys
        self.overflowed = 0  # dropped: more than ``max_keys`` waiting
        self.stale = 0  # dropped: older than a starting collection's window
        self.swallowed = 0  # terminators pressed just after ``max_digits``
        self._keys: deque[tuple[float, str]] = deque()
        self._expect: tuple[str, float] | None = None  # (terminator keys, until when)

    def __len__(self) -> int:
        return len(self._keys)

    def keys(self) -> str:
        return "".join(key for _, key in self._keys)

    def add(self, key: str, now: float) -> None:
        self._keys.append((now, key))
        if len(self._keys) > self.max_keys:
            self._keys.popleft()
            self.overflowed += 1

    def expect_terminator(self, keys: str, until: float) -> None:
        """A collection just ended by ``max_digits``: the next key, if one of ``keys`` and no
        later than ``until``, is the caller's habitual terminator, and is dropped."""
        self._expect = (keys, until)

    def swallows(self, key: str, now: float) -> bool:
        """Whether ``key`` is that terminator, to drop (asked of every key: the next
        collection may be running already). Any key ends the expectation."""
        expect, self._expect = self._expect, None
        if expect is not None and key in expect[0] and now <= expect[1]:
            self.swallowed += 1
            return True
        return False

    def clear(self) -> None:
        self._keys.clear()
        self._expect = None

    def feed_into(self, collector: DigitCollector, now: float, window: float) -> None:
        """Start ``collector`` with the keys pressed within ``window`` seconds before ``now``
        (as if typed at ``now``); older ones are dropped, later ones beyond its end kept."""
        keys = self._keys
        while keys and (window <= 0 or keys[0][0] < now - window):
            keys.popleft()
            self.stale += 1
        while keys and not collector.done:
            collector.feed(keys.popleft()[1], now)
        result = collector.result
        if result is not None and result.reason == "max_digits" and collector.terminator:
            if keys and keys[0][1] in collector.terminator:
                keys.popleft()
                self.swallowed += 1
            elif not keys:
                self.expect_terminator(collector.terminator, now + collector.terminator_grace())


class DigitRouter:
    """One call's keys: to the running collection, else to the type-ahead; and the timers.

    The runtime calls ``pressed`` for each DTMF key (before ``on_dtmf``) and ``end`` when the
    stream ends; ``collect`` is what the application awaits, in a task of its own (``guard``
    raises where waiting could never end: inside a handler method).
    """

    def __init__(self, log_id: str = "?", guard: Callable[[], None] | None = None) -> None:
        self.type_ahead = TypeAhead()
        self.collector: DigitCollector | None = None
        self.ended = False
        self.ignored = 0  # keys that are not DTMF keys
        self._log_id = log_id
        self._guard = guard
        self._future: asyncio.Future[DigitResult] | None = None
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ the runtime's side

    def pressed(self, digit: str) -> None:
        """A DTMF key from the carrier."""
        key = digit.upper()
        if len(key) != 1 or key not in KEYS:
            self.ignored += 1
            if self.ignored == 1:
                logger.warning("stream %s: DTMF %r is not a key: not collected", self._log_id, key)
            return
        now = asyncio.get_running_loop().time()
        if self.type_ahead.swallows(key, now):
            return
        collector = self.collector
        if collector is not None:
            result = collector.expired(now)  # its timer is due but has not run yet
            if result is None:
                result = collector.feed(key, now)
                if result is None:
                    self._arm()
                else:
                    self._finish(result)
                return
            self._finish(result)  # this key came after the deadline: type-ahead
        type_ahead = self.type_ahead
        overflowed = type_ahead.overflowed
        type_ahead.add(key, now)
        if overflowed == 0 and type_ahead.overflowed:  # logged once; counted on
            logger.warning(
                "stream %s: over %d DTMF keys pressed with no collect_digits running: the "
                "oldest are dropped", self._log_id, type_ahead.max_keys,
            )  # fmt: skip

    def end(self) -> None:
        """The stream ended: a running collection returns ``stream_ended``; later ones too."""
        self.ended = True
        self.type_ahead.clear()
        if self.collector is not None:
            self._finish(self.collector.end())

    # ------------------------------------------------------------ the application's side

    async def collect(
        self,
        *,
        max_digits: int | None = None,
        terminator: str | None = "#",
        first_digit_timeout: float | None = 5.0,
        inter_digit_timeout: float | None = 3.0,
        total_timeout: float | None = None,
        type_ahead_seconds: float = TYPE_AHEAD_SECONDS,
    ) -> DigitResult:
        """Collect one entry (see the module's docstring for the timing)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        collector = DigitCollector(
            now,
            max_digits=max_digits,
            terminator=terminator,
            first_digit_timeout=first_digit_timeout,
            inter_digit_timeout=inter_digit_timeout,
            total_timeout=total_timeout,
        )
        if self.ended:
            return collector.end()
        if self.collector is not None:
            raise RuntimeError(f"stream {self._log_id}: collect_digits is already running")
        if self._guard is not None:
            self._guard()
        stale = self.type_ahead.stale
        self.type_ahead.feed_into(collector, now, type_ahead_seconds)
        if stale == 0 and self.type_ahead.stale:
            logger.info(
                "stream %s: DTMF keys pressed over %g s before collect_digits were dropped "
                "(type_ahead_seconds)", self._log_id, type_ahead_seconds,
            )  # fmt: skip
        if collector.result is not None:
            return collector.result
        future: asyncio.Future[DigitResult] = loop.create_future()
        self.collector, self._future = collector, future
        self._arm()
        try:
            return await future
        finally:
            if self.collector is collector:  # cancelled: keys go to the type-ahead again
                self.collector, self._future = None, None
                self._disarm()

    # ------------------------------------------------------------ inside

    def _finish(self, result: DigitResult) -> None:
        collector, future = self.collector, self._future
        self.collector, self._future = None, None
        self._disarm()
        if collector is not None and result.reason == "max_digits" and collector.terminator:
            until = asyncio.get_running_loop().time() + collector.terminator_grace()
            self.type_ahead.expect_terminator(collector.terminator, until)
        if future is not None and not future.done():
            future.set_result(result)

    def _arm(self) -> None:
        self._disarm()
        collector = self.collector
        deadline = collector.deadline() if collector is not None else None
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        collector = self.collector
        if collector is None:
            return
        result = collector.expired(asyncio.get_running_loop().time())
        if result is None:
            self._arm()  # woken a hair early
        else:
            self._finish(result)
