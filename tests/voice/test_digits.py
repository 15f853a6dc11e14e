"""``call.collect_digits``: every way a collection ends, on a fake clock (``DigitCollector``,
``TypeAhead``) and through a real server with DTMF frames sent at chosen times."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

import pytest

from mediastream import MediaServer, StreamHandler
from mediastream.simulate import plan_call, send_call, synthesize_speechlike
from mediastream.voice.digits import DigitCollector, DigitResult, DigitRouter, TypeAhead
from tests.conftest import ws_url

# ------------------------------------------------------------------ DigitCollector, fake clock


def collector(**options: Any) -> DigitCollector:
    return DigitCollector(0.0, **options)


def test_max_digits_ends_it_at_the_last_key() -> None:
    c = collector(max_digits=4)
    assert [c.feed(k, 0.1 * n) for n, k in enumerate("123")] == [None] * 3
    assert c.feed("4", 0.4) == DigitResult("1234", "max_digits")
    assert c.deadline() is None and c.expired(100.0) is None  # over: no more deadlines


def test_the_terminator_ends_it_and_is_not_among_the_digits() -> None:
    c = collector(max_digits=10, terminator="#")
    c.feed("4", 1.0)
    c.feed("2", 2.0)
    result = c.feed("#", 3.0)
    assert result == DigitResult("42", "terminator", "#") and not result.timed_out
    assert collector().feed("#", 0.5) == DigitResult("", "terminator", "#")  # nothing typed
    either = collector(terminator="#*")
    either.feed("7", 1.0)
    assert either.feed("*", 1.5) == DigitResult("7", "terminator", "*")


def test_first_digit_timeout_when_nothing_is_typed() -> None:
    c = collector(first_digit_timeout=5.0, inter_digit_timeout=3.0)
    assert c.deadline() == 5.0
    assert c.expired(4.999) is None
    result = c.expired(5.0)
    assert result == DigitResult("", "first_digit_timeout") and result.timed_out


def test_every_key_extends_the_inter_digit_timeout() -> None:
    c = collector(first_digit_timeout=5.0, inter_digit_timeout=3.0)
    c.feed("1", 4.0)  # just before the first-digit deadline: the inter-digit timer takes over
    assert c.deadline() == 7.0
    c.feed("2", 6.5)
    assert c.deadline() == 9.5 and c.expired(9.4) is None
    assert c.expired(9.5) == DigitResult("12", "inter_digit_timeout")


def test_a_slow_steady_caller_is_never_cut_off_without_a_total_timeout() -> None:
    """jambonz#534/#1306/#1348: once typing started, only the inter-digit timer ends it."""
    c = collector(first_digit_timeout=5.0, inter_digit_timeout=3.0, terminator="#")
    for n in range(20):  # a key every 2.9 s for a minute
        now = 2.9 * (n + 1)
        assert c.expired(now) is None
        assert c.feed(str(n % 10), now) is None
    assert c.feed("#", 60.0) == DigitResult("01234567890123456789", "terminator", "#")


def test_total_timeout_is_a_ceiling_that_no_key_extends() -> None:
    c = collector(first_digit_timeout=5.0, inter_digit_timeout=3.0, total_timeout=4.0)
    c.feed("1", 1.0)
    c.feed("2", 2.0)
    c.feed("3", 3.0)
    assert c.deadline() == 4.0  # not 6.0: the ceiling wins
    assert c.expired(3.99) is None
    assert c.expired(4.0) == DigitResult("123", "total_timeout")


def test_total_timeout_is_the_reason_when_both_fall_due_together() -> None:
    c = collector(first_digit_timeout=2.0, total_timeout=2.0)
    assert c.expired(2.0) == DigitResult("", "total_timeout")
    late = collector(first_digit_timeout=2.0, total_timeout=10.0)
    assert late.expired(2.0) == DigitResult("", "first_digit_timeout")


def test_timeouts_of_none_are_off() -> None:
    c = collector(first_digit_timeout=None, inter_digit_timeout=None, max_digits=2)
    assert c.deadline() is None and c.expired(1e9) is None
    c.feed("9", 1.0)
    assert c.deadline() is None


