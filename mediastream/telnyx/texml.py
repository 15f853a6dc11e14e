"""TeXML ``<Stream>``: a typed builder, and the ``mediastream texml`` command.

Telnyx reads the document we hand it and then dials our WebSocket, so a mistake here shows up
only as a silent call. The builder therefore checks every attribute against the options on
the verb page (``../shared/spec/texml-stream-verb.txt``) before any XML is written, and writes
through ``xml.etree`` so an ``&`` in a URL or a ``<"&>`` in a parameter can never break the
document.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from typing import Annotated, Any, ClassVar, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mediastream.errors import TexmlError

XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'

Track = Literal["inbound_track", "outbound_track", "both_tracks"]
Codec = Literal["PCMU", "PCMA", "G722", "OPUS", "AMR-WB", "default"]
BidirectionalMode = Literal["mp3", "rtp"]
BidirectionalCodec = Literal["PCMU", "PCMA", "G722", "OPUS", "AMR-WB"]
SamplingRate = Literal[8000, 16000, 24000]
HttpMethod = Literal["GET", "POST"]
VerbName = Literal["start", "connect", "stop"]


# ------------------------------------------------------------------ shared value checks


def check_websocket_url(value: str) -> str:
    """Telnyx dials this address: it must be an absolute ws:// or wss:// URL with a host."""
    return _check_url(value, ("ws", "wss"))


def check_http_url(value: str) -> str:
    """Telnyx posts callbacks here: it must be an absolute http:// or https:// URL."""
    return _check_url(value, ("http", "https"))


def _check_url(value: str, schemes: tuple[str, ...]) -> str:
    allowed = " or ".join(f"{s}://" for s in schemes)
    if not isinstance(value, str):
        raise ValueError(f"must be a {allowed} URL")
    if value != value.strip() or any(c.isspace() for c in value):
        raise ValueError(f"must be a {allowed} URL without spaces")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise ValueError(f"is not a valid URL: {exc}") from None
    if parts.scheme.lower() not in schemes or not parts.hostname:
        raise ValueError(f"must be an absolute {allowed} URL with a host")
    return value


def _check_xml_text(value: str) -> str:
    """XML 1.0 cannot carry most control characters, escaped or not: refuse them early."""
    for char in value:
        code = ord(char)
        if (code < 0x20 and char not in "\t\n\r") or 0xFFFE <= code <= 0xFFFF:
            raise ValueError(f"contains a character XML cannot carry: {char!r}")
    return value


def _int_from_text(value: Any) -> Any:
    """``"16000"`` (from a flag or a form) means 16000."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value


def _bool_from_text(value: Any) -> Any:
    """Only the spellings the verb page uses: ``true`` and ``false``."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return value


def _parameters_from_mapping(value: Any) -> Any:
    if isinstance(value, dict):
        return [{"name": k, "value": v} for k, v in value.items()]
    return value


# ------------------------------------------------------------------ models


class _Noun(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True
    )
    element: ClassVar[str] = ""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise TexmlError.from_validation(type(self), exc) from None


class Parameter(_Noun):
    """``<Parameter name value>``: arrives in the stream's ``start.custom_parameters``."""

    element: ClassVar[str] = "Parameter"
    name: str = Field(min_length=1)
    value: Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int | float) else v)]

    @field_validator("name", "value")
    @classmethod
    def _text(cls, value: str) -> str:
        return _check_xml_text(value)


