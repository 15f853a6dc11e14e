"""``call.listen``: fixed chunks for STT, resampled with state, checked sample for sample
against the whole input resampled at once, in ``ChunkFeed`` alone and through a real server."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import soundfile

from mediastream import AudioFrame, MediaServer, StreamHandler
from mediastream.media.resample import StreamResampler
from mediastream.runtime.call import Call
from mediastream.session import Audio
from mediastream.simulate import CallPlan, plan_call, send_call, synthesize_speechlike
from mediastream.voice.listen import Chunk, ChunkFeed, Listener
from tests.conftest import ws_url


def noise(samples: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 6000, samples).clip(-32768, 32767).astype(np.int16)


def whole(pcm: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """The oracle: the whole input through one stateful resampler at once, tail included."""
    return StreamResampler(in_rate, out_rate).process(pcm, last=True)


def joined(chunks: list[Chunk]) -> np.ndarray:
    return np.concatenate([c.pcm for c in chunks]) if chunks else np.zeros(0, np.int16)


def check_chunking(chunks: list[Chunk], rate: int, chunk_ms: int, first_ms: float = 0.0) -> None:
    """Every chunk but the last is whole, the last is not longer, and they tile the timeline."""
    size = chunk_ms * rate // 1000
    assert chunks and all(len(c.pcm) == size for c in chunks[:-1])
    assert 0 < len(chunks[-1].pcm) <= size
    starts = [c.start_ms for c in chunks]
    assert starts == pytest.approx([first_ms + i * chunk_ms for i in range(len(chunks))])
    assert all(c.sample_rate == rate and c.pcm.dtype == np.int16 for c in chunks)


# ------------------------------------------------------------------ ChunkFeed, sans-I/O


@pytest.mark.parametrize(
    ("in_rate", "out_rate"), [(8000, 16000), (16000, 16000), (8000, 8000), (16000, 8000)]
)
@pytest.mark.parametrize("chunk_ms", [20, 80, 100])
@pytest.mark.parametrize("seed", [1, 2])
def test_chunks_joined_equal_the_whole_input_resampled(
    in_rate: int, out_rate: int, chunk_ms: int, seed: int
) -> None:
    pcm = noise(in_rate * 2 + 37, seed)  # not a whole number of chunks: the last is short
    feed = ChunkFeed(in_rate, out_rate, chunk_ms)
    rng = np.random.default_rng(seed)
    chunks: list[Chunk] = []
    at = 0
    while at < len(pcm):  # pieces of any size, a single sample up to over a chunk
        size = int(rng.integers(1, 3 * in_rate * chunk_ms // 1000))
        chunks += feed.push(pcm[at : at + size])
        at += size
    chunks += feed.finish()
    np.testing.assert_array_equal(joined(chunks), whole(pcm, in_rate, out_rate))
    check_chunking(chunks, out_rate, chunk_ms)
    assert feed.finish() == []  # the tail comes once


def test_same_rate_is_the_input_itself_cut() -> None:
    pcm = noise(8000)
    feed = ChunkFeed(8000, 8000, 100)
    chunks = feed.push(pcm[:5000]) + feed.push(pcm[5000:]) + feed.finish()
    assert [len(c.pcm) for c in chunks] == [800] * 10
    np.testing.assert_array_equal(joined(chunks), pcm)


def test_a_gap_in_positions_is_silence_and_a_resent_piece_is_skipped() -> None:
    pcm = noise(1600)
    feed = ChunkFeed(8000, 16000, 20, start_position=800)  # starts 100 ms into the call
    chunks = feed.push(pcm[:160], 800)
    chunks += feed.push(pcm[160:320], 960)
    chunks += feed.push(pcm[160:320], 960)  # the same frame again: skipped
    chunks += feed.push(pcm[240:480], 1040)  # half of it seen already: half skipped
    chunks += feed.push(pcm[640:], 1440)  # 160 samples (20 ms) lost: silence
    chunks += feed.finish()
    expected_in = np.concatenate([pcm[:480], np.zeros(160, np.int16), pcm[640:]])
    np.testing.assert_array_equal(joined(chunks), whole(expected_in, 8000, 16000))
    assert (feed.gap_samples, feed.overlap_samples) == (160, 160 + 80)
    check_chunking(chunks, 16000, 20, first_ms=100.0)


def test_tobytes_is_little_endian_16_bit() -> None:
    chunk = Chunk(np.array([1, -2, 256], dtype=np.int16), 16000, 0.0, "inbound")
    assert chunk.tobytes() == b"\x01\x00\xfe\xff\x00\x01"
    swapped = Chunk(np.array([1, -2, 256], dtype=">i2"), 16000, 0.0, "inbound")
    assert swapped.tobytes() == chunk.tobytes()
    assert chunk.duration_ms == pytest.approx(3 / 16)


@pytest.mark.parametrize(("chunk_ms", "rate"), [(0, 16000), (-20, 8000), (1, 44100), (2.5, 8000)])
def test_a_chunk_must_hold_a_whole_number_of_samples(chunk_ms: Any, rate: int) -> None:
    with pytest.raises(ValueError, match="chunk_ms"):
        ChunkFeed(8000, rate, chunk_ms)


def test_push_after_finish_is_a_bug() -> None:
    feed = ChunkFeed(8000)
    feed.finish()
    with pytest.raises(RuntimeError):
        feed.push(np.zeros(160, np.int16))


# ------------------------------------------------------------------ Listener, bounded


def frame(position: int, rate: int = 8000, track: str = "inbound", seed: int = 0) -> Audio:
    return Audio(track, noise(rate // 50, seed + position), rate, position)


async def test_an_unread_listener_keeps_its_bound_drops_the_oldest_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    call = Call(stream_id="evil\nid")
    listener = call.listen(chunk_ms=100, max_buffer_seconds=0.3)  # at most 3 chunks
    assert listener.max_chunks == 3
    caplog.set_level(logging.WARNING, "mediastream.voice.listen")
    for n in range(50):  # 1 s of 20 ms frames: 10 chunks
        call.feed_listeners(frame(n * 160))
    chunks = listener.read()
    assert [c.start_ms for c in chunks] == pytest.approx([700.0, 800.0, 900.0])
    assert (listener.dropped_chunks, listener.dropped_ms) == (7, pytest.approx(700.0))
    drops = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drops) == 1 and "evil\\nid" in drops[0].getMessage()  # escaped, once
    assert "\n" not in drops[0].getMessage()


async def test_listeners_of_other_tracks_and_rates_each_get_their_own() -> None:
    call = Call(stream_id="two")
    inbound16 = call.listen("inbound", chunk_ms=100, sample_rate=16000)
    outbound8 = call.listen("outbound", chunk_ms=20)
    ins, outs = [], []
    for n in range(25):
        call.feed_listeners(frame(n * 160, seed=1))
        call.feed_listeners(frame(n * 160, track="outbound", seed=2))
        ins.append(frame(n * 160, seed=1).pcm)
        outs.append(frame(n * 160, track="outbound", seed=2).pcm)
    call.end_media()
    got_in = [c async for c in inbound16]
    got_out = [c async for c in outbound8]
    np.testing.assert_array_equal(joined(got_in), whole(np.concatenate(ins), 8000, 16000))
    np.testing.assert_array_equal(joined(got_out), np.concatenate(outs))
    assert {c.track for c in got_in} == {"inbound"} and {c.track for c in got_out} == {"outbound"}


async def test_close_stops_iteration_and_detaches() -> None:
    call = Call(stream_id="closing")
    async with call.listen(chunk_ms=20) as listener:
        call.feed_listeners(frame(0))
        assert (await anext(listener)).start_ms == 0.0
    assert call.listeners == ()
    assert [c async for c in listener] == []
    ended = call.listen()
    call.end_media()
    assert call.listen().ended and [c async for c in ended] == []


def test_bad_arguments_are_refused() -> None:
    call = Call(stream_id="args")
    with pytest.raises(ValueError, match="track"):
        call.listen("both")
    with pytest.raises(ValueError, match="max_buffer_seconds"):
        Listener(max_buffer_seconds=0)
    with pytest.raises(ValueError, match="chunk_ms"):
        call.listen(chunk_ms=15, sample_rate=22050)


# ------------------------------------------------------------------ through a real server


class Transcriber(StreamHandler):
    """Listens as an STT client would, each listener in a task of its own (``setups``)."""

    setups: ClassVar[list[dict[str, Any]]] = [{"chunk_ms": 100, "sample_rate": 16000}]
    mid_call_ms: ClassVar[float | None] = None  # also start one listener at this point
    tasks: ClassVar[list[asyncio.Task[list[Chunk]]]] = []
    errors: ClassVar[list[str]] = []

    async def on_start(self) -> None:
        for setup in self.setups:
            self.tasks.append(asyncio.create_task(self.consume(self.call.listen(**setup))))

    async def on_audio(self, frame: AudioFrame) -> None:
        mid = self.mid_call_ms
        if mid is not None and frame.track == "inbound" and frame.timestamp_ms >= mid:
            type(self).mid_call_ms = None
            self.tasks.append(asyncio.create_task(self.consume(self.call.listen(chunk_ms=40))))

    @staticmethod
    async def consume(listener: Listener) -> list[Chunk]:
        return [chunk async for chunk in listener]


async def run_call(handler: type[Transcriber], plan: CallPlan) -> list[list[Chunk]]:
    handler.tasks = []
    async with MediaServer(handler, port=0) as server:
        await send_call(ws_url(server), plan)
        return list(await asyncio.wait_for(asyncio.gather(*handler.tasks), 10))


@pytest.mark.parametrize(
    ("codec", "rate", "out_rate"),
    [("PCMU", 8000, 16000), ("G722", 16000, 16000), ("G722", 16000, 8000)],
)
async def test_chunks_through_a_server_are_the_decoded_call_resampled_whole(
    codec: str, rate: int, out_rate: int
) -> None:
    class Listen(Transcriber):
        setups: ClassVar[list[dict[str, Any]]] = [{"chunk_ms": 100, "sample_rate": out_rate}]

    plan = plan_call(synthesize_speechlike(1.53, rate), codec=codec, stream_id=f"stt-{codec}",
                     shuffle_window=4, drop={"inbound": {10, 11, 40}})  # fmt: skip
    (chunks,) = await run_call(Listen, plan)
    decoded = plan.expected_pcm()  # lost frames as silence, as the handler got them
    np.testing.assert_array_equal(joined(chunks), whole(decoded, rate, out_rate))
    check_chunking(chunks, out_rate, 100)
    assert len(chunks[-1].pcm) < out_rate // 10  # the resampler's tail, shorter


async def test_several_listeners_on_both_tracks_and_one_started_mid_call() -> None:
    class Listen(Transcriber):
        setups: ClassVar[list[dict[str, Any]]] = [
            {"chunk_ms": 100, "sample_rate": 16000},
            {"track": "outbound", "chunk_ms": 80, "sample_rate": 16000},
            {"chunk_ms": 20},  # the stream's own rate: the frames themselves
        ]
        mid_call_ms: ClassVar[float | None] = 500.0

    audio = {"inbound": synthesize_speechlike(1.0, 8000, seed=3),
             "outbound": synthesize_speechlike(1.0, 8000, seed=4)}  # fmt: skip
    plan = plan_call(audio, tracks=("inbound", "outbound"), stream_id="several")
    inbound, outbound, plain, mid = await run_call(Listen, plan)
    decoded_in, decoded_out = plan.expected_pcm("inbound"), plan.expected_pcm("outbound")
    np.testing.assert_array_equal(joined(inbound), whole(decoded_in, 8000, 16000))
    np.testing.assert_array_equal(joined(outbound), whole(decoded_out, 8000, 16000))
    np.testing.assert_array_equal(joined(plain), decoded_in)
    check_chunking(outbound, 16000, 80)
    # made while the frame at 500 ms was handled: it starts with the next one
    assert mid[0].start_ms == 520.0
    np.testing.assert_array_equal(joined(mid), decoded_in[520 * 8 :])


async def test_an_unread_listener_through_a_server_ends_with_its_newest_audio_and_tail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kept: list[Listener] = []

    class Unread(StreamHandler):
        async def on_start(self) -> None:
            kept.append(self.call.listen(chunk_ms=100, sample_rate=16000, max_buffer_seconds=0.5))

    caplog.set_level(logging.WARNING, "mediastream.voice.listen")
    plan = plan_call(synthesize_speechlike(2.0, 8000), stream_id="unread-stt")
    async with MediaServer(Unread, port=0) as server:
        await send_call(ws_url(server), plan)
    (listener,) = kept
    chunks = [c async for c in listener]  # ended with the stream: what it kept, then stop
    reference = whole(plan.expected_pcm(), 8000, 16000)
    made = -(-len(reference) // 1600)  # chunks made in all, the tail's included
    assert len(chunks) == 5 and listener.dropped_chunks == made - 5
    np.testing.assert_array_equal(joined(chunks), reference[-len(joined(chunks)) :])
    assert listener.dropped_ms == pytest.approx(
        len(reference) / 16 - sum(c.duration_ms for c in chunks)
    )
    first = [r for r in caplog.records if "max_buffer_seconds" in r.getMessage()]
    assert len(first) == 1 and "unread-stt" in first[0].getMessage()


async def test_iterating_inside_a_handler_method_raises_instead_of_hanging() -> None:
    raised: list[str] = []

    class Blocking(StreamHandler):
        async def on_start(self) -> None:
            try:
                async for _ in self.call.listen():
                    pass
            except RuntimeError as exc:
                raised.append(str(exc))

    plan = plan_call(synthesize_speechlike(0.2, 8000), stream_id="blocking")
    async with MediaServer(Blocking, port=0) as server:
        await asyncio.wait_for(send_call(ws_url(server), plan), 10)
    assert len(raised) == 1 and "create_task" in raised[0] and "blocking" in raised[0]


async def test_a_listener_goes_on_across_a_reconnect_on_the_recording_s_timeline(
    tmp_path: Path,
) -> None:
    """The oracle is the recording: the same timeline, a reconnect's gap as silence."""

    class Listen(Transcriber):
        setups: ClassVar[list[dict[str, Any]]] = [{"chunk_ms": 100, "sample_rate": 16000}]

    Listen.tasks = []
    first = plan_call(synthesize_speechlike(0.6, 8000, seed=5), stream_id="again", send_stop=False)
    second = plan_call(synthesize_speechlike(0.7, 8000, seed=6), stream_id="again")
    async with MediaServer(Listen, port=0, record_dir=tmp_path) as server:
        await send_call(ws_url(server), first)
        await asyncio.sleep(1.0)  # suspended: resumed 0.4 s after its audio ran out
        await send_call(ws_url(server), second)
        (chunks,) = await asyncio.wait_for(asyncio.gather(*Listen.tasks), 10)
    recorded, rate = soundfile.read(tmp_path / "again.wav", dtype="int16")
    assert rate == 8000 and len(recorded) > 8000 * 1.3  # audio, a gap, audio
    np.testing.assert_array_equal(joined(chunks), whole(recorded, 8000, 16000))
    check_chunking(chunks, 16000, 100)
