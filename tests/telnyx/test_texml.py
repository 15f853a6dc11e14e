"""TeXML <Stream>: every attribute and enum value round-trips through the stdlib XML parser,
bad values name their attribute, escaping holds, and the verb page's examples come out as
printed there."""

from __future__ import annotations

import argparse
import re
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from mediastream.telnyx.texml import (
    Parameter,
    Pause,
    Stream,
    TexmlError,
    Verb,
    add_texml_command,
    render,
    stream_texml,
)
from tests.conftest import REPO

VERB_PAGE = REPO.parent / "shared" / "spec" / "texml-stream-verb.txt"
URL = "wss://yourdomain.com/stream"


def parse_stream(document: str, verb: str = "Start") -> ET.Element:
    root = ET.fromstring(document.encode())
    assert root.tag == "Response"
    node = root.find(f"{verb}/Stream")
    assert node is not None, document
    return node


# every (attribute, value given, text expected in the XML), enums exhaustively
CASES: list[tuple[str, Any, str]] = [
    ("url", URL, URL),
    ("url", "ws://127.0.0.1:8765/x?a=1&b=2", "ws://127.0.0.1:8765/x?a=1&b=2"),
    ("name", "my stream", "my stream"),
    ("statusCallback", "https://example.com/stream-events", "https://example.com/stream-events"),
    ("enableReconnect", True, "true"),
    ("enableReconnect", False, "false"),
    ("enableReconnect", "false", "false"),
    *[("track", v, v) for v in ("inbound_track", "outbound_track", "both_tracks")],
    *[("codec", v, v) for v in ("PCMU", "PCMA", "G722", "OPUS", "AMR-WB", "default")],
    *[("bidirectionalMode", v, v) for v in ("mp3", "rtp")],
    *[("bidirectionalCodec", v, v) for v in ("PCMU", "PCMA", "G722", "OPUS", "AMR-WB")],
    *[("bidirectionalSamplingRate", v, str(v)) for v in (8000, 16000, 24000)],
    ("bidirectionalSamplingRate", "16000", "16000"),
    *[("statusCallbackMethod", v, v) for v in ("GET", "POST")],
]


@pytest.mark.parametrize(("attribute", "value", "text"), CASES)
def test_every_attribute_and_enum_value_round_trips(attribute: str, value: Any, text: str):
    fields: dict[str, Any] = {"url": URL, attribute: value}
    if attribute.startswith("bidirectional") and attribute != "bidirectionalMode":
        fields["bidirectionalMode"] = "rtp"
    node = parse_stream(stream_texml(Stream(**fields), "start"))
    assert node.attrib[attribute] == text
    assert set(node.attrib) == set(fields)  # nothing else written: Telnyx defaults apply


def test_all_attributes_at_once_keep_the_verb_page_order_and_python_names_work():
    stream = Stream(
        url=URL,
        track="both_tracks",
        name="s1",
        codec="PCMA",
        bidirectional_mode="rtp",
        bidirectional_codec="G722",
        bidirectional_sampling_rate=16000,
        status_callback="https://example.com/cb?x=1&y=2",
        status_callback_method="GET",
        enable_reconnect=False,
        parameters={"customer_id": "12345", "call_type": "support"},
    )
    node = parse_stream(stream_texml(stream, "connect"), "Connect")
    assert list(node.attrib.items()) == [
        ("url", URL),
        ("track", "both_tracks"),
        ("name", "s1"),
        ("codec", "PCMA"),
        ("bidirectionalMode", "rtp"),
        ("bidirectionalCodec", "G722"),
        ("bidirectionalSamplingRate", "16000"),
        ("statusCallback", "https://example.com/cb?x=1&y=2"),
        ("statusCallbackMethod", "GET"),
        ("enableReconnect", "false"),
    ]
    assert [(p.get("name"), p.get("value")) for p in node.findall("Parameter")] == [
        ("customer_id", "12345"),
        ("call_type", "support"),
    ]


