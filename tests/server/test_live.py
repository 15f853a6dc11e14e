"""The live view: ``GET /streams``, ``/calls`` and ``/reports/<file>`` on the media port.

Real servers on 127.0.0.1 (both adapters), a real HTTP client (httpx) and real carrier sockets:
who may look (the token, loopback or not), what the answers hold and never hold (the token,
custom parameters), paging, and an ended stream's report and picture.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from mediastream import StreamHandler
from mediastream.config import Config, HttpLimits, StreamOptions
from mediastream.protocol.frames import AUTH_TOKEN_KEY
from mediastream.runtime.core import HttpRequest
from mediastream.server.live import LIVE_FIELDS, LiveView, is_loopback
from mediastream.simulate import CallPlan, plan_call, send_call, synthesize_speechlike
from tests.server.test_adapters import Running, running

VOICE = synthesize_speechlike(1.0, 8000)
TOKEN = "t0ken-Zq8vX3"
SECRET = "param-value-9Kd2"  # a custom parameter a caller's application may put in <Stream>
# the adapters whose media port serves every HTTP route (picows serves the live view on its
# HTTP listener, ``http_port``, which is uvicorn: the "asgi" case)
ADAPTERS = ["websockets", "asgi"]
ROUTES = ["/streams", "/streams?ended=1", "/calls", "/reports/live-1.json"]


@asynccontextmanager
async def live_call(
    url: str, plan: CallPlan, *, token: str | None = None, first: int = 10
) -> AsyncIterator[None]:
    """A carrier socket that has sent ``start`` and ``first`` media frames and stays open
    until the block ends; then the rest of the call and ``stop``."""
    headers = {AUTH_TOKEN_KEY: token} if token else None
    async with connect(url, additional_headers=headers) as ws:
        await ws.send(json.dumps({"event": "connected", "version": "1.0.0"}))
        await ws.send(json.dumps(plan.start_frame()))
        media = plan.media_frames()
        for _, frame in media[:first]:
            await ws.send(json.dumps(frame))
        yield
        for _, frame in media[first:]:
            await ws.send(json.dumps(frame))
        await ws.send(json.dumps(plan.stop_frame(len(media) + 2)))
        await ws.wait_closed()


async def until(client: httpx.AsyncClient, url: str, check, **kwargs) -> dict:  # type: ignore[no-untyped-def]
    """GET ``url`` until ``check(json)`` holds (a stream's start or end is asynchronous)."""
    for _ in range(200):
        response = await client.get(url, **kwargs)
        if response.status_code == 200 and check(response.json()):
            return response.json()
        await asyncio.sleep(0.02)
    raise AssertionError(f"{url}: never got there; last {response.status_code} {response.text}")


def client_of(server: Running) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}")


def plan(stream_id: str, **kwargs: object) -> CallPlan:
    return plan_call(VOICE, stream_id=stream_id, custom_parameters={"api_key": SECRET}, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_without_the_token_every_route_answers_401_and_nothing_leaks(
    adapter: str, record_dir: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    config = Config(port=0, stream=StreamOptions(record_dir), auth_token=TOKEN)
    async with running(adapter, config) as server:
        base = f"http://127.0.0.1:{server.port}"
        good = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=base) as client:
            async with live_call(server.url, plan("live-1"), token=TOKEN):
                await until(client, "/streams", lambda d: d["total"] == 1, headers=good)
                for route in ROUTES:
                    refused = [
                        await client.get(route),
                        await client.get(route, headers={"Authorization": "Bearer wrong"}),
                        await client.get(route, headers={"Authorization": TOKEN}),  # no scheme
                        await client.get(route, params={"token": TOKEN[:-1]}),
                    ]
                    for response in refused:
                        assert response.status_code == 401, (route, response.text)
                        assert "Bearer" in response.headers["www-authenticate"]
                        assert TOKEN not in response.text and SECRET not in response.text
                allowed = [
                    await client.get("/streams", headers=good),
                    await client.get("/streams", params={"token": TOKEN}),
                    await client.get("/calls", params={"token": TOKEN}),
                ]
                for response in allowed:
                    assert response.status_code == 200
                    assert TOKEN not in response.text and SECRET not in response.text
                (entry,) = allowed[0].json()["streams"]
                assert entry["stream_id"] == "live-1"
                assert set(entry) <= set(LIVE_FIELDS)
            ended = await until(client, "/streams?ended=1", lambda d: d["total"] == 1, headers=good)
            assert TOKEN not in json.dumps(ended) and SECRET not in json.dumps(ended)
            report_url = ended["ended"][0]["report_url"]
            assert (await client.get(report_url)).status_code == 401
            report = await client.get(report_url, headers=good)
            assert report.status_code == 200
            assert report.json()["stream_id"] == "live-1"
            assert TOKEN not in report.text and SECRET not in report.text
    clients = ("httpx", "httpcore", "websockets.client")  # this test's own, not the server
    server_log = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith(clients))
    assert "/streams" in server_log  # the refusals were logged,
    assert TOKEN not in server_log and SECRET not in server_log  # and nothing secret was
    refusals = [r for r in caplog.records if "no valid auth token" in r.getMessage()]
    assert [r.levelno for r in refusals[:2]] == [logging.WARNING, logging.DEBUG]  # once


