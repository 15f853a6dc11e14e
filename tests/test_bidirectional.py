"""One bidirectional setting: what /texml asks Telnyx for is what the players send.

Each end-to-end test runs the real ``mediastream serve`` in a subprocess with a handler loaded
by ``--handler path/to/file.py:Class`` (the echo bot from examples/, or a tone bot from this
file), reads the far end's settings from the server's own /texml, as Telnyx would, and checks
that the caller hears exactly what the handler played: G.711 and G.722 through one encoder
and one decoder, MP3 through the same MP3 encoder and decoder.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import httpx
import numpy as np
import pytest
import soundfile

from mediastream import StreamHandler, codecs
from mediastream.cli_http import playback_from_stream, playback_mismatch
from mediastream.media.playback import PlaybackConfig
from mediastream.simulate import (
    FarEnd,
    FarEndConfig,
    codec_rate,
    looks_like_mp3,
    plan_call,
    send_call,
    synthesize_speechlike,
)
from mediastream.telnyx.texml import Stream
from tests.media.test_playback import call_until_echoed
from tests.processes import REPO, env, mediastream

THIS = Path(__file__).relative_to(REPO)


def tone(seconds: float, rate: int) -> np.ndarray:
    """A 440 Hz tone whose first sample is loud: its onset is its first non-zero sample."""
    t = np.arange(int(seconds * rate)) / rate
    return (6000 * np.cos(2 * np.pi * 440 * t)).astype(np.int16)


class ToneBot(StreamHandler):
    """Plays one tone ``DELAY`` seconds after the stream starts (loaded by ``serve``)."""

    DELAY: ClassVar[float] = 1.0
    RATE: ClassVar[int] = 8000
    SECONDS: ClassVar[float] = 1.0

    async def on_start(self) -> None:
        self.task = asyncio.create_task(self._later())

    async def _later(self) -> None:
        await asyncio.sleep(self.DELAY)
        await self.call.play(tone(self.SECONDS, self.RATE), self.RATE)


class QuickTone(ToneBot):
    DELAY = 0.0
    SECONDS = 0.5


class G722Tone(QuickTone):
    """Declares its own playback, which wins over the server's (and is logged if different)."""

    RATE = 16000
    playback = PlaybackConfig(mode="rtp", codec="G722")


def one_round(pcm: np.ndarray, codec: str, rate: int) -> np.ndarray:
    """``pcm`` through one encoder and one decoder, 20 ms at a time, as a call carries it."""
    enc, dec = codecs.encoder(codec, rate), codecs.decoder(codec, rate)
    step = enc.sample_rate // 50
    return np.concatenate(
        [dec.decode(enc.encode(pcm[i : i + step])) for i in range(0, len(pcm), step)]
    )


def mp3_round(pcm: np.ndarray, rate: int) -> np.ndarray:
    """``pcm`` as the player encodes one playback and the far end decodes it."""
    buffer = io.BytesIO()
    soundfile.write(buffer, pcm, rate, format="MP3", subtype="MPEG_LAYER_III")
    decoded, _ = soundfile.read(io.BytesIO(buffer.getvalue()), dtype="int16")
    return decoded


@contextlib.contextmanager
def served(*args: str) -> Iterator[tuple[int, list[str]]]:
    """``mediastream serve --port 0 ARGS``; yields (port, output lines), the rest added at exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mediastream", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(), cwd=REPO,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    port = None
    try:
        for line in proc.stdout:
            lines.append(line)
            match = re.search(r"listening on ws://[\d.]+:(\d+)/", line)
            if match:
                port = int(match.group(1))
                break
        assert port is not None, "server did not start:\n" + "".join(lines)
        yield port, lines
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
        lines += rest.splitlines(keepends=True)


async def far_end_from_texml(port: int) -> tuple[FarEndConfig, dict[str, str]]:
    """The far end Telnyx would be after reading this server's /texml (spec defaults)."""
    async with httpx.AsyncClient() as client:
        response = await client.post(f"http://127.0.0.1:{port}/texml")
    assert response.status_code == 200, response.text
    attrs = ET.fromstring(response.text).find("./Connect/Stream").attrib  # type: ignore[union-attr]
    mode = attrs.get("bidirectionalMode", "mp3")
    codec = attrs.get("bidirectionalCodec", "PCMU")
    rate = int(attrs.get("bidirectionalSamplingRate", "8000"))
    return FarEndConfig(mode, codec, rate), dict(attrs)


