"""Signature checks with a real Ed25519 key pair, and every shape a status callback comes in."""

from __future__ import annotations

import base64
import json
import time
from urllib.parse import urlencode

import pytest

from mediastream.telnyx.webhooks import (
    PayloadError,
    SignatureError,
    SignatureVerifier,
    WebhookError,
    parse_status_callback,
)
from tests.telnyx.helpers import FORM, Signer

# the field table of the TeXML stream callback (protocol notes 1.9)
FIELDS = {
    "AccountSid": "f5586561-8ff0-4291-a51b-c7dfe4139ff9",
    "CallSid": "v3:9X2vxPDFY2RHSJ1EdMS0RHRksMTg7ldNxdjWbVr9zBjbGjGsSe-aiQ",
    "CallSidLegacy": "v3:9X2vxPDFY2RHSJ1EdMS0RHRksMTg7ldNxdjWbVr9zBjbGjGsSe-aiQ",
    "StreamEvent": "stream-started",
    "StreamName": "my_stream",
    "StreamSid": "stream-abc123",
    "Timestamp": "2024-01-15T10:30:00Z",
}
BODY = urlencode(FIELDS).encode()


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


@pytest.fixture(scope="module")
def verifier(signer: Signer) -> SignatureVerifier:
    return SignatureVerifier(signer.public_key)


def test_a_good_signature_is_accepted(signer: Signer, verifier: SignatureVerifier):
    verifier.verify(BODY, signer.headers(BODY))
    verifier.verify(b"", signer.headers(b""))  # a GET callback signs an empty body


def test_header_names_are_case_insensitive(signer: Signer, verifier: SignatureVerifier):
    headers = {k.title(): v for k, v in signer.headers(BODY).items()}
    assert "Telnyx-Signature-Ed25519" in headers
    verifier.verify(BODY, headers)


def test_a_changed_body_is_rejected(signer: Signer, verifier: SignatureVerifier):
    headers = signer.headers(BODY)
    tampered = BODY.replace(b"stream-started", b"stream-stopped")
    with pytest.raises(SignatureError, match="does not match"):
        verifier.verify(tampered, headers)
    with pytest.raises(SignatureError):
        verifier.verify(BODY + b"&x=1", headers)


def test_a_changed_timestamp_is_rejected(signer: Signer, verifier: SignatureVerifier):
    headers = signer.headers(BODY)
    headers["telnyx-timestamp"] = str(int(headers["telnyx-timestamp"]) - 1)
    with pytest.raises(SignatureError, match="does not match"):
        verifier.verify(BODY, headers)


def test_another_key_is_rejected(verifier: SignatureVerifier):
    with pytest.raises(SignatureError, match="does not match"):
        verifier.verify(BODY, Signer().headers(BODY))


def test_stale_and_future_timestamps_are_rejected_at_300_seconds(
    signer: Signer, verifier: SignatureVerifier
):
    now = float(int(time.time()))  # whole seconds, as the header carries
    verifier.verify(BODY, signer.headers(BODY, timestamp=now - 299), now=now)
    verifier.verify(BODY, signer.headers(BODY, timestamp=now + 299), now=now)
    with pytest.raises(SignatureError, match="301 s old"):
        verifier.verify(BODY, signer.headers(BODY, timestamp=now - 301), now=now)
    with pytest.raises(SignatureError, match="ahead"):
        verifier.verify(BODY, signer.headers(BODY, timestamp=now + 301), now=now)


def test_missing_or_wrongly_named_headers_are_rejected(signer: Signer, verifier: SignatureVerifier):
    headers = signer.headers(BODY)
    with pytest.raises(SignatureError, match="telnyx-signature-ed25519, telnyx-timestamp"):
        verifier.verify(BODY, {})
    with pytest.raises(SignatureError, match=r"missing header.*telnyx-timestamp"):
        verifier.verify(BODY, {"telnyx-signature-ed25519": headers["telnyx-signature-ed25519"]})
    prefixed = {f"x-{k}": v for k, v in headers.items()}  # a mistake seen in the wild
    with pytest.raises(SignatureError, match="missing"):
        verifier.verify(BODY, prefixed)


def test_malformed_headers_are_rejected(signer: Signer, verifier: SignatureVerifier):
    headers = signer.headers(BODY)
    with pytest.raises(SignatureError, match="base64"):
        verifier.verify(BODY, {**headers, "telnyx-signature-ed25519": "not base64!"})
    short = base64.b64encode(b"x" * 63).decode()
    with pytest.raises(SignatureError, match="63 bytes"):
        verifier.verify(BODY, {**headers, "telnyx-signature-ed25519": short})
    with pytest.raises(SignatureError, match="Unix seconds"):
        verifier.verify(BODY, {**headers, "telnyx-timestamp": "2024-01-15T10:30:00Z"})


