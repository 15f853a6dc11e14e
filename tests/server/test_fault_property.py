"""Property: arbitrary frames between valid media never cost audio and never leave a socket hung.

One real ``MediaServer`` (127.0.0.1, port 0, recording) serves every example of a test function;
each example opens a real WebSocket with a fresh stream id and sends ``connected``, ``start``
(PCMU 8000, or L16 at 8000/16000, mono inbound), valid media frames (chunk 1..N, timestamp
(chunk-1)*20, seeded content, in order) with hostile frames between them, then ``stop``.
It must end in one of two ways:

- served: the server processes the ``stop`` and closes with 1000, and the WAV holds every
  valid frame exactly at (chunk-1)*frame, decoded here with audioop / numpy (never with
  mediastream's codecs), and silence after;
- closed for cause: the server closes the socket with a close code (not 1000, not abnormal)
  within 1 s of a hostile frame; every valid frame sent before the first hostile frame of that
  last second is in the WAV exactly, and each later frame slot holds its audio or silence.

A socket still open ``STOP_WAIT`` seconds after the ``stop`` fails: the server stopped serving
it without closing it (issue item 1: the stream's reader died on a ``RecursionError`` and the
socket stayed open until keepalive).

What hostile frames never do, so that the expected recording is exact (the generator keeps to
it; everything else goes):

- carry audio on the recorded track: a media frame whose track reads as inbound (no track, "",
  None, "inbound", "inbound_track", any case or padding) or as any name other than exactly
  "outbound" has a payload that is not base64 (``base64.b64decode(validate=True)`` refuses it)
  or not a string; its counters are arbitrary. (Unknown track names are recorded into channel
  0 by the recorder, so a valid payload there would overwrite the caller's audio.) Only
  "outbound" media carry real audio, with any counters; channel 1 is not checked;
- end the stream: no hostile frame has the event ``stop`` (binary frames aside, which the
  server rejects whatever they hold);
- make the file huge: outbound timestamps are malformed, negative, below 2 s or beyond any
  plausible call (>= 10**12 ms), never a position hours into the file.

Default profile: ``MAX_EXAMPLES`` examples per test. ``HYPOTHESIS_PROFILE=long`` (tests/conftest.py)
runs 10,000:
    HYPOTHESIS_PROFILE=long python -m pytest tests/server/test_fault_property.py
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import soundfile
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from mediastream import MediaServer, StreamHandler, StreamOptions

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # 3.11/3.12 stdlib; the audioop-lts package on 3.13+

# Each example is a real socket and a WAV: the default profile's count (tests/conftest.py) is
# cut to what fits in well under a minute; the long profile's count is kept.
LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
MAX_EXAMPLES = settings.get_profile("long").max_examples if LONG else 200
CLOSE_WINDOW = 1.0  # a socket closed for a bad frame must close this soon after it
STOP_WAIT = 2.0  # a served socket closes this soon after ``stop`` (normally in milliseconds)
FINALIZE_WAIT = 5.0
PRODUCTION_RECURSION_LIMIT = 1000  # CPython's default, what ``mediastream serve`` runs with
CODECS = [("PCMU", 8000), ("L16", 8000), ("L16", 16000)]


# ---------------------------------------------------------------- the server under test


class Finalized(StreamHandler):
    """Notes which streams reached ``on_stop``: the registry forgets a stream before its
    recording is closed, and ``on_stop`` comes after the close."""

    started: ClassVar[set[str]] = set()
    stopped: ClassVar[set[str]] = set()

    async def on_start(self) -> None:
        Finalized.started.add(self.call.stream_id)

    async def on_stop(self) -> None:
        Finalized.stopped.add(self.call.stream_id)


@dataclass
class Harness:
    """A server on its own event loop, kept across examples (a fresh stream id each)."""

    loop: asyncio.AbstractEventLoop
    server: MediaServer
    record_dir: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/stream"

    def run(self, coro: Any) -> Any:
        """Run ``coro`` (and the server) under a production-like recursion limit.

        Hypothesis raises the limit while a test runs (room for its own frames), and the server
        runs in the test's thread: ``json.loads`` of ``"[" * 1500`` then passes here while it
        raises ``RecursionError`` in ``mediastream serve`` (limit 1000). So the server gets
        1000 frames above where the loop runs, as in a real process.
        """
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(_stack_depth() + PRODUCTION_RECURSION_LIMIT)
        try:
            return self.loop.run_until_complete(coro)
        finally:
            sys.setrecursionlimit(limit)

    async def finalized(self, stream_id: str) -> bool:
        """True once the stream left the registry and, if it had a handler, its recording
        was closed (``on_stop``)."""
        deadline = time.monotonic() + FINALIZE_WAIT
        while time.monotonic() < deadline:
            gone = stream_id not in self.server.registry
            if gone and (stream_id not in Finalized.started or stream_id in Finalized.stopped):
                return True
            await asyncio.sleep(0.005)
        return False


def _stack_depth() -> int:
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    record_dir = tmp_path / "recordings"
    # no grace period: a socket closed without stop ends its stream at once (no resume here)
    options = StreamOptions(record_dir, resume_grace_seconds=0)
    loop = asyncio.new_event_loop()
    server = MediaServer(Finalized, host="127.0.0.1", port=0, options=options)
    loop.run_until_complete(server.start())
    try:
        yield Harness(loop, server, record_dir)
    finally:
        loop.run_until_complete(server.stop())
        loop.close()


# ---------------------------------------------------------------- hostile values


class Raw(str):
    """JSON text put into a frame as is (numbers Python refuses to print, deep nesting)."""


def to_json(value: Any) -> str:
    """``json.dumps`` with ``Raw`` pieces spliced in verbatim."""
    raws: list[str] = []

    def mark(obj: Any) -> Any:
        if isinstance(obj, Raw):
            raws.append(str(obj))
            return f"\x00raw{len(raws) - 1}\x00"
        if isinstance(obj, dict):
            return {k: mark(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [mark(v) for v in obj]
        return obj

    text = json.dumps(mark(value))
    for i, raw in enumerate(raws):
        text = text.replace(json.dumps(f"\x00raw{i}\x00"), raw, 1)
    return text


ABSENT = object()  # a field left out of the frame

nesting = st.integers(1000, 3000).flatmap(
    lambda d: st.sampled_from(["[" * d + "]" * d, '{"a":' * d + "0" + "}" * d])
)
digit_bomb = st.integers(4301, 6000).flatmap(
    lambda n: st.sampled_from(["9" * n, "-" + "9" * n, "1" + "0" * (n - 1)])
)
hostile_scalar = st.one_of(
    st.sampled_from(
        [
            None,
            True,
            False,
            0,
            -1,
            -8000,
            1.5,
            -0.5,
            1e300,
            10**10,
            2**63,
            2**64 + 1,
            10**30,
            "",
            " ",
            "abc",
            "-",
            "1.5",
            "0x10",
            "²",
            "٣",
            "1e3",
            [],
            {},
            [1],
            {"x": 1},
        ]
    ),
    st.integers(-(2**70), 2**70),
    st.text(max_size=12),
    digit_bomb,  # a string of digits
    digit_bomb.map(Raw),  # a JSON number
    nesting.map(Raw),
    st.sampled_from([Raw("1e999"), Raw("-1e999"), Raw("-0"), Raw("1E400")]),
)
hostile_counter = st.one_of(
    hostile_scalar, st.integers(-5, 4000), st.just(10**9), st.integers(-5, 4000).map(str)
)
# outbound timestamps: anything but a plausible position far into the file (see the docstring)
outbound_timestamp = st.one_of(
    st.integers(-(10**6), 2000),
    st.integers(10**12, 10**30),
    st.integers(0, 2000).map(str),
    hostile_scalar.filter(lambda v: not (isinstance(v, int) and 2000 < v < 10**12)),
)


def not_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return True
    return False


invalid_payload = st.one_of(
    st.sampled_from(["@@", "A", "AAA", "====", "AA=A", "A===", "AAAA====AA", "ÿÿÿÿ", "AA AA"]),
    st.text(alphabet="ABCDab01+/=-_@ \n", min_size=1, max_size=40).filter(not_base64),
    st.sampled_from([None, 5, 1.5, True, [], {}, ["AAAA"], {"payload": "AAAA"}]),
    nesting.map(Raw),
)
inbound_tracks = st.sampled_from(
    [ABSENT, None, "", "inbound", "INBOUND", "inbound_track", " Inbound_Track ", "Inbound"]
)
other_tracks = st.one_of(
    st.sampled_from(["both", "foo", "outbound_track", "OUTBOUND", "inbound2", 5, [], {}]),
    st.text(max_size=8),
)
encodings = st.sampled_from(
    ["PCMU", "PCMA", "L16", "G722", "OPUS", "SPEEX", "audio/x-mulaw", "", 7, None, [], "l16"]
)
sample_rates = st.one_of(
    st.sampled_from([-8000, 0, 1, -1, 8000, 16000, 48000, 10**10, 2**63, "8000", 1.5, None]),
    st.integers(-(10**12), 10**12),
    digit_bomb.map(Raw),
)


def is_stopish(value: Any) -> bool:
    return isinstance(value, str) and "stop" in value.strip().lower()


def frame_of(fields: dict[str, Any]) -> str:
    return to_json({k: v for k, v in fields.items() if v is not ABSENT})


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(ABSENT), strategy)


@st.composite
def inbound_media(draw: st.DrawFn, stream_id: str) -> str:
    """Media that reads as the recorded track: never a decodable payload, any counters."""
    media = {
        "track": draw(inbound_tracks),
        "chunk": draw(maybe(hostile_counter)),
        "timestamp": draw(maybe(hostile_counter)),
        "payload": draw(maybe(invalid_payload)),
    }
    return frame_of(
        {
            "event": "media",
            "sequence_number": draw(maybe(hostile_counter)),
            "stream_id": draw(st.sampled_from([stream_id, ABSENT, "other-stream", 5])),
            "media": {k: v for k, v in media.items() if v is not ABSENT},
        }
    )


@st.composite
def other_track_media(draw: st.DrawFn, stream_id: str, frame_bytes: int) -> str:
    """Media on another track with hostile counters; real audio only on exactly "outbound"."""
    if draw(st.booleans()):
        track: Any = "outbound"
        size = draw(st.sampled_from([frame_bytes, 1, 7, 2 * frame_bytes, 0]))
        payload: Any = base64.b64encode(draw(st.binary(min_size=size, max_size=size))).decode()
        if draw(st.integers(0, 4)) == 0:
            payload = draw(invalid_payload)
        timestamp = draw(maybe(outbound_timestamp))
    else:
        track = draw(other_tracks)
        payload = draw(invalid_payload)
        timestamp = draw(maybe(hostile_counter))
    media = {
        "track": track,
        "chunk": draw(maybe(hostile_counter)),
        "timestamp": timestamp,
        "payload": payload,
    }
    return frame_of(
        {
            "event": "media",
            "sequence_number": draw(maybe(hostile_counter)),
            "stream_id": stream_id,
            "media": {k: v for k, v in media.items() if v is not ABSENT},
        }
    )


@st.composite
def extra_start(draw: st.DrawFn, stream_id: str) -> str:
    """A second ``start`` (same id, another id, Twilio-shaped) with a hostile media format."""
    fmt = {
        "encoding": draw(maybe(encodings)),
        "sample_rate": draw(maybe(sample_rates)),
        "channels": draw(maybe(st.sampled_from([1, 2, 0, -1, 10**9, "x", None]))),
    }
    media_format: Any = {k: v for k, v in fmt.items() if v is not ABSENT}
    if draw(st.integers(0, 5)) == 0:
        media_format = draw(hostile_scalar)
    sid = draw(st.sampled_from([stream_id, "another-stream", ""]))
    if draw(st.booleans()):
        return frame_of(
            {
                "event": "start",
                "sequence_number": draw(maybe(hostile_counter)),
                "stream_id": sid,
                "start": {"media_format": media_format},
            }
        )
    return frame_of(
        {
            "event": "start",
            "streamSid": sid,
            "start": {"streamSid": sid, "mediaFormat": media_format},
        }
    )


@st.composite
def wrong_types(draw: st.DrawFn, stream_id: str) -> str:
    """Known events with hostile values in their fields (and at the top level)."""
    h = hostile_scalar
    frame = draw(
        st.sampled_from(["connected", "dtmf", "mark", "error", "start_top", "event"]).flatmap(
            lambda kind: {
                "connected": st.fixed_dictionaries(
                    {"event": st.just("connected"), "version": h, "connected": h}
                ),
                "dtmf": st.fixed_dictionaries(
                    {
                        "event": st.just("dtmf"),
                        "stream_id": h,
                        "occurred_at": h,
                        "dtmf": st.one_of(h, st.fixed_dictionaries({"digit": h})),
                    }
                ),
                "mark": st.fixed_dictionaries(
                    {
                        "event": st.just("mark"),
                        "sequence_number": h,
                        "mark": st.one_of(h, st.fixed_dictionaries({"name": h})),
                    }
                ),
                "error": st.fixed_dictionaries(
                    {
                        "event": st.just("error"),
                        "payload": st.one_of(
                            h, st.fixed_dictionaries({"code": h, "title": h, "detail": h})
                        ),
                    }
                ),
                "start_top": st.fixed_dictionaries(
                    {"event": st.just("start"), "stream_id": h, "start": h}
                ),
                "event": st.fixed_dictionaries(
                    {"event": h.filter(lambda v: not is_stopish(v)), "stream_id": h}
                ),
            }[kind]
        )
    )
    return to_json(frame)


@st.composite
def unknown_event(draw: st.DrawFn, stream_id: str) -> str:
    name = draw(st.text(max_size=20).filter(lambda s: not is_stopish(s)))
    body = draw(st.dictionaries(st.text(max_size=6), hostile_scalar, max_size=3))
    return to_json({**body, "event": name, "stream_id": stream_id})


junk_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
).filter(lambda v: not (isinstance(v, dict) and is_stopish(v.get("event"))))


def hostile_frame(stream_id: str, frame_bytes: int, valid: list[str]) -> st.SearchStrategy[Any]:
    """Any one hostile frame: ``str`` goes as a text frame, ``bytes`` as a binary frame."""
    return st.one_of(
        st.just("[" * 1500 + "]" * 1500),  # issue item 1, verbatim
        nesting,
        nesting.map(lambda n: '{"event":"media","media":{"track":"outbound","payload":' + n + "}}"),
        nesting.map(lambda n: '{"event":"start","start":{"media_format":' + n + "}}"),
        inbound_media(stream_id),
        other_track_media(stream_id, frame_bytes),
        extra_start(stream_id),
        wrong_types(stream_id),
        unknown_event(stream_id),
        st.binary(max_size=64),
        st.sampled_from(valid).map(str.encode),  # a valid frame, but binary
        st.sampled_from(valid).flatmap(lambda f: st.integers(0, len(f) - 1).map(lambda k: f[:k])),
        st.text(max_size=80).filter(lambda s: not is_stopish(s)),
        junk_json.map(json.dumps),
    )


# ---------------------------------------------------------------- one call


@dataclass
class HostileCall:
    codec: str
    sample_rate: int
    stream_id: str
    payloads: list[bytes]  # valid frame n is payloads[n - 1]
    hostile: list[tuple[int, str | bytes]]  # (number of valid frames sent before it, frame)

    @property
    def frame_samples(self) -> int:
        return self.sample_rate // 50

    def start_text(self) -> str:
        fmt = {"encoding": self.codec, "sample_rate": self.sample_rate, "channels": 1}
        return json.dumps(
            {
                "event": "start",
                "sequence_number": "1",
                "stream_id": self.stream_id,
                "start": {"media_format": fmt},
            }
        )

    def media_text(self, chunk: int) -> str:
        media = {
            "track": "inbound",
            "chunk": str(chunk),
            "timestamp": str((chunk - 1) * 20),
            "payload": base64.b64encode(self.payloads[chunk - 1]).decode(),
        }
        return json.dumps(
            {
                "event": "media",
                "sequence_number": str(chunk + 1),
                "media": media,
                "stream_id": self.stream_id,
            }
        )

    def expected(self) -> np.ndarray:
        """The inbound audio, decoded without mediastream: audioop for PCMU, numpy for L16."""
        data = b"".join(self.payloads)
        if self.codec == "PCMU":
            return np.frombuffer(audioop.ulaw2lin(data, 2), dtype="<i2").astype(np.int16)
        return np.frombuffer(data, dtype=">i2").astype(np.int16)

    def __repr__(self) -> str:
        def short(frame: str | bytes) -> str:
            text = repr(frame)
            return (
                text if len(text) <= 160 else f"{text[:100]}...({len(frame)} chars)...{text[-40:]}"
            )

        hostile = "\n".join(f"    after valid frame {n}: {short(f)}" for n, f in self.hostile)
        return (
            f"HostileCall({self.codec} {self.sample_rate} Hz, {len(self.payloads)} valid "
            f"frames, hostile:\n{hostile})"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # hypothesis prints falsifying examples with this


@st.composite
def hostile_calls(draw: st.DrawFn) -> HostileCall:
    codec, rate = draw(st.sampled_from(CODECS))
    n = draw(st.integers(20, 60))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    frame_bytes = rate // 50 * (1 if codec == "PCMU" else 2)
    payloads = [rng.integers(0, 256, frame_bytes, dtype=np.uint8).tobytes() for _ in range(n)]
    # fresh per example, and always as long: frame lengths bound draws (truncation points),
    # which must not change when hypothesis replays an example
    stream_id = f"prop-{uuid.uuid4().hex}"
    call = HostileCall(codec, rate, stream_id, payloads, [])
    valid = [call.media_text(c) for c in (1, n)]
    frames = draw(st.lists(hostile_frame(stream_id, frame_bytes, valid), min_size=1, max_size=20))
    call.hostile = sorted(((draw(st.integers(0, n)), f) for f in frames), key=lambda p: p[0])
    return call


def issue_example(*hostile: str, codec: str = "PCMU", rate: int = 8000) -> HostileCall:
    """A fixed call of 30 frames with the given frames after frame 10 (``{sid}``: its id)."""
    rng = np.random.default_rng(1)
    frame_bytes = rate // 50 * (1 if codec == "PCMU" else 2)
    payloads = [rng.integers(0, 256, frame_bytes, dtype=np.uint8).tobytes() for _ in range(30)]
    stream_id = f"issue-{uuid.uuid4().hex}"
    frames = [(10, text.replace("{sid}", stream_id)) for text in hostile]
    return HostileCall(codec, rate, stream_id, payloads, frames)


# issue item 1's triggers, always tried first
BOMB = "9" * 5000
ISSUE_EXAMPLES = [
    issue_example("[" * 1500 + "]" * 1500),
    issue_example(
        json.dumps({"event": "media", "stream_id": "{sid}", "media": {
            "track": "outbound", "chunk": BOMB, "timestamp": "0",
            "payload": base64.b64encode(bytes(160)).decode()}})
    ),
    issue_example(
        json.dumps({"event": "media", "stream_id": "{sid}", "media": {
            "track": "inbound", "chunk": BOMB, "timestamp": "200", "payload": "@@"}})
    ),
    issue_example(
        json.dumps({"event": "start", "stream_id": "{sid}", "start": {
            "media_format": {"encoding": "L16", "sample_rate": -8000}}}),
        json.dumps({"event": "start", "stream_id": "other", "start": {
            "media_format": {"encoding": "L16", "sample_rate": 10**10}}}),
        codec="L16",
    ),
]  # fmt: skip


@dataclass
class Outcome:
    valid_sent: list[tuple[int, float]] = field(default_factory=list)  # (chunk, send time)
    hostile_sent: list[float] = field(default_factory=list)
    stop_sent: float | None = None
    closed_at: float | None = None  # when the client saw the server's close
    code: int | None = None
    reason: str = ""
    hung: bool = False  # still open STOP_WAIT after the last frame: closed by the client


async def _watch(ws: ClientConnection, outcome: Outcome) -> None:
    try:
        async for _ in ws:
            pass
    except ConnectionClosed:
        pass
    outcome.closed_at = time.monotonic()
    received = ws.protocol.close_rcvd
    outcome.code = received.code if received is not None else None
    outcome.reason = received.reason if received is not None else ""


async def send_hostile_call(url: str, call: HostileCall) -> Outcome:
    """Send the call, yielding to the loop after each frame so the server keeps up (and can
    close mid-call); then wait for the server to close the socket after ``stop``."""
    outcome = Outcome()
    async with connect(url, compression=None, ping_interval=None, close_timeout=1) as ws:
        watcher = asyncio.create_task(_watch(ws, outcome))
        sequence: list[tuple[str, int, str | bytes]] = [
            ("setup", 0, json.dumps({"event": "connected", "version": "1.0.0"})),
            ("setup", 0, call.start_text()),
        ]
        hostile = iter(call.hostile)
        pending = next(hostile, None)
        for chunk in range(1, len(call.payloads) + 2):
            while pending is not None and pending[0] == chunk - 1:
                sequence.append(("hostile", 0, pending[1]))
                pending = next(hostile, None)
            if chunk <= len(call.payloads):
                sequence.append(("valid", chunk, call.media_text(chunk)))
        stop = {
            "event": "stop",
            "sequence_number": str(len(call.payloads) + 2),
            "stream_id": call.stream_id,
        }
        sequence.append(("stop", 0, json.dumps(stop)))
        try:
            for kind, chunk, data in sequence:
                if watcher.done():
                    break
                sent = time.monotonic()
                await ws.send(data)
                if kind == "valid":
                    outcome.valid_sent.append((chunk, sent))
                elif kind == "hostile":
                    outcome.hostile_sent.append(sent)
                elif kind == "stop":
                    outcome.stop_sent = sent
                await asyncio.sleep(0)  # let the server read what was sent
        except ConnectionClosed:
            pass
        with contextlib.suppress(TimeoutError):  # still open: the caller reports it
            await asyncio.wait_for(asyncio.shield(watcher), STOP_WAIT)
        outcome.hung = not watcher.done()  # before our own close below ends it
    if not watcher.done():
        watcher.cancel()
    return outcome


def check_outcome(harness: Harness, call: HostileCall, outcome: Outcome) -> None:
    """The property (see the module docstring)."""
    finalized = harness.run(harness.finalized(call.stream_id))
    assert not outcome.hung, (
        f"socket neither served nor closed: no close {STOP_WAIT:g} s after stop "
        f"(stop sent: {outcome.stop_sent is not None}); the server stopped reading it"
    )
    served = outcome.stop_sent is not None and outcome.code == 1000
    event("served" if served else f"closed with {outcome.code}")
    required = len(call.payloads)
    if not served:
        assert outcome.code is not None and outcome.code not in (1000, 1005, 1006), (
            f"socket closed without a proper close code: {outcome.code} {outcome.reason!r}"
        )
        window = [t for t in outcome.hostile_sent if outcome.closed_at - t <= CLOSE_WINDOW]
        assert window, (
            f"closed with {outcome.code} {outcome.reason!r} but not within {CLOSE_WINDOW:g} s "
            f"of a hostile frame"
        )
        required = sum(1 for _, t in outcome.valid_sent if t < window[0])
    assert finalized, f"stream {call.stream_id} not finalized {FINALIZE_WAIT:g} s after close"
    path = harness.record_dir / f"{call.stream_id}.wav"
    assert path.exists() or required == 0, f"no recording at {path}"
    if not path.exists():
        return
    data, rate = soundfile.read(path, dtype="int16", always_2d=True)
    assert rate == call.sample_rate
    inbound = data[:, 0]
    expected = call.expected()
    step = call.frame_samples
    assert len(inbound) >= required * step, (
        f"WAV holds {len(inbound) / step:.2f} frames; {required} valid frames were due"
    )
    for chunk in range(1, len(call.payloads) + 1):
        got = inbound[(chunk - 1) * step : chunk * step]
        want = expected[(chunk - 1) * step : chunk * step]
        if chunk <= required:
            if not np.array_equal(got, want):
                first = int(np.flatnonzero(got != want)[0])
                raise AssertionError(
                    f"valid frame {chunk} differs in the WAV at sample {(chunk - 1) * step + first}"
                    f": {int(got[first])} != {int(want[first])} (closed {outcome.code})"
                )
        elif len(got) and not (np.array_equal(got, want[: len(got)]) or not got.any()):
            raise AssertionError(f"frame slot {chunk} holds audio that was never sent")
    tail = inbound[len(call.payloads) * step :]
    assert not tail.any(), "audio after the last valid frame on channel 0"


@pytest.mark.slow
def test_hostile_frames_between_valid_media(harness: Harness) -> None:
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(call=hostile_calls())
    @example(call=ISSUE_EXAMPLES[0])
    @example(call=ISSUE_EXAMPLES[1])
    @example(call=ISSUE_EXAMPLES[2])
    @example(call=ISSUE_EXAMPLES[3])
    def property_holds(call: HostileCall) -> None:
        outcome = harness.run(send_hostile_call(harness.url, call))
        check_outcome(harness, call, outcome)

    property_holds()


# ---------------------------------------------------------------- a hostile first start


@st.composite
def hostile_starts(draw: st.DrawFn) -> tuple[str, str]:
    """The stream's own ``start`` with a hostile media format (L16 at -8000 Hz, 10**10 Hz...)."""
    stream_id = f"start-{uuid.uuid4().hex}"
    fmt = {
        "encoding": draw(encodings),
        "sample_rate": draw(sample_rates),
        "channels": draw(st.sampled_from([1, 2, 0, -1, 10**9, "x", None])),
    }
    start = {
        "event": "start",
        "sequence_number": "1",
        "stream_id": stream_id,
        "start": {"media_format": fmt},
    }
    return stream_id, to_json(start)


