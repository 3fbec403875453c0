"""Commits must not undo a colleague's work (issue 6, defects 3-5).

- A commit that merged other users' rows leaves the engine with a listing older than its
  manifest; planning on that mix "corrects" their fresh rows, re-adds rows of files they
  deleted and tombstones files they just added (defect 3).
- The journal of uncommitted rows must survive the next batch, and a replay must not put
  our row over a colleague's newer one (defect 4).
- Rows of other clients are written back byte for byte, however odd (defect 5).

Engines run against the Local platform (a directory as the remote), as in test_engine.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import unique_name
from folders import put, tree
from s3server import S3Server
from test_engine import Site, World, md5

from s3syncd import api, manifest, tables
from s3syncd.config import Config, build_config
from s3syncd.engine import Engine
from s3syncd.errors import RemoteError
from s3syncd.model import APPROVABLE_KINDS, Action, ActionKind, RemoteObject, Resolution, Row
from s3syncd.remote.base import ProgressCallback
from s3syncd.remote.localdir import LocalDirRemote
from s3syncd.remote.s3 import S3Remote
from s3syncd.state import RowChange

ALL_KINDS = frozenset(APPROVABLE_KINDS)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    leaked = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not leaked, f"threads left running: {leaked}"


@pytest.fixture
def world(tmp_path: Path) -> World:
    root = tmp_path / "remote"
    root.mkdir()
    return World(tmp_path, root)


class HookedRemote(LocalDirRemote):
    """Runs ``hook`` (once) just before the upload of ``key``: a colleague acting mid-batch."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.key = ""
        self.hook: Callable[[], None] | None = None

    def upload(
        self,
        src: Path,
        key: str,
        md5: str,
        progress: ProgressCallback | None = None,
        **conditions: Any,
    ) -> RemoteObject:
        hook, self.hook = (self.hook, None) if key == self.key else (None, self.hook)
        if hook is not None:
            hook()
        return super().upload(src, key, md5, progress, **conditions)


class UnreachableRemote(LocalDirRemote):
    """Reads work; every manifest write fails while ``down`` (the network went away)."""

    down = False

    def write_blob(
        self,
        key: str,
        data: bytes,
        if_match: str | None = None,
        create_only: bool = False,
    ) -> str:
        if self.down:
            raise RemoteError(f"write {key}: the remote is unreachable")
        return super().write_blob(key, data, if_match=if_match, create_only=create_only)


# --- defect 3: stale listing after a merging commit -------------------------------------


V0, V2, G, H = b"f v0\n", b"f v2 by bob\n", b"g, soon deleted\n", b"h, brand new\n"


def merging_commit(world: World) -> tuple[Site, Site, list[Action]]:
    """Alice uploads x.txt; during her batch Bob edits f.txt, deletes g.txt and adds h.txt
    and commits. Alice's commit merges Bob's rows. Returns her next plan, made the way the
    daemon makes it after a batch (no new poll in between)."""
    hooked = HookedRemote(world.remote_root)
    alice = world.site("alice", hooked)
    bob = world.site("bob")
    alice.write("f.txt", V0)
    alice.write("g.txt", G)
    alice.write("keep.txt", b"k\n")
    assert alice.sync().ok
    assert bob.sync().ok

    def bob_commits() -> None:
        bob.write("f.txt", V2)
        bob.path("g.txt").unlink()
        bob.write("h.txt", H)
        summary = bob.sync()
        assert summary.ok, summary.failed
        rows = world.rows()
        assert rows["f.txt"].checksum == md5(V2) and "g.txt" not in rows and "h.txt" in rows

    alice.write("x.txt", b"alice's new file\n")
    actions = alice.plan()
    assert [(a.kind, a.path) for a in actions] == [(ActionKind.UPLOAD, "x.txt")]
    hooked.key, hooked.hook = "x.txt", bob_commits
    report = alice.execute(actions)
    assert hooked.hook is None  # Bob really committed during the batch
    assert report.commit_error is None and all(o.ok for o in report.outcomes)
    assert sorted(world.rows()) == ["f.txt", "h.txt", "keep.txt", "x.txt"]
    plan = alice.engine.plan()
    alice.engine.apply_agreement(plan)
    return alice, bob, list(plan.actions)


def run_records(site: Site, actions: list[Action]) -> None:
    """What the daemon does with manifest-only repairs: they are auto-approved."""
    records = [a for a in actions if a.kind is ActionKind.RECORD]
    if records:
        site.execute(records)


