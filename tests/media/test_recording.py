"""WAV files on disk: positions, stereo, names, continuation, crash recovery."""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mediastream.media.recording import (
    WavFile,
    WavRecorder,
    recording_base,
    recording_path,
    recover_recordings,
    recover_wav,
    safe_stream_name,
    session_path,
)


@dataclass
class Frame:
    track: str
    pcm: np.ndarray
    sample_rate: int
    position: int


def tone(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-20000, 20000, n, dtype=np.int16)


def _hashed(stream_id: str, reduced: str) -> str:
    """The DESIGN.md rule for ids that are not plain, spelled out independently."""
    return f"{reduced}={hashlib.sha256(stream_id.encode()).hexdigest()[:12]}"


@pytest.mark.parametrize(
    ("stream_id", "base"),
    [
        ("32DE0DEA-53CB-4B21", "32DE0DEA-53CB-4B21"),
        ("v3:abc.def_ghi-1", _hashed("v3:abc.def_ghi-1", "v3_abc.def_ghi-1")),
        ("../../etc/passwd", _hashed("../../etc/passwd", ".._.._etc_passwd")),
        ("/abs/path", _hashed("/abs/path", "_abs_path")),
        ("my call id", _hashed("my call id", "my_call_id")),
        ("..", _hashed("..", "..")),
        (".", _hashed(".", ".")),
        ("...", "..."),
        ("", _hashed("", "")),
        ("a\\b:c*?", _hashed("a\\b:c*?", "a_b_c__")),
        ("x" * 200, "x" * 200),
        ("x" * 201, _hashed("x" * 201, "x" * 64)),
        ("a~2", _hashed("a~2", "a_2")),
        ("caf\u00e9", _hashed("caf\u00e9", "caf_")),
    ],
)
def test_names_stay_inside_the_directory_and_follow_the_rule(
    tmp_path: Path, stream_id: str, base: str
):
    assert recording_base(stream_id) == base
    path = recording_path(tmp_path, stream_id)
    assert path.parent == tmp_path and path.name == f"{base}.wav"
    assert path.resolve().parent == tmp_path.resolve()
    assert session_path(tmp_path, stream_id, 3).name == f"{base}~3.wav"


@pytest.mark.parametrize(
    ("stream_id", "name"),
    [("../../etc/passwd", ".._.._etc_passwd"), ("..", "__"), ("", "_"), ("a\\b:c*?", "a_b_c__")],
)
def test_capture_names_are_unchanged(stream_id: str, name: str):
    """``safe_stream_name`` stays what capture files are named by."""
    assert safe_stream_name(stream_id) == name


def test_wavfile_positional_writes_and_header(tmp_path: Path):
    path = tmp_path / "a.wav"
    wav = WavFile(path, 8000)
    wav.write(0, tone(100, 1)[:, None])
    wav.write(50, tone(100, 2)[:, None])  # overlaps and extends
    wav.close()
    data, rate = soundfile.read(path, dtype="int16")
    assert rate == 8000 and len(data) == 150
    np.testing.assert_array_equal(data[:50], tone(100, 1)[:50])
    np.testing.assert_array_equal(data[50:], tone(100, 2))


def test_recorder_places_frames_by_position_not_arrival(tmp_path: Path):
    path = tmp_path / "r.wav"
    rec = WavRecorder(path, 8000, flush_seconds=0.01)
    frames = [Frame("inbound", tone(160, i), 8000, i * 160) for i in range(20)]
    order = [1, 0, 3, 2, *range(4, 20)]
    for i in order:
        rec.append(frames[i])
        if i % 3 == 0:
            rec.flush()
    rec.close()
    data, _ = soundfile.read(path, dtype="int16")
    np.testing.assert_array_equal(data, np.concatenate([f.pcm for f in frames]))


SLOT = 160
recorder_steps = st.lists(
    st.tuples(
        st.sampled_from(["inbound", "inbound", "inbound", "outbound"]),
        st.integers(0, 30),  # the slot: in order mostly, with repeats, gaps and late ones
        st.booleans(),  # flush after this frame
    ),
    min_size=1,
    max_size=60,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=recorder_steps, in_order=st.booleans(), flush_frames=st.sampled_from([1, 2, 5, 100]))
