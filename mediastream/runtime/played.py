"""What our players sent, on the stream's timeline: the recording's ``playback`` channel.

The timeline is the carrier's: position 0 is the stream's first sample, and positions run at
the sample rate as the carrier's ``chunk``/``timestamp`` say. The players' clock is ours
(``time.monotonic``). ``StreamClock`` joins the two in one place: a frame due at position
``p`` that arrived at ``t`` says the timeline's origin is at most ``t - p / rate`` (it cannot
have arrived before it was sent), so the origin is the least ``arrival - due`` over the
frames: the frame that met the least delay, as the quality report judges jitter. The least,
not the first: a first frame held up by a busy loop would shift every playback. A new socket
(a reconnect) starts its own estimate at its first frame, since its audio may have been
placed after a pause.

``PlayedTrack`` takes a player's ``on_played(pcm, rate, start)`` (``media/played.py``: audio
the far end certainly played, ``start`` on our clock corrected by mark echoes) and appends it
to the stream's recorder at ``round((start - origin) * rate)``. Pieces that continue each
other (within half a sample) are placed back to back, so rounding never leaves a one-sample
gap or overlap inside a playback. Audio before the first frame's origin is known waits (at
most ``MAX_WAITING_SECONDS``); audio before position 0 is cut off.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mediastream.errors import RecordingError
from mediastream.media.recording.recorder import PLAYBACK_TRACK

if TYPE_CHECKING:
    from mediastream.runtime.registry import Stream

logger = logging.getLogger(__name__)

MAX_WAITING_SECONDS = 5.0  # played audio kept while no frame has said where the timeline is
# played audio placed further than this beyond the carrier's audio is not trusted (a clock
# gone wrong would write silence up to it): dropped and counted, like a gap beyond the bound
MAX_AHEAD_SECONDS = 10.0


class StreamClock:
    """Where our monotonic clock falls on the stream's timeline (see the module docstring)."""

    __slots__ = ("_socket", "origin")

    def __init__(self) -> None:
        self.origin: float | None = None  # monotonic time of position 0
        self._socket: object = None

    def frame(self, socket: object, arrived: float, position: int, rate: int) -> None:
        """A frame of ``socket`` placed at ``position`` arrived at ``arrived``."""
        origin = arrived - position / rate
        if socket is not self._socket:
            self._socket, self.origin = socket, origin
        elif self.origin is None or origin < self.origin:
            self.origin = origin

    def position(self, at: float, rate: int) -> float | None:
        """Where monotonic time ``at`` falls on the timeline, in samples (None: not known)."""
        return None if self.origin is None else (at - self.origin) * rate


@dataclass(slots=True)
class _Played:
    """What the recorder needs of a frame (``PositionedAudio``)."""

    track: str
    pcm: np.ndarray
    sample_rate: int
    position: int


class PlayedTrack:
    """One stream's played audio, put into its recording; ``add`` is a player's ``on_played``."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self.clock = StreamClock()
        self._next: tuple[float, int] | None = None  # (time, position) the last piece ended at
        self._waiting: list[tuple[np.ndarray, int, float]] = []
        self.samples = 0  # placed in the recording
        self.dropped = 0  # could not be placed (no timeline, before it, recorder closed)
        self._logged: set[str] = set()

    def add(self, pcm: np.ndarray, rate: int, start: float) -> None:
        """``pcm`` at ``rate`` began playing at the far end at ``start`` (our clock)."""
        if self.clock.origin is None:
            self._waiting.append((pcm, rate, start))
            while sum(len(p) / r for p, r, _ in self._waiting) > MAX_WAITING_SECONDS:
                self._drop(len(self._waiting.pop(0)[0]), "no carrier audio to place it by")
            return
        if self._waiting:
            waiting, self._waiting = self._waiting, []
            for piece in waiting:
                self._place(*piece)
        self._place(pcm, rate, start)

    def _place(self, pcm: np.ndarray, rate: int, start: float) -> None:
        at = self.clock.position(start, rate)
        assert at is not None
        after = self._next
        if after is not None and abs((start - after[0]) * rate) < 0.5:
            position = after[1]  # it continues the last piece
        else:
            position = round(at)
        self._next = (start + len(pcm) / rate, position + len(pcm))
        if position < 0:  # before the stream's first sample: not on the timeline
            self.dropped += min(len(pcm), -position)  # normal: a greeting sent at ``start``
            pcm, position = pcm[-position:], 0
        recorder = self._stream.recorder
        if not len(pcm):
            return
        if recorder is None or recorder.state == "closed":
            self.dropped += len(pcm)  # the stream is not recorded (said elsewhere), or over
            return
        if position - self._stream.end_position > MAX_AHEAD_SECONDS * rate:
            self._drop(len(pcm), f"more than {MAX_AHEAD_SECONDS:g} s beyond the carrier's audio")
            return
        try:
            recorder.append(_Played(PLAYBACK_TRACK, pcm, rate, position))
        except RecordingError as exc:  # another rate, a recorder without the channel: a bug
            self._drop(len(pcm), str(exc))
            return
        self.samples += len(pcm)

    def _drop(self, samples: int, why: str) -> None:
        """Played audio the recording cannot hold: counted, and logged once per kind."""
        self.dropped += samples
        if why not in self._logged:
            self._logged.add(why)
            logger.warning(
                "stream %s: played audio not recorded (%s); counted in its dropped samples",
                self._stream.log_id, why,
            )  # fmt: skip
