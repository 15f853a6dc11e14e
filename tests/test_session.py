"""The session state machine, driven with no socket at all."""

from __future__ import annotations

import base64
import itertools
import json
import warnings
from array import array

import numpy as np
import pytest

from mediastream.session import Audio, Connected, Dtmf, Error, MarkEcho, Session, Started, Stopped

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

RNG = np.random.default_rng(11)
PAYLOADS = [bytes(RNG.integers(0, 256, 160, dtype=np.uint8)) for _ in range(30)]


def start(encoding: str = "PCMU", rate: int = 8000, stream_id: str = "S1") -> str:
    fmt = {"encoding": encoding, "sample_rate": rate, "channels": 1}
    return json.dumps({"event": "start", "stream_id": stream_id, "start": {"media_format": fmt}})


def media(chunk: int, payload: bytes, track: str = "inbound", timestamp: int | None = None) -> str:
    body = {
        "track": track,
        "chunk": str(chunk),
        "timestamp": str((chunk - 1) * 20 if timestamp is None else timestamp),
        "payload": base64.b64encode(payload).decode(),
    }
    return json.dumps({"event": "media", "stream_id": "S1", "media": body})


def run(session: Session, frames: list[str]) -> list:
    events = []
    for text in frames:
        events += session.receive_text(text)
    return events


def audio_of(events: list, track: str = "inbound") -> np.ndarray:
    pieces = [e for e in events if isinstance(e, Audio) and e.track == track]
    positions = [e.position for e in pieces]
    assert positions == sorted(positions)
    for a, b in itertools.pairwise(pieces):
        assert a.position + len(a.pcm) == b.position  # contiguous timeline
    return np.concatenate([e.pcm for e in pieces])


def ulaw(payloads: list[bytes]) -> np.ndarray:
    return np.frombuffer(audioop.ulaw2lin(b"".join(payloads), 2), dtype=np.int16)


def test_full_call_in_order():
    s = Session()
    frames = ['{"event":"connected","version":"1.0.0"}', start()]
    frames += [media(i + 1, p) for i, p in enumerate(PAYLOADS)]
    frames += ['{"event":"stop","stream_id":"S1"}']
    events = run(s, frames)
    assert isinstance(events[0], Connected) and isinstance(events[1], Started)
    assert events[1].sample_rate == 8000 and s.stream_id == "S1"
    np.testing.assert_array_equal(audio_of(events), ulaw(PAYLOADS))
    assert isinstance(events[-1], Stopped) and events[-1].reason == "stop"


def test_reordered_call_gives_identical_audio():
    order = list(range(1, 31))
    for begin in range(0, 30, 5):
        order[begin : begin + 5] = order[begin : begin + 5][::-1]
    s = Session()
    events = run(s, [start()] + [media(c, PAYLOADS[c - 1]) for c in order]) + s.close()
    np.testing.assert_array_equal(audio_of(events), ulaw(PAYLOADS))


def test_lost_frames_become_silence_of_their_length():
    lost = {5, 6, 17}
    s = Session()
    frames = [start()] + [media(c, PAYLOADS[c - 1]) for c in range(1, 31) if c not in lost]
    events = run(s, frames) + s.close()
    expected = ulaw(PAYLOADS).reshape(30, 160).copy()
    expected[[c - 1 for c in lost]] = 0
    np.testing.assert_array_equal(audio_of(events), expected.ravel())
    missing = [e.chunk for e in events if isinstance(e, Audio) and e.missing]
    assert missing == sorted(lost)


def test_duplicates_are_dropped():
    s = Session()
    frames = [start()]
    for c in range(1, 11):
        frames += [media(c, PAYLOADS[c - 1])] * 2
    events = run(s, frames) + s.close()
    np.testing.assert_array_equal(audio_of(events), ulaw(PAYLOADS[:10]))
    assert s.reorder_stats()["inbound"].duplicates == 10


def test_two_tracks_are_separate_and_aligned_by_timestamp():
    s = Session()
    frames = [start()]
    for c in range(1, 11):
        frames.append(media(c, PAYLOADS[c - 1], "inbound"))
        if c > 3:  # outbound starts 60 ms later, with its own chunk counter from 1
            frames.append(media(c - 3, PAYLOADS[c + 9], "outbound_track", timestamp=(c - 1) * 20))
    events = run(s, frames) + s.close()
    out = [e for e in events if isinstance(e, Audio) and e.track == "outbound"]
    assert out[0].position == 3 * 160
    np.testing.assert_array_equal(audio_of(events, "outbound"), ulaw(PAYLOADS[13:20]))
    np.testing.assert_array_equal(audio_of(events, "inbound"), ulaw(PAYLOADS[:10]))


def test_media_before_start_is_held_and_decoded_after_start():
    s = Session()
    events = run(s, [media(1, PAYLOADS[0]), media(2, PAYLOADS[1]), start()])
    errors = [e for e in events if isinstance(e, Error)]
    assert [e.kind for e in errors] == ["media_before_start"]  # reported once
    events += run(s, [media(3, PAYLOADS[2])]) + s.close()
    np.testing.assert_array_equal(audio_of(events), ulaw(PAYLOADS[:3]))


def test_bad_input_is_reported_and_audio_around_it_kept():
    s = Session()
    frames = [start(), media(1, PAYLOADS[0]), "{nope", media(2, PAYLOADS[1])]
    bad = json.loads(media(3, PAYLOADS[2]))
    bad["media"]["payload"] = "***"
    frames += [json.dumps(bad), '{"event":"surprise"}', media(4, PAYLOADS[3])]
    events = run(s, frames) + s.close()
    kinds = [e.kind for e in events if isinstance(e, Error)]
    assert kinds == ["malformed_json", "invalid_base64", "unknown_event"]
    expected = ulaw(PAYLOADS[:4]).copy()
    expected[320:480] = 0  # the undecodable frame is a gap of its length
    np.testing.assert_array_equal(audio_of(events), expected)


