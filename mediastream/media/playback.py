"""Bidirectional playback: audio to the carrier in RTP or MP3 mode, marks, barge-in with clear.

The carrier plays what we send in order and echoes a ``mark`` once the audio before it has
played; ``clear`` stops playback, empties its queue and echoes every queued mark. So a playback
is sent, then its mark; the echo says it was heard to the end, unless a clear came first.

RTP mode sends chunks paced in real time with a small bounded lead: the carrier never holds
more than ``lead_ms`` of our audio, so a ``clear`` cuts the caller off within about that. We keep
a model of the far end's playout clock (when everything sent so far will have played) to know
how much of a playback was heard when it is cleared. MP3 mode sends one whole MP3 file per
playback and never two media messages within ``mp3_min_interval`` (the carrier's limit is one a
second). Every send has a timeout: a socket that stops draining fails the playback with a clear
error instead of wedging the handler. Given ``on_played``, a player also tells what the far end
played and when (``media/played.py``; its probe marks are ``PROBE_PREFIX``): the runtime
records that as the recording's playback channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import numpy as np
import soundfile

from mediastream import codecs
from mediastream.config import PlaybackConfig
from mediastream.errors import PlaybackError, PlaybackStopped, SocketClosed
from mediastream.media.played import OnPlayed, PlayoutTap
from mediastream.media.resample import StreamResampler
from mediastream.protocol.dialects import TELNYX_OUTBOUND, Outbound

logger = logging.getLogger(__name__)

MARK_PREFIX = "ms-play-"
PROBE_PREFIX = f"{MARK_PREFIX}probe-"  # a mark after a segment's first chunk (``PlayoutTap``)
# resampled audio short of a whole chunk waits for the next play this long, then goes out padded
IDLE_FLUSH_SECONDS = 0.1


@dataclass(eq=False)
class Playback:
    """One ``play()``: resolves True when the carrier echoed its mark, False when cleared."""

    mark_name: str
    duration_ms: float
    started_at: float | None = None  # when the far end began playing it (our model)
    interrupted: bool = False
    # False: the caller's speech never clears it (a greeting, a legal disclosure); an
    # application's own ``clear()`` still does
    interruptible: bool = True
    _heard_ms: float | None = None
    _done: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    async def finished(self) -> bool:
        """True if heard to the end, False if cleared; raises PlaybackError if sending failed."""
        return await asyncio.shield(self._done)

    @property
    def done(self) -> bool:
        return self._done.done()

    @property
    def heard_ms(self) -> float:
        """How much the caller heard: all of it, the part before a clear, or so far."""
        if self._heard_ms is not None:
            return self._heard_ms
        if self.started_at is None:
            return 0.0
        return min(self.duration_ms, max(0.0, (time.monotonic() - self.started_at) * 1000))

    def resolve(self, played: bool, heard_ms: float) -> None:
        """The player's verdict: heard to the end (True) or cleared after ``heard_ms``."""
        if self._done.done():
            return
        self.interrupted = not played
        self._heard_ms = heard_ms
        self._done.set_result(played)

    def fail(self, error: Exception) -> None:
        """The player could not send it: ``finished()`` raises ``error``."""
        if not self._done.done():
            self._heard_ms = self.heard_ms
            self._done.set_exception(error)
            self._done.exception()  # retrieved here: a caller that never awaits is no error


@dataclass(eq=False)
class _Item:
    playback: Playback | None  # None: a custom mark, or a resampler's tail
    payloads: list[bytes]
    chunk_seconds: list[float]
    mark: str | None
    pcm: np.ndarray | None = None  # MP3: what the file holds, for ``on_played``


