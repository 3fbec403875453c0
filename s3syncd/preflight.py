"""Checking a new config against its remote before the daemon depends on it.

One request answers the three questions a first run has (is the bucket there, can these
credentials read the prefix, is the endpoint reachable): a read of the prefix's manifest.
Each failure is reported as the error it is, with the setting that fixes it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from s3syncd.config import Config
from s3syncd.errors import (
    AuthError,
    BucketNotFoundError,
    EndpointError,
    RemoteError,
)
from s3syncd.remote.base import MANIFEST_KEY, Blob

log = logging.getLogger(__name__)

# A first check should answer in seconds, not after boto3's five attempts with backoff.
CHECK_SETTINGS = {"max_attempts": 1, "connect_timeout": 5, "read_timeout": 15}


@dataclass(frozen=True, slots=True)
class CheckResult:
    remote: str
    manifest_rows: int | None  # None: no manifest yet (a new prefix)

    def describe(self) -> str:
        if self.manifest_rows is None:
            return f"{self.remote} is reachable; nothing synced there yet"
        return (
            f"{self.remote} is reachable; its manifest lists {self.manifest_rows} file(s) "
            "(from s3synchrony or s3syncd)"
        )


def _hint(exc: RemoteError, cfg: Config) -> str:
    where = f" in {cfg.path}" if cfg.path else ""
    if isinstance(exc, BucketNotFoundError):
        return f"create the bucket, or correct [s3] bucket{where}"
    if isinstance(exc, AuthError):
        return (
            "set AWS_PROFILE (or [s3] profile"
            + where
            + "), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, to credentials that may "
            "read this bucket"
        )
    if isinstance(exc, EndpointError):
        if cfg.platform == "Local":
            return f"create or mount that folder, or correct [local] remote_path{where}"
        return f"check the network, or correct [s3] endpoint_url{where}"
    return "see the message above"


def check_remote(cfg: Config) -> CheckResult:
    """Read the remote manifest once; raise the remote's error with how to fix it."""
    from s3syncd.api import build_remote

    settings = dict(cfg.platform_settings)
    if cfg.platform == "S3":
        settings.update(CHECK_SETTINGS)
    remote = build_remote(dataclasses.replace(cfg, platform_settings=settings))
    try:
        if cfg.platform == "Local":
            remote.check()  # a folder: exists, is one, and is writable
        blob = remote.read_blob(MANIFEST_KEY)
        described = remote.describe()
    except RemoteError as exc:
        raise type(exc)(f"{exc.message}; {_hint(exc, cfg)}") from exc
    finally:
        remote.close()
    if isinstance(blob, Blob):
        rows = max(len(blob.data.decode("utf-8", errors="replace").splitlines()) - 1, 0)
        return CheckResult(described, rows)
    return CheckResult(described, None)