# ------------------------------------------------------------------ end to end, real serve


@pytest.mark.parametrize("codec", ["G722", "PCMA"])
@pytest.mark.slow
async def test_serve_plays_back_in_the_codec_texml_asks_for(codec: str):
    rate = codec_rate(codec)
    flags = ("--bidirectional-mode", "rtp", "--bidirectional-codec", codec)
    with served("--handler", "examples/echo_bot.py:EchoBot", *flags) as (port, out):
        far, attrs = await far_end_from_texml(port)
        assert (attrs["bidirectionalMode"], attrs["bidirectionalCodec"]) == ("rtp", codec)
        plan = plan_call(synthesize_speechlike(2.0, rate), codec=codec)
        # hang up once every frame's echo has played (one mark each): after a fixed linger, a
        # stall of the loaded server could cut the last chunks off
        far_end = await call_until_echoed(f"ws://127.0.0.1:{port}/", plan, far)
    heard = far_end.heard_audio()
    expected = one_round(plan.expected_pcm(), codec, rate)  # what the echo bot played, coded
    assert len(heard) == len(expected) == 2 * rate
    np.testing.assert_array_equal(heard, expected)
    assert f"playback to callers: rtp {codec} {rate} Hz" in "".join(out)


@pytest.mark.slow
async def test_serve_defaults_to_mp3_like_telnyx():
    """No bidirectional flag: /texml leaves Telnyx on mp3, and the player sends MP3 files."""
    with served("--handler", f"{THIS}:QuickTone") as (port, out):
        far, attrs = await far_end_from_texml(port)
        assert not {k for k in attrs if k.startswith("bidirectional")}, attrs
        assert far.mode == "mp3"
        plan = plan_call(np.zeros(4000, np.int16), codec="PCMU")
        result = await send_call(
            f"ws://127.0.0.1:{port}/", plan, realtime=True, linger=1.5, far_end=far
        )
    assert result.far_end is not None and len(result.far_end.media_times) == 1
    expected = mp3_round(tone(QuickTone.SECONDS, 8000), 8000)
    np.testing.assert_array_equal(result.far_end.heard_audio(), expected)
    assert "playback to callers: mp3" in "".join(out)


@pytest.mark.slow
async def test_a_handlers_own_playback_wins_and_a_mismatch_is_logged_once():
    with served("--handler", f"{THIS}:G722Tone", "--bidirectional-mode", "rtp") as (port, out):
        far, _ = await far_end_from_texml(port)
        assert (far.mode, far.codec) == ("rtp", "PCMU")  # what /texml asks for...
        plan = plan_call(np.zeros(4000, np.int16), codec="PCMU")
        result = await send_call(
            f"ws://127.0.0.1:{port}/", plan, realtime=True, linger=1.0,
            far_end=FarEndConfig("rtp", "G722"),  # ...but the handler plays G.722
        )  # fmt: skip
    assert result.far_end is not None
    expected = one_round(tone(G722Tone.SECONDS, 16000), "G722", 16000)
    np.testing.assert_array_equal(result.far_end.heard_audio(), expected)
    text = "".join(out)
    warnings = [line for line in out if "G722Tone" in line and "WARNING" in line]
    assert len(warnings) == 1, text
    assert "plays rtp G722 16000 Hz, but /texml asks Telnyx for rtp PCMU 8000 Hz" in warnings[0]


# ------------------------------------------------------------------ the simulator's heard file


@pytest.mark.slow
def test_heard_file_is_on_the_calls_clock(tmp_path: Path):
    """A reply that begins 1.0 s into the call begins 1.0 s into the heard file (one frame)."""
    with served("--handler", f"{THIS}:ToneBot", "--bidirectional-mode", "rtp") as (port, _):
        result = mediastream(
            "simulate", f"ws://127.0.0.1:{port}/", "--stream-id", "tone", "--realtime",
            "--heard-dir", str(tmp_path), "--linger", "1.0",
        )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    heard, rate = soundfile.read(tmp_path / "tone.heard.wav", dtype="int16")
    assert rate == 8000
    onset = int(np.flatnonzero(heard)[0])
    frame = rate // 50
    assert abs(onset - ToneBot.DELAY * rate) <= frame, onset / rate
    played = one_round(tone(ToneBot.SECONDS, rate), "PCMU", rate)
    # every sample of the tone, in order (a chunk sent late on a busy machine leaves a gap)
    np.testing.assert_array_equal(heard[heard != 0], played[played != 0])


