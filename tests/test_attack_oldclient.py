"""Attack: an old client (the original s3synchrony package) shares a prefix with our engine.

:class:`OldClient` is a test double that behaves like the original's ``smart_sync`` with
every prompt answered "all" / "y" (/work/shared/reference/original-s3synchrony.md §1.4):
it downloads ``versions.csv`` and ``deletedS3.csv`` when its run starts and writes them
back blindly when it ends; it backs deleted files up at ``.S3/deleted/<basename>``; it
writes naive local times and picks a direction by comparing them; it drops rows with a
missing value (pandas ``dropna``); it rewrites ``deletedS3.csv`` with the index column;
it uploads without our ``md5`` metadata, in parts when large.

Each round our engine commits while the old client's run is in progress, so its end
writes a stale manifest over ours; both sides create, modify and delete files (some of
them multipart). Both sides only edit versions they have seen (the old client has no
conflict detection of its own, so an edit of a version it never saw is its own lost
update, not something a successor can prevent). At the end every version either side
ever wrote must still exist somewhere (remote data, ``.S3/deleted/``, a local trash or
tmp copy, a conflict copy), and the two folders must hold the same files.

Scale: ``S3SYNCD_ATTACK_SCALE=10 python -m pytest tests/test_attack_oldclient.py -s``.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError
from conftest import unique_name
from folders import tree
from s3sites import MULTIPART_THRESHOLD, Site, make_site

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from s3server import S3Server

pytestmark = pytest.mark.s3

SCALE = int(os.environ.get("S3SYNCD_ATTACK_SCALE", "1"))
ROUNDS = 4 * SCALE
COLUMNS = ["File", "Edited By", "Time Edited", "Checksum"]
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class OldClient:
    """The original package's sync, one run split in two: ``begin`` (read the remote
    tables) and ``finish`` (the eight steps, then the blind write-back)."""

    def __init__(self, root: Path, client: S3Client, bucket: str, prefix: str, user: str):
        self.root, self.client, self.bucket, self.prefix, self.user = (
            root,
            client,
            bucket,
            prefix,
            user,
        )
        self.state = root / ".S3"
        (self.state / "tmp").mkdir(parents=True, exist_ok=True)
        self.transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD
        )
        self.other = pd.DataFrame(columns=COLUMNS)
        self.deleted = pd.DataFrame(columns=COLUMNS)
        self.deleted_raw = b""
        # Versions this user wrote and never uploaded: if the original itself removes or
        # overwrites one (its steps 2 and 6 keep no copy), that loss is its own.
        self.unpushed: set[str] = set()
        self.self_lost: set[str] = set()
        self.errors = 0
        self.log: list[str] = []

    # -- S3, as the original calls it --------------------------------------------------
    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}"

    def _get(self, rel: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(rel))["Body"].read()
        except ClientError:
            return None

    def _put(self, rel: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(rel), Body=data)

    def _upload(self, rel: str) -> None:
        self.log.append(f"old upload {rel} {md5((self.root / rel).read_bytes())[:6]}")
        self.client.upload_file(
            str(self.root / rel), self.bucket, self._key(rel), Config=self.transfer
        )
        self.unpushed.discard(md5((self.root / rel).read_bytes()))

    def _download(self, rel: str) -> bool:
        data = self._get(rel)
        if data is None:
            self.errors += 1  # logged by the original, the run goes on
            return False
        target = self.root / rel
        self.log.append(f"old download {rel} {md5(data)[:6]}")
        if target.exists():
            self._losing(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)  # mtime: now (the original keeps no times)
        return True

    def _losing(self, path: Path) -> None:
        old = md5(path.read_bytes())
        if old in self.unpushed:
            self.self_lost.add(old)

    # -- the local side ------------------------------------------------------------------
    def scan(self) -> pd.DataFrame:
        rows = []
        for p in sorted(self.root.rglob("*")):
            rel = p.relative_to(self.root).as_posix()
            if p.is_file() and ".S3" not in rel:
                stamp = time.strftime(TIME_FORMAT, time.localtime(p.stat().st_mtime))
                rows.append([rel, self.user, stamp, md5(p.read_bytes())])
        return pd.DataFrame(rows, columns=COLUMNS)

    def write(self, rel: str, data: bytes) -> None:
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        self.unpushed.add(md5(data))

    def _local_table(self, name: str) -> pd.DataFrame:
        path = self.state / name
        return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=COLUMNS)

    # -- one run ------------------------------------------------------------------------
    def begin(self) -> None:
        raw = self._get(".S3/versions.csv") or b""
        self.other = pd.read_csv(io.BytesIO(raw)) if raw else pd.DataFrame(columns=COLUMNS)
        self.deleted_raw = self._get(".S3/deletedS3.csv") or b""
        self.deleted = (
            pd.read_csv(io.BytesIO(self.deleted_raw))
            if self.deleted_raw
            else pd.DataFrame(columns=COLUMNS)
        )

    def finish(self) -> None:
        other, deleted = self.other, self.deleted
        mine = self.scan()
        # 1. push deletions
        known = set(self._local_table("versionsLocal.csv")["File"]) | set(
            self._local_table("deletedLocal.csv")["File"]
        )
        gone = (known - set(mine["File"])) & set(other["File"])
        other[other["File"].isin(gone)].to_csv(self.state / "deletedLocal.csv", index=False)
        if gone:
            for rel in sorted(gone):
                data = self._get(rel)
                if data is None:
                    self.errors += 1
                    continue
                base = rel.rsplit("/", 1)[-1]
                (self.state / "tmp" / base).write_bytes(data)
                self.client.delete_object(Bucket=self.bucket, Key=self._key(rel))
                self._put(f".S3/deleted/{base}", data)
                self.log.append(f"old delete {rel} {md5(data)[:6]}")
            deleted = pd.concat([deleted, other[other["File"].isin(gone)]])
            other = other.where(~other["File"].isin(gone)).dropna()
            buf = io.StringIO()
            deleted.to_csv(buf)  # the original's bug: no index=False here
            self.deleted_raw = buf.getvalue().encode()
        # 2. pull deletions (permanent: the original keeps no copy)
        for rel in set(deleted["File"]) & set(mine["File"]) - set(other["File"]):
            self._losing(self.root / rel)
            self.log.append(f"old remove {rel}")
            (self.root / rel).unlink()
        mine = self.scan()
        # 3. push new
        new = mine[~mine["File"].isin(other["File"])]
        for rel in new["File"]:
            self._upload(rel)
        other = pd.concat([other, new])
        # 4. pull new
        for rel in set(other["File"]) - set(mine["File"]):
            self._download(rel)
        # 5./6. modified: the newer naive local time wins (ties count as remote-newer)
        theirs = {r["File"]: r for _, r in other.iterrows()}
        for _, row in mine.iterrows():
            rel, remote = row["File"], theirs.get(row["File"])
            if remote is None or remote["Checksum"] == row["Checksum"]:
                continue
            if row["Time Edited"] > str(remote["Time Edited"]):
                self._upload(rel)
                other = pd.concat([other[other["File"] != rel], mine[mine["File"] == rel]])
            else:
                self._download(rel)
        # The end of every run: both tables uploaded blindly, then the local snapshot.
        self._put(".S3/versions.csv", other.to_csv(index=False).encode())
        self._put(".S3/deletedS3.csv", self.deleted_raw or deleted.to_csv(index=False).encode())
        self.scan().to_csv(self.state / "versionsLocal.csv", index=False)

    def sync(self) -> None:
        self.begin()
        self.finish()


def content(rng: random.Random, tag: str) -> bytes:
    if rng.random() < 0.3:  # multipart on both sides
        return tag.encode() + rng.randbytes(MULTIPART_THRESHOLD + rng.randrange(4096))
    return f"{tag} {rng.random()}\n".encode()


def everything(client: S3Client, bucket: str, prefix: str, *folders: Path) -> set[str]:
    found = set()
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix + "/"
    ):
        for item in page.get("Contents", []):
            found.add(md5(client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()))
    for folder in folders:
        found |= {md5(p.read_bytes()) for p in folder.rglob("*") if p.is_file()}
    return found


@pytest.fixture
def team(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str, s3_client: S3Client
) -> Iterator[tuple[Site, OldClient, str]]:
    prefix = unique_name("mixed")
    site = make_site(tmp_path, "neo", s3_server, s3_bucket, prefix)
    old_root = tmp_path / "old" / "Data"
    old_root.mkdir(parents=True)
    old = OldClient(old_root, s3_client, s3_bucket, prefix, "oldtimer")
    try:
        yield site, old, prefix
    finally:
        site.close()


def test_old_client_and_engine_share_a_prefix_and_lose_nothing(
    team: tuple[Site, OldClient, str], s3_client: S3Client, s3_bucket: str
) -> None:
    site, old, prefix = team
    rng = random.Random(6)
    written: dict[str, str] = {}  # md5 -> who wrote it, where, in which round
    # A version someone edited on top of (they held it when they saved the new one) is
    # superseded, not lost: neither package keeps the history of modifications.
    superseded: set[str] = set()

    def supersede(path: Path) -> None:
        if path.exists():
            superseded.add(md5(path.read_bytes()))

    counter = iter(range(10**9))
    round_no = -1

    def esync() -> None:
        report = site.sync()
        for action, msg in report.done:
            old.log.append(f"neo {action.kind.value} {action.path}: {msg} ({action.reason})")
        assert report.ok, report.failed

    def engine_write(rel: str) -> None:
        data = content(rng, f"neo-{rel}-{next(counter)}")
        supersede(site.folder / rel)
        site.write(rel, data)
        written[md5(data)] = f"neo {rel} round {round_no}"
        old.log.append(f"neo writes {rel} {md5(data)[:6]}")

    def old_write(rel: str) -> None:
        data = content(rng, f"old-{rel}-{next(counter)}")
        supersede(old.root / rel)
        old.write(rel, data)
        written[md5(data)] = f"old {rel} round {round_no}"
        old.log.append(f"old writes {rel} {md5(data)[:6]}")

    # Unique basenames: two same-named files would overwrite each other's backup in the
    # original's own trash, a loss of the original we do not measure here.
    for n in range(6):
        engine_write(f"d{n % 2}/seed{n}.txt")
    esync()
    old.sync()
    engine_ops = old_ops = 0
    for r in range(ROUNDS):
        round_no = r
        old.log.append(f"--- round {r}: old begins")
        old.begin()  # the old client's run starts: it holds the manifest as of now
        mine = sorted(tree(site.folder))
        touched: set[str] = set()
        for _ in range(rng.randint(1, 3)):
            op = rng.choice(["new", "modify", "delete"])
            if op == "new" or not mine:
                rel = f"d{rng.randrange(3)}/neo{r}-{next(counter)}.bin"
                engine_write(rel)
            else:
                rel = rng.choice(mine)
                if rel in touched:
                    continue
                if op == "modify":
                    engine_write(rel)
                else:
                    (site.folder / rel).unlink()
                    old.log.append(f"neo rm {rel}")
            touched.add(rel)
            engine_ops += 1
        esync()  # commits while the old client's run is in progress
        # The old user edits only versions it has and the remote agrees with.
        agreed = {
            str(f): str(c) for f, c in zip(old.other["File"], old.other["Checksum"], strict=True)
        }
        theirs = {p: m for p, m in tree(old.root).items() if agreed.get(p) == m}
        candidates = sorted(set(theirs) - touched)
        for _ in range(rng.randint(1, 3)):
            op = rng.choice(["new", "modify", "delete"])
            if op == "new" or not candidates:
                old_write(f"o{rng.randrange(2)}/old{r}-{next(counter)}.dat")
            else:
                rel = candidates.pop(rng.randrange(len(candidates)))
                if op == "modify":
                    old_write(rel)
                else:
                    (old.root / rel).unlink()
                    old.log.append(f"old rm {rel}")
            old_ops += 1
        old.log.append("old finishes")
        old.finish()  # blind write-back of the manifest it read at the start
        esync()
        old.sync()
        esync()
    for _ in range(2):  # settle
        old.sync()
        esync()
    trash = site.folder / ".S3" / "trash"
    have = everything(s3_client, s3_bucket, prefix, site.folder, old.root)
    lost = sorted(written[m] for m in set(written) - have - superseded - old.self_lost)
    in_trash = sum(1 for p in trash.rglob("*") if p.is_file()) if trash.exists() else 0
    print(
        f"old-client attack: {ROUNDS} rounds, {engine_ops} engine ops, {old_ops} old-client "
        f"ops, {len(written)} versions checked ({len(superseded)} superseded by an edit on "
        f"top, {len(written) - len(superseded)} required to exist), {len(old.self_lost)} "
        f"lost by the old client itself, {old.errors} old-client errors, {in_trash} in trash"
    )
    if lost:
        print("\n".join(old.log))
    print("lost by the old client itself:", sorted(written.get(m, m) for m in old.self_lost))
    assert not lost, f"{len(lost)} version(s) exist nowhere: {lost}"
    assert tree(site.folder) == tree(old.root)
    assert site.plan() == []