def test_unsupported_codec_is_fatal_and_names_it():
    s = Session()
    (event,) = s.receive_text(start("SPEEX"))
    assert isinstance(event, Error) and event.fatal and "SPEEX" in event.message


def test_dtmf_mark_and_carrier_error_events():
    s = Session()
    run(s, [start()])
    events = run(
        s,
        [
            '{"event":"dtmf","dtmf":{"digit":"7"},"occurred_at":"2025-06-05T08:54:19Z"}',
            '{"event":"mark","mark":{"name":"m1"}}',
            '{"event":"error","payload":{"code":100005,"title":"rate_limit_reached"}}',
        ],
    )
    assert events[0] == Dtmf("7", "2025-06-05T08:54:19Z")
    assert events[1] == MarkEcho("m1")
    assert events[2].source == "carrier" and events[2].code == 100005


def test_close_without_stop_flushes_held_frames():
    s = Session()
    events = run(s, [start(), media(1, PAYLOADS[0]), media(3, PAYLOADS[2])])
    assert len([e for e in events if isinstance(e, Audio)]) == 1  # 3 is held, waiting for 2
    closing = s.close()
    assert [type(e) for e in closing] == [Audio, Audio, Stopped]
    assert closing[0].missing and closing[-1].reason == "closed"


@pytest.mark.parametrize(("encoding", "rate"), [("L16", 16000), ("L16", 8000)])
def test_l16_uses_the_stated_rate(encoding: str, rate: int):
    s = Session()
    pcm = np.arange(-160, 160, dtype=np.int16)
    events = run(s, [start(encoding, rate), media(1, pcm.astype(">i2").tobytes())])
    assert events[0].sample_rate == rate
    np.testing.assert_array_equal(events[1].pcm, pcm)


def test_outbound_frames():
    s = Session()
    assert json.loads(s.media(b"\xff")) == {"event": "media", "media": {"payload": "/w=="}}
    assert json.loads(s.mark("x")) == {"event": "mark", "mark": {"name": "x"}}
    assert json.loads(s.clear()) == {"event": "clear"}


def test_late_frames_come_back_marked_with_their_slot_position():
    s = Session(reorder_depth=2)
    order = [3, 4, 5, 1, 7, 8, 9, 6, 10, 2]  # 1, 2 and 6 arrive after their slots were given up
    events = run(s, [start()] + [media(c, PAYLOADS[c - 1]) for c in order]) + s.close()
    timeline = np.zeros(10 * 160, dtype=np.int16)
    for e in events:
        if isinstance(e, Audio):
            timeline[e.position : e.position + len(e.pcm)] = e.pcm  # what a recording does
    np.testing.assert_array_equal(timeline, ulaw(PAYLOADS[:10]))
    late = sorted(e.chunk for e in events if isinstance(e, Audio) and e.late)
    assert late == [1, 2, 6]


def test_undecodable_frame_is_silence_and_keeps_the_timeline():
    s = Session()
    pcm = np.arange(320, dtype=np.int16)
    frames = [start("L16", 16000), media(1, pcm.tobytes()), media(2, b"\x00\x01\x02")]
    frames.append(media(3, pcm.tobytes()))
    events = run(s, frames)
    audio = [e for e in events if isinstance(e, Audio)]
    assert [(e.position, e.missing) for e in audio] == [(0, False), (320, True), (640, False)]
    assert any(isinstance(e, Error) and e.kind == "decode_error" for e in events)


def test_media_on_an_unknown_track_is_refused_not_mixed_into_a_real_one():
    session = Session()
    session.receive_text(start())
    payload = base64.b64encode(bytes(160)).decode()
    for track in ("foo", "both", "INBOUND "):
        frame = {"event": "media", "media": {"track": track, "chunk": "1", "payload": payload}}
        events = session.receive_text(json.dumps(frame))
        if track.strip().lower() == "inbound":
            assert [type(e) for e in events] == [Audio]
        else:
            assert [(e.kind, type(e)) for e in events] == [("unknown_track", Error)]
    assert list(session.reorder_stats()) == ["inbound"]  # no track made for the bad names


def test_arrivals_are_timed_per_track_whatever_becomes_of_the_frame():
    s = Session()
    run(s, [start(), media(1, PAYLOADS[0])])  # not timed: nobody asked
    s.transits = {"inbound": array("d"), "outbound": array("d")}
    arrivals = [
        (media(2, PAYLOADS[1]), 10.000),
        (media(2, PAYLOADS[1]), 10.005),  # a duplicate: timed all the same
        (media(4, PAYLOADS[3]), 10.061),  # held for the missing chunk 3
        (media(1, PAYLOADS[0], track="outbound"), 10.002),
        (media(3, PAYLOADS[2], track="caller"), 10.003),  # a refused track: not timed
        (media(3, PAYLOADS[2]).replace(base64.b64encode(PAYLOADS[2]).decode(), "@@"), 10.04),
    ]
    for text, now in arrivals:
        s.now = now
        s.receive_text(text)
    # the last one, undecodable base64, is timed too: its arrival was real
    assert list(s.transits["inbound"]) == pytest.approx(
        [10.000 - 0.040, 10.005 - 0.040, 10.061 - 0.080, 10.04 - 0.060]
    )
    assert list(s.transits["outbound"]) == pytest.approx([10.002 - 0.020])