class Stream(_Noun):
    """``<Stream>`` with every attribute of the verb page; ``None`` leaves Telnyx's default.

    Python names (``bidirectional_mode``) and the XML names (``bidirectionalMode``) are both
    accepted. Values are case sensitive, as on the verb page.
    """

    element: ClassVar[str] = "Stream"
    url: str | None = None
    track: Track | None = None
    name: str | None = None
    codec: Codec | None = None
    bidirectional_mode: BidirectionalMode | None = Field(None, alias="bidirectionalMode")
    bidirectional_codec: BidirectionalCodec | None = Field(None, alias="bidirectionalCodec")
    bidirectional_sampling_rate: Annotated[SamplingRate | None, BeforeValidator(_int_from_text)] = (
        Field(None, alias="bidirectionalSamplingRate")
    )
    status_callback: str | None = Field(None, alias="statusCallback")
    status_callback_method: HttpMethod | None = Field(None, alias="statusCallbackMethod")
    enable_reconnect: Annotated[bool | None, BeforeValidator(_bool_from_text)] = Field(
        None, alias="enableReconnect", strict=True
    )
    parameters: Annotated[list[Parameter], BeforeValidator(_parameters_from_mapping)] = Field(
        default_factory=list
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _check_xml_text(check_websocket_url(value))

    @field_validator("status_callback")
    @classmethod
    def _callback(cls, value: str | None) -> str | None:
        return None if value is None else _check_xml_text(check_http_url(value))

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else _check_xml_text(value)

    @model_validator(mode="after")
    def _consistent(self) -> Stream:
        if self.bidirectional_mode != "rtp":
            for attr in ("bidirectional_codec", "bidirectional_sampling_rate"):
                if getattr(self, attr) is not None:
                    alias = type(self).model_fields[attr].alias or attr
                    problem = (
                        'is only used with bidirectionalMode="rtp" '
                        "(the default mode, mp3, would play raw codec bytes as MP3)"
                    )
                    raise TexmlError(self.element, [(alias, problem)])
        names = [p.name for p in self.parameters]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise TexmlError(self.element, [("Parameter", f"names must be unique: {duplicates}")])
        return self

    def attributes(self) -> dict[str, str]:
        """The XML attributes, in the verb page's order, as the strings Telnyx reads."""
        out: dict[str, str] = {}
        for field_name, info in type(self).model_fields.items():
            value = getattr(self, field_name)
            if field_name == "parameters" or value is None:
                continue
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            out[info.alias or field_name] = text
        return out

    def to_element(self) -> ET.Element:
        node = ET.Element("Stream", self.attributes())
        for parameter in self.parameters:
            ET.SubElement(node, "Parameter", {"name": parameter.name, "value": parameter.value})
        return node


class Verb(_Noun):
    """``<Start>`` (stream and go on), ``<Connect>`` (stream, then go on) or ``<Stop>``."""

    element: ClassVar[str] = "Verb"
    verb: VerbName = "connect"
    stream: Stream

    @model_validator(mode="after")
    def _needs(self) -> Verb:
        if self.verb == "stop":
            if not self.stream.name:
                problem = "<Stop><Stream> needs the name of the stream to stop"
                raise TexmlError("Stream", [("name", problem)])
        elif not self.stream.url:
            problem = f"<{self.verb.capitalize()}><Stream> needs a ws:// or wss:// URL"
            raise TexmlError("Stream", [("url", problem)])
        return self

    def to_element(self) -> ET.Element:
        node = ET.Element(self.verb.capitalize())
        node.append(self.stream.to_element())
        return node


class Pause(_Noun):
    """``<Pause length>``: keeps a ``<Start>``-ed call up (a document that ends hangs up)."""

    element: ClassVar[str] = "Pause"
    length: int = Field(ge=1, le=86400)

    def to_element(self) -> ET.Element:
        return ET.Element("Pause", {"length": str(self.length)})


def render(*verbs: Verb | Pause) -> str:
    """A whole TeXML document: ``<Response>`` holding ``verbs``, indented like the docs."""
    root = ET.Element("Response")
    for verb in verbs:
        root.append(verb.to_element())
    ET.indent(root, space="  ")
    return XML_DECLARATION + "\n" + ET.tostring(root, encoding="unicode") + "\n"


def stream_texml(stream: Stream, verb: VerbName = "connect", *, pause: int | None = None) -> str:
    """The usual document: one ``<Start|Connect|Stop><Stream>``, optionally then a pause."""
    verbs: list[Verb | Pause] = [Verb(verb=verb, stream=stream)]
    if pause:
        verbs.append(Pause(length=pause))
    return render(*verbs)


# ------------------------------------------------------------------ command line


def _choices(kind: Any) -> list[str]:
    return [str(v) for v in get_args(kind)]


def parse_param(text: str) -> tuple[str, str]:
    """``k=v`` from ``--param`` (the value may itself contain ``=``)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--param must look like name=value, not {text!r}")
    return name, value


def add_stream_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    url_flag: str = "--url",
    url_required: bool = True,
    url_help: str = "WebSocket address Telnyx streams to, ws:// or wss:// (required)",
) -> None:
    """The ``<Stream>`` attributes as flags (shared by ``texml`` and ``serve``)."""
    parser.add_argument(
        url_flag, dest="stream_url", required=url_required, metavar="URL", help=url_help
    )
    parser.add_argument(
        "--track", choices=_choices(Track), help="track(s) to stream (default: inbound_track)"
    )
    parser.add_argument(
        "--name", dest="stream_name", help="name of the stream instance (default: none)"
    )
    parser.add_argument(
        "--codec",
        dest="stream_codec",
        choices=_choices(Codec),
        help="codec of the streamed audio; only PCMU<->PCMA is transcoded (default: the call's)",
    )
    parser.add_argument(
        "--bidirectional-mode",
        choices=_choices(BidirectionalMode),
        help="rtp to play audio back into the call (default: mp3)",
    )
    parser.add_argument(
        "--bidirectional-codec",
        choices=_choices(BidirectionalCodec),
        help="codec of the audio played back with --bidirectional-mode rtp (default: PCMU)",
    )
    parser.add_argument(
        "--bidirectional-sampling-rate",
        type=int,
        choices=list(get_args(SamplingRate)),
        metavar="HZ",
        help="rate of that audio, one of %(choices)s (default: 8000 Hz)",
    )
    parser.add_argument(
        "--status-callback", metavar="URL", help="http(s) URL for status events (default: none)"
    )
    parser.add_argument(
        "--status-callback-method",
        choices=_choices(HttpMethod),
        help="how --status-callback is requested (default: POST)",
    )
    parser.add_argument(
        "--enable-reconnect",
        choices=["true", "false"],
        help="reconnect the WebSocket after a disconnect (default: true)",
    )
    parser.add_argument(
        "--param",
        dest="params",
        action="append",
        type=parse_param,
        default=[],
        metavar="NAME=VALUE",
        help="a <Parameter> child; repeatable; arrives in start.custom_parameters (default: none)",
    )


def stream_from_args(args: argparse.Namespace) -> Stream:
    """The ``Stream`` the flags of ``add_stream_arguments`` describe (raises ``TexmlError``)."""
    return Stream(
        url=args.stream_url,
        track=args.track,
        name=args.stream_name,
        codec=args.stream_codec,
        bidirectional_mode=args.bidirectional_mode,
        bidirectional_codec=args.bidirectional_codec,
        bidirectional_sampling_rate=args.bidirectional_sampling_rate,
        status_callback=args.status_callback,
        status_callback_method=args.status_callback_method,
        enable_reconnect=args.enable_reconnect,
        parameters=[{"name": name, "value": value} for name, value in args.params],
    )


def for_instance(stream: Stream, instance_id: str | None) -> Stream:
    """``stream`` with its ``url`` and ``statusCallback`` under ``/i/<id>/`` (the instance a
    load balancer routes them to, ``mediastream/instance.py``); None: as it is."""
    if instance_id is None:
        return stream
    from mediastream.config import INSTANCE_ID_RULE
    from mediastream.instance import instance_url, is_instance_id

    if not is_instance_id(instance_id):
        raise TexmlError("Stream", [("instance id", f"must be {INSTANCE_ID_RULE}")])
    values = stream.model_dump()
    for name in ("url", "status_callback"):
        if values[name]:
            values[name] = instance_url(values[name], instance_id)
    return Stream(**values)


def cmd_texml(args: argparse.Namespace) -> int:
    """Print the TeXML document for the flags; a bad value is a usage error (exit 2)."""
    try:
        stream = for_instance(stream_from_args(args), getattr(args, "instance_id", None))
        print(stream_texml(stream, args.verb, pause=args.pause), end="")
    except TexmlError as exc:
        print(f"mediastream texml: error: {exc}", file=sys.stderr)
        return 2
    return 0


def add_texml_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mediastream texml`` on the CLI's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "texml",
        help="print the TeXML that points a call's audio at a WebSocket",
        description="Print a TeXML document with <Start>, <Connect> or <Stop> around a "
        "<Stream> built from the flags. Every value is checked against the options Telnyx "
        "documents before anything is printed.",
    )
    parser.add_argument(
        "--verb",
        choices=list(get_args(VerbName)),
        default="connect",
        help="connect keeps the call up while it streams; start streams and goes on "
        "(add --pause, or the call ends with the document); stop ends a named stream "
        "(default: %(default)s)",
    )
    add_stream_arguments(
        parser,
        url_required=False,  # checked by the command: --verb stop needs none
        url_help="WebSocket address Telnyx streams to, ws:// or wss:// (required unless "
        "--verb stop)",
    )
    parser.add_argument(
        "--pause",
        type=int,
        metavar="SECONDS",
        help="append <Pause length=SECONDS> after the verb, to keep a start call up (default: "
        "no pause)",
    )
    parser.add_argument(
        "--instance-id",
        metavar="ID",
        help="put /i/ID before the path of --url and --status-callback: the server (serve "
        "--instance-id ID) a load balancer routes them to (default: the URLs as given)",
    )
    parser.set_defaults(func=cmd_texml)
    return parser
