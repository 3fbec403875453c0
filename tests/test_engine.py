"""The "nothing is lost" guarantees of DESIGN.md §3, each checked by interrupting the write path.

Every test runs the real engine against the Local platform (a directory as the remote), and
breaks one step on purpose: a download that dies half-way, a file edited while it uploads,
a crash between the transfer and the manifest commit, two clients committing at once, an
old client's blind write. What is asserted is what the user could lose: file content,
remote objects, manifest rows, and the base (the last agreed version of each file).
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from s3syncd import api, localfs, manifest, tables
from s3syncd.config import Config, build_config
from s3syncd.engine import Engine, PassReport
from s3syncd.errors import PreconditionFailedError, RemoteError, TransferError
from s3syncd.model import APPROVABLE_KINDS, Action, ActionKind, RemoteObject, Resolution, Row
from s3syncd.remote.base import ProgressCallback
from s3syncd.remote.localdir import LocalDirRemote

ALL = frozenset(APPROVABLE_KINDS)
# Every clock in these tests reads 2026-01-01 00:00:00 local time, so dated names are known.
STAMP = "20260101-000000"
NOW = time.mktime((2026, 1, 1, 0, 0, 0, 0, 0, -1))
HEADER = b"File,Edited By,Time Edited,Checksum"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def quiet(_text: str) -> None:
    pass


# --- sites: one data folder + one engine on the shared remote folder ------------------------


@dataclass
class Site:
    name: str
    folder: Path
    cfg: Config
    remote: LocalDirRemote
    engine: Engine

    def path(self, rel: str) -> Path:
        return self.folder / rel

    def write(self, rel: str, data: bytes) -> None:
        """Write a file and give it a fresh mtime, so a same-size edit is always seen."""
        target = self.folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        old = target.stat().st_mtime_ns if target.exists() else 0
        target.write_bytes(data)
        bumped = max(old + 1_000_000_000, target.stat().st_mtime_ns)
        os.utime(target, ns=(bumped, bumped))

    def read(self, rel: str) -> bytes:
        return (self.folder / rel).read_bytes()

    def base(self) -> dict[str, str]:
        return self.engine.state.load_base()

    def sync(self, auto: frozenset[ActionKind] = ALL, **kw: Any) -> api.SyncSummary:
        return api.run_once(self.cfg, auto=auto, ask=None, say=quiet, engine=self.engine, **kw)

    def fresh_engine(self, remote: LocalDirRemote | None = None) -> Engine:
        """A new engine on the same folder, as after a restart."""
        self.remote = remote or LocalDirRemote(self.remote.root)
        self.engine = Engine(self.cfg, self.remote, self.name, workers=2, clock=lambda: NOW)
        return self.engine

    def plan(self) -> list[Action]:
        """Scan, read the remote, plan: what a pass does before anything is approved."""
        eng = self.engine
        eng.prepare()
        eng.scan_local()
        eng.refresh_remote(listing=True, force=True)
        plan = eng.plan()
        eng.apply_agreement(plan)
        return list(plan.actions)

    def execute(self, actions: list[Action], resolution: Resolution | None = None) -> PassReport:
        return self.engine.execute([(a, resolution) for a in actions])


@dataclass
class World:
    tmp: Path
    remote_root: Path

    def site(self, name: str, remote: LocalDirRemote | None = None, **settings: Any) -> Site:
        folder = self.tmp / name / "Data"
        folder.mkdir(parents=True, exist_ok=True)
        values = {
            "platform": "Local",
            "local.remote_path": str(self.remote_root),
            "datafolder": str(folder),
            "user_name": name,
            **settings,
        }
        cfg = build_config(values, self.tmp)
        rem = remote or LocalDirRemote(self.remote_root)
        engine = Engine(cfg, rem, name, workers=2, clock=lambda: NOW)
        return Site(name, cfg.datafolder, cfg, rem, engine)

    # the remote, looked at directly (as another tool or an old client would)
    def obj(self, key: str) -> Path:
        return self.remote_root / key

    def rows(self) -> dict[str, Row]:
        key = self.obj(".S3/versions.csv")
        return tables.parse_table(key.read_bytes(), "test versions") if key.exists() else {}

    def tombstones(self) -> list[Row]:
        return tables.parse_rows(self.obj(".S3/deletedS3.csv").read_bytes(), "test deletedS3")


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


def kinds(summary: api.SyncSummary) -> dict[str, ActionKind]:
    return {a.path: a.kind for a in summary.planned}


def tmp_leftovers(site: Site) -> list[Path]:
    tmp = site.engine.state.tmp
    return sorted(tmp.iterdir()) if tmp.exists() else []


# --- remotes that break on purpose ------------------------------------------------------


class HalfDownloadRemote(LocalDirRemote):
    """``download`` writes half the object, then the connection 'drops'."""

    broken = True

    def download(self, key: str, dest: Path, progress: ProgressCallback | None = None) -> None:
        if not self.broken:
            super().download(key, dest, progress)
            return
        data = (self.root / key).read_bytes()
        with open(dest, "wb") as fh:
            fh.write(data[: len(data) // 2])
        raise TransferError(f"download {key}: connection reset by peer")


class CorruptingRemote(LocalDirRemote):
    """``download`` delivers the object with one byte flipped (bad RAM, a broken proxy)."""

    def download(self, key: str, dest: Path, progress: ProgressCallback | None = None) -> None:
        super().download(key, dest, progress)
        data = bytearray(dest.read_bytes())
        data[0] ^= 0xFF
        dest.write_bytes(bytes(data))


class CountingRemote(LocalDirRemote):
    """Counts the transfers and deletes that touch data objects."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.uploads: list[str] = []
        self.downloads: list[str] = []
        self.deletes: list[str] = []

    def upload(
        self, src: Path, key: str, md5: str, progress: ProgressCallback | None = None, **kw: Any
    ) -> RemoteObject:
        self.uploads.append(key)
        return super().upload(src, key, md5, progress, **kw)

    def download(self, key: str, dest: Path, progress: ProgressCallback | None = None) -> None:
        self.downloads.append(key)
        super().download(key, dest, progress)

    def delete(self, key: str, **kw: Any) -> None:
        self.deletes.append(key)
        super().delete(key, **kw)


