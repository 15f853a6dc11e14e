"""Instance ids and the URLs that name them (``mediastream/instance.py``): the default id, its
checks (a bad one is one line, exit 2), the path scheme, and every URL handed to the carrier:
``/texml``'s, ``mediastream texml --instance-id``'s and ``streaming_start_url``."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from mediastream import config as config_module
from mediastream.cli import main
from mediastream.config import Config, default_instance_id
from mediastream.instance import (
    instance_path,
    instance_prefix,
    instance_url,
    is_instance_id,
    split_instance_path,
)
from mediastream.runtime.core import HttpRequest, MediaCore
from mediastream.runtime.handler import StreamHandler
from mediastream.server.routes import HttpRoutes
from mediastream.telnyx import StreamingStartRequest, TelnyxRequestError, streaming_start_url
from mediastream.telnyx.texml import Stream


def test_the_default_is_the_environment_else_the_host_name_made_url_safe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MEDIASTREAM_INSTANCE_ID", "mediastream-2")
    assert default_instance_id() == Config().instance_id == "mediastream-2"
    monkeypatch.delenv("MEDIASTREAM_INSTANCE_ID")
    for host, expected in [
        ("mediastream-0", "mediastream-0"),  # a StatefulSet pod
        ("Media Host_1.example.com", "media-host_1.example.com"),
        ("ünïcode~host", "n-code-host"),
        ("___", "mediastream"),
        ("x" * 80, "x" * 63),
    ]:
        monkeypatch.setattr(config_module.socket, "gethostname", lambda h=host: h)
        assert default_instance_id() == expected
        assert is_instance_id(expected)


@pytest.mark.parametrize("bad", ["", "a/b", "-a", ".", "..", "a b", "é", "x" * 64])
def test_an_id_that_cannot_be_a_path_element_is_refused(bad: str) -> None:
    assert not is_instance_id(bad)
    with pytest.raises(ValueError, match="instance id"):
        MediaCore(StreamHandler, Config(instance_id=bad))


def test_serve_refuses_a_bad_id_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--instance-id", "a/b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mediastream: error: --instance-id 'a/b': an instance id is")
    assert err.count("\n") == 1
    monkeypatch.setenv("MEDIASTREAM_INSTANCE_ID", "no good")
    assert main(["serve"]) == 2
    assert "$MEDIASTREAM_INSTANCE_ID 'no good'" in capsys.readouterr().err


def test_the_path_scheme() -> None:
    assert instance_prefix("a") == "/i/a"
    assert instance_path("a", "/stream") == "/i/a/stream"
    assert instance_path("a", "stream") == "/i/a/stream"
    assert instance_path("a", "/i/b/stream") == "/i/b/stream"  # already names one
    assert split_instance_path("/i/a/callbacks/stream") == ("a", "/callbacks/stream")
    assert split_instance_path("/i/mediastream-0") == ("mediastream-0", "/")
    assert split_instance_path("/i/a/") == ("a", "/")
    assert split_instance_path("/texml") == (None, "/texml")
    assert split_instance_path("/i/-x/texml") == (None, "/i/-x/texml")  # no id: no prefix
    assert split_instance_path("/index.html") == (None, "/index.html")
    assert instance_url("wss://calls.example.com/stream?t=1", "a") == (
        "wss://calls.example.com/i/a/stream?t=1"
    )
    assert instance_url("wss://calls.example.com", "a") == "wss://calls.example.com/i/a/"


def test_streaming_start_url_names_the_instance() -> None:
    url = streaming_start_url("wss://calls.example.com/stream", "mediastream-1")
    assert url == "wss://calls.example.com/i/mediastream-1/stream"
    assert StreamingStartRequest(stream_url=url).body() == {"stream_url": url}
    here = default_instance_id()
    assert streaming_start_url("wss://calls.example.com/stream") == (
        f"wss://calls.example.com/i/{here}/stream"
    )
    with pytest.raises(TelnyxRequestError, match="instance id"):
        streaming_start_url("wss://calls.example.com/stream", "a/b")


def test_mediastream_texml_names_the_instance(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["texml", "--url", "wss://calls.example.com/stream", "--instance-id", "b",
            "--status-callback", "https://calls.example.com/callbacks/stream"]  # fmt: skip
    assert main(argv) == 0
    node = ET.fromstring(capsys.readouterr().out).find("Connect/Stream")
    assert node is not None and node.attrib == {
        "url": "wss://calls.example.com/i/b/stream",
        "statusCallback": "https://calls.example.com/i/b/callbacks/stream",
    }
    assert main(["texml", "--url", "wss://calls.example.com/stream"]) == 0  # as given
    assert 'url="wss://calls.example.com/stream"' in capsys.readouterr().out


def routes(template: Stream | None = None) -> HttpRoutes:
    routes = HttpRoutes(stream=template)
    routes.instance_id = "b"  # what ``attach`` takes from the server's config
    return routes


async def test_the_texml_urls_name_this_instance_whichever_the_request_named() -> None:
    headers = {"host": "lb.example.com", "x-forwarded-proto": "https"}
    for path in ("/texml", "/i/b/texml", "/i/a/texml"):
        request = HttpRequest(
            "GET", "/texml", headers=headers, instance=split_instance_path(path)[0]
        )
        stream = routes().stream_for(request)
        assert (stream.url, stream.status_callback) == (
            "wss://lb.example.com/i/b/stream",
            "https://lb.example.com/i/b/callbacks/stream",
        )
    template = Stream(
        url="wss://calls.example.com/media", status_callback="https://hooks.example.com/x"
    )
    stream = routes(template).stream_for(HttpRequest("GET", "/texml", headers=headers))
    assert stream.url == "wss://calls.example.com/i/b/media"  # the public URL names it too
    assert stream.status_callback == "https://hooks.example.com/x"  # the user's own: as given
