"""The capture never holds the auth token, however a frame spells it; media frames pass as
they are. (The end-to-end case, through a real server, is in tests/server/test_http_faults.py.)"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from mediastream.media.capture import REDACTED, CaptureWriter, read_capture, redact_text

TOKEN = "s3cret-Token-42"


def escaped(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


def fill(template: str, value: str) -> str:
    return template.replace("@", value)


def decodes_to_token(text: str) -> bool:
    """An independent oracle: any \\uXXXX (however many backslashes) decoded anywhere."""
    for _ in range(4):
        text = re.sub(r"\\+u([0-9a-fA-F]{4})", lambda m: chr(int(m[1], 16)), text)
    return TOKEN in text


@pytest.mark.parametrize(
    "frame",
    [
        fill('{"event":"connected","x-telnyx-streaming-auth-token":"@"}', escaped(TOKEN)),
        fill('{"event":"connected","x-telnyx-streaming-auth-token":"@"}', TOKEN),
        fill('{"event":"connected","note":"before @ after","n":"\\n"}', escaped(TOKEN)),
        fill('{"event":"connected","x":"@"}', TOKEN[:4] + escaped(TOKEN[4:])),
        fill('{"event":"connected","x":"@"', escaped(TOKEN)),  # not JSON: unterminated
        fill('x" "@"', escaped(TOKEN)),  # not JSON, quotes misaligned
    ],
)
def test_no_spelling_of_the_token_survives(frame: str):
    assert decodes_to_token(frame)
    redacted = redact_text(frame, TOKEN)
    assert TOKEN not in redacted and not decodes_to_token(redacted)
    assert REDACTED in redacted


def test_json_frames_keep_everything_but_the_token():
    template = '{"event":"connected","version":"1.0.0","t":"@","s":"caf\\u00e9"}'
    frame = fill(template, escaped(TOKEN))
    assert json.loads(redact_text(frame, TOKEN)) == {
        "event": "connected",
        "version": "1.0.0",
        "t": REDACTED,
        "s": "café",
    }


def test_a_media_frame_is_passed_as_it_is():
    payload = base64.b64encode(bytes(range(160))).decode()
    frame = json.dumps({"event": "media", "media": {"chunk": "2", "payload": payload}})
    assert redact_text(frame, TOKEN) is frame  # two substring scans, no copy


async def test_the_file_holds_no_token_in_text_or_binary_frames(tmp_path: Path):
    writer = CaptureWriter(tmp_path)
    writer.name("s1")
    writer.add(0.0, fill('{"event":"connected","t":"@"}', escaped(TOKEN)), redact=TOKEN)
    writer.add(0.1, f"binary {TOKEN}".encode(), redact=TOKEN)
    await writer.close()
    [path] = list(tmp_path.iterdir())
    raw = path.read_text()
    assert TOKEN not in raw and not decodes_to_token(raw)
    frames = read_capture(path)
    assert frames[1] == (0.1, f"binary {REDACTED}".encode())
