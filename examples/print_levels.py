"""Print each stream's audio level once per second of audio (RMS in dBFS, per track).

``python examples/print_levels.py [--port 8765]``, then ``mediastream simulate ws://127.0.0.1:8765/``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

import numpy as np

from mediastream import AudioFrame, MediaServer, StreamHandler


def dbfs(samples: np.ndarray) -> float:
    """RMS level relative to full scale; -inf for digital silence."""
    if not samples.size:
        return float("-inf")
    rms = np.sqrt(np.mean(np.square(samples, dtype=np.float64)))
    return 20 * np.log10(rms / 32768) if rms > 0 else float("-inf")


class PrintLevels(StreamHandler):
    """Collects one second of audio per track, then prints its level."""

    def __init__(self) -> None:
        self.pending: dict[str, list[np.ndarray]] = {}
        self.seconds: dict[str, int] = {}

    async def on_start(self) -> None:
        fmt = self.call.media_format
        print(
            f"{self.call.stream_id}: start {fmt.encoding} -> {self.call.sample_rate} Hz", flush=True
        )

    async def on_audio(self, frame: AudioFrame) -> None:
        chunks = self.pending.setdefault(frame.track, [])
        chunks.append(frame.pcm)
        if sum(len(c) for c in chunks) >= frame.sample_rate:
            self._report(frame.track, frame.sample_rate)

    def _report(self, track: str, rate: int) -> None:
        audio = np.concatenate(self.pending.pop(track))
        second = self.seconds.get(track, 0)
        self.seconds[track] = second + 1
        level = dbfs(audio[:rate])
        print(f"{self.call.stream_id} {track} second {second}: {level:6.1f} dBFS", flush=True)
        if len(audio) > rate:
            self.pending[track] = [audio[rate:]]

    async def on_stop(self) -> None:
        for track, chunks in list(self.pending.items()):
            if chunks:
                self._report(track, self.call.sample_rate)
        print(f"{self.call.stream_id}: stop", flush=True)


def ready(server: MediaServer) -> None:
    """Say where to point the simulator (or Telnyx), as ``mediastream serve`` does."""
    print(f"mediastream: listening on ws://{server.host}:{server.port}/", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    server = MediaServer(PrintLevels, host=args.host, port=args.port)
    asyncio.run(server.serve_forever(on_ready=ready))