async def test_a_page_is_bounded_and_holds_the_interface_fields(record_dir: Path):
    config = Config(port=0, stream=StreamOptions(record_dir), http=HttpLimits(max_streams_page=2))
    async with running("websockets", config) as server, client_of(server) as client:
        async with (
            live_call(server.url, plan("page-1")),
            live_call(server.url, plan("page-2", tracks=("inbound", "outbound")), first=60),
            live_call(server.url, plan("page-3")),
        ):
            first = await until(client, "/streams", lambda d: d["total"] == 3)
            assert (len(first["streams"]), first["offset"], first["limit"]) == (2, 0, 2)
            rest = (await client.get("/streams?offset=2&limit=50")).json()
            assert (len(rest["streams"]), rest["limit"]) == (1, 2)  # capped at the page max
            entries = {e["stream_id"]: e for e in first["streams"] + rest["streams"]}
            assert sorted(entries) == ["page-1", "page-2", "page-3"]
            two = entries["page-2"]
            assert two["tracks"] == ["inbound", "outbound"] and two["codec"] == "PCMU"
            assert two["state"] == "live" and two["frames"] == 60 and two["lost"] == 0
            assert set(two["levels"]) == {"inbound", "outbound"}
            assert all(
                isinstance(v, float) for v in two["levels"].values()
            )  # a 25-frame window each
            assert set(two["playback"]) == {"queued_ms"}
            assert isinstance(two["age_seconds"], float)
            for bad in ("limit=0", "offset=-1", "offset=x", "limit=2.5"):
                response = await client.get(f"/streams?{bad}")
                assert response.status_code == 400, bad
            response = await client.post("/streams", content=b"{}")
            assert response.status_code == 405
        none = await until(client, "/streams", lambda d: d["total"] == 0)
        assert none["streams"] == []


async def test_an_ended_streams_report_and_picture_are_served(record_dir: Path):
    from mediastream.inspect import run

    config = Config(port=0, stream=StreamOptions(record_dir))
    async with running("websockets", config) as server:
        await send_call(server.url, plan("ended-1", drop={"inbound": {5, 6}}))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            ended = await until(client, "/streams?ended=1", lambda d: d["total"] == 1)
            (entry,) = ended["ended"]
            assert entry["stream_id"] == "ended-1" and entry["frames"]["lost"] == 2
            assert (entry["report_url"], entry["picture_url"]) == ("/reports/ended-1.json", None)
            assert "sidecar" not in entry and "recording" not in entry  # no server paths
            report = await client.get(entry["report_url"])
            assert report.headers["content-type"] == "application/json"
            assert report.content == (record_dir / "ended-1.json").read_bytes()
            assert run([str(record_dir / "ended-1.wav")], png=str(record_dir)) == 0
            entry = (await client.get("/streams?ended=1")).json()["ended"][0]
            assert entry["picture_url"] == "/reports/ended-1.png"
            picture = await client.get(entry["picture_url"])
            assert picture.headers["content-type"] == "image/png"
            assert picture.content.startswith(b"\x89PNG")
            for name in ("../ended-1.json", ".ended-1.json", "ended-1.wav", "x/y.json", "%2e.json"):
                assert (await client.get(f"/reports/{name}")).status_code == 404, name
            assert (await client.get("/reports/nobody.json")).status_code == 404


