"""The REST client against a real HTTP server on 127.0.0.1 that plays Telnyx.

The TeXML start-stream endpoint is checked against the OpenAPI document in
``../shared/spec/texml-start-stream-rest-api.txt`` itself (path, method, content type, form
fields, enums, bearer auth) and answers with the shapes it documents. The stop and Call Control
endpoints, which have no OpenAPI document there, are checked against protocol notes 1.6 and 1.8.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote

import pytest
import yaml

from mediastream.telnyx.rest import (
    StreamingStartRequest,
    TelnyxApiError,
    TelnyxClient,
    TelnyxNotFoundError,
    TelnyxRequestError,
    TexmlStreamRequest,
)
from tests.conftest import REPO

SPEC_FILE = REPO.parent / "shared" / "spec" / "texml-start-stream-rest-api.txt"
API_KEY = "KEY0123456789ABCDEF_test"
ACCOUNT = "61bf923e-5e4d-4595-a110-56190ea18a1b"
CALL = "v3:KBnLO0ZK3DhKM5s7bE9VluaSmKsOchKht_fUYvxcp8ysbmzCCtpkmA"
CALL_CONTROL_ID = "v3:cc-31f19208-5db0-11ec-9ea7-02420a0d3a69"

# protocol notes 1.6: streaming_start parameters and their enums
STREAMING_START_ENUMS: dict[str, set[Any]] = {
    "stream_track": {"inbound_track", "outbound_track", "both_tracks"},
    "stream_codec": {"PCMU", "PCMA", "G722", "OPUS", "AMR-WB", "L16", "default"},
    "stream_bidirectional_mode": {"mp3", "rtp"},
    "stream_bidirectional_codec": {"PCMU", "PCMA", "G722", "OPUS", "AMR-WB", "L16"},
    "stream_bidirectional_sampling_rate": {8000, 16000, 22050, 24000, 48000},
    "stream_bidirectional_target_legs": {"both", "self", "opposite"},
}
STREAMING_START_OTHER = {
    "stream_url",
    "stream_auth_token",
    "custom_parameters",
    "enable_dialogflow",
    "dialogflow_config",
    "client_state",
    "command_id",
}
STREAMING_STOP_KEYS = {"client_state", "command_id", "stream_id"}


def load_openapi() -> dict[str, Any]:
    if not SPEC_FILE.is_file():
        pytest.skip(f"OpenAPI page not found at {SPEC_FILE}")
    match = re.search(r"````yaml[^\n]*\n(.*?)````", SPEC_FILE.read_text(), flags=re.DOTALL)
    assert match, "no OpenAPI block in the spec page"
    return yaml.safe_load(match.group(1))


def resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, list[str]] | None = None
    json: Any = None


@dataclass
class FakeTelnyx:
    """The documented API on 127.0.0.1; ``problems`` lists every request that broke the spec."""

    doc: dict[str, Any]
    known_calls: set[tuple[str, str]] = field(default_factory=lambda: {(ACCOUNT, CALL)})
    seen: list[Seen] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    client_ports: set[int] = field(default_factory=set)
    port: int = 0
    answer_override: tuple[int, bytes, str] | None = None

    # ------------------------------------------------------------ the routes

    def texml_start(self, seen: Seen, account: str, call: str) -> tuple[int, Any]:
        operation = self.doc["paths"]["/texml/Accounts/{account_sid}/Calls/{call_sid}/Streams.json"]
        post = operation["post"]
        body_spec = resolve(self.doc, post["requestBody"])["content"]
        if seen.headers.get("content-type", "").split(";")[0] not in body_spec:
            self.problems.append(f"content type {seen.headers.get('content-type')!r}")
        schema = resolve(self.doc, body_spec["application/x-www-form-urlencoded"]["schema"])
        properties = schema["properties"]
        for name, values in (seen.form or {}).items():
            if name not in properties:
                self.problems.append(f"form field {name!r} is not in the OpenAPI document")
                continue
            if len(values) != 1:
                self.problems.append(f"form field {name!r} sent {len(values)} times")
            prop = resolve(self.doc, properties[name])
            if "enum" in prop and values[0] not in prop["enum"]:
                self.problems.append(f"{name}={values[0]!r} is not one of {prop['enum']}")
        if "Url" not in (seen.form or {}):
            self.problems.append("no Url")
        if (account, call) not in self.known_calls:
            example = resolve(
                self.doc,
                resolve(self.doc, post["responses"]["404"])["content"]["application/json"][
                    "schema"
                ],
            )["example"]
            return 404, example
        response_schema = resolve(
            self.doc,
            resolve(self.doc, post["responses"]["200"])["content"]["application/json"]["schema"],
        )
        answer = {
            key: resolve(self.doc, prop).get("example")
            for key, prop in response_schema["properties"].items()
        }
        sid = str(uuid.uuid4())
        form = seen.form or {}
        answer.update(
            account_sid=account,
            call_sid=call,
            sid=sid,
            name=form.get("Name", [None])[0],
            uri=f"/v2/texml/Accounts/{account}/Calls/{call}/Streams/{sid}.json",
        )
        return 200, answer

    def texml_update(self, seen: Seen, account: str, call: str, sid: str) -> tuple[int, Any]:
        if seen.form != {"Status": ["stopped"]}:
            self.problems.append(f"stop form is {seen.form}, not Status=stopped")
        if (account, call) not in self.known_calls:
            return 404, {"errors": [{"detail": "Resource not found"}]}
        return 200, {
            "account_sid": account,
            "call_sid": call,
            "sid": sid,
            "status": "stopped",
            "date_updated": "2023-08-11T19:12:11Z",
            "uri": f"/v2/texml/Accounts/{account}/Calls/{call}/Streams/{sid}.json",
        }

    def call_control(self, seen: Seen, call_control_id: str, action: str) -> tuple[int, Any]:
        if seen.headers.get("content-type", "").split(";")[0] != "application/json":
            self.problems.append(f"content type {seen.headers.get('content-type')!r}")
        body = seen.json if isinstance(seen.json, dict) else {}
        if action == "streaming_start":
            allowed = set(STREAMING_START_ENUMS) | STREAMING_START_OTHER
            if "stream_url" not in body:
                self.problems.append("no stream_url")
            for key, value in body.items():
                if key not in allowed:
                    self.problems.append(f"{key} is not a streaming_start parameter")
                elif key in STREAMING_START_ENUMS and value not in STREAMING_START_ENUMS[key]:
                    self.problems.append(f"{key}={value!r} is not allowed")
            for item in body.get("custom_parameters", []):
                if set(item) != {"name", "value"}:
                    self.problems.append(f"custom parameter {item} is not {{name, value}}")
        elif set(body) - STREAMING_STOP_KEYS:
            self.problems.append(f"streaming_stop keys {sorted(body)}")
        if call_control_id == "ended":
            return 422, {
                "errors": [
                    {
                        "code": "90018",
                        "title": "Call has already ended",
                        "detail": "This call is no longer active and can't receive commands.",
                    }
                ]
            }
        return 200, {"data": {"result": "ok"}}

    def route(self, seen: Seen) -> tuple[int, Any]:
        if seen.headers.get("authorization") != f"Bearer {API_KEY}":
            return 401, {"errors": [{"code": "10009", "detail": "Authentication failed"}]}
        if seen.method != "POST":
            self.problems.append(f"method {seen.method}")
        segment = r"([^/]+)"
        patterns = [
            (rf"/v2/texml/Accounts/{segment}/Calls/{segment}/Streams\.json", self.texml_start),
            (
                rf"/v2/texml/Accounts/{segment}/Calls/{segment}/Streams/{segment}\.json",
                self.texml_update,
            ),
            (rf"/v2/calls/{segment}/actions/(streaming_start|streaming_stop)", self.call_control),
        ]
        for pattern, handler in patterns:
            match = re.fullmatch(pattern, seen.path)
            if match:
                return handler(seen, *(unquote(g) for g in match.groups()))  # type: ignore[operator]
        self.problems.append(f"unknown path {seen.path}")
        return 404, {"errors": [{"detail": "Resource not found"}]}

    # ------------------------------------------------------------ HTTP

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: lets the test see connection reuse
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                fake.client_ports.add(self.client_address[1])
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                seen = Seen("POST", self.path, headers)
                kind = headers.get("content-type", "").split(";")[0]
                if kind == "application/x-www-form-urlencoded":
                    seen.form = parse_qs(raw.decode(), keep_blank_values=True, strict_parsing=True)
                elif kind == "application/json":
                    seen.json = json.loads(raw)
                fake.seen.append(seen)
                if fake.answer_override is not None:
                    status, payload, content_type = fake.answer_override
                else:
                    status, answer = fake.route(seen)
                    payload, content_type = json.dumps(answer).encode(), "application/json"
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def telnyx() -> Iterator[FakeTelnyx]:
    fake = FakeTelnyx(load_openapi())
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler_class())
    server.daemon_threads = True
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


def client_for(fake: FakeTelnyx, key: str = API_KEY) -> TelnyxClient:
    return TelnyxClient(key, base_url=f"http://127.0.0.1:{fake.port}/v2")


# ------------------------------------------------------------------ TeXML REST


async def test_start_stream_sends_the_documented_form_and_reads_the_response(telnyx: FakeTelnyx):
    async with client_for(telnyx) as client:
        stream = await client.start_stream(
            ACCOUNT,
            CALL,
            url="wss://www.example.com/websocket?a=1&b=2",
            track="both_tracks",
            name="My stream",
            bidirectional_mode="rtp",
            bidirectional_codec="G722",
            status_callback="http://webhook.com/callback",
            status_callback_method="GET",
        )
    assert telnyx.problems == []
    [seen] = telnyx.seen
    assert seen.path == f"/v2/texml/Accounts/{ACCOUNT}/Calls/{CALL}/Streams.json"
    assert seen.headers["authorization"] == f"Bearer {API_KEY}"
    assert seen.form == {
        "Url": ["wss://www.example.com/websocket?a=1&b=2"],
        "Track": ["both_tracks"],
        "Name": ["My stream"],
        "BidirectionalMode": ["rtp"],
        "BidirectionalCodec": ["G722"],
        "StatusCallback": ["http://webhook.com/callback"],
        "StatusCallbackMethod": ["GET"],
    }
    assert (stream.account_sid, stream.call_sid, stream.name) == (ACCOUNT, CALL, "My stream")
    assert stream.status == "in-progress"
    assert stream.date_updated == "2023-08-11T19:12:11Z"  # the document's example
    assert (
        stream.sid
        and stream.uri == f"/v2/texml/Accounts/{ACCOUNT}/Calls/{CALL}/Streams/{stream.sid}.json"
    )


def enum_cases() -> list[tuple[str, str, str]]:
    """Every enum value the OpenAPI document lists for the request body, as (field, kwarg)."""
    if not SPEC_FILE.is_file():
        return []
    doc = load_openapi()
    schema = resolve(doc, doc["components"]["schemas"]["TexmlCreateCallStreamingRequestBody"])
    kwargs = {
        "Track": "track",
        "BidirectionalMode": "bidirectional_mode",
        "BidirectionalCodec": "bidirectional_codec",
        "StatusCallbackMethod": "status_callback_method",
    }
    cases = []
    for name, prop in schema["properties"].items():
        for value in resolve(doc, prop).get("enum", []):
            cases.append((name, kwargs[name], value))
    return cases


@pytest.mark.parametrize(("field_name", "kwarg", "value"), enum_cases())
async def test_every_enum_value_of_the_document_is_sent_and_accepted(
    telnyx: FakeTelnyx, field_name: str, kwarg: str, value: str
):
    fields: dict[str, str] = {"url": "wss://example.com/s", kwarg: value}
    if kwarg == "bidirectional_codec":
        fields["bidirectional_mode"] = "rtp"
    async with client_for(telnyx) as client:
        stream = await client.start_stream(ACCOUNT, CALL, **fields)
    assert stream.status == "in-progress"
    assert telnyx.problems == []
    assert telnyx.seen[0].form is not None and telnyx.seen[0].form[field_name] == [value]


def test_the_document_has_the_enums_we_expect():
    load_openapi()  # skips, saying why, when the spec page is absent
    assert len(enum_cases()) == 3 + 2 + 3 + 2


@pytest.mark.parametrize(
    "fields",
    [
        {"url": "https://not-a-websocket"},
        {"url": "wss://x", "bidirectional_codec": "OPUS"},  # TeXML REST: PCMU, PCMA, G722 only
        {"url": "wss://x", "track": "both"},
        {"url": "wss://x", "status_callback": "ftp://x"},
        {"url": "wss://x", "Url": "wss://y"},
    ],
)
async def test_values_outside_the_document_are_refused_before_sending(
    telnyx: FakeTelnyx, fields: dict[str, str]
):
    async with client_for(telnyx) as client:
        with pytest.raises(TelnyxRequestError):
            await client.start_stream(ACCOUNT, CALL, **fields)
    assert telnyx.seen == []


async def test_404_raises_a_typed_error_with_the_detail(telnyx: FakeTelnyx):
    async with client_for(telnyx) as client:
        with pytest.raises(TelnyxNotFoundError) as caught:
            await client.start_stream(ACCOUNT, "v3:no-such-call", url="wss://example.com/s")
    error = caught.value
    assert isinstance(error, TelnyxApiError)
    assert (error.status, error.detail) == (404, "Resource not found")
    assert error.errors == [{"detail": "Resource not found"}]
    assert "Resource not found" in str(error) and "404" in str(error)
    assert telnyx.problems == []


async def test_a_wrong_key_is_an_api_error_that_does_not_show_the_key(telnyx: FakeTelnyx):
    async with client_for(telnyx, key="wrong-key-123") as client:
        assert "wrong-key-123" not in repr(client)
        with pytest.raises(TelnyxApiError) as caught:
            await client.start_stream(ACCOUNT, CALL, url="wss://example.com/s")
    assert not isinstance(caught.value, TelnyxNotFoundError)
    assert (caught.value.status, caught.value.code) == (401, "10009")
    assert "wrong-key-123" not in str(caught.value)


async def test_ids_are_one_path_segment_each(telnyx: FakeTelnyx):
    async with client_for(telnyx) as client:
        with pytest.raises(TelnyxNotFoundError):
            await client.start_stream(ACCOUNT, "v3:a/../../b", url="wss://example.com/s")
        with pytest.raises(TelnyxRequestError):
            await client.start_stream(ACCOUNT, "", url="wss://example.com/s")
    [seen] = telnyx.seen
    assert seen.path == f"/v2/texml/Accounts/{ACCOUNT}/Calls/v3:a%2F..%2F..%2Fb/Streams.json"
    assert telnyx.problems == []


async def test_stop_stream_posts_status_stopped(telnyx: FakeTelnyx):
    async with client_for(telnyx) as client:
        stopped = await client.stop_stream(ACCOUNT, CALL, "b08f0fa1-a32c-4218-b3b5-9cf78941ccac")
        with pytest.raises(TelnyxNotFoundError):
            await client.stop_stream(ACCOUNT, "v3:gone", "b08f0fa1")
    assert telnyx.problems == []
    assert telnyx.seen[0].path.endswith(
        f"/Calls/{CALL}/Streams/b08f0fa1-a32c-4218-b3b5-9cf78941ccac.json"
    )
    assert telnyx.seen[0].form == {"Status": ["stopped"]}
    assert (stopped.sid, stopped.status) == ("b08f0fa1-a32c-4218-b3b5-9cf78941ccac", "stopped")


async def test_one_connection_is_reused_across_requests(telnyx: FakeTelnyx):
    async with client_for(telnyx) as client:
        for _ in range(5):
            await client.start_stream(ACCOUNT, CALL, url="wss://example.com/s")
    assert len(telnyx.seen) == 5
    assert len(telnyx.client_ports) == 1


async def test_a_2xx_that_is_not_json_is_an_api_error(telnyx: FakeTelnyx):
    telnyx.answer_override = (200, b"<html>proxy login</html>", "text/html")
    async with client_for(telnyx) as client:
        with pytest.raises(TelnyxApiError, match="not a JSON object"):
            await client.start_stream(ACCOUNT, CALL, url="wss://example.com/s")


# ------------------------------------------------------------------ Call Control


async def test_streaming_start_sends_every_parameter_as_json(telnyx: FakeTelnyx):
    async with client_for(telnyx) as client:
        result = await client.streaming_start(
            CALL_CONTROL_ID,
            stream_url="wss://example.com/stream",
            stream_track="both_tracks",
            stream_codec="L16",
            stream_bidirectional_mode="rtp",
            stream_bidirectional_codec="L16",
            stream_bidirectional_sampling_rate="16000",
            stream_bidirectional_target_legs="opposite",
            stream_auth_token="secret-token",
            custom_parameters={"customer_id": "12345", "n": 7},
            enable_dialogflow=False,
            client_state="aGF2ZSBhIG5pY2UgZGF5ID1d",
            command_id="cmd-1",
        )
    assert result.result == "ok"
    assert telnyx.problems == []
    [seen] = telnyx.seen
    assert seen.path == f"/v2/calls/{CALL_CONTROL_ID}/actions/streaming_start"
    assert seen.json == {
        "stream_url": "wss://example.com/stream",
        "stream_track": "both_tracks",
        "stream_codec": "L16",
        "stream_bidirectional_mode": "rtp",
        "stream_bidirectional_codec": "L16",
        "stream_bidirectional_sampling_rate": 16000,
        "stream_bidirectional_target_legs": "opposite",
        "stream_auth_token": "secret-token",
        "custom_parameters": [
            {"name": "customer_id", "value": "12345"},
            {"name": "n", "value": "7"},
        ],
        "enable_dialogflow": False,
        "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d",
        "command_id": "cmd-1",
    }


@pytest.mark.parametrize(
    "fields",
    [
        {"stream_url": "wss://x", "stream_bidirectional_sampling_rate": 11025},
        {"stream_url": "wss://x", "stream_bidirectional_target_legs": "all"},
        {"stream_url": "wss://x", "stream_auth_token": "t" * 4001},
        {"stream_url": "http://x"},
    ],
)
def test_streaming_start_refuses_values_outside_the_api(fields: dict[str, Any]):
    with pytest.raises(TelnyxRequestError):
        StreamingStartRequest(**fields)


async def test_streaming_stop_with_and_without_a_stream_id(telnyx: FakeTelnyx):
    async with client_for(telnyx) as client:
        one = await client.streaming_stop(CALL_CONTROL_ID, stream_id="1edb94f9", command_id="c2")
        every = await client.streaming_stop(CALL_CONTROL_ID)
    assert (one.result, every.result) == ("ok", "ok")
    assert [s.json for s in telnyx.seen] == [{"stream_id": "1edb94f9", "command_id": "c2"}, {}]
    assert telnyx.seen[0].path == f"/v2/calls/{CALL_CONTROL_ID}/actions/streaming_stop"
    assert telnyx.problems == []


async def test_call_control_errors_carry_code_and_detail(telnyx: FakeTelnyx):
    async with client_for(telnyx) as client:
        with pytest.raises(TelnyxApiError) as caught:
            await client.streaming_stop("ended")
    assert (caught.value.status, caught.value.code) == (422, "90018")
    assert caught.value.detail == "This call is no longer active and can't receive commands."


def test_request_models_render_the_api_names():
    request = TexmlStreamRequest(url="wss://x", bidirectional_mode="rtp")
    assert request.form() == {"Url": "wss://x", "BidirectionalMode": "rtp"}