def test_a_bad_public_key_fails_when_the_verifier_is_built():
    with pytest.raises(WebhookError, match="32 bytes"):
        SignatureVerifier(base64.b64encode(b"short").decode())
    with pytest.raises(WebhookError, match="base64"):
        SignatureVerifier("%%%")


# ------------------------------------------------------------------ event shapes


def test_form_encoded_post():
    event = parse_status_callback(BODY, content_type=FORM + "; charset=utf-8")
    assert event.kind == "started" and event.event == "stream-started"
    assert event.stream_sid == "stream-abc123"
    assert event.call_sid == FIELDS["CallSid"]
    assert event.account_sid == FIELDS["AccountSid"]
    assert event.stream_name == "my_stream"
    assert event.timestamp == "2024-01-15T10:30:00Z"
    assert event.error is None
    assert event.raw["CallSidLegacy"] == FIELDS["CallSidLegacy"]


def test_get_query_string():
    query = urlencode({**FIELDS, "StreamEvent": "stream-stopped"})
    event = parse_status_callback(b"", query=query)
    assert (event.kind, event.stream_sid, event.call_sid) == (
        "stopped",
        "stream-abc123",
        FIELDS["CallSid"],
    )


@pytest.mark.parametrize("name", ["stream-error", "stream-failed"])
def test_both_failure_names_become_failed(name: str):
    fields = {**FIELDS, "StreamEvent": name, "StreamError": "Connection timeout"}
    event = parse_status_callback(urlencode(fields).encode(), content_type=FORM)
    assert (event.kind, event.event, event.error) == ("failed", name, "Connection timeout")


def test_json_shape_of_the_verb_page():
    body = json.dumps(
        {
            "CallSid": "v2:7V3rExample",
            "Timestamp": "2023-09-06T09:05:14.080710Z",
            "AccountSid": "19a75cea-0000-0000-0000-000000000000",
            "StreamName": "stream name",
            "StreamEvent": "stream-failed",
        }
    ).encode()
    for content_type in ("application/json", None, "text/plain"):
        event = parse_status_callback(body, content_type=content_type)
        assert (event.kind, event.call_sid, event.stream_name) == (
            "failed",
            "v2:7V3rExample",
            "stream name",
        )
        assert event.stream_sid is None


def test_call_control_streaming_failed_envelope():
    body = json.dumps(
        {
            "data": {
                "event_type": "streaming.failed",
                "id": "25dc3731-e51e-4927-a50d-a61cc25984b1",
                "occurred_at": "2021-12-15T14:11:24.613295Z",
                "payload": {
                    "call_control_id": "31f19208-5db0-11ec-9ea7-02420a0d3a69",
                    "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d",
                    "failure_reason": "connection_failed",
                    "stream_id": "1edb94f9-7ef0-4150-b502-e0ebadfd9491",
                    "stream_params": {"stream_url": "wss://www.example.com/websocket"},
                    "stream_type": "websocket",
                },
                "record_type": "event",
            }
        }
    ).encode()
    event = parse_status_callback(body, content_type="application/json")
    assert event.kind == "failed" and event.event == "streaming.failed"
    assert event.stream_sid == "1edb94f9-7ef0-4150-b502-e0ebadfd9491"
    assert event.call_sid == "31f19208-5db0-11ec-9ea7-02420a0d3a69"
    assert event.error == "connection_failed"
    assert event.client_state == "aGF2ZSBhIG5pY2UgZGF5ID1d"


def test_unknown_event_names_are_kept_as_other():
    event = parse_status_callback(b"StreamEvent=stream-paused&StreamSid=s", content_type=FORM)
    assert (event.kind, event.event) == ("other", "stream-paused")


@pytest.mark.parametrize(
    ("body", "query", "message"),
    [
        (b"", "", "empty"),
        (b"AccountSid=a&StreamSid=s", "", "StreamEvent"),
        (b"{not json", "", "JSON"),
        (b"[1, 2]", "", "not an object"),
        (b"", "StreamSid=s", "StreamEvent"),
    ],
)
def test_unreadable_payloads_raise(body: bytes, query: str, message: str):
    with pytest.raises(PayloadError, match=message):
        parse_status_callback(body, query=query)