async def test_the_page_is_one_static_file_that_fetches_nothing_from_outside(record_dir: Path):
    async with running("websockets", Config(port=0)) as server, client_of(server) as client:
        page = await client.get("/calls")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert page.headers["referrer-policy"] == "no-referrer"
    assert re.search(r"(https?:)?//[a-z]", page.text.replace("<!--", "").lower()) is None
    assert re.search(r"<(script|link|img|iframe)[^>]*(src|href)=", page.text) is None


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("", False), ("::", False), (None, False),
     ("10.0.0.5", False), ("media.example.com", False)],
)  # fmt: skip
def test_which_binds_are_loopback(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback


class NoStreams:
    def __len__(self) -> int:
        return 0

    def live_snapshots(self, offset: int = 0, limit: int | None = None) -> list[dict]:
        return []

    def recent_reports(self) -> list[dict]:
        return []


@pytest.mark.parametrize("route", ROUTES)
async def test_a_public_bind_without_a_token_is_refused_unless_allowed(route: str) -> None:
    path, _, query = route.partition("?")
    request = HttpRequest("GET", path, query=query)
    cases = [
        (Config(port=0), "0.0.0.0", 403),
        (Config(port=0), None, 403),  # ASGI: the bind is not known
        (Config(port=0, allow_public_streams=True), "0.0.0.0", None),
        (Config(port=0, auth_token=TOKEN), "0.0.0.0", 401),
        (Config(port=0), "127.0.0.1", None),
    ]
    for config, host, status in cases:
        view = LiveView()
        view.attach(NoStreams(), config, host)
        response = await view.handle(request)
        if status is None:
            assert response.status in (200, 404), (config, host)  # served (no such report)
        else:
            assert response.status == status, (config, host)


async def test_under_asgi_the_live_view_needs_a_token_or_the_setting(record_dir: Path):
    for config, status in [
        (Config(port=0, stream=StreamOptions(record_dir)), 403),
        (Config(port=0, stream=StreamOptions(record_dir), allow_public_streams=True), 200),
        (Config(port=0, stream=StreamOptions(record_dir), auth_token=TOKEN), 401),
    ]:
        async with running("asgi", config) as server, client_of(server) as client:
            response = await client.get("/streams")
        assert response.status_code == status, config


@pytest.mark.parametrize("prefix", ["", "/telnyx"])
async def test_mounted_in_starlette_the_live_view_is_routed_too(record_dir: Path, prefix: str):
    from starlette.applications import Starlette

    from mediastream import MediaApp
    from tests.server.test_asgi import uvicorn_serving

    config = Config(stream=StreamOptions(record_dir), auth_token=TOKEN)
    media = MediaApp(StreamHandler, config=config)
    app = Starlette(lifespan=media.lifespan)
    if prefix:
        app.mount(prefix, media)  # a sub-application: every path below the prefix
    else:
        media.mount(app)  # routes of the app
    async with uvicorn_serving(app) as port:
        url = f"ws://127.0.0.1:{port}{prefix}/stream"
        await send_call(url, plan("mounted"), headers={AUTH_TOKEN_KEY: TOKEN})
        good = {"Authorization": f"Bearer {TOKEN}"}
        base = f"http://127.0.0.1:{port}{prefix}/"
        async with httpx.AsyncClient(base_url=base, headers=good) as client:
            assert (await client.get("calls")).headers["content-type"].startswith("text/html")
            ended = await until(client, "streams?ended=1", lambda d: d["total"] == 1)
            report_url = ended["ended"][0]["report_url"]
            assert report_url == f"{prefix}/reports/mounted.json"  # below the mount point
            report = await client.get(f"http://127.0.0.1:{port}{report_url}")
            assert report.json()["stream_id"] == "mounted"
            assert (await client.get("streams", headers={"Authorization": ""})).status_code == 401


async def test_a_poll_asks_the_registry_for_its_page_only() -> None:
    """The cost of a poll is that of its page: at 1,000 streams, the other 950 are not
    looked at (a snapshot costs about 10 µs)."""

    class Thousand(NoStreams):
        asked: list[tuple[int, int | None]] = []  # noqa: RUF012

        def __len__(self) -> int:
            return 1000

        def live_snapshots(self, offset: int = 0, limit: int | None = None) -> list[dict]:
            self.asked.append((offset, limit))
            return [{"stream_id": f"s{n}", "custom": SECRET} for n in range(offset, offset + 50)]

    view = LiveView()
    source = Thousand()
    view.attach(source, Config(), "127.0.0.1")
    response = await view.handle(HttpRequest("GET", "/streams", query="offset=100&limit=50"))
    body = json.loads(response.body)
    assert source.asked == [(100, 50)]
    assert (body["total"], len(body["streams"]), body["streams"][0]) == (
        1000,
        50,
        {"stream_id": "s100"},
    )
    await view.handle(HttpRequest("GET", "/streams"))
    assert source.asked[-1] == (0, HttpLimits().max_streams_page)
