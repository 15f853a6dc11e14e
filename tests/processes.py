"""Helpers to run the real command line in subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}


def mediastream(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mediastream", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(),
        cwd=REPO,
    )


def start_server(*args: str) -> tuple[subprocess.Popen[str], int]:
    """``mediastream serve --port 0 ...`` in a subprocess; returns it and its port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mediastream", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env(),
        cwd=REPO,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"listening on ws://[\d.]+:(\d+)/", line)
        if match:
            return proc, int(match.group(1))
    proc.kill()
    raise RuntimeError("server did not start:\n" + "".join(lines))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port}")


@contextlib.contextmanager
def example_server(
    script: str, *args: str, stop: signal.Signals = signal.SIGTERM
) -> Iterator[tuple[int, list[str]]]:
    """Run ``examples/<script>`` on a free port; yields (port, output), output filled at exit."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "examples" / script), "--port", str(port), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(),
    )  # fmt: skip
    output: list[str] = []
    try:
        wait_for_port(port)
        yield port, output
    finally:
        proc.send_signal(stop)
        output.append(proc.communicate(timeout=30)[0])


async def healthz(port: int) -> tuple[int, dict[str, object]]:
    """``GET /healthz`` over a raw socket: (status code, JSON body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await writer.drain()
    response = (await reader.read(4096)).decode()
    writer.close()
    head, _, body = response.partition("\r\n\r\n")
    return int(head.split()[1]), json.loads(body)
