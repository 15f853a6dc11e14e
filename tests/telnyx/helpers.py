"""Test helpers: an Ed25519 key pair that signs like Telnyx, and a raw HTTP/1.1 client.

The raw client writes exact bytes (chunked bodies, ``Expect``, wrong header names) so the
server's own parsing is what gets tested.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

FORM = "application/x-www-form-urlencoded"


@dataclass
class Signer:
    """A key pair standing in for the Telnyx account key."""

    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def public_key(self) -> str:
        """Base64 of the 32 raw bytes, as the Telnyx portal shows it."""
        return base64.b64encode(self.key.public_key().public_bytes_raw()).decode()

    def headers(self, body: bytes, *, timestamp: float | None = None) -> dict[str, str]:
        stamp = str(int(time.time() if timestamp is None else timestamp))
        signature = self.key.sign(stamp.encode() + b"|" + body)
        return {
            "telnyx-signature-ed25519": base64.b64encode(signature).decode(),
            "telnyx-timestamp": stamp,
        }


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    interim: list[int]  # 1xx status codes seen before the final one


async def raw_request(
    port: int,
    method: str,
    target: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    chunks: list[bytes] | None = None,
    wait_for_continue: bool = False,
) -> RawResponse:
    """One request on a fresh connection; ``chunks`` sends the body chunked."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        # one request per connection: read to EOF (a keep-alive server would hold it open)
        lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if chunks is not None:
            lines.append("Transfer-Encoding: chunked")
            body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\n"
        elif body:
            lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        interim: list[int] = []
        if wait_for_continue:
            status_line = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            interim.append(int(status_line.split()[1]))
        writer.write(body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 1"):  # an interim response the client did not wait for
        interim.append(int(head.split()[1]))
        head, _, payload = payload.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return RawResponse(int(status_line.split()[1]), parsed, payload, interim)
