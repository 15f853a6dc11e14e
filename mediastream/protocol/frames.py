"""Pydantic models of every Telnyx media-streaming frame, both directions, and the parser.

Inbound frames are read leniently (counters as strings or numbers, unknown keys kept, optional
objects optional) because a live call must survive small dialect drift; outbound frames are
written exactly as the carrier documents them (JSON text; Telnyx's carry no stream id, Twilio's
carry ``streamSid``: ``stream_sid`` here, left out when None).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any, Literal, NamedTuple, Required

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from mediastream.codecs import normalize_encoding
from mediastream.errors import ProtocolError
from mediastream.protocol.dialects import Dialect, to_telnyx

AUTH_TOKEN_KEY = "x-telnyx-streaming-auth-token"


# Counters longer than this are not counters (and ``int()`` refuses more than 4300 digits).
_MAX_DIGITS = 30
_MAX_COUNTER = 10**_MAX_DIGITS


def _to_counter(value: Any) -> int | None:
    """Counters arrive as strings ("4") or numbers; anything else becomes None, never an error."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -_MAX_COUNTER < value < _MAX_COUNTER else None
    if isinstance(value, float):
        return _to_counter(int(value)) if value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        if len(text) <= _MAX_DIGITS and text.lstrip("-").isdigit():
            try:
                return int(text)
            except ValueError:  # digits int() refuses, such as "²"
                return None
    return None


def _to_track(value: Any) -> str:
    """``inbound_track`` -> ``inbound``; missing -> ``inbound`` (the default streamed track)."""
    if not value:
        return "inbound"
    text = str(value).strip().lower()
    return text.removesuffix("_track")


def _to_encoding(value: Any) -> str:
    return normalize_encoding(str(value))


def _to_error_code(value: Any) -> int | str | None:
    """Current docs send an integer code, older ones a string: numeric strings become ints."""
    counter = _to_counter(value)
    if counter is not None:
        return counter
    return None if value is None else str(value)


Counter = Annotated[int | None, BeforeValidator(_to_counter)]
Track = Annotated[str, BeforeValidator(_to_track)]
Encoding = Annotated[str, BeforeValidator(_to_encoding)]