def test_stream_ended_returns_what_was_typed() -> None:
    c = collector()
    c.feed("5", 1.0)
    assert c.end() == DigitResult("5", "stream_ended")
    assert c.end() == DigitResult("5", "stream_ended")
    with pytest.raises(RuntimeError):
        c.feed("6", 2.0)


@pytest.mark.parametrize(
    "options",
    [
        {"max_digits": 0},
        {"terminator": "x"},
        {"terminator": ""},
        {"first_digit_timeout": 0},
        {"inter_digit_timeout": -1},
        {"max_digits": None, "terminator": None, "first_digit_timeout": None,
         "inter_digit_timeout": None, "total_timeout": None},
    ],
)  # fmt: skip
def test_bad_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        collector(**options)


def test_lower_case_keys_are_the_keys() -> None:
    c = collector(terminator="d")
    c.feed("a", 1.0)
    assert c.feed("D", 2.0) == DigitResult("A", "terminator", "D")
    with pytest.raises(ValueError):
        collector().feed("x", 3.0)


# ------------------------------------------------------------------ TypeAhead, fake clock


def test_type_ahead_keys_within_the_window_start_the_next_collection() -> None:
    keys = TypeAhead()
    for at, key in [(1.0, "9"), (7.0, "1"), (8.0, "2")]:
        keys.add(key, at)
    c = DigitCollector(10.0, max_digits=4, inter_digit_timeout=3.0)
    keys.feed_into(c, 10.0, window=5.0)  # "9" was pressed 9 s before: dropped
    assert c.digits == ["1", "2"] and keys.stale == 1 and len(keys) == 0
    assert c.deadline() == 13.0  # typed-ahead keys count as typed at the start


def test_type_ahead_beyond_a_collection_stays_for_the_next() -> None:
    keys = TypeAhead()
    for n, key in enumerate("12345#678"):
        keys.add(key, 1.0 + n * 0.1)
    first = DigitCollector(2.0, max_digits=4)
    keys.feed_into(first, 2.0, window=5.0)
    assert first.result == DigitResult("1234", "max_digits")
    second = DigitCollector(2.0, max_digits=4)
    keys.feed_into(second, 2.0, window=5.0)
    assert second.result == DigitResult("5", "terminator", "#")
    assert keys.keys() == "678"


def test_a_terminator_right_after_max_digits_is_swallowed() -> None:
    keys = TypeAhead()
    for n, key in enumerate("1234#5"):
        keys.add(key, n * 0.1)
    c = DigitCollector(1.0, max_digits=4, terminator="#")
    keys.feed_into(c, 1.0, window=5.0)
    assert c.result == DigitResult("1234", "max_digits") and keys.keys() == "5"
    assert keys.swallowed == 1
    # typed live after it ended (a next collection running or not): the next key only,
    # and only within the grace
    keys.expect_terminator("#", until=5.0)
    assert keys.swallows("#", 4.0) and not keys.swallows("#", 4.5)
    keys.expect_terminator("#", until=5.0)
    assert not keys.swallows("#", 6.0)  # too late: the caller's own
    keys.expect_terminator("#", until=5.0)
    assert not keys.swallows("5", 4.0) and not keys.swallows("#", 4.1)  # another key first
    assert keys.swallowed == 2


def test_type_ahead_window_zero_starts_empty_and_the_buffer_is_bounded() -> None:
    keys = TypeAhead(max_keys=3)
    for n, key in enumerate("12345"):
        keys.add(key, 1.0 + n)
    assert keys.keys() == "345" and keys.overflowed == 2
    c = DigitCollector(6.0, max_digits=4)
    keys.feed_into(c, 6.0, window=0)
    assert c.digits == [] and keys.stale == 3


# ------------------------------------------------------------------ DigitRouter, real loop


async def test_router_times_out_on_the_event_loop_and_keys_after_go_to_type_ahead() -> None:
    router = DigitRouter("router")
    task = asyncio.create_task(router.collect(max_digits=3, first_digit_timeout=0.2))
    await asyncio.sleep(0.05)
    router.pressed("1")
    router.pressed("2")
    router.pressed("3")
    router.pressed("4")  # past max_digits: kept for the next collection
    assert await task == DigitResult("123", "max_digits")
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await router.collect(max_digits=3, inter_digit_timeout=0.2)
    assert result == DigitResult("4", "inter_digit_timeout")
    assert 0.18 <= loop.time() - started < 1.0


