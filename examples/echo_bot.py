"""Echo bot: plays the caller's speech straight back to them (bidirectional RTP streaming).

    python examples/echo_bot.py [--port 8765] [--codec PCMU]
    mediastream simulate ws://127.0.0.1:8765/ --realtime --playback-codec PCMU --heard-dir heard

``--realtime`` matters: the echo is paced in real time, so a call sent as fast as possible
ends before most of it is heard (0.98 s of a 3 s echo). The same bot under ``serve``, with
the TeXML and the playback set by one flag: ``mediastream serve --handler
examples/echo_bot.py:EchoBot --bidirectional-mode rtp --bidirectional-codec PCMU``.
Point a Telnyx ``<Connect><Stream bidirectionalMode="rtp" bidirectionalCodec="PCMU">`` at it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from mediastream import AudioFrame, MediaServer, StreamHandler, StreamOptions
from mediastream.media.playback import PlaybackConfig


class EchoBot(StreamHandler):
    """Every inbound frame goes back out as it came (encoded in the playback codec)."""

    async def on_audio(self, frame: AudioFrame) -> None:
        if frame.track == "inbound":
            await self.call.play(frame.pcm, frame.sample_rate)


def ready(server: MediaServer) -> None:
    """Say where to point the simulator (or Telnyx), as ``mediastream serve`` does."""
    print(f"mediastream: listening on ws://{server.host}:{server.port}/", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--codec", default="PCMU", help="bidirectionalCodec (%(default)s)")
    parser.add_argument("--rate", type=int, default=8000, help="bidirectionalSamplingRate")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    playback = PlaybackConfig(mode="rtp", codec=args.codec, sample_rate=args.rate)
    server = MediaServer(
        EchoBot, host=args.host, port=args.port, options=StreamOptions(playback=playback)
    )
    asyncio.run(server.serve_forever(on_ready=ready))