class Player:
    """Sends one call's playbacks in order; owns its encoder and resampler (they are stateful)."""

    def __init__(
        self,
        send: Callable[[str], Awaitable[None]],
        config: PlaybackConfig | None = None,
        *,
        stream_id: str = "?",
        on_failure: Callable[[PlaybackError], Awaitable[None]] | None = None,
        outbound: Outbound = TELNYX_OUTBOUND,
        on_played: OnPlayed | None = None,
        played_rate: int | None = None,
    ) -> None:
        """``on_played(pcm, rate, start)``: what the far end played (at ``played_rate``) and
        when its first sample played (monotonic), as ``PlayoutTap`` says; None: not tapped."""
        config = config or PlaybackConfig()
        if outbound.stream_sid is not None and config.mode == "mp3":
            # Twilio has no MP3 mode: it plays audio/x-mulaw at 8 kHz, whatever Telnyx defaults to
            config = replace(config, mode="rtp", codec="PCMU", sample_rate=8000)
        self.config = config
        self._outbound = outbound  # the stream's dialect: Twilio needs its streamSid on each frame
        self._on_failure = on_failure
        self.stream_id = stream_id
        self._send_text = send
        cfg = self.config
        self._encoder = None if cfg.mode == "mp3" else codecs.encoder(
            cfg.codec, cfg.sample_rate, **cfg.codec_options
        )  # fmt: skip
        self.rate = self._encoder.sample_rate if self._encoder is not None else cfg.sample_rate
        self._resamplers: dict[int, StreamResampler] = {}
        self._last_resampler: StreamResampler | None = None
        self._step = self.rate * cfg.chunk_ms // 1000
        self._carry = np.zeros(0, dtype=np.int16)  # resampled samples short of a whole chunk
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._names = itertools.count(1)
        self._awaiting_echo: dict[str, Playback] = {}
        self._current: Playback | None = None
        self._playout_end = 0.0  # when the far end will have played everything sent (model)
        self._last_media_at = -1e9
        self._failed: PlaybackError | None = None
        self._generation = 0  # bumped by clear(): a sender working on older items drops them
        self._tap = None if on_played is None else self._make_tap(on_played, played_rate)
        self._task = asyncio.create_task(self._run())

    def _make_tap(self, on_played: OnPlayed, played_rate: int | None) -> PlayoutTap:
        cfg, decoder = self.config, None
        if self._encoder is not None:  # RTP: the payloads, decoded as the far end does
            try:
                decoder = codecs.decoder(cfg.codec, cfg.sample_rate, **cfg.codec_options)
            except TypeError:  # an encoder's option the decoder does not take
                decoder = codecs.decoder(cfg.codec, cfg.sample_rate)
        return PlayoutTap(
            on_played, self.rate, played_rate or self.rate, decoder=decoder,
            stream_id=self.stream_id,
        )  # fmt: skip

    # ------------------------------------------------------------ API

    async def play(
        self, pcm: np.ndarray, sample_rate: int, *, interruptible: bool = True
    ) -> Playback:
        """Queue int16 mono PCM at ``sample_rate``; returns at once with its ``Playback``.
        ``interruptible=False``: barge-in never clears it (see ``barge_in_target``)."""
        self._check()
        pcm = np.asarray(pcm)
        if pcm.ndim != 1:
            raise ValueError("play() takes mono PCM (a 1-D int16 array)")
        resampled = self._resample(pcm.astype(np.int16, copy=False), sample_rate)
        if sample_rate != self.rate and self._encoder is not None:
            resampled = self._whole_chunks(resampled)
        name = f"{MARK_PREFIX}{next(self._names)}"
        playback = Playback(name, len(resampled) * 1000.0 / self.rate)
        playback.interruptible = interruptible
        payloads, seconds = await asyncio.to_thread(self._encode, resampled)
        self._check()
        mp3_pcm = resampled if self._encoder is None and self._tap is not None else None
        self._queue.append(_Item(playback, payloads, seconds, name, mp3_pcm))
        self._wakeup.set()
        return playback

    async def play_file(self, path: str, *, interruptible: bool = True) -> Playback:
        """Any file soundfile reads (WAV, FLAC, OGG, MP3), any rate, mixed to mono."""
        data, rate = await asyncio.to_thread(soundfile.read, path, dtype="int16", always_2d=True)
        mono = data.mean(axis=1).round().astype(np.int16) if data.shape[1] > 1 else data[:, 0]
        return await self.play(mono, rate, interruptible=interruptible)

    def barge_in_target(self) -> Playback | None:
        """The playback the caller would cut off by speaking now, if barge-in may clear: one
        is unresolved (playing, queued, or awaiting its echo) and every unresolved one is
        interruptible (a clear would drop them all). None: nothing to clear, or a protected
        playback is pending."""
        pending = [
            p
            for p in (
                self._current,
                *self._awaiting_echo.values(),
                *(item.playback for item in self._queue),
            )
            if p is not None and not p.done
        ]
        if not pending or not all(p.interruptible for p in pending):
            return None
        started = [p for p in pending if p.started_at is not None]
        return min(started, key=lambda p: p.started_at or 0.0) if started else pending[0]

    async def mark(self, name: str) -> None:
        """A custom mark after everything queued; its echo goes to the handler's ``on_mark``."""
        self._check()
        self._queue.append(_Item(None, [], [], name))
        self._wakeup.set()

    async def clear(self) -> None:
        """Stop playback now: our queue is emptied, the carrier's too (``clear`` is always sent)."""
        now = time.monotonic()
        self._generation += 1
        dropped = list(self._queue)
        self._queue.clear()
        for item in dropped:
            if item.playback is not None:
                item.playback.resolve(False, 0.0)
        for playback in [self._current, *self._awaiting_echo.values()]:
            if playback is not None and not playback.done:
                heard = 0.0 if playback.started_at is None else (now - playback.started_at) * 1000
                playback.resolve(False, min(playback.duration_ms, max(0.0, heard)))
        self._current = None
        self._awaiting_echo.clear()  # their echoes (sent because of the clear) count for nothing
        self._playout_end = now
        if self._tap is not None:  # what was sent and not played by now never will be
            self._tap.cleared(now)
        await self._send(self._outbound.clear())

    def on_mark_echo(self, name: str) -> bool:
        """Handle an echoed mark; True if it belongs to the application (custom mark)."""
        if self._tap is not None:  # when the far end got there: the playout clock's correction
            self._tap.echoed(name, time.monotonic())
        playback = self._awaiting_echo.pop(name, None)
        if playback is not None:
            playback.resolve(True, playback.duration_ms)  # no effect if a clear came first
            return False
        return not name.startswith(MARK_PREFIX)

    async def close(self) -> None:
        """The stream ended: stop sending; unfinished playbacks report False."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        if self._tap is not None:  # what played by now is recorded, the rest never will be
            self._tap.close(time.monotonic())
        self._resolve_unfinished()

    def _resolve_unfinished(self) -> None:
        for item in self._queue:
            if item.playback is not None:
                item.playback.resolve(False, 0.0)
        for playback in [self._current, *self._awaiting_echo.values()]:
            if playback is not None:
                playback.resolve(False, playback.heard_ms)

    @property
    def queued_ms(self) -> float:
        """Audio queued on our side, not yet sent."""
        return sum(sum(item.chunk_seconds) for item in self._queue) * 1000

    # ------------------------------------------------------------ internals

    def _check(self) -> None:
        if self._failed is not None:
            raise self._failed

    def _resample(self, pcm: np.ndarray, rate: int) -> np.ndarray:
        if rate == self.rate:
            return pcm
        resampler = self._resamplers.get(rate)
        if resampler is None:
            resampler = self._resamplers[rate] = StreamResampler(rate, self.rate)
        if self._encoder is None:  # MP3: each playback is a whole file, flush the filter
            return resampler.process(pcm, last=True)
        self._last_resampler = resampler
        # one continuous stream: back-to-back plays (an echo, a TTS stream) join without a seam;
        # the filter's delay (about 1 ms) holds the newest samples until the next play
        return resampler.process(pcm)

    def _whole_chunks(self, pcm: np.ndarray) -> np.ndarray:
        """Resampled audio comes in uneven pieces: send whole chunks, carry the rest over."""
        samples = np.concatenate([self._carry, pcm]) if len(self._carry) else pcm
        whole = len(samples) // self._step * self._step
        self._carry = samples[whole:]
        return samples[:whole]

    def _tail(self) -> _Item | None:
        """After a pause, what the resampler and the carry still hold, padded to a chunk."""
        resampler, self._last_resampler = self._last_resampler, None
        held = [self._carry] + ([resampler.flush()] if resampler is not None else [])
        self._carry = np.zeros(0, dtype=np.int16)
        tail = np.concatenate(held)
        if not len(tail):
            return None
        payloads, seconds = self._encode(tail)
        return _Item(None, payloads, seconds, None)

    def _encode(self, pcm: np.ndarray) -> tuple[list[bytes], list[float]]:
        """Encoded messages and their durations (seconds), in sending order."""
        if self._encoder is None:  # MP3: one whole file per playback
            buffer = io.BytesIO()
            soundfile.write(buffer, pcm, self.rate, format="MP3", subtype="MPEG_LAYER_III")
            return [buffer.getvalue()], [len(pcm) / self.rate]
        step = self._step
        payloads, seconds = [], []
        for begin in range(0, len(pcm), step):
            chunk = pcm[begin : begin + step]
            if len(chunk) < step:  # the carrier wants whole 20 ms frames: pad the tail
                chunk = np.concatenate([chunk, np.zeros(step - len(chunk), np.int16)])
            payloads.append(self._encoder.encode(chunk))
            seconds.append(step / self.rate)
        return payloads, seconds

    async def _send(self, text: str) -> None:
        try:
            await asyncio.wait_for(self._send_text(text), self.config.send_timeout)
        except SocketClosed as exc:
            stopped = PlaybackStopped(
                f"stream {self.stream_id}: socket closed during playback ({exc})",
                normal=exc.normal,
            )
            self._failed = stopped  # a later play() says why nothing can be sent
            self._resolve_unfinished()
            raise stopped from exc
        except TimeoutError as exc:
            error = PlaybackError(
                f"stream {self.stream_id}: socket did not take a frame within "
                f"{self.config.send_timeout:g} s (the carrier stopped reading)"
            )
            self._fail_all(error)
            raise error from exc
        except Exception as exc:
            error = PlaybackError(f"stream {self.stream_id}: sending failed: {exc}")
            self._fail_all(error)
            raise error from exc

    def _fail_all(self, error: PlaybackError) -> None:
        self._failed = error
        for item in self._queue:
            if item.playback is not None:
                item.playback.fail(error)
        for playback in [self._current, *self._awaiting_echo.values()]:
            if playback is not None:
                playback.fail(error)

    async def _run(self) -> None:
        try:
            while True:
                if not self._queue:
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), IDLE_FLUSH_SECONDS)
                    except TimeoutError:
                        if self._tap is not None:  # idle: what played meanwhile goes out
                            self._tap.release(time.monotonic())
                        tail = self._tail() if self._last_resampler is not None else None
                        if tail is not None:
                            self._queue.append(tail)
                    continue
                item = self._queue.popleft()
                await self._send_item(item, self._generation)
        except PlaybackStopped as exc:  # nothing to close: the socket is gone already
            logger.log(logging.DEBUG if exc.normal else logging.INFO, "%s", exc)
        except PlaybackError as exc:
            logger.error("%s", exc)
            if self._on_failure is not None:
                await self._on_failure(exc)

    async def _send_item(self, item: _Item, generation: int) -> None:
        playback = item.playback
        self._current = playback
        mp3 = self.config.mode == "mp3"
        for payload, seconds in zip(item.payloads, item.chunk_seconds, strict=True):
            await self._pace(mp3)
            if generation != self._generation:
                return  # cleared while waiting
            now = time.monotonic()
            start = max(now, self._playout_end)
            if playback is not None and playback.started_at is None:
                playback.started_at = start
            self._playout_end = start + seconds
            self._last_media_at = now
            tap = self._tap
            probe = tap is not None and tap.sent(payload if item.pcm is None else item.pcm,
                                                 start, now)  # fmt: skip
            await self._send(self._outbound.media(payload))
            if probe and tap is not None and generation == self._generation:
                name = f"{PROBE_PREFIX}{next(self._names)}"  # its echo: when the segment played
                tap.marked(name, start + seconds)
                await self._send(self._outbound.mark(name))
        if generation != self._generation:
            return
        self._current = None
        if item.mark is None:
            return
        if playback is not None:
            self._awaiting_echo[item.mark] = playback
        if self._tap is not None:
            self._tap.marked(item.mark, max(time.monotonic(), self._playout_end))
        await self._send(self._outbound.mark(item.mark))

    async def _pace(self, mp3: bool) -> None:
        """Wait until sending keeps the far end's queue within the lead (or the MP3 rate)."""
        if mp3:
            delay = self._last_media_at + self.config.mp3_min_interval - time.monotonic()
        else:
            delay = self._playout_end - self.config.lead_ms / 1000 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
