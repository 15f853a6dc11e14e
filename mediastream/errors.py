"""The exception hierarchy: every error raised on purpose derives from MediaStreamError."""

from __future__ import annotations


class MediaStreamError(Exception):
    """Base class of all mediastream errors."""


class CodecError(MediaStreamError):
    """A payload could not be encoded or decoded."""


class UnsupportedCodecError(CodecError, ValueError):
    """The encoding name is unknown, or needs an optional extra that is not installed."""


class ProtocolError(MediaStreamError, ValueError):
    """A frame is not valid JSON, or not a valid frame of the protocol."""

    def __init__(self, message: str, *, stream_id: str | None = None) -> None:
        self.stream_id = stream_id
        prefix = f"stream {stream_id}: " if stream_id else ""
        super().__init__(prefix + message)


class SessionError(MediaStreamError):
    """A frame is valid on its own but not in the stream's current state."""

    def __init__(self, message: str, *, stream_id: str | None = None) -> None:
        self.stream_id = stream_id
        prefix = f"stream {stream_id}: " if stream_id else ""
        super().__init__(prefix + message)
