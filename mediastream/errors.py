"""The exception hierarchy: every error raised on purpose derives from MediaStreamError.

Every exception of the package is defined here, or re-exported from here, so that one import
gives a caller all of them. The module stays light (no websockets, pydantic or numpy at import
time): anything may import it, the sans-I/O layers included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError


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


class UsageExit(SystemExit):
    """An expected user error: exit status 2; ``str()`` is the message (already printed)."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


# ------------------------------------------------------------------ media


class RecordingError(MediaStreamError):
    """A recording file could not be opened or written."""


class RecordingLocked(RecordingError):
    """Another open file (another worker process, usually) is writing this recording."""


class RecordingFinalized(RecordingError):
    """The recording was closed normally (it is read-only): its session is over."""


class PlaybackError(MediaStreamError):
    """Audio could not be sent (the socket stopped draining, or the stream ended)."""


class PlaybackStopped(PlaybackError):
    """The socket closed under a playback: the caller hung up, or the carrier ended the
    stream. Not a failure: pending playbacks report False (as when the stream ends), and it is
    logged at DEBUG (a normal close) or INFO (an abrupt one), never as an error."""

    def __init__(self, message: str, *, normal: bool) -> None:
        super().__init__(message)
        self.normal = normal


class PlaybackMismatchError(MediaStreamError):
    """The server plays back in another mode than the far end was told to expect.

    A real carrier would play it as noise (or not at all) and say nothing; the simulator says
    what it got and what it expected, in one line, instead of failing in a decoder.
    """


# ------------------------------------------------------------------ HTTP and Telnyx


class SignatureConfigError(MediaStreamError, ValueError):
    """Signatures are required, but no key to verify them with was given."""


class WebhookError(MediaStreamError):
    """A webhook request could not be accepted."""


class SignatureError(WebhookError):
    """The request is not signed by the configured key, or the signature is too old."""


class PayloadError(WebhookError, ValueError):
    """The body is not a stream status callback we can read."""


class TexmlError(MediaStreamError, ValueError):
    """A TeXML value is not one Telnyx accepts; ``attributes`` names the offending ones."""

    def __init__(self, element: str, problems: list[tuple[str, str]]) -> None:
        self.element = element
        self.problems = problems
        self.attributes = [name for name, _ in problems]
        text = "; ".join(f"{name}: {problem}" for name, problem in problems)
        super().__init__(f"invalid <{element}>: {text}")

    @property
    def attribute(self) -> str | None:
        return self.attributes[0] if self.attributes else None

    @classmethod
    def from_validation(cls, model: type[BaseModel], exc: ValidationError) -> TexmlError:
        """Name each problem by its XML attribute (``bidirectionalMode``), never a Python name."""
        element = getattr(model, "element", model.__name__)
        aliases = {name: info.alias or name for name, info in model.model_fields.items()}
        problems: list[tuple[str, str]] = []
        for error in exc.errors(include_url=False):
            loc = [aliases.get(str(part), str(part)) for part in error["loc"]]
            inner = (error.get("ctx") or {}).get("error")
            if isinstance(inner, TexmlError):  # raised by a nested model or a model check
                problems += [(".".join([*loc, name]), text) for name, text in inner.problems]
                continue
            got = "" if error["type"] == "missing" else f" (got {error['input']!r})"
            message = error["msg"].removeprefix("Value error, ")
            problems.append((".".join(loc) or element, message + got))
        return cls(element, problems)


class TelnyxApiError(MediaStreamError):
    """Telnyx answered with an error; ``detail`` is the first error's ``detail``."""

    def __init__(
        self, method: str, path: str, status: int, errors: list[dict[str, Any]], text: str = ""
    ) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.errors = errors
        first = errors[0] if errors else {}
        self.detail: str | None = _str_or_none(first.get("detail")) or _str_or_none(
            first.get("title")
        )
        self.code: str | None = _str_or_none(first.get("code"))
        reason = self.detail or text[:200] or "no detail"
        code = f" [{self.code}]" if self.code else ""
        super().__init__(f"{method} {path}: HTTP {status}{code}: {reason}")


class TelnyxNotFoundError(TelnyxApiError):
    """404: the account, call or stream does not exist (or the call has ended)."""


class TelnyxRequestError(MediaStreamError, ValueError):
    """A request value is not one the API accepts; nothing was sent."""


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


# Defined beside the runtime code that raises them (which imports heavy modules): re-exported
# here, and imported on first access (PEP 562)
_LAZY: dict[str, str] = {
    "JournalUnsupported": "mediastream.media.recording.journal",
    "LifecycleError": "mediastream.runtime.lifecycle",
    "StreamRefused": "mediastream.runtime.registry",
    "UploadReadError": "mediastream.storage.uploader",
    "UploadVerifyError": "mediastream.storage.uploader",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def install_hint(extra: str) -> str:
    """How to install an optional extra, for error messages: from a clone (how this project
    is installed, see the README) and from a package index."""
    return f"pip install -e '.[{extra}]' in a clone (else pip install 'mediastream[{extra}]')"
