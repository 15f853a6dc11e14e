"""``mediastream.serve``: its own module so that ``import mediastream`` stays light.

Its default handler (``StreamHandler``) must exist when the function is defined, which would
load the runtime and websockets; the package root imports this module on first use instead.
"""

from __future__ import annotations

from pathlib import Path

from mediastream.config import Config, StreamOptions
from mediastream.runtime.handler import StreamHandler
from mediastream.server.websocket import DEFAULT_HOST, DEFAULT_PORT, serve_blocking


def serve(
    handler: type[StreamHandler] = StreamHandler,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    record_dir: str | Path | None = None,
    options: StreamOptions | None = None,
    transport: str = "websockets",
    instance_id: str | None = None,
) -> None:
    """Serve ``handler`` (one instance per stream) until SIGINT/SIGTERM; ``transport`` is
    ``websockets`` (portable, every route on one port) or ``picows`` (extra ``[picows]``);
    ``instance_id`` names this server in the URLs it hands out (``serve --instance-id``;
    default: ``$MEDIASTREAM_INSTANCE_ID``, else the host name)."""
    config = Config(instance_id=instance_id) if instance_id is not None else None
    serve_blocking(
        handler, host=host, port=port, record_dir=record_dir, options=options,
        transport=transport, config=config,
    )  # fmt: skip
