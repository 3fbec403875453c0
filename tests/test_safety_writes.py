"""Every write names what it replaces (issue 6: defects 1, 6 and the "keep both" part of 11).

- Platform contract: ``Remote.upload`` with ``create_only`` / ``if_match`` refuses to replace
  an object that is not the one planned, single PUT and multipart alike (S3 through a real
  SeaweedFS, and Local).
- Two engines on one remote: a colleague's commit that lands while our batch runs, before our
  PUT of the same file, is never overwritten; every version survives.
- A download never drops a local file that is not the planned version.
- Remote trash keys never equal a key the original package writes (``.S3/deleted/<basename>``).
- "Keep both" leaves the local file at its name until the remote version is safely downloaded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import unique_name
from sites import MiB, Shared, Side, local_shared, md5, s3_shared

from s3syncd import executor, localfs
from s3syncd.engine import Engine
from s3syncd.errors import PreconditionFailedError
from s3syncd.model import ActionKind, LocalFile, Resolution
from s3syncd.remote.base import TRASH_PREFIX, Remote
from s3syncd.remote.localdir import LocalDirRemote

STAMP = "20260101-000000"
NOW = time.mktime((2026, 1, 1, 0, 0, 0, 0, 0, -1))


@pytest.fixture(params=[pytest.param("S3", marks=pytest.mark.s3), "Local"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Shared]:
    if request.param == "S3":
        world = s3_shared(
            request.getfixturevalue("s3_server"),
            request.getfixturevalue("s3_client"),
            request.getfixturevalue("s3_bucket"),
            unique_name("p"),
            tmp_path,
            multipart_threshold=5 * MiB,
            multipart_chunksize=5 * MiB,
        )
    else:
        world = local_shared(tmp_path)
    try:
        yield world
    finally:
        world.close()


def _site(shared: Shared, name: str) -> Side:
    return shared.site(name, clock=lambda: NOW)


# --- contract: upload preconditions ---------------------------------------------------------


@pytest.fixture(params=["small", pytest.param("multipart", marks=pytest.mark.s3)])
def size(request: pytest.FixtureRequest, shared: Shared) -> int:
    """Bytes per test object: below and (on S3) above the 5 MiB multipart threshold."""
    if request.param == "multipart" and shared.kind != "S3":
        pytest.skip("only S3 has a multipart path")
    return 6 * MiB + 7 if request.param == "multipart" else 1000


def _file(tmp: Path, name: str, data: bytes) -> tuple[Path, str]:
    path = tmp / name
    path.write_bytes(data)
    return path, md5(data)


def _content(remote: Remote, key: str, tmp: Path) -> bytes:
    dest = tmp / f"read-{unique_name('x')}"
    remote.download(key, dest)
    return dest.read_bytes()


def test_upload_create_only_refuses_an_existing_object(shared: Shared, size: int) -> None:
    remote = shared.remote()
    theirs, theirs_md5 = _file(shared.tmp, "theirs", b"t" * size)
    ours, ours_md5 = _file(shared.tmp, "ours", b"o" * size)
    created = remote.upload(theirs, "f.bin", theirs_md5, create_only=True)
    assert created.md5 == theirs_md5
    with pytest.raises(PreconditionFailedError):
        remote.upload(ours, "f.bin", ours_md5, create_only=True)
    assert _content(remote, "f.bin", shared.tmp) == b"t" * size
    stat = remote.stat("f.bin")
    assert stat is not None and stat.md5 == theirs_md5


def test_upload_if_match_refuses_a_replaced_object(shared: Shared, size: int) -> None:
    remote = shared.remote()
    v1, v1_md5 = _file(shared.tmp, "v1", b"1" * size)
    v2, v2_md5 = _file(shared.tmp, "v2", b"2" * size)
    ours, ours_md5 = _file(shared.tmp, "ours", b"o" * size)
    first = remote.upload(v1, "f.bin", v1_md5)
    planned = remote.stat("f.bin")
    assert planned is not None and planned.etag
    remote.upload(v2, "f.bin", v2_md5, if_match=planned.etag)  # the colleague's commit
    with pytest.raises(PreconditionFailedError):
        remote.upload(ours, "f.bin", ours_md5, if_match=planned.etag)
    assert _content(remote, "f.bin", shared.tmp) == b"2" * size
    current = remote.stat("f.bin")
    assert current is not None and current.md5 == v2_md5 and current.etag != first.etag
    stored = remote.upload(ours, "f.bin", ours_md5, if_match=current.etag)
    assert stored.md5 == ours_md5
    assert _content(remote, "f.bin", shared.tmp) == b"o" * size


def test_upload_if_match_refuses_a_deleted_object(shared: Shared, size: int) -> None:
    remote = shared.remote()
    v1, v1_md5 = _file(shared.tmp, "v1", b"1" * size)
    etag = remote.upload(v1, "f.bin", v1_md5).etag
    remote.delete("f.bin")
    with pytest.raises(PreconditionFailedError):
        remote.upload(v1, "f.bin", v1_md5, if_match=etag)
    assert remote.stat("f.bin") is None


def test_multipart_upload_keeps_md5_metadata_and_sent_bytes_hash(shared: Shared) -> None:
    if shared.kind != "S3":
        pytest.skip("S3 only")
    remote = shared.remote()
    data = os.urandom(11 * MiB)
    src, digest = _file(shared.tmp, "big", data)
    obj = remote.upload(src, "big.bin", digest, create_only=True)
    assert obj.md5 == digest
    assert "-" in obj.etag  # really multipart
    stat = remote.stat("big.bin")
    assert stat is not None and stat.md5 == digest and stat.size == len(data)
    assert _content(remote, "big.bin", shared.tmp) == data


# --- defect 1: a colleague's commit during our batch ----------------------------------------


def test_colleague_commit_during_our_batch_is_not_overwritten(shared: Shared) -> None:
    alice, bob = _site(shared, "alice"), _site(shared, "bob")
    v0, va, vb = b"v0 base\n", b"alice's edit\n", b"bob's edit, committed first\n"
    alice.write("f.txt", v0)
    alice.write("a_first.txt", b"one\n")
    assert alice.sync().ok
    assert bob.sync().ok
    assert bob.read("f.txt") == v0

    alice.write("a_first.txt", b"two\n")
    alice.write("f.txt", va)
    bob.write("f.txt", vb)
    plan = alice.plan()
    assert [(a.kind, a.path) for a in plan] == [
        (ActionKind.UPLOAD, "a_first.txt"),
        (ActionKind.UPLOAD, "f.txt"),
    ]
    bob_committed: list[bool] = []

    def bob_commits_mid_batch(_n: int) -> None:
        # Alice's batch is running (its stale check is behind it, one upload done):
        # Bob's whole sync lands before Alice's PUT of f.txt.
        if not bob_committed:
            bob_committed.append(bob.sync().ok)

    report = alice.engine.execute([(a, None) for a in plan], progress=bob_commits_mid_batch)
    assert bob_committed == [True]
    by_path = {o.action.path: o for o in report.outcomes}
    assert by_path["a_first.txt"].ok
    assert not by_path["f.txt"].ok and by_path["f.txt"].stale, by_path["f.txt"].message
    assert shared.dump()["f.txt"] == vb  # Bob's commit stands
    assert report.commit_error is None

    # The next passes turn it into a conflict; both versions stay, nothing is overwritten.
    summary = alice.sync()
    assert [a.kind for a in summary.planned if a.path == "f.txt"] == [ActionKind.CONFLICT]
    assert summary.ok
    assert bob.sync().ok
    assert alice.sync().ok
    remote = shared.dump()
    assert remote["f.txt"] == vb
    everywhere = alice.everything() | bob.everything() | {md5(d) for d in remote.values()}
    assert {md5(va), md5(vb)} <= everywhere
    assert bob.read("f.txt") == vb
    assert md5(va) in {md5(d) for k, d in remote.items() if ".conflict-alice-" in k}


def test_upload_planned_absent_never_replaces_a_new_object(shared: Shared) -> None:
    alice, bob = _site(shared, "alice"), _site(shared, "bob")
    alice.write("seed.txt", b"seed\n")
    assert alice.sync().ok
    alice.write("new.txt", b"alice's new file\n")
    plan = alice.plan()
    assert [(a.kind, a.path, a.remote_md5) for a in plan] == [(ActionKind.UPLOAD, "new.txt", None)]
    assert bob.sync().ok
    bob.write("new.txt", b"bob's new file\n")
    assert bob.sync().ok
    ctx = _context(alice.engine)
    out = executor.run(ctx, plan[0])
    assert not out.ok and out.stale, out.message
    assert shared.dump()["new.txt"] == b"bob's new file\n"


def test_keep_local_never_replaces_a_version_it_did_not_plan(shared: Shared) -> None:
    alice, bob = _site(shared, "alice"), _site(shared, "bob")
    alice.write("f.txt", b"base\n")
    assert alice.sync().ok
    assert bob.sync().ok
    alice.write("f.txt", b"alice\n")
    bob.write("f.txt", b"bob 1\n")
    assert bob.sync().ok
    plan = alice.plan()
    assert [a.kind for a in plan] == [ActionKind.CONFLICT]
    bob.write("f.txt", b"bob 2, after alice planned\n")
    assert bob.sync().ok
    out = executor.run(_context(alice.engine), plan[0], Resolution.LOCAL)
    assert not out.ok and out.stale, out.message
    assert shared.dump()["f.txt"] == b"bob 2, after alice planned\n"


def test_remote_delete_never_deletes_a_version_it_did_not_plan(shared: Shared) -> None:
    alice, bob = _site(shared, "alice"), _site(shared, "bob")
    alice.write("f.txt", b"base\n")
    for n in range(3):  # so that one delete stays under the mass-delete brake
        alice.write(f"keep{n}.txt", b"keep\n")
    assert alice.sync().ok
    assert bob.sync().ok
    (alice.folder / "f.txt").unlink()
    plan = alice.plan()
    assert [a.kind for a in plan] == [ActionKind.DELETE_REMOTE]
    bob.write("f.txt", b"bob's new version, after alice planned\n")
    assert bob.sync().ok
    out = executor.run(_context(alice.engine), plan[0])
    assert not out.ok and out.stale, out.message
    assert shared.dump()["f.txt"] == b"bob's new version, after alice planned\n"


def test_conditional_delete_contract(shared: Shared) -> None:
    remote = shared.remote()
    src, digest = _file(shared.tmp, "v1", b"v1")
    etag = remote.upload(src, "f.bin", digest).etag
    src2, digest2 = _file(shared.tmp, "v2", b"v2")
    remote.upload(src2, "f.bin", digest2, if_match=etag)
    with pytest.raises(PreconditionFailedError):
        remote.delete("f.bin", if_match=etag)
    current = remote.stat("f.bin")
    assert current is not None and current.md5 == digest2
    remote.delete("f.bin", if_match=current.etag)
    assert remote.stat("f.bin") is None
    remote.delete("f.bin", if_match=current.etag)  # already gone: not an error


class _BlindUploads(LocalDirRemote):
    """A Local remote that ignores upload preconditions, like a server that does not honour
    If-Match (the start-up probe tells the engine)."""

    def upload(self, src: Path, key: str, md5: str, progress: Any = None, **_: Any) -> Any:
        return super().upload(src, key, md5, progress)

    def supports_conditional_writes(self) -> bool:
        return False


def test_without_server_preconditions_the_replaced_object_is_copied_aside(
    tmp_path: Path,
) -> None:
    root = tmp_path / "remote"
    root.mkdir()
    values = {"platform": "Local", "local.remote_path": str(root)}
    shared = Shared("Local", tmp_path, lambda: _BlindUploads(root), values, lambda: {}, [])
    alice = _site(shared, "alice")
    alice.write("f.txt", b"v1\n")
    assert alice.sync().ok
    assert alice.engine.conditional_writes is False
    alice.write("f.txt", b"v2\n")
    assert alice.sync().ok
    assert (root / "f.txt").read_bytes() == b"v2\n"
    trash = [p for p in (root / ".S3/deleted").rglob("*") if p.is_file()]
    assert [p.read_bytes() for p in trash] == [b"v1\n"]


def _context(engine: Engine) -> executor.Context:
    with engine.lock:
        known = dict(engine.manifest.rows) if engine.manifest else {}
    return executor.Context(engine.state, engine.remote, engine.user, lambda: STAMP, known)


# --- defect 1: downloads never drop a local file that is not the planned one ----------------


def test_download_over_an_unseen_local_edit_keeps_it(shared: Shared) -> None:
    alice, bob = _site(shared, "alice"), _site(shared, "bob")
    alice.write("f.txt", b"version 0\n")
    assert alice.sync().ok
    assert bob.sync().ok
    bob.write("f.txt", b"bob's version 1\n")
    assert bob.sync().ok
    plan = alice.plan()
    assert [a.kind for a in plan] == [ActionKind.DOWNLOAD]
    # Alice saves an edit of the same size with the same mtime after the plan (a tool that
    # keeps timestamps, or a coarse clock): size and mtime cannot tell it from the base.
    target = alice.folder / "f.txt"
    st = target.stat()
    target.write_bytes(b"VERSION 0\n")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    alice.engine.execute([(plan[0], None)])
    kept = [p for p in alice.folder.rglob("*") if p.is_file() and p.read_bytes() == b"VERSION 0\n"]
    assert kept, "alice's edit was overwritten by the download"
    # The refusal taught the index the real content: the next pass sees a conflict, not
    # the same download again.
    assert [a.kind for a in alice.plan()] == [ActionKind.CONFLICT]


# --- defect 6: remote trash keys -------------------------------------------------------------


def test_trash_keys_never_equal_what_the_original_writes(shared: Shared) -> None:
    alice = _site(shared, "alice")
    alice.write("report.csv", b"first report\n")
    alice.write("sub/report.csv", b"sub report\n")
    for n in range(3):  # so that two deletes stay under the mass-delete brake
        alice.write(f"keep{n}.txt", f"keep {n}\n".encode())
    assert alice.sync().ok
    (alice.folder / "report.csv").unlink()
    assert alice.sync().ok
    remote = shared.dump()
    trashed = {k: v for k, v in remote.items() if k.startswith(TRASH_PREFIX)}
    assert trashed == {f"{TRASH_PREFIX}report.csv~{STAMP}-alice": b"first report\n"}
    # The original package deletes sub/report.csv by writing .S3/deleted/report.csv blindly.
    shared.remote().write_blob(f"{TRASH_PREFIX}report.csv", b"old client's trash\n")
    # Same file deleted again within the same second: a new suffix, the first copy stays.
    alice.write("report.csv", b"second report\n")
    assert alice.sync().ok
    (alice.folder / "report.csv").unlink()
    (alice.folder / "sub/report.csv").unlink()
    assert alice.sync().ok
    trashed = {k: v for k, v in shared.dump().items() if k.startswith(TRASH_PREFIX)}
    assert trashed == {
        f"{TRASH_PREFIX}report.csv": b"old client's trash\n",
        f"{TRASH_PREFIX}report.csv~{STAMP}-alice": b"first report\n",
        f"{TRASH_PREFIX}report.csv~{STAMP}-alice-2": b"second report\n",
        f"{TRASH_PREFIX}sub/report.csv~{STAMP}-alice": b"sub report\n",
    }


# --- defect 11 (part): "keep both" ---------------------------------------------------------


def test_keep_both_keeps_the_local_file_until_the_remote_version_is_safe(
    shared: Shared,
) -> None:
    alice, bob = _site(shared, "alice"), _site(shared, "bob")
    alice.write("f.txt", b"base\n")
    assert alice.sync().ok
    assert bob.sync().ok
    alice.write("f.txt", b"alice\n")
    bob.write("f.txt", b"bob\n")
    assert bob.sync().ok
    plan = alice.plan()
    assert [a.kind for a in plan] == [ActionKind.CONFLICT]
    shared.remote().delete("f.txt")  # the download will fail
    report = alice.engine.execute([(plan[0], Resolution.BOTH)])
    assert not report.outcomes[0].ok
    assert alice.read("f.txt") == b"alice\n"
    assert sorted(p.name for p in alice.folder.iterdir() if p.is_file()) == ["f.txt"]


def test_install_keeps_a_file_written_to_during_the_swap_in_the_trash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, trash = tmp_path / "Data", tmp_path / "Data/.S3/trash"
    (root / ".S3/tmp").mkdir(parents=True)
    target = root / "f.txt"
    target.write_bytes(b"base\n")
    st = target.stat()
    expected = LocalFile("f.txt", st.st_size, st.st_mtime_ns, md5(b"base\n"))
    download = root / ".S3/tmp/dl.part"
    download.write_bytes(b"remote\n")
    real_replace = os.replace

    def save_then_replace(src: Any, dst: Any) -> None:
        if Path(dst) == target:
            with open(target, "ab") as fh:  # the user's editor writes in place, just then
                fh.write(b"late edit\n")
        real_replace(src, dst)

    monkeypatch.setattr(localfs.os, "replace", save_then_replace)
    got = localfs.install(root, "f.txt", download, md5(b"remote\n"), expected, None, trash=trash)
    monkeypatch.undo()
    assert target.read_bytes() == b"remote\n" and got.md5 == md5(b"remote\n")
    kept = [p.read_bytes() for p in trash.rglob("*") if p.is_file()]
    assert kept == [b"base\nlate edit\n"]
    assert sorted(p.name for p in (root / ".S3/tmp").iterdir()) == []
