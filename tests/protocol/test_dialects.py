"""Outbound frames answer in the dialect of their stream: Twilio's carry ``streamSid``, Telnyx's
carry no stream id. Every expectation is the documented JSON, parsed back and compared whole."""

from __future__ import annotations

import base64
import json

import pytest

from mediastream.protocol.dialects import TELNYX_OUTBOUND, Outbound
from mediastream.protocol.frames import (
    OutboundClear,
    OutboundMark,
    OutboundMedia,
    StartFrame,
    encode_outbound,
    parse_frame,
    parse_media,
)
from mediastream.session import Session, Started

SID = "MZ18ad3ab5a668481ce02b83e7395059f0"
PAYLOAD = bytes(range(256)) * 2  # every byte value: base64 with "+", "/" and padding

TWILIO_START = {
    "event": "start",
    "sequenceNumber": "1",
    "start": {
        "accountSid": "AC1",
        "streamSid": SID,
        "callSid": "CA1",
        "tracks": ["inbound"],
        "customParameters": {},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    },
    "streamSid": SID,
}
TELNYX_START = {
    "event": "start",
    "sequence_number": "1",
    "stream_id": "32de0dea-53cb-4b21-89a4-9c5a7b2a9f1c",
    "start": {
        "call_control_id": "v3:abc",
        "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
    },
}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def expected(kind: str, stream_sid: str | None, value: bytes | str = b"") -> dict[str, object]:
    """The documented envelope (protocol.md §1 and §2.3), written out independently."""
    frame: dict[str, object] = {"event": kind}
    if stream_sid is not None:
        frame["streamSid"] = stream_sid
    if kind == "media":
        frame["media"] = {"payload": b64(value)}  # type: ignore[arg-type]
    elif kind == "mark":
        frame["mark"] = {"name": value}
    return frame


def encode(outbound: Outbound, kind: str, value: bytes | str) -> str:
    if kind == "media":
        return outbound.media(value)  # type: ignore[arg-type]
    if kind == "mark":
        return outbound.mark(value)  # type: ignore[arg-type]
    return outbound.clear()


FRAMES = [
    pytest.param("media", PAYLOAD, id="media"),
    pytest.param("media", b"", id="media-empty"),
    pytest.param("mark", "ms-play-1", id="mark"),
    pytest.param("clear", "", id="clear"),
]


@pytest.mark.parametrize(("kind", "value"), FRAMES)
@pytest.mark.parametrize("stream_sid", [None, SID])
def test_outbound_frame_is_the_documented_envelope(kind: str, value, stream_sid: str | None):
    text = encode(Outbound(stream_sid), kind, value)
    assert json.loads(text) == expected(kind, stream_sid, value)


@pytest.mark.parametrize(("kind", "value"), FRAMES)
@pytest.mark.parametrize("stream_sid", [None, SID])
def test_fast_encoder_agrees_with_the_models(kind: str, value, stream_sid: str | None):
    """The models are the reference shape; the precomputed encoder must give the same JSON."""
    if kind == "media":
        model = encode_outbound(OutboundMedia.from_bytes(value, stream_sid))
    elif kind == "mark":
        model = encode_outbound(OutboundMark.named(value, stream_sid))
    else:
        model = encode_outbound(OutboundClear(stream_sid=stream_sid))
    assert json.loads(encode(Outbound(stream_sid), kind, value)) == json.loads(model)


@pytest.mark.parametrize(
    ("stream_sid", "name"), [('MZ"\\x', 'say "hi"\\\n'), ("MZ é", "marque é ☎"), ("MZ", "")]
)
def test_stream_ids_and_mark_names_are_json_escaped(stream_sid: str, name: str):
    outbound = Outbound(stream_sid)
    assert json.loads(outbound.mark(name)) == expected("mark", stream_sid, name)
    assert json.loads(outbound.clear()) == expected("clear", stream_sid)
    assert json.loads(outbound.media(b"\x00")) == expected("media", stream_sid, b"\x00")


def test_start_frame_says_its_dialect():
    twilio = parse_frame(json.dumps(TWILIO_START))
    telnyx = parse_frame(json.dumps(TELNYX_START))
    assert isinstance(twilio, StartFrame) and isinstance(telnyx, StartFrame)
    assert (twilio.dialect, twilio.stream_id) == ("twilio", SID)
    assert telnyx.dialect == "telnyx"
    assert Outbound.for_stream("twilio", SID).stream_sid == SID
    assert Outbound.for_stream("telnyx", telnyx.stream_id).stream_sid is None


def run_session(start: dict[str, object]) -> Session:
    session = Session()
    events = session.receive_text(json.dumps(start))
    assert isinstance(events[0], Started)
    return session


@pytest.mark.parametrize(("kind", "value"), FRAMES)
def test_session_answers_a_twilio_stream_with_its_stream_sid(kind: str, value):
    session = run_session(TWILIO_START)
    text = getattr(session, kind)(*([value] if kind != "clear" else []))
    assert json.loads(text) == expected(kind, SID, value)


@pytest.mark.parametrize(("kind", "value"), FRAMES)
def test_session_answers_a_telnyx_stream_without_a_stream_id(kind: str, value):
    session = run_session(TELNYX_START)
    text = getattr(session, kind)(*([value] if kind != "clear" else []))
    assert json.loads(text) == expected(kind, None, value)


def test_before_start_and_after_a_refused_start_frames_are_telnyx_shaped():
    assert Session().outbound is TELNYX_OUTBOUND
    session = Session()
    second = {**TWILIO_START, "streamSid": "MZother", "start": {**TWILIO_START["start"]}}
    session.receive_text(json.dumps(TELNYX_START))
    session.receive_text(json.dumps(second))  # a second start on the socket is ignored
    assert json.loads(session.clear()) == {"event": "clear"}


def test_twilio_media_frames_still_take_the_fast_path():
    """The dialect is decided at ``start``: Twilio's media frames are not renamed per frame."""
    frame = {
        "event": "media",
        "sequenceNumber": "3",
        "media": {"track": "inbound", "chunk": "2", "timestamp": "5", "payload": "AAAA"},
        "streamSid": SID,
    }
    fields = parse_media(json.dumps(frame))
    assert fields is not None and (fields.track, fields.key, fields.payload) == (
        "inbound",
        2,
        "AAAA",
    )
