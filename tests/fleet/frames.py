"""A fleet handler that also says which audio it was handed: one line per frame that truly
came (not silence for a lost one), ``<stream id> <track> <chunk> <position> <samples>``,
appended to ``$FLEET_EVENTS.frames`` with one ``write`` each (no buffer in the process), so a
SIGKILL leaves every line of a frame the handler saw. The recorder gets each frame before the
handler does: a frame in this file must be in the recordings."""

from __future__ import annotations

import os
from pathlib import Path

from mediastream import AudioFrame
from tests.fleet.handlers import EVENTS_ENV, LifecycleLog

SUFFIX = ".frames"


def frames_path(events_path: Path) -> Path:
    return events_path.with_name(events_path.name + SUFFIX)


class FrameLog(LifecycleLog):
    """``LifecycleLog``, plus a line per frame handed to ``on_audio``."""

    _fd = -1

    async def on_audio(self, frame: AudioFrame) -> None:
        if frame.missing:
            return
        if self._fd < 0:
            path = frames_path(Path(os.environ[EVENTS_ENV]))
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        line = (
            f"{self.call.stream_id} {frame.track} {frame.chunk} {frame.position} {len(frame.pcm)}\n"
        )
        os.write(self._fd, line.encode())

    async def on_stop(self) -> None:
        await super().on_stop()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
