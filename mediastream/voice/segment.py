"""Speech segmentation: per-window speech probabilities become utterances, with hysteresis.

A detector says, per window, how likely it is that the window holds speech; a caller needs
utterances (where someone spoke, and the audio of it) and a barge-in signal (someone has been
speaking long enough to interrupt a playback). ``Segmenter`` turns the first into the second.
It is sans-I/O and knows nothing of detectors or resampling: it is given the track's audio
(``audio``) and the decisions (``decide``), both placed on the track's timeline in samples at
the stream's rate, and returns events. ``mediastream.voice.speech`` wires it to a detector.

The rules, from ``SpeechOptions``:

- A window is speech when its probability is at or above ``threshold``.
- A *run* opens at the first speech window after silence; its ``start`` is that window's start.
  A run tolerates dips: silence shorter than ``min_silence_ms`` inside it changes nothing, but
  only speech windows count toward ``speech_ms``. When the run's speech reaches
  ``min_speech_ms`` it becomes an utterance (``SpeechStarted``; ``detected_ms`` is the end of the
  window that reached it). A run that meets ``min_silence_ms`` of silence before that (a
  backchannel, a cough) is dropped without an event. So an utterance's boundaries are exactly
  those it would have with ``min_speech_ms = 0``; ``min_speech_ms`` only decides which runs
  count, and when the start is known.
- Inside an utterance, ``min_silence_ms`` of silence in a row ends it (``SpeechEnded``), with
  ``end_ms`` at the start of that silence.
- A detector that goes on saying "speech" for a while after speech ends (webrtc's overhang,
  100 ms at mode 3) says so as ``hangover``: a silence is taken to have begun that much
  before its first silent window (but after the first window of the speech before it), for
  ``end_ms``, for counting ``min_silence_ms`` (an utterance ends that much sooner) and for
  the speech counted.
- An utterance is never longer than ``max_utterance_seconds``: the window that would take it
  past is not its own, it is cut before it (``truncated=True``); speech that goes on opens a
  new run, whose audio starts at the cut (no overlap, nothing missing). Cut in a pause
  (silence shorter than ``min_silence_ms``), it ends where the pause began, with its padding,
  and is still ``truncated``.
- A forward jump between windows (a gap in the timeline) is silence; a window starting before
  the previous one ended (a backward position) is taken as continuing right after it.

The audio is held as int16 samples in a ``bytearray`` per stretch of the timeline (a new
stretch begins where the positions jump forward), trimmed to what an utterance can still need:
from the open run's start (or the next undecided window) less ``padding_ms``. Not a deque of the
caller's arrays: the cyclic GC visits every item of a deque in a full collection, and 30 s of
20 ms frames is 1,500 items a stream (at 100 streams, 4.7 ms of every full collection for 10 s
of held frames each); a ``bytearray`` is one object it does not track, and its front is cut in
place (``del b[:n]`` moves its start).

An utterance's audio runs from ``start - padding`` to ``end + padding`` (to ``end`` when cut in
mid-speech), clipped to what is held. Whatever happens, no more than ``max_utterance_seconds +
2 * padding + LAG_ALLOWANCE_SECONDS`` of audio is held; beyond that the oldest goes (counted in
``dropped_ms``), which only happens if decisions stop coming.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mediastream.config import SpeechOptions

# audio held beyond the longest utterance and its padding, for decisions that arrive late
# (a resampler's and a batched detector's delay: tens of ms); past it the oldest audio goes
LAG_ALLOWANCE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Utterance:
    """One utterance: where it lies on the call's timeline (ms), and its audio with padding.

    ``audio`` takes no part in ``==`` or ``repr`` (an array has no truth value; a repr of
    thousands of samples helps nobody): two utterances compare by where they lie.
    """

    track: str
    start_ms: float  # start of the first speech window of the run (call timeline)
    end_ms: float  # start of the silence that ended it, or where it was cut
    # int16 at sample_rate, from start - padding to end + padding, clipped to what was held
    audio: np.ndarray = field(compare=False, repr=False)
    sample_rate: int
    audio_start_ms: float  # where audio[0] lies on the timeline
    truncated: bool = False  # ended by max_utterance_seconds, not by silence

    @property
    def duration_ms(self) -> float:
        return self.end_ms - self.start_ms


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """A run of speech became an utterance: it began at ``start_ms``, and was known to be one
    at ``detected_ms`` (the end of the window that brought it to ``min_speech_ms``)."""

    track: str
    start_ms: float
    detected_ms: float


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    """An utterance ended (by silence, by ``max_utterance_seconds``, or by ``finish``)."""

    utterance: Utterance


SpeechEvent = SpeechStarted | SpeechEnded


def _samples(ms: float, sample_rate: int) -> int:
    return round(ms * sample_rate / 1000)


_INT16 = np.dtype(np.int16)


class _Stretch:
    """Held audio without a hole: int16 samples from timeline position ``start``."""

    __slots__ = ("samples", "start")

    def __init__(self, start: int) -> None:
        self.start = start
        self.samples = bytearray()

    @property
    def end(self) -> int:
        return self.start + len(self.samples) // 2

    def cut_front(self, count: int) -> None:
        del self.samples[: 2 * count]
        self.start += count


class Segmenter:
    """One track's hysteresis: decisions per window in, ``SpeechEvent`` out (see the module).

    Positions are sample indices on the track's timeline at ``sample_rate``; ``hangover`` is
    in samples too (what the detector's decisions lag the end of speech by). ``audio`` copies
    the samples it is given (a few hundred bytes a frame); an utterance's audio is a copy too.
    """

    def __init__(
        self, track: str, sample_rate: int, options: SpeechOptions, hangover: int = 0
    ) -> None:
        self.track = track
        # samples a detector goes on saying "speech" after speech ends (webrtc: 100 ms)
        self._hangover = hangover
        self.sample_rate = sample_rate
        self._threshold = options.threshold
        self._min_speech = _samples(options.min_speech_ms, sample_rate)
        self._min_silence = _samples(options.min_silence_ms, sample_rate)
        self._padding = _samples(options.padding_ms, sample_rate)
        self._max = max(1, round(options.max_utterance_seconds * sample_rate))
        self._cap = self._max + 2 * self._padding + round(LAG_ALLOWANCE_SECONDS * sample_rate)
        # audio held: stretches in timeline order, a hole between each, none empty but the
        # last (when everything held was let go); _held counts samples
        self._stretches: list[_Stretch] = []
        self._held = 0
        self._audio_end: int | None = None  # position after the last audio sample
        self._dropped = 0
        # decisions
        self._next: int | None = None  # end of the last decided window
        self._run: int | None = None  # start of the open run (or utterance), None if none
        self._speaking = False  # the open run is an utterance
        self._speech = 0  # speech samples in the open run
        self._silence: int | None = None  # start of the silence inside the open run
        self._burst = 0  # end of the first window of the open run's last stretch of speech
        self._cut = 0  # audio of a later utterance starts no earlier (end of a truncated one)
        self._speech_total = 0
        self._audio_total = 0

    # -- state -----------------------------------------------------------------------------

    @property
    def speaking(self) -> bool:
        """True inside an utterance (after ``SpeechStarted``, before its ``SpeechEnded``)."""
        return self._speaking

    @property
    def speech_ms(self) -> float:
        """Speech in the open run or utterance (0 outside one): barge-in compares this."""
        return self._speech * 1000 / self.sample_rate

    @property
    def speech_ms_total(self) -> float:
        """All windows decided as speech, in or out of utterances."""
        return self._speech_total * 1000 / self.sample_rate

    @property
    def audio_ms_total(self) -> float:
        """All windows decided (gaps between windows are not audio)."""
        return self._audio_total * 1000 / self.sample_rate

    @property
    def dropped_ms(self) -> float:
        """Audio let go because decisions lagged by more than ``LAG_ALLOWANCE_SECONDS``."""
        return self._dropped * 1000 / self.sample_rate

    # -- input -----------------------------------------------------------------------------

    def audio(self, pcm: np.ndarray, position: int) -> None:
        """Hold the track's audio from ``position`` (before the decisions on it arrive)."""
        n = len(pcm)
        if not n:
            return
        end = self._audio_end
        if end is not None and position < end:
            position = end  # backward: continue where the audio ended
        stretches = self._stretches
        if not stretches:
            stretches.append(_Stretch(position))
        elif position != end:  # a hole: a new stretch (an emptied last one is reused)
            if stretches[-1].samples:
                stretches.append(_Stretch(position))
            else:
                stretches[-1].start = position
        samples = stretches[-1].samples
        if pcm.dtype is not _INT16:
            pcm = pcm.astype(np.int16)
        try:
            samples.extend(pcm)  # from the array's own buffer: no bytes in between
        except (BufferError, TypeError, ValueError):  # not one contiguous buffer
            samples.extend(np.ascontiguousarray(pcm))
        self._audio_end = position + n
        self._held += n
        # let go of what no utterance can need any more
        run = self._run
        base = self._next if run is None else run
        if base is not None:
            keep = base - self._padding
            if keep < self._cut:
                keep = self._cut
            if stretches[0].start < keep:
                self._drop_before(keep)
        if self._held > self._cap:
            self._overflow()

    def _drop_before(self, keep: int) -> None:
        """Let go of the held audio before ``keep``."""
        stretches = self._stretches
        while stretches[0].start < keep:
            first = stretches[0]
            if first.end <= keep and len(stretches) > 1:  # all of it, and more follows
                self._held -= first.end - first.start
                del stretches[0]
                continue
            count = min(keep, first.end) - first.start
            first.cut_front(count)
            self._held -= count
            return

    def _overflow(self) -> None:
        """Held audio beyond the cap (decisions stopped coming): the oldest goes, counted."""
        stretches = self._stretches
        while self._held > self._cap:
            first = stretches[0]
            size = first.end - first.start
            count = min(self._held - self._cap, size)
            if count == size and len(stretches) > 1:
                del stretches[0]
            else:
                first.cut_front(count)
            self._held -= count
            self._dropped += count

    def decide(self, start: int, length: int, probability: float) -> list[SpeechEvent]:
        """The detector's decision on the window ``[start, start + length)``."""
        out: list[SpeechEvent] = []
        self.decide_into(start, length, probability, out)
        return out

    def decide_into(
        self, start: int, length: int, probability: float, out: list[SpeechEvent]
    ) -> None:
        """``decide``, appending to ``out`` (the per-window path allocates no list)."""
        last = self._next
        if last is not None and start < last:
            start = last  # overlapping or backward: continue right after the last window
        end = start + length
        self._next = end
        self._audio_total += length
        run = self._run
        if run is not None and last is not None and start > last:
            # a gap between windows is silence
            if self._silence is None:
                self._silence = last
            if start - self._silence >= self._min_silence:
                self._close(self._silence, False, out)
                run = None
        if run is not None and end - run > self._max:
            # this window would make it too long: it ends before it
            if not self._speaking:
                self._reset()
            elif self._silence is not None:  # cut in a pause: it ends where the pause began
                self._close(self._silence, True, out, self._padding)
            else:
                self._close(start, True, out)
                self._cut = start
            run = None
        if probability >= self._threshold:
            self._speech_total += length
            if run is None:
                run = self._run = start
                self._speech = 0
                self._burst = end
            elif self._silence is not None:
                self._burst = end
            self._silence = None
            self._speech += length
            if not self._speaking and self._speech >= self._min_speech:
                self._speaking = True
                rate = self.sample_rate
                out.append(SpeechStarted(self.track, run * 1000 / rate, end * 1000 / rate))
        elif run is not None:
            silence = self._silence
            if silence is None:
                # the detector's hangover: its last "speech" windows were silence already
                silence = self._silence = max(start - self._hangover, self._burst)
                if silence < start:
                    self._speech = max(0, self._speech - (start - silence))
                    self._speech_total -= start - silence
            if end - silence >= self._min_silence:
                self._close(silence, False, out)
                return

    def finish(self, end: int | None = None) -> list[SpeechEvent]:
        """End an open utterance at the end of the audio (or at ``end``); drop an open run.

        An utterance already in its closing silence ends where that silence began.
        """
        out: list[SpeechEvent] = []
        if self._speaking:
            if self._silence is not None:
                end = self._silence
            elif end is None:
                end = max(self._audio_end or 0, self._next or 0)
            if self._run is not None:  # the undecided tail never makes it overlong
                end = min(end, self._run + self._max)
            self._close(end, False, out)
        self._reset()
        return out

    def close(self) -> None:
        """Let go of the held audio now: a stream's objects form reference cycles, which only
        a full collection of the cyclic GC frees, and freeing up to ``max_utterance_seconds``
        of frames per stream there stalled the event loop (130-170 ms for 80 streams that
        had ended, every live stream late by that much)."""
        self._stretches.clear()
        self._held = 0
        self._reset()

    # -- output ----------------------------------------------------------------------------

    def _reset(self) -> None:
        self._run = None
        self._speaking = False
        self._speech = 0
        self._silence = None

    def _close(
        self, end: int, truncated: bool, out: list[SpeechEvent], padding: int | None = None
    ) -> None:
        """End the open run at ``end``: an event if it was an utterance, nothing if not.

        The audio runs on for ``padding`` after ``end``: the setting's, but none for an
        utterance cut in mid-speech (the next one goes on from there).
        """
        start = self._run
        if self._speaking and start is not None:
            low = max(start - self._padding, self._cut)
            if padding is None:
                padding = 0 if truncated else self._padding
            high = end + padding
            first, audio = self._slice(low, high, start)
            rate = self.sample_rate
            utterance = Utterance(
                self.track,
                start * 1000 / rate,
                end * 1000 / rate,
                audio,
                rate,
                first * 1000 / rate,
                truncated,
            )
            out.append(SpeechEnded(utterance))
        self._reset()

    def _slice(self, low: int, high: int, anchor: int) -> tuple[int, np.ndarray]:
        """The held audio in ``[low, high)`` as one array, and where it starts.

        Only one contiguous stretch is returned, the one holding ``anchor`` (the utterance's
        start): held audio with a hole in it (a jump in the timeline) loses what lies on the
        far side of the hole.
        """
        chosen: _Stretch | None = None
        for index, stretch in enumerate(self._stretches):
            if stretch.end <= low:
                continue
            if stretch.start >= high or (index and stretch.start > anchor):
                break  # past the range, or beyond a hole after the anchor
            chosen = stretch
        if chosen is None:
            return anchor, np.zeros(0, np.int16)
        first, last = max(low, chosen.start), min(high, chosen.end)
        offset = 2 * (first - chosen.start)
        audio = np.frombuffer(chosen.samples, np.int16, last - first, offset).copy()
        return first, audio
