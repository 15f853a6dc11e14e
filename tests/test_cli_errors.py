"""Expected user errors, as a newcomer meets them: one line, ``mediastream: error:``, exit 2.

Every test runs the real command line in a subprocess; a traceback anywhere is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mediastream
from tests.processes import REPO, env, free_port
from tests.processes import mediastream as run

# a subprocess per test (about 1 s each, 50 s in all): out of the quick run (-m 'not slow')
pytestmark = pytest.mark.slow


def one_error_line(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The single stderr line of an expected user error, checked to hold ``fragments``."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mediastream: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def console_script_env() -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH pointing at the repository."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONUNBUFFERED": "1"}


def console(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``mediastream`` console script, run from ``cwd``."""
    script = shutil.which("mediastream")
    assert script, "the mediastream console script is not installed"
    return subprocess.run(
        [script, *args], capture_output=True, text=True, timeout=60, cwd=cwd,
        env=console_script_env(),
    )  # fmt: skip


# ------------------------------------------------------------------ serve --handler


def test_readme_handler_form_works_from_the_directory_holding_the_module(tmp_path: Path):
    """``mediastream serve --handler my_bot:Bot`` as the README shows it, via the console
    script (which, unlike ``python -m``, does not put the current directory on sys.path)."""
    (tmp_path / "my_bot.py").write_text(
        "from pathlib import Path\n"
        "from mediastream import StreamHandler\n"
        "class Bot(StreamHandler):\n"
        "    async def on_start(self):\n"
        "        Path('ran-' + self.call.stream_id).write_text('on_start')\n"
    )
    script = shutil.which("mediastream")
    assert script
    proc = subprocess.Popen(
        [script, "serve", "--port", "0", "--handler", "my_bot:Bot", "--record-dir", "rec"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env=console_script_env(),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 60
        port = None
        while port is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.search(r"listening on ws://[\d.]+:(\d+)/", line)
            port = int(match.group(1)) if match else None
        assert port, "".join(lines)
        sent = run("simulate", f"ws://127.0.0.1:{port}/", "--stream-id", "nb")
        assert sent.returncode == 0, sent.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert (tmp_path / "ran-nb").read_text() == "on_start"
    # the record dir was created at start-up and the probe file is gone again
    assert sorted(p.name for p in (tmp_path / "rec").glob("*.wav")) == ["nb.wav"]


def test_handler_module_not_found_names_module_class_and_search_path(tmp_path: Path):
    line = one_error_line(
        console(tmp_path, "serve", "--port", "0", "--handler", "no_such_bot:Bot"),
        "'no_such_bot'", "'Bot'", "search path:", str(tmp_path),
    )  # fmt: skip
    assert "ModuleNotFoundError" not in line


def test_handler_module_without_the_class(tmp_path: Path):
    (tmp_path / "my_bot.py").write_text("class Other:\n    pass\n")
    one_error_line(
        console(tmp_path, "serve", "--port", "0", "--handler", "my_bot:Bot"),
        "'my_bot'", "no class 'Bot'", str(tmp_path / "my_bot.py"), "search path:",
    )  # fmt: skip


def test_handler_class_that_is_not_a_stream_handler(tmp_path: Path):
    (tmp_path / "my_bot.py").write_text("class Bot:\n    pass\n")
    one_error_line(
        console(tmp_path, "serve", "--port", "0", "--handler", "my_bot:Bot"),
        "'Bot'", "'my_bot'", "not a subclass of mediastream.StreamHandler", "search path:",
    )  # fmt: skip


def test_import_error_inside_the_handler_module_names_its_cause_and_line(tmp_path: Path):
    (tmp_path / "my_bot.py").write_text(
        "from mediastream import StreamHandler\nimport no_such_dependency\n"
    )
    one_error_line(
        console(tmp_path, "serve", "--port", "0", "--handler", "my_bot:Bot"),
        "my_bot:Bot", "No module named 'no_such_dependency'", f"{tmp_path / 'my_bot.py'}:2",
    )  # fmt: skip


def test_syntax_error_in_the_handler_module_names_its_line(tmp_path: Path):
    (tmp_path / "my_bot.py").write_text("import os\nclass Bot(:\n")
    one_error_line(
        run("serve", "--port", "0", "--handler", f"{tmp_path / 'my_bot.py'}:Bot"),
        "SyntaxError", f"{tmp_path / 'my_bot.py'}:2",
    )  # fmt: skip


def test_handler_file_path_form_errors(tmp_path: Path):
    one_error_line(
        run("serve", "--port", "0", "--handler", f"{tmp_path}/missing.py:Bot"),
        "no such file", "missing.py",
    )  # fmt: skip
    one_error_line(run("serve", "--port", "0", "--handler", "my_bot"), "module:Class")


# ------------------------------------------------------------------ serve start-up


def test_record_dir_under_a_regular_file(tmp_path: Path):
    (tmp_path / "afile").write_text("")
    one_error_line(
        run("serve", "--port", "0", "--record-dir", str(tmp_path / "afile" / "rec")),
        "--record-dir", "afile/rec", "cannot create or write",
    )  # fmt: skip


def test_record_dir_that_is_a_file(tmp_path: Path):
    (tmp_path / "afile").write_text("")
    one_error_line(
        run("serve", "--port", "0", "--record-dir", str(tmp_path / "afile")),
        "--record-dir", "not a directory",
    )  # fmt: skip


@pytest.mark.parametrize("workers", ["1", "2"])
def test_port_in_use(workers: str):
    """(``--log-level error``: the start-up log records before the bind are not the error.)"""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        one_error_line(
            run("--log-level", "error", "serve", "--host", "127.0.0.1", "--port", str(port),
                "--workers", workers),
            f"cannot listen on 127.0.0.1:{port}: Address already in use",
        )  # fmt: skip


def test_port_out_of_range():
    one_error_line(run("serve", "--port", "99999"), "--port must be from 0 to 65535, not 99999")


def test_unknown_host():
    one_error_line(
        run("--log-level", "error", "serve", "--host", "no-such-host.invalid", "--port", "0"),
        "cannot listen on no-such-host.invalid:0", "unknown host",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("flag", "value", "rule"),
    [
        ("--idle-timeout", "-5", "more than 0"),
        ("--handshake-timeout", "0", "more than 0"),
        ("--auth-timeout", "-1", "more than 0"),
        ("--resume-grace", "-1", "at least 0"),
        ("--drain-seconds", "-1", "at least 0"),
        ("--takeover-seconds", "-1", "at least 0"),
        ("--max-backlog-seconds", "-1", "at least 0"),
        ("--max-gap-seconds", "0", "more than 0"),
        ("--ping-interval", "-1", "at least 0"),
        ("--max-streams", "0", "at least 1"),
        ("--max-frame-bytes", "0", "at least 1"),
        ("--reorder-depth", "-1", "at least 0"),
        ("--workers", "0", "at least 1"),
    ],
)
def test_serve_negative_durations_and_limits(flag: str, value: str, rule: str):
    one_error_line(run("serve", "--port", "0", flag, value), f"{flag} must be {rule}, not {value}")


def test_telnyx_key_error_stays_one_line():
    one_error_line(run("serve", "--port", "0", "--telnyx-public-key", "not base64!"), "public key")


# ------------------------------------------------------------------ simulate


def test_simulate_missing_audio_file(tmp_path: Path):
    one_error_line(
        run("simulate", "ws://127.0.0.1:1/", "--audio", str(tmp_path / "none.wav")),
        "none.wav", "does not exist",
    )  # fmt: skip


def test_simulate_unreadable_audio(tmp_path: Path):
    (tmp_path / "x.wav").write_text("this is not audio\n")
    one_error_line(
        run("simulate", "ws://127.0.0.1:1/", "--audio", str(tmp_path / "x.wav")),
        "cannot read", "x.wav", "as audio",
    )  # fmt: skip


def test_simulate_url_without_scheme():
    one_error_line(run("simulate", "127.0.0.1:8765"), "ws://", "'127.0.0.1:8765'")


def test_simulate_connection_refused():
    port = free_port()
    one_error_line(
        run("simulate", f"ws://127.0.0.1:{port}/"), f"cannot connect to ws://127.0.0.1:{port}/",
        "refused",
    )  # fmt: skip


def test_simulate_unknown_codec():
    one_error_line(run("simulate", "ws://127.0.0.1:1/", "--codec", "FOO"), "--codec FOO")


def test_simulate_amr_wb_cannot_be_sent():
    line = one_error_line(
        run("simulate", "ws://127.0.0.1:1/", "--codec", "AMR-WB"), "--codec AMR-WB"
    )
    # with the ffmpeg extra it decodes but does not encode; without it, the extra is named
    assert "can be decoded but not encoded" in line or "ffmpeg" in line, line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--drop-rate", "2"), "--drop-rate must be from 0 to 1, not 2"),
        (("--calls", "0"), "--calls must be at least 1, not 0"),
        (("--stagger", "-1"), "--stagger must be at least 0, not -1"),
        (("--dtmf", "x"), "--dtmf takes SECONDS:DIGIT, not 'x'"),
    ],
)
def test_simulate_values_out_of_range(args: tuple[str, ...], expected: str):
    one_error_line(run("simulate", "ws://127.0.0.1:1/", *args), expected)


