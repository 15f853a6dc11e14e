"""mediastream: receive live phone-call audio over WebSocket, decode it, record it, answer it."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# public name -> the module that defines it; imported on first access (PEP 562), so that
# ``import mediastream.session`` or ``mediastream.codecs`` does not load the server (websockets,
# prometheus_client) through this package's ``__init__``
_EXPORTS: dict[str, str] = {
    # writing a handler
    "AudioFrame": "mediastream.runtime.handler",
    "Call": "mediastream.runtime.call",
    "StreamHandler": "mediastream.runtime.handler",
    "StreamOptions": "mediastream.config",
    "Playback": "mediastream.media.playback",
    "PlaybackConfig": "mediastream.config",
    "WavRecorder": "mediastream.media.recording",
    # serving it
    "serve": "mediastream._serve",
    "MediaServer": "mediastream.server.websocket",
    "MediaApp": "mediastream.server.asgi",
    # configuring it: one frozen tree
    "Config": "mediastream.config",
    "HttpLimits": "mediastream.config",
    "ServerLimits": "mediastream.config",
    # errors: every MediaStreamError subclass
    "MediaStreamError": "mediastream.errors",
    "CodecError": "mediastream.errors",
    "UnsupportedCodecError": "mediastream.errors",
    "ProtocolError": "mediastream.errors",
    "UsageError": "mediastream.errors",
    "InputFileError": "mediastream.errors",
    "SocketClosed": "mediastream.errors",
    "RecordingError": "mediastream.errors",
    "RecordingLocked": "mediastream.errors",
    "RecordingFinalized": "mediastream.errors",
    "PlaybackError": "mediastream.errors",
    "PlaybackStopped": "mediastream.errors",
    "PlaybackMismatchError": "mediastream.errors",
    "SignatureConfigError": "mediastream.errors",
    "WebhookError": "mediastream.errors",
    "SignatureError": "mediastream.errors",
    "PayloadError": "mediastream.errors",
    "TexmlError": "mediastream.errors",
    "TelnyxApiError": "mediastream.errors",
    "TelnyxNotFoundError": "mediastream.errors",
    "TelnyxRequestError": "mediastream.errors",
}

# the same names: a literal list, so that linters and readers see it (a test keeps them equal)
__all__ = [
    "AudioFrame",
    "Call",
    "CodecError",
    "Config",
    "HttpLimits",
    "InputFileError",
    "MediaApp",
    "MediaServer",
    "MediaStreamError",
    "PayloadError",
    "Playback",
    "PlaybackConfig",
    "PlaybackError",
    "PlaybackMismatchError",
    "PlaybackStopped",
    "ProtocolError",
    "RecordingError",
    "RecordingFinalized",
    "RecordingLocked",
    "ServerLimits",
    "SignatureConfigError",
    "SignatureError",
    "SocketClosed",
    "StreamHandler",
    "StreamOptions",
    "TelnyxApiError",
    "TelnyxNotFoundError",
    "TelnyxRequestError",
    "TexmlError",
    "UnsupportedCodecError",
    "UsageError",
    "WavRecorder",
    "WebhookError",
    "__version__",
    "serve",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time ``__getattr__`` imports
    from mediastream._serve import serve
    from mediastream.config import Config, HttpLimits, PlaybackConfig, ServerLimits, StreamOptions
    from mediastream.errors import (
        CodecError,
        InputFileError,
        MediaStreamError,
        PayloadError,
        PlaybackError,
        PlaybackMismatchError,
        PlaybackStopped,
        ProtocolError,
        RecordingError,
        RecordingFinalized,
        RecordingLocked,
        SignatureConfigError,
        SignatureError,
        SocketClosed,
        TelnyxApiError,
        TelnyxNotFoundError,
        TelnyxRequestError,
        TexmlError,
        UnsupportedCodecError,
        UsageError,
        WebhookError,
    )
    from mediastream.media.playback import Playback
    from mediastream.media.recording import WavRecorder
    from mediastream.runtime.call import Call
    from mediastream.runtime.handler import AudioFrame, StreamHandler
    from mediastream.server.asgi import MediaApp
    from mediastream.server.websocket import MediaServer


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access, then cache the name here."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