def start_example(encoding: str, rate: int) -> tuple[str, str]:
    stream_id = f"start-{uuid.uuid4().hex}"
    fmt = {"encoding": encoding, "sample_rate": rate, "channels": 1}
    return stream_id, json.dumps(
        {"event": "start", "stream_id": stream_id, "start": {"media_format": fmt}}
    )


def test_hostile_start_is_refused_or_served(harness: Harness) -> None:
    """A start naming a format we cannot decode is refused with a code at once, or served; the
    socket never hangs and a recording, if made, is a valid WAV."""

    @settings(
        max_examples=max(MAX_EXAMPLES // 4, 25),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(start=hostile_starts(), frames=st.integers(0, 5))
    @example(start=start_example("L16", -8000), frames=3)
    @example(start=start_example("L16", 10**10), frames=3)
    def property_holds(start: tuple[str, str], frames: int) -> None:
        stream_id, start_text = start
        payload = base64.b64encode(bytes(range(160))).decode()
        media = [
            json.dumps(
                {
                    "event": "media",
                    "stream_id": stream_id,
                    "media": {
                        "track": "inbound",
                        "chunk": str(c),
                        "timestamp": str((c - 1) * 20),
                        "payload": payload,
                    },
                }
            )
            for c in range(1, frames + 1)
        ]
        call = HostileCall("PCMU", 8000, stream_id, [], [])
        outcome = harness.run(send_start_call(harness.url, [start_text, *media], stream_id))
        finalized = harness.run(harness.finalized(stream_id))
        assert not outcome.hung, (
            f"socket neither served nor closed {STOP_WAIT:g} s after stop; start was "
            f"{start_text[:200]}"
        )
        if not (outcome.stop_sent is not None and outcome.code == 1000):
            assert outcome.code is not None and outcome.code not in (1000, 1005, 1006)
            assert outcome.closed_at - outcome.hostile_sent[0] <= CLOSE_WINDOW, (
                f"closed {outcome.closed_at - outcome.hostile_sent[0]:.2f} s after the start"
            )
        assert finalized, f"stream {call.stream_id} not finalized"
        path = harness.record_dir / f"{stream_id}.wav"
        if path.exists():
            soundfile.info(path)  # a valid WAV, whatever the stated rate was

    property_holds()


async def send_start_call(url: str, frames: list[str], stream_id: str) -> Outcome:
    outcome = Outcome()
    async with connect(url, compression=None, ping_interval=None, close_timeout=1) as ws:
        watcher = asyncio.create_task(_watch(ws, outcome))
        stop = json.dumps({"event": "stop", "stream_id": stream_id})
        try:
            await ws.send(json.dumps({"event": "connected", "version": "1.0.0"}))
            outcome.hostile_sent.append(time.monotonic())
            for text in frames:
                await ws.send(text)
                await asyncio.sleep(0)
            if not watcher.done():
                outcome.stop_sent = time.monotonic()
                await ws.send(stop)
        except ConnectionClosed:
            pass
        with contextlib.suppress(TimeoutError):  # still open: the caller reports it
            await asyncio.wait_for(asyncio.shield(watcher), STOP_WAIT)
        outcome.hung = not watcher.done()  # before our own close below ends it
    if not watcher.done():
        watcher.cancel()
    return outcome
