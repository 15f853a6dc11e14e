"""A call outlives its instance: SIGKILL mid-call, and a rolling restart, through HAProxy.

Three ``mediastream serve`` behind the shipped ``deploy/haproxy.cfg`` (``tests/fleet/
conftest.py``). Each instance's handler logs every frame it was handed (``frames.py``); the
recorder gets a frame before the handler, so after ``mediastream merge`` of the three record
folders, each call's recording must hold every logged frame with its exact samples, and equal
the source wherever any instance recorded audio.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from mediastream.merge import merge_recordings
from mediastream.simulate import FRAME_MS, CallPlan, plan_call, send_call, synthesize_speechlike
from tests.fleet.conftest import Fleet, start_fleet
from tests.fleet.frames import frames_path

FRAME_HANDLER = "tests.fleet.frames:FrameLog"
RECONNECT_PAUSE = 0.05  # between a carrier's attempts to reconnect


class CarrierCall:
    """A call sent in real time the way a carrier streams it: when its socket dies, it
    connects again to the same URL (through the load balancer) and goes on with the next
    frame, counters continued. Frames written into a socket that turned out dead are lost,
    as they would be; the handlers' logs say what arrived."""

    def __init__(self, url: str, plan: CallPlan) -> None:
        self.url, self.plan = url, plan
        self.sockets = 0

    async def run(self, deadline: float = 30.0) -> None:
        plan, frames = self.plan, self.plan.media_frames()
        hello = [
            json.dumps({"event": "connected", "version": "1.0.0"}),
            json.dumps(plan.start_frame()),
        ]
        sent, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < deadline:
            try:
                async with connect(self.url, open_timeout=5, compression=None) as ws:
                    self.sockets += 1
                    for text in hello:
                        await ws.send(text)
                    while sent < len(frames):
                        tick, frame = frames[sent]
                        delay = t0 + tick * FRAME_MS / 1000 - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
                        await ws.send(json.dumps(frame))
                        sent += 1
                    await ws.send(json.dumps(plan.stop_frame(len(frames) + 2)))
                    await asyncio.wait_for(ws.wait_closed(), 10)
                    return
            except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError):
                await asyncio.sleep(RECONNECT_PAUSE)
        raise AssertionError(f"call {plan.stream_id} did not finish in {deadline} s")


def logged_frames(fleet: Fleet) -> dict[tuple[str, str], set[int]]:
    """(stream id, track) -> the chunks some instance's handler was handed."""
    seen: dict[tuple[str, str], set[int]] = defaultdict(set)
    for instance in fleet.instances.values():
        path = frames_path(instance.events_path)
        if not path.exists():
            continue
        for line in path.read_text().splitlines(keepends=True):
            if line.endswith("\n"):
                stream_id, track, chunk, _, _ = line.split()
                seen[stream_id, track].add(int(chunk))
    return seen


def merged_calls(fleet: Fleet, out: Path) -> dict[str, tuple[np.ndarray, dict]]:
    """``mediastream merge`` of every instance's record folder: stream id -> (audio, manifest)."""
    manifests = merge_recordings([i.record_dir for i in fleet.instances.values()], out)
    calls = {}
    for manifest in manifests:
        audio, _ = soundfile.read(manifest["recording"], dtype="int16", always_2d=True)
        calls[manifest["stream_id"]] = (audio, manifest)
    return calls


def recorded_mask(manifest: dict, track: str) -> np.ndarray:
    """Which samples of the merged call some piece received (its ranges in the manifest)."""
    mask = np.zeros(manifest["frames"], dtype=bool)
    for piece in manifest["pieces"]:
        for a, b in piece["contributed"].get(track, []):
            mask[a:b] = True
    return mask


def check_call(plan: CallPlan, audio: np.ndarray, manifest: dict, logged: dict) -> float:
    """Every logged frame is in the merged call, exact; the call equals the source wherever
    it was recorded and is silence elsewhere. Returns the seconds not recorded."""
    frame = plan.sample_rate * FRAME_MS // 1000
    missing = 0
    for track in plan.payloads:
        expected = plan.expected_pcm(track)
        channel = audio[:, manifest["channels"].index(track)]
        mask = recorded_mask(manifest, track)
        assert len(channel) <= len(expected), (plan.stream_id, len(channel))
        for chunk in sorted(logged.get((plan.stream_id, track), ())):
            span = slice((chunk - 1) * frame, chunk * frame)
            assert mask[span].all(), (
                f"{plan.stream_id} {track} chunk {chunk}: handled, not recorded"
            )
            np.testing.assert_array_equal(channel[span], expected[span])
        np.testing.assert_array_equal(channel[mask], expected[: len(channel)][mask])
        assert not channel[~mask].any()
        missing += len(expected) - int(mask.sum())
    return missing / plan.sample_rate / len(plan.payloads)


