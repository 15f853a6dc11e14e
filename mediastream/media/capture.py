"""Capture of a socket's raw inbound frames, with receive times, for ``mediastream replay``.

One JSON object per line: ``{"t": seconds since the socket opened, "text": frame}`` (binary
frames as ``"binary"``, base64). Lines wait in memory until the stream id is known (``name``),
then go to ``DIR/<safe id>.<n>.jsonl`` (``safe_stream_name``; a socket that never started writes
``unstarted.<n>.jsonl`` when it closes). Each socket, and each file grown past ``max_bytes``,
takes the next free ``n``, claimed with ``open(path, "x")``: a file is never overwritten or
truncated. Every ``FLUSH_SECONDS`` the lines go to disk in a worker thread
(``asyncio.to_thread``), one write at a time: unlike a recording block (one ``pwrite`` into an
open file, done on the loop), a flush may stat, create and open the file.

The streaming auth token never reaches the file in any spelling: verbatim occurrences are
replaced, and so is every JSON string literal that *decodes* to something holding the token
(``"\\u0073ecret"`` is the token to any JSON reader, though the text does not contain it).
Only a frame with a backslash can spell the token that way, and media frames have none (base64
and digits), so the hot path pays two substring scans; the literal is rewritten in place and
the rest of the frame is kept byte for byte, so replays stay faithful. A frame that spells the
token in escapes outside any string literal (not JSON) is replaced whole by ``UNREDACTABLE``.
Binary frames have only their verbatim occurrences replaced.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import time
from pathlib import Path

from mediastream.media.recording import safe_stream_name

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 64 << 20
FLUSH_SECONDS = 0.5
REDACTED = "<redacted>"
# a JSON string literal (with its quotes); matched only in frames that hold a backslash
_STRING_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"')
# one JSON escape, for the check that ignores where literals start and end
_ESCAPE = re.compile(r'\\(u[0-9A-Fa-f]{4}|["\\/bfnrt])')
_SIMPLE_ESCAPES = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}
UNREDACTABLE = f'"{REDACTED}: this frame spelled the auth token in escapes outside JSON strings"'


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
            if redact and redact.encode() in message:
                message = message.replace(redact.encode(), REDACTED.encode())
            entry = {"t": round(t, 6), "binary": base64.b64encode(message).decode("ascii")}
        else:
            if redact:
                message = redact_text(message, redact)
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


def redact_text(text: str, secret: str) -> str:
    """``text`` with ``secret`` replaced, whether written verbatim or through JSON escapes."""
    if secret in text:
        text = text.replace(secret, REDACTED)
    if "\\" not in text:  # no escape, so no other spelling: every media frame stops here
        return text
    text = _STRING_LITERAL.sub(lambda m: _redact_literal(m[0], secret), text)
    if secret in _unescape(text):  # not JSON, its quotes misaligned: the frame cannot be kept
        return UNREDACTABLE
    return text


def _redact_literal(literal: str, secret: str) -> str:
    if "\\" not in literal:
        return literal
    try:
        value = json.loads(literal)
    except ValueError:  # not a JSON string: no JSON reader decodes it to the secret
        return literal
    if not isinstance(value, str) or secret not in value:
        return literal
    return json.dumps(value.replace(secret, REDACTED))


def _unescape(text: str) -> str:
    """Every JSON escape in ``text`` decoded, wherever it stands (surrogate pairs joined)."""

    def one(match: re.Match[str]) -> str:
        code = match[1]
        return chr(int(code[1:], 16)) if code[0] == "u" else _SIMPLE_ESCAPES[code]

    decoded = _ESCAPE.sub(one, text)
    return decoded.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


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
