"""Prometheus metrics for ``GET /metrics``: the runtime's ``Observer``, kept off the frame path.

This is the only module that imports prometheus_client: the runtime reports through the
``Observer`` protocol (``mediastream.runtime.observer``), which ``ServerMetrics`` implements.

A media frame costs the whole server about 20 µs, while a ``prometheus_client``
``Counter.inc`` costs 0.55 µs (0.9 µs in multiprocess mode, where every change is written to
an mmap file) and ``Histogram.observe`` 1.1 µs (2 µs). So no frame touches prometheus_client:

* frames, bytes, gaps, reordered and late frames are counted anyway by the ``Session`` and its
  reorder buffers: we read those counters and push how much they grew;
* handler lag is one ``bisect`` into a per-connection list of bucket counts (``StreamMeter``);
* errors and handler failures are rare and cost a dict or int increment;
* recording faults (failed opens and writes, audio lost) are counted by the recorders in a
  ``RecordingStats`` (``mediastream.media.recording.process_stats`` unless the server passes its
  own): we read how much it grew. Its growth is remembered per set of prometheus_client
  objects, so two servers sharing one set (multiprocess mode) count each fault once.

The growth goes into prometheus_client in batches (``ServerMetrics.flush``): every second from
a task the server runs, when a connection ends, and right before each scrape.

The handler-lag histogram arrives as bucket counts, and prometheus_client's ``Histogram`` has
no public way to add many observations at once. Replaying them (one ``observe`` per frame at
push time) was measured at 350 streams × 50 frames/s: 17,500 ``observe`` calls, 42 ms per
push in one process and 52 ms in multiprocess mode (2.4 and 2.9 µs each on the test machine):
4-5 % of a core, and a 42-52 ms stall of the loop once a second, where nothing may block it
for more than 1 ms. So the histogram is a custom collector (``_LagHistogram``, prometheus_client's
documented ``Collector`` with a ``HistogramMetricFamily``) built from our own bucket counts:
a push adds 13 integers (15 µs, measured likewise), or in multiprocess mode makes 14
``Counter.inc`` calls on plain counters (21 µs), whose files ``MultiProcessCollector`` sums
over the workers and ``_Merged`` turns back into the histogram at scrape time.

Multiprocess (``serve --workers N``): when ``PROMETHEUS_MULTIPROC_DIR`` is in a worker's
environment before prometheus_client is first imported, every value lives in an mmap file in
that folder and ``/metrics`` in any worker sums the files of every worker
(``MultiProcessCollector``, in a fresh ``CollectorRegistry`` per scrape). Gauges use
``livesum``: the supervisor calls ``mark_worker_dead(pid)`` when a worker exits, which drops
that worker's gauges; its counters stay in the sum, since counters never go down. Other
workers' numbers in a scrape are at most ``FLUSH_SECONDS`` old.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import accumulate
from pathlib import Path
from time import monotonic
from typing import TYPE_CHECKING, Protocol

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from mediastream.media.recording import RecordingStats, process_stats
from mediastream.storage.stats import FAILURE_KINDS, UploadStats
from mediastream.storage.stats import upload_stats as _process_upload_stats

if TYPE_CHECKING:
    from mediastream.session import Audio, Session

logger = logging.getLogger(__name__)

PREFIX = "mediastream"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FLUSH_SECONDS = 1.0
# upper bounds (seconds) of the handler-lag histogram: a frame is 20 ms, so resolve below that
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_LAG_BOUNDS = np.array(LAG_BUCKETS)
# input errors that mean "this frame's audio could not be decoded"
DECODE_ERROR_KINDS = frozenset({"invalid_base64", "decode_error"})
UNKNOWN_CODEC = "unknown"  # frames of a connection that never gave a usable ``start``
RECORDING_ERROR_KINDS = ("open", "write")  # labels of mediastream_recording_errors_total

_FRAMES, _BYTES, _DROPPED, _REORDERED, _LATE = range(5)

LAG_NAME = f"{PREFIX}_handler_lag_seconds"
_LAG_DOC = "How far behind the stream's real-time clock each frame's on_audio finished."
# the ``le`` labels, as prometheus_client's Histogram writes them (str(1.0) == "1.0")
_LAG_LE = (*(str(bound) for bound in LAG_BUCKETS), "+Inf")
# multiprocess mode only: non-cumulative bucket counts and the sum, as counters in the mmap
# files; never exported under these names (``_Merged`` turns them into ``LAG_NAME``)
_LAG_RAW_BUCKETS = f"{LAG_NAME}_raw_bucket"
_LAG_RAW_SUM = f"{LAG_NAME}_raw_sum"


class QueuedCall(Protocol):
    """What the gauges read of a call (``runtime.call.Call`` has it)."""

    @property
    def queued_ms(self) -> float:
        """Audio queued for playback, not yet sent; reading it never creates a player."""
        ...


class _Batch:
    """Growth taken from the meters and not yet written into prometheus_client."""

    __slots__ = ("errors", "growth", "lag_counts", "lag_sum")

    def __init__(self) -> None:
        self.growth: dict[str, list[int]] = {}  # codec -> growth, indexed by _FRAMES ...
        self.errors: dict[tuple[str, str], int] = {}  # (codec, kind) -> count
        self.lag_counts = [0] * len(_LAG_LE)
        self.lag_sum = 0.0


class StreamMeter:
    """One connection's numbers as plain Python ints and floats: all the media path touches.

    Implements ``SocketMeter``. ``ServerMetrics`` moves them (and how much the session's own
    counters grew) into its batch with ``take``.
    """

    __slots__ = (
        "_on_close",
        "_origin",
        "_pushed",
        "closed",
        "errors",
        "lag_buckets",
        "lag_counts",
        "lag_sum",
        "session",
    )

    def __init__(self, session: Session, on_close: Callable[[StreamMeter], None]) -> None:
        self.session = session
        self.lag_counts = [0] * len(_LAG_LE)  # one per bucket; the last is +Inf
        # the same buckets, counted in bulk by the stream's quality report (it times the
        # frames when it is on: a frame is timed once, for both), which adds to ``lag_sum``
        self.lag_buckets = np.zeros(len(_LAG_LE), np.int64)
        self.lag_sum = 0.0
        self.errors: dict[str, int] = {}
        self.closed = False
        self._on_close = on_close
        self._origin: float | None = None  # monotonic time of sample 0 on this socket's clock
        self._pushed = (0, 0, 0, 0, 0)  # session counts already taken (see _FRAMES ...)

    def handled(
        self,
        event: Audio,
        arrived: float,
        _now: Callable[[], float] = monotonic,  # bound here: locals are faster than globals
        _bisect: Callable[[Sequence[float], float], int] = bisect_left,
        _bounds: tuple[float, ...] = LAG_BUCKETS,
    ) -> None:
        """``on_audio`` finished for ``event``: record how far behind real time that was.

        The clock starts when the connection's first audio arrived (``arrived``, the receive
        time of the frame that released it) and runs at the sample rate: a frame is due at
        ``first arrival + (position - first position) / rate``. Per frame: one ``monotonic()``,
        a division, a ``bisect`` (about 0.25 µs in all).
        """
        now = _now()
        due = event.position / event.sample_rate
        origin = self._origin
        if origin is None:
            origin = self._origin = min(arrived, now) - due
        lag = now - origin - due
        if lag > 0.0:
            self.lag_sum += lag
            self.lag_counts[_bisect(_bounds, lag)] += 1  # bucket i: lag <= _bounds[i]
        else:
            self.lag_counts[0] += 1

    lag_bounds = _LAG_BOUNDS  # what the quality report counts into ``lag_buckets`` by

    def error(self, kind: str) -> None:
        """One input error of ``kind`` (an ``Error`` event's kind) on this connection."""
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def close(self) -> None:
        """The connection ended: push what it counted now, not at the next batch."""
        if not self.closed:
            self.closed = True
            self._on_close(self)

    def take(self, batch: _Batch, *, final: bool) -> None:
        """Move this meter's growth since the last ``take`` into ``batch``.

        Frames before ``start`` wait until their codec is known, unless this is the ``final``
        take, where they count under ``UNKNOWN_CODEC``.
        """
        session = self.session
        fmt = session.media_format
        codec = fmt.encoding if fmt is not None else (UNKNOWN_CODEC if final else None)
        if codec is not None:
            stats = session.stats
            gaps = reordered = late = 0
            for track in session.reorder_stats().values():
                gaps += track.gaps
                reordered += track.reordered
                late += track.late
            now = (stats.media_frames, stats.audio_bytes, gaps, reordered, late)
            growth = batch.growth.setdefault(codec, [0] * 5)
            for index, (value, pushed) in enumerate(zip(now, self._pushed, strict=True)):
                growth[index] += value - pushed
            self._pushed = now
        if self.errors:
            label = codec or UNKNOWN_CODEC
            for kind, count in self.errors.items():
                batch.errors[label, kind] = batch.errors.get((label, kind), 0) + count
            self.errors.clear()
        if self.lag_buckets.any():
            for index, count in enumerate(self.lag_buckets.tolist()):
                batch.lag_counts[index] += count
            self.lag_buckets[:] = 0
        if self.lag_sum or any(self.lag_counts):
            counts = self.lag_counts
            for index, count in enumerate(counts):
                batch.lag_counts[index] += count
                counts[index] = 0
            batch.lag_sum += self.lag_sum
            self.lag_sum = 0.0


def _lag_family(counts: Sequence[float], total: float, created: float | None) -> Metric:
    """``handler_lag_seconds`` from non-cumulative bucket ``counts`` (the last is +Inf)."""
    family = HistogramMetricFamily(LAG_NAME, _LAG_DOC)
    family.add_metric([], list(zip(_LAG_LE, accumulate(counts), strict=True)), total)
    if created is not None:  # as prometheus_client's Histogram exports it, in one process
        family.add_sample(f"{LAG_NAME}_created", {}, created)
    return family


class _LagHistogram(Collector):
    """``handler_lag_seconds``, filled in bulk from bucket counts (see the module docstring).

    One process: the totals are plain numbers here, and this object is the collector
    registered in ``registry``. Multiprocess (``registry`` None): they go to two counters in
    the mmap files, which ``_Merged`` turns back into the histogram at scrape time.
    """

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self._created = time.time()
        # (counts, sum), replaced in one assignment: a scrape from another thread sees all of
        # a batch or none of it
        self._totals: tuple[tuple[int, ...], float] = ((0,) * len(_LAG_LE), 0.0)
        self._raw: tuple[list[Counter], Counter] | None = None
        if registry is None:
            buckets = Counter(_LAG_RAW_BUCKETS, _LAG_DOC, ("le",), registry=None)
            total = Counter(_LAG_RAW_SUM, _LAG_DOC, registry=None)
            self._raw = ([buckets.labels(le) for le in _LAG_LE], total)  # present at 0
        else:
            registry.register(self)

    def add(self, counts: Sequence[int], total: float) -> None:
        """Add ``counts[i]`` observations to bucket ``i``, and ``total`` to the sum."""
        if self._raw is not None:
            children, raw_sum = self._raw
            for child, count in zip(children, counts, strict=True):
                if count:
                    child.inc(count)
            raw_sum.inc(total)
        else:
            before, before_sum = self._totals
            now = tuple(a + b for a, b in zip(before, counts, strict=True))
            self._totals = (now, before_sum + total)

    def describe(self) -> Iterable[Metric]:
        """Its name, so that the registry refuses a second collector of the same series."""
        return [HistogramMetricFamily(LAG_NAME, _LAG_DOC)]

    def collect(self) -> Iterable[Metric]:
        counts, total = self._totals
        return [_lag_family(counts, total, self._created)]


class _Merged(Collector):
    """Every worker's metrics (``MultiProcessCollector``), the lag histogram rebuilt."""

    def __init__(self, path: str) -> None:
        self._source = CollectorRegistry()
        multiprocess.MultiProcessCollector(self._source, path=path)

    def collect(self) -> Iterator[Metric]:
        counts = dict.fromkeys(_LAG_LE, 0.0)
        total = 0.0
        for family in self._source.collect():
            if family.name == _LAG_RAW_BUCKETS:
                for sample in family.samples:
                    if sample.name == f"{_LAG_RAW_BUCKETS}_total":
                        counts[sample.labels["le"]] += sample.value
            elif family.name == _LAG_RAW_SUM:
                total = sum(s.value for s in family.samples if s.name == f"{_LAG_RAW_SUM}_total")
            else:
                yield family
        yield _lag_family(list(counts.values()), total, None)


class _Metrics:
    """The prometheus_client objects, registered in ``registry`` (None: multiprocess mode)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, labels, registry=registry)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"{PREFIX}_{name}", doc, registry=registry, multiprocess_mode="livesum")

        codec = ("codec",)
        self.active_streams = gauge(
            "active_streams", "Streams open: live, or waiting for their carrier to reconnect."
        )
        self.active_connections = gauge("active_connections", "Stream sockets open.")
        self.playback_queued = gauge(
            "playback_queued_seconds", "Audio queued on our side for playback, not yet sent."
        )
        self.frames = counter("frames_received", "Media frames received.", codec)
        self.bytes = counter(
            "bytes_received", "Audio payload bytes received (decoded base64).", codec
        )
        self.dropped = counter(
            "frames_dropped", "Frames given up as lost: handlers got silence instead.", codec
        )
        self.reordered = counter(
            "frames_reordered", "Frames that arrived after a later frame and were put back.", codec
        )
        self.late = counter(
            "frames_late", "Frames that arrived after their slot had been given up.", codec
        )
        self.decode_errors = counter(
            "decode_errors", "Frames whose audio could not be decoded.", ("codec", "kind")
        )
        self.input_errors = counter(
            "input_errors", "Bad input of every kind, logged once per stream.", ("kind",)
        )
        self.handler_errors = counter(
            "handler_errors", "Exceptions raised by handler methods (each ends its stream)."
        )
        self.refused = counter(
            "sockets_refused",
            "Sockets or starts refused: stream or socket limit, stream id live elsewhere, no "
            "auth token in time.",
            ("reason",),
        )
        self.handler_lag = _LagHistogram(registry)
        self.recording_errors = counter(
            "recording_errors",
            "Failed attempts to create or write a recording (each retried with backoff).",
            ("kind",),
        )
        for kind in RECORDING_ERROR_KINDS:  # present at 0 before the first fault
            self.recording_errors.labels(kind)
        self.recording_lost = counter(
            "recording_lost_seconds",
            "Audio recordings could not keep (backlog full, or unwritable at close), per track.",
        )
        # the (open_errors, write_errors, lost_seconds) of each RecordingStats pushed so far
        self.recording_pushed: dict[RecordingStats, tuple[int, int, float]] = {}
        # what each ServerMetrics last reported to the gauges, summed (several servers in one
        # process share one set of metrics in multiprocess mode)
        self.gauge_parts: dict[ServerMetrics, tuple[float, float, float]] = {}
        # uploads to object storage (``serve --upload``): what waits, what went, what failed
        self.upload_pending_files = gauge(
            "upload_pending_files", "Finished recording files waiting for upload."
        )
        self.upload_pending_bytes = gauge(
            "upload_pending_bytes", "Disk used by finished recording files waiting for upload."
        )
        self.uploaded_files = counter("uploaded_files", "Files uploaded, verified and removed.")
        self.uploaded_bytes = counter("uploaded_bytes", "Bytes uploaded, verified and removed.")
        self.upload_failures = counter(
            "upload_failures",
            "Failed upload attempts (each retried with backoff): the store's request, the "
            "check of the stored object, reading the local file.",
            ("kind",),
        )
        for kind in FAILURE_KINDS:  # present at 0 before the first failure
            self.upload_failures.labels(kind)
        # the (files, bytes, failures by kind) of each UploadStats pushed so far
        self.upload_pushed: dict[UploadStats, tuple[int, int, dict[str, int]]] = {}


_process_metrics: _Metrics | None = None


def _shared_metrics() -> _Metrics:
    """Multiprocess mode: one set per process, since two objects for the same series would
    overwrite each other's value in the mmap file."""
    global _process_metrics
    if _process_metrics is None:
        _process_metrics = _Metrics(None)
    return _process_metrics


def multiprocess_dir() -> str | None:
    """The folder of multiprocess mode, or None when each server exposes only itself."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return None
    if not getattr(values.ValueClass, "_multiprocess", False):
        logger.warning(
            "%s is set but prometheus_client was imported before it was: metrics cover this "
            "process only (set it in the environment the process starts with)",
            MULTIPROC_ENV,
        )
        return None
    os.makedirs(path, exist_ok=True)
    return path


def prepare_multiprocess_dir(path: str | Path) -> None:
    """For the supervisor, before it starts workers: create ``path``, drop an old run's files."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink(missing_ok=True)


def mark_worker_dead(pid: int, path: str | Path | None = None) -> None:
    """For the supervisor: worker ``pid`` exited, so its gauges leave the sums (its counters
    stay). ``path`` defaults to ``$PROMETHEUS_MULTIPROC_DIR``; without either, nothing to do."""
    folder = str(path) if path is not None else os.environ.get(MULTIPROC_ENV)
    if folder:
        multiprocess.mark_process_dead(pid, folder)


class ServerMetrics:
    """One server's metrics, the runtime's ``Observer``: a ``StreamMeter`` per socket, batches.

    ``recording_stats`` is where the server's recorders count their faults (default:
    ``process_stats``, every recorder in the process). Without ``PROMETHEUS_MULTIPROC_DIR``,
    metrics go into ``registry`` (default: a new one of this server's own, with the standard
    process metrics), never into prometheus_client's global registry unless passed it.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        interval: float = FLUSH_SECONDS,
        recording_stats: RecordingStats | None = None,
        upload_stats: UploadStats | None = None,
    ) -> None:
        self.recording_stats = recording_stats if recording_stats is not None else process_stats
        self.upload_stats = upload_stats if upload_stats is not None else _process_upload_stats
        self.interval = interval
        self.multiprocess_dir = multiprocess_dir()
        self.registry: CollectorRegistry | None
        if self.multiprocess_dir is not None:
            self.registry = None
            self._metrics = _shared_metrics()
        else:
            self.registry = registry if registry is not None else _own_registry()
            self._metrics = _Metrics(self.registry)
        self._calls: Callable[[], Iterable[QueuedCall]] | None = None
        # rare events, counted as plain ints and pushed with the batch
        self._handler_errors = 0
        self._refusals: dict[str, int] = {}  # sockets or starts refused, by reason
        self._recording_open_failures = 0  # recorders that could not even be made
        self._live: dict[StreamMeter, None] = {}  # insertion-ordered set
        self._batch = _Batch()
        self._task: asyncio.Task[None] | None = None
        # faults before this server existed are not its own (unless its metrics are shared)
        self._metrics.recording_pushed.setdefault(
            self.recording_stats, _recording_counts(self.recording_stats)
        )
        uploads = self.upload_stats
        self._metrics.upload_pushed.setdefault(
            uploads, (uploads.uploaded_files, uploads.uploaded_bytes, dict(uploads.failures))
        )

    # ------------------------------------------------------------ Observer

    def socket_opened(self, session: Session) -> StreamMeter:
        """A meter for a new socket; ``StreamMeter.close()`` when the socket ends."""
        meter = StreamMeter(session, self._finish)
        self._live[meter] = None
        return meter

    def handler_failed(self) -> None:
        """A handler method raised (or was cancelled at the drain deadline)."""
        self._handler_errors += 1

    def refused(self, reason: str) -> None:
        """One more socket or ``start`` refused for ``reason``."""
        self._refusals[reason] = self._refusals.get(reason, 0) + 1

    def recording_open_failed(self) -> None:
        """A stream's recorder could not even be created."""
        self._recording_open_failures += 1

    def watch(self, calls: Callable[[], Iterable[QueuedCall]]) -> None:
        """``calls()`` lists the calls of the server's streams (live or waiting for a
        reconnect): the stream count and the playback queue gauges read them each flush."""
        self._calls = calls

    def _finish(self, meter: StreamMeter) -> None:
        self._live.pop(meter, None)
        meter.take(self._batch, final=True)
        self._push()

    # ------------------------------------------------------------ batches

    def flush(self) -> None:
        """Push every live connection's growth, the handler errors and the gauges."""
        for meter in self._live:
            meter.take(self._batch, final=False)
        self._push()
        self._update_gauges()

    def _push(self) -> None:
        """Write the pending batch into prometheus_client: a few calls per codec, not per frame."""
        m = self._metrics
        batch = self._batch
        for codec, growth in batch.growth.items():
            m.frames.labels(codec).inc(growth[_FRAMES])
            m.bytes.labels(codec).inc(growth[_BYTES])
            m.dropped.labels(codec).inc(growth[_DROPPED])
            m.reordered.labels(codec).inc(growth[_REORDERED])
            m.late.labels(codec).inc(growth[_LATE])
        batch.growth.clear()
        for (codec, kind), count in batch.errors.items():
            m.input_errors.labels(kind).inc(count)
            if kind in DECODE_ERROR_KINDS:
                m.decode_errors.labels(codec, kind).inc(count)
        batch.errors.clear()
        if any(batch.lag_counts):
            m.handler_lag.add(batch.lag_counts, batch.lag_sum)
            batch.lag_counts = [0] * len(batch.lag_counts)
            batch.lag_sum = 0.0
        if self._handler_errors:
            m.handler_errors.inc(self._handler_errors)
            self._handler_errors = 0
        for reason, count in self._refusals.items():
            m.refused.labels(reason).inc(count)
        self._refusals.clear()
        self._push_recording(m)
        self._push_uploads(m)

    def _push_recording(self, m: _Metrics) -> None:
        """The growth of the recorders' fault counts, and the recorders never created."""
        stats = self.recording_stats
        now = _recording_counts(stats)
        before = m.recording_pushed.get(stats, (0, 0, 0.0))
        if now != before:
            opens, writes, lost = (a - b for a, b in zip(now, before, strict=True))
            if opens:
                m.recording_errors.labels("open").inc(opens)
            if writes:
                m.recording_errors.labels("write").inc(writes)
            if lost > 0:
                m.recording_lost.inc(lost)
            m.recording_pushed[stats] = now
        if self._recording_open_failures:
            m.recording_errors.labels("open").inc(self._recording_open_failures)
            self._recording_open_failures = 0

    def _push_uploads(self, m: _Metrics) -> None:
        """The growth of the uploaders' counts since the last push."""
        stats = self.upload_stats
        files, size, failures = m.upload_pushed.get(stats, (0, 0, {}))
        if stats.uploaded_files > files:
            m.uploaded_files.inc(stats.uploaded_files - files)
        if stats.uploaded_bytes > size:
            m.uploaded_bytes.inc(stats.uploaded_bytes - size)
        for kind, count in stats.failures.items():
            if count > failures.get(kind, 0):
                m.upload_failures.labels(kind).inc(count - failures.get(kind, 0))
        m.upload_pushed[stats] = (stats.uploaded_files, stats.uploaded_bytes, dict(stats.failures))

    def _update_gauges(self, *, closing: bool = False) -> None:
        m = self._metrics
        if closing:
            m.gauge_parts.pop(self, None)
        else:
            streams, queued_ms = 0, 0.0
            for call in self._calls() if self._calls is not None else ():
                streams += 1
                queued_ms += call.queued_ms
            m.gauge_parts[self] = (streams, len(self._live), queued_ms / 1000)
        parts = m.gauge_parts.values()
        m.active_streams.set(sum(p[0] for p in parts))
        m.active_connections.set(sum(p[1] for p in parts))
        m.playback_queued.set(sum(p[2] for p in parts))
        m.upload_pending_files.set(0 if closing else self.upload_stats.pending_files)
        m.upload_pending_bytes.set(0 if closing else self.upload_stats.pending_bytes)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Push a batch every ``interval`` seconds from a task on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.flush()
            except Exception:
                logger.exception("pushing metrics failed")

    async def close(self) -> None:
        """Stop the periodic task, push the last batch, leave the gauges' sums."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for meter in list(self._live):
            meter.take(self._batch, final=True)
        self._push()
        self._update_gauges(closing=True)

    # ------------------------------------------------------------ exposition

    def render(self) -> tuple[bytes, str]:
        """The ``/metrics`` body and content type, after pushing what is pending here."""
        self.flush()
        if self.multiprocess_dir is not None:
            registry = CollectorRegistry()
            registry.register(_Merged(self.multiprocess_dir))
            return generate_latest(registry), CONTENT_TYPE_LATEST
        assert self.registry is not None
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _recording_counts(stats: RecordingStats) -> tuple[int, int, float]:
    return (stats.open_errors, stats.write_errors, stats.lost_seconds)


def _own_registry() -> CollectorRegistry:
    """A registry for one server, with the standard process_* and python_* metrics."""
    registry = CollectorRegistry()
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        with contextlib.suppress(Exception):  # e.g. no /proc: those metrics are just absent
            collector(registry=registry)
    return registry


__all__ = [
    "FLUSH_SECONDS",
    "LAG_BUCKETS",
    "ServerMetrics",
    "StreamMeter",
    "mark_worker_dead",
    "multiprocess_dir",
    "prepare_multiprocess_dir",
]
