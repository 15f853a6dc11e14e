"""Several server processes on one port: ``mediastream serve --workers N``.

One event loop decodes, records and runs handlers for every stream of a process, so a busy
server needs more processes. Each worker is a whole ``mediastream serve`` of its own that binds
the same port with ``SO_REUSEPORT``: the kernel spreads new connections across the workers,
nothing passes sockets between processes, and a worker that dies takes only its own sockets.

Workers are fresh interpreters (``python -m mediastream ... serve ... --ready-fd N``), never
forks of the supervisor: environment such as ``PROMETHEUS_MULTIPROC_DIR`` must be in place
before anything is imported, and forking a process that has started threads is unsafe.

The supervisor (this module, run by ``cmd_serve``) holds the port (a bound, never listening
``SO_REUSEPORT`` socket, which also fixes the port for ``--port 0``), starts the workers,
prints the "listening" line once all of them are listening, restarts a worker that dies (with
a backoff, and gives up on a crash loop), passes SIGTERM/SIGINT on so that every worker drains,
and waits for them. Two pipes tie a worker to it: ``--ready-fd`` (the worker writes ``ready``
once it listens) and ``--lifeline-fd`` (end of file there means the supervisor died: the
worker drains, as on SIGTERM, instead of serving on unsupervised).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mediastream.server.websocket import MediaServer

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # as in server/metrics.py, imported late (see below)
RESTART_DELAY = 0.1  # seconds before the first restart of a worker; doubles per recent crash
RESTART_DELAY_MAX = 5.0
CRASH_WINDOW = 60.0  # crashes of one worker counted over this many seconds ...
CRASH_LIMIT = 5  # ... and more than this many means a crash loop: the supervisor gives up
READY = b"ready\n"


# ---------------------------------------------------------------- the port


def reserve_port(host: str, port: int) -> tuple[list[socket.socket], int]:
    """Bind (never listen on) ``SO_REUSEPORT`` sockets at ``host:port``; returns them and the
    port, chosen by the kernel if ``port`` is 0.

    Held for the supervisor's lifetime, they keep the port ours while every worker is
    restarting; not listening, they never receive a connection. A plain bind first proves
    that nobody else uses the port: ``SO_REUSEPORT`` alone would happily share it with
    another server of the same user.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("--workers needs SO_REUSEPORT (Linux)")
    if not sys.platform.startswith("linux"):
        logger.warning("SO_REUSEPORT spreads connections across workers on Linux only")
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    reserved: list[socket.socket] = []
    seen: set[tuple[int, str]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address[0]) in seen:
                continue
            seen.add((family, address[0]))
            address = (address[0], port, *address[2:])
            with socket.socket(family, kind, proto) as probe:  # not shared: fails if taken
                _bind(probe, address, reuse_port=False)
                port = probe.getsockname()[1]
            sock = socket.socket(family, kind, proto)
            reserved.append(sock)
            _bind(sock, (address[0], port, *address[2:]), reuse_port=True)
    except BaseException:
        for sock in reserved:
            sock.close()
        raise
    return reserved, port


def _bind(sock: socket.socket, address: tuple[object, ...], *, reuse_port: bool) -> None:
    """Bind with the options ``loop.create_server`` sets, so the workers' sockets fit."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind(address)


# ---------------------------------------------------------------- the worker's side


def worker_ready(ready_fd: int, lifeline_fd: int | None) -> Callable[[MediaServer], None]:
    """The worker's ``on_ready``: tell the supervisor we listen, and drain if it dies."""

    def on_ready(server: MediaServer) -> None:
        try:
            os.write(ready_fd, READY)
        finally:
            os.close(ready_fd)
        if lifeline_fd is not None:
            _watch_lifeline(lifeline_fd)

    return on_ready


