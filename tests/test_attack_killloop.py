"""Attack: two real daemons syncing both ways are ``kill -9``ed again and again mid-work.

Alice and Bob each own half of the files (so no edit ever conflicts); each round both of
them change, add and delete some of their own, and one daemon (chosen by a seeded RNG) is
killed while its status shows approved actions in flight, at a random point of the batch's
bytes. After the loop both daemons run to completion, and every byte anywhere (both data
folders, both trashes, the remote objects and the remote trash) must be one of the versions
the test wrote, every path must end at its latest version on both sides and on the remote,
and every deleted version that had reached the remote must still be recoverable.

``S3SYNCD_ATTACK_SCALE=10 python -m pytest tests/test_attack_killloop.py -s`` is the large run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import test_daemon_e2e as e2e
from folders import md5, tree
from polling import wait_until
from test_daemon_e2e import Node, make_node, start, stop

from s3syncd import api
from s3syncd.config import load_config
from s3syncd.daemon import Daemon
from s3syncd.engine import Engine
from s3syncd.model import ActionKind
from s3syncd.remote.base import ProgressCallback
from s3syncd.remote.localdir import LocalDirRemote
from s3syncd.state import StateDir

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from s3server import S3Server

pytestmark = [pytest.mark.s3, pytest.mark.daemon]
# The daemon tests' fixtures: a short private runtime dir, the server's keys in the env.
runtime_dir = e2e.runtime_dir
env = e2e.env

SCALE = int(os.environ.get("S3SYNCD_ATTACK_SCALE", "1"))
ROUNDS = 20 * SCALE
# Read at import: the env fixture clears S3SYNCD_* before the test body runs.
SEED = int(os.environ["S3SYNCD_ATTACK_SEED"]) if os.environ.get("S3SYNCD_ATTACK_SEED") else None
FILES_PER_SIDE = 150 * SCALE
PREFIX = "killloop"
POLICY = (
    '[policy]\nauto_approve = ["upload", "download", "delete_remote", "delete_local"]\n'
    "max_delete_percent = 100\n"
)
# Fast enough for CI, yet batches last long enough to be caught mid-flight.
MIN_SIZE, MAX_SIZE = 16_000, 120_000
CATCH_TIMEOUT = 90.0


class Versions:
    """Every version the test wrote, per path, and which one is the latest."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.all: dict[str, list[str]] = {}  # path -> every MD5 ever written
        self.latest: dict[str, str] = {}  # live paths only
        self.deleted: set[str] = set()
        # Deleted versions that had reached the remote: they must stay recoverable.
        self.must_survive: dict[str, str] = {}
        self.by_md5: dict[str, str] = {}  # MD5 -> path

    def write(self, root: Path, rel: str) -> None:
        body = f"{rel} v{len(self.all.get(rel, []))}\n".encode() + self.rng.randbytes(
            self.rng.randint(MIN_SIZE, MAX_SIZE)
        )
        digest = hashlib.md5(body).hexdigest()
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        self.all.setdefault(rel, []).append(digest)
        self.latest[rel] = digest
        self.by_md5[digest] = rel

    def delete(self, root: Path, rel: str, remote_md5: str | None) -> None:
        (root / rel).unlink()
        if remote_md5 == self.latest[rel]:
            self.must_survive[rel] = remote_md5
        del self.latest[rel]
        self.deleted.add(rel)


