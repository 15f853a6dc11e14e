"""Capture of a stream's raw inbound frames, with receive times, for replay and debugging.

One JSON object per line: ``{"t": seconds since the socket opened, "text": frame}`` (binary
frames as ``"binary"``, base64). Files are ``DIR/<safe id>.<n>.jsonl``: a new socket or a file
that grew past ``max_bytes`` starts the next ``n``, and a file is never overwritten or truncated.
Lines are buffered and written by a worker thread, like recordings. The streaming auth token,
if a frame carries it, is replaced before anything is written.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from pathlib import Path

from mediastream.recording import safe_stream_name

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 64 << 20
FLUSH_SECONDS = 0.5
REDACTED = "<redacted>"


class CaptureWriter:
    """Buffers one socket's frames until the stream id is known, then appends them to disk."""

    def __init__(self, capture_dir: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES):
        self.dir = Path(capture_dir)
        self.max_bytes = max_bytes
        self.path: Path | None = None
        self._stem: str | None = None
        self._lines: list[str] = []
        self._last_flush = time.monotonic()
        self._writing: asyncio.Future[None] | None = None

    def add(self, t: float, message: str | bytes, *, redact: str | None = None) -> None:
        if isinstance(message, bytes):
            entry = {"t": round(t, 6), "binary": base64.b64encode(message).decode("ascii")}
        else:
            if redact and redact in message:
                message = message.replace(redact, REDACTED)
            entry = {"t": round(t, 6), "text": message}
        self._lines.append(json.dumps(entry, separators=(",", ":")) + "\n")
        now = time.monotonic()
        if self._stem and self._writing is None and now - self._last_flush >= FLUSH_SECONDS:
            self._last_flush = now
            self._writing = asyncio.ensure_future(self._flush_in_thread())

    def name(self, stream_id: str) -> None:
        """The stream id is known: from now on lines go to its file."""
        if self._stem is None:
            self._stem = safe_stream_name(stream_id)

    async def _flush_in_thread(self) -> None:
        try:
            await asyncio.to_thread(self._write, self._take())
        except OSError as exc:
            logger.error("capture %s: write failed: %s", self._stem, exc)
        finally:
            self._writing = None

    def _take(self) -> list[str]:
        lines, self._lines = self._lines, []
        return lines

    def _write(self, lines: list[str]) -> None:
        if not lines:
            return
        if self.path is None or self.path.stat().st_size >= self.max_bytes:
            self.path = self._next_path()
        with open(self.path, "a", encoding="utf-8") as f:
            f.writelines(lines)

    def _next_path(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        stem = self._stem or "unstarted"
        n = 1
        while True:
            path = self.dir / f"{stem}.{n}.jsonl"
            try:
                with open(path, "x", encoding="utf-8"):
                    return path
            except FileExistsError:
                n += 1

    async def close(self) -> None:
        """Write what is left (frames of a socket that never started are kept too)."""
        while self._writing is not None:
            await self._writing
        await asyncio.to_thread(self._write, self._take())


def read_capture(path: str | os.PathLike[str]) -> list[tuple[float, str | bytes]]:
    """The (time, frame) pairs of a capture file, in order."""
    frames: list[tuple[float, str | bytes]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            entry = json.loads(line)
            if "text" in entry:
                frames.append((float(entry["t"]), entry["text"]))
            else:
                frames.append((float(entry["t"]), base64.b64decode(entry["binary"])))
    return frames
