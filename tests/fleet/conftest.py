"""A fleet on 127.0.0.1: HAProxy (Debian's package) with the shipped ``deploy/haproxy.cfg``, in
front of three ``mediastream serve`` processes, for the multi-host tests.

API (``fleet`` fixture, or ``start_fleet(tmp_path, ...)`` as a context manager for another
scope or other server flags)::

    fleet.lb_port                    # HAProxy's port
    fleet.url("/i/a/stream")         # ws://127.0.0.1:<lb>/i/a/stream (the path through the LB)
    fleet.instance_url("a")          # ws://127.0.0.1:<lb>/i/a/stream: the URL naming instance a
    fleet.instances["a"]             # an ``Instance``: .id .port .record_dir .events_path .log_path
                                     #   .proc .events() .wavs() .alive()
    fleet.kill("a")                  # SIGKILL, waited for
    fleet.stop("a")                  # SIGTERM (a drain, as Kubernetes stops a pod), waited for
    fleet.terminate("a")             # SIGTERM, not waited for (``fleet.wait("a")`` later)
    fleet.start("a")                 # (re)start on the same port, record dir and events file,
                                     #   and wait until HAProxy routes /i/a/ to it again
    fleet.wait_routed("a")           # until /i/a/healthz through HAProxy answers from a
    fleet.events()                   # every instance's handler calls: {id: [record, ...]}
    fleet.signer                     # the Ed25519 key the instances verify callbacks with
    fleet.haproxy_log()              # HAProxy's output so far

Each instance runs ``tests/fleet/handlers.py:LifecycleLog``, which appends one JSON line per
handler call to its ``events_path`` (``{"event": "on_start", "stream_id": ..., "handler":
...}``), records to its own ``record_dir`` and logs to its ``log_path``. ``start_fleet(...,
args=[...])`` adds flags to every ``serve`` (``--resume-grace 10``, ...; each runs with
``--drain-seconds 5`` unless ``args`` give another). Everything started is
ended by its PID at teardown (SIGKILL after a bounded wait). Without ``haproxy`` on the PATH
the tests skip, saying so (``.ci/run`` installs it: ``apt-get install haproxy``).

The methods block (they wait for processes): an async test with calls in flight runs them
in a thread, ``await asyncio.to_thread(fleet.start, "a")``, so its calls keep going.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fleet.handlers import EVENTS_ENV
from tests.processes import REPO, env, free_port
from tests.telnyx.helpers import Signer

HAPROXY_CFG = REPO / "deploy" / "haproxy.cfg"
HANDLER = "tests.fleet.handlers:LifecycleLog"
IDS = ("a", "b", "c")
START_SECONDS = 60.0  # a server process's start-up (numba caches are warm after the first)
STOP_SECONDS = 30.0
DRAIN_SECONDS = 5.0  # each instance's --drain-seconds unless ``args`` say otherwise


def haproxy_binary() -> str:
    """The ``haproxy`` to run, or a skip that says why there is none."""
    found = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)),
        None,
    )
    if found is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy; .ci/run installs it)")
    return found


def haproxy_env(bind: str, servers: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The environment ``deploy/haproxy.cfg`` reads: where to listen, each server's id and
    ``host:port``."""
    values = {"MEDIASTREAM_LB_BIND": bind}
    for number, (instance_id, address) in enumerate(servers, start=1):
        values[f"MEDIASTREAM_{number}_ID"] = instance_id
        values[f"MEDIASTREAM_{number}_ADDR"] = address
    return {**os.environ, **values}