def remote_md5(client: S3Client, bucket: str, rel: str) -> str | None:
    try:
        body = client.get_object(Bucket=bucket, Key=f"{PREFIX}/{rel}")["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    return hashlib.md5(body).hexdigest()


def in_flight(node: Node, fraction: float) -> dict[str, Any] | None:
    """The status, if approved actions of a running batch have no outcome yet and at least
    ``fraction`` of the batch's bytes went by."""
    code, out = node.ctl("status", "--json")
    if code != 0:
        return None
    st: dict[str, Any] = json.loads(out)
    xfer = st["transfers"]
    if not xfer["active"]:
        return None
    if xfer["bytes_done"] < fraction * xfer["bytes_total"]:
        return None
    return st


def interrupted_on_disk(node: Node) -> list[str]:
    """What a killed daemon left unfinished: approved actions whose batch never ended
    (the queue is saved 'running' when a batch starts and again when it ends), partial
    downloads, uncommitted journal rows."""
    state = node.data / ".S3"
    evidence = []
    queue = json.loads((state / "sync-queue.json").read_text())
    if any(e["state"] == "running" for e in queue["entries"]):
        evidence.append("running actions in the queue")
    if list((state / "tmp").glob("*.part")):
        evidence.append(".part downloads")
    if StateDir(node.data).load_journal():
        evidence.append("journal rows")
    return evidence


def log_tail(node: Node, lines: int = 40) -> str:
    assert node.log is not None
    return "\n".join(node.log.read_text(errors="replace").splitlines()[-lines:])


def kill(node: Node) -> None:
    assert node.proc is not None
    node.proc.kill()  # SIGKILL: no cleanup at all
    node.proc.wait(timeout=30)
    node.proc = None


@pytest.fixture
def pair(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str, env: dict[str, str]
) -> Iterator[tuple[Node, Node]]:
    a = make_node(tmp_path, "alice", s3_server, s3_bucket, PREFIX, POLICY)
    b = make_node(tmp_path, "bob", s3_server, s3_bucket, PREFIX, POLICY)
    try:
        yield a, b
    finally:
        for n in (a, b):
            if n.proc is not None:
                n.proc.kill()
                n.proc.wait(timeout=30)


def mutate(v: Versions, node: Node, owned: list[str], client: S3Client, bucket: str) -> None:
    """Change, add and delete a few of ``node``'s own files."""
    rng = v.rng
    live = [p for p in owned if p in v.latest]
    for rel in rng.sample(live, min(len(live), rng.randint(8, 20))):
        v.write(node.data, rel)
    for _ in range(rng.randint(2, 6)):
        rel = f"{node.name}/new{len(owned):04}.bin"
        owned.append(rel)
        v.write(node.data, rel)
    live = [p for p in owned if p in v.latest]
    for rel in rng.sample(live, rng.randint(0, 2)):
        v.delete(node.data, rel, remote_md5(client, bucket, rel))


def test_kill_9_loop_loses_nothing_and_converges(
    pair: tuple[Node, Node],
    env: dict[str, str],
    s3_client: S3Client,
    s3_bucket: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = pair
    seed = SEED if SEED is not None else time.time_ns() % 1_000_000
    rng = random.Random(seed)
    with capsys.disabled():
        print(f"\nkill loop: seed {seed} (S3SYNCD_ATTACK_SEED={seed} to replay)")
    v = Versions(rng)
    owned: dict[str, list[str]] = {"alice": [], "bob": []}
    for node in (a, b):
        for i in range(FILES_PER_SIDE):
            rel = f"{node.name}/d{i % 7}/f{i:04}.bin"
            owned[node.name].append(rel)
            v.write(node.data, rel)
    start(a, env)
    start(b, env)
    kills = extra = 0
    evidence_seen: dict[str, int] = {}
    for rnd in range(ROUNDS):
        if rnd:
            for node in (a, b):
                mutate(v, node, owned[node.name], s3_client, s3_bucket)
        victim = rng.choice((a, b))
        fraction = rng.uniform(0.0, 0.9)
        deadline = time.monotonic() + CATCH_TIMEOUT
        last_work = time.monotonic()
        st = None
        while st is None:
            st = in_flight(victim, fraction)
            if st is not None:
                break
            assert time.monotonic() < deadline, f"round {rnd}: {victim.name} never busy"
            now = victim.status()
            if now["transfers"]["active"] or now["approved"]:
                last_work = time.monotonic()
            elif time.monotonic() - last_work > 3.0:
                # The work ended before we caught it: give the victim more to do.
                mutate(v, victim, owned[victim.name], s3_client, s3_bucket)
                last_work = time.monotonic()
                fraction = 0.0
                extra += 1
        kill(victim)
        kills += 1
        assert st["transfers"]["active"], st  # an action was in flight at the kill
        left = interrupted_on_disk(victim)
        for item in left:
            evidence_seen[item] = evidence_seen.get(item, 0) + 1
        assert left, f"round {rnd}: {victim.name} was killed but left no unfinished work"
        start(victim, env)  # over the stale socket, with the interrupted actions approved

    # Let both run to completion.
    why: list[str] = []

    def settled() -> bool:
        why.clear()
        for node in (a, b):
            code, out = node.ctl("--timeout", "120", "sync")
            assert code == 0, f"{node.name}: {out}\n{log_tail(node)}"
        for node in (a, b):
            st = node.status()
            if st["transfers"]["active"] or st["approved"] or st["pending"] or st["failed"]:
                why.append(f"{node.name}: {[(p['kind'], p['path']) for p in node.pending()]}")
            wrong = sorted(set(tree(node.data).items()) ^ set(v.latest.items()))
            if wrong:
                why.append(f"{node.name} differs at {wrong[:6]}")
        return not why

    try:
        wait_until(settled, timeout=180, what="both daemons to converge")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {why}") from None
    check_everything(v, a, b, s3_client, s3_bucket)
    for node in (a, b):
        assert stop(node) == 0
        state = node.data / ".S3"
        assert list((state / "tmp").iterdir()) == [], f"{node.name}: .S3/tmp not empty"
        assert StateDir(node.data).load_journal() == [], f"{node.name}: journal not empty"
    versions = sum(len(x) for x in v.all.values())
    with capsys.disabled():
        print(
            f"kill loop: {ROUNDS} rounds, {kills} kills with work in flight "
            f"(evidence after kill: {evidence_seen}; {extra} extra batches to catch one), "
            f"{len(v.all)} paths, "
            f"{versions} versions written, {len(v.latest)} live files checked on 2 sides "
            f"and the remote, {len(v.deleted)} deleted ({len(v.must_survive)} recoverable "
            "checked)"
        )


def check_everything(v: Versions, a: Node, b: Node, client: S3Client, bucket: str) -> None:
    # Both sides hold exactly the latest versions (checked by settled()); now the rest.
    recoverable: set[str] = set()
    for node in (a, b):
        for p in node.data.rglob("*"):
            if not p.is_file():
                continue
            rel = p.relative_to(node.data).as_posix()
            if rel.startswith(".S3/") and not rel.startswith(".S3/trash/"):
                continue
            digest = md5(p)
            assert digest in v.by_md5, f"{node.name}: {rel} is not any version written (torn?)"
            if rel.startswith(".S3/trash/"):
                stem = v.by_md5[digest].rsplit(".", 1)[0]
                assert stem in rel, f"{rel} holds {v.by_md5[digest]}"
                recoverable.add(digest)
            else:
                assert v.latest.get(rel) == digest
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"{PREFIX}/"
    ):
        keys += [o["Key"].removeprefix(f"{PREFIX}/") for o in page.get("Contents", [])]
    data = {}
    for key in keys:
        if key.startswith(".S3/") and not key.startswith(".S3/deleted/"):
            continue
        body = client.get_object(Bucket=bucket, Key=f"{PREFIX}/{key}")["Body"].read()
        digest = hashlib.md5(body).hexdigest()
        assert digest in v.by_md5, f"remote {key} is not any version written (torn?)"
        if key.startswith(".S3/deleted/"):
            stem = v.by_md5[digest].rsplit(".", 1)[0]  # trash names carry a dated tag
            assert stem in key, f"remote trash {key} holds {v.by_md5[digest]}"
            recoverable.add(digest)
        else:
            data[key] = digest
    assert data == v.latest, "the remote objects are not the latest versions"
    raw = client.get_object(Bucket=bucket, Key=f"{PREFIX}/.S3/versions.csv")["Body"].read()
    rows = {r["File"]: r["Checksum"] for r in csv.DictReader(io.StringIO(raw.decode()))}
    assert rows == v.latest, "the manifest does not describe the latest versions"
    lost = {p: m for p, m in v.must_survive.items() if m not in recoverable}
    assert not lost, f"deleted versions that reached the remote are gone: {lost}"


def test_a_file_changed_between_plan_and_upload_does_not_livelock_the_worker(
    tmp_path: Path,
) -> None:
    """Found by the kill loop: a file rewritten after the plan and before its auto-approved
    upload made the upload stale, the re-plan (from the unchanged local table) proposed the
    same upload, and the worker re-ran it forever: no poll, no watcher batch, 100% CPU."""
    (tmp_path / "share").mkdir()
    (tmp_path / "Data").mkdir()
    cfg_file = tmp_path / "lab.toml"
    cfg_file.write_text(
        'platform = "Local"\nuser_name = "lab"\n[local]\nremote_path = "share"\n'
        '[policy]\nauto_approve = ["upload"]\n'
    )
    d = Daemon(load_config(cfg_file, environ={}))
    d.engine.prepare()
    (tmp_path / "Data" / "f.txt").write_bytes(b"planned")
    d.engine.refresh_remote(listing=True, force=True)
    d.engine.scan_local()
    d._replan()
    assert [e.action.kind.value for e in d.queue.entries.values()] == ["upload"]
    (tmp_path / "Data" / "f.txt").write_bytes(b"rewritten before the upload ran")
    worker = threading.Thread(target=d._execute_approved, name="test-execute")
    worker.start()
    worker.join(timeout=20)
    spinning = worker.is_alive()
    d.stopping.set()  # ends the loop if it spins
    worker.join(timeout=30)
    d.engine.remote.close()
    assert not spinning, "the worker kept re-running the same stale upload"
    assert (tmp_path / "share" / "f.txt").read_bytes() == b"rewritten before the upload ran"


def test_a_download_is_agreed_on_disk_before_its_batch_ends(tmp_path: Path) -> None:
    """Found by the kill loop: the base was saved only when the whole batch had ended, so a
    kill -9 after some downloads had landed left them unagreed; when the colleague changed
    those files again, every one of them came back as a false conflict."""
    release = threading.Event()
    blocked = threading.Event()

    class SlowRemote(LocalDirRemote):
        def download(self, key: str, dest: Path, progress: ProgressCallback | None = None) -> None:
            if key == "slow.txt":
                blocked.set()
                assert release.wait(30)
            super().download(key, dest, progress)

    share = tmp_path / "share"
    share.mkdir()
    for name in ("colleague", "me"):
        (tmp_path / name).mkdir()
        (tmp_path / f"{name}.toml").write_text(
            f'platform = "Local"\nuser_name = "{name}"\ndatafolder = "{name}"\n'
            '[local]\nremote_path = "share"\n'
        )
    theirs = load_config(tmp_path / "colleague.toml", environ={})
    (tmp_path / "colleague" / "fast.txt").write_bytes(b"fast v1")
    (tmp_path / "colleague" / "slow.txt").write_bytes(b"slow v1")
    summary = api.run_once(
        theirs, auto=frozenset({ActionKind.UPLOAD}), ask=None, say=lambda _t: None
    )
    assert summary.ok and len(summary.done) == 2

    mine = load_config(tmp_path / "me.toml", environ={})
    eng = Engine(mine, SlowRemote(share), "me")
    eng.prepare()
    eng.refresh_remote(listing=True, force=True)
    eng.scan_local()
    plan = eng.plan()
    assert sorted((a.kind, a.path) for a in plan.actions) == [
        (ActionKind.DOWNLOAD, "fast.txt"),
        (ActionKind.DOWNLOAD, "slow.txt"),
    ]
    worker = threading.Thread(
        # slow.txt first: its outcome comes first in order, fast.txt's must not wait for it.
        target=eng.execute,
        args=([(a, None) for a in sorted(plan.actions, key=lambda a: a.path != "slow.txt")],),
        name="test-execute",
    )
    worker.start()
    try:
        assert blocked.wait(30)
        wait_until(lambda: (tmp_path / "me" / "fast.txt").exists(), what="fast.txt to land")
        # What a daemon restarted now (after a kill -9) would take for agreed:
        after_crash = StateDir(mine.datafolder).load_base()
        assert after_crash.get("fast.txt") == hashlib.md5(b"fast v1").hexdigest()
    finally:
        release.set()
        worker.join(timeout=30)
        eng.remote.close()


def test_an_upload_is_journalled_before_its_batch_ends_and_replayed_as_agreed(
    tmp_path: Path,
) -> None:
    """Found by the kill loop: an upload's manifest row was journalled only when the whole
    batch had ended, and a replayed journal did not update the base. A kill -9 after the
    PUT left an object the manifest did not describe; the user's next edit of that file
    then met it as a colleague's change: a false conflict with their own upload."""
    release = threading.Event()
    blocked = threading.Event()

    class SlowRemote(LocalDirRemote):
        def upload(
            self,
            src: Path,
            key: str,
            md5: str,
            progress: ProgressCallback | None = None,
            **conditions: Any,
        ) -> Any:
            if key == "slow.txt":
                blocked.set()
                assert release.wait(30)
            return super().upload(src, key, md5, progress, **conditions)

    share = tmp_path / "share"
    share.mkdir()
    (tmp_path / "me").mkdir()
    (tmp_path / "me.toml").write_text(
        'platform = "Local"\nuser_name = "me"\ndatafolder = "me"\n[local]\nremote_path = "share"\n'
    )
    mine = load_config(tmp_path / "me.toml", environ={})
    (tmp_path / "me" / "fast.txt").write_bytes(b"fast v1")
    (tmp_path / "me" / "slow.txt").write_bytes(b"slow v1")
    eng = Engine(mine, SlowRemote(share), "me")
    eng.prepare()
    eng.refresh_remote(listing=True, force=True)
    eng.scan_local()
    actions = sorted(eng.plan().actions, key=lambda a: a.path != "slow.txt")
    assert [(a.kind, a.path) for a in actions] == [
        (ActionKind.UPLOAD, "slow.txt"),
        (ActionKind.UPLOAD, "fast.txt"),
    ]
    worker = threading.Thread(
        target=eng.execute, args=([(a, None) for a in actions],), name="test-execute"
    )
    worker.start()
    try:
        assert blocked.wait(30)
        wait_until(lambda: (share / "fast.txt").exists(), what="fast.txt to be uploaded")
        # A daemon restarted now (after a kill -9) replays what the journal holds:
        restarted = Engine(mine, LocalDirRemote(share), "me")
        wait_until(
            lambda: [c.path for c in restarted.state.load_journal()] == ["fast.txt"],
            what="fast.txt's row in the journal",
        )
        restarted.prepare()
        assert restarted.base.get("fast.txt") == hashlib.md5(b"fast v1").hexdigest()
        restarted.refresh_remote(listing=True, force=True)
        assert restarted.manifest is not None and "fast.txt" in restarted.manifest.rows
        restarted.remote.close()
    finally:
        release.set()
        worker.join(timeout=30)
        eng.remote.close()


def test_a_download_cut_off_between_rename_and_record_is_agreed_after_restart(
    tmp_path: Path,
) -> None:
    """Found by the kill loop: a kill -9 right after a download's rename, before its
    agreement was recorded, left the new file unagreed; when the colleague edited it again
    the restarted daemon proposed a conflict with a version it had itself downloaded."""
    share = tmp_path / "share"
    share.mkdir()
    for name in ("colleague", "me"):
        (tmp_path / name).mkdir()
        (tmp_path / f"{name}.toml").write_text(
            f'platform = "Local"\nuser_name = "{name}"\ndatafolder = "{name}"\n'
            '[local]\nremote_path = "share"\n[policy]\nauto_approve = ["download"]\n'
        )
    theirs = load_config(tmp_path / "colleague.toml", environ={})
    up = frozenset({ActionKind.UPLOAD})
    (tmp_path / "colleague" / "f.txt").write_bytes(b"v0")
    assert api.run_once(theirs, auto=up, ask=None, say=lambda _t: None).ok
    mine = load_config(tmp_path / "me.toml", environ={})
    assert api.run_once(mine, auto={ActionKind.DOWNLOAD}, ask=None, say=lambda _t: None).ok
    (tmp_path / "colleague" / "f.txt").write_bytes(b"v1, longer")
    assert api.run_once(theirs, auto=up, ask=None, say=lambda _t: None).ok

    d = Daemon(mine)
    d.engine.prepare()
    d.queue.load()
    d.engine.refresh_remote(listing=True, force=True)
    d._rescan()
    (entry,) = d.queue.entries.values()
    assert entry.action.kind is ActionKind.DOWNLOAD
    # The kill: the batch took the download and renamed the file into place, then died.
    d.queue.take_approved()
    (tmp_path / "me" / "f.txt").write_bytes(b"v1, longer")
    d.engine.remote.close()
    (tmp_path / "colleague" / "f.txt").write_bytes(b"v2, longer still")
    assert api.run_once(theirs, auto=up, ask=None, say=lambda _t: None).ok

    restarted = Daemon(mine)
    restarted.engine.prepare()
    restarted.queue.load()
    restarted.engine.refresh_remote(listing=True, force=True)
    restarted._rescan()
    kinds = [e.action.kind for e in restarted.queue.entries.values()]
    restarted.engine.remote.close()
    assert kinds == [ActionKind.DOWNLOAD], kinds
