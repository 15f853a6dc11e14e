"""mediastream: receive live phone-call audio over WebSocket, decode it, record it, answer it."""

from __future__ import annotations

__version__ = "0.1.0"
