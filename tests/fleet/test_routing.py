"""Three instances behind HAProxy with the shipped ``deploy/haproxy.cfg``: every URL a server
hands out names it (``/i/<id>/...``), so a reconnect and a status callback come back to the
instance that holds the stream, through the load balancer."""

from __future__ import annotations

import asyncio
import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode, urlsplit

import numpy as np
import pytest
import soundfile
from websockets.asyncio.client import connect

from mediastream.simulate import CallPlan, plan_call, send_call, synthesize_speechlike
from tests.fleet.conftest import IDS, Fleet, start_fleet
from tests.server.test_websocket import independent_decode
from tests.telnyx.helpers import FORM, raw_request

pytestmark = pytest.mark.slow

CALLS = 100
CALL_SECONDS = 2.0
RECONNECT_AFTER = 1.0  # seconds of each call's audio: the socket is dropped there
WAIT_SECONDS = 60.0


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """One fleet for this module's tests: none of them stops an instance."""
    with start_fleet(tmp_path_factory.mktemp("fleet")) as started:
        yield started


async def until(condition: Callable[[], Any], what: str, timeout: float = WAIT_SECONDS) -> Any:
    """Poll ``condition`` (another process's files) until it is true; its value."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        await asyncio.sleep(0.05)
    return value


def of_stream(events: list[dict[str, Any]], stream_id: str) -> list[dict[str, Any]]:
    return [e for e in events if e["stream_id"] == stream_id]


def recording(fleet: Fleet, instance_id: str, stream_id: str) -> np.ndarray:
    data, rate = soundfile.read(fleet.instances[instance_id].record_dir / f"{stream_id}.wav",
                                dtype="int16")  # fmt: skip
    assert rate == 8000
    return data


async def test_a_hundred_calls_reconnecting_mid_call_come_home(fleet: Fleet) -> None:
    """100 calls spread over the three instances by URL, each socket dropped once mid-call
    and opened again through HAProxy: each reconnect reaches its own instance (the same
    handler: ``on_reconnect``, no second ``on_start``; one WAV, there only), and every
    recording holds exactly the audio sent."""
    plans = [
        plan_call(synthesize_speechlike(CALL_SECONDS, 8000, seed=n), stream_id=f"home-{n:03d}")
        for n in range(CALLS)
    ]
    home = {plan.stream_id: IDS[n % len(IDS)] for n, plan in enumerate(plans)}
    results = await asyncio.gather(
        *(
            send_call(fleet.instance_url(home[p.stream_id]), p, reconnect_after=RECONNECT_AFTER)
            for p in plans
        )
    )
    assert [(r.reconnects, r.closed_by_server, r.media_sent) for r in results] == [
        (1, False, 100)
    ] * CALLS

    def all_stopped() -> dict[str, list[dict[str, Any]]] | None:
        events = fleet.events()
        stops = sum(e["event"] == "on_stop" for each in events.values() for e in each)
        return events if stops >= CALLS else None

    events = await until(all_stopped, f"on_stop of {CALLS} calls")
    for plan in plans:
        sid, own = plan.stream_id, home[plan.stream_id]
        calls = of_stream(events[own], sid)
        assert [e["event"] for e in calls] == ["on_start", "on_reconnect", "on_stop"], sid
        assert len({e["handler"] for e in calls}) == 1, f"{sid}: one handler"
        for other in IDS:
            if other != own:
                assert of_stream(events[other], sid) == [], f"{sid} reached {other}"
        np.testing.assert_array_equal(recording(fleet, own, sid), independent_decode(plan))
    for instance_id, instance in fleet.instances.items():
        names = sorted(p.name for p in instance.wavs() if p.name.startswith("home-"))
        assert names == sorted(f"{s}.wav" for s, i in home.items() if i == instance_id)
        log = instance.log()
        resumed = [s for s, i in home.items() if i == instance_id]
        assert all(f"stream {s}: resumed on a new socket" in log for s in resumed)
        assert "names instance" not in log  # none came in by another instance's URL


def texml_answer(document: bytes) -> tuple[str, str]:
    node = ET.fromstring(document).find("Connect/Stream")
    assert node is not None
    return node.attrib["url"], node.attrib["statusCallback"]


def status_fields(stream_id: str, event: str) -> dict[str, str]:
    return {
        "AccountSid": "f5586561-8ff0-4291-a51b-c7dfe4139ff9",
        "CallSid": f"v3:sim-{stream_id}",
        "StreamEvent": event,
        "StreamSid": stream_id,
        "Timestamp": "2024-01-15T10:30:00Z",
    }


async def test_texml_through_the_balancer_names_the_answering_instance_and_its_callbacks_come_home(
    fleet: Fleet,
) -> None:
    """``GET /texml`` through HAProxy (no instance named: any one answers) hands out URLs
    naming the instance that answered; a call to that URL and signed status callbacks posted
    to that callback URL, both through HAProxy, reach that instance's handler."""
    answered: dict[str, tuple[str, str]] = {}
    for _ in range(30):  # leastconn over idle servers: each answers in turn, soon
        response = await raw_request(fleet.lb_port, "GET", "/texml")
        assert response.status == 200
        url, callback = texml_answer(response.body)
        instance_id = urlsplit(url).path.split("/")[2]
        answered.setdefault(instance_id, (url, callback))
        if len(answered) == len(IDS):
            break
    assert sorted(answered) == sorted(IDS)
    lb = f"127.0.0.1:{fleet.lb_port}"
    for instance_id, (url, callback) in answered.items():
        assert url == f"ws://{lb}/i/{instance_id}/stream"
        assert callback == f"http://{lb}/i/{instance_id}/callbacks/stream"

    sockets = []
    plans: dict[str, CallPlan] = {}
    for instance_id, (url, _) in answered.items():
        plan = plans[instance_id] = plan_call(
            synthesize_speechlike(0.2, 8000), stream_id=f"status-{instance_id}"
        )
        ws = await connect(url)
        sockets.append(ws)
        await ws.send('{"event": "connected", "version": "1.0.0"}')
        await ws.send(json.dumps(plan.start_frame()))
    try:
        for instance_id, plan in plans.items():
            instance = fleet.instances[instance_id]
            await until(lambda i=instance, s=plan.stream_id: of_stream(i.events(), s), "on_start")
        for instance_id, (_, callback) in answered.items():
            sid = plans[instance_id].stream_id
            for event in ("stream-started", "stream-stopped"):
                body = urlencode(status_fields(sid, event)).encode()
                headers = {"Content-Type": FORM, **fleet.signer.headers(body)}
                posted = await raw_request(
                    fleet.lb_port, "POST", urlsplit(callback).path, headers=headers, body=body
                )
                assert (posted.status, posted.body) == (200, b"ok\n")
        forged = urlencode(status_fields("status-a", "stream-failed")).encode()
        refused = await raw_request(
            fleet.lb_port, "POST", "/i/a/callbacks/stream",
            headers={"Content-Type": FORM, **fleet.signer.headers(b"other body")}, body=forged,
        )  # fmt: skip
        assert refused.status == 401

        def statuses() -> dict[str, list[tuple[str, str]]] | None:
            found = {
                i: [(e["stream_id"], e["status"]) for e in fleet.instances[i].events()
                    if e["event"] == "on_status"]
                for i in IDS
            }  # fmt: skip
            return found if sum(map(len, found.values())) >= 2 * len(IDS) else None

        found = await until(statuses, "six on_status calls")
        assert found == {
            i: [(f"status-{i}", "stream-started"), (f"status-{i}", "stream-stopped")] for i in IDS
        }
    finally:
        for ws in sockets:
            await ws.close()
