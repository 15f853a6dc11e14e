"""``listen``: a track's audio in fixed-size chunks, at the rate a speech-to-text service wants.

STT services want pieces of 50 to 100 ms (Deepgram 100 ms, Flux 80 ms; AssemblyAI refuses
shorter ones), mostly at 16 kHz; the carrier gives 20 ms frames at 8 kHz (G.711) or 16 kHz
(G.722). ``ChunkFeed`` (sans-I/O) puts a track's frames through one stateful resampler
(``StreamResampler``, a soxr stream) and cuts what comes out into ``chunk_ms`` pieces, so no
sample is lost or repeated at a chunk's edge: the chunks joined are, sample for sample, the
whole track resampled at once. At the end the resampler's tail comes out as a last, shorter
chunk.

``Listener`` is its asyncio face, what ``Call.listen`` returns: the runtime feeds it every
in-order frame of its track (lost frames as the silence that stands for them, so chunks stay
on the call's timeline) and ends it when the stream ends; the application iterates it. Its
queue is bounded (``max_buffer_seconds``): an application that stops reading loses the oldest
audio, counted (``dropped_chunks``, ``dropped_ms``) and logged once with the stream id.

Media level, as the rest of ``voice/``: numpy and ``mediastream.media``, never the runtime.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import numpy as np

from mediastream.media.resample import StreamResampler

logger = logging.getLogger(__name__)

MAX_BUFFER_SECONDS = 10.0
"""Audio a listener holds for an application that does not read (``listen(max_buffer_seconds=)``):
10 s is far more than any STT socket's hiccup, and 320 KB at 16 kHz. Past it, oldest first."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """``chunk_ms`` of one track: int16 mono ``pcm`` at ``sample_rate``, starting ``start_ms``
    after the stream's first sample (the call's timeline: ``Audio.timestamp_ms`` counts the
    same way). ``tobytes()`` is 16-bit little-endian linear PCM: what an STT socket wants
    (Deepgram ``encoding=linear16``, AssemblyAI ``pcm_s16le``)."""

    pcm: np.ndarray
    sample_rate: int
    start_ms: float
    track: str

    @property
    def duration_ms(self) -> float:
        return len(self.pcm) * 1000.0 / self.sample_rate

    @property
    def end_ms(self) -> float:
        return self.start_ms + self.duration_ms

    def tobytes(self) -> bytes:
        """The samples as 16-bit little-endian PCM, whatever the machine's byte order."""
        return self.pcm.astype("<i2", copy=False).tobytes()


class ChunkFeed:
    """Audio at ``in_rate`` in pieces of any size in, ``chunk_ms`` chunks at ``out_rate`` out.

    Sans-I/O and synchronous: ``push`` returns the chunks that piece completed (often none),
    ``finish`` the rest. ``position`` (input samples on the track's timeline, the runtime's
    ``Audio.position``) keeps chunks on the timeline: a gap is filled with silence, audio
    already fed (a frame resent across a reconnect) is skipped.
    """

    def __init__(
        self,
        in_rate: int,
        out_rate: int | None = None,
        chunk_ms: int = 100,
        *,
        track: str = "inbound",
        start_position: int = 0,
        quality: str = "HQ",
    ) -> None:
        out_rate = out_rate or in_rate
        check_chunking(chunk_ms, out_rate)
        if in_rate <= 0:
            raise ValueError(f"in_rate must be positive, not {in_rate}")
        self.in_rate, self.out_rate, self.chunk_ms, self.track = in_rate, out_rate, chunk_ms, track
        self.chunk_samples = chunk_ms * out_rate // 1000
        self.position = start_position  # the next input sample expected, on the timeline
        self.gap_samples = 0  # silence put in for gaps in ``position``
        self.overlap_samples = 0  # input skipped: it was fed already
        self.ended = False
        self._resampler = StreamResampler(in_rate, out_rate, quality)
        self._start_ms = start_position * 1000.0 / in_rate
        self._emitted = 0  # output samples handed out in chunks
        self._pending: list[np.ndarray] = []  # output short of a whole chunk
        self._pending_samples = 0

    def push(self, pcm: np.ndarray, position: int | None = None) -> list[Chunk]:
        """Feed the next piece (int16 mono); ``position``: where it starts on the timeline
        (None: right after the previous piece). Returns the chunks it completed."""
        if self.ended:
            raise RuntimeError("ChunkFeed.push after finish()")
        samples = np.asarray(pcm)
        if samples.ndim != 1:
            raise ValueError(f"pcm must be mono (1-D), not of shape {samples.shape}")
        if position is not None and position != self.position:
            if position > self.position:
                gap = position - self.position
                self.gap_samples += gap
                samples = np.concatenate([np.zeros(gap, dtype=np.int16), samples])
            else:
                skip = min(self.position - position, len(samples))
                self.overlap_samples += skip
                samples = samples[skip:]
        self.position += len(samples)
        if not len(samples):
            return []
        return self._cut(self._resampler.process(samples))

    def finish(self) -> list[Chunk]:
        """No more input: what the resampler still holds, the last chunk shorter (once)."""
        if self.ended:
            return []
        self.ended = True
        chunks = self._cut(self._resampler.flush())
        if self._pending_samples:
            rest = np.concatenate(self._pending)
            self._pending, self._pending_samples = [], 0
            chunks.append(self._chunk(rest))
        return chunks

    def _cut(self, out: np.ndarray) -> list[Chunk]:
        if len(out):
            self._pending.append(out)
            self._pending_samples += len(out)
        size = self.chunk_samples
        if self._pending_samples < size:
            return []
        joined = np.concatenate(self._pending)
        whole = len(joined) // size * size
        chunks = [self._chunk(joined[i : i + size]) for i in range(0, whole, size)]
        rest = joined[whole:]
        self._pending, self._pending_samples = ([rest] if len(rest) else []), len(rest)
        return chunks

    def _chunk(self, pcm: np.ndarray) -> Chunk:
        start_ms = self._start_ms + self._emitted * 1000.0 / self.out_rate
        self._emitted += len(pcm)
        return Chunk(pcm, self.out_rate, start_ms, self.track)


