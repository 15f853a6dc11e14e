"""IVR: plays a prompt, cuts it when the caller presses a key, answers with that many beeps.

    python examples/ivr.py [--port 8765] [--prompt prompt.wav]
    mediastream simulate ws://127.0.0.1:8765/ --realtime --dtmf 2.5:3 --linger 6 --heard-dir heard

The prompt is any file soundfile reads (a synthesized voice-like clip if none is given).
"""

from __future__ import annotations

import argparse
import asyncio
import logging

import numpy as np

from mediastream import MediaServer, StreamHandler, StreamOptions
from mediastream.media.playback import Playback, PlaybackConfig
from mediastream.simulate import synthesize_speechlike

RATE = 8000


def beeps(count: int, rate: int = RATE) -> np.ndarray:
    """``count`` short 880 Hz beeps: the answer to a digit."""
    t = np.arange(int(0.15 * rate)) / rate
    beep = (8000 * np.sin(2 * np.pi * 880 * t)).astype(np.int16)
    gap = np.zeros(int(0.1 * rate), dtype=np.int16)
    return np.concatenate([np.concatenate([beep, gap]) for _ in range(max(count, 1))])


class Ivr(StreamHandler):
    prompt_path: str | None = None

    async def on_start(self) -> None:
        self.heard_of_prompt_ms: float | None = None
        if self.prompt_path:
            self.prompt: Playback = await self.call.play_file(self.prompt_path)
        else:
            self.prompt = await self.call.play(synthesize_speechlike(10.0, RATE), RATE)

    async def on_dtmf(self, digit: str) -> None:
        if not self.prompt.done:
            await self.call.clear()  # barge-in: stop the prompt where the caller is
            self.heard_of_prompt_ms = self.prompt.heard_ms
            print(
                f"{self.call.stream_id}: prompt cut after {self.prompt.heard_ms:.0f} ms", flush=True
            )
        count = int(digit) if digit.isdigit() else 1
        await self.call.play(beeps(count), RATE)  # queued; never wait here, audio keeps coming
        await self.call.mark(f"answered-{digit}")

    async def on_mark(self, name: str) -> None:
        print(f"{self.call.stream_id}: {name} was heard", flush=True)


def ready(server: MediaServer) -> None:
    """Say where to point the simulator (or Telnyx), as ``mediastream serve`` does."""
    print(f"mediastream: listening on ws://{server.host}:{server.port}/", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--prompt", help="prompt audio file (default: synthesized)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    Ivr.prompt_path = args.prompt
    options = StreamOptions(playback=PlaybackConfig(mode="rtp"))  # bidirectionalMode="rtp"
    server = MediaServer(Ivr, host=args.host, port=args.port, options=options)
    asyncio.run(server.serve_forever(on_ready=ready))
