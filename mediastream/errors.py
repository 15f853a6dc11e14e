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


class UsageError(MediaStreamError, ValueError):
    """A command-line value the user can fix: printed as one line, exit status 2, no traceback.

    The CLI's rule: every expected user error (a bad flag, a missing file, a port in use, a bad
    handler) is a ``MediaStreamError``, and ``mediastream.cli.main`` alone prints it.
    """


class InputFileError(MediaStreamError):
    """A file given to a tool is missing, unreadable, or not in the format the tool reads."""


class SocketClosed(MediaStreamError):
    """A send on a stream's socket that is already closed. Transports raise it (not their
    library's own exception) so that playback can tell a hang-up (``normal``: a close code of
    1000 or 1001, the carrier ending the stream) from a failure worth an error line."""

    def __init__(self, message: str, *, normal: bool) -> None:
        super().__init__(message)
        self.normal = normal


def install_hint(extra: str) -> str:
    """How to install an optional extra, for error messages: from a clone (how this project
    is installed, see the README) and from a package index."""
    return f"pip install -e '.[{extra}]' in a clone (else pip install 'mediastream[{extra}]')"
