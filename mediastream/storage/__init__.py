"""Finished recordings to object storage (``serve --upload s3://bucket/prefix``).

Five modules, each importing only what comes before it:

- ``stats``: ``UploadStats``, the plain counters ``server/metrics.py`` reads (pending files and
  bytes, uploads, failures), so that metrics never import the client;
- ``files``: which files of a record folder are finished and ready to go, and how much disk
  the ones still waiting use: blocking, run in a thread;
- ``target``: ``s3://bucket/prefix`` and the object key of each file;
- ``s3``: the one module that imports the S3 client (obstore, the ``[s3]`` extra), lazily;
- ``uploader``: ``Uploader``, the asyncio task set a server runs: scan, upload, verify (size
  and MD5 against the store's ETag), delete, retry with backoff, the disk bound.

This package knows ``config`` and the recording files (``media/recording``), never the
runtime or the server: the core starts an ``Uploader`` and asks it whether a new stream may
start (``Uploader.refusal``).
"""

from __future__ import annotations

from mediastream.storage.stats import UploadStats, upload_stats
from mediastream.storage.target import UploadTarget, object_key, parse_upload_url

__all__ = ["UploadStats", "UploadTarget", "object_key", "parse_upload_url", "upload_stats"]
