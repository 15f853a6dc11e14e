"""mediastream: receive live phone-call audio over WebSocket, decode it, record it, answer it."""

from __future__ import annotations

from pathlib import Path

from mediastream.errors import MediaStreamError, ProtocolError, UnsupportedCodecError
from mediastream.handler import AudioFrame, Call, StreamHandler, StreamOptions
from mediastream.recording import WavRecorder
from mediastream.server.websocket import DEFAULT_HOST, DEFAULT_PORT, MediaServer, serve_blocking

__version__ = "0.1.0"

__all__ = [
    "AudioFrame",
    "Call",
    "MediaServer",
    "MediaStreamError",
    "ProtocolError",
    "StreamHandler",
    "StreamOptions",
    "UnsupportedCodecError",
    "WavRecorder",
    "serve",
]


def serve(
    handler: type[StreamHandler] = StreamHandler,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    record_dir: str | Path | None = None,
    options: StreamOptions | None = None,
) -> None:
    """Serve ``handler`` (one instance per stream) until SIGINT/SIGTERM."""
    serve_blocking(handler, host=host, port=port, record_dir=record_dir, options=options)
