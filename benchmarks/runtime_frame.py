"""Per-frame cost of the runtime alone: ``StreamConnection.receive`` with no socket.

``server_load.py`` measures whole servers, where websockets and the event loop take most of a
frame's budget and the machine's noise swamps a microsecond. This feeds pre-built media frames
of many streams, interleaved as a server sees them, straight into the runtime (session, reorder,
placement, recorder, handler call), so that a change to that path can be compared between two
checkouts in one run: ``PYTHONPATH=<checkout> python benchmarks/runtime_frame.py`` for each.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import gc
import json
import shutil
import tempfile
import time
from pathlib import Path

from mediastream.config import StreamOptions
from mediastream.runtime.connection import StreamConnection
from mediastream.runtime.handler import StreamHandler
from mediastream.runtime.registry import StreamRegistry


class _NoTransport:
    async def send(self, text: str) -> None:
        del text

    async def close(self, code: int = 1000, reason: str = "") -> None:
        del code, reason


def _frames(stream_id: str, count: int) -> list[str]:
    payload = base64.b64encode(bytes(range(160))).decode()
    fmt = {"encoding": "PCMU", "sample_rate": 8000}
    out = [json.dumps({"event": "start", "stream_id": stream_id, "start": {"media_format": fmt}})]
    for chunk in range(1, count + 1):
        media = {
            "track": "inbound",
            "chunk": str(chunk),
            "timestamp": str((chunk - 1) * 20),
            "payload": payload,
        }
        out.append(json.dumps({"event": "media", "stream_id": stream_id, "media": media}))
    return out


# quality reports (``runtime/report.py``) can be turned off since they exist; older checkouts
# have no such setting, and always run without them
HAS_REPORTS = "reports" in {f.name for f in dataclasses.fields(StreamOptions)}


async def _round(streams: int, frames: int, record: bool, reports: bool = HAS_REPORTS) -> float:
    """µs per frame over ``streams`` x ``frames`` media frames."""
    directory = Path(tempfile.mkdtemp())
    try:
        options = StreamOptions(record_dir=directory if record else None)
        if HAS_REPORTS:
            options = dataclasses.replace(options, reports=reports)
        registry = StreamRegistry(StreamHandler, options)
        texts = [_frames(f"s{n}", frames) for n in range(streams)]
        connections = []
        for n in range(streams):
            connection = StreamConnection(registry, _NoTransport())
            await connection.receive(texts[n][0])
            connections.append(connection)
        gc.collect()
        started = time.perf_counter()
        for k in range(1, frames + 1):
            for n, connection in enumerate(connections):
                await connection.receive(texts[n][k])
        elapsed = time.perf_counter() - started
        for connection in connections:
            await connection.finish()
        return elapsed / (streams * frames) * 1e6
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200, help="streams (200)")
    parser.add_argument("--frames", type=int, default=250, help="frames per stream (250)")
    parser.add_argument("--rounds", type=int, default=5, help="best of this many (5)")
    args = parser.parse_args()
    for record in (False, True):
        for reports in (True, False) if HAS_REPORTS else (False,):
            costs = [
                await _round(args.streams, args.frames, record, reports) for _ in range(args.rounds)
            ]
            name = ("record" if record else "no-op ") + (" +reports" if reports else "")
            print(f"{name:16} {min(costs):.2f} µs/frame (best of {args.rounds})")


if __name__ == "__main__":
    asyncio.run(main())
