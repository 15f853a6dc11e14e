"""The command line as a user runs it: demo, simulate, serve with a custom handler, examples."""

from __future__ import annotations

import re
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile

from mediastream.simulate import load_audio, plan_call, synthesize_speechlike
from tests.processes import example_server, mediastream, start_server

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop


def test_help_explains_every_command():
    result = mediastream("--help")
    assert result.returncode == 0
    for command in ("serve", "demo", "simulate", "bench"):
        assert command in result.stdout
    serve_help = mediastream("serve", "--help").stdout
    assert "--record-dir" in serve_help and "--handler" in serve_help and "healthz" in serve_help


# what a flag's help ends with, in one style: its default, or that it is required
HELP_END = re.compile(r"\((?P<kind>default|required)(?P<text>[^()]*)\)$")
UNITS = {"SECONDS": " s", "HZ": " Hz", "BYTES": " bytes", "FRAMES": " frames"}


def test_every_flag_of_every_command_states_its_default_and_unit():
    """Every flag of every subcommand (and the top level) ends its help with ``(default: ...)``,
    with the unit where its value has one, or with ``(required ...)``; a repeatable flag says
    so. Walked from the parser itself, so a flag added later is checked too."""
    import argparse

    from mediastream.cli import build_parser

    parser = build_parser()
    assert set(parser.commands) == {
        "serve",
        "demo",
        "simulate",
        "replay",
        "bench",
        "inspect",
        "merge",
        "texml",
    }
    checked = 0
    for command, sub_parser in [("mediastream", parser), *parser.commands.items()]:
        for action in sub_parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            flag = (command, action.option_strings[0])
            assert action.help, flag
            text = " ".join((action.help % {**vars(action), "prog": sub_parser.prog}).split())
            match = HELP_END.search(text)
            assert match, (*flag, text)
            assert match["kind"] == "required" or match["text"].startswith(": "), (*flag, text)
            assert "(default " not in text, (*flag, text)  # the colon form only
            unit = UNITS.get(str(action.metavar))
            if unit and action.default is not None:
                assert match["text"].endswith(unit), (*flag, f"needs the unit {unit!r}", text)
            if isinstance(action, argparse._AppendAction):
                assert "repeatable" in text, (*flag, text)
            checked += 1
    assert checked > 70  # every command's flags, not an empty walk


