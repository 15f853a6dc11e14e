"""``serve --upload``'s flags: where they land, and the one-line errors of a bad start."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from mediastream.cli import build_parser, config_from_args
from mediastream.config import PlaybackConfig, UploadOptions
from tests.processes import REPO, env
from tests.test_cli_errors import one_error_line


def serve_config(*argv: str):  # type: ignore[no-untyped-def]
    return config_from_args(build_parser().parse_args(["serve", *argv]), PlaybackConfig())


def test_without_the_flag_nothing_is_uploaded() -> None:
    assert serve_config().upload is None


def test_each_upload_flag_lands_in_its_field_and_the_defaults_are_the_configs() -> None:
    assert serve_config("--upload", "s3://b-1/p").upload == UploadOptions(url="s3://b-1/p")
    upload = serve_config(
        "--upload", "s3://b-1/p", "--upload-endpoint", "http://127.0.0.1:9",
        "--upload-region", "eu-west-3", "--upload-concurrency", "2",
        "--upload-retry-max-seconds", "3", "--upload-max-pending-bytes", "1000",
        "--upload-shutdown-seconds", "4",
    ).upload  # fmt: skip
    assert upload == UploadOptions(
        url="s3://b-1/p", endpoint="http://127.0.0.1:9", region="eu-west-3", concurrency=2,
        retry_max_seconds=3.0, max_pending_bytes=1000, shutdown_seconds=4.0,
    )  # fmt: skip


def serve(*args: str, python_path: str | None = None) -> subprocess.CompletedProcess[str]:
    environment = env()
    if python_path is not None:
        environment["PYTHONPATH"] = f"{python_path}:{environment['PYTHONPATH']}"
    return subprocess.run(
        [sys.executable, "-m", "mediastream", "serve", "--port", "0", *args],
        capture_output=True, text=True, timeout=60, env=environment, cwd=REPO,
    )  # fmt: skip


@pytest.mark.slow
def test_upload_without_a_record_dir_is_one_line() -> None:
    one_error_line(serve("--upload", "s3://recordings/x"), "--upload needs --record-dir")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("https://recordings/x", "expected s3://bucket/prefix"),
        ("s3://Bad_Bucket/x", "is not a bucket name"),
        ("s3://recordings/a//b", "empty, '.' or '..' element"),
    ],
)
def test_a_bad_upload_url_is_one_line(tmp_path: Path, url: str, says: str) -> None:
    one_error_line(serve("--record-dir", str(tmp_path), "--upload", url), says)


@pytest.mark.slow
def test_a_missing_s3_extra_is_one_line_with_the_install_hint(tmp_path: Path) -> None:
    hidden = tmp_path / "no-obstore"
    (hidden / "obstore").mkdir(parents=True)
    # an obstore that cannot be imported, ahead of the installed one: as if it were absent
    (hidden / "obstore" / "__init__.py").write_text("raise ImportError('not installed')\n")
    result = serve(
        "--record-dir", str(tmp_path / "rec"), "--upload", "s3://recordings/x",
        python_path=str(hidden),
    )  # fmt: skip
    one_error_line(result, "--upload needs obstore", "pip install -e '.[s3]'")


def test_only_the_s3_module_imports_the_client_and_only_when_used() -> None:
    importers = []
    for path in sorted((REPO / "mediastream").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(name.split(".")[0] == "obstore" for name in names):
                importers.append(path.relative_to(REPO).as_posix())
    assert set(importers) == {"mediastream/storage/s3.py"}
    check = (
        "import sys, mediastream.server.metrics, mediastream.runtime.core, mediastream.cli\n"
        "import mediastream.storage.uploader\n"
        "print('obstore' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          timeout=60, env=env(), cwd=REPO)  # fmt: skip
    assert (done.returncode, done.stdout.strip()) == (0, "False"), done.stderr
