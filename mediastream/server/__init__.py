"""Servers that carry media sockets: the standalone ``websockets`` server."""

from mediastream.server.websocket import MediaServer, serve_blocking

__all__ = ["MediaServer", "serve_blocking"]