@pytest.mark.slow
def test_demo_prints_a_wav_holding_the_audio_it_sent(tmp_path: Path):
    result = mediastream("--log-level", "warning", "demo", "--record-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    match = re.search(r"recorded (\S+\.wav): ([\d.]+) s", result.stdout)
    assert match, result.stdout
    path = Path(match.group(1))
    assert path.parent == tmp_path.resolve() and float(match.group(2)) == 3.0
    data, rate = soundfile.read(path, dtype="int16")
    clip = synthesize_speechlike(3.0, 8000)
    payloads = plan_call(clip).payloads["inbound"]
    expected = np.concatenate([np.frombuffer(audioop.ulaw2lin(p, 2), np.int16) for p in payloads])
    assert rate == 8000 and len(data) == 24000
    np.testing.assert_array_equal(data, expected)
    # and it is the clip itself, not just any audio: G.711 keeps it within its quantisation noise
    error = data.astype(float) - clip
    snr = 10 * np.log10(np.sum(clip.astype(float) ** 2) / np.sum(error**2))
    assert snr > 30


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.slow
def test_simulate_command_sends_both_tracks_of_a_file_for_several_calls(tmp_path: Path, loop: str):
    """Also the server on uvloop (``serve --loop uvloop``): the same exact recordings."""
    record_dir = tmp_path / "rec"
    source = tmp_path / "speech.flac"
    rng = np.random.default_rng(0)
    stereo_44k = (rng.normal(0, 0.1, (44100 * 2, 2))).clip(-1, 1)
    soundfile.write(source, stereo_44k, 44100)
    proc, port = start_server("--record-dir", str(record_dir), "--loop", loop)
    try:
        result = mediastream(
            "simulate", f"ws://127.0.0.1:{port}/", "--audio", str(source), "--codec", "PCMA",
            "--track", "both", "--calls", "3", "--shuffle", "--stream-id", "cli",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    audio = load_audio(source, 8000)
    for n in (1, 2, 3):
        plan = plan_call(audio, codec="PCMA", tracks=("inbound", "outbound"))
        expected = np.concatenate(
            [np.frombuffer(audioop.alaw2lin(p, 2), np.int16) for p in plan.payloads["inbound"]]
        )
        data, _ = soundfile.read(record_dir / f"cli-{n}.wav", dtype="int16")
        assert data.shape == (len(expected), 2)
        np.testing.assert_array_equal(data[:, 0], expected)
        np.testing.assert_array_equal(data[:, 1], expected)


@pytest.mark.slow
def test_serve_runs_a_handler_given_as_module_and_class(tmp_path: Path):
    handler_file = tmp_path / "my_bot.py"
    handler_file.write_text(
        "from mediastream import StreamHandler\n"
        "class Bot(StreamHandler):\n"
        "    async def on_start(self):\n"
        "        print('BOT START', self.call.stream_id, self.call.custom_parameters, flush=True)\n"
    )
    proc, port = start_server("--handler", f"{handler_file}:Bot")
    try:
        assert (
            mediastream("simulate", f"ws://127.0.0.1:{port}/", "--stream-id", "h1").returncode == 0
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "BOT START h1 {}" in output


@pytest.mark.slow
def test_print_levels_example_prints_per_second_levels():
    with example_server("print_levels.py", stop=signal.SIGINT) as (port, out):
        result = mediastream("simulate", f"ws://127.0.0.1:{port}/", "--stream-id", "lv")
        assert result.returncode == 0, result.stderr
    output = out[0]
    levels = [float(v) for v in re.findall(r"lv inbound second \d: +(-?[\d.]+) dBFS", output)]
    clip = synthesize_speechlike(3.0, 8000).astype(float)
    expected = [
        20 * np.log10(np.sqrt(np.mean(clip[i : i + 8000] ** 2)) / 32768) for i in (0, 8000, 16000)
    ]
    assert len(levels) == 3, output
    np.testing.assert_allclose(levels, expected, atol=0.2)  # G.711 changes the level by < 0.2 dB


@pytest.mark.slow
def test_record_calls_example_records(tmp_path: Path):
    with example_server("record_calls.py", "--dir", str(tmp_path)) as (port, _):
        result = mediastream(
            "simulate", f"ws://127.0.0.1:{port}/", "--stream-id", "ex", "--codec", "L16"
        )
        assert result.returncode == 0, result.stderr
    data, rate = soundfile.read(tmp_path / "ex.wav", dtype="int16")
    assert rate == 16000
    np.testing.assert_array_equal(data, synthesize_speechlike(3.0, 16000))


@pytest.mark.slow
def test_echo_bot_example_against_simulate(tmp_path: Path):
    with example_server("echo_bot.py") as (port, _):
        result = mediastream(
            "simulate", f"ws://127.0.0.1:{port}/", "--stream-id", "echo", "--realtime",
            "--heard-dir", str(tmp_path), "--linger", "0.5",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    heard, rate = soundfile.read(tmp_path / "echo.heard.wav", dtype="int16")
    payloads = plan_call(synthesize_speechlike(3.0, 8000)).payloads["inbound"]
    sent = np.concatenate([np.frombuffer(audioop.ulaw2lin(p, 2), np.int16) for p in payloads])
    assert rate == 8000
    # the heard file is on the call's clock: the echo starts a few ms in, after silence, and
    # a frame the echo sent late leaves a gap (silence) where the caller heard nothing
    start = int(np.flatnonzero(heard)[0]) - int(np.flatnonzero(sent)[0])
    assert 0 <= start < 800 and start + len(sent) <= len(heard) < start + len(sent) + 4000
    # G.711 decode -> encode -> decode is exact
    np.testing.assert_array_equal(heard[heard != 0], sent[sent != 0])


@pytest.mark.slow
def test_ivr_example_cuts_the_prompt_on_a_key(tmp_path: Path):
    with example_server("ivr.py") as (port, out):
        result = mediastream(
            "simulate", f"ws://127.0.0.1:{port}/", "--stream-id", "ivr", "--realtime",
            "--dtmf", "1.5:2", "--linger", "1.0", "--heard-dir", str(tmp_path),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    output = out[0]
    cut = re.search(r"ivr: prompt cut after (\d+) ms", output)
    assert cut and 1300 <= int(cut.group(1)) <= 1600, output
    assert "ivr: answered-2 was heard" in output
    assert "1 clear(s)" in result.stdout
    heard, _ = soundfile.read(tmp_path / "ivr.heard.wav", dtype="int16")
    # what was heard: the prompt up to the key, then two beeps (0.5 s)
    assert abs(len(heard) / 8000 - (int(cut.group(1)) / 1000 + 0.5)) < 0.1


@pytest.mark.slow
def test_readme_handler_snippet_run_as_a_script_says_where_it_listens(tmp_path: Path):
    """``python my_bot.py`` with the README's snippet (``serve(Bot, ...)``): it printed nothing,
    not where it listens, nor the stream's start and end lines."""
    import subprocess
    import sys

    from tests.processes import REPO, env, free_port

    readme = (REPO / "README.md").read_text()
    snippet = readme.split("## Writing a handler", 1)[1].split("```python\n", 1)[1]
    snippet = snippet.split("```", 1)[0]
    assert 'serve(Bot, host="0.0.0.0", port=8765' in snippet, snippet
    port = free_port()
    script = snippet.replace('host="0.0.0.0", port=8765', f'host="127.0.0.1", port={port}')
    (tmp_path / "my_bot.py").write_text(script)
    proc = subprocess.Popen(
        [sys.executable, "my_bot.py"], cwd=tmp_path, env=env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    ready = f"mediastream: listening on ws://127.0.0.1:{port}/\n"
    lines: list[str] = []
    try:
        while ready not in lines and (line := proc.stdout.readline()):
            lines.append(line)  # start-up warnings and INFO lines come first, on stderr
        assert ready in lines, lines
        result = mediastream("simulate", f"ws://127.0.0.1:{port}/", "--stream-id", "snippet")
        assert result.returncode == 0, result.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        output = "".join(lines) + proc.communicate(timeout=30)[0]
    assert "INFO mediastream.runtime.connection: stream snippet: started from" in output, output
    assert "stream snippet: ended after" in output and "recordings/snippet.wav" in output, output
    assert (tmp_path / "recordings" / "snippet.wav").is_file()