async def test_router_refuses_a_second_collection_and_ends_with_the_stream() -> None:
    router = DigitRouter("ending")
    task = asyncio.create_task(router.collect(first_digit_timeout=None, inter_digit_timeout=None))
    await asyncio.sleep(0.01)
    with pytest.raises(RuntimeError, match="already running"):
        await router.collect()
    router.pressed("7")
    router.end()
    assert await task == DigitResult("7", "stream_ended")
    assert await router.collect() == DigitResult("", "stream_ended")  # later ones too


async def test_router_cancelled_collection_leaves_no_trace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = DigitRouter("cancel")
    task = asyncio.create_task(router.collect())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert router.collector is None
    router.pressed("5")
    caplog.set_level(logging.WARNING, "mediastream.voice.digits")
    router.pressed("not a key")
    assert router.type_ahead.keys() == "5" and router.ignored == 1
    assert await router.collect(max_digits=1) == DigitResult("5", "max_digits")
    assert len([r for r in caplog.records if "not a key" in r.getMessage()]) == 1


# ------------------------------------------------------------------ through a real server


class Collector(StreamHandler):
    """Collects from a task started in ``on_start`` (optionally after a ``prompt_seconds``
    pause standing for a prompt), recording results, timings and what reached ``on_dtmf``."""

    options: ClassVar[dict[str, Any]] = {}
    prompt_seconds: ClassVar[float] = 0.0
    runs: ClassVar[list[asyncio.Task[tuple[DigitResult, float]]]] = []
    keys: ClassVar[list[str]] = []

    async def on_start(self) -> None:
        self.runs.append(asyncio.create_task(self.collect()))

    async def collect(self) -> tuple[DigitResult, float]:
        if self.prompt_seconds:
            await asyncio.sleep(self.prompt_seconds)
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await self.call.collect_digits(**self.options)
        return result, loop.time() - started

    async def on_dtmf(self, digit: str) -> None:
        self.keys.append(digit)


async def call_with_keys(
    handler: type[Collector], keys: list[tuple[float, str]], *, linger: float = 1.0
) -> list[tuple[DigitResult, float]]:
    """One call that sends 0.1 s of audio, then stays open ``linger`` s with ``keys`` sent at
    their times (seconds after the socket opened), then ``stop``."""
    handler.runs, handler.keys = [], []
    plan = plan_call(synthesize_speechlike(0.1, 8000), stream_id=f"keys-{handler.__name__}")
    async with MediaServer(handler, port=0) as server:
        await send_call(ws_url(server), plan, dtmf=keys, linger=linger)
        return list(await asyncio.wait_for(asyncio.gather(*handler.runs), 10))


def collecting(prompt: float = 0.0, **options: Any) -> type[Collector]:
    return type("Collect", (Collector,), {"options": options, "prompt_seconds": prompt})


async def test_server_max_digits() -> None:
    handler = collecting(max_digits=4, first_digit_timeout=2.0)
    keys = [(0.1, "1"), (0.15, "2"), (0.2, "3"), (0.25, "4"), (0.3, "5")]
    [(result, _)] = await call_with_keys(handler, keys, linger=0.5)
    assert result == DigitResult("1234", "max_digits")
    assert handler.keys == ["1", "2", "3", "4", "5"]  # on_dtmf got every key too


async def test_server_terminator() -> None:
    handler = collecting(terminator="#", first_digit_timeout=2.0)
    [(result, _)] = await call_with_keys(handler, [(0.1, "4"), (0.15, "2"), (0.2, "#")], linger=0.4)
    assert result == DigitResult("42", "terminator", "#")


async def test_server_first_digit_timeout() -> None:
    handler = collecting(first_digit_timeout=0.3)
    [(result, elapsed)] = await call_with_keys(handler, [], linger=0.8)
    assert result == DigitResult("", "first_digit_timeout")
    assert 0.28 <= elapsed < 0.6


async def test_server_inter_digit_timeout_is_extended_by_every_key() -> None:
    handler = collecting(first_digit_timeout=1.0, inter_digit_timeout=0.3)
    keys = [(0.1, "7"), (0.35, "8"), (0.6, "9")]  # each within 0.3 s of the one before
    [(result, elapsed)] = await call_with_keys(handler, keys, linger=1.3)
    assert result == DigitResult("789", "inter_digit_timeout")
    assert 0.85 <= elapsed < 1.2  # 0.3 s after the last key, long past 0.3 s after the first


