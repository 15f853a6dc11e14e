"""Echo latency: an inbound frame arrives, the echo bot's outbound frame for it leaves.

    python benchmarks/playback_latency.py [--frames 1000] [--codec PCMU]

A real server on 127.0.0.1 runs ``examples/echo_bot.py``'s EchoBot; one real-time paced call
sends ``--frames`` 20 ms frames. Two figures per frame:
- server: from the server reading the frame off the socket to handing the echoed ``media``
  frame to the socket (timestamps taken inside the server process, same clock);
- round trip: from the client sending the frame to receiving its echo (adds loopback both ways
  and the client's own event loop).
Target: server p99 under 2 ms on an idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.echo_bot import EchoBot
from mediastream import MediaServer, StreamOptions
from mediastream.media.playback import PlaybackConfig
from mediastream.runtime.connection import StreamConnection
from mediastream.simulate import FRAME_MS, plan_call, synthesize_speechlike


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


async def run(frames: int, codec: str) -> dict[str, float]:
    received_at: list[float] = []
    sent_at: list[float] = []
    original_receive = StreamConnection.receive

    async def timed_receive(self: StreamConnection, message: str | bytes) -> bool:
        if isinstance(message, str) and '"media"' in message[:40]:
            received_at.append(time.perf_counter())
        return await original_receive(self, message)

    StreamConnection.receive = timed_receive  # type: ignore[method-assign]
    options = StreamOptions(playback=PlaybackConfig(mode="rtp", codec=codec))
    rate = 16000 if codec == "G722" else 8000
    plan = plan_call(synthesize_speechlike(frames * FRAME_MS / 1000, rate), codec=codec)
    round_trips: list[float] = []
    try:
        async with MediaServer(EchoBot, port=0, options=options) as srv:
            original_send = None

            async with connect(f"ws://127.0.0.1:{srv.port}/", compression=None) as ws:
                while not srv.connections:  # registered once its handshake is through
                    await asyncio.sleep(0.001)
                (connection,) = srv.connections
                server_ws = connection.transport.ws  # type: ignore[attr-defined]
                original_send = server_ws.send

                async def timed_send(message: str, *args: object) -> None:
                    if message.startswith('{"event":"media"'):
                        sent_at.append(time.perf_counter())
                    await original_send(message, *args)

                server_ws.send = timed_send  # type: ignore[method-assign]
                client_sent: list[float] = []
                echoes: list[float] = []

                async def reader() -> None:
                    async for message in ws:
                        if json.loads(message)["event"] == "media":
                            echoes.append(time.perf_counter())

                task = asyncio.create_task(reader())
                await ws.send(json.dumps(plan.start_frame()))
                t0 = time.perf_counter()
                for tick, frame in plan.media_frames():
                    delay = t0 + tick * FRAME_MS / 1000 - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    client_sent.append(time.perf_counter())
                    await ws.send(json.dumps(frame))
                await asyncio.sleep(0.5)
                task.cancel()
                round_trips = [e - s for s, e in zip(client_sent, echoes, strict=False)]
    finally:
        StreamConnection.receive = original_receive  # type: ignore[method-assign]
    server = [s - r for r, s in zip(received_at, sent_at, strict=False)]
    return {
        "frames": len(server),
        "server_p50_ms": percentile(server, 50) * 1000,
        "server_p99_ms": percentile(server, 99) * 1000,
        "server_max_ms": max(server) * 1000,
        "round_trip_p50_ms": percentile(round_trips, 50) * 1000,
        "round_trip_p99_ms": percentile(round_trips, 99) * 1000,
        "round_trip_mean_ms": statistics.fmean(round_trips) * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--codec", default="PCMU")
    args = parser.parse_args()
    result = asyncio.run(run(args.frames, args.codec))
    for key, value in result.items():
        print(f"{key:20} {value:10.3f}")
    verdict = "PASS" if result["server_p99_ms"] < 2.0 else "FAIL"
    print(f"{verdict} server p99 {result['server_p99_ms']:.3f} ms (target < 2 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
