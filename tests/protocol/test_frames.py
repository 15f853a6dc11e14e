"""Every documented frame shape parses; lenient where the carrier drifts; outbound exact."""

from __future__ import annotations

import json

import pytest

from mediastream.errors import ProtocolError
from mediastream.protocol import (
    ConnectedFrame,
    DtmfFrame,
    ErrorFrame,
    MarkFrame,
    MediaFrame,
    OutboundClear,
    OutboundMark,
    OutboundMedia,
    StartFrame,
    StopFrame,
    UnknownFrame,
    encode_outbound,
    parse_frame,
)
from mediastream.protocol.dialects import twilio_outbound

START = {
    "event": "start",
    "sequence_number": "1",
    "stream_id": "32DE0DEA-53CB-4B21-89A4-9E1819C043BC",
    "start": {
        "user_id": "3E6F995F-85F7-4705-9741-53B116D28237",
        "call_control_id": "v2:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ",
        "call_session_id": "ff55a038-6f5d-11ef-9692-02420aeffb1f",
        "from": "+13122010094",
        "to": "+13122123456",
        "tags": ["TAG1", "TAG2"],
        "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d",
        "custom_parameters": {"customer_id": "customer_123"},
        "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
    },
}


def test_connected_without_and_with_token():
    plain = parse_frame('{"event": "connected", "version": "1.0.0"}')
    assert isinstance(plain, ConnectedFrame) and plain.version == "1.0.0"
    assert plain.auth_token is None
    nested = parse_frame(
        json.dumps({"event": "connected", "connected": {"x-telnyx-streaming-auth-token": "t1"}})
    )
    dotted = parse_frame(
        json.dumps({"event": "connected", "connected.x-telnyx-streaming-auth-token": "t2"})
    )
    assert (nested.auth_token, dotted.auth_token) == ("t1", "t2")
    assert "t1" not in repr(nested.model_dump(include={"event", "version"}))


def test_start_every_field():
    frame = parse_frame(json.dumps(START))
    assert isinstance(frame, StartFrame)
    assert frame.sequence_number == 1
    assert frame.stream_id == START["stream_id"]
    info = frame.start
    assert info.user_id == "3E6F995F-85F7-4705-9741-53B116D28237"
    assert info.call_control_id.startswith("v2:")
    assert info.call_session_id == "ff55a038-6f5d-11ef-9692-02420aeffb1f"
    assert (info.from_, info.to) == ("+13122010094", "+13122123456")
    assert info.tags == ["TAG1", "TAG2"]
    assert info.client_state == "aGF2ZSBhIG5pY2UgZGF5ID1d"
    assert info.custom_parameters == {"customer_id": "customer_123"}
    assert (info.media_format.encoding, info.media_format.sample_rate) == ("PCMU", 8000)
    assert info.media_format.channels == 1


@pytest.mark.parametrize(
    ("encoding", "expected"),
    [("audio/x-mulaw", "PCMU"), ("audio/x-alaw", "PCMA"), ("g722", "G722"), ("L16", "L16")],
)
def test_start_encoding_is_normalised(encoding: str, expected: str):
    data = json.loads(json.dumps(START))
    data["start"]["media_format"]["encoding"] = encoding
    assert parse_frame(json.dumps(data)).start.media_format.encoding == expected


def test_start_stream_id_fallback_and_parameter_pairs():
    data = json.loads(json.dumps(START))
    data["start"]["stream_id"] = data.pop("stream_id")
    data["start"]["custom_parameters"] = [{"name": "a", "value": "1"}, {"name": "b", "value": 2}]
    frame = parse_frame(json.dumps(data))
    assert frame.stream_id == START["stream_id"]
    assert frame.start.custom_parameters == {"a": "1", "b": "2"}


def test_start_without_stream_id_is_an_error():
    data = json.loads(json.dumps(START))
    del data["stream_id"]
    with pytest.raises(ProtocolError, match="stream_id"):
        parse_frame(json.dumps(data))


@pytest.mark.parametrize(
    ("counters", "expected"),
    [
        ({"chunk": "2", "timestamp": "5"}, (2, 5)),
        ({"chunk": 2, "timestamp": 5}, (2, 5)),
        ({"chunk": "x", "timestamp": None}, (None, None)),
        ({}, (None, None)),
    ],
)
def test_media_counters_strings_numbers_or_junk(counters: dict, expected: tuple):
    media = {"track": "inbound", "payload": "AAAA", **counters}
    frame = parse_frame(json.dumps({"event": "media", "sequence_number": "4", "media": media}))
    assert isinstance(frame, MediaFrame)
    assert (frame.media.chunk, frame.media.timestamp) == expected
    assert frame.sequence_number == 4
    assert frame.audio_bytes() == b"\x00\x00\x00"


@pytest.mark.parametrize(
    ("track", "expected"),
    [("inbound", "inbound"), ("outbound_track", "outbound"), ("INBOUND_TRACK", "inbound")],
)
def test_media_track_normalised(track: str, expected: str):
    frame = parse_frame(json.dumps({"event": "media", "media": {"track": track, "payload": ""}}))
    assert frame.media.track == expected


def test_media_bad_base64_raises_with_stream_id():
    frame = parse_frame(
        json.dumps({"event": "media", "stream_id": "S1", "media": {"payload": "!!notb64"}})
    )
    with pytest.raises(ProtocolError, match=r"stream S1: .*base64"):
        frame.audio_bytes()


