"""``s3://bucket/prefix`` and the object key of each file.

Keys are ``<prefix>/<instance id>/<file name>``: two hosts each record a reconnected call as
``<id>.wav`` (each is the first session of that id it has seen), and the instance id keeps
them apart in the bucket. This module is the one place the layout is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mediastream.errors import UsageError

# S3's bucket naming rules, loosely (3-63 characters, lower case, digits, dots, hyphens)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class UploadTarget:
    """Where uploads go: a bucket, and a key prefix inside it (no leading or trailing ``/``)."""

    bucket: str
    prefix: str = ""

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def parse_upload_url(url: str) -> UploadTarget:
    """``s3://bucket[/prefix]``; anything else is a ``UsageError`` naming what is wrong."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "s3":
        raise UsageError(f"--upload {url!r}: expected s3://bucket/prefix")
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise UsageError(
            f"--upload {url!r}: {bucket!r} is not a bucket name (3 to 63 lower-case letters, "
            "digits, '.' or '-')"
        )
    prefix = prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise UsageError(f"--upload {url!r}: the prefix has an empty, '.' or '..' element")
    return UploadTarget(bucket, prefix)


def object_key(target: UploadTarget, instance_id: str, name: str) -> str:
    """The key of the file ``name`` uploaded by instance ``instance_id``."""
    return "/".join(part for part in (target.prefix, instance_id, name) if part)