class EditDuringUploadRemote(LocalDirRemote):
    """The user saves the file again while it is being uploaded (once)."""

    def __init__(self, root: Path, when: str, extra: bytes) -> None:
        super().__init__(root)
        self.when = when  # "before" or "after" the bytes are copied
        self.extra = extra
        self.armed = True

    def _edit(self, src: Path) -> None:
        with open(src, "ab") as fh:
            fh.write(self.extra)

    def upload(
        self, src: Path, key: str, md5: str, progress: ProgressCallback | None = None, **kw: Any
    ) -> RemoteObject:
        armed, self.armed = self.armed, False
        if armed and self.when == "before":
            self._edit(src)
        obj = super().upload(src, key, md5, progress, **kw)
        if armed and self.when == "after":
            self._edit(src)
        return obj


# --- downloads ------------------------------------------------------------------------------


def test_interrupted_download_keeps_the_old_file_and_the_next_pass_completes(
    world: World,
) -> None:
    flaky = HalfDownloadRemote(world.remote_root)
    flaky.broken = False
    alice = world.site("alice", flaky)
    bob = world.site("bob")
    old = b"id,value\n" + b"1,old\n" * 200
    new = b"id,value\n" + b"1,new\n" * 300
    alice.write("t/table.csv", old)
    assert alice.sync().ok
    assert bob.sync().ok
    bob.write("t/table.csv", new)
    assert bob.sync().ok
    base_before = alice.base()
    assert base_before["t/table.csv"] == md5(old)

    flaky.broken = True
    summary = alice.sync()
    assert [(a.kind, a.path) for a, _ in summary.failed] == [(ActionKind.DOWNLOAD, "t/table.csv")]
    assert "connection reset" in summary.failed[0][1]
    assert not summary.ok
    assert alice.read("t/table.csv") == old  # byte for byte
    assert tmp_leftovers(alice) == []
    assert alice.base() == base_before
    assert world.rows()["t/table.csv"].checksum == md5(new)  # the remote is untouched

    flaky.broken = False
    summary = alice.sync()
    assert summary.ok
    assert [(a.kind, a.path) for a, _ in summary.done] == [(ActionKind.DOWNLOAD, "t/table.csv")]
    assert alice.read("t/table.csv") == new
    assert alice.base()["t/table.csv"] == md5(new)
    assert tmp_leftovers(alice) == []


def test_partial_download_left_by_a_crash_is_swept_at_start(world: World) -> None:
    alice = world.site("alice")
    alice.engine.state.ensure()
    debris = alice.engine.state.tmp / "0123abcd.part"
    debris.write_bytes(b"half a fi")
    alice.write("a.txt", b"a")
    assert alice.sync().ok
    assert tmp_leftovers(alice) == []


def test_checksum_mismatch_leaves_the_target_untouched(world: World) -> None:
    alice = world.site("alice", CorruptingRemote(world.remote_root))
    bob = world.site("bob")
    bob.write("a.csv", b"version 1\n")
    assert bob.sync().ok
    alice.write("a.csv", b"version 1\n")  # same content: agreed, nothing to fetch
    assert alice.sync().ok
    bob.write("a.csv", b"version 2 from bob\n")
    assert bob.sync().ok

    summary = alice.sync()
    assert len(summary.failed) == 1
    action, message = summary.failed[0]
    assert action.kind is ActionKind.DOWNLOAD
    assert "does not match the manifest" in message
    assert alice.read("a.csv") == b"version 1\n"
    assert alice.base()["a.csv"] == md5(b"version 1\n")
    assert tmp_leftovers(alice) == []


def test_checksum_mismatch_outcome_from_the_executor(world: World) -> None:
    """Same, one level down: the outcome itself says checksum mismatch and is not stale."""
    alice = world.site("alice", CorruptingRemote(world.remote_root))
    bob = world.site("bob")
    bob.write("new.bin", b"\x00\x01\x02" * 100)
    assert bob.sync().ok
    actions = alice.plan()
    assert [a.kind for a in actions] == [ActionKind.DOWNLOAD]
    report = alice.execute(actions)
    (out,) = report.outcomes
    assert not out.ok and not out.stale
    assert "MD5" in out.message and "does not match" in out.message
    assert out.changes == ()
    assert not alice.path("new.bin").exists()
    assert "new.bin" not in alice.base()


# --- uploads --------------------------------------------------------------------------------


@pytest.mark.parametrize("new_file", [True, False], ids=["new-file", "modified-file"])
def test_file_edited_before_its_bytes_are_sent_is_not_committed(
    world: World, new_file: bool
) -> None:
    """The edit lands before the copy reads the file: the object holds the newest bytes,
    but the row is not committed from stale facts; the next pass records the real MD5."""
    editing = EditDuringUploadRemote(world.remote_root, "before", b"late edit\n")
    editing.armed = False
    alice = world.site("alice", editing)
    if not new_file:
        alice.write("data.csv", b"v1\n")
        assert alice.sync().ok
    base_before = alice.base()
    rows_before = world.rows()
    alice.write("data.csv", b"v2 longer\n")

    editing.armed = True
    summary = alice.sync()
    (out,) = [m for a, m in summary.failed if a.path == "data.csv"]
    assert "changed while" in out
    assert alice.base() == base_before
    assert world.rows() == rows_before  # nothing committed
    # and the object was not replaced by bytes nobody hashed
    if new_file:
        assert not world.obj("data.csv").exists()
    else:
        assert world.obj("data.csv").read_bytes() == b"v1\n"
    final = b"v2 longer\nlate edit\n"
    assert alice.read("data.csv") == final

    summary = alice.sync()
    assert summary.ok
    assert world.rows()["data.csv"].checksum == md5(final)
    assert world.obj("data.csv").read_bytes() == final
    assert alice.base()["data.csv"] == md5(final)
    assert summary.conflicts() == []


