"""Engine "sites" (one data folder + one engine) sharing a prefix of the real test S3 server.

Used by tests/test_safety_etags.py and tests/test_attack_oldclient.py. The remote is an
``S3Remote`` (or a subclass standing in for another kind of bucket) with a small multipart
threshold, so files of a few hundred KiB are uploaded in parts.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s3syncd import api
from s3syncd.config import Config, build_config
from s3syncd.engine import Engine
from s3syncd.model import APPROVABLE_KINDS, Action, ActionKind
from s3syncd.remote.s3 import S3Remote

if TYPE_CHECKING:
    from s3server import S3Server

ALL = frozenset(APPROVABLE_KINDS)
# s3transfer never cuts parts below 5 MiB, so anything at or above this is one part of a
# multipart upload: its ETag is "<md5 of md5s>-1", not the content's MD5.
MULTIPART_THRESHOLD = 64 * 1024
NOW = time.mktime((2026, 1, 1, 0, 0, 0, 0, 0, -1))


def quiet(_text: str) -> None:
    pass


@dataclass
class Site:
    name: str
    folder: Path
    cfg: Config
    remote: S3Remote
    engine: Engine

    def write(self, rel: str, data: bytes) -> None:
        """Write a file with a fresh mtime, so a same-size edit is always seen."""
        target = self.folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        old = target.stat().st_mtime_ns if target.exists() else 0
        target.write_bytes(data)
        bumped = max(old + 1_000_000_000, target.stat().st_mtime_ns)
        os.utime(target, ns=(bumped, bumped))

    def read(self, rel: str) -> bytes:
        return (self.folder / rel).read_bytes()

    def sync(self) -> api.SyncSummary:
        """One pass with everything approved (conflicts keep both)."""
        return api.run_once(self.cfg, auto=ALL, ask=None, say=quiet, engine=self.engine)

    def plan(self) -> list[Action]:
        """What a pass plans before anything is approved."""
        eng = self.engine
        eng.prepare()
        eng.scan_local()
        eng.refresh_remote(listing=True, force=True)
        plan = eng.plan()
        eng.apply_agreement(plan)
        return list(plan.actions)

    def kinds(self, rel: str) -> list[ActionKind]:
        return [a.kind for a in self.plan() if a.path == rel]

    def close(self) -> None:
        self.remote.close()


def make_site(
    tmp: Path,
    name: str,
    server: S3Server,
    bucket: str,
    prefix: str,
    remote_class: type[S3Remote] = S3Remote,
    **remote_kwargs: Any,
) -> Site:
    folder = tmp / name / "Data"
    folder.mkdir(parents=True, exist_ok=True)
    values = {
        "platform": "S3",
        "s3.bucket": bucket,
        "s3.prefix": prefix,
        "s3.endpoint_url": server.endpoint,
        "datafolder": str(folder),
        "user_name": name,
    }
    cfg = build_config(values, tmp)
    kwargs: dict[str, Any] = {
        "multipart_threshold": MULTIPART_THRESHOLD,
        "multipart_chunksize": MULTIPART_THRESHOLD,
        **remote_kwargs,
    }
    remote = remote_class(bucket, prefix, server.client(), **kwargs)
    engine = Engine(cfg, remote, name, workers=2, clock=lambda: NOW)
    return Site(name, cfg.datafolder, cfg, remote, engine)
