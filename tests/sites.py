"""Several data folders with their own engines on one remote (an S3 prefix or a Local folder).

Used by the safety and attack tests: ``s3_shared`` / ``local_shared`` build the remote,
``Shared.site(name)`` a data folder with an Engine on it, ``Shared.dump()`` reads every key on
the remote (the state folder too) as another tool would.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s3syncd import api
from s3syncd.config import Config, build_config
from s3syncd.engine import Engine
from s3syncd.model import APPROVABLE_KINDS, Action, ActionKind
from s3syncd.remote.base import Remote
from s3syncd.remote.localdir import LocalDirRemote

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from s3server import S3Server

MiB = 1024 * 1024
ALL = frozenset(APPROVABLE_KINDS)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def quiet(_text: str) -> None:
    pass


@dataclass
class Shared:
    """One remote and a way to make engines on it; ``close()`` closes every remote made."""

    kind: str
    tmp: Path
    make_remote: Callable[[], Remote]
    values: dict[str, Any]
    dump: Callable[[], dict[str, bytes]]  # every key on the remote (state folder too) -> bytes
    opened: list[Remote] = field(default_factory=list)

    def remote(self) -> Remote:
        rem = self.make_remote()
        self.opened.append(rem)
        return rem

    def site(self, name: str, workers: int = 1, clock: Callable[[], float] | None = None) -> Side:
        folder = self.tmp / name / "Data"
        folder.mkdir(parents=True, exist_ok=True)
        cfg = build_config({**self.values, "datafolder": str(folder), "user_name": name}, self.tmp)
        engine = Engine(cfg, self.remote(), name, workers=workers, clock=clock or time.time)
        return Side(name, folder, cfg, engine)

    def close(self) -> None:
        for rem in self.opened:
            rem.close()


@dataclass
class Side:
    name: str
    folder: Path
    cfg: Config
    engine: Engine

    def write(self, rel: str, data: bytes) -> None:
        """Write with a fresh mtime, so a same-size edit is always seen."""
        target = self.folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        old = target.stat().st_mtime_ns if target.exists() else 0
        target.write_bytes(data)
        bumped = max(old + 1_000_000_000, target.stat().st_mtime_ns)
        os.utime(target, ns=(bumped, bumped))

    def read(self, rel: str) -> bytes:
        return (self.folder / rel).read_bytes()

    def sync(self) -> api.SyncSummary:
        return api.run_once(self.cfg, auto=ALL, ask=None, say=quiet, engine=self.engine)

    def plan(self) -> list[Action]:
        eng = self.engine
        eng.prepare()
        eng.scan_local()
        eng.refresh_remote(listing=True, force=True)
        plan = eng.plan()
        eng.apply_agreement(plan)
        return list(plan.actions)

    def files(self) -> dict[str, bytes]:
        """Every file in the data folder, the local trash and conflict copies included."""
        return {
            p.relative_to(self.folder).as_posix(): p.read_bytes()
            for p in self.folder.rglob("*")
            if p.is_file()
        }

    def everything(self) -> set[str]:
        return {md5(data) for data in self.files().values()}


def visible(summary: api.SyncSummary) -> list[Action]:
    return [a for a in summary.planned if a.kind is not ActionKind.RECORD]


def s3_dump(client: S3Client, bucket: str, prefix: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix + "/"
    ):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"]
            out[item["Key"][len(prefix) + 1 :]] = body.read()
    return out


def dir_dump(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.relative_to(root).as_posix().startswith(".S3/.")
    }


def s3_shared(
    server: S3Server, client: S3Client, bucket: str, prefix: str, tmp: Path, **remote_kw: Any
) -> Shared:
    from s3syncd.remote.s3 import S3Remote

    def make() -> Remote:
        return S3Remote(bucket, prefix, server.client(), **remote_kw)

    values: dict[str, Any] = {
        "platform": "S3",
        "s3.bucket": bucket,
        "s3.prefix": prefix,
        "s3.endpoint_url": server.endpoint,
    }
    return Shared("S3", tmp, make, values, lambda: s3_dump(client, bucket, prefix))


def local_shared(tmp: Path) -> Shared:
    root = tmp / "remote"
    root.mkdir(exist_ok=True)
    values: dict[str, Any] = {"platform": "Local", "local.remote_path": str(root)}
    return Shared("Local", tmp, lambda: LocalDirRemote(root), values, lambda: dir_dump(root))
