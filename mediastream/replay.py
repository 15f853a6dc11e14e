"""Replay of capture files: the frames a server once received, sent again with their timing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from mediastream.capture import read_capture


async def replay_capture(
    path: str | Path, url: str, *, fast: bool = False
) -> tuple[int, int | None]:
    """Send one capture file over one socket; returns (frames sent, server close code)."""
    frames = read_capture(path)
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


async def replay_files(
    paths: Sequence[str | Path], url: str, *, fast: bool = False
) -> list[tuple[str, int, int | None]]:
    """Replay several captures one after the other (the sockets of one stream, in order)."""
    results = []
    for path in paths:
        sent, code = await replay_capture(path, url, fast=fast)
        results.append((str(path), sent, code))
    return results
