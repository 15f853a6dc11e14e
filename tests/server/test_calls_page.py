"""``GET /calls`` in a real headless browser (Debian's ``chromium``, which ``.ci/run``
installs), driven over the DevTools protocol: a server with live simulated calls (real time),
the page loaded with the token, each live stream seen with a level that moves, an ended
stream's report and picture links resolving, and neither the token nor a custom parameter in
the page.

``MEDIASTREAM_DOCS_PICTURES=1`` also writes the README's screenshot (docs/calls.png).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from mediastream import MediaServer, StreamHandler, StreamOptions
from mediastream.logs import redacting_logger
from mediastream.protocol.frames import AUTH_TOKEN_KEY
from mediastream.simulate import plan_call, send_call, synthesize_speechlike

pytestmark = pytest.mark.slow  # real-time calls and a browser: about 10 s

REPO = Path(__file__).resolve().parents[2]
TOKEN = "page-t0ken-W4x"
SECRET = "param-secret-77Q"
CARRIER_LOG = redacting_logger("carrier")


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip(
            "Debian's chromium is not installed (.ci/run installs it with apt-get; "
            "apt-get install chromium): /calls is not tested in a browser"
        )
    return found


class DevTools:
    """One page of a headless chromium, over the DevTools protocol's WebSocket."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            reply = json.loads(message)
            future = self.waiting.pop(reply.get("id"), None)  # events have no id
            if future is not None and not future.done():
                future.set_result(reply)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        future = asyncio.get_running_loop().create_future()
        self.waiting[call_id] = future
        await self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, 30)
        assert "error" not in reply, (method, reply)
        return reply["result"]

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")


@asynccontextmanager
async def browser(tmp_path: Path) -> AsyncIterator[DevTools]:
    process = await asyncio.create_subprocess_exec(
        chromium_binary(),
        "--headless",
        "--no-sandbox",  # as root in a container
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1280,720",
        "--remote-debugging-port=0",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    drain: asyncio.Task[None] | None = None
    try:
        address = None
        async with asyncio.timeout(60):
            while address is None:
                line = (await process.stderr.readline()).decode(errors="replace")
                assert line, "chromium exited before it listened"
                found = re.search(r"DevTools listening on (ws://\S+)", line)
                address = found[1] if found else None

        async def swallow() -> None:
            assert process.stderr is not None
            while await process.stderr.read(65536):
                pass

        drain = asyncio.create_task(swallow())  # a full pipe would stall the browser
        port = re.search(r":(\d+)/", address)[1]  # type: ignore[index]
        async with httpx.AsyncClient() as client:
            targets = (await client.get(f"http://127.0.0.1:{port}/json/list")).json()
        page = next(t for t in targets if t["type"] == "page")
        async with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            tools = DevTools(ws)
            yield tools
            tools.reader.cancel()
    finally:
        if process.returncode is None:
            process.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 10)
            if process.returncode is None:
                process.kill()
                await process.wait()
        if drain is not None:
            drain.cancel()


ROWS = """JSON.stringify([...document.querySelectorAll('#live tbody tr')].map(tr => ({
  id: tr.dataset.stream,
  levels: Object.fromEntries([...tr.querySelectorAll('.meter')].map(
    m => [m.dataset.track, m.dataset.db])),
})))"""
LINKS = """JSON.stringify([...document.querySelectorAll('#ended a')].map(
  a => [a.closest('tr').dataset.stream, a.className, a.href]))"""