async def test_server_total_timeout_cuts_a_steady_typist() -> None:
    handler = collecting(inter_digit_timeout=0.3, total_timeout=0.5)
    keys = [(0.1 * n, str(n)) for n in range(1, 10)]  # a key every 0.1 s for 0.9 s
    [(result, elapsed)] = await call_with_keys(handler, keys, linger=1.2)
    assert result.reason == "total_timeout" and 0.48 <= elapsed < 0.8
    assert 3 <= len(result.digits) <= 5 and "123456789".startswith(result.digits)


async def test_server_stream_ended() -> None:
    handler = collecting(first_digit_timeout=5.0)
    [(result, elapsed)] = await call_with_keys(handler, [(0.1, "3")], linger=0.3)
    assert result == DigitResult("3", "stream_ended") and elapsed < 2.0


async def test_server_keys_typed_during_the_prompt_count() -> None:
    handler = collecting(prompt=0.4, max_digits=4, inter_digit_timeout=0.5)
    keys = [(0.1, "1"), (0.2, "2"), (0.55, "3"), (0.65, "4")]
    [(result, _)] = await call_with_keys(handler, keys, linger=1.0)
    assert result == DigitResult("1234", "max_digits")


async def test_server_type_ahead_off_starts_empty() -> None:
    handler = collecting(prompt=0.4, max_digits=4, inter_digit_timeout=0.3, type_ahead_seconds=0)
    keys = [(0.1, "1"), (0.2, "2"), (0.55, "3"), (0.65, "4")]
    [(result, _)] = await call_with_keys(handler, keys, linger=1.2)
    assert result == DigitResult("34", "inter_digit_timeout")


async def test_server_back_to_back_collections_swallow_the_habitual_terminator() -> None:
    class Twice(Collector):
        async def collect(self) -> tuple[DigitResult, float]:
            first = await self.call.collect_digits(max_digits=4, first_digit_timeout=2.0)
            second = await self.call.collect_digits(max_digits=4, first_digit_timeout=2.0)
            assert first == DigitResult("1234", "max_digits")
            return second, 0.0

    keys = [(0.1 + 0.05 * n, key) for n, key in enumerate("1234#5678")]
    [(second, _)] = await call_with_keys(Twice, keys, linger=0.8)
    assert second == DigitResult("5678", "max_digits")


async def test_server_collection_started_from_on_dtmf_in_a_task() -> None:
    """The documented pattern: a menu key in ``on_dtmf`` starts a collection in a task,
    with ``type_ahead_seconds=0`` so the menu key is not its first digit."""

    class Menu(Collector):
        async def on_start(self) -> None:
            pass

        async def on_dtmf(self, digit: str) -> None:
            self.keys.append(digit)
            if digit == "*":
                options = {"max_digits": 3, "type_ahead_seconds": 0, "first_digit_timeout": 2}
                self.runs.append(asyncio.create_task(self.collect_with(options)))

        async def collect_with(self, options: dict[str, Any]) -> tuple[DigitResult, float]:
            return await self.call.collect_digits(**options), 0.0

    keys = [(0.1, "*"), (0.2, "1"), (0.25, "2"), (0.3, "3")]
    [(result, _)] = await call_with_keys(Menu, keys, linger=0.6)
    assert result == DigitResult("123", "max_digits")
    assert Menu.keys == ["*", "1", "2", "3"]


async def test_server_awaiting_inside_on_dtmf_raises_at_once_instead_of_deadlocking() -> None:
    errors: list[tuple[str, float]] = []

    class Blocking(Collector):
        async def on_start(self) -> None:
            pass

        async def on_dtmf(self, digit: str) -> None:
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                await self.call.collect_digits(max_digits=2)
            except RuntimeError as exc:
                errors.append((str(exc), loop.time() - started))

    await call_with_keys(Blocking, [(0.1, "1")], linger=0.3)
    [(message, elapsed)] = errors
    assert "create_task" in message and "keys-Blocking" in message and elapsed < 0.05