def test_recorder_holds_the_last_audio_written_at_every_position(
    tmp_path: Path, steps: list[tuple[str, int, bool]], in_order: bool, flush_frames: int
):
    """Whatever the order, repeats, gaps, flushes and tracks: the file is what a plain array
    would hold (later writes win, holes are silence, outbound on the right channel)."""
    if in_order:  # the common shape: each track's frames one after another
        sent: dict[str, int] = {}
        ordered = []
        for track, _, flush in steps:
            ordered.append((track, sent.get(track, 0), flush))
            sent[track] = sent.get(track, 0) + 1
        steps = ordered
    path = tmp_path / "property.wav"
    path.unlink(missing_ok=True)  # one file per example (the fixture is shared by examples)
    recorder = WavRecorder(path, 8000, flush_seconds=flush_frames * SLOT / 8000)
    expected = {track: np.zeros(60 * SLOT, np.int16) for track in ("inbound", "outbound")}
    end = 0
    for n, (track, slot, flush) in enumerate(steps):
        pcm = tone(SLOT, n)
        recorder.append(Frame(track, pcm, 8000, slot * SLOT))  # flushes every flush_frames
        expected[track][slot * SLOT : (slot + 1) * SLOT] = pcm
        end = max(end, (slot + 1) * SLOT)
        if flush:
            recorder.flush()
    recorder.close()
    data, _ = soundfile.read(path, dtype="int16")
    tracks = {track for track, _, _ in steps}
    if len(tracks) == 2:
        assert data.shape == (end, 2)
        np.testing.assert_array_equal(data[:, 0], expected["inbound"][:end])
        np.testing.assert_array_equal(data[:, 1], expected["outbound"][:end])
    else:
        np.testing.assert_array_equal(data, expected[tracks.pop()][:end])


def test_recorder_goes_stereo_when_a_second_track_appears(tmp_path: Path):
    path = tmp_path / "s.wav"
    rec = WavRecorder(path, 8000, flush_seconds=0.05)
    inbound = tone(8000, 1)
    outbound = tone(4000, 2)
    for i in range(0, 8000, 160):
        rec.append(Frame("inbound", inbound[i : i + 160], 8000, i))
        if i >= 4000:  # outbound starts half a second in
            j = i - 4000
            rec.append(Frame("outbound", outbound[j : j + 160], 8000, i))
    rec.close()
    data, _ = soundfile.read(path, dtype="int16")
    assert data.shape == (8000, 2)
    np.testing.assert_array_equal(data[:, 0], inbound)
    np.testing.assert_array_equal(data[:4000, 1], 0)
    np.testing.assert_array_equal(data[4000:, 1], outbound)


def test_outbound_only_stream_is_mono(tmp_path: Path):
    path = tmp_path / "o.wav"
    rec = WavRecorder(path, 16000)
    rec.append(Frame("outbound", tone(320, 3), 16000, 0))
    rec.close()
    data, rate = soundfile.read(path, dtype="int16")
    assert rate == 16000 and data.ndim == 1
    np.testing.assert_array_equal(data, tone(320, 3))


def test_existing_file_is_continued(tmp_path: Path):
    path = tmp_path / "c.wav"
    first = WavRecorder(path, 8000)
    first.append(Frame("inbound", tone(800, 1), 8000, 0))
    first.close()
    second = WavRecorder(path, 8000)
    second.append(Frame("inbound", tone(800, 2), 8000, 0))
    second.close()
    data, _ = soundfile.read(path, dtype="int16")
    np.testing.assert_array_equal(data, np.concatenate([tone(800, 1), tone(800, 2)]))


def test_recover_wav_extends_a_stale_header(tmp_path: Path):
    path = tmp_path / "k.wav"
    wav = WavFile(path, 8000)
    wav.write(0, tone(1000, 1)[:, None])
    wav.close()
    # what a kill between writing data and patching the header leaves: more data than declared
    with open(path, "ab") as f:
        f.write(tone(501, 2).tobytes()[:-1])  # and a torn last sample
    assert soundfile.info(path).frames == 1000
    assert recover_wav(path) is True
    data, _ = soundfile.read(path, dtype="int16")
    np.testing.assert_array_equal(data, np.concatenate([tone(1000, 1), tone(500, 2)]))
    assert recover_wav(path) is False
    assert recover_recordings(tmp_path) == []
    (riff_size,) = struct.unpack("<I", path.read_bytes()[4:8])
    assert riff_size == os.path.getsize(path) - 8


def test_rate_mismatch_is_refused(tmp_path: Path):
    rec = WavRecorder(tmp_path / "m.wav", 8000)
    with pytest.raises(Exception, match="16000 Hz"):
        rec.append(Frame("inbound", tone(10, 1), 16000, 0))
    rec.close()
