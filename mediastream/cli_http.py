"""``serve``'s flags for the TeXML answer, the status callbacks and playback: one setting
decides both what ``/texml`` asks the carrier for and what the players send."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace
from typing import NoReturn

from mediastream.config import HttpLimits, PlaybackConfig
from mediastream.errors import MediaStreamError, UsageExit
from mediastream.server.routes import CALLBACK_PATH, STREAM_PATH, TEXML_PATH, HttpRoutes
from mediastream.telnyx.texml import (
    Stream,
    add_stream_arguments,
    stream_from_args,
)

logger = logging.getLogger(__name__)


def add_http_arguments(parser: argparse.ArgumentParser) -> None:
    """``serve`` flags for the TeXML answer and the status callbacks."""
    group = parser.add_argument_group(
        "Telnyx",
        f"HTTP on the same port: {TEXML_PATH} answers a call with TeXML that streams it here; "
        f"{CALLBACK_PATH} takes stream status callbacks. The --bidirectional-* flags also set "
        "what the server plays back (a handler's own playback wins, with a warning if it "
        "differs); unset, both follow Telnyx's defaults (mp3; PCMU at 8000 Hz for rtp).",
    )
    add_stream_arguments(
        group,
        url_flag="--public-url",
        url_required=False,
        url_help="the wss:// address Telnyx should stream to (default: built from each "
        f"request's Host and X-Forwarded-Proto/-Host, path {STREAM_PATH})",
    )
    group.add_argument(
        "--texml-verb",
        choices=["connect", "start"],
        default="connect",
        help="connect keeps the call up while it streams; start streams and goes on (add "
        "--texml-pause, or the call ends with the document) (default: %(default)s)",
    )
    group.add_argument(
        "--texml-pause",
        type=int,
        metavar="SECONDS",
        help="<Pause length=SECONDS> after the verb in /texml's answer (default: no pause)",
    )
    group.add_argument(
        "--telnyx-public-key",
        default=os.environ.get("TELNYX_PUBLIC_KEY"),
        metavar="BASE64",
        help="verify callback signatures with this Ed25519 key (default: $TELNYX_PUBLIC_KEY, "
        "else none)",
    )
    group.add_argument(
        "--require-signatures",
        action="store_true",
        help="refuse to start without a Telnyx public key (default: off, unsigned callbacks "
        "are accepted, with a warning at start-up)",
    )
    group.add_argument(
        "--body-timeout",
        type=float,
        default=HttpLimits.body_seconds,
        metavar="SECONDS",
        help="time a request body (status callback, TeXML POST) may take after its head; "
        "later gets 408 (default: %(default)s s)",
    )


def _usage_error(message: str) -> NoReturn:
    print(f"mediastream: error: {message}", file=sys.stderr)
    raise UsageExit(message)


def http_routes_from_args(args: argparse.Namespace) -> HttpRoutes:
    """The routes the ``serve`` flags describe; a bad flag value is a usage error (exit 2)."""
    timeout = getattr(args, "body_timeout", HttpLimits.body_seconds)
    if not timeout > 0:
        _usage_error(f"--body-timeout must be more than 0, not {timeout}")
    try:
        return HttpRoutes(
            public_key=args.telnyx_public_key or None,
            stream=stream_from_args(args),
            verb=args.texml_verb,
            pause=args.texml_pause,
            require_signatures=getattr(args, "require_signatures", False),
        )
    except (MediaStreamError, ValueError) as exc:  # a bad key or <Stream> value, no key
        _usage_error(str(exc))


# ------------------------------------------------------------------ playback from the template

# rates fixed by the codec; bidirectionalSamplingRate matters only for the others (L16, OPUS)
_CODEC_RATES = {"PCMU": 8000, "PCMA": 8000, "G722": 16000}


def playback_from_stream(stream: Stream, base: PlaybackConfig | None = None) -> PlaybackConfig:
    """What the players send, from the ``<Stream>`` that tells Telnyx what to expect.

    One setting for both sides: the TeXML's bidirectional attributes, each left unset meaning
    Telnyx's default, which is ``PlaybackConfig``'s default too (mp3, PCMU, 8000). Before,
    ``serve --bidirectional-codec G722`` changed only the TeXML and the caller heard PCMU
    bytes played as G.722: noise.
    """
    base = base or PlaybackConfig()
    return replace(
        base,
        mode=stream.bidirectional_mode or base.mode,
        codec=stream.bidirectional_codec or base.codec,
        sample_rate=stream.bidirectional_sampling_rate or base.sample_rate,
    )


def describe_playback(config: PlaybackConfig) -> str:
    """``rtp G722 16000 Hz`` or ``mp3``: the part of a playback setting the carrier sees."""
    if config.mode == "mp3":
        return "mp3"
    codec = config.codec.upper()
    return f"rtp {codec} {_CODEC_RATES.get(codec, config.sample_rate)} Hz"


def playback_mismatch(requested: PlaybackConfig, played: PlaybackConfig) -> str | None:
    """Why audio sent as ``played`` is not what the carrier was asked for, or None.

    The carrier decodes what we send as it was told to; a difference here is heard as noise
    (or silence in mp3 mode), and nothing on the wire reports it.
    """
    asked, sent = describe_playback(requested), describe_playback(played)
    if asked == sent:
        return None
    return f"plays {sent}, but /texml asks Telnyx for {asked}: the caller will hear noise"


def log_instance(instance_id: str) -> None:
    """Say at start-up which instance this is: the name a load balancer routes by."""
    logger.info(
        "instance %s: the URLs handed to the carrier name it (/i/%s/stream, "
        "/i/%s/callbacks/stream)", instance_id, instance_id, instance_id,
    )  # fmt: skip


def check_handler_playback(handler: type, playback: PlaybackConfig) -> None:
    """Log once, at start-up, what callers get, and whether a handler's own ``playback``
    (which wins over the server's) differs from what /texml asks Telnyx for."""
    own = getattr(handler, "playback", None)
    if own is None:
        logger.info("playback to callers: %s, as /texml asks", describe_playback(playback))
        return
    problem = playback_mismatch(playback, own)
    if problem is None:
        logger.info(
            "playback to callers: %s (the handler's), as /texml asks", describe_playback(own)
        )
        return
    logger.warning(
        "handler %s %s; set --bidirectional-mode/-codec/-sampling-rate to match its playback",
        getattr(handler, "__name__", handler), problem,
    )  # fmt: skip