@pytest.mark.parametrize("new_file", [True, False], ids=["new-file", "modified-file"])
def test_file_edited_after_its_bytes_are_sent_commits_the_sent_version(
    world: World, new_file: bool
) -> None:
    """The platform verified the stored bytes are the version we hashed, so that version
    is recorded; the later save is a new local change, not part of this upload."""
    editing = EditDuringUploadRemote(world.remote_root, "after", b"late edit\n")
    editing.armed = False
    alice = world.site("alice", editing)
    if not new_file:
        alice.write("data.csv", b"v1\n")
        assert alice.sync().ok
    alice.write("data.csv", b"v2 longer\n")

    editing.armed = True
    summary = alice.sync()
    assert summary.ok
    assert world.rows()["data.csv"].checksum == md5(b"v2 longer\n")
    assert world.obj("data.csv").read_bytes() == b"v2 longer\n"
    assert alice.base()["data.csv"] == md5(b"v2 longer\n")
    assert alice.read("data.csv") == b"v2 longer\nlate edit\n"


@pytest.mark.parametrize("new_file", [True, False], ids=["new-file", "modified-file"])
def test_file_edited_after_its_bytes_are_sent_is_uploaded_next_pass(
    world: World, new_file: bool
) -> None:
    editing = EditDuringUploadRemote(world.remote_root, "after", b"late edit\n")
    editing.armed = False
    alice = world.site("alice", editing)
    if not new_file:
        alice.write("data.csv", b"v1\n")
        assert alice.sync().ok
    alice.write("data.csv", b"v2 longer\n")
    editing.armed = True
    alice.sync()

    summary = alice.sync()
    final = b"v2 longer\nlate edit\n"
    assert kinds(summary).get("data.csv") is ActionKind.UPLOAD
    assert summary.ok
    assert alice.read("data.csv") == final
    assert world.obj("data.csv").read_bytes() == final
    assert world.rows()["data.csv"].checksum == md5(final)


class TearingRemote(LocalDirRemote):
    """The user saves a new version while the upload is half-way through the file: the
    object ends up with the old first chunk and the new rest (a torn copy)."""

    def __init__(self, root: Path, new_content: bytes) -> None:
        super().__init__(root)
        self.new_content = new_content
        self.armed = False

    def upload(
        self, src: Path, key: str, md5: str, progress: ProgressCallback | None = None, **kw: Any
    ) -> RemoteObject:
        if not self.armed:
            return super().upload(src, key, md5, progress, **kw)
        self.armed = False
        done = False

        def save_mid_way(_n: int) -> None:
            nonlocal done
            if not done:
                done = True
                src.write_bytes(self.new_content)

        return super().upload(src, key, md5, save_mid_way, **kw)


def test_torn_upload_never_reaches_a_colleague(world: World) -> None:
    chunk = 1 << 20
    v1 = b"1" * (2 * chunk)
    v2 = b"2" * (2 * chunk)
    v3 = b"3" * (2 * chunk + 10)
    tearing = TearingRemote(world.remote_root, v3)
    alice = world.site("alice", tearing)
    bob = world.site("bob")
    alice.write("big.bin", v1)
    assert alice.sync().ok
    assert bob.sync().ok
    alice.write("big.bin", v2)
    tearing.armed = True
    summary = alice.sync()
    assert [a.path for a, _ in summary.failed] == ["big.bin"]
    assert alice.read("big.bin") == v3  # the setup really saved mid-transfer
    assert world.rows()["big.bin"].checksum == md5(v1)
    assert world.obj("big.bin").read_bytes() == v1  # not a mix of v2 and v3
    assert list((world.remote_root / ".S3/.tmp").iterdir()) == []

    assert bob.sync().planned == []
    assert bob.read("big.bin") == v1
    summary = alice.sync()
    assert kinds(summary) == {"big.bin": ActionKind.UPLOAD} and summary.ok
    assert world.obj("big.bin").read_bytes() == v3
    assert bob.sync().ok
    assert bob.read("big.bin") == v3


# --- crash between transfer and manifest commit -------------------------------------------


class Crash(BaseException):
    """Stands for kill -9: nothing after the raise runs, no handler catches it."""


