"""What the runtime tells whoever watches it: the ``Observer`` protocol that metrics implement.

The runtime never imports prometheus_client (``server/metrics.py`` does, and is the only
module that does). It calls these methods, which must cost no more than a few plain integer
operations: ``SocketMeter.handled`` runs once per media frame. The default observer,
``NO_OBSERVER``, does nothing and allocates nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

    from mediastream.runtime.call import Call
    from mediastream.session import Audio, Session


class SocketMeter(Protocol):
    """One socket's counts, kept as plain numbers on the media path."""

    def handled(self, event: Audio, arrived: float) -> None:
        """``on_audio`` returned for ``event``; ``arrived`` is when its frame came in."""

    # what the stream's quality report counts its lags into, when it is on (it times the
    # frames: a frame is timed once, for both): per bucket of ``lag_bounds`` (seconds; bucket
    # i counts lags <= bound i, the last one the rest), and their sum in seconds
    lag_bounds: np.ndarray
    lag_buckets: np.ndarray
    lag_sum: float

    def error(self, kind: str) -> None:
        """One input error of ``kind`` on this socket."""

    def close(self) -> None:
        """The socket is done: what it counted can be published now."""


class Observer(Protocol):
    """Everything the runtime reports; every method is cheap and never raises."""

    def socket_opened(self, session: Session) -> SocketMeter | None:
        """A socket opened; its meter (None: nothing is counted per socket)."""

    def handler_failed(self) -> None:
        """A handler method raised, or was cancelled at the drain deadline."""

    def refused(self, reason: str) -> None:
        """A socket or a ``start`` was refused; ``reason`` is a short metric label."""

    def recording_open_failed(self) -> None:
        """A stream's recorder could not even be created (a bug, not a full disk)."""

    def watch(self, calls: Callable[[], Iterable[Call]]) -> None:
        """Where the live and suspended streams' calls can be listed, for gauges."""

    def start(self) -> None:
        """The server runs: periodic work may begin (on the running loop)."""

    async def close(self) -> None:
        """The server stops: publish the last counts."""


class NullObserver:
    """Observes nothing: the runtime's default, and what ``metrics=False`` gives."""

    def socket_opened(self, session: Session) -> SocketMeter | None:
        return None

    def handler_failed(self) -> None:
        pass

    def refused(self, reason: str) -> None:
        pass

    def recording_open_failed(self) -> None:
        pass

    def watch(self, calls: Callable[[], Iterable[Call]]) -> None:
        pass

    def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


NO_OBSERVER: Observer = NullObserver()
