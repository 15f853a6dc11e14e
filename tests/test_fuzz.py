"""Property tests: random, mutated, reordered and truncated frames never break the session.

Default profile: a few hundred examples per property. The long profile (at least 10,000
examples) runs outside the default suite:
    HYPOTHESIS_PROFILE=long python -m pytest tests/test_fuzz.py
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mediastream.errors import ProtocolError
from mediastream.protocol import parse_frame
from mediastream.session import Audio, Session

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

settings.register_profile("default", max_examples=300, deadline=None)
settings.register_profile(
    "long", max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

FRAME = 160


def start_text() -> str:
    fmt = {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}
    return json.dumps({"event": "start", "stream_id": "fuzz", "start": {"media_format": fmt}})


def media_text(chunk: int, payload: bytes) -> str:
    media = {
        "track": "inbound",
        "chunk": str(chunk),
        "timestamp": str((chunk - 1) * 20),
        "payload": base64.b64encode(payload).decode(),
    }
    return json.dumps({"event": "media", "sequence_number": str(chunk + 1), "media": media})


junk_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


@st.composite
def noisy_call(draw: st.DrawFn) -> tuple[list[bytes], list[str]]:
    """A call's frames in any order, with duplicates, junk and truncated copies mixed in."""
    n = draw(st.integers(1, 40))
    payloads = [draw(st.binary(min_size=FRAME, max_size=FRAME)) for _ in range(n)]
    frames = [media_text(c, p) for c, p in enumerate(payloads, start=1)]
    order = draw(st.permutations(frames))
    noise = draw(
        st.lists(
            st.one_of(
                st.sampled_from(frames),  # a duplicate
                st.sampled_from(frames).flatmap(
                    lambda f: st.integers(0, len(f) - 1).map(lambda k: f[:k])  # truncated
                ),
                st.text(max_size=60),  # not JSON at all
                junk_json.map(json.dumps),  # JSON, but no frame
                st.just('{"event":"media","media":{"track":"inbound","chunk":"1","payload":"@@"}}'),
                st.just('{"event":"mystery","stream_id":"fuzz"}'),
            ),
            max_size=15,
        )
    )
    stream = list(order)
    for item in noise:
        stream.insert(draw(st.integers(0, len(stream))), item)
    early = draw(st.integers(0, min(3, len(stream))))  # some media may come before start
    return payloads, [*stream[:early], start_text(), *stream[early:]]


@given(noisy_call(), st.integers(0, 10))
@settings(suppress_health_check=[HealthCheck.too_slow])
@pytest.mark.slow
def test_any_order_and_noise_give_the_in_order_audio(
    call: tuple[list[bytes], list[str]], depth: int
):
    payloads, texts = call
    session = Session(reorder_depth=depth)
    events = []
    for text in texts:
        events += session.receive_text(text)
    events += session.close()
    timeline = np.zeros(len(payloads) * FRAME, dtype=np.int16)
    covered = np.zeros(len(payloads) * FRAME, dtype=bool)
    for event in events:
        if isinstance(event, Audio) and len(event.pcm):
            end = event.position + len(event.pcm)
            assert event.position >= 0 and end <= len(timeline)
            if not event.missing:
                timeline[event.position : end] = event.pcm
                covered[event.position : end] = True
    expected = np.frombuffer(audioop.ulaw2lin(b"".join(payloads), 2), dtype=np.int16)
    assert covered.all(), "a valid frame's audio was lost"
    np.testing.assert_array_equal(timeline, expected)


@given(st.one_of(st.text(max_size=200), st.binary(max_size=200), junk_json.map(json.dumps)))
@pytest.mark.slow
def test_parser_raises_only_protocol_errors(text: str | bytes):
    with contextlib.suppress(ProtocolError):
        parse_frame(text)


@given(st.sampled_from([start_text(), media_text(3, bytes(160)), '{"event":"stop"}']), st.data())
def test_truncated_frames_are_errors_never_crashes(frame: str, data: st.DataObject):
    cut = data.draw(st.integers(0, len(frame) - 1))
    session = Session()
    session.receive_text(start_text())
    events = session.receive_text(frame[:cut])
    assert len(events) == 1 and events[0].kind in ("malformed_json", "invalid_frame")


counter_values = (
    st.none()
    | st.booleans()
    | st.integers(-5, 10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(-5, 10**6).map(str)
    | st.sampled_from(["4.0", "+4", "4_0", " 4 ", "04", "", "abc", "١٢", "²"])
)
track_values = st.sampled_from(
    ["inbound", "outbound", "inbound_track", "OUTBOUND", "", None, 3, "both"]
)


@given(
    chunk=counter_values,
    sequence=counter_values,
    timestamp=counter_values,
    track=track_values,
    payload=st.sampled_from(["AAAA", "//79", "not base64!", "", 7]),
    omit=st.sets(st.sampled_from(["chunk", "sequence_number", "timestamp", "track"])),
    stream_id=st.sampled_from(["s1", None, 5]),
)
def test_fast_media_parser_agrees_with_the_models(
    chunk, sequence, timestamp, track, payload, omit, stream_id
) -> None:
    """``parse_media`` (the hot path) either declines a frame or reads it exactly as
    ``parse_frame`` does: same track, ordering key, timestamp and payload."""
    from mediastream.protocol.frames import MediaFrame, counter, parse_media

    media = {"track": track, "chunk": chunk, "timestamp": timestamp, "payload": payload}
    frame = {"event": "media", "sequence_number": sequence, "media": media}
    if stream_id is not None:
        frame["stream_id"] = stream_id
    for key in omit:
        (frame if key == "sequence_number" else media).pop(key)
    text = json.dumps(frame, separators=(",", ":"))
    fast = parse_media(text)
    try:
        model = parse_frame(text)
    except ProtocolError:
        assert fast is None
        return
    if fast is None:
        return
    assert isinstance(model, MediaFrame)
    expected_key = model.media.chunk if model.media.chunk is not None else model.sequence_number
    assert fast.track == model.media.track
    assert fast.key == expected_key
    assert counter(fast.timestamp) == model.media.timestamp
    assert fast.payload == model.media.payload