def test_merging_commit_does_not_correct_a_fresh_row_back(world: World) -> None:
    alice, _bob, actions = merging_commit(world)
    by_path = {a.path: a for a in actions}
    assert "f.txt" in by_path, actions
    assert by_path["f.txt"].kind is ActionKind.DOWNLOAD, by_path["f.txt"]
    run_records(alice, actions)
    assert world.rows()["f.txt"].checksum == md5(V2)
    assert world.rows()["f.txt"].edited_by == "bob"


def test_merging_commit_does_not_readd_a_deleted_files_row(world: World) -> None:
    alice, _bob, actions = merging_commit(world)
    by_path = {a.path: a for a in actions}
    assert by_path["g.txt"].kind is ActionKind.DELETE_LOCAL, by_path["g.txt"]
    run_records(alice, actions)
    assert "g.txt" not in world.rows()
    assert not world.obj("g.txt").exists()


def test_merging_commit_does_not_tombstone_a_brand_new_file(world: World) -> None:
    alice, _bob, actions = merging_commit(world)
    by_path = {a.path: a for a in actions}
    assert by_path["h.txt"].kind is ActionKind.DOWNLOAD, by_path["h.txt"]
    run_records(alice, actions)
    assert world.rows()["h.txt"].checksum == md5(H)
    assert "h.txt" not in {t.path for t in world.tombstones()}


def test_merging_commit_then_a_full_pass_converges(world: World) -> None:
    alice, bob, _actions = merging_commit(world)
    assert alice.sync().ok
    assert bob.sync().ok
    assert alice.read("f.txt") == V2 and alice.read("h.txt") == H
    assert not alice.path("g.txt").exists()
    assert bob.read("x.txt") == b"alice's new file\n"
    rows = world.rows()
    assert sorted(rows) == ["f.txt", "h.txt", "keep.txt", "x.txt"]
    assert rows["f.txt"].checksum == md5(V2)


class HookedS3Remote(S3Remote):
    """S3 version of HookedRemote: ``hook`` runs once, before the upload of ``key``."""

    key = ""
    hook: Callable[[], None] | None = None

    def upload(
        self,
        src: Path,
        key: str,
        md5: str,
        progress: ProgressCallback | None = None,
        **conditions: Any,
    ) -> RemoteObject:
        hook, self.hook = (self.hook, None) if key == self.key else (None, self.hook)
        if hook is not None:
            hook()
        return super().upload(src, key, md5, progress, **conditions)