def test_crash_before_the_manifest_commit_is_replayed_from_the_journal(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = CountingRemote(world.remote_root)
    alice = world.site("alice", counting)
    alice.write("keep.csv", b"kept\n")
    assert alice.sync().ok
    alice.write("new.csv", b"fresh\n")
    alice.write("keep.csv", b"kept, edited\n")
    counting.uploads.clear()
    real_commit = manifest.commit

    def crash(*_a: Any, **_k: Any) -> Any:
        raise Crash

    monkeypatch.setattr("s3syncd.engine.manifest.commit", crash)
    with pytest.raises(Crash):
        alice.sync()
    monkeypatch.setattr("s3syncd.engine.manifest.commit", real_commit)

    journal = alice.engine.state.load_journal()
    assert {c.path: c.row.checksum if c.row else None for c in journal} == {
        "new.csv": md5(b"fresh\n"),
        "keep.csv": md5(b"kept, edited\n"),
    }
    assert "new.csv" not in world.rows()
    assert world.rows()["keep.csv"].checksum == md5(b"kept\n")
    assert alice.base() == {"keep.csv": md5(b"kept\n")}  # only completed commits count
    assert sorted(counting.uploads) == ["keep.csv", "new.csv"]

    # restart: a new engine on the same folder replays the journal in prepare()
    restarted = CountingRemote(world.remote_root)
    eng = alice.fresh_engine(restarted)
    eng.prepare()
    rows = world.rows()
    assert rows["new.csv"].checksum == md5(b"fresh\n")
    assert rows["new.csv"].edited_by == "alice"
    assert rows["keep.csv"].checksum == md5(b"kept, edited\n")
    assert eng.state.load_journal() == []
    assert restarted.uploads == []

    summary = alice.sync()
    assert summary.ok
    assert restarted.uploads == [] and restarted.deletes == []  # nothing sent twice
    assert alice.base() == {"keep.csv": md5(b"kept, edited\n"), "new.csv": md5(b"fresh\n")}


def test_failed_manifest_commit_is_reported_and_kept_in_the_journal(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = world.site("alice")
    alice.write("a.csv", b"a\n")
    calls = 0
    real_commit = manifest.commit

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RemoteError("the remote went away")
        return real_commit(*args, **kwargs)

    monkeypatch.setattr("s3syncd.engine.manifest.commit", failing_once)
    summary = alice.sync()
    assert summary.commit_error is not None and "went away" in summary.commit_error
    assert not summary.ok
    assert "a.csv" not in world.rows()
    assert "a.csv" not in alice.base()
    assert [c.path for c in alice.engine.state.load_journal()] == ["a.csv"]

    summary = alice.sync()  # prepare() replays the journal first
    assert summary.ok
    assert calls == 2
    assert world.rows()["a.csv"].checksum == md5(b"a\n")
    assert alice.base() == {"a.csv": md5(b"a\n")}
    assert alice.engine.state.load_journal() == []


class CrashAfterDeleteRemote(LocalDirRemote):
    """The process dies right after the object is deleted (copy kept, nothing recorded)."""

    def delete(self, key: str, **kw: Any) -> None:
        super().delete(key, **kw)
        raise Crash


def test_crash_after_a_remote_delete_is_finished_by_the_next_pass(world: World) -> None:
    alice = world.site("alice")
    bob = world.site("bob")
    alice.write("old.csv", b"to be deleted\n")
    alice.write("other.csv", b"o\n")
    assert alice.sync().ok
    assert bob.sync().ok
    alice.path("old.csv").unlink()

    eng = alice.fresh_engine(CrashAfterDeleteRemote(world.remote_root))
    with pytest.raises(Crash):
        alice.sync()
    assert not world.obj("old.csv").exists()
    assert world.obj(f".S3/deleted/old.csv~{STAMP}-alice").read_bytes() == b"to be deleted\n"
    assert "old.csv" in world.rows()  # the crash came before the commit
    assert eng.state.load_journal() == []

    alice.fresh_engine()
    summary = alice.sync()
    assert summary.ok
    assert kinds(summary) == {"old.csv": ActionKind.RECORD}
    assert sorted(world.rows()) == ["other.csv"]
    assert [r.path for r in world.tombstones()] == ["old.csv"]
    assert alice.base() == {"other.csv": md5(b"o\n")}
    # the colleague's copy goes to their trash, as for any remote delete
    summary = bob.sync()
    assert kinds(summary) == {"old.csv": ActionKind.DELETE_LOCAL}
    assert (bob.engine.state.trash / STAMP / "old.csv").read_bytes() == b"to be deleted\n"


def test_crash_after_a_download_is_installed_is_agreed_next_pass(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = world.site("alice")
    bob = world.site("bob")
    alice.write("doc.txt", b"v1\n")
    assert alice.sync().ok
    assert bob.sync().ok
    bob.write("doc.txt", b"v2 from bob\n")
    assert bob.sync().ok

    def crash(*_a: Any, **_k: Any) -> None:
        raise Crash

    # dies as soon as the engine learns the download completed: nothing recorded
    monkeypatch.setattr(Engine, "_absorb_local", crash)
    with pytest.raises(Crash):
        alice.sync()
    monkeypatch.undo()
    assert alice.read("doc.txt") == b"v2 from bob\n"  # new, not torn
    assert alice.base()["doc.txt"] == md5(b"v2 from bob\n")  # agreed once it landed
    assert tmp_leftovers(alice) == []

    counting = CountingRemote(world.remote_root)
    alice.fresh_engine(counting)
    summary = alice.sync()
    assert summary.planned == []  # both sides agree: no conflict, no re-transfer
    assert counting.uploads == [] and counting.downloads == []
    assert alice.base()["doc.txt"] == md5(b"v2 from bob\n")
    assert sorted(p.name for p in alice.folder.iterdir()) == [".S3", "doc.txt"]


def test_orphan_object_from_a_crash_after_upload_gets_its_row_back(world: World) -> None:
    counting = CountingRemote(world.remote_root)
    alice = world.site("alice", counting)
    alice.write("kept.csv", b"x\n")
    assert alice.sync().ok
    alice.write("orphan.csv", b"uploaded, then the power went out\n")
    digest = md5(alice.read("orphan.csv"))
    # The crash: the object reached the remote, nothing else was recorded anywhere.
    LocalDirRemote(world.remote_root).upload(alice.path("orphan.csv"), "orphan.csv", digest)
    assert "orphan.csv" not in world.rows()
    counting.uploads.clear()

    summary = alice.sync()
    assert summary.ok
    assert kinds(summary) == {"orphan.csv": ActionKind.RECORD}
    assert counting.uploads == [] and counting.deletes == [] and counting.downloads == []
    row = world.rows()["orphan.csv"]
    assert row.checksum == digest and row.edited_by == "alice"
    assert alice.base()["orphan.csv"] == digest
    assert alice.path("orphan.csv").exists()
    assert not world.obj(".S3/deleted/orphan.csv").exists()


# --- stale approvals ------------------------------------------------------------------------


def test_local_edit_between_plan_and_execute_makes_actions_stale(world: World) -> None:
    alice = world.site("alice")
    bob = world.site("bob")
    for rel in ("down.csv", "gone.csv", "up.csv"):
        alice.write(rel, f"{rel} v1\n".encode())
    assert alice.sync().ok
    assert bob.sync().ok
    bob.write("down.csv", b"down.csv v2 from bob\n")
    bob.path("gone.csv").unlink()
    assert bob.sync().ok
    alice.write("up.csv", b"up.csv v2 from alice\n")

    actions = alice.plan()
    assert {a.path: a.kind for a in actions} == {
        "down.csv": ActionKind.DOWNLOAD,
        "gone.csv": ActionKind.DELETE_LOCAL,
        "up.csv": ActionKind.UPLOAD,
    }
    # the user keeps working between the plan and the approval
    alice.write("down.csv", b"alice's unsaved work\n")
    alice.write("gone.csv", b"alice still needs this\n")
    alice.write("up.csv", b"up.csv v3, newer than planned\n")
    base_before = alice.base()
    rows_before = world.rows()

    report = alice.execute(actions)
    assert len(report.outcomes) == 3
    assert all(o.stale and not o.ok for o in report.outcomes), report.outcomes
    assert alice.read("down.csv") == b"alice's unsaved work\n"
    assert alice.read("gone.csv") == b"alice still needs this\n"
    assert alice.read("up.csv") == b"up.csv v3, newer than planned\n"
    assert not alice.engine.state.trash.exists()
    assert world.obj("up.csv").read_bytes() == b"up.csv v1\n"
    assert world.rows() == rows_before
    assert alice.base() == base_before
    assert tmp_leftovers(alice) == []


def test_remote_commit_between_plan_and_execute_makes_actions_stale(world: World) -> None:
    alice = world.site("alice")
    bob = world.site("bob")
    alice.write("shared.csv", b"v1\n")
    assert alice.sync().ok
    assert bob.sync().ok
    alice.write("shared.csv", b"v2 by alice\n")
    actions = alice.plan()
    assert [(a.kind, a.path) for a in actions] == [(ActionKind.UPLOAD, "shared.csv")]

    bob.write("shared.csv", b"v2 by bob, committed first\n")
    assert bob.sync().ok

    report = alice.execute(actions)
    (out,) = report.outcomes
    assert out.stale and not out.ok
    assert world.obj("shared.csv").read_bytes() == b"v2 by bob, committed first\n"
    assert world.rows()["shared.csv"].checksum == md5(b"v2 by bob, committed first\n")
    assert alice.read("shared.csv") == b"v2 by alice\n"
    assert alice.base()["shared.csv"] == md5(b"v1\n")
    # re-planning now sees the real situation: both changed
    assert [a.kind for a in alice.plan()] == [ActionKind.CONFLICT]


# --- deletes keep a copy --------------------------------------------------------------------


def test_remote_delete_keeps_every_deleted_copy(world: World) -> None:
    alice = world.site("alice")
    alice.write("keep.csv", b"k\n")
    alice.write("sub/dir/report.csv", b"first report\n")
    assert alice.sync().ok

    alice.path("sub/dir/report.csv").unlink()
    summary = alice.sync()
    assert kinds(summary) == {"sub/dir/report.csv": ActionKind.DELETE_REMOTE}
    assert summary.ok
    assert not world.obj("sub/dir/report.csv").exists()
    first = world.obj(f".S3/deleted/sub/dir/report.csv~{STAMP}-alice")
    assert first.read_bytes() == b"first report\n"
    assert "sub/dir/report.csv" not in world.rows()
    assert "sub/dir/report.csv" not in alice.base()

    alice.write("sub/dir/report.csv", b"second report, recreated\n")
    assert alice.sync().ok
    assert world.rows()["sub/dir/report.csv"].checksum == md5(b"second report, recreated\n")
    alice.path("sub/dir/report.csv").unlink()
    assert alice.sync().ok

    assert first.read_bytes() == b"first report\n"
    dated = world.obj(f".S3/deleted/sub/dir/report.csv~{STAMP}-alice-2")
    assert dated.read_bytes() == b"second report, recreated\n"
    # no third copy, nothing else in the trash
    trash = sorted(
        p.relative_to(world.remote_root).as_posix()
        for p in world.obj(".S3/deleted").rglob("*")
        if p.is_file()
    )
    assert trash == [
        f".S3/deleted/sub/dir/report.csv~{STAMP}-alice",
        f".S3/deleted/sub/dir/report.csv~{STAMP}-alice-2",
    ]

    raw = world.obj(".S3/deletedS3.csv").read_bytes()
    assert raw.splitlines()[0] == HEADER  # no index column
    assert [(r.path, r.checksum) for r in world.tombstones()] == [
        ("sub/dir/report.csv", md5(b"first report\n")),
        ("sub/dir/report.csv", md5(b"second report, recreated\n")),
    ]
    assert all(r.edited_by and r.time_edited for r in world.tombstones())
    assert list(world.rows()) == ["keep.csv"]


def test_local_delete_moves_the_file_to_the_local_trash(world: World) -> None:
    alice = world.site("alice")
    bob = world.site("bob")
    alice.write("a/b.csv", b"alice's copy\n")
    alice.write("other.csv", b"o\n")
    assert alice.sync().ok
    assert bob.sync().ok
    bob.path("a/b.csv").unlink()
    assert bob.sync().ok

    summary = alice.sync()
    assert kinds(summary) == {"a/b.csv": ActionKind.DELETE_LOCAL}
    assert summary.ok
    assert not alice.path("a/b.csv").exists()
    kept = alice.engine.state.trash / STAMP / "a/b.csv"
    assert kept.read_bytes() == b"alice's copy\n"
    assert "a/b.csv" not in alice.base()
    # the trash is never synced back
    assert alice.sync().planned == []


def conflicted(world: World) -> tuple[Site, Site, list[Action]]:
    """alice and bob both edit doc.txt; bob commits first; alice's plan is one conflict."""
    alice = world.site("alice")
    bob = world.site("bob")
    alice.write("doc.txt", b"original\n")
    assert alice.sync().ok
    assert bob.sync().ok
    bob.write("doc.txt", b"bob's edit\n")
    assert bob.sync().ok
    alice.write("doc.txt", b"alice's edit\n")
    actions = alice.plan()
    assert [a.kind for a in actions] == [ActionKind.CONFLICT]
    return alice, bob, actions


def test_conflict_keep_local_keeps_the_remote_version_in_the_remote_trash(
    world: World,
) -> None:
    alice, bob, actions = conflicted(world)
    report = alice.execute(actions, Resolution.LOCAL)
    assert [o.ok for o in report.outcomes] == [True]
    assert world.obj("doc.txt").read_bytes() == b"alice's edit\n"
    assert world.rows()["doc.txt"].checksum == md5(b"alice's edit\n")
    assert world.obj(f".S3/deleted/doc.txt~{STAMP}-alice").read_bytes() == b"bob's edit\n"
    assert alice.base()["doc.txt"] == md5(b"alice's edit\n")
    assert bob.sync().ok
    assert bob.read("doc.txt") == b"alice's edit\n"


def test_conflict_keep_remote_keeps_the_local_version_in_the_local_trash(world: World) -> None:
    alice, _bob, actions = conflicted(world)
    report = alice.execute(actions, Resolution.REMOTE)
    assert [o.ok for o in report.outcomes] == [True]
    assert alice.read("doc.txt") == b"bob's edit\n"
    assert (alice.engine.state.trash / STAMP / "doc.txt").read_bytes() == b"alice's edit\n"
    assert world.obj("doc.txt").read_bytes() == b"bob's edit\n"
    assert alice.base()["doc.txt"] == md5(b"bob's edit\n")
    assert alice.sync().planned == []


def test_conflict_keep_both_renames_the_local_version(world: World) -> None:
    alice, bob, actions = conflicted(world)
    report = alice.execute(actions, Resolution.BOTH)
    assert [o.ok for o in report.outcomes] == [True]
    aside = f"doc.conflict-alice-{STAMP}.txt"
    assert alice.read(aside) == b"alice's edit\n"
    assert alice.read("doc.txt") == b"bob's edit\n"
    assert world.obj("doc.txt").read_bytes() == b"bob's edit\n"
    # the conflict copy is an ordinary new file: the next pass shares it
    summary = alice.sync()
    assert kinds(summary) == {aside: ActionKind.UPLOAD}
    assert bob.sync().ok
    assert bob.read(aside) == b"alice's edit\n"


def test_conflict_deleted_locally_changed_remotely_keep_local_keeps_a_remote_copy(
    world: World,
) -> None:
    alice = world.site("alice")
    bob = world.site("bob")
    alice.write("doc.txt", b"original\n")
    assert alice.sync().ok
    assert bob.sync().ok
    bob.write("doc.txt", b"bob's edit\n")
    assert bob.sync().ok
    alice.path("doc.txt").unlink()
    actions = alice.plan()
    assert [a.kind for a in actions] == [ActionKind.CONFLICT]
    report = alice.execute(actions, Resolution.LOCAL)
    assert [o.ok for o in report.outcomes] == [True]
    assert not world.obj("doc.txt").exists()
    assert world.obj(f".S3/deleted/doc.txt~{STAMP}-alice").read_bytes() == b"bob's edit\n"
    assert [r.checksum for r in world.tombstones()] == [md5(b"bob's edit\n")]


# --- concurrent commits ---------------------------------------------------------------------


class RacingRemote(LocalDirRemote):
    """Every armed manifest write waits at a shared barrier, so all racers hold the same
    ETag when they write; the losers must get a 412 and merge."""

    def __init__(self, root: Path, barrier: threading.Barrier) -> None:
        super().__init__(root)
        self.barrier = barrier
        self.armed = False
        self.refused = 0

    def write_blob(
        self, key: str, data: bytes, if_match: str | None = None, create_only: bool = False
    ) -> str:
        if self.armed and key == ".S3/versions.csv":
            self.armed = False
            self.barrier.wait(timeout=10)
        try:
            return super().write_blob(key, data, if_match, create_only)
        except PreconditionFailedError:
            self.refused += 1
            raise


def test_two_engines_committing_at_once_keep_both_rows(world: World) -> None:
    barrier = threading.Barrier(2)
    remotes = [RacingRemote(world.remote_root, barrier) for _ in range(2)]
    sites = [world.site(name, rem) for name, rem in zip(("alice", "bob"), remotes, strict=True)]
    for site in sites:
        site.write("common.csv", b"same for both\n")
    assert sites[0].sync().ok
    assert sites[1].sync().ok
    plans = []
    for site in sites:
        site.write(f"{site.name}.csv", f"{site.name}'s new file\n".encode())
        plans.append(site.plan())
    assert [[a.kind for a in p] for p in plans] == [[ActionKind.UPLOAD]] * 2

    for rem in remotes:
        rem.armed = True
    reports: dict[str, PassReport] = {}
    errors: list[BaseException] = []

    def run(site: Site, actions: list[Action]) -> None:
        try:
            reports[site.name] = site.execute(actions)
        except BaseException as exc:  # surfaced by the assert below
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(s, p), name=f"test-{s.name}")
        for s, p in zip(sites, plans, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    assert all(r.commit_error is None and all(o.ok for o in r.outcomes) for r in reports.values())
    assert sum(r.refused for r in remotes) == 1  # they really raced: one write was refused

    rows = world.rows()
    assert sorted(rows) == ["alice.csv", "bob.csv", "common.csv"]
    assert rows["alice.csv"].edited_by == "alice" and rows["bob.csv"].edited_by == "bob"
    for site in sites:
        assert f"{site.name}.csv" in site.base()
    # each then picks up the other's file
    assert sites[0].sync().ok and sites[1].sync().ok
    assert sites[0].read("bob.csv") == b"bob's new file\n"
    assert sites[1].read("alice.csv") == b"alice's new file\n"


# --- old clients ----------------------------------------------------------------------------


def test_blind_write_by_an_old_client_is_repaired_not_propagated(world: World) -> None:
    counting = CountingRemote(world.remote_root)
    alice = world.site("alice", counting)
    alice.write("x.csv", b"x\n")
    assert alice.sync().ok
    old_manifest = world.obj(".S3/versions.csv").read_bytes()
    alice.write("y.csv", b"y\n")
    assert alice.sync().ok
    assert sorted(world.rows()) == ["x.csv", "y.csv"]

    # an old client writes back the copy it read before y.csv existed
    world.obj(".S3/versions.csv").write_bytes(old_manifest)
    counting.uploads.clear()

    summary = alice.sync()
    assert summary.ok
    assert kinds(summary) == {"y.csv": ActionKind.RECORD}
    assert alice.read("y.csv") == b"y\n"
    assert counting.uploads == [] and counting.deletes == []
    assert sorted(world.rows()) == ["x.csv", "y.csv"]
    assert world.rows()["y.csv"].checksum == md5(b"y\n")
    assert not alice.engine.state.trash.exists()


def test_poll_without_listing_never_deletes_for_a_missing_row(world: World) -> None:
    """The daemon's cheap poll has no listing: a vanished row alone proves nothing."""
    alice = world.site("alice")
    alice.write("x.csv", b"x\n")
    alice.write("y.csv", b"y\n")
    assert alice.sync().ok
    rows = world.rows()
    tables.write_table_file(world.obj(".S3/versions.csv"), [rows["x.csv"]])
    eng = alice.engine
    eng.objects = None
    assert eng.refresh_remote(listing=False)
    assert eng.plan().actions == ()


def write_legacy_table(path: Path, rows: list[tuple[str, str, str, str]], index: bool) -> None:
    """A table as the original's pandas ``to_csv`` writes it (``index=True`` for its bug)."""
    lines = [("," if index else "") + "File,Edited By,Time Edited,Checksum"]
    lines += [(f"{i}," if index else "") + ",".join(r) for i, r in enumerate(rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join(lines) + "\n").encode())


def test_legacy_folder_is_adopted_without_conflicts(world: World) -> None:
    """A folder last synced by the original s3synchrony switches to s3syncd."""
    alice = world.site("alice")
    same, changed_old, pushed_never = b"same\n", b"before\n", b"never pushed\n"
    gone_old = b"deleted long ago\n"
    alice.write("same.csv", same)
    alice.write("sub/changed.csv", changed_old)
    alice.write("local_only.csv", pushed_never)
    t = "2021-03-04 09:15:27"
    agreed = [
        ("same.csv", "carol", t, md5(same)),
        ("sub/changed.csv", "carol", t, md5(changed_old)),
    ]
    # remote: objects, manifest and a tombstone table with the original's index bug
    for rel, data in (("same.csv", same), ("sub/changed.csv", changed_old)):
        world.obj(rel).parent.mkdir(parents=True, exist_ok=True)
        world.obj(rel).write_bytes(data)
    write_legacy_table(world.obj(".S3/versions.csv"), agreed, index=False)
    tomb = [("old.csv", "carol", t, md5(gone_old))]
    write_legacy_table(world.obj(".S3/deletedS3.csv"), tomb, index=True)
    # local .S3 as the original leaves it
    state = alice.folder / ".S3"
    write_legacy_table(state / "versions.csv", agreed, index=False)
    write_legacy_table(
        state / "versionsLocal.csv",
        [*agreed, ("local_only.csv", "alice", t, md5(pushed_never))],
        index=False,
    )
    write_legacy_table(state / "deletedS3.csv", tomb, index=True)
    write_legacy_table(state / "deletedLocal.csv", [], index=False)
    (state / "user_name.txt").write_text("alice")
    (state / "ignores3.txt").write_text("")
    (state / "tmp").mkdir()
    (state / "logs").mkdir()
    # since the last legacy sync, alice edited one file
    alice.write("sub/changed.csv", b"edited after the switch\n")

    summary = alice.sync()
    assert kinds(summary) == {
        "sub/changed.csv": ActionKind.UPLOAD,
        "local_only.csv": ActionKind.UPLOAD,
    }
    assert summary.conflicts() == []
    assert summary.ok
    rows = world.rows()
    assert rows["same.csv"] == Row("same.csv", "carol", t, md5(same))  # untouched
    assert rows["sub/changed.csv"].checksum == md5(b"edited after the switch\n")
    assert rows["local_only.csv"].checksum == md5(pushed_never)
    assert world.obj("local_only.csv").read_bytes() == pushed_never
    assert alice.read("same.csv") == same
    assert not alice.engine.state.trash.exists()
    assert not world.obj(".S3/deleted").exists()
    # the tombstones an old client relies on are still there
    assert [r.path for r in world.tombstones()] == ["old.csv"]
    assert alice.base() == {
        "same.csv": md5(same),
        "sub/changed.csv": md5(b"edited after the switch\n"),
        "local_only.csv": md5(pushed_never),
    }


def test_legacy_row_missing_on_the_remote_is_uploaded_never_deleted(world: World) -> None:
    alice = world.site("alice")
    alice.write("only_here.csv", b"mine\n")
    state = alice.folder / ".S3"
    t = "2021-03-04 09:15:27"
    write_legacy_table(
        state / "versionsLocal.csv", [("only_here.csv", "alice", t, md5(b"mine\n"))], index=False
    )
    write_legacy_table(world.obj(".S3/versions.csv"), [], index=False)
    actions = alice.plan()
    assert [(a.kind, a.path) for a in actions] == [(ActionKind.UPLOAD, "only_here.csv")]
    assert alice.base() == {}


# --- safety brakes and filters -------------------------------------------------------------


def test_mass_delete_is_held_even_with_everything_auto_approved(world: World) -> None:
    alice = world.site("alice")
    for i in range(10):
        alice.write(f"f{i}.csv", f"{i}\n".encode())
    assert alice.sync().ok
    for i in range(6):
        alice.path(f"f{i}.csv").unlink()

    summary = alice.sync()
    assert summary.held is not None and "6 of 10" in summary.held
    assert summary.done == []
    assert sorted(a.path for a in summary.not_approved) == [f"f{i}.csv" for i in range(6)]
    assert all(a.kind is ActionKind.DELETE_REMOTE for a in summary.not_approved)
    assert len(world.rows()) == 10
    assert all(world.obj(f"f{i}.csv").exists() for i in range(10))
    assert not world.obj(".S3/deleted").exists()

    # explicit approval on the terminal: approve all deletes, then confirm
    answers = iter(["all", "y"])
    asked: list[str] = []

    def ask(question: str) -> str:
        asked.append(question)
        return next(answers)

    summary = api.run_once(alice.cfg, auto=frozenset(), ask=ask, say=quiet, engine=alice.engine)
    assert len(asked) == 2
    assert summary.ok and len(summary.done) == 6
    assert sorted(world.rows()) == [f"f{i}.csv" for i in range(6, 10)]
    assert sorted(p.name for p in world.obj(".S3/deleted").iterdir()) == [
        f"f{i}.csv~{STAMP}-alice" for i in range(6)
    ]


def test_ignored_paths_are_never_uploaded_and_their_rows_never_dropped(world: World) -> None:
    alice = world.site("alice")
    bob = world.site("bob")
    # bob (not ignoring anything) shares secret.csv; its row must survive alice's commits
    bob.write("secret.csv", b"bob's secret\n")
    bob.write("cache/x.tmp", b"bob's tmp\n")
    assert bob.sync().ok
    # a row an old client left for an ignored path whose object is gone: not ours to drop
    rows = list(world.rows().values())
    ghost = Row("ghost.tmp", "carol", "2021-01-01 00:00:00", md5(b"ghost"))
    tables.write_table_file(world.obj(".S3/versions.csv"), [*rows, ghost])

    alice.engine.state.ensure()
    alice.engine.state.ignores.write_text("secret.csv\n*.tmp\nscratch\n")
    alice.write("secret.csv", b"alice's own secret\n")
    alice.write("a.tmp", b"tmp\n")
    alice.write("deep/b.tmp", b"tmp\n")
    alice.write("scratch/notes.txt", b"n\n")
    alice.write("run.S3.csv", b"legacy clients cannot sync this name\n")
    alice.write("keep.csv", b"shared\n")

    summary = alice.sync()
    assert summary.ok
    assert kinds(summary) == {"keep.csv": ActionKind.UPLOAD}
    assert "run.S3.csv" in summary.skipped_files
    assert ".S3" in summary.skipped_files["run.S3.csv"]
    rows_now = world.rows()
    assert sorted(rows_now) == ["cache/x.tmp", "ghost.tmp", "keep.csv", "secret.csv"]
    assert rows_now["secret.csv"].checksum == md5(b"bob's secret\n")
    assert rows_now["ghost.tmp"] == ghost
    assert world.obj("secret.csv").read_bytes() == b"bob's secret\n"
    assert alice.read("secret.csv") == b"alice's own secret\n"
    for rel in ("a.tmp", "deep/b.tmp", "scratch/notes.txt", "run.S3.csv"):
        assert not world.obj(rel).exists()
    assert not alice.path("cache/x.tmp").exists()  # ignored rows are not downloaded either
    assert set(alice.base()) == {"keep.csv"}


def test_unreadable_file_is_skipped_and_the_rest_still_syncs(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = world.site("alice")
    alice.write("locked.xlsx", b"open in another program\n")
    alice.write("fine.csv", b"fine\n")
    real_md5 = localfs.md5_file

    def guarded(path: Path) -> str:
        if path.name == "locked.xlsx":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_md5(path)

    monkeypatch.setattr(localfs, "md5_file", guarded)
    summary = alice.sync()
    assert summary.ok
    assert summary.skipped_files == {"locked.xlsx": "cannot read: Permission denied"}
    assert kinds(summary) == {"fine.csv": ActionKind.UPLOAD}
    assert sorted(world.rows()) == ["fine.csv"]

    monkeypatch.setattr(localfs, "md5_file", real_md5)
    summary = alice.sync()
    assert summary.ok
    assert kinds(summary) == {"locked.xlsx": ActionKind.UPLOAD}
    assert sorted(world.rows()) == ["fine.csv", "locked.xlsx"]


def test_synced_file_that_turns_unreadable_is_not_deleted_anywhere(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = world.site("alice")
    alice.write("locked.xlsx", b"v1\n")
    alice.write("f1.csv", b"1\n")
    assert alice.sync().ok
    alice.write("locked.xlsx", b"v2, saved while locked\n")
    real_md5 = localfs.md5_file

    def guarded(path: Path) -> str:
        if path.name == "locked.xlsx":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_md5(path)

    monkeypatch.setattr(localfs, "md5_file", guarded)
    summary = alice.sync()
    assert "locked.xlsx" in summary.skipped_files
    assert summary.planned == []  # not a delete, nor anything else, while unreadable
    assert world.obj("locked.xlsx").read_bytes() == b"v1\n"
    assert "locked.xlsx" in world.rows()
    assert alice.read("locked.xlsx") == b"v2, saved while locked\n"
    assert not world.obj(".S3/deleted").exists()
    assert alice.base()["locked.xlsx"] == md5(b"v1\n")

    monkeypatch.setattr(localfs, "md5_file", real_md5)
    summary = alice.sync()
    assert summary.ok
    assert kinds(summary) == {"locked.xlsx": ActionKind.UPLOAD}
    assert world.obj("locked.xlsx").read_bytes() == b"v2, saved while locked\n"


def test_unlistable_folder_is_not_planned_as_deletes(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = world.site("alice")
    alice.write("locked/a.csv", b"a\n")
    alice.write("locked/b.csv", b"b\n")
    alice.write("open.csv", b"o\n")
    assert alice.sync().ok
    real_scan = localfs.scan

    def refusing(path: str) -> Iterator[os.DirEntry[str]]:
        if Path(path).name == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return os.scandir(path)

    def scan(root: Path, index: Any, ignored: Callable[[str], bool]) -> localfs.ScanResult:
        return real_scan(root, index, ignored, scandir=refusing)

    monkeypatch.setattr(localfs, "scan", scan)
    summary = alice.sync()
    assert not any(a.kind is ActionKind.DELETE_REMOTE for a in summary.planned)
    assert summary.skipped_files.keys() & {"locked", "locked/a.csv"}
