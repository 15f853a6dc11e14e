"""Replay of capture files: the frames a server once received, sent again with their timing."""

from __future__ import annotations

import asyncio
import binascii
import json
import time
from collections.abc import Sequence
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from mediastream.errors import InputFileError
from mediastream.media.capture import read_capture

Frames = list[tuple[float, str | bytes]]


def load_capture(path: str | Path) -> Frames:
    """The frames of one capture file; a missing or malformed file is an ``InputFileError``.

    Read before any socket opens, so a typo in the last of several files replays nothing
    rather than half a stream.
    """
    if not Path(path).is_file():
        raise InputFileError(f"capture file {str(path)!r} does not exist (or is not a file)")
    try:
        return read_capture(path)
    except OSError as exc:
        raise InputFileError(f"cannot read capture file {str(path)!r}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        # UnicodeDecodeError and json.JSONDecodeError are ValueErrors
        where = f" (line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise InputFileError(
            f"{str(path)!r} is not a capture file (JSON lines written by serve --capture-dir)"
            f"{where}"
        ) from None


async def _send(frames: Frames, url: str, *, fast: bool) -> tuple[int, int | None]:
    sent = 0
    code: int | None = None
    try:
        async with connect(url, compression=None, max_size=None) as ws:
            start = time.monotonic()
            for t, message in frames:
                if not fast:
                    delay = start + t - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await ws.send(message)
                sent += 1
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else None
    return sent, code


async def replay_capture(
    path: str | Path, url: str, *, fast: bool = False
) -> tuple[int, int | None]:
    """Send one capture file over one socket; returns (frames sent, server close code)."""
    return await _send(load_capture(path), url, fast=fast)


async def replay_files(
    paths: Sequence[str | Path], url: str, *, fast: bool = False
) -> list[tuple[str, int, int | None]]:
    """Replay several captures one after the other (the sockets of one stream, in order)."""
    captures = [(str(path), load_capture(path)) for path in paths]
    results = []
    for path, frames in captures:
        sent, code = await _send(frames, url, fast=fast)
        results.append((path, sent, code))
    return results
