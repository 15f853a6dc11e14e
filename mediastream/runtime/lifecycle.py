"""The lifecycles of a stream and of a socket: their states and every transition, here only.

A **stream** (one stream id, across its sockets) is ``LIVE`` while a socket owns it: that
socket's audio is recorded and its playback goes there. When the socket closes without
``stop``, the stream is ``SUSPENDED``, owned by nobody, until a socket naming the same id
resumes it (``LIVE`` again, same handler, same recording) or the grace period runs out. A
handler that raises, or an internal error, makes it ``FAILED``: its handler is not called
again and it is never resumed, but audio still arriving on its socket is recorded until that
socket closes. ``ENDED`` is final: the recording is closed and ``on_stop`` was called.

::

    new ──▶ LIVE ──suspend──▶ SUSPENDED ──resume──▶ LIVE
             │  ╲                 │
            fail  ╲─────end───────┴──▶ ENDED
             ▼                         ▲
           FAILED ────────end──────────┘

A **socket** is ``OPEN`` until its ``start`` is taken, ``STREAMING`` while it holds a stream,
``CLOSING`` once something decided that it closes (the first ``Closing`` wins: its close code
and reason are what the peer is sent), and ``FINISHED`` when the runtime is done with it.

Like h11's state machine, this module raises ``LifecycleError`` for a transition that is not
in the table: a bug shows up where it happens, not three callbacks later as a zombie stream.
The objects are sans-I/O: timers, tasks and files belong to the registry that drives them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

from mediastream.errors import MediaStreamError

Owner = TypeVar("Owner")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013


class LifecycleError(MediaStreamError, RuntimeError):
    """A transition the lifecycle does not allow: a bug in the runtime, never bad input."""


class StreamState(Enum):
    """Where a stream is in its life."""

    LIVE = "live"
    SUSPENDED = "suspended"
    FAILED = "failed"
    ENDED = "ended"


_STREAM_TRANSITIONS: dict[tuple[StreamState, str], StreamState] = {
    (StreamState.LIVE, "suspend"): StreamState.SUSPENDED,
    (StreamState.SUSPENDED, "resume"): StreamState.LIVE,
    (StreamState.LIVE, "fail"): StreamState.FAILED,
    (StreamState.SUSPENDED, "fail"): StreamState.FAILED,  # on_status raised meanwhile
    (StreamState.LIVE, "end"): StreamState.ENDED,
    (StreamState.SUSPENDED, "end"): StreamState.ENDED,
    (StreamState.FAILED, "end"): StreamState.ENDED,
}


class StreamLifecycle(Generic[Owner]):
    """A stream's state and its owning socket, changed only through the transitions."""

    __slots__ = ("_failed", "owner", "resumes", "state")

    def __init__(self, owner: Owner) -> None:
        self.state = StreamState.LIVE
        self.owner: Owner | None = owner
        self.resumes = 0  # how many times a new socket took the stream up
        self._failed = False

    def _move(self, event: str) -> None:
        try:
            self.state = _STREAM_TRANSITIONS[self.state, event]
        except KeyError:
            raise LifecycleError(f"cannot {event} a stream that is {self.state.value}") from None

    @property
    def ended(self) -> bool:
        return self.state is StreamState.ENDED

    @property
    def failed(self) -> bool:
        """True once a handler or internal error ended the stream's life (even once ended)."""
        return self._failed

    def suspend(self, owner: Owner) -> None:
        """``owner`` lets the stream go (closed without ``stop``, or handed to a newer socket)."""
        if owner is not self.owner:
            raise LifecycleError("only the owning socket can suspend a stream")
        self._move("suspend")
        self.owner = None

    def resume(self, owner: Owner) -> None:
        """A new socket takes the suspended stream up."""
        self._move("resume")
        self.owner = owner
        self.resumes += 1

    def fail(self) -> bool:
        """A handler or internal error: no more handler calls, no resume. False if the stream
        had already failed or ended (the first failure is the one reported)."""
        if self.state in (StreamState.FAILED, StreamState.ENDED):
            return False
        self._move("fail")
        self._failed = True
        return True

    def end(self) -> bool:
        """Finalize; True the first time (the caller then closes the recording, calls
        ``on_stop``), False if the stream had already ended."""
        if self.state is StreamState.ENDED:
            return False
        self._move("end")
        self.owner = None
        return True