def check_chunking(chunk_ms: int, sample_rate: int) -> None:
    """A chunk must be a whole number of samples, so that every chunk has the same length."""
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, not {sample_rate}")
    if not isinstance(chunk_ms, int) or chunk_ms <= 0 or chunk_ms * sample_rate % 1000:
        raise ValueError(
            f"chunk_ms must be a positive whole number of ms holding a whole number of samples "
            f"at {sample_rate} Hz, not {chunk_ms!r}"
        )


class Listener:
    """An async iterator of one track's ``Chunk``s; it ends when the stream ends (after the
    resampler's tail) or when the application calls ``close()`` (``async with`` does).

    The runtime calls ``feed`` and ``end``; the application iterates, or takes what is ready
    without waiting (``read()``). It starts with the first frame fed after it was made.
    """

    def __init__(
        self,
        track: str = "inbound",
        *,
        chunk_ms: int = 100,
        sample_rate: int | None = None,
        max_buffer_seconds: float = MAX_BUFFER_SECONDS,
        log_id: str = "?",
        on_close: Callable[[Listener], None] | None = None,
        guard: Callable[[], None] | None = None,
    ) -> None:
        if sample_rate is not None:
            check_chunking(chunk_ms, sample_rate)
        elif not isinstance(chunk_ms, int) or chunk_ms <= 0:
            raise ValueError(f"chunk_ms must be a positive whole number of ms, not {chunk_ms!r}")
        if not max_buffer_seconds > 0:
            raise ValueError(f"max_buffer_seconds must be positive, not {max_buffer_seconds!r}")
        self.track, self.chunk_ms, self.sample_rate = track, chunk_ms, sample_rate
        self.max_buffer_seconds = max_buffer_seconds
        self.max_chunks = max(1, math.ceil(round(max_buffer_seconds * 1000 / chunk_ms, 6)))
        self.dropped_chunks = 0
        self.dropped_ms = 0.0
        self.ended = False  # the stream ended: what is queued is the last of it
        self.closed = False  # the application stopped listening
        self.chunk_feed: ChunkFeed | None = None  # made at the first frame: its rate and position
        self._log_id = log_id
        self._on_close = on_close
        self._guard = guard
        self._ready: deque[Chunk] = deque()
        self._wakeup = asyncio.Event()

    # ------------------------------------------------------------ the runtime's side

    def feed(self, pcm: np.ndarray, position: int, sample_rate: int) -> None:
        """One in-order frame of the track (silence for a lost one), at its timeline place."""
        if self.ended or self.closed:
            return
        feed = self.chunk_feed
        if feed is None:
            feed = self.chunk_feed = ChunkFeed(
                sample_rate,
                self.sample_rate or sample_rate,
                self.chunk_ms,
                track=self.track,
                start_position=position,
            )
        self._put(feed.push(pcm, position))

    def end(self) -> None:
        """The stream ended: the resampler's tail is the last chunk; iteration then stops."""
        if self.ended:
            return
        if self.chunk_feed is not None and not self.closed:
            self._put(self.chunk_feed.finish())
        self.ended = True
        self._wakeup.set()
        if self.dropped_chunks:
            logger.warning(
                "stream %s: listen(%s) dropped %d chunks (%.1f s) in all, unread",
                self._log_id, self.track, self.dropped_chunks, self.dropped_ms / 1000,
            )  # fmt: skip

    def _put(self, chunks: list[Chunk]) -> None:
        if not chunks:
            return
        ready = self._ready
        ready.extend(chunks)
        while len(ready) > self.max_chunks:
            lost = ready.popleft()
            self.dropped_chunks += 1
            self.dropped_ms += lost.duration_ms
            if self.dropped_chunks == 1:
                logger.warning(
                    "stream %s: listen(%s) not read: over max_buffer_seconds (%g s) queued, "
                    "its oldest audio is dropped (counted in dropped_ms)",
                    self._log_id, self.track, self.max_buffer_seconds,
                )  # fmt: skip
        self._wakeup.set()

    # ------------------------------------------------------------ the application's side

    def read(self) -> list[Chunk]:
        """Every chunk ready now, without waiting (for synchronous code)."""
        chunks = list(self._ready)
        self._ready.clear()
        return chunks

    def close(self) -> None:
        """Stop listening: nothing more is queued, what was is dropped, iteration stops."""
        if self.closed:
            return
        self.closed = True
        self._ready.clear()
        self._wakeup.set()
        if self._on_close is not None:
            self._on_close(self)

    def __aiter__(self) -> Listener:
        return self

    async def __anext__(self) -> Chunk:
        while True:
            if self.closed:
                raise StopAsyncIteration
            if self._ready:
                return self._ready.popleft()
            if self.ended:
                raise StopAsyncIteration
            if self._guard is not None:
                self._guard()  # raises where waiting could never end
            self._wakeup.clear()
            await self._wakeup.wait()

    async def __aenter__(self) -> Listener:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