@dataclass
class Instance:
    """One ``mediastream serve --instance-id ID`` process and the files it writes."""

    id: str
    port: int
    root: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def record_dir(self) -> Path:
        return self.root / "recordings"

    @property
    def events_path(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def events(self) -> list[dict[str, Any]]:
        """The handler calls so far, in order (a line being written is left for later)."""
        if not self.events_path.exists():
            return []
        lines = self.events_path.read_text().splitlines(keepends=True)
        return [json.loads(line) for line in lines if line.endswith("\n")]

    def wavs(self) -> list[Path]:
        return sorted(self.record_dir.glob("*.wav"))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Fleet:
    """HAProxy and the instances behind it; see the module docstring."""

    root: Path
    args: Sequence[str] = ()
    ids: Sequence[str] = IDS
    signer: Signer = field(default_factory=Signer)
    lb_port: int = 0
    instances: dict[str, Instance] = field(default_factory=dict)
    haproxy: subprocess.Popen[bytes] | None = None

    # -------------------------------------------------------------- addresses

    def url(self, path: str = "/stream") -> str:
        return f"ws://127.0.0.1:{self.lb_port}{path}"

    def instance_url(self, instance_id: str, path: str = "/stream") -> str:
        return self.url(f"/i/{instance_id}{path}")

    # -------------------------------------------------------------- instances

    def start(self, instance_id: str, *, routed: bool = True) -> Instance:
        """Start (or restart) an instance on its port; with ``routed``, wait until HAProxy
        sends ``/i/<id>/`` to it."""
        instance = self.instances[instance_id]
        assert not instance.alive(), f"instance {instance_id} is running"
        instance.root.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "mediastream", "serve",
            "--host", "127.0.0.1", "--port", str(instance.port),
            "--instance-id", instance_id,
            "--record-dir", str(instance.record_dir),
            "--handler", HANDLER,
            "--telnyx-public-key", self.signer.public_key,
            "--drain-seconds", str(DRAIN_SECONDS),  # ``args`` come after it, and win
            *self.args,
        ]  # fmt: skip
        offset = instance.log_path.stat().st_size if instance.log_path.exists() else 0
        with instance.log_path.open("ab") as log:
            instance.proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**env(), EVENTS_ENV: str(instance.events_path)},
                cwd=REPO,
            )
        instance.starts += 1
        deadline = time.monotonic() + START_SECONDS
        while "listening on ws://" not in instance.log()[offset:]:
            if instance.proc.poll() is not None or time.monotonic() > deadline:
                self.kill(instance_id)
                raise RuntimeError(f"instance {instance_id} did not start:\n{instance.log()}")
            time.sleep(0.05)
        if routed and self.haproxy is not None:
            self.wait_routed(instance_id)
        return instance

    def kill(self, instance_id: str) -> None:
        """SIGKILL the instance (if it runs), and wait for it."""
        proc = self.instances[instance_id].proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(STOP_SECONDS)

    def terminate(self, instance_id: str) -> None:
        """SIGTERM: the instance drains (``--drain-seconds``) and exits; not waited for."""
        proc = self.instances[instance_id].proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    def wait(self, instance_id: str, timeout: float = STOP_SECONDS) -> int:
        """The instance's exit status, once it has exited."""
        proc = self.instances[instance_id].proc
        assert proc is not None
        return proc.wait(timeout)

    def stop(self, instance_id: str, timeout: float = STOP_SECONDS) -> int:
        """SIGTERM, then wait for the drain to end; the exit status."""
        self.terminate(instance_id)
        return self.wait(instance_id, timeout)

    def wait_routed(self, instance_id: str, timeout: float = 20.0) -> None:
        """Until ``GET /i/<id>/healthz`` through HAProxy is answered by that instance (HAProxy
        has seen it up: a restarted one needs a passing health check first)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.healthz(f"/i/{instance_id}/healthz").get("instance") == instance_id:
                return
            if self.haproxy is not None and self.haproxy.poll() is not None:
                raise RuntimeError(f"HAProxy exited:\n{self.haproxy_log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"HAProxy does not route to instance {instance_id}")
            time.sleep(0.1)

    def healthz(self, path: str = "/healthz") -> dict[str, Any]:
        """``GET path`` through HAProxy: its JSON body, or {} if there was no good answer."""
        return _get_json(self.lb_port, path)

    def events(self) -> dict[str, list[dict[str, Any]]]:
        return {instance_id: i.events() for instance_id, i in self.instances.items()}

    def haproxy_log(self) -> str:
        path = self.root / "haproxy.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -------------------------------------------------------------- the whole fleet

    def open(self) -> None:
        binary = haproxy_binary()
        for instance_id in self.ids:
            self.instances[instance_id] = Instance(
                instance_id, free_port(), self.root / instance_id
            )
        for instance_id in self.ids:
            self.start(instance_id, routed=False)
        self.lb_port = free_port()
        servers = [(i.id, f"127.0.0.1:{i.port}") for i in self.instances.values()]
        with (self.root / "haproxy.log").open("ab") as log:
            self.haproxy = subprocess.Popen(
                [binary, "-db", "-f", str(HAPROXY_CFG)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=haproxy_env(f"127.0.0.1:{self.lb_port}", servers),
            )
        for instance_id in self.ids:
            self.wait_routed(instance_id)

    def close(self) -> None:
        """End every process started, by PID: instances by SIGTERM (recordings finalized),
        SIGKILL after a bounded wait; then HAProxy."""
        for instance_id in self.instances:
            self.terminate(instance_id)
        for instance in self.instances.values():
            if instance.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    instance.proc.wait(STOP_SECONDS)
                self.kill(instance.id)
        if self.haproxy is not None:
            self.haproxy.terminate()
            try:
                self.haproxy.wait(10)
            except subprocess.TimeoutExpired:
                self.haproxy.kill()
                self.haproxy.wait(10)


def _get_json(port: int, path: str) -> dict[str, Any]:
    """One plain GET (a blocking socket: usable from any thread, loop or none)."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(request.encode())
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError:
        return {}
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    if not re.match(rb"HTTP/1\.[01] 200", head):
        return {}
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@contextlib.contextmanager
def start_fleet(
    root: Path, *, args: Sequence[str] = (), ids: Sequence[str] = IDS
) -> Iterator[Fleet]:
    """HAProxy and ``ids`` instances, each ``serve`` given ``args`` too; all ended on exit."""
    fleet = Fleet(root, args=args, ids=ids)
    try:
        fleet.open()
        yield fleet
    finally:
        fleet.close()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """A fresh fleet of three instances (a, b, c) behind HAProxy, for one test."""
    with start_fleet(tmp_path / "fleet") as started:
        yield started
