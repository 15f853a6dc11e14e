"""A killed process loses no audio it handed the recorder: the journal (``journal.py``).

What a SIGKILL leaves is what the page cache holds: the files as any reader sees them at that
moment. So most tests copy a live recorder's directory mid-block (the recorder never closed),
run the next start's recovery on the copy and compare it sample for sample with every frame
appended; the last one kills a real ``mediastream serve`` and restarts it.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from websockets.asyncio.client import connect

from mediastream.media.recording import WavRecorder, open_recording, recover_recordings
from mediastream.media.recording.journal import journal_path
from mediastream.simulate import plan_call, synthesize_speechlike
from tests.media.test_recording_faults import Frame, tone  # tone: never a zero sample
from tests.server.test_faults import frame as media_frame
from tests.server.test_faults_process import finish, serve

RATE = 8000
FRAME = 160  # 20 ms; the default block is 0.5 s, 25 frames


def frames(track: str, slots: range | list[int], seed: int) -> list[Frame]:
    audio = tone((max(slots) + 1) * FRAME, seed)
    return [Frame(track, audio[s * FRAME : (s + 1) * FRAME], RATE, s * FRAME) for s in slots]


def interleave(*tracks: list[Frame]) -> list[Frame]:
    """Frames of several tracks in the order a carrier sends them: by position."""
    return sorted((f for track in tracks for f in track), key=lambda f: f.position)


def placed(sent: list[Frame], layout: tuple[str, ...]) -> np.ndarray:
    """Where every frame belongs (later frames win), gaps silent: the recording's oracle."""
    end = max(f.position + len(f.pcm) for f in sent)
    out = np.zeros((end, len(layout)), np.int16)
    for f in sent:
        out[f.position : f.position + len(f.pcm), layout.index(f.track)] = f.pcm
    return out


def read(path: Path) -> np.ndarray:
    data, rate = soundfile.read(path, dtype="int16", always_2d=True)
    assert rate == RATE
    return data


def killed_copy(source: Path, into: Path) -> Path:
    """The directory as a SIGKILL would leave it now (files, modes; no locks)."""
    shutil.copytree(source, into)
    return into


def late_and_gap() -> list[Frame]:
    """Slots 70-72 never sent (silence), slot 40 sent after slot 60."""
    sent = frames("inbound", [s for s in range(88) if s not in (70, 71, 72)], 1)
    late = sent.pop(40)
    sent.insert(60, late)
    return sent


