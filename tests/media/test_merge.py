"""Pieces of a call on several servers: their descriptions, and ``mediastream merge``.

Two real servers on 127.0.0.1 with a record folder each stand for two hosts; a call that
reconnects from one to the other leaves a piece on each, and the merge must give back the
call's audio sample for sample.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from mediastream import MediaServer, StreamHandler, StreamOptions
from mediastream.cli import main
from mediastream.media.recording import WavFile, recover_recordings
from mediastream.media.recording.piece import Piece, piece_path, read_piece, write_piece
from mediastream.merge import manifest_path, merge_recordings
from mediastream.simulate import CallPlan, plan_call, synthesize_speechlike
from tests.conftest import ws_url
from tests.server.test_resilience import media_texts, send_frames

VOICE = synthesize_speechlike(2.0, 8000)
FRAME = 160  # samples of a 20 ms frame at 8 kHz


def opening(plan: CallPlan) -> list[str]:
    return [json.dumps({"event": "connected", "version": "1.0.0"}), json.dumps(plan.start_frame())]


async def until(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    """Wait for ``condition()`` (polled every 10 ms), failing after ``timeout`` s."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def hop(
    tmp_path: Path, plan: CallPlan, cut: int, *, resend: int = 0, max_gap: float = 10.0
) -> tuple[Path, Path]:
    """Chunks 1..cut to host A (its socket drops), then cut+1-resend..end to host B with
    ``stop``; returns both record folders once both servers finalized their piece."""
    dirs = tmp_path / "host-a", tmp_path / "host-b"
    options = {"resume_grace_seconds": 0.3, "max_gap_seconds": max_gap}
    a = MediaServer(StreamHandler, port=0, options=StreamOptions(dirs[0], **options))
    b = MediaServer(StreamHandler, port=0, options=StreamOptions(dirs[1], **options))
    last = max(len(p) for p in plan.payloads.values())
    async with a, b:
        await send_frames(ws_url(a), opening(plan) + media_texts(plan, 1, cut), stop=False)
        await until(lambda: len(a.registry) == 1)
        rest = media_texts(plan, cut + 1 - resend, last)
        await send_frames(
            ws_url(b), [*opening(plan), *rest, json.dumps(plan.stop_frame(999))], stop=True
        )
        await until(lambda: len(a.registry) == 0 and len(b.registry) == 0)  # A's grace ran out
    return dirs


def read(path: Path) -> np.ndarray:
    data, _ = soundfile.read(path, dtype="int16", always_2d=True)
    return data


async def test_a_call_that_hops_between_hosts_merges_sample_exact(tmp_path: Path):
    plan = plan_call(VOICE, codec="PCMU", stream_id="hop")  # 100 frames
    host_a, host_b = await hop(tmp_path, plan, 40)
    a, b = read_piece(host_a / "hop.wav"), read_piece(host_b / "hop.wav")
    assert a is not None and b is not None and a.complete and b.complete
    assert (a.timeline_start, a.received) == (0, {"inbound": [[0, 40 * FRAME]]})
    # B has silence where A has the audio, and says so: it received only from chunk 41 on
    assert (b.timeline_start, b.received) == (0, {"inbound": [[40 * FRAME, 100 * FRAME]]})
    assert (a.stream_id, a.call_control_id, a.sample_rate, a.channels) == (
        "hop", "v3:sim-hop", 8000, ["inbound"]
    )  # fmt: skip

    out = tmp_path / "merged" / "hop.wav"
    out.parent.mkdir()
    (manifest,) = merge_recordings([host_a, host_b], out)
    np.testing.assert_array_equal(read(out)[:, 0], plan.expected_pcm())
    assert json.loads(manifest_path(out).read_text()) == manifest
    contributed = [(Path(p["file"]).parent.name, p["contributed"]) for p in manifest["pieces"]]
    assert contributed == [
        ("host-a", {"inbound": [[0, 40 * FRAME]]}),
        ("host-b", {"inbound": [[40 * FRAME, 100 * FRAME]]}),
    ]
    assert manifest["overlap_samples"] == 0 and manifest["unreceived"] == {}


async def test_a_piece_that_starts_past_the_gap_bound_is_placed_by_its_description(
    tmp_path: Path,
):
    """B sees the stream first 0.8 s in, beyond its gap bound (0.5 s): its file starts at
    the reconnect, and only the description says where that is on the call."""
    plan = plan_call(VOICE, codec="PCMU", stream_id="late")
    host_a, host_b = await hop(tmp_path, plan, 40, max_gap=0.5)
    b = read_piece(host_b / "late.wav")
    assert b is not None and b.timeline_start == 40 * FRAME
    assert b.frames == 60 * FRAME and b.received == {"inbound": [[40 * FRAME, 100 * FRAME]]}
    out = tmp_path / "late.wav"
    merge_recordings([host_a, host_b], out)
    np.testing.assert_array_equal(read(out)[:, 0], plan.expected_pcm())


