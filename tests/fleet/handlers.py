"""The handler every fleet instance runs: it writes each lifecycle call, with its stream id,
as a JSON line to ``$FLEET_EVENTS`` (one file per instance), so that a test can tell which
instance had which handler calls: ``on_start``, ``on_reconnect``, ``on_status``, ``on_stop``."""

from __future__ import annotations

import json
import os

from mediastream import StreamHandler
from mediastream.telnyx.webhooks import StreamStatusEvent

EVENTS_ENV = "FLEET_EVENTS"


def _write(record: dict[str, object]) -> None:
    """One line, appended in one write (O_APPEND): lines of two streams never mix."""
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(os.environ[EVENTS_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


class LifecycleLog(StreamHandler):
    """Records its handler calls; ``handler`` (``id(self)``) tells two instances apart."""

    def _log(self, event: str, **extra: object) -> None:
        _write({"event": event, "stream_id": self.call.stream_id, "handler": id(self), **extra})

    async def on_start(self) -> None:
        self._log("on_start")

    async def on_reconnect(self) -> None:
        self._log("on_reconnect")

    async def on_status(self, event: StreamStatusEvent) -> None:
        self._log("on_status", status=event.event, call_id=event.call_sid)

    async def on_stop(self) -> None:
        self._log("on_stop")