async def test_the_live_page_shows_each_stream_moving_and_links_the_ended_ones(
    record_dir: Path, tmp_path: Path
):
    chromium_binary()
    headers = {AUTH_TOKEN_KEY: TOKEN}
    params = {"api_key": SECRET}
    server = MediaServer(
        StreamHandler, host="127.0.0.1", port=0, options=StreamOptions(record_dir), auth_token=TOKEN
    )
    async with server:
        url = f"ws://127.0.0.1:{server.port}/stream"
        base = f"http://127.0.0.1:{server.port}"
        ended = [
            plan_call(synthesize_speechlike(1.5, 8000, seed=n), stream_id=f"ended-{n}",
                      custom_parameters=params, drop={"inbound": {20 + n}})
            for n in range(2)
        ]  # fmt: skip
        for plan in ended:
            await send_call(url, plan, headers=headers)
        from mediastream.inspect import run

        assert run([str(record_dir / "ended-0.wav")], png=str(record_dir)) == 0
        live = []
        for n, gain in enumerate((1.0, 0.3, 0.6, 0.15)):  # levels apart, for the screenshot
            rate, codec = (16000, "G722") if n == 3 else (8000, "PCMU")
            voices = [synthesize_speechlike(12.0, rate, seed=10 + n + k) for k in (0, 1)]
            audio = {"inbound": voices[0] * gain, "outbound": voices[1][::-1] * (1.5 * gain)}
            tracks = ("inbound", "outbound") if n % 2 else ("inbound",)
            audio = {t: a.astype("int16") for t, a in audio.items() if t in tracks}
            live.append(plan_call(audio, codec=codec, tracks=tracks, stream_id=f"live-{n}",
                                  custom_parameters=params))  # fmt: skip
        calls = [
            asyncio.create_task(send_call(url, p, realtime=True, headers=headers)) for p in live
        ]
        try:
            async with browser(tmp_path) as page:
                await page.send("Page.navigate", url=f"{base}/calls?token={TOKEN}")
                wanted = {p.stream_id: list(p.payloads) for p in live}
                rows: list[dict[str, Any]] = []
                for _ in range(150):  # until every stream shows a level on every track
                    rows = json.loads(await page.evaluate(ROWS) or "[]")
                    seen = {r["id"]: r["levels"] for r in rows}
                    if set(seen) == set(wanted) and all(
                        sorted(seen[i]) == sorted(t) and all(seen[i].values())
                        for i, t in wanted.items()
                    ):
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError(f"the page never showed every live stream: {rows}")
                samples: dict[tuple[str, str], set[str]] = {}
                for _ in range(8):  # 2.8 s: the levels are of 0.5 s windows
                    for row in json.loads(await page.evaluate(ROWS)):
                        for track, db in row["levels"].items():
                            samples.setdefault((row["id"], track), set()).add(db)
                    await asyncio.sleep(0.4)
                assert {key for key in samples} == {(i, t) for i, ts in wanted.items() for t in ts}
                for key, values in samples.items():
                    assert len(values) >= 2, (key, values)  # the meter moves
                    assert all(-60 < float(v) < 0 for v in values), (key, values)

                links = json.loads(await page.evaluate(LINKS))
                assert sorted((s, kind) for s, kind, _ in links) == [
                    ("ended-0", "picture"), ("ended-0", "report"), ("ended-1", "report")
                ]  # fmt: skip
                async with httpx.AsyncClient() as client:
                    for stream_id, kind, href in links:
                        assert href.startswith(base + "/reports/") and TOKEN not in href
                        assert (await client.get(href)).status_code == 401
                        response = await client.get(
                            href, headers={"Authorization": f"Bearer {TOKEN}"}
                        )
                        assert response.status_code == 200, href
                        if kind == "report":
                            assert response.json()["stream_id"] == stream_id
                        else:
                            assert response.content.startswith(b"\x89PNG")
                address = await page.evaluate("location.href")
                assert address == f"{base}/calls"  # the token left the address bar
                dom = await page.evaluate("document.documentElement.outerHTML")
                assert TOKEN not in dom and SECRET not in dom
                if os.environ.get("MEDIASTREAM_DOCS_PICTURES"):
                    height = await page.evaluate("document.querySelector('main').offsetHeight")
                    clip = {"x": 0, "y": 0, "width": 1280, "height": height + 70, "scale": 1}
                    shot = await page.send("Page.captureScreenshot", format="png", clip=clip)
                    (REPO / "docs").mkdir(exist_ok=True)
                    (REPO / "docs" / "calls.png").write_bytes(base64.b64decode(shot["data"]))
        finally:
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
