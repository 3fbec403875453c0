"""Attack: two writers on one S3 prefix, one's big batch racing the other's commits.

Each round, alice approves a batch of a few hundred uploads (new files and edits of older
ones). As soon as her batch has really started (the first action finished), bob commits his
own, different versions of a dozen of the same paths, while alice's transfers keep running.
Then both sync until they agree.

Asserted, by MD5 against every version ever written: every version of every contested file
survives (on the remote, in ``.S3/deleted/``, as a conflict copy, or in a local trash), and
each contested path ends as bob's version or as a conflict (bob's version kept beside it),
never as a silent overwrite.

Large run: ``S3SYNCD_ATTACK_SCALE=10 python -m pytest tests/test_attack_race.py -s``.
"""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import unique_name
from sites import Shared, Side, md5, s3_shared, visible

from s3syncd.engine import PassReport
from s3syncd.executor import Outcome
from s3syncd.model import Action

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from s3server import S3Server

pytestmark = pytest.mark.s3

SCALE = int(os.environ.get("S3SYNCD_ATTACK_SCALE", "1"))
ROUNDS = 3 * SCALE
NEW_PER_ROUND = 120 * SCALE  # new files alice creates each round
EDITS_PER_ROUND = 80 * SCALE  # older, uncontested files alice edits each round
CONTESTED = 12  # paths of alice's batch that bob also writes, mid-batch
SETTLE_PASSES = 8


def content(who: str, rnd: int, path: str) -> bytes:
    return f"{who} round {rnd} {path}\n".encode()


def settle(alice: Side, bob: Side) -> int:
    """Sync both until neither plans anything; returns the passes it took."""
    for n in range(1, SETTLE_PASSES + 1):
        a, b = alice.sync(), bob.sync()
        assert a.ok and b.ok, (a.failed, b.failed, a.commit_error, b.commit_error)
        if not visible(a) and not visible(b):
            return n
    raise AssertionError(f"alice and bob did not converge in {SETTLE_PASSES} passes")


def race_batch(alice: Side, bob: Side, plan: list[Action]) -> tuple[PassReport, int]:
    """Alice executes ``plan``; bob runs a whole pass once her first action has finished.

    Returns her report and how many of her uploads had been sent when bob was done.
    """
    finished: list[Outcome] = []
    sent = 0  # uploads alice's workers have finished (progress is called once each)
    sent_lock = threading.Lock()
    bob_done_at: list[int] = []

    def progress(_n: int) -> None:
        nonlocal sent
        with sent_lock:
            sent += 1

    def on_outcome(out: Outcome) -> None:
        finished.append(out)
        if len(finished) == 1:
            # Alice's batch is under way (her stale check is behind her, her workers keep
            # sending): bob's whole pass, his commit included, lands now.
            assert bob.sync().commit_error is None
            with sent_lock:
                bob_done_at.append(sent)

    report = alice.engine.execute(
        [(a, None) for a in plan], progress=progress, on_outcome=on_outcome
    )
    assert len(bob_done_at) == 1
    return report, bob_done_at[0]


def conflict_copies(files: dict[str, bytes], path: str) -> list[bytes]:
    """Contents of ``dir/name.conflict-<user>-<stamp>[-n].ext`` copies of ``path``."""
    stem, _, ext = path.rpartition(".")
    return [
        data
        for rel, data in files.items()
        if rel.startswith(f"{stem}.conflict-") and rel.endswith(f".{ext}")
    ]


def test_batch_racing_a_colleagues_commits_loses_no_version(
    s3_server: S3Server, s3_client: S3Client, s3_bucket: str, tmp_path: Path
) -> None:
    rng = random.Random(6)
    shared: Shared = s3_shared(s3_server, s3_client, s3_bucket, unique_name("race"), tmp_path)
    try:
        alice = shared.site("alice", workers=4)
        bob = shared.site("bob", workers=4)
        _run(shared, alice, bob, rng)
    finally:
        shared.close()


def _run(shared: Shared, alice: Side, bob: Side, rng: random.Random) -> None:
    # Round 0: a settled folder for round 1 to edit.
    for i in range(NEW_PER_ROUND):
        alice.write(f"r0/f{i:04d}.txt", content("alice", 0, f"r0/f{i:04d}.txt"))
    assert alice.sync().ok
    settle(alice, bob)

    must_survive: dict[str, set[str]] = {}  # contested path -> MD5s written to it
    stats = {"files": 0, "contested": 0, "versions": 0, "bob_won": 0, "conflicts": 0}
    mid_batch = 0
    editable = [f"r0/f{i:04d}.txt" for i in range(NEW_PER_ROUND)]
    for rnd in range(1, ROUNDS + 1):
        new = [f"r{rnd}/f{i:04d}.txt" for i in range(NEW_PER_ROUND)]
        edits = rng.sample(editable, min(EDITS_PER_ROUND, len(editable)))
        batch = new + edits
        contested = rng.sample(batch, CONTESTED)
        for path in batch:
            alice.write(path, content("alice", rnd, path))
        for path in contested:
            bob.write(path, content("bob", rnd, path))
            must_survive[path] = {md5(content("alice", rnd, path)), md5(content("bob", rnd, path))}

        plan = alice.plan()
        assert {a.path for a in plan} == set(batch)
        report, bob_done_at = race_batch(alice, bob, plan)
        assert report.commit_error is None
        assert len(report.outcomes) == len(batch)
        refused = {o.action.path for o in report.outcomes if o.stale}
        assert refused <= set(contested), refused - set(contested)
        if bob_done_at < sum(1 for o in report.outcomes if o.ok):
            mid_batch += 1  # bob committed while alice still had uploads to send
        settle(alice, bob)

        remote = shared.dump()
        a_files, b_files = alice.files(), bob.files()
        everywhere = {md5(d) for d in remote.values()} | alice.everything() | bob.everything()
        for path, versions in must_survive.items():
            lost = versions - everywhere
            assert not lost, f"round {rnd}: a version of {path} is gone"
            stats["versions"] += len(versions)
        for path in contested:
            bob_md5 = md5(content("bob", rnd, path))
            at_path = md5(remote[path])
            copies = {md5(d) for d in conflict_copies(remote, path)}
            assert at_path == md5(a_files[path]) == md5(b_files[path])
            if at_path == bob_md5:
                stats["bob_won"] += 1
                # alice's version was refused: it lives on as her conflict copy
                assert md5(content("alice", rnd, path)) in copies, path
            else:
                stats["conflicts"] += 1
                # alice got there first: bob's version must sit beside it as a conflict
                assert at_path == md5(content("alice", rnd, path)), path
                assert bob_md5 in copies, f"round {rnd}: {path} was silently overwritten"
        stats["files"] += len(batch)
        stats["contested"] += len(contested)
        editable = [p for p in new if p not in contested]

    print(
        f"race: rounds={ROUNDS} files={stats['files']} contested={stats['contested']} "
        f"versions_checked={stats['versions']} bob_won={stats['bob_won']} "
        f"conflicts={stats['conflicts']} bob_committed_mid_batch={mid_batch}/{ROUNDS}"
    )
    assert stats["contested"] == CONTESTED * ROUNDS
