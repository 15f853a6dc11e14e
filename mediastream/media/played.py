"""What the far end played, and when: the tap behind ``StreamOptions.record_playback``.

A ``Player`` knows what it sent and keeps a model of the far end's playout clock (a chunk
starts playing when it arrives, or when the audio before it has played). ``PlayoutTap`` turns
that into audio that certainly played, with the time its first sample played, and hands it to
``on_played(pcm, rate, start)``; the runtime puts it on the stream's timeline.

Three corrections make "certainly played, and when" true:

* **Marks.** The model says when a chunk was sent, not when the far end played it: that is
  later by the way there, the carrier's own buffering and, measured on the call's timeline
  (whose clock is the inbound audio's arrival), the way back too. The echo of a mark comes
  exactly that much after the model's end of the audio before it, so ``echo - due`` is the
  correction (its noise: how late the far end sent the echo and our loop read it, always
  late, never early). Audio that plays back to back (a *segment*: the far end anchors it
  once, at its first chunk) gets one correction: the least of its own echoes and of those of
  the last ``RECENT_SECONDS``. In RTP mode the player sends a probe mark after each of the
  first ``PROBES`` chunks of a segment, so the correction is known about that many chunks
  plus a round trip after the segment starts; in MP3 mode the playback's own mark, at the
  end of its file, gives it. Measured in the end-to-end tests (server and simulated far end
  on one loop of a loaded 2-core machine): single echoes were 1.3 to 4.9 ms late, the
  round trip itself about 1.3 ms; one echo alone placed a playback up to 3.8 ms late.
* **Holding.** Audio is given out only once the model says it has played, so a ``clear``
  can still drop what the carrier had not played yet: what was sent and cleared never
  reaches the recording, what played before the clear does. A segment waits for its
  correction at most ``MAX_HOLD_SECONDS`` (then the latest correction, or none, is used),
  and not at all once the far end has shown that it does not echo marks.
* **Rate.** Output is at ``out_rate`` (the recording's), through one stateful resampler per
  tap, flushed at the end of each segment (its tail is placed after the segment's audio).

RTP audio is what the far end decodes: the payloads sent, decoded in order by a decoder of
our own (a stateful G.722 decoder stays in step with the far end's). MP3 audio is the PCM the
player encoded: decoding every file again on the event loop would cost milliseconds.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mediastream.codecs import Decoder
from mediastream.media.resample import StreamResampler

logger = logging.getLogger(__name__)

# a segment waits this long (from its start) for the echo that corrects its placement; MP3
# echoes come at the end of their file, RTP probes one chunk and a round trip after the start
MAX_HOLD_SECONDS = 10.0
# an echo further than this from the model is not about timing (a far end that echoes late)
MAX_CORRECTION_SECONDS = 2.0
PROBES = 3  # probe marks after a segment's first chunks (RTP): the least echo wins
RECENT_SECONDS = 10.0  # echoes this recent also bound a segment's correction
_CONTIGUOUS = 1e-4  # s: a chunk starting this close to the segment's end continues it

OnPlayed = Callable[[np.ndarray, int, float], None]


@dataclass(eq=False)
class _Segment:
    """Audio the far end plays back to back, anchored once at its first chunk."""

    start: float  # the model's: when its first sample plays (monotonic s)
    rate: int
    pieces: deque[np.ndarray] = field(default_factory=deque)  # not given out yet
    sent: int = 0  # samples sent
    emitted: int = 0  # samples given out (resampled)
    out: int = 0  # output samples given out, at the output rate
    cut: int | None = None  # a clear: this many samples played, the rest never did
    offset: float | None = None  # the correction: far-end play time minus the model's
    marks: int = 0  # marks sent in it whose echo is still to come
    chunks: int = 0
    corrections: list[float] = field(default_factory=list)  # its echoes', so far

    @property
    def end(self) -> float:
        return self.start + self.sent / self.rate

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` samples not given out yet."""
        parts, need = [], n
        while need > 0 and self.pieces:
            piece = self.pieces[0]
            if len(piece) <= need:
                parts.append(self.pieces.popleft())
                need -= len(piece)
            else:
                parts.append(piece[:need])
                self.pieces[0] = piece[need:]
                need = 0
        self.emitted += n - need
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)


