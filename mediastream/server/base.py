"""``CoreServer``: what every standalone server shares around its ``MediaCore``.

A standalone server (websockets, picows) binds a port and moves bytes; everything else is the
same for each: its configuration tree, the HTTP routes and metrics attached to the core, the
drain, the context manager and ``serve_forever``'s signal handling. It lives here once, so
that an adapter module holds only what its library needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from mediastream.config import Config, ServerLimits, StreamOptions
from mediastream.runtime.connection import StreamConnection
from mediastream.runtime.core import MediaCore
from mediastream.runtime.handler import HandlerFactory, StreamHandler
from mediastream.runtime.observer import NO_OBSERVER
from mediastream.server.metrics import ServerMetrics
from mediastream.server.routes import HttpRoutes

logger = logging.getLogger(__name__)


class CoreServer:
    """A server on ``host:port`` running its sockets through one ``MediaCore``; subclasses
    provide ``start`` (bind) and ``stop`` (unbind, then ``core.shutdown``)."""

    def __init__(
        self,
        handler: HandlerFactory | type[StreamHandler] = StreamHandler,
        *,
        config: Config | None = None,
        host: str | None = None,
        port: int | None = None,
        record_dir: str | Path | None = None,
        options: StreamOptions | None = None,
        limits: ServerLimits | None = None,
        auth_token: str | None = None,
        http: HttpRoutes | None = None,
        reuse_port: bool = False,
        metrics: bool | None = None,
    ) -> None:
        self.config = Config.merged(
            config, host=host, port=port, record_dir=record_dir, options=options,
            limits=limits, auth_token=auth_token, metrics=metrics,
        )  # fmt: skip
        self.host, self.port = self.config.host, self.config.port
        self.reuse_port = reuse_port  # SO_REUSEPORT: worker processes share the port
        self.http = http or HttpRoutes()
        self.metrics = ServerMetrics() if self.config.metrics else None
        self.core = MediaCore(
            handler, self.config, observer=self.metrics or NO_OBSERVER, routes=self.http.handle
        )
        self.http.attach(
            self.core.registry, self.metrics, config=self.config, bind_host=self.config.host
        )

    @property
    def options(self) -> StreamOptions:
        return self.config.stream

    @property
    def limits(self) -> ServerLimits:
        return self.config.limits

    @property
    def registry(self) -> Any:
        return self.core.registry

    @property
    def connections(self) -> set[StreamConnection]:
        return self.core.connections

    @property
    def draining(self) -> bool:
        return self.core.draining

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def drain(self) -> None:
        """Refuse new sockets, give live ones ``drain_seconds`` to end, then stop."""
        await self.core.drain()
        await self.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def serve_forever(self, *, on_ready: Callable[[Any], None] | None = None) -> None:
        """Run until SIGTERM or SIGINT, then drain; a second signal stops at once."""
        signals = 0
        got_signal = asyncio.Event()
        stop_now = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            nonlocal signals
            signals += 1
            (got_signal if signals == 1 else stop_now).set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal)
        await self.start()
        if on_ready is not None:
            on_ready(self)
        try:
            await got_signal.wait()
            drain = asyncio.create_task(self.drain())
            forced = asyncio.create_task(stop_now.wait())
            await asyncio.wait({drain, forced}, return_when=asyncio.FIRST_COMPLETED)
            forced.cancel()
            if not drain.done():
                logger.info("second signal: stopping now")
                drain.cancel()
        finally:
            await self.stop()


TRANSPORTS = ("websockets", "picows")


def server_class(transport: str) -> type[CoreServer]:
    """The standalone server for ``transport``; a missing optional library is a user error."""
    if transport == "websockets":
        from mediastream.server.websocket import MediaServer

        return MediaServer
    if transport == "picows":
        try:
            from mediastream.server.picows import PicowsServer
        except ImportError:
            from mediastream.errors import UsageError, install_hint

            raise UsageError(f"--transport picows needs picows: {install_hint('picows')}") from None
        return PicowsServer
    raise ValueError(f"unknown transport {transport!r} (one of {', '.join(TRANSPORTS)})")