SCENARIOS = {
    # name: (frames in the order appended, channels by track, playback channel)
    "mono": (frames("inbound", range(88), 1), ("inbound",), False),
    "late-and-gap": (late_and_gap(), ("inbound",), False),
    "outbound-only": (frames("outbound", range(63), 2), ("outbound",), False),
    "second-track-joins": (
        interleave(frames("inbound", range(70), 3), frames("outbound", range(60, 70), 4)),
        ("inbound", "outbound"),
        False,
    ),
    "stereo": (
        interleave(frames("inbound", range(88), 5), frames("outbound", range(88), 6)),
        ("inbound", "outbound"),
        False,
    ),
    "playback": (
        interleave(frames("inbound", range(90), 7), frames("playback", range(70, 87), 8)),
        ("inbound", "playback"),
        True,
    ),
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_frame_appended_is_in_the_file_after_a_kill(tmp_path: Path, scenario: str):
    sent, layout, playback = SCENARIOS[scenario]
    live = tmp_path / "live"
    live.mkdir()
    rec = open_recording(live, "call", RATE, resume_within=60, playback=playback)
    for frame in sent:
        rec.append(frame)
    assert journal_path(live / "call.wav").exists()
    copy = killed_copy(live, tmp_path / "killed")
    wav = copy / "call.wav"
    expected = placed(sent, layout)
    # the kill came mid-block: the WAV alone lacks the end of what was handed over
    assert soundfile.info(wav).frames < len(expected)
    assert recover_recordings(copy) == [wav]
    assert not journal_path(wav).exists()
    np.testing.assert_array_equal(read(wav), expected)
    rec.close()  # the live one, finished normally, holds the same
    np.testing.assert_array_equal(read(live / "call.wav"), expected)
    assert not journal_path(live / "call.wav").exists()


def test_without_a_journal_a_kill_loses_the_block(tmp_path: Path):
    """What the journal is for: the same kill with the buffers in process memory."""
    sent = frames("inbound", range(88), 1)
    (tmp_path / "live").mkdir()
    rec = WavRecorder(tmp_path / "live" / "call.wav", RATE, journal=False)
    for frame in sent:
        rec.append(frame)
    copy = killed_copy(tmp_path / "live", tmp_path / "killed")
    recover_recordings(copy)
    assert len(read(copy / "call.wav")) == 75 * FRAME  # three blocks; 13 frames lost
    rec.close()


def test_a_new_session_continues_a_killed_file_with_its_journal(tmp_path: Path):
    """Not at start-up: the next session of the stream finds the dead writer's file and
    journal (a reconnect to another worker of the same directory, say)."""
    before = frames("inbound", range(40), 1)
    live = tmp_path / "live"
    live.mkdir()
    rec = open_recording(live, "call", RATE, resume_within=60)
    for frame in before:
        rec.append(frame)
    copy = killed_copy(live, tmp_path / "killed")
    rec.close()
    again = open_recording(copy, "call", RATE, resume_within=60)
    assert again.path == copy / "call.wav" and again.frames_on_disk == 40 * FRAME
    after = tone(800, 9)
    again.append(Frame("inbound", after, RATE, 0))  # positions count after what it holds
    again.close()
    held = placed(before, ("inbound",))[:, 0]
    np.testing.assert_array_equal(read(copy / "call.wav")[:, 0], np.concatenate([held, after]))
    assert not journal_path(copy / "call.wav").exists()


def test_a_journal_is_placed_only_in_its_own_file(tmp_path: Path):
    """A journal left beside a file that was since removed is never placed in a new
    recording that takes the name; at start-up, one with no recording is removed."""
    live = tmp_path / "live"
    live.mkdir()
    rec = open_recording(live, "call", RATE, resume_within=60)
    for frame in frames("inbound", range(10), 1):
        rec.append(frame)
    copy = killed_copy(live, tmp_path / "killed")
    rec.close()
    (copy / "call.wav").unlink()
    stale = shutil.copy(journal_path(copy / "call.wav"), tmp_path / "stale.journal")
    fresh = open_recording(copy, "call", RATE, resume_within=60)
    assert fresh.frames_on_disk == 0
    fresh.append(Frame("inbound", tone(800, 2), RATE, 0))
    fresh.close()
    np.testing.assert_array_equal(read(copy / "call.wav")[:, 0], tone(800, 2))
    orphan = journal_path(copy / "gone.wav")
    shutil.copy(stale, orphan)
    assert recover_recordings(copy) == []
    assert not orphan.exists()


def test_recovery_leaves_a_live_writer_and_its_journal_alone(tmp_path: Path):
    rec = open_recording(tmp_path, "live", RATE, resume_within=60)
    sent = frames("inbound", range(30), 1)
    for frame in sent:
        rec.append(frame)
    assert recover_recordings(tmp_path) == []  # another worker starting on the directory
    assert journal_path(tmp_path / "live.wav").exists()
    rec.close()
    np.testing.assert_array_equal(read(tmp_path / "live.wav"), placed(sent, ("inbound",)))


# ---------------------------------------------------------------- a real server, SIGKILLed

HANDLER = """
import os
from mediastream import StreamHandler


class Ledger(StreamHandler):
    '''Notes every frame it is handed, in a file the kernel has before on_audio returns.'''

    async def on_start(self):
        self.fd = os.open({log!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    async def on_audio(self, frame):
        os.write(self.fd, f"{{self.call.stream_id}} {{frame.track}} {{frame.position}} "
                          f"{{len(frame.pcm)}}\\n".encode())
"""


def ledger(path: Path) -> dict[tuple[str, str], int]:
    """(stream, track) -> one past the last sample its handler was handed."""
    ends: dict[tuple[str, str], int] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            stream, track, position, n = line.split()
            ends[stream, track] = max(ends.get((stream, track), 0), int(position) + int(n))
    return ends


def header_frames(path: Path) -> int:
    """Frames the WAV's header claims (a killed writer's header, before any repair)."""
    with path.open("rb") as f:
        head = f.read(44)
    channels = struct.unpack("<H", head[22:24])[0]
    return struct.unpack("<I", head[40:44])[0] // (2 * channels)


@pytest.mark.slow
async def test_a_server_killed_mid_call_keeps_every_frame_its_handler_was_handed(
    tmp_path: Path,
):
    """Two calls (one with both tracks, one with a frame that comes 12 frames late), killed
    with SIGKILL 13 frames into a block; the next start's recovery puts back all of it."""
    log = tmp_path / "ledger.txt"
    (tmp_path / "ledger.py").write_text(HANDLER.format(log=str(log)))
    record_dir = tmp_path / "rec"
    voice = synthesize_speechlike(2.0, RATE, seed=3)
    mono = plan_call(voice, stream_id="kill-mono")
    both = plan_call(
        {"inbound": voice, "outbound": synthesize_speechlike(2.0, RATE, seed=4)},
        tracks=("inbound", "outbound"), stream_id="kill-both",
    )  # fmt: skip
    sent = 88  # blocks end at frames 25, 50, 75: 13 frames (0.26 s) are in no block
    proc, port, lines = serve(
        "--handler", f"{tmp_path / 'ledger.py'}:Ledger", "--record-dir", str(record_dir),
    )  # fmt: skip
    try:
        async with (  # closing after the kill: no handshake to wait for
            connect(f"ws://127.0.0.1:{port}/", close_timeout=0.1) as a,
            connect(f"ws://127.0.0.1:{port}/", close_timeout=0.1) as b,
        ):
            await a.send(json.dumps(mono.start_frame()))
            await b.send(json.dumps(both.start_frame()))
            order = [c for c in range(1, sent + 1) if c != 41] + [41]  # 41 after 88: late
            order.insert(order.index(54), order.pop())  # ... 53, 41, 54 ...: 12 frames late
            for chunk in order:
                await a.send(media_frame(mono, chunk))
            for chunk in range(1, sent + 1):
                await b.send(media_frame(both, chunk))
                await b.send(media_frame(both, chunk, track="outbound"))
            wanted = {("kill-mono", "inbound"), ("kill-both", "inbound"), ("kill-both", "outbound")}
            deadline = time.monotonic() + 30
            while not all(ledger(log).get(key, 0) >= sent * FRAME for key in wanted):
                assert time.monotonic() < deadline, f"{ledger(log)}\n{''.join(lines)}"
                await asyncio.sleep(0.02)  # the handlers' ledger, polled: the condition
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
    handed = ledger(log)
    for name in ("kill-mono", "kill-both"):  # the kill left audio outside the WAVs' headers
        assert header_frames(record_dir / f"{name}.wav") < sent * FRAME
        assert journal_path(record_dir / f"{name}.wav").exists()
    again, _, again_lines = serve("--record-dir", str(record_dir))  # recovery, then listening
    again.send_signal(signal.SIGTERM)
    code, output = await asyncio.to_thread(finish, again, again_lines, 30)
    assert code == 0, output
    assert "recovered 2 recording(s)" in output
    for plan, layout in ((mono, ("inbound",)), (both, ("inbound", "outbound"))):
        path = record_dir / f"{plan.stream_id}.wav"
        assert not journal_path(path).exists()
        data = read(path)
        for channel, track in enumerate(layout):
            end = handed[plan.stream_id, track]
            expected = plan.expected_pcm(track)
            assert len(data) >= end
            np.testing.assert_array_equal(data[:end, channel], expected[:end])
            rest = data[end:, channel]  # frames the recorder had but no handler yet: exact too
            assert ((rest == expected[end : len(data)]) | (rest == 0)).all()
