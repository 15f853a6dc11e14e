"""What an uploader counts, as plain numbers: ``server/metrics.py`` reads them each flush.

The same pattern as ``RecordingStats``: the uploader never touches prometheus_client, and the
metrics module never imports the S3 client.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FAILURE_KINDS = ("request", "verify", "local")  # labels of mediastream_upload_failures_total


@dataclass(eq=False)
class UploadStats:
    """Counters of the uploaders of one process (or of one server, if it passes its own).

    ``pending_*`` are what this process is responsible for: the files waiting in its record
    folder, set by each scan (0 in a worker that does not hold the folder's upload lock, so
    that sums over workers count each file once).
    """

    pending_files: int = 0
    pending_bytes: int = 0
    uploaded_files: int = 0
    uploaded_bytes: int = 0
    # failed attempts by kind: ``request`` (the store refused or was unreachable),
    # ``verify`` (the stored object's size or checksum differed), ``local`` (reading the file)
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_KINDS, 0))

    def failed(self, kind: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1


upload_stats = UploadStats()
"""The process's uploaders count here unless given their own."""