def test_heard_on_call_clock_places_each_piece_where_it_played():
    far = FarEnd(FarEndConfig("rtp", "PCMU"), "s")
    far.call_start = 100.0
    payload = codecs.encoder("PCMU").encode(np.full(160, 1000, np.int16))
    far.on_media(payload, 100.5)  # plays 100.50 .. 100.52
    far.on_media(payload, 100.51)  # queued behind it: 100.52 .. 100.54
    far.on_media(payload, 101.0)  # after a pause
    far.advance(102.0)
    heard = far.heard_on_call_clock()
    nonzero = np.flatnonzero(heard)
    assert nonzero[0] == 4000 and len(heard) == 8000 + 160
    assert np.all(heard[4000:4320] != 0) and not heard[4320:8000].any()
    assert len(far.heard_audio()) == 480  # the glued form is still there


# ------------------------------------------------------------------ a mode mismatch, one line


@pytest.mark.parametrize(
    ("serve_flags", "simulate_flags", "got", "expected"),
    [
        ((), ("--playback-mode", "rtp"), "an MP3 file", "expects RTP PCMU 8000 Hz"),
        (("--bidirectional-mode", "rtp"), ("--playback-mode", "mp3"), "not an MP3", "MP3 files"),
    ],
    ids=["mp3-sent-rtp-expected", "rtp-sent-mp3-expected"],
)
@pytest.mark.slow
def test_a_playback_mode_mismatch_is_one_line_not_a_traceback(
    serve_flags: tuple[str, ...], simulate_flags: tuple[str, ...], got: str, expected: str
):
    with served("--handler", f"{THIS}:QuickTone", *serve_flags) as (port, _):
        result = mediastream(
            "simulate", f"ws://127.0.0.1:{port}/", "--stream-id", "mm", "--realtime",
            "--linger", "1.0", *simulate_flags,
        )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if got in line]
    assert len(lines) == 1 and expected in lines[0] and "stream mm" in lines[0], output


def test_mp3_detection_is_not_fooled_by_g711_silence():
    buffer = io.BytesIO()
    soundfile.write(buffer, tone(0.2, 8000), 8000, format="MP3", subtype="MPEG_LAYER_III")
    assert looks_like_mp3(buffer.getvalue())
    for codec in ("PCMU", "PCMA", "G722"):
        silence = codecs.encoder(codec).encode(np.zeros(codec_rate(codec) // 50, np.int16))
        assert not looks_like_mp3(silence), codec


# ------------------------------------------------------------------ the setting itself


def test_playback_defaults_are_telnyxs():
    config = PlaybackConfig()
    assert (config.mode, config.codec, config.sample_rate) == ("mp3", "PCMU", 8000)
    assert playback_from_stream(Stream()) == config


def test_playback_follows_the_stream_template():
    stream = Stream(bidirectional_mode="rtp", bidirectional_codec="G722")
    config = playback_from_stream(stream)
    assert (config.mode, config.codec) == ("rtp", "G722")
    assert playback_mismatch(config, PlaybackConfig(mode="rtp", codec="G722")) is None
    assert playback_mismatch(config, PlaybackConfig()) == (
        "plays mp3, but /texml asks Telnyx for rtp G722 16000 Hz: the caller will hear noise"
    )


@pytest.mark.slow
def test_the_simulator_follows_the_servers_mode_by_default(tmp_path: Path):
    """Plain ``serve`` (mp3, like Telnyx) and plain ``simulate`` agree: ``--playback-mode
    auto`` takes MP3 when the first media is an MP3 file, RTP otherwise."""
    for name, serve_flags in (("mp3", ()), ("rtp", ("--bidirectional-mode", "rtp"))):
        heard = tmp_path / name
        with served("--handler", f"{THIS}:QuickTone", *serve_flags) as (port, _):
            result = mediastream(
                "simulate", f"ws://127.0.0.1:{port}/", "--stream-id", "auto", "--realtime",
                "--linger", "1.0", "--heard-dir", str(heard),
            )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        (path,) = heard.iterdir()
        pcm, _ = soundfile.read(path, dtype="int16")
        assert np.count_nonzero(pcm) > 0.5 * 8000 * 0.2, name  # the tone was heard
