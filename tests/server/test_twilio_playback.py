"""Playback through a real server answers each stream in its own dialect.

A Twilio far end drops outbound frames without the ``streamSid`` of its stream, so on a call
that arrived in Twilio's shape every ``media``, ``mark`` and ``clear`` must carry it; the same
handler on a Telnyx call sends them with no stream id. The client plays the far end: it sends
the call, echoes marks in its own dialect, and decodes what it is sent with an independent
G.711 decoder (audioop), which must give exactly the samples the handler played.
"""

from __future__ import annotations

import asyncio
import base64
import json
import warnings
from typing import ClassVar

import numpy as np
import pytest
from websockets.asyncio.client import connect

from mediastream import AudioFrame, MediaServer, StreamHandler, StreamOptions, codecs
from mediastream.media.playback import PlaybackConfig
from mediastream.simulate import encode_frames, synthesize_speechlike
from tests.conftest import ws_url

pytestmark = pytest.mark.both_transports

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

SID = "MZ5b1f4a3e9c7d2b8a6f0e1d2c3b4a5968"
TELNYX_ID = "5b1f4a3e-9c7d-2b8a-6f0e-1d2c3b4a5968"
FRAMES = 25  # 0.5 s of 20 ms PCMU frames
DONE = "echoed-all"


class EchoMarkClear(StreamHandler):
    """Echoes the caller; on DTMF queues a mark; when that mark returns, clears."""

    played: ClassVar[list[np.ndarray]] = []
    stream_ids: ClassVar[list[str]] = []

    async def on_start(self) -> None:
        type(self).stream_ids.append(self.call.stream_id)

    async def on_audio(self, frame: AudioFrame) -> None:
        if frame.track == "inbound":
            type(self).played.append(frame.pcm.copy())
            await self.call.play(frame.pcm, frame.sample_rate)

    async def on_dtmf(self, digit: str) -> None:
        await self.call.mark(DONE)  # after every echo queued so far

    async def on_mark(self, name: str) -> None:
        if name == DONE:
            await self.call.clear()


@pytest.fixture(autouse=True)
def _reset() -> None:
    EchoMarkClear.played, EchoMarkClear.stream_ids = [], []