BAD: list[tuple[dict[str, Any], str]] = [
    ({"url": "https://example.com/stream"}, "url"),
    ({"url": "wss:///nohost"}, "url"),
    ({"url": "wss://exa mple.com/s"}, "url"),
    ({"url": "example.com/stream"}, "url"),
    ({"track": "both"}, "track"),
    ({"track": "INBOUND_TRACK"}, "track"),
    ({"codec": "L16"}, "codec"),
    ({"codec": "pcmu"}, "codec"),
    ({"bidirectionalMode": "RTP"}, "bidirectionalMode"),
    ({"bidirectionalMode": "rtp", "bidirectionalCodec": "L16"}, "bidirectionalCodec"),
    ({"bidirectionalMode": "rtp", "bidirectionalSamplingRate": 22050}, "bidirectionalSamplingRate"),
    (
        {"bidirectionalMode": "rtp", "bidirectionalSamplingRate": "fast"},
        "bidirectionalSamplingRate",
    ),
    ({"bidirectionalCodec": "PCMA"}, "bidirectionalCodec"),  # only with rtp
    ({"bidirectionalSamplingRate": 16000}, "bidirectionalSamplingRate"),  # only with rtp
    ({"statusCallback": "wss://example.com/cb"}, "statusCallback"),
    ({"statusCallbackMethod": "PUT"}, "statusCallbackMethod"),
    ({"statusCallbackMethod": "post"}, "statusCallbackMethod"),
    ({"enableReconnect": "yes"}, "enableReconnect"),
    ({"name": "a\x00b"}, "name"),
    ({"parameters": [{"name": "k", "value": "bell\x07"}]}, "parameters.0.value"),
    ({"parameters": [{"name": "", "value": "v"}]}, "parameters.0.name"),
    ({"parameters": [{"name": "k", "value": "1"}, {"name": "k", "value": "2"}]}, "Parameter"),
    ({"trackk": "both_tracks"}, "trackk"),
]


@pytest.mark.parametrize(("fields", "attribute"), BAD)
def test_invalid_values_raise_errors_naming_the_attribute(fields: dict[str, Any], attribute: str):
    with pytest.raises(TexmlError) as caught:
        Stream(**{"url": URL, **fields})
    assert caught.value.attributes == [attribute]
    assert str(caught.value).startswith(f"invalid <Stream>: {attribute}: ")
    assert isinstance(caught.value, ValueError)


def test_verbs_need_what_they_use():
    with pytest.raises(TexmlError, match="url") as caught:
        Verb(verb="connect", stream=Stream(name="x"))
    assert caught.value.attributes == ["url"]
    with pytest.raises(TexmlError) as caught:
        Verb(verb="stop", stream=Stream(url=URL))
    assert caught.value.attributes == ["name"]
    stop = render(Verb(verb="stop", stream=Stream(name="my_stream")))
    node = parse_stream(stop, "Stop")
    assert node.attrib == {"name": "my_stream"}
    with pytest.raises(TexmlError):
        Pause(length=0)


def test_ampersands_and_markup_in_values_survive():
    url = "wss://example.com/s?token=a&b=<c>&d=\"e\"&f='g'"
    nasty = "<\"&>' and \t tab, \n newline, é, 日本"
    stream = Stream(url=url, name=nasty, parameters=[Parameter(name="n<&>", value=nasty)])
    document = stream_texml(stream, "start")
    assert "&amp;" in document and "a&b" not in document
    node = parse_stream(document)
    assert node.get("url") == url
    assert node.get("name") == nasty
    [parameter] = node.findall("Parameter")
    assert parameter.attrib == {"name": "n<&>", "value": nasty}


def test_parameter_value_exactly_as_the_issue_asks():
    stream = Stream(url=URL + "?a=1&b=2", parameters={"p": '<"&>'})
    node = parse_stream(stream_texml(stream, "start"))
    assert node.get("url") == URL + "?a=1&b=2"
    assert node.find("Parameter").attrib == {"name": "p", "value": '<"&>'}  # type: ignore[union-attr]