# ------------------------------------------------------------------ replay


def test_replay_missing_file(tmp_path: Path):
    one_error_line(
        run("replay", str(tmp_path / "none.jsonl"), "ws://127.0.0.1:1/"),
        "none.jsonl", "does not exist",
    )  # fmt: skip


def test_replay_file_that_is_not_jsonl(tmp_path: Path):
    (tmp_path / "notes.jsonl").write_text("hello\n")
    one_error_line(
        run("replay", str(tmp_path / "notes.jsonl"), "ws://127.0.0.1:1/"),
        "notes.jsonl", "is not a capture file", "line 1",
    )  # fmt: skip


def test_replay_arguments_swapped(tmp_path: Path):
    (tmp_path / "c.jsonl").write_text("")
    one_error_line(run("replay", "ws://127.0.0.1:1/", str(tmp_path / "c.jsonl")), "URL last")


# ------------------------------------------------------------------ demo, bench, texml


def test_demo_negative_seconds():
    one_error_line(run("demo", "--seconds", "-1"), "--seconds must be more than 0, not -1")


def test_bench_negative_seconds_and_unknown_codec():
    one_error_line(run("bench", "--seconds", "-1"), "--seconds must be more than 0, not -1")
    one_error_line(run("bench", "--codec", "FOO"), "cannot benchmark FOO")