def _watch_lifeline(fd: int) -> None:
    """Nothing is ever written to the lifeline: readable means end of file, the supervisor
    is gone. Drain as on SIGTERM (``serve_forever``'s handler), finishing every recording."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)

    def on_readable() -> None:
        with contextlib.suppress(BlockingIOError):
            if os.read(fd, 64):
                return
            loop.remove_reader(fd)
            os.close(fd)
            logger.warning("the supervisor is gone: draining")
            os.kill(os.getpid(), signal.SIGTERM)

    loop.add_reader(fd, on_readable)


# ---------------------------------------------------------------- the supervisor


@dataclass(eq=False)
class _Slot:
    """Worker number ``index`` across its restarts."""

    index: int
    proc: asyncio.subprocess.Process | None = None
    started: bool = False  # has listened at least once
    crashes: deque[float] = field(default_factory=deque)


class Supervisor:
    """Runs ``workers`` copies of ``python -m mediastream <argv>`` on one port.

    ``argv`` is the supervisor's own command line (``serve`` last, so that options appended
    to it are ``serve``'s); each worker gets ``--port``, ``--ready-fd`` and ``--lifeline-fd``
    added. ``on_ready(port)`` runs once, when every worker listens.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        workers: int,
        host: str,
        port: int,
        on_ready: Callable[[int], None] | None = None,
        python: str = sys.executable,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.argv = list(argv)
        self.host = host
        self.port = port
        self.on_ready = on_ready
        self.python = python
        self.slots = [_Slot(i + 1) for i in range(workers)]
        self.exit_code = 0
        self._stopping = asyncio.Event()
        self._all_started = asyncio.Event()
        self._signals = 0
        self._lifeline: tuple[int, int] | None = None
        self._metrics_dir: str | None = None  # ours to remove at exit
        self._mark_dead: Callable[[int], None] | None = None

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        """Start the workers, supervise them until a signal has drained them; exit status."""
        try:
            sockets, self.port = reserve_port(self.host, self.port)
        except OSError as exc:
            raise OSError(f"cannot listen on {self.host}:{self.port}: {exc}") from exc
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []
        try:
            self._prepare_metrics()
            self._lifeline = os.pipe()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._on_signal, sig)
            tasks = [asyncio.create_task(self._run_slot(slot)) for slot in self.slots]
            every_slot = asyncio.gather(*tasks)  # ends when all stopped (or one failed)
            started = asyncio.create_task(self._all_started.wait())
            stopping = asyncio.create_task(self._stopping.wait())
            waits = {started, stopping, every_slot}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            started.cancel()
            stopping.cancel()
            if self._all_started.is_set() and not self._stopping.is_set():
                logger.info("%d workers listening on port %d", len(self.slots), self.port)
                if self.on_ready is not None:
                    self.on_ready(self.port)
            await every_slot
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            for task in tasks:
                task.cancel()
            await self._kill_all()  # only if something above failed: normally none is left
            if self._lifeline is not None:
                for fd in self._lifeline:
                    os.close(fd)
            for sock in sockets:
                sock.close()
            self._remove_metrics_dir()
        return self.exit_code

    def _on_signal(self, sig: signal.Signals) -> None:
        """First signal: every worker drains. Second: passed on, workers stop at once.
        Third: SIGKILL."""
        self._signals += 1
        if self._signals == 1:
            live = sum(1 for s in self.slots if s.proc is not None)
            logger.info("%s: draining %d worker(s)", sig.name, live)
            self._stop(sig)
        elif self._signals == 2:
            logger.info("second signal: workers stop now")
            self._send_all(sig)
        else:
            logger.warning("third signal: killing every worker")
            self.exit_code = 1
            self._send_all(signal.SIGKILL)

    def _stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """No more restarts; every worker gets ``sig`` (SIGTERM/SIGINT: drain)."""
        if not self._stopping.is_set():
            self._stopping.set()
            self._send_all(sig)

    def _fail(self) -> None:
        self.exit_code = 1
        self._stop()

    def _send_all(self, sig: signal.Signals) -> None:
        for slot in self.slots:
            if slot.proc is not None and slot.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.send_signal(sig)

    async def _kill_all(self) -> None:
        live = [s.proc for s in self.slots if s.proc is not None and s.proc.returncode is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        for proc in live:
            await proc.wait()
            self._worker_gone(proc.pid)

    # ------------------------------------------------------------ one worker

    async def _run_slot(self, slot: _Slot) -> None:
        """Start worker ``slot``, wait for it to exit, restart it unless stopping."""
        while not self._stopping.is_set():
            try:
                proc, ready_fd = await self._spawn(slot)
            except OSError as exc:
                logger.error("worker %d: cannot start: %s", slot.index, exc)
                self._fail()
                return
            if self._stopping.is_set():  # a signal came while it was starting
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            if await _read_ready(ready_fd):
                again = "re" if slot.started else ""
                logger.info("worker %d %sstarted, listening (pid %d)", slot.index, again, proc.pid)
                if not slot.started:
                    slot.started = True
                    if all(s.started for s in self.slots):
                        self._all_started.set()
            code = await proc.wait()
            slot.proc = None
            self._worker_gone(proc.pid)
            how = _describe_exit(code)
            if self._stopping.is_set():
                level = logging.INFO if code == 0 else logging.WARNING
                logger.log(level, "worker %d (pid %d) %s", slot.index, proc.pid, how)
                return
            if not slot.started:
                logger.error(
                    "worker %d (pid %d) %s before it was listening: stopping",
                    slot.index, proc.pid, how,
                )  # fmt: skip
                self._fail()
                return
            now = time.monotonic()
            slot.crashes.append(now)
            while slot.crashes[0] < now - CRASH_WINDOW:
                slot.crashes.popleft()
            if len(slot.crashes) > CRASH_LIMIT:
                logger.error(
                    "worker %d (pid %d) %s: %d crashes in %.0f s, giving up: stopping",
                    slot.index, proc.pid, how, len(slot.crashes), CRASH_WINDOW,
                )  # fmt: skip
                self._fail()
                return
            delay = min(RESTART_DELAY_MAX, RESTART_DELAY * 2 ** (len(slot.crashes) - 1))
            logger.warning(
                "worker %d (pid %d) %s unexpectedly; restarting it in %.1f s",
                slot.index, proc.pid, how, delay,
            )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _spawn(self, slot: _Slot) -> tuple[asyncio.subprocess.Process, int]:
        """A fresh interpreter running ``serve`` as a worker; returns it and the read end of
        its ready pipe."""
        assert self._lifeline is not None
        lifeline = self._lifeline[0]
        ready_r, ready_w = os.pipe()
        args = [
            *self.argv,
            "--port", str(self.port),
            "--ready-fd", str(ready_w),
            "--lifeline-fd", str(lifeline),
        ]  # fmt: skip
        try:
            slot.proc = await asyncio.create_subprocess_exec(
                self.python, "-m", "mediastream", *args,
                stdin=subprocess.DEVNULL,
                pass_fds=(ready_w, lifeline),
                process_group=0,  # Ctrl-C reaches the supervisor only, which passes it on once
            )  # fmt: skip
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)  # the worker holds the only write end: EOF if it dies
        return slot.proc, ready_r

    # ------------------------------------------------------------ metrics

    def _prepare_metrics(self) -> None:
        """Give the workers one ``PROMETHEUS_MULTIPROC_DIR`` (a fresh one unless set).

        The metrics code is imported here first, before the variable is set, so that this
        process itself stays in single-process mode and never writes files there.
        """
        from mediastream.server import metrics

        self._mark_dead = metrics.mark_worker_dead
        path = os.environ.get(MULTIPROC_ENV)
        if not path:
            path = self._metrics_dir = tempfile.mkdtemp(prefix="mediastream-metrics-")
            os.environ[MULTIPROC_ENV] = path
        metrics.prepare_multiprocess_dir(path)
        logger.debug("worker metrics in %s", path)

    def _worker_gone(self, pid: int) -> None:
        """Its gauges leave the sums that ``/metrics`` in the other workers reports."""
        if self._mark_dead is None:
            return
        try:
            self._mark_dead(pid)
        except Exception:
            logger.warning("cleaning up metrics of worker pid %d failed", pid, exc_info=True)

    def _remove_metrics_dir(self) -> None:
        if self._metrics_dir is not None:
            if os.environ.get(MULTIPROC_ENV) == self._metrics_dir:
                del os.environ[MULTIPROC_ENV]
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
            self._metrics_dir = None


async def _read_ready(fd: int) -> bool:
    """Wait for the worker's ``ready`` line; False if it exited (end of file) first."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    pipe = os.fdopen(fd, "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        return await reader.readline() == READY
    finally:
        transport.close()


def _describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with status {code}"


def run_supervisor(
    argv: Sequence[str],
    *,
    workers: int,
    host: str,
    port: int,
    on_ready: Callable[[int], None] | None = None,
) -> int:
    """Blocking: supervise ``workers`` worker processes until SIGTERM/SIGINT; exit status."""
    supervisor = Supervisor(argv, workers=workers, host=host, port=port, on_ready=on_ready)
    return asyncio.run(supervisor.run())