def instances_of(fleet: Fleet) -> dict[str, list[str]]:
    """stream id -> the instances whose handler started it, in order."""
    where: dict[str, list[str]] = defaultdict(list)
    for instance_id, events in fleet.events().items():
        for event in events:
            if event["event"] == "on_start":
                where[event["stream_id"]].append(instance_id)
    return where


async def test_an_instance_killed_mid_call_its_calls_go_on_elsewhere_and_merge_exactly(
    tmp_path: Path,
):
    voice = synthesize_speechlike(4.0, 8000)
    homes = ["a"] * 6 + ["b", "b", "c", "c"]
    plans = [
        plan_call(
            {"inbound": voice, "outbound": voice[::-1].copy()} if i % 2 else voice,
            codec="PCMU", tracks=("inbound", "outbound") if i % 2 else ("inbound",),
            stream_id=f"kill-{home}-{i}", seed=i,
        )
        for i, home in enumerate(homes)
    ]  # fmt: skip
    args = ["--handler", FRAME_HANDLER, "--resume-grace", "2"]
    with start_fleet(tmp_path / "fleet", args=args) as fleet:
        calls = [
            CarrierCall(fleet.instance_url(home), p) for home, p in zip(homes, plans, strict=True)
        ]
        running = asyncio.gather(*(call.run() for call in calls))
        await asyncio.sleep(1.7)  # mid-call, and mid-block: the recorder holds audio unwritten
        await asyncio.to_thread(fleet.kill, "a")
        await running
        where = instances_of(fleet)
        await asyncio.to_thread(fleet.start, "a")  # its recovery completes a's pieces
        await asyncio.to_thread(fleet.stop, "a")
        logged = logged_frames(fleet)
        merged = merged_calls(fleet, tmp_path / "merged")
    unrecorded = []
    for home, plan, call in zip(homes, plans, calls, strict=True):
        audio, manifest = merged[plan.stream_id]
        if home == "a":  # reconnected through HAProxy, onto another instance
            assert call.sockets == 2, (plan.stream_id, call.sockets)
            assert where[plan.stream_id][0] == "a" and where[plan.stream_id][1] in ("b", "c")
            assert len(manifest["pieces"]) == 2
        else:
            assert call.sockets == 1 and where[plan.stream_id] == [home]
            assert len(manifest["pieces"]) == 1
        unrecorded.append(check_call(plan, audio, manifest, logged))
    print(f"not recorded by any instance, per call (s): {unrecorded}")
    assert max(unrecorded) < 1.0  # what was in flight when the instance died


async def test_a_rolling_restart_loses_no_call_audio(tmp_path: Path):
    """SIGTERM one instance at a time, wait for its drain, start it again (as Kubernetes
    rolls a StatefulSet), while calls come and go; each call reconnects once mid-call. A
    reconnect that reaches a draining instance is refused and HAProxy retries it on another:
    every call's merged recording is the source, exactly."""
    voice = synthesize_speechlike(2.4, 8000)
    args = ["--handler", FRAME_HANDLER, "--drain-seconds", "8", "--resume-grace", "2"]
    with start_fleet(tmp_path / "fleet", args=args) as fleet:
        up = list(fleet.instances)
        plans: list[CallPlan] = []
        tasks: list[asyncio.Task] = []
        rolling = asyncio.ensure_future(asyncio.to_thread(roll, fleet, up))
        while not rolling.done() or len(plans) < 6:
            plan = plan_call(voice, codec="PCMA", stream_id=f"roll-{len(plans)}", seed=len(plans))
            url = fleet.instance_url(up[len(plans) % len(up)])  # what /texml of a live one gives
            plans.append(plan)
            tasks.append(
                asyncio.create_task(send_call(url, plan, realtime=True, reconnect_after=1.2))
            )
            await asyncio.sleep(0.3)
        assert (await rolling) == [0, 0, 0]  # every drain ended with status 0
        results = await asyncio.gather(*tasks)
        for instance_id in fleet.instances:  # finalize the last pieces
            await asyncio.to_thread(fleet.stop, instance_id)
        logged = logged_frames(fleet)
        merged = merged_calls(fleet, tmp_path / "merged")
        hopped = sum(len(set(instances)) > 1 for instances in instances_of(fleet).values())
    assert not any(r.closed_by_server for r in results)
    assert hopped > 0  # some reconnects met a draining instance: the merge had pieces to join
    assert len(merged) == len(plans)
    for plan in plans:
        audio, manifest = merged[plan.stream_id]
        assert check_call(plan, audio, manifest, logged) == 0.0
        np.testing.assert_array_equal(audio[:, 0], plan.expected_pcm())
    print(f"{len(plans)} calls, {hopped} reconnected onto another instance")


def roll(fleet: Fleet, up: list[str]) -> list[int]:
    """Restart each instance in turn: out of ``up`` (new calls go elsewhere), SIGTERM and
    wait for the drain, start again and wait until HAProxy routes to it."""
    statuses = []
    for instance_id in list(fleet.instances):
        up.remove(instance_id)
        statuses.append(fleet.stop(instance_id))
        fleet.start(instance_id)
        up.append(instance_id)
    return statuses