async def test_two_tracks_resent_frames_and_lost_frames(tmp_path: Path):
    """Both tracks; the reconnect resends 5 frames A has (counted as received twice, the
    samples agree); two frames no host got stay silence and are listed."""
    voices = {"inbound": VOICE, "outbound": synthesize_speechlike(2.0, 8000, seed=3)}
    plan = plan_call(
        voices, codec="PCMA", tracks=("inbound", "outbound"), stream_id="both",
        drop={"inbound": {20, 60}},
    )  # fmt: skip
    host_a, host_b = await hop(tmp_path, plan, 50, resend=5)
    out = tmp_path / "both.wav"
    (manifest,) = merge_recordings([host_a / "both.wav", host_b / "both.piece.json"], out)
    merged = read(out)
    np.testing.assert_array_equal(merged[:, 0], plan.expected_pcm("inbound"))
    np.testing.assert_array_equal(merged[:, 1], plan.expected_pcm("outbound"))
    assert manifest["channels"] == ["inbound", "outbound"]
    assert manifest["overlap_samples"] == 2 * 5 * FRAME and manifest["differing_samples"] == 0
    lost = [[19 * FRAME, 20 * FRAME], [59 * FRAME, 60 * FRAME]]
    assert manifest["unreceived"] == {"inbound": lost}


async def test_a_live_piece_already_says_where_it_sits(tmp_path: Path):
    """Written at the first audio: what a SIGKILL leaves. Here the first frame is the
    carrier's chunk 31 (the socket reached this host 0.6 s into the call)."""
    plan = plan_call(VOICE, codec="PCMU", stream_id="live")
    server = MediaServer(StreamHandler, port=0, options=StreamOptions(tmp_path))
    async with server:
        await send_frames(ws_url(server), opening(plan) + media_texts(plan, 31, 60), stop=False)
        await until(lambda: piece_path(tmp_path / "live.wav").exists())
        first = read_piece(tmp_path / "live.wav")
        assert first is not None and not first.complete
        assert (first.timeline_start, first.received) == (
            0,
            {"inbound": [[30 * FRAME, 31 * FRAME]]},
        )
    final = read_piece(tmp_path / "live.wav")  # the drain finalized it
    assert final is not None and final.complete
    assert final.received == {"inbound": [[30 * FRAME, 60 * FRAME]]}


async def test_a_killed_hosts_file_continued_after_its_restart_is_one_exact_piece(tmp_path: Path):
    """The host died after chunk 40 (its first description and 40 frames left, unfinished);
    it restarts, and the call's reconnect comes home: the file goes on where the carrier's
    counters say, and its description covers it all."""
    plan = plan_call(VOICE, codec="PCMU", stream_id="home")
    path = make_piece(tmp_path, "home.wav", plan.expected_pcm()[: 40 * FRAME], stream_id="home",
                      complete=False, received={"inbound": [[0, FRAME]]})  # fmt: skip
    server = MediaServer(StreamHandler, port=0, options=StreamOptions(tmp_path))
    async with server:  # its start-up recovers the file and completes the description
        rest = [*media_texts(plan, 41, 100), json.dumps(plan.stop_frame(999))]
        await send_frames(ws_url(server), opening(plan) + rest, stop=True)
    np.testing.assert_array_equal(read(path)[:, 0], plan.expected_pcm())
    piece = read_piece(path)
    assert piece is not None and piece.complete and piece.frames == 100 * FRAME
    assert piece.received == {"inbound": [[0, 100 * FRAME]]}


# ---------------------------------------------------------------- pieces without a server


def make_piece(directory: Path, name: str, pcm: np.ndarray, **fields: object) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    wav = WavFile(path, int(fields.pop("sample_rate", 8000)))  # type: ignore[call-overload]
    wav.write(0, pcm[:, None])
    wav.close()
    piece = Piece(
        stream_id="call", recording=name, sample_rate=wav.sample_rate, channels=["inbound"],
        timeline_start=0, frames=len(pcm), received={"inbound": [[0, len(pcm)]]}, complete=True,
    )  # fmt: skip
    for key, value in fields.items():
        setattr(piece, key, value)
    write_piece(path, piece)
    return path


def tone(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-20000, 20000, n, dtype=np.int16)


