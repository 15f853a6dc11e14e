"""``config.py`` is the one place a default is written: ``serve``'s flags default to its
fields, and every flag lands in the field it names."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mediastream.cli import build_parser, config_from_args
from mediastream.config import (
    Config,
    HttpLimits,
    PlaybackConfig,
    ServerLimits,
    SpeechOptions,
    StreamOptions,
)

# flag -> (section, field, a value other than the default)
FLAGS = {
    "--host": (None, "host", "0.0.0.0"),
    "--port": (None, "port", 9000),
    "--record-dir": ("stream", "record_dir", Path("rec")),
    "--capture-dir": ("stream", "capture_dir", Path("cap")),
    "--reorder-depth": ("stream", "reorder_depth", 3),
    "--resume-grace": ("stream", "resume_grace_seconds", 7.0),
    "--max-gap-seconds": ("stream", "max_gap_seconds", 4.0),
    "--takeover-seconds": ("stream", "takeover_seconds", 2.5),
    "--max-backlog-seconds": ("stream", "max_backlog_seconds", 9.0),
    "--max-frame-bytes": ("limits", "max_frame_bytes", 4096),
    "--max-streams": ("limits", "max_streams", 12),
    "--handshake-timeout": ("limits", "handshake_seconds", 3.0),
    "--auth-timeout": ("limits", "auth_seconds", 1.5),
    "--idle-timeout": ("limits", "idle_seconds", 11.0),
    "--drain-seconds": ("limits", "drain_seconds", 4.0),
    "--body-timeout": ("http", "body_seconds", 2.0),
    "--auth-token": (None, "auth_token", "t0ken"),
    "--http-port": (None, "http_port", 9001),
    "--instance-id": (None, "instance_id", "fleet-7"),
}


def serve_args(*argv: str):  # type: ignore[no-untyped-def]
    return build_parser().parse_args(["serve", *argv])


def test_the_flags_defaults_are_the_config_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDIASTREAM_AUTH_TOKEN", raising=False)
    playback = PlaybackConfig()
    assert config_from_args(serve_args(), playback) == Config(
        stream=StreamOptions(playback=playback)
    )


@pytest.mark.parametrize("flag", sorted(FLAGS))
def test_each_flag_sets_the_field_it_names(flag: str) -> None:
    section, name, value = FLAGS[flag]
    config = config_from_args(serve_args(flag, str(value)), PlaybackConfig())
    holder = config if section is None else getattr(config, section)
    assert getattr(holder, name) == value
    default_holder = Config() if section is None else getattr(Config(), section)
    assert getattr(default_holder, name) != value  # the test value is not the default


def test_ping_interval_sets_both_ping_settings_and_zero_turns_them_off() -> None:
    limits = config_from_args(serve_args("--ping-interval", "5"), PlaybackConfig()).limits
    assert (limits.ping_interval, limits.ping_timeout) == (5.0, 5.0)
    off = config_from_args(serve_args("--ping-interval", "0"), PlaybackConfig()).limits
    assert (off.ping_interval, off.ping_timeout) == (None, None)


def test_every_serve_setting_has_a_flag_or_a_reason() -> None:
    """A field of the tree with no flag must be one the CLI decides otherwise."""
    flagged = {(s, n) for s, n, _ in FLAGS.values()}
    decided_elsewhere = {
        ("stream", "playback"),  # from the --bidirectional-* flags, with /texml
        ("stream", "codec_options"),  # API only
        ("stream", "flush_seconds"),  # API only: the 1 s loss bound depends on it
        ("stream", "handler_stop_seconds"),  # API only
        ("stream", "reports"),  # --no-reports (a switch: tested below)
        ("stream", "speech"),  # --speech DETECTOR (tested below); its fields: API only
        ("stream", "record_playback"),  # --record-playback (a switch: tested below)
        ("stream", "recent_reports"),  # API only
        ("stream", "report_max_entries"),  # API only
        ("stream", "level_window_seconds"),  # API only
        ("stream", "digital_silence_peak"),  # API only
        ("stream", "piece_max_spans"),  # API only: a memory bound, not a policy
        ("limits", "max_sockets"),  # from the file descriptor limit
        ("limits", "ping_interval"),  # --ping-interval
        ("limits", "ping_timeout"),  # --ping-interval
        ("http", "max_head_bytes"),
        ("http", "max_body_bytes"),
        ("http", "max_body_chunks"),
        ("http", "max_streams_page"),  # API only: the live page asks for less
        (None, "allow_public_streams"),  # --allow-public-streams (a switch: tested below)
        (None, "metrics"),  # --no-metrics
        (None, "upload"),  # --upload and the --upload-* flags (tests/storage/test_upload_cli.py)
        ("limits", "inbox_high_water"),  # API only: a flow-control bound, not a policy
        ("limits", "read_buffer_bytes"),  # API only: picows' first allocation per socket
    }
    fields = {
        (None, f.name)
        for f in dataclasses.fields(Config)
        if f.name not in {"stream", "limits", "http"}
    }
    for section, klass in (
        ("stream", StreamOptions),
        ("limits", ServerLimits),
        ("http", HttpLimits),
    ):
        fields |= {(section, f.name) for f in dataclasses.fields(klass)}
    assert fields - flagged - decided_elsewhere == set()


def test_allow_public_streams_is_a_switch_off_by_default() -> None:
    assert config_from_args(serve_args(), PlaybackConfig()).allow_public_streams is False
    config = config_from_args(serve_args("--allow-public-streams"), PlaybackConfig())
    assert config.allow_public_streams is True


def test_no_reports_is_a_switch_reports_on_by_default() -> None:
    assert config_from_args(serve_args(), PlaybackConfig()).stream.reports is True
    config = config_from_args(serve_args("--no-reports"), PlaybackConfig())
    assert config.stream.reports is False


def test_speech_and_record_playback_flags() -> None:
    default = config_from_args(serve_args(), PlaybackConfig()).stream
    assert (default.speech, default.record_playback) == (None, False)
    stream = config_from_args(
        serve_args("--speech", "silero", "--record-playback"), PlaybackConfig()
    ).stream
    assert stream.speech == SpeechOptions(detector="silero")
    assert stream.record_playback is True


def test_the_sections_are_frozen_and_paths_are_paths() -> None:
    options = StreamOptions("recordings")  # type: ignore[arg-type]
    assert options.record_dir == Path("recordings")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.record_dir = None  # type: ignore[misc]
    merged = Config.merged(None, record_dir="elsewhere", port=0)
    assert (merged.stream.record_dir, merged.port) == (Path("elsewhere"), 0)
    assert options.record_dir == Path("recordings")  # the caller's object is never changed
