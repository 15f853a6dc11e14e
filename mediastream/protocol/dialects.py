"""Dialect mapping: Twilio Media Streams frames (camelCase) read as Telnyx frames (snake_case).

Telnyx is the reference shape; a Twilio frame is recognised by its ``streamSid`` and renamed
key by key, so one parser and one session serve both carriers. Outbound frames for Twilio
additionally need the ``streamSid`` (``twilio_outbound``).
"""

from __future__ import annotations

import json
from typing import Any

_TOP_LEVEL = {"streamSid": "stream_id", "sequenceNumber": "sequence_number"}
_START = {
    "streamSid": "stream_id",
    "callSid": "call_control_id",
    "accountSid": "user_id",
    "customParameters": "custom_parameters",
    "mediaFormat": "media_format",
}
_MEDIA_FORMAT = {"sampleRate": "sample_rate"}
_STOP = {"callSid": "call_control_id", "accountSid": "user_id"}


def _rename(obj: Any, names: dict[str, str]) -> Any:
    if not isinstance(obj, dict):
        return obj
    return {names.get(key, key): value for key, value in obj.items()}


def is_twilio(data: dict[str, Any]) -> bool:
    return "streamSid" in data or "sequenceNumber" in data


def to_telnyx(data: dict[str, Any]) -> dict[str, Any]:
    """Return ``data`` in the Telnyx shape (unchanged when it already is)."""
    if not is_twilio(data):
        return data
    out = _rename(data, _TOP_LEVEL)
    if isinstance(out.get("start"), dict):
        start = _rename(out["start"], _START)
        start["media_format"] = _rename(start.get("media_format"), _MEDIA_FORMAT)
        if start["media_format"] is None:
            del start["media_format"]
        out["start"] = start
        out.setdefault("stream_id", start.get("stream_id"))
    if isinstance(out.get("stop"), dict):
        out["stop"] = _rename(out["stop"], _STOP)
    return out


def twilio_outbound(frame_json: str, stream_sid: str) -> str:
    """Add the ``streamSid`` Twilio requires on every outbound frame."""
    data = json.loads(frame_json)
    data["streamSid"] = stream_sid
    return json.dumps(data, separators=(",", ":"))
