"""The media socket's read path (``server/connection.py``) against a real server: fragmented
messages, text that is not UTF-8, and a handler slower than its peer."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import soundfile
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from mediastream import AudioFrame, MediaServer, StreamHandler, StreamOptions
from mediastream.server._websockets_private import INBOX_HIGH_WATER
from mediastream.simulate import plan_call, synthesize_speechlike
from tests.conftest import ws_url

VOICE = synthesize_speechlike(2.0, 8000)


def pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


async def test_fragmented_messages_are_joined_into_whole_frames(
    server: MediaServer, record_dir: Path
):
    plan = plan_call(VOICE, stream_id="fragmented")
    texts = [json.dumps(plan.start_frame())]
    texts += [json.dumps(frame) for _, frame in plan.media_frames()]
    texts.append(json.dumps(plan.stop_frame(999)))
    async with connect(ws_url(server)) as ws:
        for n, text in enumerate(texts):
            if n % 2:
                await ws.send(pieces(text, 7 + n % 50))  # an iterable: one fragment each
            else:
                await ws.send(text)
        await ws.wait_closed()
    assert ws.close_code == 1000
    await server.stop()
    data, _ = soundfile.read(record_dir / "fragmented.wav", dtype="int16")
    np.testing.assert_array_equal(data, plan.expected_pcm())


async def test_text_that_is_not_utf8_closes_with_1007_and_keeps_the_audio_before_it(
    server: MediaServer, record_dir: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING)
    plan = plan_call(VOICE[:4000], stream_id="bad-text")
    media = [json.dumps(frame) for _, frame in plan.media_frames()]
    async with connect(ws_url(server)) as ws:
        await ws.send(json.dumps(plan.start_frame()))
        for text in media[:10]:
            await ws.send(text)
        await ws.send(b'{"event": "media", "\xff\xfe"}', text=True)
        with pytest.raises(ConnectionClosed):
            for text in media[10:]:
                await ws.send(text)
            await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 1007
    await server.stop()
    data, _ = soundfile.read(record_dir / "bad-text.wav", dtype="int16")
    np.testing.assert_array_equal(data[: 10 * 160], plan.expected_pcm()[: 10 * 160])
    warnings = [r.getMessage() for r in caplog.records if "not UTF-8" in r.getMessage()]
    assert len(warnings) == 1 and "stream bad-text" in warnings[0]


class SlowHandler(StreamHandler):
    """Takes 2 ms per frame and notes how far the server's inbox had run ahead of it."""

    seen: ClassVar[list[float]] = []
    deepest: ClassVar[list[int]] = []
    server: ClassVar[MediaServer]

    async def on_audio(self, frame: AudioFrame) -> None:
        SlowHandler.seen.append(frame.timestamp_ms)
        inbox_depths = [len(c.transport.ws.inbox) for c in SlowHandler.server.connections]  # type: ignore[attr-defined]
        SlowHandler.deepest.append(max(inbox_depths, default=0))
        await asyncio.sleep(0.002)


async def test_a_slow_handler_gets_every_frame_in_order_and_reading_pauses(
    record_dir: Path,
):
    server = MediaServer(SlowHandler, port=0, options=StreamOptions(record_dir))
    SlowHandler.server, SlowHandler.seen, SlowHandler.deepest = server, [], []
    plan = plan_call(synthesize_speechlike(30.0, 8000), stream_id="slow")
    texts = [json.dumps(plan.start_frame())]
    texts += [json.dumps(frame) for _, frame in plan.media_frames()]
    texts.append(json.dumps(plan.stop_frame(999)))
    async with server, connect(ws_url(server)) as ws:
        for text in texts:  # as fast as the socket takes them: 1,500 frames at once
            await ws.send(text)
        await asyncio.wait_for(ws.wait_closed(), 60)
    assert SlowHandler.seen == [n * 20.0 for n in range(1500)]
    # Reading paused: the inbox never held the whole call, only what one read brings past
    # the high-water mark. A read is at most 256 KiB (asyncio's), about 800 of these frames:
    # a shorter call could arrive whole in one read when the server is slow to read.
    assert INBOX_HIGH_WATER <= max(SlowHandler.deepest) < 1000
    data, _ = soundfile.read(record_dir / "slow.wav", dtype="int16")
    np.testing.assert_array_equal(data, plan.expected_pcm())