class SocketState(Enum):
    """Where one socket is in its life."""

    OPEN = "open"  # no stream yet
    STREAMING = "streaming"  # holds a stream (or is waiting to take one over)
    CLOSING = "closing"  # a close was decided; its reason is in ``SocketLifecycle.closing``
    FINISHED = "finished"  # the runtime is done with it


class Cause(Enum):
    """Why a socket closes: it decides what becomes of its stream."""

    STOP = "stop"  # the carrier's ``stop``: the stream is over
    TAKEN_OVER = "taken_over"  # a newer socket resumes the stream
    REFUSED = "refused"  # its ``start`` was refused (limit, id in use)
    HANDLER_FAILED = "handler_failed"
    BAD_INPUT = "bad_input"  # a fatal input error (unsupported codec, invalid UTF-8...)
    BROKEN = "broken"  # an internal error: nothing more on this socket is trusted
    IDLE = "idle"
    APPLICATION = "application"  # the handler closed its stream


@dataclass(frozen=True, slots=True)
class Closing:
    """A decided close: what the peer is sent, and why."""

    code: int
    reason: str
    cause: Cause

    @property
    def ends_stream(self) -> bool:
        """Whether the stream ends with this socket, rather than waiting for a reconnect."""
        return self.cause is not Cause.TAKEN_OVER and (
            self.cause is Cause.STOP or self.code != CLOSE_NORMAL
        )


_SOCKET_TRANSITIONS: dict[tuple[SocketState, str], SocketState] = {
    (SocketState.OPEN, "stream"): SocketState.STREAMING,
    (SocketState.OPEN, "close"): SocketState.CLOSING,
    (SocketState.STREAMING, "close"): SocketState.CLOSING,
    (SocketState.OPEN, "finish"): SocketState.FINISHED,
    (SocketState.STREAMING, "finish"): SocketState.FINISHED,
    (SocketState.CLOSING, "finish"): SocketState.FINISHED,
}


class SocketLifecycle:
    """One socket's state and, once decided, why it closes."""

    __slots__ = ("closing", "state", "stopped")

    def __init__(self) -> None:
        self.state = SocketState.OPEN
        self.closing: Closing | None = None
        self.stopped = False  # the carrier said ``stop``: the stream is over, whatever else

    def stop(self) -> None:
        """The carrier's ``stop``: the socket closes normally and its stream ends."""
        self.stopped = True
        self.close(CLOSE_NORMAL, "", Cause.STOP)

    @property
    def ends_stream(self) -> bool:
        """Whether the stream ends with this socket, rather than waiting for a reconnect."""
        return self.stopped or (self.closing is not None and self.closing.ends_stream)

    def _move(self, event: str) -> None:
        try:
            self.state = _SOCKET_TRANSITIONS[self.state, event]
        except KeyError:
            raise LifecycleError(f"cannot {event} a socket that is {self.state.value}") from None

    def stream(self) -> None:
        """Its ``start`` was taken: it holds a stream now."""
        self._move("stream")

    def close(self, code: int, reason: str, cause: Cause) -> bool:
        """Decide that the socket closes; the first decision wins (False for later ones)."""
        if self.closing is not None or self.state is SocketState.FINISHED:
            return False
        self._move("close")
        self.closing = Closing(code, reason[:120], cause)
        return True

    def finish(self) -> bool:
        """The socket is gone; True the first time."""
        if self.state is SocketState.FINISHED:
            return False
        self._move("finish")
        return True

    @property
    def code(self) -> int:
        return self.closing.code if self.closing is not None else CLOSE_NORMAL

    @property
    def reason(self) -> str:
        return self.closing.reason if self.closing is not None else ""

    def caused_by(self, cause: Cause) -> bool:
        return self.closing is not None and self.closing.cause is cause
