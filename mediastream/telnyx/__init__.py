"""The Telnyx control plane: TeXML ``<Stream>``, the REST calls that start and stop streams,
and signed status callbacks. Nothing here touches the media path.

``httpx`` (REST client) and ``cryptography`` (signature checks) come with the ``telnyx`` extra
and are imported only when a ``TelnyxClient`` or a ``SignatureVerifier`` is made.
"""

from mediastream.telnyx.rest import (
    CommandResult,
    StreamingStartRequest,
    StreamingStopRequest,
    TelnyxApiError,
    TelnyxClient,
    TelnyxNotFoundError,
    TelnyxRequestError,
    TexmlStream,
    TexmlStreamRequest,
    streaming_start_url,
)
from mediastream.telnyx.texml import (
    Parameter,
    Pause,
    Stream,
    TexmlError,
    Verb,
    render,
    stream_texml,
)
from mediastream.telnyx.webhooks import (
    PayloadError,
    SignatureError,
    SignatureVerifier,
    StreamStatusEvent,
    WebhookError,
    parse_status_callback,
)

__all__ = [
    "CommandResult",
    "Parameter",
    "Pause",
    "PayloadError",
    "SignatureError",
    "SignatureVerifier",
    "Stream",
    "StreamStatusEvent",
    "StreamingStartRequest",
    "StreamingStopRequest",
    "TelnyxApiError",
    "TelnyxClient",
    "TelnyxNotFoundError",
    "TelnyxRequestError",
    "TexmlError",
    "TexmlStream",
    "TexmlStreamRequest",
    "Verb",
    "WebhookError",
    "parse_status_callback",
    "render",
    "stream_texml",
    "streaming_start_url",
]
