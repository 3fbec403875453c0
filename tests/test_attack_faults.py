"""Attack: a two-way sync through an unreliable network still ends with every byte right.

Two data folders share one S3 prefix; both talk to SeaweedFS through a fault proxy
(tests/faultproxy.py) that fails about 10% of requests: 500s, 503 SlowDown, connection
resets before and after the request was applied, and rare 2 s stalls. One-shot passes
(what ``smart_sync`` and ``s3syncd sync --yes`` run, in-process) are repeated until nothing is
pending; an error on one file must not stop the others, and a pass that dies on a fault
is simply run again. The end state is checked directly against SeaweedFS, not through
the proxy: every manifest row names an object with exactly that content, every data
object has its row, and both folders hold exactly the expected files.

Large run: ``S3SYNCD_ATTACK_SCALE=10 python -m pytest tests/test_attack_faults.py -s``.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import unique_name
from faultproxy import FaultProxy
from folders import tree
from s3server import S3Server

from s3syncd import api, tables
from s3syncd.config import Config, build_config
from s3syncd.engine import Engine
from s3syncd.errors import SyncError
from s3syncd.model import APPROVABLE_KINDS, ActionKind
from s3syncd.remote.s3 import S3Remote

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SCALE = int(os.environ.get("S3SYNCD_ATTACK_SCALE", "1"))
FILES_PER_SIDE = 100 * SCALE
EDITS_PER_SIDE = 25 * SCALE
DELETES_PER_SIDE = 8 * SCALE
MAX_PASSES = 30
ALL = frozenset(APPROVABLE_KINDS)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    leaked = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not leaked, f"threads left running: {leaked}"


@dataclass
class Side:
    name: str
    folder: Path
    cfg: Config
    remote: S3Remote
    engine: Engine

    def write(self, rel: str, data: bytes) -> None:
        target = self.folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        old = target.stat().st_mtime_ns if target.exists() else 0
        target.write_bytes(data)
        bumped = max(old + 1_000_000_000, target.stat().st_mtime_ns)
        os.utime(target, ns=(bumped, bumped))


def quiet(_text: str) -> None:
    pass


def make_side(
    tmp: Path,
    name: str,
    server: S3Server,
    proxy: FaultProxy,
    bucket: str,
    prefix: str,
    max_attempts: int | None = None,
) -> Side:
    folder = tmp / name / "Data"
    folder.mkdir(parents=True)
    values = {
        "platform": "S3",
        "s3.bucket": bucket,
        "s3.prefix": prefix,
        "s3.endpoint_url": proxy.endpoint,
        "s3.region": server.region,
        "datafolder": str(folder),
        "user_name": name,
    }
    cfg = build_config(values, tmp)
    settings = server.remote_settings(bucket, prefix)
    settings["endpoint_url"] = proxy.endpoint  # signed for the proxy's Host, forwarded as is
    if max_attempts is not None:
        settings["max_attempts"] = max_attempts
    remote = S3Remote.from_config(settings)
    return Side(name, folder, cfg, remote, Engine(cfg, remote, name, workers=4))


@dataclass
class Tally:
    passes: int = 0
    pass_errors: int = 0
    failed_actions: int = 0
    conflicts: int = 0


def one_pass(side: Side, tally: Tally) -> bool:
    """One ``smart_sync``-style pass with everything approved; True if nothing was left."""
    tally.passes += 1
    try:
        summary = api.run_once(side.cfg, auto=ALL, ask=None, say=quiet, engine=side.engine)
    except SyncError:
        tally.pass_errors += 1  # the pass died on a fault (retries exhausted): run it again
        return False
    tally.failed_actions += len(summary.failed)
    tally.conflicts += len(summary.conflicts())
    pending = [a for a in summary.planned if a.kind is not ActionKind.RECORD]
    return summary.ok and not pending and summary.held is None


def converge(sides: list[Side], tally: Tally) -> None:
    """Pass over both sides until one full round has nothing to do on either."""
    for _ in range(MAX_PASSES):
        quiet_round = True
        for side in sides:
            quiet_round = one_pass(side, tally) and quiet_round
        if quiet_round:
            return
    raise AssertionError(f"no convergence after {MAX_PASSES} rounds: {tally}")


def content(rng: random.Random, name: str) -> bytes:
    size = rng.randint(0, 4000)
    return f"{name}\n".encode() + rng.randbytes(size)


def check_remote(client: S3Client, bucket: str, prefix: str, expected: dict[str, str]) -> int:
    """Directly on SeaweedFS: rows == objects == expected, each object's MD5 its row's."""
    objects: dict[str, bytes] = {}
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix + "/"):
        for item in page.get("Contents", []):
            key = item["Key"].removeprefix(prefix + "/")
            if not key.startswith(".S3/"):
                objects[key] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    raw = client.get_object(Bucket=bucket, Key=f"{prefix}/.S3/versions.csv")["Body"].read()
    rows = tables.parse_table(raw, "versions.csv")
    missing = sorted(set(rows) - set(objects))
    assert not missing, f"rows pointing at missing objects: {missing[:10]}"
    wrong = [p for p, r in rows.items() if hashlib.md5(objects[p]).hexdigest() != r.checksum]
    assert not wrong, f"rows whose object has other content: {wrong[:10]}"
    unrowed = sorted(set(objects) - set(rows))
    assert not unrowed, f"objects without a row: {unrowed[:10]}"
    assert {p: r.checksum for p, r in rows.items()} == expected
    return len(rows)


def test_two_way_sync_through_a_faulty_network(
    tmp_path: Path, s3_server: S3Server, s3_client: S3Client
) -> None:
    seed = int(os.environ.get("S3SYNCD_ATTACK_SEED", str(random.SystemRandom().randrange(1 << 30))))
    print(f"\nfault proxy seed: {seed} (S3SYNCD_ATTACK_SEED={seed} to replay)")
    rng = random.Random(seed)
    bucket = unique_name("faults")
    s3_client.create_bucket(Bucket=bucket)
    prefix = unique_name("p")
    started = time.monotonic()
    with FaultProxy(s3_server.endpoint, seed) as proxy:
        alice = make_side(tmp_path, "alice", s3_server, proxy, bucket, prefix)
        # Bob retries less than the default, so faults also reach the engine: failed
        # transfers, failed commits and passes that die half-way, all to be run again.
        bob = make_side(tmp_path, "bob", s3_server, proxy, bucket, prefix, max_attempts=1)
        sides = [alice, bob]
        try:
            retries = alice.remote._client.meta.config.retries or {}
            assert retries.get("total_max_attempts", 0) >= 4, retries  # faults are retried
            tally = Tally()
            expected: dict[str, str] = {}

            # Round 1: each side adds its own files; both must end with all of them.
            for side in sides:
                for i in range(FILES_PER_SIDE):
                    rel = f"{side.name}/d{i % 7}/f{i:04d}.bin"
                    data = content(rng, rel)
                    side.write(rel, data)
                    expected[rel] = hashlib.md5(data).hexdigest()
            converge(sides, tally)

            # Round 2: each side edits and deletes some of the other's files, and adds more.
            for side, other in ((alice, bob), (bob, alice)):
                theirs = sorted(
                    p for p in expected if p.startswith(other.name + "/") and "/new/" not in p
                )
                picked = rng.sample(theirs, EDITS_PER_SIDE + DELETES_PER_SIDE)
                for rel in picked[:EDITS_PER_SIDE]:
                    data = content(rng, rel + " edited by " + side.name)
                    side.write(rel, data)
                    expected[rel] = hashlib.md5(data).hexdigest()
                for rel in picked[EDITS_PER_SIDE:]:
                    (side.folder / rel).unlink()
                    del expected[rel]
                for i in range(EDITS_PER_SIDE):
                    rel = f"{side.name}/new/n{i:04d}.bin"
                    data = content(rng, rel)
                    side.write(rel, data)
                    expected[rel] = hashlib.md5(data).hexdigest()
            converge(sides, tally)
        finally:
            for side in sides:
                side.remote.close()
    elapsed = time.monotonic() - started

    assert tally.conflicts == 0, f"no edit overlapped, yet {tally.conflicts} conflicts"
    for side in sides:
        assert tree(side.folder) == expected, f"{side.name}'s folder differs"
    checked = check_remote(s3_client, bucket, prefix, expected)
    faults = dict(sorted(proxy.faults.items()))
    print(
        f"fault proxy: {proxy.requests} requests proxied, {sum(faults.values())} faults "
        f"injected {faults}; {tally.passes} passes ({tally.pass_errors} died on a fault, "
        f"{tally.failed_actions} failed actions retried); {checked} files checked on the "
        f"remote and {len(expected)} in each folder; {elapsed:.1f}s"
    )
    assert sum(faults.values()) >= proxy.requests // 20, "the proxy injected too few faults"
    assert all(faults.get(kind, 0) > 0 for kind in ("500", "503", "reset")), faults
