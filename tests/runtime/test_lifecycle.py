"""The lifecycle tables: every allowed transition, and a clear error for the others."""

from __future__ import annotations

import pytest

from mediastream.runtime.lifecycle import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    Cause,
    LifecycleError,
    SocketLifecycle,
    SocketState,
    StreamLifecycle,
    StreamState,
)


def test_a_stream_suspends_resumes_and_ends_once() -> None:
    first, second = object(), object()
    life = StreamLifecycle(first)
    assert (life.state, life.owner) == (StreamState.LIVE, first)
    life.suspend(first)
    assert (life.state, life.owner) == (StreamState.SUSPENDED, None)
    life.resume(second)
    assert (life.state, life.owner, life.resumes) == (StreamState.LIVE, second, 1)
    assert life.end() is True
    assert (life.state, life.owner) == (StreamState.ENDED, None)
    assert life.end() is False  # idempotent: the caller finalizes once


def test_only_the_owner_suspends_and_an_ended_stream_cannot_come_back() -> None:
    owner = object()
    life = StreamLifecycle(owner)
    with pytest.raises(LifecycleError, match="only the owning socket"):
        life.suspend(object())
    with pytest.raises(LifecycleError, match="cannot resume a stream that is live"):
        life.resume(object())
    life.end()
    with pytest.raises(LifecycleError, match="cannot resume a stream that is ended"):
        life.resume(object())


def test_a_failed_stream_is_never_resumed_and_stays_failed_once_ended() -> None:
    owner = object()
    life = StreamLifecycle(owner)
    assert life.fail() is True and life.failed
    assert life.fail() is False  # the first failure is the one reported
    assert life.owner is owner  # its socket still records until it closes
    with pytest.raises(LifecycleError):
        life.suspend(owner)
    life.end()
    assert life.failed and life.ended


def test_a_socket_keeps_the_first_close_decision() -> None:
    life = SocketLifecycle()
    assert (life.state, life.code, life.reason) == (SocketState.OPEN, CLOSE_NORMAL, "")
    life.stream()
    assert life.close(CLOSE_POLICY, "stream taken over", Cause.TAKEN_OVER)
    assert not life.close(CLOSE_INTERNAL_ERROR, "later", Cause.BROKEN)
    assert (life.code, life.reason) == (CLOSE_POLICY, "stream taken over")
    assert not life.ends_stream  # the newer socket resumes the stream
    life.stop()  # the carrier's stop still ends it
    assert life.stopped and life.ends_stream
    assert life.finish() and not life.finish()
    with pytest.raises(LifecycleError, match="cannot stream a socket that is finished"):
        life.stream()


@pytest.mark.parametrize(
    ("code", "cause", "ends"),
    [
        (CLOSE_NORMAL, Cause.STOP, True),
        (CLOSE_NORMAL, Cause.APPLICATION, False),  # like a hang-up: may reconnect
        (CLOSE_INTERNAL_ERROR, Cause.BROKEN, True),
        (CLOSE_POLICY, Cause.TAKEN_OVER, False),
        (1001, Cause.IDLE, True),
    ],
)
def test_which_closes_end_the_stream(code: int, cause: Cause, ends: bool) -> None:
    life = SocketLifecycle()
    life.close(code, "why", cause)
    assert life.ends_stream is ends
