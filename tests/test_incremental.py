"""Issue 7: state in one SQLite store, and work in O(change) — a watcher batch, a remote poll
and the plan after them touch only the paths that changed.

Costs are asserted as counts that could only fail if the work grew with the folder (rows
written, requests sent, LIST calls, paths planned), never as times.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import unique_name
from sites import Shared, Side, local_shared, md5, s3_shared

from s3syncd.model import ActionKind, LocalFile, Row
from s3syncd.state import RowChange, StateDir
from s3syncd.store import StateStore

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from s3server import S3Server

FILES = 40


@pytest.fixture(params=["Local", "S3"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Shared]:
    if request.param == "Local":
        world = local_shared(tmp_path)
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        client: S3Client = request.getfixturevalue("s3_client")
        bucket: str = request.getfixturevalue("s3_bucket")
        world = s3_shared(server, client, bucket, unique_name("p"), tmp_path)
    try:
        yield world
    finally:
        world.close()


def synced_pair(shared: Shared) -> tuple[Side, Side]:
    alice, bob = shared.site("alice"), shared.site("bob")
    for i in range(FILES):
        alice.write(f"d/f{i:02}.txt", f"v1 {i}".encode())
    assert alice.sync().ok
    assert bob.sync().ok
    assert bob.read("d/f07.txt") == b"v1 7"
    return alice, bob


class ListCounter:
    """Counts full listings an engine asks its remote for (our own method, not boto3)."""

    def __init__(self, side: Side) -> None:
        self.calls = 0
        remote: Any = side.engine.remote
        real = remote.list

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return real(*args, **kwargs)

        remote.list = counting


def test_a_colleagues_one_file_commit_is_looked_at_alone(shared: Shared) -> None:
    alice, bob = synced_pair(shared)
    eng = bob.engine
    eng.take_dirty()  # bob is idle: nothing left to plan
    lists = ListCounter(bob)
    alice.write("d/f07.txt", b"v2 from alice")
    assert alice.sync().ok

    before = eng.remote.request_count() or 0
    assert eng.refresh_remote(listing=True)
    requests = (eng.remote.request_count() or 0) - before  # counted on S3 only
    scope = eng.take_dirty()
    plan = eng.plan(scope)

    assert lists.calls == 0, "a changed manifest must not re-list the prefix"
    # both tables (GET versions.csv, GET deletedS3.csv) and one HEAD of the changed path
    assert requests <= 3, f"{requests} requests for a one-file commit"
    assert scope == {"d/f07.txt"}
    assert [(a.kind, a.path) for a in plan.actions] == [(ActionKind.DOWNLOAD, "d/f07.txt")]


def test_a_remote_delete_seen_by_a_poll_is_planned_from_the_head(shared: Shared) -> None:
    alice, bob = synced_pair(shared)
    bob.engine.take_dirty()
    (alice.folder / "d/f03.txt").unlink()
    assert alice.sync().ok
    lists = ListCounter(bob)

    assert bob.engine.refresh_remote(listing=True)
    plan = bob.engine.plan(bob.engine.take_dirty())

    assert lists.calls == 0
    assert [(a.kind, a.path) for a in plan.actions] == [(ActionKind.DELETE_LOCAL, "d/f03.txt")]


def test_one_local_edit_changes_one_index_row_and_no_legacy_table(shared: Shared) -> None:
    alice, _bob = synced_pair(shared)
    eng = alice.engine
    eng.coalesce_tables = True
    eng.take_dirty()
    tables = [eng.state.versions_local, eng.state.deleted_local]
    stamps = [p.stat().st_mtime_ns for p in tables]
    db = sqlite3.connect(eng.state.file("sync-state.db"))
    try:
        alice.write("d/f11.txt", b"edited")
        changed = eng.update_local({"d/f11.txt"})
        scope = eng.take_dirty()
        stored = db.execute("SELECT md5 FROM idx WHERE path='d/f11.txt'").fetchone()
    finally:
        db.close()

    assert changed == {"d/f11.txt"} and scope == {"d/f11.txt"}
    assert stored == (md5(b"edited"),), "the store holds the edit as soon as it is seen"
    assert [p.stat().st_mtime_ns for p in tables] == stamps, "legacy tables rewritten per edit"
    plan = eng.plan(scope)
    assert [(a.kind, a.path) for a in plan.actions] == [(ActionKind.UPLOAD, "d/f11.txt")]
    # ...and the original package's view catches up when the daemon flushes.
    assert eng.flush_tables()
    assert "d/f11.txt," in eng.state.versions_local.read_text()
    assert md5(b"edited") in eng.state.versions_local.read_text()


def test_folder_events_still_find_files_below_and_files_gone(tmp_path: Path) -> None:
    world = local_shared(tmp_path)
    try:
        alice = world.site("alice")
        alice.write("top/a.txt", b"a")
        alice.write("top/sub/b.txt", b"b")
        assert alice.sync().ok
        eng = alice.engine
        eng.take_dirty()
        (alice.folder / "top/sub/b.txt").unlink()
        (alice.folder / "top/sub").rmdir()
        alice.write("top/c.txt", b"c")
        # The watcher may report only the folder.
        assert eng.update_local({"top"}) == {"top/sub/b.txt", "top/c.txt"}
        assert set(eng.index) == {"top/a.txt", "top/c.txt"}
        assert eng.state.load_index().keys() == {"top/a.txt", "top/c.txt"}
    finally:
        world.close()


def test_json_state_of_an_earlier_version_is_moved_into_the_store(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.ensure()
    m1, m2, m3 = "1" * 32, "2" * 32, "3" * 32
    state.write_json(
        "sync-base.json", {"files": {"a": m1, "b": m2}, "etags": {"a": "ea", "b": "eb"}, "gen": 4}
    )
    # Agreements logged after that snapshot (gen 4), a stale line (gen 3) and a torn one.
    state.file("sync-base.log").write_text(
        json.dumps({"g": 4, "p": "b", "m": m3}) + "\n"
        + json.dumps({"g": 3, "p": "a", "m": None}) + "\n"
        + '{"g": 4, "p": "c'
    )  # fmt: skip
    state.write_json("sync-index.json", {"files": {"a": [1, 2, m1]}})
    row = Row("up.txt", "me", "2026-01-01 00:00:00", m1)
    state.write_json("sync-journal.json", {"changes": [RowChange("up.txt", row).to_json()]})

    fresh = StateDir(tmp_path)
    assert fresh.load_base() == {"a": m1, "b": m3}
    assert fresh.load_base_etags() == {"a": "ea"}, "a logged agreement's ETag is unknown"
    assert fresh.load_index() == {"a": LocalFile("a", 1, 2, m1)}
    assert [c.row for c in fresh.load_journal()] == [row]
    assert fresh.has_base()
    left = sorted(p.name for p in state.root.iterdir() if p.name.startswith("sync-"))
    assert left == ["sync-state.db", "sync-state.db-shm", "sync-state.db-wal"]


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from s3syncd.store import StateStore

    store = StateStore(Path(sys.argv[1]))
    gen = 0
    while True:
        gen += 1
        # One transaction rewrites every path with this generation's MD5.
        store.update_base({f"f{i:04}": (f"{gen:032x}", None) for i in range(500)})
        print(gen, flush=True)
    """
)


def test_kill_9_mid_transaction_leaves_one_whole_generation(tmp_path: Path) -> None:
    db = tmp_path / "sync-state.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    try:
        seen = 0
        deadline = time.monotonic() + 60
        while seen < 5 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen = int(line)
        assert seen >= 5, "the writer never got going"
        # The writer loops without pause: killed now, a transaction is under way.
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    store = StateStore(db)
    try:
        base, _etags = store.load_base()
    finally:
        store.close()
    generations = {int(m, 16) for m in base.values()}
    assert len(base) == 500
    assert len(generations) == 1, f"a torn transaction: generations {sorted(generations)}"
    assert generations.pop() >= seen
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()