def verb_page_examples() -> list[str]:
    if not VERB_PAGE.is_file():
        pytest.skip(f"verb page not found at {VERB_PAGE}")
    text = VERB_PAGE.read_text()
    blocks = re.findall(r"```xml[^\n]*\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 3, "the verb page changed: expected three XML examples"
    return blocks


def test_the_verb_page_examples_are_reproduced_character_for_character():
    first, second, third = verb_page_examples()
    assert stream_texml(Stream(url=URL, track="both_tracks"), "start") == first
    with_parameters = Stream(
        url=URL,
        status_callback="https://example.com/stream-events",
        parameters={"customer_id": "12345", "call_type": "support"},
    )
    assert stream_texml(with_parameters, "start") == second
    assert stream_texml(Stream(url=URL, enable_reconnect=False), "start") == third


def test_connect_with_pause_document_parses():
    document = stream_texml(Stream(url=URL, bidirectional_mode="rtp"), "connect", pause=40)
    root = ET.fromstring(document.encode())
    assert [child.tag for child in root] == ["Connect", "Pause"]
    assert root.find("Pause").attrib == {"length": "40"}  # type: ignore[union-attr]


# ------------------------------------------------------------------ the command


def run_texml(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="mediastream")
    add_texml_command(parser.add_subparsers(dest="command"))
    try:
        args = parser.parse_args(argv)
        code = args.func(args)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_texml_command_prints_the_document_from_flags(capsys: pytest.CaptureFixture[str]):
    code, out, err = run_texml(
        [
            "texml",
            "--url", "wss://example.com/stream?x=1&y=2",
            "--track", "both_tracks",
            "--bidirectional-mode", "rtp",
            "--bidirectional-codec", "PCMA",
            "--bidirectional-sampling-rate", "16000",
            "--status-callback", "https://example.com/callbacks/stream",
            "--enable-reconnect", "false",
            "--param", "customer_id=12345",
            "--param", "expr=a=b&c",
        ],
        capsys,
    )  # fmt: skip
    assert (code, err) == (0, "")
    node = parse_stream(out, "Connect")
    assert node.attrib == {
        "url": "wss://example.com/stream?x=1&y=2",
        "track": "both_tracks",
        "bidirectionalMode": "rtp",
        "bidirectionalCodec": "PCMA",
        "bidirectionalSamplingRate": "16000",
        "statusCallback": "https://example.com/callbacks/stream",
        "enableReconnect": "false",
    }
    params = {p.get("name"): p.get("value") for p in node.findall("Parameter")}
    assert params == {"customer_id": "12345", "expr": "a=b&c"}


def test_texml_command_rejects_bad_values_with_the_attribute_name(
    capsys: pytest.CaptureFixture[str],
):
    code, out, err = run_texml(["texml", "--url", "https://not-a-websocket"], capsys)
    assert code == 2 and out == ""
    assert "url" in err and "ws://" in err
    code, out, err = run_texml(["texml", "--url", URL, "--bidirectional-codec", "PCMA"], capsys)
    assert code == 2 and "bidirectionalCodec" in err and "rtp" in err
    code, _, err = run_texml(["texml", "--url", URL, "--track", "sideways"], capsys)
    assert code == 2 and "--track" in err  # argparse lists the choices
    code, _, err = run_texml(["texml", "--url", URL, "--param", "novalue"], capsys)
    assert code == 2 and "name=value" in err


def test_texml_command_start_with_pause_and_stop(capsys: pytest.CaptureFixture[str]):
    code, out, _ = run_texml(["texml", "--verb", "start", "--url", URL, "--pause", "60"], capsys)
    assert code == 0
    root = ET.fromstring(out.encode())
    assert [c.tag for c in root] == ["Start", "Pause"]
    code, out, _ = run_texml(["texml", "--verb", "stop", "--name", "s1"], capsys)
    assert code == 0 and parse_stream(out, "Stop").attrib == {"name": "s1"}


def test_mediastream_cli_has_the_texml_command(capsys: pytest.CaptureFixture[str]):
    """Through the real entry point (needs the cli.py registration)."""
    from mediastream.cli import main

    assert main(["texml", "--url", URL, "--track", "both_tracks"]) == 0
    node = parse_stream(capsys.readouterr().out, "Connect")
    assert node.attrib == {"url": URL, "track": "both_tracks"}
