"""An async client for the Telnyx calls that start and stop media streams.

Two surfaces do the same job: TeXML REST (``/texml/Accounts/{account}/Calls/{call}/Streams.json``,
form-encoded, PascalCase fields, bare JSON response) and Call Control
(``/calls/{id}/actions/streaming_start``, JSON, snake_case, ``{"data": ...}`` response). Their
enums differ (see protocol notes, Q9), so each has its own request model checked before
sending. The HTTP library is ``httpx`` (the ``telnyx`` extra), imported when a client is made:
one ``AsyncClient`` per ``TelnyxClient`` keeps TLS connections alive across requests.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from mediastream.config import default_instance_id
from mediastream.errors import (
    MediaStreamError,
    TelnyxApiError,
    TelnyxNotFoundError,
    TelnyxRequestError,
    install_hint,
)
from mediastream.telnyx.texml import (
    HttpMethod,
    Track,
    check_http_url,
    check_websocket_url,
)

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.telnyx.com/v2"
DEFAULT_TIMEOUT = 10.0

TexmlBidirectionalCodec = Literal["PCMU", "PCMA", "G722"]
CallControlCodec = Literal["PCMU", "PCMA", "G722", "OPUS", "AMR-WB", "L16", "default"]
CallControlBidirectionalCodec = Literal["PCMU", "PCMA", "G722", "OPUS", "AMR-WB", "L16"]
CallControlSamplingRate = Literal[8000, 16000, 22050, 24000, 48000]
TargetLegs = Literal["both", "self", "opposite"]
_M = TypeVar("_M", bound=BaseModel)


def _int_from_text(value: Any) -> Any:
    return int(value) if isinstance(value, str) and value.strip().isdigit() else value


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: "
                f"{e['msg'].removeprefix('Value error, ')} (got {e['input']!r})"
                for e in exc.errors(include_url=False)
            )
            raise TelnyxRequestError(f"invalid {type(self).__name__}: {problems}") from None


# ------------------------------------------------------------------ TeXML REST


class TexmlStreamRequest(_Request):
    """Form fields of ``POST .../Calls/{call_sid}/Streams.json`` (the OpenAPI document's)."""

    url: str
    track: Track | None = None
    name: str | None = None
    bidirectional_mode: Literal["mp3", "rtp"] | None = None
    bidirectional_codec: TexmlBidirectionalCodec | None = None
    status_callback: str | None = None
    status_callback_method: HttpMethod | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_websocket_url(value)

    @field_validator("status_callback")
    @classmethod
    def _callback(cls, value: str | None) -> str | None:
        return None if value is None else check_http_url(value)

    def form(self) -> dict[str, str]:
        """The set fields under their API names (``BidirectionalMode`` ...)."""
        names = {
            "url": "Url",
            "track": "Track",
            "name": "Name",
            "bidirectional_mode": "BidirectionalMode",
            "bidirectional_codec": "BidirectionalCodec",
            "status_callback": "StatusCallback",
            "status_callback_method": "StatusCallbackMethod",
        }
        return {api: str(v) for f, api in names.items() if (v := getattr(self, f)) is not None}


class TexmlStream(BaseModel):
    """The stream resource Telnyx returns (``status`` is ``in-progress`` when started)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    account_sid: str | None = None
    call_sid: str | None = None
    sid: str | None = None
    name: str | None = None
    status: str | None = None
    date_updated: str | None = None
    uri: str | None = None


# ------------------------------------------------------------------ Call Control


class CustomParameter(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    value: str


class DialogflowConfig(BaseModel):
    model_config = ConfigDict(frozen=True)
    analyze_sentiment: bool | None = None
    partial_automated_agent_reply: bool | None = None


def _pairs(value: Any) -> Any:
    if isinstance(value, dict):
        return [{"name": str(k), "value": str(v)} for k, v in value.items()]
    return value


class StreamingStartRequest(_Request):
    """JSON body of ``POST /calls/{call_control_id}/actions/streaming_start``."""

    stream_url: str
    stream_track: Track | None = None
    stream_codec: CallControlCodec | None = None
    stream_bidirectional_mode: Literal["mp3", "rtp"] | None = None
    stream_bidirectional_codec: CallControlBidirectionalCodec | None = None
    stream_bidirectional_sampling_rate: Annotated[
        CallControlSamplingRate | None, BeforeValidator(_int_from_text)
    ] = None
    stream_bidirectional_target_legs: TargetLegs | None = None
    stream_auth_token: str | None = Field(None, max_length=4000)
    custom_parameters: Annotated[list[CustomParameter] | None, BeforeValidator(_pairs)] = None
    enable_dialogflow: bool | None = None
    dialogflow_config: DialogflowConfig | None = None
    client_state: str | None = None
    command_id: str | None = None

    @field_validator("stream_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_websocket_url(value)

    def body(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def streaming_start_url(public_url: str, instance_id: str | None = None) -> str:
    """The ``stream_url`` for ``streaming_start``: ``public_url`` (the load balancer's
    ``wss://`` address of the media servers) naming the instance that is to take the call,
    ``/i/<id>/`` before its path, so that its reconnects come back to it.

    ``instance_id`` defaults to this process's (``$MEDIASTREAM_INSTANCE_ID``, else the host
    name: what ``serve`` uses without ``--instance-id``), for a handler or webhook app that
    runs beside the server that is to take the stream.
    """
    from mediastream.instance import instance_url, is_instance_id

    check_websocket_url(public_url)
    instance_id = default_instance_id() if instance_id is None else instance_id
    if not is_instance_id(instance_id):
        raise TelnyxRequestError(f"not an instance id: {instance_id!r}")
    return instance_url(public_url, instance_id)


class StreamingStopRequest(_Request):
    """JSON body of ``streaming_stop``: without ``stream_id`` every stream of the call stops."""

    stream_id: str | None = None
    client_state: str | None = None
    command_id: str | None = None

    def body(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class CommandResult(BaseModel):
    """``{"data": {"result": "ok"}}``: Telnyx accepted the command (it runs asynchronously)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    result: str


# ------------------------------------------------------------------ the client


def _segment(value: str) -> str:
    """One path segment: ids like ``v3:...`` keep their ``:``; a ``/`` cannot escape it."""
    if not value:
        raise TelnyxRequestError("an id in the request path is empty")
    return quote(value, safe=":")


class TelnyxClient:
    """Start and stop Telnyx media streams. Use ``async with``, or call ``aclose()``.

    ``base_url`` points elsewhere for tests or a proxy; ``http`` lets you share your own
    ``httpx.AsyncClient`` (then its lifetime is yours, and ``base_url``/``timeout`` are ignored
    except for the Authorization header, which is added per request).
    """

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = DEFAULT_TIMEOUT,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        try:
            import httpx
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise MediaStreamError(
                f"the Telnyx REST client needs httpx: {install_hint('telnyx')}"
            ) from exc
        if not api_key:
            raise TelnyxRequestError("an API key is required")
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self._base = base_url.rstrip("/")
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(
            timeout=timeout, headers={"Accept": "application/json"}
        )

    def __repr__(self) -> str:  # never show the key
        return f"TelnyxClient(base_url={self._base!r})"

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> TelnyxClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -------------------------------------------------------------- TeXML REST

    async def start_stream(
        self,
        account_sid: str,
        call_sid: str,
        request: TexmlStreamRequest | None = None,
        **fields: Any,
    ) -> TexmlStream:
        """Start streaming a TeXML call: ``start_stream(acct, call, url="wss://...", ...)``."""
        request = request or TexmlStreamRequest(**fields)
        path = f"/texml/Accounts/{_segment(account_sid)}/Calls/{_segment(call_sid)}/Streams.json"
        document = await self._send("POST", path, form=request.form())
        return _parse(TexmlStream, document, "POST", path)

    async def stop_stream(self, account_sid: str, call_sid: str, stream_sid: str) -> TexmlStream:
        """Stop one TeXML stream (``Status=stopped`` on ``Streams/{sid}.json``)."""
        path = (
            f"/texml/Accounts/{_segment(account_sid)}/Calls/{_segment(call_sid)}"
            f"/Streams/{_segment(stream_sid)}.json"
        )
        document = await self._send("POST", path, form={"Status": "stopped"})
        return _parse(TexmlStream, document, "POST", path)

    # -------------------------------------------------------------- Call Control

    async def streaming_start(
        self, call_control_id: str, request: StreamingStartRequest | None = None, **fields: Any
    ) -> CommandResult:
        """Start streaming a Call Control call: ``streaming_start(id, stream_url="wss://...")``."""
        request = request or StreamingStartRequest(**fields)
        path = f"/calls/{_segment(call_control_id)}/actions/streaming_start"
        document = await self._send("POST", path, json=request.body())
        return _parse(CommandResult, document.get("data"), "POST", path)

    async def streaming_stop(
        self, call_control_id: str, request: StreamingStopRequest | None = None, **fields: Any
    ) -> CommandResult:
        """Stop one stream (``stream_id=``) or, without it, every stream of the call."""
        request = request or StreamingStopRequest(**fields)
        path = f"/calls/{_segment(call_control_id)}/actions/streaming_stop"
        document = await self._send("POST", path, json=request.body())
        return _parse(CommandResult, document.get("data"), "POST", path)

    # -------------------------------------------------------------- transport

    async def _send(
        self,
        method: str,
        path: str,
        *,
        form: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        response = await self._http.request(
            method, self._base + path, data=form, json=json, headers=self._auth
        )
        try:
            document = response.json()
        except ValueError:
            document = None
        if response.is_success and isinstance(document, dict):
            logger.debug("%s %s: HTTP %d", method, path, response.status_code)
            return document
        errors = document.get("errors") if isinstance(document, dict) else None
        errors = [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
        error_type = TelnyxNotFoundError if response.status_code == 404 else TelnyxApiError
        if response.is_success:  # 2xx without a JSON object: not what the API documents
            errors = [{"detail": "response is not a JSON object"}]
        raise error_type(method, path, response.status_code, errors, response.text)


def _parse(model: type[_M], document: Any, method: str, path: str) -> _M:
    """A 2xx body that does not match the documented shape is an API error, not a crash."""
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        detail = f"unexpected response shape for {model.__name__}: {exc.errors()[0]['msg']}"
        raise TelnyxApiError(method, path, 200, [{"detail": detail}]) from None