def test_texml_without_url_says_it_is_required():
    one_error_line(run("texml"), "--url is required")
    one_error_line(run("texml", "--url", "http://x"), "ws://")


# ------------------------------------------------------------------ parser


def test_version():
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"mediastream {mediastream.__version__}"


def test_log_level_after_the_command(tmp_path: Path):
    result = run("demo", "--log-level", "debug", "--seconds", "0.2", "--record-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert " DEBUG " in result.stderr
    quiet = run("--log-level", "error", "demo", "--seconds", "0.2", "--record-dir", str(tmp_path))
    assert quiet.returncode == 0 and " DEBUG " not in quiet.stderr and " INFO " not in quiet.stderr


def test_bad_flag_after_a_command_prints_that_commands_usage():
    result = run("serve", "--prot", "9000")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("usage: mediastream serve "), result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "mediastream: error: unrecognized arguments: --prot 9000 (see 'mediastream serve --help')"
    )


# ------------------------------------------------------------------ help texts


def test_help_names_every_route_and_every_default():
    serve = run("serve", "--help").stdout
    for route in ("/healthz", "/metrics", "/texml", "/callbacks/stream"):
        assert route in serve.split("options:")[0], route
    flat = " ".join(serve.split())
    assert "codec of the audio played back" in flat.split("--bidirectional-codec {")[2][:80]
    assert "rate of that audio" in flat.split("--bidirectional-sampling-rate HZ")[2][:80]
    simulate = " ".join(run("simulate", "--help").stdout.split())
    assert "track(s) to send (default: inbound)" in simulate
    assert "time between call starts (default: 0.0 s)" in simulate
    assert "0 to 1 (default: 0.0)" in simulate
    assert "repeatable" in simulate.split("--dtmf SECONDS:DIGIT")[-1][:80]


# every flag's default and unit in one style: tests/test_cli.py (in-process, in the quick run)


@pytest.mark.parametrize(("detector", "module", "extra"), [
    ("webrtc", "webrtcvad", "vad"), ("silero", "onnxruntime", "silero"),
])  # fmt: skip
def test_speech_detector_without_its_extra(tmp_path: Path, detector: str, module: str, extra: str):
    """The extra's module fails to import (as when it is not installed): ``serve`` says which
    extra installs it, at start-up, before listening."""
    (tmp_path / f"{module}.py").write_text("raise ImportError('not installed')\n")
    result = subprocess.run(
        [sys.executable, "-m", "mediastream", "--log-level", "error", "serve", "--port", "0",
         "--speech", detector],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**env(), "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"},
    )  # fmt: skip
    one_error_line(result, f"speech detector {detector!r} needs {module}", f"[{extra}]")
