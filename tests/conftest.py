"""Shared fixtures: the ITU-T conformance data, a live server on 127.0.0.1, helpers."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from mediastream import MediaServer, StreamHandler, StreamOptions

REPO = Path(__file__).resolve().parents[1]

# Hypothesis profiles for every property test (tests/test_fuzz.py registers the same ones):
# "default" runs a few hundred examples per property; HYPOTHESIS_PROFILE=long runs 10,000,
# outside the default suite.
settings.register_profile("default", max_examples=300, deadline=None)
settings.register_profile(
    "long", max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def itu_stl_dir() -> Path:
    """``../shared/conformance/itu-stl`` beside the checkout, or $MEDIASTREAM_ITU_STL."""
    override = os.environ.get("MEDIASTREAM_ITU_STL")
    return Path(override) if override else REPO.parent / "shared" / "conformance" / "itu-stl"


@pytest.fixture
def itu_stl() -> Path:
    path = itu_stl_dir()
    if not path.is_dir():
        pytest.skip(
            f"ITU-T G.191 vectors not found at {path} "
            "(set MEDIASTREAM_ITU_STL to the itu-stl folder to run conformance tests)"
        )
    return path


# ---------------------------------------------------------------- one suite, both transports

TRANSPORTS = ("websockets", "picows")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "both_transports: run each test of the module on serve's two transports (its "
        "MediaServer is the picows adapter in the [picows] run)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("both_transports") is not None:
        metafunc.parametrize("transport", TRANSPORTS, indirect=True)


@pytest.fixture(autouse=True)
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The transport a ``both_transports`` module's test runs on ("websockets" elsewhere):
    for "picows", the module's ``MediaServer`` (the name its tests build servers with) is the
    picows adapter, which takes the same arguments."""
    name: str = getattr(request, "param", "websockets")
    if name == "picows":
        from mediastream.server.picows import PicowsServer

        monkeypatch.setattr(request.module, "MediaServer", PicowsServer)
    return name


@pytest.fixture
def record_dir(tmp_path: Path) -> Path:
    path = tmp_path / "recordings"
    path.mkdir()
    return path


@pytest.fixture
async def server(record_dir: Path, transport: str) -> AsyncIterator[MediaServer]:
    """A real media server on 127.0.0.1 (free port) recording into ``record_dir``, on the
    test's transport."""
    kind: type[MediaServer] = MediaServer
    if transport == "picows":
        from mediastream.server.picows import PicowsServer

        kind = PicowsServer  # type: ignore[assignment]
    srv = kind(StreamHandler, host="127.0.0.1", port=0, options=StreamOptions(record_dir))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


def ws_url(server: MediaServer, path: str = "/stream") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"
