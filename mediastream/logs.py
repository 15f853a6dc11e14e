"""Logging helpers: keep secrets (the streaming auth token) out of every log record."""

from __future__ import annotations

import logging
import re

from mediastream.protocol.frames import AUTH_TOKEN_KEY

REDACTED = "<redacted>"
# websockets logs handshake headers at debug level: "> x-telnyx-streaming-auth-token: VALUE"
_HEADER_LINE = re.compile(rf"({re.escape(AUTH_TOKEN_KEY)}[\"']?\s*[:=]\s*[\"']?)[^\s\"',}}]+", re.I)


def redact_secrets(text: str, secret: str | None = None) -> str:
    """``text`` with auth-token header values (and ``secret`` itself) replaced."""
    redacted = _HEADER_LINE.sub(rf"\g<1>{REDACTED}", text)
    return redacted.replace(secret, REDACTED) if secret else redacted


class RedactSecrets(logging.Filter):
    """Rewrites a record whose text holds the auth token (a known value, or any header value).

    A logger's filters see only records created on that logger, not those propagated from its
    children, so attach it to each logger that may log headers (``websockets.server``...).
    """

    def __init__(self, secret: str | None = None) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_secrets(message, self.secret)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def redacting_logger(name: str, secret: str | None = None) -> logging.Logger:
    """A logger (for websockets' ``logger=`` option) whose records never carry the token."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactSecrets) and f.secret == secret for f in logger.filters):
        logger.addFilter(RedactSecrets(secret))
    return logger


_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\\]")


def escape(text: object) -> str:
    """``text`` safe for one log line: control characters, line separators and backslashes
    become escapes (``\\n``, ``\\x00``...), so a carrier-supplied id can never forge a line."""
    value = str(text)
    if _UNSAFE.search(value) is None:  # the usual id: nothing to do
        return value
    return _UNSAFE.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), value)


# websockets logs "server listening", "connection open", "connection closed" at INFO for every
# socket (picows and uvicorn, under ``serve --transport picows``, the like): at our default
# level they would double every call's lines (we log its start and end)
QUIET_BELOW_WARNING = ("websockets.", "picows.", "uvicorn.")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class QuietLibraries(logging.Filter):
    """Drops the INFO chatter of ``QUIET_BELOW_WARNING`` loggers; their warnings still pass.

    A filter on our console handler, not a level on their loggers: other handlers (pytest's
    ``caplog``, an application's own) still see every record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(QUIET_BELOW_WARNING)


def configure_logging(level: str | int = "info", fmt: str = LOG_FORMAT) -> None:
    """Log to stderr at ``level``: at ``info``, one line per stream start and end, and warnings.

    Below ``debug``, websockets' own INFO lines are left out (``QuietLibraries``); ``debug``
    shows everything (handshakes, per-socket lines). Like ``logging.basicConfig``, does nothing
    if the root logger has handlers already. For any entry point that owns the process's
    logging: the CLI, or a script that runs uvicorn.
    """
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(fmt))
    if numeric > logging.DEBUG:
        handler.addFilter(QuietLibraries())
    logging.basicConfig(level=numeric, handlers=[handler])