class PlayoutTap:
    """One player's played audio, corrected and held as the module docstring says."""

    def __init__(
        self,
        on_played: OnPlayed,
        rate: int,
        out_rate: int,
        *,
        decoder: Decoder | None = None,
        stream_id: str = "?",
    ) -> None:
        """``rate``: the player's; ``decoder``: RTP payloads' (None: MP3, PCM is given)."""
        self._on_played: OnPlayed | None = on_played
        self.rate = rate
        self.out_rate = out_rate
        self._decoder = decoder
        self._resampler = StreamResampler(rate, out_rate)
        self.stream_id = stream_id
        self._segments: deque[_Segment] = deque()
        self._marks: dict[str, tuple[float, _Segment | None]] = {}  # name -> (due, segment)
        self.correction: float | None = None  # the latest measured
        self._recent: deque[tuple[float, float]] = deque()  # (when, correction)
        self._echoing = True  # False once a segment waited in vain: the far end never echoes
        self._echoed = False

    # ------------------------------------------------------------ what the player tells

    def sent(self, media: bytes | np.ndarray, start: float, now: float) -> bool:
        """A chunk (RTP payload) or an MP3 file's PCM was sent; the model plays it from
        ``start``. True if it starts a segment and a probe mark should follow it (RTP)."""
        if self._on_played is None:  # closed, or the recording failed: nothing is kept
            return False
        pcm = media if isinstance(media, np.ndarray) else self._decode(media)
        last = self._segments[-1] if self._segments else None
        new = last is None or last.cut is not None or abs(start - last.end) > _CONTIGUOUS
        if new:
            last = _Segment(start, self.rate)
            self._segments.append(last)
        assert last is not None
        last.pieces.append(np.asarray(pcm, dtype=np.int16))
        last.sent += len(pcm)
        last.chunks += 1
        self.release(now)
        return last.chunks <= PROBES and last.cut is None and self._decoder is not None

    def marked(self, name: str, due: float) -> None:
        """Mark ``name`` was sent; the model says the far end echoes it at ``due``."""
        marks = self._marks
        while marks:  # an echo this late could not count: forget the mark (a far end that
            oldest = next(iter(marks))  # never echoes leaves none behind)
            old_due, segment = marks[oldest]
            if old_due >= due - MAX_CORRECTION_SECONDS:
                break
            del marks[oldest]
            if segment is not None:
                segment.marks -= 1
        last = self._segments[-1] if self._segments else None
        inside = last is not None and last.cut is None and due <= last.end + _CONTIGUOUS
        self._marks[name] = (due, last if inside else None)
        if inside:
            assert last is not None
            last.marks += 1

    def echoed(self, name: str, now: float) -> None:
        """The echo of mark ``name`` came at ``now``: the correction of its segment."""
        entry = self._marks.pop(name, None)
        if entry is None:
            return  # not ours, or one a clear made the carrier echo early
        due, segment = entry
        if segment is not None:
            segment.marks -= 1
        correction = now - due
        if not -MAX_CORRECTION_SECONDS <= correction <= MAX_CORRECTION_SECONDS:
            return
        self.correction = correction
        self._echoing = self._echoed = True
        self._recent.append((now, correction))
        while self._recent[0][0] < now - RECENT_SECONDS:
            self._recent.popleft()
        if segment is not None:
            segment.corrections.append(correction)
        self.release(now)

    def cleared(self, now: float) -> None:
        """A clear at ``now``: the carrier played the segment up to here, and none after."""
        self._marks.clear()  # their echoes come because of the clear: no timing in them
        for segment in self._segments:
            segment.marks = 0
            if segment.cut is None:
                played = math.floor((now - segment.start) * self.rate + 1e-6)
                segment.cut = min(segment.sent, max(segment.emitted, played))
        self.release(now)

    def release(self, now: float) -> None:
        """Give out what has certainly played by ``now``, in order."""
        while self._segments and self._on_played is not None:
            segment = self._segments[0]
            finished = segment.cut is not None or now > segment.end or len(self._segments) > 1
            if segment.offset is None:
                waited = now - segment.start > MAX_HOLD_SECONDS
                # an echo will say when it played: one is on its way, or the first will be
                expected = segment.marks > 0 or (not finished and not segment.corrections)
                if self._echoing and segment.cut is None and expected and not waited:
                    return
                if waited and not self._echoed:
                    self._echoing = False
                segment.offset = self._correction_for(segment, now)
            played = math.floor((now - segment.start) * self.rate + 1e-6)
            final = segment.cut if segment.cut is not None else min(segment.sent, played)
            if finished and segment.cut is None:
                final = segment.sent
            if final > segment.emitted:
                self._emit(segment, self._resampler.process(segment.take(final - segment.emitted)))
            if not finished:
                return
            self._emit(segment, self._resampler.flush())
            self._segments.popleft()

    def close(self, now: float) -> None:
        """The player stopped: what played by ``now`` is given out, the rest dropped."""
        self.cleared(now)
        self._on_played = None
        self._segments.clear()

    # ------------------------------------------------------------ inside

    def _correction_for(self, segment: _Segment, now: float) -> float:
        """The least of the segment's own echoes and the recent ones (all are late by the
        noise, never early); the latest if none is recent; none at all: the model's."""
        recent = [c for at, c in self._recent if at >= now - RECENT_SECONDS]
        known = segment.corrections + recent
        if known:
            return min(known)
        return self.correction if self.correction is not None else 0.0

    def _decode(self, payload: bytes) -> np.ndarray:
        assert self._decoder is not None
        return self._decoder.decode(payload)

    def _emit(self, segment: _Segment, pcm: np.ndarray) -> None:
        if not len(pcm) or self._on_played is None:
            return
        assert segment.offset is not None
        start = segment.start + segment.offset + segment.out / self.out_rate
        segment.out += len(pcm)
        try:
            self._on_played(pcm, self.out_rate, start)
        except Exception:  # the recording is not worth a player: stop tapping, say why once
            logger.exception("stream %s: recording the playback failed; not recorded from "
                             "here on", self.stream_id)  # fmt: skip
            self._on_played = None