def test_merging_commit_on_s3_plans_from_a_fresh_listing(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    """The same three symptoms against a real S3 server (ETags, LIST, HEAD)."""
    prefix = unique_name("p")
    hooked = HookedS3Remote(s3_bucket, prefix, s3_server.client())
    plain = S3Remote(s3_bucket, prefix, s3_server.client())
    sites: dict[str, tuple[Config, Engine]] = {}
    for name, remote in (("alice", hooked), ("bob", plain)):
        folder = tmp_path / name / "Data"
        folder.mkdir(parents=True)
        values = {"platform": "S3", "s3.bucket": s3_bucket, "s3.prefix": prefix}
        cfg = build_config({**values, "datafolder": str(folder), "user_name": name}, tmp_path)
        sites[name] = (cfg, Engine(cfg, remote, name, workers=2))

    def sync(name: str) -> api.SyncSummary:
        cfg, eng = sites[name]
        summary = api.run_once(cfg, auto=ALL_KINDS, ask=None, say=lambda _t: None, engine=eng)
        assert summary.ok, summary.failed
        return summary

    a_dir, b_dir = (sites[n][0].datafolder for n in ("alice", "bob"))
    try:
        put(a_dir, "f.txt", "f v0\n")
        put(a_dir, "g.txt", "g, soon deleted\n")
        sync("alice")
        sync("bob")

        def bob_commits() -> None:
            put(b_dir, "f.txt", "f v2 by bob\n")
            (b_dir / "g.txt").unlink()
            put(b_dir, "h.txt", "h, brand new\n")
            sync("bob")

        put(a_dir, "x.txt", "alice's new file\n")
        eng = sites["alice"][1]
        eng.scan_local()
        eng.refresh_remote(listing=True, force=True)
        actions = list(eng.plan().actions)
        assert [(a.kind, a.path) for a in actions] == [(ActionKind.UPLOAD, "x.txt")]
        hooked.key, hooked.hook = "x.txt", bob_commits
        assert eng.execute([(a, None) for a in actions]).commit_error is None
        assert hooked.hook is None

        plan = eng.plan()  # as the daemon plans right after a batch
        kinds = {a.path: a.kind for a in plan.actions}
        assert kinds == {
            "f.txt": ActionKind.DOWNLOAD,
            "g.txt": ActionKind.DELETE_LOCAL,
            "h.txt": ActionKind.DOWNLOAD,
        }
        sync("alice")
        assert tree(a_dir) == tree(b_dir) | {"x.txt": tree(a_dir)["x.txt"]}
        sync("bob")
        assert tree(a_dir) == tree(b_dir)
        assert sorted(tree(a_dir)) == ["f.txt", "h.txt", "x.txt"]
    finally:
        hooked.close()
        plain.close()


def test_record_planned_on_stale_facts_is_replanned(world: World) -> None:
    """A manifest-only repair goes through the same re-check as a transfer: Alice plans to
    restore y.txt's row lost to an old client's blind write; Bob deletes y.txt before she
    executes; the repair must not bring back a row for a deleted file."""
    alice = world.site("alice")
    bob = world.site("bob")
    alice.write("x.txt", b"x\n")
    assert alice.sync().ok
    stale_copy = world.obj(".S3/versions.csv").read_bytes()
    alice.write("y.txt", b"y\n")
    assert alice.sync().ok
    assert bob.sync().ok
    world.obj(".S3/versions.csv").write_bytes(stale_copy)  # the old client's blind write

    actions = alice.plan()
    assert [(a.kind, a.path) for a in actions] == [(ActionKind.RECORD, "y.txt")]
    bob.path("y.txt").unlink()
    summary = bob.sync()
    assert summary.ok and [a.kind for a, _ in summary.done] == [ActionKind.DELETE_REMOTE]
    assert not world.obj("y.txt").exists()

    report = alice.execute(actions)
    (out,) = report.outcomes
    assert out.stale and not out.ok, out
    assert "y.txt" not in world.rows()
    summary = alice.sync()
    assert summary.ok
    assert not alice.path("y.txt").exists()  # Bob's delete reached Alice (file in trash)
    assert "y.txt" not in world.rows()


# --- defect 4: the journal accumulates until committed ----------------------------------


def test_failed_commit_then_another_batch_commits_both(world: World) -> None:
    flaky = UnreachableRemote(world.remote_root)
    alice = world.site("alice", flaky)
    alice.write("keep.txt", b"k\n")
    assert alice.sync().ok

    alice.write("one.txt", b"batch one\n")
    first = alice.plan()
    assert [(a.kind, a.path) for a in first] == [(ActionKind.UPLOAD, "one.txt")]
    flaky.down = True
    report = alice.execute(first)
    assert report.commit_error is not None and "unreachable" in report.commit_error
    assert [c.path for c in alice.engine.state.load_journal()] == ["one.txt"]

    # The daemon goes on (no restart, no replay): the next batch while still down ...
    eng = alice.engine
    alice.write("two.txt", b"batch two\n")
    eng.scan_local()
    second = [a for a in eng.plan().actions if a.path == "two.txt"]
    assert [a.kind for a in second] == [ActionKind.UPLOAD]
    report = alice.execute(second)
    assert report.commit_error is not None
    journal = {c.path: c for c in eng.state.load_journal()}
    assert sorted(journal) == ["one.txt", "two.txt"]

    # ... and one more once the remote is back: every batch's rows are committed.
    flaky.down = False
    alice.write("three.txt", b"batch three\n")
    eng.scan_local()
    third = [a for a in eng.plan().actions if a.path == "three.txt"]
    report = alice.execute(third)
    assert report.commit_error is None
    rows = world.rows()
    assert rows["one.txt"].checksum == md5(b"batch one\n")
    assert rows["two.txt"].checksum == md5(b"batch two\n")
    assert rows["three.txt"].checksum == md5(b"batch three\n")
    assert eng.state.load_journal() == []


def test_journal_keeps_the_newest_change_per_path(world: World) -> None:
    flaky = UnreachableRemote(world.remote_root)
    alice = world.site("alice", flaky)
    alice.write("f.txt", b"v0\n")
    assert alice.sync().ok
    eng = alice.engine
    flaky.down = True
    for text in (b"v1\n", b"v2, later\n"):
        alice.write("f.txt", text)
        eng.scan_local()
        actions = list(eng.plan().actions)
        assert [(a.kind, a.path) for a in actions] == [(ActionKind.UPLOAD, "f.txt")]
        assert alice.execute(actions).commit_error is not None
    (entry,) = eng.state.load_journal()
    assert entry.row is not None and entry.row.checksum == md5(b"v2, later\n")
    flaky.down = False
    alice.fresh_engine(flaky).prepare()  # restart: replayed
    assert world.rows()["f.txt"].checksum == md5(b"v2, later\n")
    assert alice.sync().ok
    assert alice.base()["f.txt"] == md5(b"v2, later\n")


def test_replay_does_not_overwrite_a_colleagues_newer_row(world: World) -> None:
    flaky = UnreachableRemote(world.remote_root)
    alice = world.site("alice", flaky)
    bob = world.site("bob")
    alice.write("f.txt", b"v0\n")
    alice.write("other.txt", b"o\n")
    assert alice.sync().ok
    assert bob.sync().ok

    # Alice's upload of v1 lands but its row is not committed (remote unreachable), then
    # her daemon stops.
    alice.write("f.txt", b"v1 by alice\n")
    actions = alice.plan()
    flaky.down = True
    assert alice.execute(actions).commit_error is not None
    assert [c.path for c in alice.engine.state.load_journal()] == ["f.txt"]

    # Meanwhile Bob edits f.txt too, sees the conflict and keeps his version.
    bob.write("f.txt", b"v2 by bob\n")
    bob_actions = bob.plan()
    assert [(a.kind, a.path) for a in bob_actions] == [(ActionKind.CONFLICT, "f.txt")]
    assert bob.execute(bob_actions, Resolution.LOCAL).commit_error is None
    assert world.rows()["f.txt"].checksum == md5(b"v2 by bob\n")

    # Alice restarts: the replay must not put her row over Bob's.
    flaky.down = False
    alice.fresh_engine(flaky).prepare()
    row = world.rows()["f.txt"]
    assert row.checksum == md5(b"v2 by bob\n") and row.edited_by == "bob"
    assert alice.engine.state.load_journal() == []
    replanned = alice.plan()
    assert [(a.kind, a.path) for a in replanned] == [(ActionKind.CONFLICT, "f.txt")]
    assert alice.read("f.txt") == b"v1 by alice\n"


def test_replayed_delete_does_not_remove_a_colleagues_newer_row(world: World) -> None:
    flaky = UnreachableRemote(world.remote_root)
    alice = world.site("alice", flaky)
    bob = world.site("bob")
    alice.write("f.txt", b"v0\n")
    alice.write("other.txt", b"o\n")
    assert alice.sync().ok
    assert bob.sync().ok

    alice.path("f.txt").unlink()
    actions = alice.plan()
    assert [(a.kind, a.path) for a in actions] == [(ActionKind.DELETE_REMOTE, "f.txt")]
    flaky.down = True
    assert alice.execute(actions).commit_error is not None
    (entry,) = alice.engine.state.load_journal()
    assert entry.row is None and entry.tombstone is not None

    # Bob had edited f.txt: he sees it deleted on the remote and keeps his version.
    bob.write("f.txt", b"v2 by bob\n")
    bob_actions = bob.plan()
    assert [(a.kind, a.path) for a in bob_actions] == [(ActionKind.CONFLICT, "f.txt")]
    assert bob.execute(bob_actions, Resolution.LOCAL).commit_error is None

    flaky.down = False
    alice.fresh_engine(flaky).prepare()
    assert world.rows()["f.txt"].checksum == md5(b"v2 by bob\n")
    assert "f.txt" not in {t.path for t in world.tombstones()}
    assert world.obj("f.txt").read_bytes() == b"v2 by bob\n"
    replanned = alice.plan()
    assert [(a.kind, a.path) for a in replanned] == [(ActionKind.CONFLICT, "f.txt")]


def test_journal_entries_record_the_row_they_replace() -> None:
    row = Row("f.txt", "alice", "2026-01-01 00:00:00", md5(b"v1"))
    guarded = RowChange("f.txt", row, None, md5(b"v0"), True)
    created = RowChange("n.txt", row, None, None, True)
    assert RowChange.from_json(guarded.to_json()) == guarded
    assert RowChange.from_json(created.to_json()) == created
    assert created.to_json()["replaces"] is None
    # an entry written before "replaces" existed is replayed as it always was
    legacy = {"path": "f.txt", "row": row.to_list(), "tombstone": None}
    assert RowChange.from_json(legacy) == RowChange("f.txt", row)
    assert manifest.admitted(RowChange("f.txt", row), {"f.txt": md5(b"other")})
    assert manifest.admitted(guarded, {"f.txt": md5(b"v0")})
    assert manifest.admitted(guarded, {"f.txt": md5(b"v1")})  # already in effect
    assert not manifest.admitted(guarded, {"f.txt": md5(b"other")})
    assert not manifest.admitted(guarded, {})
    assert manifest.admitted(created, {}) and not manifest.admitted(created, {"n.txt": M})


# --- defect 5: foreign rows are written back as read ------------------------------------

FOREIGN = [
    b"odd/abc.txt,carol,2026-01-02 03:04:05,abc",
    b"odd/upper.txt,carol,2026-01-02 03:04:05,0CC175B9C0F1B6A831C399E269772661",
    b"odd/nan.txt,carol,2026-01-02 03:04:05,nan",
    b"odd/notime.txt,carol,,0cc175b9c0f1b6a831c399e269772661",
    b"odd/na-time.txt,carol,NA,0cc175b9c0f1b6a831c399e269772661",
    b'"odd/comma, quoted.txt",carol,2026-01-02 03:04:05,ABC',
    b"shared.txt,NA,2026-01-02 03:04:05," + md5(b"shared\n").encode(),
]


@pytest.mark.parametrize("foreign", FOREIGN, ids=lambda raw: raw.split(b",")[0].decode())
def test_foreign_row_survives_our_commit_byte_for_byte(world: World, foreign: bytes) -> None:
    alice = world.site("alice")
    alice.write("mine.txt", b"mine\n")
    assert alice.sync().ok
    # Rows we can act on have their objects (else "object gone; drop row" is right).
    (world.remote_root / "shared.txt").write_bytes(b"shared\n")
    (world.remote_root / "odd").mkdir()
    (world.remote_root / "odd/na-time.txt").write_bytes(b"a")
    manifest_key = world.obj(".S3/versions.csv")
    manifest_key.write_bytes(manifest_key.read_bytes() + foreign + b"\n")

    alice.write("new.txt", b"new\n")
    summary = alice.sync()
    assert summary.ok, summary.failed
    written = manifest_key.read_bytes()
    lines = written.split(b"\n")
    assert foreign in lines, f"foreign row changed or dropped: {written!r}"
    ours = [ln for ln in lines if ln.startswith((b"mine.txt,", b"new.txt,"))]
    assert len(ours) == 2
    for ln in ours:
        cells = ln.split(b",")
        assert len(cells) == 4 and all(cells), ln
    assert world.rows()["new.txt"].checksum == md5(b"new\n")
    # the rows we could act on were acted on (downloaded), without being rewritten
    assert alice.read("shared.txt") == b"shared\n"
    assert alice.read("odd/na-time.txt") == b"a"


M = md5(b"a")


def test_splice_of_a_table_we_wrote_equals_rendering_it_whole() -> None:
    old = [Row("a.txt", "x", "2026-01-01 00:00:00", M), Row("c.txt", "x", "2026-01-01 00:00:00", M)]
    ours = [
        Row("b.txt", "me", "2026-01-02 00:00:00", M),
        Row("c.txt", "me", "2026-01-02 00:00:00", M),
    ]
    spliced = tables.splice_rows(tables.render_rows(old), {"c.txt"}, ours, "t")
    assert spliced == tables.render_rows([old[0], *ours])


def test_splice_keeps_bom_line_ends_order_and_odd_rows() -> None:
    data = (
        b"\xef\xbb\xbfFile,Edited By,Time Edited,Checksum\r\n"
        b"z.txt,NA,,ABC\r\n"
        b"a.txt,x,t,abc\r\n"
        b'"q""\nx",a,b,c'  # a quoted newline, no line end at the end of the file
    )
    ours = Row("m.txt", "me", "2026-01-02 00:00:00", M)
    spliced = tables.splice_rows(data, {"a.txt"}, [ours], "t")
    assert (
        spliced
        == (
            b"\xef\xbb\xbfFile,Edited By,Time Edited,Checksum\r\n"
            b"m.txt,me,2026-01-02 00:00:00," + M.encode() + b"\r\n"  # before all that sort after
            b"z.txt,NA,,ABC\r\n"
            b'"q""\nx",a,b,c'
        )
    )


def test_splice_drops_an_index_column_but_keeps_the_cells() -> None:
    data = b",File,Edited By,Time Edited,Checksum\n0,z.txt,NA,t,abc\n"
    ours = Row("m.txt", "me", "2026-01-02 00:00:00", M)
    spliced = tables.splice_rows(data, set(), [ours], "t")
    assert spliced == (
        b"File,Edited By,Time Edited,Checksum\n"
        b"m.txt,me,2026-01-02 00:00:00," + M.encode() + b"\n"
        b"z.txt,NA,t,abc\n"
    )
