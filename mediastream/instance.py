"""Instance-addressed URLs: ``/i/<instance id>/`` in front of every path we hand the carrier.

Several servers behind one load balancer share one public address. A reconnect or a status
callback must reach the server that holds the stream, and the only thing the carrier sends
back unchanged is the URL we gave it. So every URL a server hands out names it as the first
path elements: ``wss://calls.example.com/i/a/stream``, ``https://calls.example.com/i/a/
callbacks/stream``. The load balancer routes by that element (``deploy/haproxy.cfg``); the
server strips it before its own routing (``MediaCore.http``) and serves a request that names
another instance all the same: that is how a call fails over when its instance died.

This module imports only ``config`` (the id's pattern): every layer may use it.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from mediastream.config import INSTANCE_ID_PATTERN

INSTANCE_SEGMENT = "i"  # the path element before the id: /i/<id>/...

__all__ = [
    "INSTANCE_SEGMENT",
    "instance_path",
    "instance_prefix",
    "instance_url",
    "is_instance_id",
    "split_instance_path",
]


def is_instance_id(value: str) -> bool:
    """Whether ``value`` can name an instance (``config.INSTANCE_ID_PATTERN``)."""
    return INSTANCE_ID_PATTERN.fullmatch(value) is not None


def instance_prefix(instance_id: str) -> str:
    """``/i/<id>``: what goes in front of a path (no trailing slash)."""
    if not is_instance_id(instance_id):
        raise ValueError(f"not an instance id: {instance_id!r}")
    return f"/{INSTANCE_SEGMENT}/{instance_id}"


def instance_path(instance_id: str, path: str) -> str:
    """``path`` under the instance's prefix: ``/stream`` -> ``/i/a/stream``; a path that
    already names an instance is left as it is."""
    if split_instance_path(path)[0] is not None:
        return path
    return instance_prefix(instance_id) + (path if path.startswith("/") else "/" + path)


def split_instance_path(path: str) -> tuple[str | None, str]:
    """(the instance a path names, the path below it): ``/i/a/texml`` -> ``("a", "/texml")``,
    ``/i/a`` -> ``("a", "/")``, ``/texml`` -> ``(None, "/texml")``. A second element that is
    not an instance id is no prefix."""
    head = f"/{INSTANCE_SEGMENT}/"
    if not path.startswith(head):
        return None, path
    name, slash, rest = path[len(head) :].partition("/")
    if not is_instance_id(name):
        return None, path
    return name, slash + rest if slash else "/"


def instance_url(url: str, instance_id: str) -> str:
    """``url`` with the instance's prefix in front of its path, scheme, host, query kept:
    ``wss://calls.example.com/stream`` -> ``wss://calls.example.com/i/a/stream``. A URL whose
    path already names an instance is returned as it is."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=instance_path(instance_id, parts.path or "/")))