def test_a_killed_piece_is_completed_by_recovery_and_by_the_merge(tmp_path: Path):
    """What a SIGKILL leaves: audio on disk past the header, the first description only."""
    audio = tone(1600, 1)
    path = make_piece(tmp_path / "a", "call.wav", audio[:800], complete=False,
                      received={"inbound": [[0, 160]]}, started_at=100.0)  # fmt: skip
    with open(path, "ab") as f:  # written after the header's last update
        f.write(audio[800:].tobytes())
    b_audio = np.concatenate([np.zeros(1600, np.int16), tone(800, 2)])  # silence where A has it
    later = make_piece(tmp_path / "b", "call.wav", b_audio, received={"inbound": [[1600, 2400]]},
                       started_at=100.5)  # fmt: skip
    (unrecovered,) = merge_recordings([path, later], tmp_path / "before.wav")
    assert unrecovered["pieces"][0]["description"] == "recovered"
    assert recover_recordings(tmp_path / "a") == [path]
    piece = read_piece(path)
    assert piece is not None and piece.recovered and not piece.complete
    assert (piece.frames, piece.received) == (1600, {"inbound": [[0, 1600]]})
    (manifest,) = merge_recordings([tmp_path / "a", tmp_path / "b"], tmp_path / "after.wav")
    expected = np.concatenate([audio, tone(800, 2)])
    np.testing.assert_array_equal(read(tmp_path / "before.wav")[:, 0], expected)
    np.testing.assert_array_equal(read(tmp_path / "after.wav")[:, 0], expected)
    assert [p["contributed"] for p in manifest["pieces"]] == [
        {"inbound": [[0, 1600]]}, {"inbound": [[1600, 2400]]}
    ]  # fmt: skip


def test_a_wav_without_description_is_taken_whole_and_named_by_its_file(tmp_path: Path):
    path = make_piece(tmp_path, "plain.wav", tone(400, 3))
    piece_path(path).unlink()
    (manifest,) = merge_recordings([path], tmp_path / "out.wav")
    assert manifest["stream_id"] == "plain" and manifest["pieces"][0]["description"] == "derived"
    np.testing.assert_array_equal(read(tmp_path / "out.wav")[:, 0], tone(400, 3))


def test_counters_that_restarted_are_placed_by_the_clock(tmp_path: Path):
    """B's counters began again at the reconnect, 3 s of call time after A's zero."""
    make_piece(tmp_path / "a", "call.wav", tone(4000, 4), received={"inbound": [[0, 4000]]},
               started_at=1000.0)  # fmt: skip
    make_piece(tmp_path / "b", "call.wav", tone(800, 5), received={"inbound": [[0, 800]]},
               started_at=1003.0)  # fmt: skip
    (manifest,) = merge_recordings([tmp_path / "a", tmp_path / "b"], tmp_path / "out.wav")
    merged = read(tmp_path / "out.wav")[:, 0]
    np.testing.assert_array_equal(merged[24000:], tone(800, 5))
    assert [p["placed_by"] for p in manifest["pieces"]] == ["counters", "clock"]


def test_several_calls_go_into_a_folder(tmp_path: Path):
    make_piece(tmp_path / "in", "one.wav", tone(160, 6), stream_id="one")
    make_piece(tmp_path / "in", "two.wav", tone(320, 7), stream_id="two")
    manifests = merge_recordings([tmp_path / "in"], tmp_path / "out")
    assert sorted(m["stream_id"] for m in manifests) == ["one", "two"]
    np.testing.assert_array_equal(read(tmp_path / "out" / "two.wav")[:, 0], tone(320, 7))
    # the merged files are not pieces: merging the folder again finds the pieces only
    assert len(merge_recordings([tmp_path / "in", tmp_path / "out"], tmp_path / "again")) == 2


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["missing.wav"], "missing.wav does not exist"),
        ("rates", ["a", "b"], "stream call: the pieces disagree on the sample rate: "),
        ("calls", ["in"], "the recordings are of 2 calls (one, two): give -o a folder"),
        ("not-wav", ["junk.wav"], "junk.wav is not a 16-bit PCM WAV"),
    ],
)
def test_expected_errors_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str | None, args: list[str],
    message: str,
):  # fmt: skip
    if setup == "rates":
        make_piece(tmp_path / "a", "call.wav", tone(160, 1))
        make_piece(tmp_path / "b", "call.wav", tone(320, 1), sample_rate=16000)
    elif setup == "calls":
        make_piece(tmp_path / "in", "one.wav", tone(160, 6), stream_id="one")
        make_piece(tmp_path / "in", "two.wav", tone(160, 7), stream_id="two")
    elif setup == "not-wav":
        (tmp_path / "junk.wav").write_bytes(b"not a wav at all")
    status = main(["merge", *(str(tmp_path / a) for a in args), "-o", str(tmp_path / "o.wav")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert err.startswith("mediastream: error: ") and message in err
    assert not (tmp_path / "o.wav").exists()
