"""Record every call to WAV: ``python examples/record_calls.py [--port 8765] [--dir recordings]``.

Then point a Telnyx ``<Stream url="wss://your-host/">`` at it, or try it locally with
``mediastream simulate ws://127.0.0.1:8765/ --track both``.
"""

import argparse
import asyncio
import logging

from mediastream import MediaServer, StreamHandler


def ready(server: MediaServer) -> None:
    """Say where to point the simulator (or Telnyx), as ``mediastream serve`` does."""
    where = f"ws://{server.host}:{server.port}/"
    print(
        f"mediastream: listening on {where} recording to {server.options.record_dir}/", flush=True
    )


parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=8765)
parser.add_argument("--dir", default="recordings", help="one WAV per stream goes here")
args = parser.parse_args()

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
server = MediaServer(StreamHandler, host=args.host, port=args.port, record_dir=args.dir)
asyncio.run(server.serve_forever(on_ready=ready))