def test_stop_with_and_without_object():
    full = parse_frame(
        json.dumps(
            {
                "event": "stop",
                "sequence_number": "5",
                "stop": {"user_id": "u", "call_control_id": "c"},
                "stream_id": "S",
            }
        )
    )
    bare = parse_frame('{"event": "stop", "stream_id": "S"}')
    assert isinstance(full, StopFrame) and full.stop.call_control_id == "c"
    assert isinstance(bare, StopFrame) and bare.stop is None


def test_dtmf_and_mark():
    dtmf = parse_frame(
        json.dumps(
            {
                "event": "dtmf",
                "stream_id": "S",
                "occurred_at": "2025-06-05T08:54:19.698408Z",
                "sequence_number": "5",
                "dtmf": {"digit": "1"},
            }
        )
    )
    mark = parse_frame(
        '{"event":"mark","stream_id":"S","sequence_number":"5","mark":{"name":"m1"}}'
    )
    assert isinstance(dtmf, DtmfFrame) and dtmf.dtmf.digit == "1"
    assert dtmf.occurred_at == "2025-06-05T08:54:19.698408Z"
    assert isinstance(mark, MarkFrame) and mark.mark.name == "m1"


def test_error_current_and_older_shapes():
    current = parse_frame(
        json.dumps(
            {
                "event": "error",
                "payload": {"code": 100005, "title": "rate_limit_reached", "detail": "Too many"},
                "stream_id": "S",
            }
        )
    )
    older = parse_frame(
        json.dumps(
            {
                "event": "error",
                "sequence_number": "6",
                "error": {"title": "malformed_frame", "code": "100003", "detail": "bad"},
            }
        )
    )
    assert isinstance(current, ErrorFrame) and current.payload.code == 100005
    assert current.payload.title == "rate_limit_reached"
    assert older.payload.code == 100003 and older.payload.title == "malformed_frame"
    assert older.sequence_number == 6
    named = parse_frame('{"event":"error","payload":{"code":"E_X","title":"t"}}')
    assert named.payload.code == "E_X"


def test_unknown_event_is_reported_not_fatal():
    frame = parse_frame('{"event": "transcription", "stream_id": "S", "text": "hi"}')
    assert isinstance(frame, UnknownFrame)
    assert (frame.event, frame.stream_id) == ("transcription", "S")


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"no_event": 1}', '"media"'])
def test_malformed_frames_raise_protocol_error(text: str):
    with pytest.raises(ProtocolError):
        parse_frame(text)


def test_invalid_known_frame_names_the_field_and_stream():
    with pytest.raises(ProtocolError, match=r"stream S9: invalid 'media' frame: media"):
        parse_frame('{"event":"media","stream_id":"S9"}')


def test_media_fast_path_and_general_path_agree():
    text = json.dumps(
        {
            "event": "media",
            "sequence_number": "4",
            "media": {"track": "inbound", "chunk": "2", "timestamp": "5", "payload": "AAAA"},
            "stream_id": "S",
        },
        separators=(",", ":"),
    )
    spaced = json.dumps(json.loads(text))  # '"event": "media"' misses the fast path
    assert parse_frame(text) == parse_frame(spaced)
    assert parse_frame(text.encode()) == parse_frame(spaced)


def test_outbound_frames_are_the_documented_envelopes():
    assert json.loads(encode_outbound(OutboundMedia.from_bytes(b"\x01\x02"))) == {
        "event": "media",
        "media": {"payload": "AQI="},
    }
    assert json.loads(encode_outbound(OutboundMark.named("m"))) == {
        "event": "mark",
        "mark": {"name": "m"},
    }
    assert json.loads(encode_outbound(OutboundClear())) == {"event": "clear"}


def test_twilio_dialect_start_and_outbound():
    twilio = {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": "AC1",
            "streamSid": "MZ1",
            "callSid": "CA1",
            "tracks": ["inbound"],
            "customParameters": {"FirstName": "Jane"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
        "streamSid": "MZ1",
    }
    frame = parse_frame(json.dumps(twilio))
    assert isinstance(frame, StartFrame)
    assert (frame.stream_id, frame.start.call_control_id, frame.start.user_id) == (
        "MZ1",
        "CA1",
        "AC1",
    )
    assert frame.start.media_format.encoding == "PCMU"
    assert frame.start.custom_parameters == {"FirstName": "Jane"}
    out = json.loads(twilio_outbound(encode_outbound(OutboundClear()), "MZ1"))
    assert out == {"event": "clear", "streamSid": "MZ1"}


def test_fast_media_parser_reads_documented_media_frames() -> None:
    """The agreement property (tests/test_fuzz.py) holds for a parser that declines every
    frame; the hot path must actually take the carrier's frames, string or number counters."""
    from mediastream.protocol.frames import MediaFields, parse_media

    media = {"track": "inbound_track", "chunk": "4", "timestamp": "60", "payload": "AAAA"}
    frame = {"event": "media", "sequence_number": "5", "media": media, "stream_id": "s"}
    assert parse_media(json.dumps(frame)) == MediaFields("inbound", 4, "60", "AAAA")
    numbers = {**frame, "sequence_number": 9, "media": {"timestamp": 0, "payload": "AAAA"}}
    assert parse_media(json.dumps(numbers, separators=(",", ":"))) == MediaFields(
        "inbound", 9, 0, "AAAA"
    )
    assert parse_media(json.dumps({"event": "stop", "stream_id": "s"})) is None