class _Frame(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


# ---------------------------------------------------------------- inbound (carrier -> us)


class ConnectedFrame(_Frame):
    event: Literal["connected"] = "connected"
    version: str | None = None
    auth_token: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _find_token(cls, data: Any) -> Any:
        # The token is documented as ``connected.x-telnyx-streaming-auth-token``: accept it
        # nested in a ``connected`` object or as that dotted key at the top level.
        if isinstance(data, dict) and "auth_token" not in data:
            nested = data.get("connected")
            token = nested.get(AUTH_TOKEN_KEY) if isinstance(nested, dict) else None
            token = token or data.get(f"connected.{AUTH_TOKEN_KEY}") or data.get(AUTH_TOKEN_KEY)
            if token is not None:
                data = {**data, "auth_token": str(token)}
        return data


class MediaFormat(_Frame):
    encoding: Encoding = "PCMU"
    sample_rate: int = 8000
    channels: int = 1


class StartInfo(_Frame):
    user_id: str | None = None
    call_control_id: str | None = None
    call_session_id: str | None = None
    from_: str | None = Field(default=None, alias="from")
    to: str | None = None
    tags: list[str] = Field(default_factory=list)
    client_state: str | None = None
    custom_parameters: dict[str, str] = Field(default_factory=dict)
    media_format: MediaFormat = Field(default_factory=MediaFormat)

    @model_validator(mode="before")
    @classmethod
    def _normalise_parameters(cls, data: Any) -> Any:
        # Call Control requests carry parameters as [{name, value}]; accept that shape too.
        if isinstance(data, dict):
            params = data.get("custom_parameters")
            if isinstance(params, list):
                data = {**data, "custom_parameters": _pairs_to_dict(params)}
            elif isinstance(params, dict):
                data = {**data, "custom_parameters": {str(k): str(v) for k, v in params.items()}}
            elif params is None and "custom_parameters" in data:
                data = {**data, "custom_parameters": {}}
        return data


def _pairs_to_dict(pairs: list[Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in pairs:
        if isinstance(item, dict) and "name" in item:
            out[str(item["name"])] = str(item.get("value", ""))
    return out


class StartFrame(_Frame):
    event: Literal["start"] = "start"
    sequence_number: Counter = None
    stream_id: str
    start: StartInfo = Field(default_factory=StartInfo)
    dialect: Dialect = "telnyx"  # set by ``to_telnyx``: outbound frames must answer in kind

    @model_validator(mode="before")
    @classmethod
    def _stream_id_fallback(cls, data: Any) -> Any:
        # Documented at the top level; one fixture in the wild also puts it under ``start``.
        if isinstance(data, dict) and not data.get("stream_id"):
            inner = data.get("start")
            if isinstance(inner, dict) and inner.get("stream_id"):
                data = {**data, "stream_id": inner["stream_id"]}
        return data


class MediaPayload(_Frame):
    track: Track = "inbound"
    chunk: Counter = None
    timestamp: Counter = None
    payload: str


class MediaFrame(_Frame):
    event: Literal["media"] = "media"
    sequence_number: Counter = None
    stream_id: str | None = None
    media: MediaPayload

    def audio_bytes(self) -> bytes:
        """The RTP payload; raises ProtocolError when it is not valid base64."""
        return decode_base64(self.media.payload, stream_id=self.stream_id)


class StopInfo(_Frame):
    user_id: str | None = None
    call_control_id: str | None = None


class StopFrame(_Frame):
    event: Literal["stop"] = "stop"
    sequence_number: Counter = None
    stream_id: str | None = None
    stop: StopInfo | None = None


class DtmfInfo(_Frame):
    digit: str


class DtmfFrame(_Frame):
    event: Literal["dtmf"] = "dtmf"
    sequence_number: Counter = None
    stream_id: str | None = None
    occurred_at: str | None = None
    dtmf: DtmfInfo


class MarkInfo(_Frame):
    name: str


class MarkFrame(_Frame):
    event: Literal["mark"] = "mark"
    sequence_number: Counter = None
    stream_id: str | None = None
    mark: MarkInfo


class ErrorInfo(_Frame):
    code: Annotated[int | str | None, BeforeValidator(_to_error_code)] = None
    title: str | None = None
    detail: str | None = None


class ErrorFrame(_Frame):
    """Carrier error; the current docs use ``payload``, older ones the key ``error``."""

    event: Literal["error"] = "error"
    sequence_number: Counter = None
    stream_id: str | None = None
    payload: ErrorInfo = Field(default_factory=ErrorInfo)

    @model_validator(mode="before")
    @classmethod
    def _older_error_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and "payload" not in data and isinstance(data.get("error"), dict):
            data = {**data, "payload": data["error"]}
        return data


class UnknownFrame(_Frame):
    """An event this library does not know; reported to the application, never fatal."""

    event: str
    stream_id: str | None = None


InboundFrame = (
    ConnectedFrame | StartFrame | MediaFrame | StopFrame | DtmfFrame | MarkFrame | ErrorFrame
)

_INBOUND_MODELS: dict[str, type[_Frame]] = {
    "connected": ConnectedFrame,
    "start": StartFrame,
    "media": MediaFrame,
    "stop": StopFrame,
    "dtmf": DtmfFrame,
    "mark": MarkFrame,
    "error": ErrorFrame,
}


# ---------------------------------------------------------------- outbound (us -> carrier)


class OutboundMediaPayload(BaseModel):
    payload: str


class OutboundMedia(BaseModel):
    event: Literal["media"] = "media"
    stream_sid: str | None = Field(default=None, serialization_alias="streamSid")
    media: OutboundMediaPayload

    @classmethod
    def from_bytes(cls, payload: bytes, stream_sid: str | None = None) -> OutboundMedia:
        encoded = base64.b64encode(payload).decode("ascii")
        return cls(stream_sid=stream_sid, media=OutboundMediaPayload(payload=encoded))


class OutboundMark(BaseModel):
    event: Literal["mark"] = "mark"
    stream_sid: str | None = Field(default=None, serialization_alias="streamSid")
    mark: MarkInfo

    @classmethod
    def named(cls, name: str, stream_sid: str | None = None) -> OutboundMark:
        return cls(stream_sid=stream_sid, mark=MarkInfo(name=name))


class OutboundClear(BaseModel):
    event: Literal["clear"] = "clear"
    stream_sid: str | None = Field(default=None, serialization_alias="streamSid")


OutboundFrame = OutboundMedia | OutboundMark | OutboundClear


def encode_outbound(frame: OutboundFrame) -> str:
    """The JSON text of an outbound frame, exactly the documented envelope (the reference for
    ``dialects.Outbound``, which the per-frame paths use)."""
    return frame.model_dump_json(by_alias=True, exclude_none=True)


# ---------------------------------------------------------------- parsing


def decode_base64(text: str, *, stream_id: str | None = None) -> bytes:
    try:
        # strict: characters outside the alphabet or misplaced padding are errors, not skipped
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        message = f"media payload is not valid base64 ({exc})"
        raise ProtocolError(message, stream_id=stream_id) from exc


def _stream_id_of(data: dict[str, Any]) -> str | None:
    value = data.get("stream_id")
    return str(value) if value is not None else None


def parse_object(data: Any) -> InboundFrame | UnknownFrame:
    """Validate an already-decoded JSON object into its frame model."""
    if not isinstance(data, dict):
        raise ProtocolError(f"frame is a JSON {type(data).__name__}, not an object")
    event = data.get("event")
    stream_id = _stream_id_of(data)
    if not isinstance(event, str):
        raise ProtocolError("frame has no 'event' field", stream_id=stream_id)
    model = _INBOUND_MODELS.get(event)
    if model is None:
        return UnknownFrame.model_validate(data)
    try:
        return model.model_validate(data)  # type: ignore[return-value]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<frame>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ProtocolError(f"invalid {event!r} frame: {problems}", stream_id=stream_id) from exc


# a cheap test before trying the media-only readers; whitespace-tolerant (``"event": "media"``),
# and a non-media frame that passes it is only read the general way after all
_MEDIA_MARKER = '"media"'
_MEDIA_MARKER_BYTES = _MEDIA_MARKER.encode()
_MARKER_WINDOW = 64


# Counters and the track are read by the same functions as the models' validators (``counter``,
# ``_to_track``), so here they are taken as they come.
class _FastMedia(TypedDict, total=False):
    track: Any
    chunk: Any
    timestamp: Any
    payload: Required[StrictStr]


class _FastMediaFrame(TypedDict, total=False):
    event: Required[Literal["media"]]
    sequence_number: Any
    stream_id: StrictStr
    media: Required[_FastMedia]


# Plain dicts straight from the JSON text in pydantic-core: 0.9 µs, against 2.0 µs for
# ``json.loads`` and 4.5 µs for the ``MediaFrame`` model with its lenient (Python) validators.
_FAST_MEDIA = TypeAdapter(_FastMediaFrame).validator  # the core validator: no Python wrapper


class MediaFields(NamedTuple):
    """What the session needs of a ``media`` frame: the track, its ordering key (``chunk``, or
    ``sequence_number`` without one), the raw ``timestamp`` (see ``counter``) and the base64
    payload."""

    track: str
    key: int | None
    timestamp: int | str | None
    payload: str


def counter(value: Any) -> int | None:
    """A counter as the models read it: ints, numeric strings ("4"), else None."""
    if type(value) is int and -_MAX_COUNTER < value < _MAX_COUNTER:
        return value
    if type(value) is str and value.isascii() and value.isdigit() and len(value) <= _MAX_DIGITS:
        return int(value)
    return _to_counter(value)


def parse_media(text: str | bytes) -> MediaFields | None:
    """The hot path: a well-formed ``media`` frame's fields, or None for anything else (other
    events, odd types, invalid JSON), which ``parse_frame`` then reads leniently. Both paths
    give the same values (a property test holds them to it)."""
    marker = _MEDIA_MARKER if isinstance(text, str) else _MEDIA_MARKER_BYTES
    if text.find(marker, 0, _MARKER_WINDOW) < 0:  # type: ignore[arg-type]
        return None
    try:
        frame = _FAST_MEDIA.validate_json(text)
    except ValidationError:
        return None
    media = frame["media"]
    track = media.get("track", "inbound")
    if track != "inbound" and track != "outbound":
        track = _to_track(track)
    chunk = media.get("chunk")
    key = None if chunk is None else counter(chunk)
    if key is None:
        key = counter(frame.get("sequence_number"))
    return MediaFields(track, key, media.get("timestamp"), media["payload"])


def parse_frame(text: str | bytes) -> InboundFrame | UnknownFrame:
    """Parse one text frame; raises ProtocolError (with the stream id when known) if malformed.

    ``media`` frames are nearly all the traffic: they are validated straight from the JSON text
    (one pass in pydantic-core, 3.5 µs against 6 µs through ``json.loads`` and a model), and
    only fall back to the general path when that fails, so errors read the same either way.
    """
    marker = _MEDIA_MARKER if isinstance(text, str) else _MEDIA_MARKER_BYTES
    if marker in text[:_MARKER_WINDOW]:
        try:
            return MediaFrame.model_validate_json(text)
        except ValidationError:
            pass
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"frame is not valid JSON ({exc})") from exc
    except RecursionError:  # "[" * 1500: nested deeper than the interpreter's stack allows
        raise ProtocolError("frame is not valid JSON (nested too deeply)") from None
    return parse_object(to_telnyx(data) if isinstance(data, dict) else data)
