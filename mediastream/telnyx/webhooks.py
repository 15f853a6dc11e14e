"""Telnyx stream status callbacks: verify the Ed25519 signature, parse the event.

Telnyx signs ``"{telnyx-timestamp}|{raw body}"`` with the account's Ed25519 key and sends the
signature (base64) and timestamp (Unix seconds) in ``telnyx-signature-ed25519`` and
``telnyx-timestamp`` (no ``x-`` prefix). Verification must use the exact raw bytes, so this
module takes ``bytes`` and never re-serialises. The crypto library (``cryptography``, from the
``telnyx`` extra) is imported only when a verifier is built.

Status events come in three shapes that carry the same facts: the TeXML callback, form-encoded
(POST) or in the query string (GET), with PascalCase fields; the same fields as JSON (the verb
page's examples); and the Call Control webhook envelope (``data.event_type`` =
``streaming.started`` ...). All become one ``StreamStatusEvent``.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict

from mediastream.errors import PayloadError, SignatureError, WebhookError, install_hint

SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
TOLERANCE_SECONDS = 300

StatusKind = Literal["started", "stopped", "failed", "other"]

_KINDS: dict[str, StatusKind] = {
    "stream-started": "started",
    "stream-stopped": "stopped",
    "stream-error": "failed",  # the callback API reference
    "stream-failed": "failed",  # the verb page
    "streaming.started": "started",  # Call Control
    "streaming.stopped": "stopped",
    "streaming.failed": "failed",
}


# ------------------------------------------------------------------ signatures


def _lower_keys(headers: Mapping[str, str]) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in headers.items()}


class SignatureVerifier:
    """Checks Telnyx webhook signatures against one account public key.

    ``public_key`` is what the portal shows (base64 of the 32 raw bytes), or the raw bytes.
    Building the verifier loads the key, so a wrong key or a missing crypto library fails at
    startup, not on the first call.
    """

    def __init__(self, public_key: str | bytes, *, tolerance: float = TOLERANCE_SECONDS) -> None:
        try:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise WebhookError(
                "verifying Telnyx signatures needs the 'cryptography' package: "
                + install_hint("telnyx")
            ) from exc
        raw = public_key if isinstance(public_key, bytes) else _b64(public_key, "public key")
        if len(raw) != 32:
            raise WebhookError(f"a Telnyx public key is 32 bytes (base64), not {len(raw)} bytes")
        self._key = Ed25519PublicKey.from_public_bytes(raw)
        self.tolerance = tolerance

    def verify(self, body: bytes, headers: Mapping[str, str], *, now: float | None = None) -> None:
        """Raise ``SignatureError`` unless ``body`` was signed by the key within the tolerance."""
        from cryptography.exceptions import InvalidSignature

        lowered = _lower_keys(headers)
        signature_text = lowered.get(SIGNATURE_HEADER)
        timestamp = lowered.get(TIMESTAMP_HEADER)
        missing = [
            h
            for h, v in ((SIGNATURE_HEADER, signature_text), (TIMESTAMP_HEADER, timestamp))
            if not v
        ]
        if missing or signature_text is None or timestamp is None:
            raise SignatureError(f"missing header(s): {', '.join(missing)}")
        if not timestamp.strip().isdigit():
            raise SignatureError(f"{TIMESTAMP_HEADER} is not Unix seconds: {timestamp[:40]!r}")
        age = (time.time() if now is None else now) - int(timestamp)
        if abs(age) > self.tolerance:
            raise SignatureError(
                f"{TIMESTAMP_HEADER} is {abs(age):.0f} s {'old' if age > 0 else 'ahead'} "
                f"(tolerance {self.tolerance:.0f} s)"
            )
        try:
            signature = _b64(signature_text, SIGNATURE_HEADER)
        except WebhookError as exc:
            raise SignatureError(str(exc)) from None
        if len(signature) != 64:
            raise SignatureError(f"{SIGNATURE_HEADER} is {len(signature)} bytes, not 64")
        try:
            self._key.verify(signature, timestamp.encode() + b"|" + body)
        except InvalidSignature:
            raise SignatureError("signature does not match the body and timestamp") from None


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookError(f"{what} is not valid base64") from None


# ------------------------------------------------------------------ events


class StreamStatusEvent(BaseModel):
    """One stream status callback, whatever shape it came in.

    ``kind`` is the normalised event (``stream-error``, ``stream-failed`` and
    ``streaming.failed`` are all ``failed``); ``event`` keeps the name as sent.
    """

    model_config = ConfigDict(frozen=True)

    kind: StatusKind
    event: str
    stream_sid: str | None = None
    call_sid: str | None = None
    account_sid: str | None = None
    stream_name: str | None = None
    timestamp: str | None = None
    error: str | None = None
    client_state: str | None = None
    raw: dict[str, Any] = {}

    @property
    def ids(self) -> tuple[str | None, str | None]:
        """(stream id, call id): what the server uses to find the live stream."""
        return self.stream_sid, self.call_sid


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _from_fields(fields: Mapping[str, Any]) -> StreamStatusEvent:
    event = _text(fields.get("StreamEvent"))
    if event is None:
        raise PayloadError("no StreamEvent field: not a stream status callback")
    return StreamStatusEvent(
        kind=_KINDS.get(event, "other"),
        event=event,
        stream_sid=_text(fields.get("StreamSid")),
        call_sid=_text(fields.get("CallSid")),
        account_sid=_text(fields.get("AccountSid")),
        stream_name=_text(fields.get("StreamName")),
        timestamp=_text(fields.get("Timestamp")),
        error=_text(fields.get("StreamError")),
        raw=dict(fields),
    )


def _from_call_control(envelope: Mapping[str, Any]) -> StreamStatusEvent:
    data = envelope["data"]
    payload = data.get("payload") or {}
    if not isinstance(payload, dict):
        raise PayloadError("data.payload is not an object")
    event = str(data["event_type"])
    return StreamStatusEvent(
        kind=_KINDS.get(event, "other"),
        event=event,
        stream_sid=_text(payload.get("stream_id")),
        call_sid=_text(payload.get("call_control_id")),
        stream_name=None,
        timestamp=_text(data.get("occurred_at")),
        error=_text(payload.get("failure_reason")),
        client_state=_text(payload.get("client_state")),
        raw=dict(envelope),
    )


def parse_status_callback(
    body: bytes = b"", *, content_type: str | None = None, query: str = ""
) -> StreamStatusEvent:
    """Read a status callback from a POST body (form or JSON) or, if the body is empty, a query.

    Raises ``PayloadError`` when neither holds a stream status event.
    """
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    text = body.decode("utf-8", errors="replace").strip()
    if not text:
        if not query:
            raise PayloadError("empty callback: no body and no query string")
        return _from_fields(dict(parse_qsl(query, keep_blank_values=True)))
    if mime == "application/json" or mime.endswith("+json") or text[0] in "{[":
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PayloadError(f"body is not valid JSON: {exc}") from None
        if not isinstance(document, dict):
            raise PayloadError("JSON body is not an object")
        data = document.get("data")
        if isinstance(data, dict) and "event_type" in data:
            return _from_call_control(document)
        return _from_fields(document)
    return _from_fields(dict(parse_qsl(text, keep_blank_values=True)))