class Twilio:
    """Twilio Media Streams frames (protocol.md §2.2), camelCase, ``streamSid`` everywhere."""

    stream_id = SID
    outbound_id: ClassVar[dict[str, str]] = {"streamSid": SID}

    def __init__(self) -> None:
        self.sequence = 0

    def _next(self) -> str:
        self.sequence += 1
        return str(self.sequence)

    def connected(self) -> dict[str, object]:
        return {"event": "connected", "protocol": "Call", "version": "1.0.0"}

    def start(self) -> dict[str, object]:
        return {
            "event": "start",
            "sequenceNumber": self._next(),
            "start": {
                "accountSid": "AC0123456789abcdef0123456789abcdef",
                "streamSid": SID,
                "callSid": "CA0123456789abcdef0123456789abcdef",
                "tracks": ["inbound"],
                "customParameters": {},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
            "streamSid": SID,
        }

    def media(self, chunk: int, payload: bytes) -> dict[str, object]:
        media = {
            "track": "inbound",
            "chunk": str(chunk),
            "timestamp": str((chunk - 1) * 20),
            "payload": base64.b64encode(payload).decode("ascii"),
        }
        return {"event": "media", "sequenceNumber": self._next(), "media": media, **self.ids()}

    def dtmf(self, digit: str) -> dict[str, object]:
        body = {"track": "inbound_track", "digit": digit}
        return {"event": "dtmf", **self.ids(), "sequenceNumber": self._next(), "dtmf": body}

    def mark(self, name: str) -> dict[str, object]:
        return {
            "event": "mark",
            "sequenceNumber": self._next(),
            **self.ids(),
            "mark": {"name": name},
        }

    def stop(self) -> dict[str, object]:
        stop = {"accountSid": "AC0123456789abcdef0123456789abcdef", "callSid": "CA01"}
        return {"event": "stop", "sequenceNumber": self._next(), "stop": stop, **self.ids()}

    def ids(self) -> dict[str, str]:
        return {"streamSid": SID}


class Telnyx(Twilio):
    """The same call in Telnyx's frames (protocol.md §1): snake_case, ``stream_id`` inbound."""

    stream_id = TELNYX_ID
    outbound_id: ClassVar[dict[str, str]] = {}

    def connected(self) -> dict[str, object]:
        return {"event": "connected", "version": "1.0.0"}

    def start(self) -> dict[str, object]:
        return {
            "event": "start",
            "sequence_number": self._next(),
            "stream_id": TELNYX_ID,
            "start": {
                "call_control_id": "v3:abc",
                "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
            },
        }

    def media(self, chunk: int, payload: bytes) -> dict[str, object]:
        frame = super().media(chunk, payload)
        frame["sequence_number"] = frame.pop("sequenceNumber")
        return frame

    def dtmf(self, digit: str) -> dict[str, object]:
        return {
            "event": "dtmf",
            **self.ids(),
            "sequence_number": self._next(),
            "dtmf": {"digit": digit},
        }

    def mark(self, name: str) -> dict[str, object]:
        return {
            "event": "mark",
            "sequence_number": self._next(),
            **self.ids(),
            "mark": {"name": name},
        }

    def stop(self) -> dict[str, object]:
        return {"event": "stop", "sequence_number": self._next(), "stop": {}, **self.ids()}

    def ids(self) -> dict[str, str]:
        return {"stream_id": TELNYX_ID}


async def far_end_call(url: str, dialect: Twilio, payloads: list[bytes]) -> list[dict]:
    """Send the call, echo every mark, and return every frame the server sent, in order."""
    received: list[dict] = []
    async with connect(url) as ws:
        await ws.send(json.dumps(dialect.connected()))
        await ws.send(json.dumps(dialect.start()))
        for chunk, payload in enumerate(payloads, start=1):
            await ws.send(json.dumps(dialect.media(chunk, payload)))
        await ws.send(json.dumps(dialect.dtmf("1")))
        async with asyncio.timeout(10):
            while not received or received[-1]["event"] != "clear":
                frame = json.loads(await ws.recv())
                received.append(frame)
                if frame["event"] == "mark":  # the far end has played it (no pacing needed)
                    await ws.send(json.dumps(dialect.mark(frame["mark"]["name"])))
        await ws.send(json.dumps(dialect.stop()))
    return received


def check_envelopes(received: list[dict], stream_id: dict[str, str]) -> None:
    """Every frame is exactly its documented shape, with ``stream_id`` (or nothing) added."""
    for frame in received:
        kind = frame["event"]
        body = {key: value for key, value in frame.items() if key not in ("event", "media", "mark")}
        assert body == stream_id, frame
        if kind == "media":
            assert set(frame) == {"event", "media", *stream_id} and set(frame["media"]) == {
                "payload"
            }, frame
        elif kind == "mark":
            assert set(frame) == {"event", "mark", *stream_id}, frame
            assert set(frame["mark"]) == {"name"}, frame
        else:
            assert frame == {"event": "clear", **stream_id}, frame


@pytest.mark.parametrize("dialect", [Twilio, Telnyx], ids=["twilio", "telnyx"])
async def test_playback_answers_in_the_dialect_of_the_stream(dialect: type[Twilio]):
    rate = 8000
    payloads = encode_frames(synthesize_speechlike(FRAMES * 0.02, rate), "PCMU", rate)
    assert len(payloads) == FRAMES
    far = dialect()
    options = StreamOptions(playback=PlaybackConfig(mode="rtp"))  # Twilio: always μ-law RTP
    async with MediaServer(EchoMarkClear, port=0, options=options) as srv:
        received = await far_end_call(ws_url(srv), far, payloads)
    assert EchoMarkClear.stream_ids == [far.stream_id]

    kinds = [frame["event"] for frame in received]
    assert kinds.count("media") == FRAMES and kinds.count("clear") == 1
    assert [f["mark"]["name"] for f in received if f["event"] == "mark"][-1] == DONE
    check_envelopes(received, far.outbound_id)

    # the far end hears exactly what the handler played, which is what the caller said (decoded
    # independently, by audioop)
    decoder = codecs.decoder("PCMU", rate)
    heard = np.concatenate(
        [
            decoder.decode(base64.b64decode(f["media"]["payload"]))
            for f in received
            if f["event"] == "media"
        ]
    )
    played = np.concatenate(EchoMarkClear.played)
    said = np.frombuffer(b"".join(audioop.ulaw2lin(p, 2) for p in payloads), dtype=np.int16)
    assert len(heard) == len(played) == FRAMES * rate // 50
    np.testing.assert_array_equal(heard, played)
    np.testing.assert_array_equal(heard, said)
