"""What one ``GET /streams`` page costs the event loop: ``StreamRegistry.live_snapshots`` for
a page of 50 and of 100 among 1,000 live two-track PCMU streams, each holding half a level
window of frames its quality report has not counted yet (a snapshot counts them first).

    python benchmarks/live_page.py [--streams 1000] [--rounds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import time

from mediastream.config import StreamOptions
from mediastream.runtime.connection import StreamConnection
from mediastream.runtime.handler import StreamHandler
from mediastream.runtime.registry import StreamRegistry

TRACKS = ("inbound", "outbound")


class _NoTransport:
    async def send(self, text: str) -> None:
        del text

    async def close(self, code: int = 1000, reason: str = "") -> None:
        del code, reason


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    registry = StreamRegistry(StreamHandler, StreamOptions())
    payload = base64.b64encode(bytes(range(160))).decode()
    fmt = {"encoding": "PCMU", "sample_rate": 8000}
    connections = []
    for n in range(args.streams):
        connection = StreamConnection(registry, _NoTransport())
        start = {"media_format": fmt, "tracks": list(TRACKS)}
        await connection.receive(
            json.dumps({"event": "start", "stream_id": f"s{n}", "start": start})
        )
        connections.append(connection)

    async def feed(first: int, last: int) -> None:
        for chunk in range(first, last):
            for connection in connections:
                for track in TRACKS:
                    media = {"track": track, "chunk": str(chunk), "payload": payload,
                             "timestamp": str((chunk - 1) * 20)}  # fmt: skip
                    frame = {"event": "media", "stream_id": connection.session.stream_id}
                    connection.session.now = time.monotonic()
                    await connection.receive(json.dumps({**frame, "media": media}))

    chunk = 1
    costs: dict[int, list[float]] = {50: [], 100: []}
    for _ in range(args.rounds):
        await feed(chunk, chunk + 12)
        chunk += 12
        registry.level_pool.tick()  # what the core's ticker does once a window
        for stream in registry:
            assert stream.figures is not None
            stream.figures.tick()
        await feed(chunk, chunk + 12)  # half a window not counted yet
        chunk += 12
        for size in costs:
            started = time.perf_counter()
            page = registry.live_snapshots(0, size)
            costs[size].append((time.perf_counter() - started) * 1e3)
            assert len(page) == size and page[0]["levels"]["inbound"] is not None
    for size, values in costs.items():
        print(f"page of {size:3d} of {args.streams} streams: {statistics.median(values):.2f} ms"
              f" (median of {len(values)})")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
