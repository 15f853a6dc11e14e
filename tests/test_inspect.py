"""``mediastream inspect`` against simulated calls recorded by a real server: the sidecar's
report as a table and as JSON, the figures a WAV alone gives (checked against the audio that
was sent, computed here independently), the picture (measured in its pixels), the progress
line and the one-line errors.

``MEDIASTREAM_DOCS_PICTURES=1`` also writes the README's picture (docs/inspect.png).
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from mediastream import MediaServer, StreamHandler, StreamOptions
from mediastream.cli import main
from mediastream.errors import install_hint
from mediastream.simulate import CallPlan, plan_call, send_call, synthesize_speechlike
from tests.server.test_resilience import media_texts, send_frames

REPO = Path(__file__).resolve().parents[1]
RATE = 8000
FRAME = RATE // 50


async def record(record_dir: Path, *plans: CallPlan) -> None:
    async with MediaServer(StreamHandler, port=0, options=StreamOptions(record_dir)) as srv:
        await asyncio.gather(*(send_call(f"ws://127.0.0.1:{srv.port}/s", p) for p in plans))


async def record_with_reconnect(record_dir: Path, plan: CallPlan, split: int) -> None:
    """Chunks 1..split on one socket (closed without stop), the rest on a second one."""
    start = [json.dumps({"event": "connected", "version": "1.0.0"}), json.dumps(plan.start_frame())]
    chunks = len(next(iter(plan.payloads.values())))
    async with MediaServer(StreamHandler, port=0, options=StreamOptions(record_dir)) as srv:
        url = f"ws://127.0.0.1:{srv.port}/s"
        await send_frames(url, start + media_texts(plan, 1, split), stop=False)
        await asyncio.sleep(0.2)  # the first socket is gone: the stream waits for a resume
        rest = media_texts(plan, split + 1, chunks)
        await send_frames(url, [*start, *rest, json.dumps(plan.stop_frame(999))], stop=True)
        for _ in range(100):  # the sidecar is written as the stream ends
            if (record_dir / f"{plan.stream_id}.json").exists():
                break
            await asyncio.sleep(0.02)


def injected_call(stream_id: str) -> CallPlan:
    """L16 (bit-exact) in both tracks; inbound has a clipped burst, 0.5 s of digital silence
    and two frames dropped on purpose."""
    inbound = synthesize_speechlike(2.0, RATE).copy()
    inbound[8000:8040] = 32767
    inbound[8040:8060] = -32768
    inbound[20 * FRAME : 45 * FRAME] = 0  # frames 21..45 (0.40 s to 0.90 s): silence
    outbound = synthesize_speechlike(2.0, RATE, seed=3)
    return plan_call(
        {"inbound": inbound, "outbound": outbound},
        codec="L16",
        sample_rate=RATE,
        tracks=("inbound", "outbound"),
        stream_id=stream_id,
        drop={"inbound": {60, 61}},  # 1.18 s, 2 frames
    )


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["inspect", *args])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ the report


async def test_the_table_and_json_show_the_sidecar_report(
    record_dir: Path, capsys: pytest.CaptureFixture[str]
):
    plan = injected_call("injected")
    await record(record_dir, plan)
    wav = record_dir / "injected.wav"
    sidecar = json.loads((record_dir / "injected.json").read_text())

    code, out, _ = run_cli(capsys, str(wav), "--json")
    assert code == 0
    assert json.loads(out) == {"file": str(wav), "source": "sidecar", **sidecar}

    code, out, _ = run_cli(capsys, str(wav))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == str(wav)
    assert f"  report       {record_dir / 'injected.json'} (version 1)" in lines
    assert "  audio        L16, 8000 Hz, 2 tracks (inbound, outbound)" in lines
    assert "  duration     2.00 s" in lines
    frames = sidecar["frames"]
    assert frames["lost"] == 2 and frames["received"] == 198
    assert (
        f"  frames       {frames['received']} received · 2 lost · 0 reordered · 0 late · "
        "0 duplicated"
    ) in lines
    assert "  gaps         1: inbound at 1.18 s (2 frames)" in lines
    assert "  reconnects   0" in lines
    header = next(line for line in lines if line.lstrip().startswith("track"))
    assert header.split() == ["track", "level", "peak", "clipped", "digital", "silence", "speech"]
    inbound = next(line for line in lines if line.lstrip().startswith("inbound "))
    assert "32768" in inbound.split() and "60" in inbound.split()  # peak, clipped


async def test_without_a_sidecar_the_figures_come_from_the_wav(
    record_dir: Path, capsys: pytest.CaptureFixture[str]
):
    plan = injected_call("wav-only")
    await record(record_dir, plan)
    wav = record_dir / "wav-only.wav"
    server = json.loads((record_dir / "wav-only.json").read_text())
    (record_dir / "wav-only.json").unlink()

    code, out, _ = run_cli(capsys, str(wav), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["source"] == "wav" and report["stream_id"] == "wav-only"
    assert (report["tracks"], report["sample_rate"]) == (["inbound", "outbound"], RATE)
    inbound = plan.expected_pcm("inbound")  # what was sent, lost frames as zeros
    assert report["duration_seconds"] == len(inbound) / RATE == 2.0
    # gaps: each run of exact zeros of 20 ms or more: the silence put in, the dropped frames
    assert report["gaps"] == [
        {"track": "inbound", "position_seconds": 0.4, "frames": 25},
        {"track": "inbound", "position_seconds": 1.18, "frames": 2},
    ]
    level = report["levels"]["inbound"]
    wide = inbound.astype(np.float64)
    rms = 10 * np.log10(np.mean(wide * wide) / 32768.0**2)
    assert level["rms_dbfs"] == pytest.approx(rms, abs=0.005)
    assert level["peak"] == 32768 and level["clipped"] == 60
    frames = inbound.reshape(-1, FRAME)
    silent = np.count_nonzero(np.abs(frames.astype(np.int32)).max(axis=1) <= 8)
    assert silent == 27 and level["digital_silence"] == round(27 / 100, 4)
    assert report["levels"]["outbound"]["clipped"] == 0
    for absent in ("frames", "jitter_ms", "handler_lag_p99_ms", "playback", "reconnects"):
        assert report[absent] is None
    # the server's figures agree where a WAV can tell (it leaves lost frames out of levels)
    heard = server["levels"]["inbound"]
    assert (heard["peak"], heard["clipped"]) == (level["peak"], level["clipped"])
    assert heard["digital_silence"] == round(25 / 98, 4)
    assert heard["rms_dbfs"] == pytest.approx(rms + 10 * np.log10(100 / 98), abs=0.01)

    code, out, _ = run_cli(capsys, str(wav))
    assert "none beside it: computed from the WAV" in out
    assert "  gaps         2: inbound at 0.40 s (25 frames), inbound at 1.18 s (2 frames)" in out
    assert "frames " not in out  # not known from a WAV: left out, not made up


async def test_many_files_get_a_progress_line_each_and_json_a_list(record_dir: Path):
    from mediastream.inspect import run

    plans = [plan_call(synthesize_speechlike(0.5, RATE), stream_id=f"many-{n}") for n in range(3)]
    await record(record_dir, *plans)
    files = [str(record_dir / f"many-{n}.wav") for n in range(3)]
    out, err = io.StringIO(), io.StringIO()
    assert run(files, out=out, err=err) == 0
    assert err.getvalue().splitlines() == [f"inspect: {n + 1}/3 {f}" for n, f in enumerate(files)]
    assert out.getvalue().count("  report       ") == 3
    out = io.StringIO()
    assert run(files, as_json=True, out=out, err=io.StringIO()) == 0
    assert [r["stream_id"] for r in json.loads(out.getvalue())] == ["many-0", "many-1", "many-2"]


def test_a_terminal_gets_one_bar_redrawn_in_place() -> None:
    from mediastream.inspect import Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    progress = Progress(2, tty)
    progress.step(0, Path("a.wav"))
    progress.step(1, Path("b.wav"))
    progress.close()
    text = tty.getvalue()
    assert "\r\x1b[Kinspect [" in text and "2/2 b.wav" in text and text.endswith(" s\n")
    assert text.count("\n") == 1


# ------------------------------------------------------------------ errors


def test_missing_files_and_other_formats_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    notes = tmp_path / "notes.wav"
    notes.write_text("not audio\n")
    flac = tmp_path / "call.flac"
    soundfile.write(flac, np.zeros(800, dtype=np.int16), RATE)
    good = tmp_path / "good.wav"
    soundfile.write(good, np.zeros(800, dtype=np.int16), RATE)
    cases = [
        ([str(tmp_path / "missing.wav")], "missing.wav: no such file"),
        ([str(notes)], "notes.wav: not a WAV file"),
        ([str(flac)], "call.flac: not a WAV file (it is FLAC"),
        ([str(tmp_path)], "is a directory"),
        ([str(good), str(tmp_path / "later.wav")], "later.wav: no such file"),
        ([str(good), "--spectrogram"], "--spectrogram draws into the picture: add --png"),
    ]
    for args, fragment in cases:
        code, out, err = run_cli(capsys, *args)
        assert code == 2, args
        assert out == ""  # checked before any output
        assert err.count("\n") == 1 and err.startswith("mediastream: error: "), err
        assert fragment in err, (fragment, err)


def test_png_without_matplotlib_names_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    wav = tmp_path / "call.wav"
    soundfile.write(wav, np.zeros(800, dtype=np.int16), RATE)
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    code, out, err = run_cli(capsys, str(wav), "--png", str(tmp_path / "call.png"))
    assert (code, out) == (2, "")
    assert err == f"mediastream: error: --png needs matplotlib: {install_hint('inspect')}\n"


# ------------------------------------------------------------------ the picture

needs_matplotlib = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None,
    reason="the picture needs the inspect extra (matplotlib): pip install -e '.[test]'",
)


def pixels(path: Path) -> np.ndarray:
    from matplotlib.image import imread

    return (imread(str(path))[:, :, :3] * 255).round().astype(np.int16)


def near(image: np.ndarray, color: str, tolerance: int = 40) -> np.ndarray:
    rgb = np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)])
    return np.abs(image - rgb).max(axis=2) <= tolerance


@needs_matplotlib
async def test_the_picture_shows_two_channels_the_gap_and_the_reconnect(
    record_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    from mediastream.inspect import (
        GAP_COLOR,
        RECONNECT_COLOR,
        TRACK_COLORS,
        draw_call,
        inspect_file,
        read_recording,
    )

    seconds = 4.0
    plan = plan_call(
        {
            "inbound": synthesize_speechlike(seconds, RATE),
            "outbound": synthesize_speechlike(seconds, RATE, seed=3)[::-1].copy(),
        },
        tracks=("inbound", "outbound"),
        stream_id="pictured",
        drop={"inbound": {66, 67, 68, 69, 70}},  # 1.30 s to 1.40 s
    )
    await record_with_reconnect(record_dir, plan, split=125)  # the second socket at 2.50 s
    wav = record_dir / "pictured.wav"
    report = json.loads((record_dir / "pictured.json").read_text())
    assert report["reconnects"] == [{"at_seconds": 2.5}]
    assert report["gaps"] == [{"track": "inbound", "position_seconds": 1.3, "frames": 5}]

    out = tmp_path / "pictured.png"
    code, text, _ = run_cli(capsys, str(wav), "--png", str(out))
    assert code == 0 and f"  picture      {out}" in text
    image = pixels(out)
    assert image.shape[:2] == (468, 1200)  # 12 x 4.68 inches at 100 dpi
    background = (image >= 250).all(axis=2)
    assert 0.08 < 1 - background.mean() < 0.6  # drawn, and not a solid block

    boxes = draw_call(inspect_file(wav), read_recording(wav), tmp_path / "again.png")
    assert (pixels(tmp_path / "again.png") == image).all()  # the boxes are of that picture
    assert list(boxes) == ["waveform inbound", "waveform outbound", "level"]
    inbound, outbound = TRACK_COLORS[0], TRACK_COLORS[1]

    def panel(name: str) -> np.ndarray:
        left, top, right, bottom = boxes[name]
        return image[top + 3 : bottom - 3, left + 3 : right - 3]

    def column(name: str, at: float) -> np.ndarray:
        left, top, right, bottom = boxes[name]
        x = round(left + at / seconds * (right - left))
        return image[top + 3 : bottom - 3, x - 1 : x + 2]

    waves = {name: panel(f"waveform {name}") for name in ("inbound", "outbound")}
    area = waves["inbound"].shape[0] * waves["inbound"].shape[1]
    assert near(waves["inbound"], inbound).sum() > 0.1 * area
    assert near(waves["inbound"], outbound).sum() == 0
    assert near(waves["outbound"], outbound).sum() > 0.1 * area
    assert near(waves["outbound"], inbound).sum() == 0
    level = panel("level")
    assert near(level, inbound, 10).sum() > 500 and near(level, outbound, 10).sum() > 500
    # the gap: shaded (its colour at 25 % on white) in the inbound panel only, where it is
    shade = "#" + "".join(f"{round(255 - 0.25 * (255 - int(GAP_COLOR[i : i + 2], 16))):02x}"
                          for i in (1, 3, 5))  # fmt: skip
    assert near(column("waveform inbound", 1.35), shade, 12).mean() > 0.5
    assert near(column("waveform outbound", 1.35), shade, 12).sum() == 0
    assert near(column("waveform inbound", 0.6), shade, 12).sum() == 0
    # the reconnect: a dashed line across every panel at 2.5 s, nowhere at 1 s
    for name in boxes:
        assert near(column(name, 2.5), RECONNECT_COLOR, 60).mean() > 0.2, name
        assert near(column(name, 1.0), RECONNECT_COLOR, 60).sum() == 0, name

    spectrogram = tmp_path / "spectrogram.png"
    boxes = draw_call(inspect_file(wav), read_recording(wav), spectrogram, spectrogram=True)
    assert list(boxes)[-2:] == ["spectrogram inbound", "spectrogram outbound"]
    assert pixels(spectrogram).shape[0] > image.shape[0]
    if os.environ.get("MEDIASTREAM_DOCS_PICTURES"):
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copyfile(out, REPO / "docs" / "inspect.png")


@needs_matplotlib
async def test_png_into_a_folder_puts_each_picture_there(record_dir: Path, tmp_path: Path):
    from mediastream.inspect import run

    plans = [plan_call(synthesize_speechlike(0.5, RATE), stream_id=f"pic-{n}") for n in range(2)]
    await record(record_dir, *plans)
    files = [str(record_dir / f"pic-{n}.wav") for n in range(2)]
    assert run(files, png=str(tmp_path / "pictures"), out=io.StringIO(), err=io.StringIO()) == 0
    assert sorted(p.name for p in (tmp_path / "pictures").iterdir()) == ["pic-0.png", "pic-1.png"]
    assert run(files[:1], png=str(record_dir), out=io.StringIO()) == 0  # beside the WAV
    assert (record_dir / "pic-0.png").read_bytes().startswith(b"\x89PNG")
