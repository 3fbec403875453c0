"""Moves (issue 7, item 6): a local rename is a server-side copy plus a soft delete.

- Engine level, on S3 (the real SeaweedFS) and Local: renaming a folder of 50 files
  uploads nothing, does not trip the mass-delete brake, converges on a second site, and
  keeps every old object recoverable under ``.S3/deleted/``.
- A move planned over facts that changed (the old object rewritten by a colleague, the
  new name taken) is stale: nothing is copied over anything, no version is lost.
- The queue persists moves; the policy runs one unasked only with upload + delete_remote.
- The real daemon: ``s3syncctl pending`` shows ``move  old -> new``, ``--json`` gives the
  ``source``, and ``approve`` carries it out.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import unique_name
from polling import wait_until
from sites import MiB, Shared, Side, local_shared, md5, s3_shared
from test_daemon_local import daemon, run_ctl  # noqa: F401 - the fixture is used by name

from s3syncd import approvals, tables
from s3syncd.config import Policy
from s3syncd.model import ActionKind, RemoteObject, Row
from s3syncd.remote.base import MANIFEST_KEY, TOMBSTONES_KEY, TRASH_PREFIX, ProgressCallback

NOW = time.mktime((2026, 1, 1, 0, 0, 0, 0, 0, -1))
FILES = 50


@pytest.fixture(params=[pytest.param("S3", marks=pytest.mark.s3), "Local"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Shared]:
    if request.param == "S3":
        world = s3_shared(
            request.getfixturevalue("s3_server"),
            request.getfixturevalue("s3_client"),
            request.getfixturevalue("s3_bucket"),
            unique_name("mv"),
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


class Uploads:
    """Counts what a site's remote is asked to upload (data objects, not the manifest)."""

    def __init__(self, side: Side) -> None:
        self.calls: list[str] = []
        self.bytes = 0
        remote = side.engine.remote
        real = remote.upload

        def counting(
            src: Path,
            key: str,
            md5_: str,
            progress: ProgressCallback | None = None,
            **kw: Any,
        ) -> RemoteObject:
            self.calls.append(key)
            self.bytes += src.stat().st_size
            return real(src, key, md5_, progress, **kw)

        remote.upload = counting  # type: ignore[method-assign]


def content(i: int) -> bytes:
    # Files 0 and 1 are identical: a renamed folder may hold duplicates.
    return b"same\n" * 800 if i < 2 else f"file {i}\n".encode() * (100 + i)


def populate(side: Side, folder: str) -> dict[str, bytes]:
    files = {f"{folder}/f{i:02}.txt": content(i) for i in range(FILES)}
    for rel, data in files.items():
        side.write(rel, data)
    return files


def rows(shared: Shared, key: str) -> dict[str, Row]:
    return tables.parse_table(shared.dump()[key], key)


def test_a_folder_rename_moves_on_the_remote_and_uploads_nothing(shared: Shared) -> None:
    alice, bob = shared.site("alice", clock=lambda: NOW), shared.site("bob", clock=lambda: NOW)
    files = populate(alice, "old")
    assert alice.sync().ok
    assert bob.sync().ok
    assert set(bob.files()) >= set(files)

    os.rename(alice.folder / "old", alice.folder / "new")
    planned = alice.plan()
    assert {a.kind for a in planned} == {ActionKind.MOVE}
    assert sorted((a.source.path, a.path) for a in planned if a.source) == [
        (p, p.replace("old/", "new/", 1)) for p in sorted(files)
    ]
    total = max(len(alice.engine.base), len(alice.engine.index))
    assert not approvals.delete_brake(planned, total, Policy(frozenset())).engaged

    uploads = Uploads(alice)
    summary = alice.sync()
    assert summary.ok, summary.failed
    assert len(summary.done) == FILES
    assert (uploads.calls, uploads.bytes) == ([], 0)

    dump = shared.dump()
    moved = {p.replace("old/", "new/", 1): data for p, data in files.items()}
    for key, data in moved.items():
        assert dump[key] == data
    assert not any(k.startswith("old/") for k in dump)
    # Every old object is recoverable, under its full path, never at the original's key.
    trash = {k: v for k, v in dump.items() if k.startswith(TRASH_PREFIX + "old/")}
    assert len(trash) == FILES
    for path, data in files.items():
        (kept,) = [v for k, v in trash.items() if k.startswith(f"{TRASH_PREFIX}{path}~")]
        assert kept == data
    manifest = rows(shared, MANIFEST_KEY)
    assert set(manifest) == set(moved)
    assert {r.edited_by for r in manifest.values()} == {"alice"}
    assert all(manifest[p].checksum == md5(d) for p, d in moved.items())
    assert set(rows(shared, TOMBSTONES_KEY)) == set(files)

    # Converged: nothing left to do here, and the colleague follows the rename. There it
    # is downloads plus local deletes, which the brake holds until approved explicitly.
    assert alice.plan() == []
    summary = bob.sync()
    assert summary.ok and summary.held
    held = [a for a in bob.plan() if a.kind is ActionKind.DELETE_LOCAL]
    assert len(held) == FILES
    assert not bob.engine.execute([(a, None) for a in held]).failed
    bob_files = {p: d for p, d in bob.files().items() if not p.startswith(".S3/")}
    assert bob_files == moved
    assert bob.plan() == []


def test_a_move_over_a_colleagues_newer_version_is_stale_and_loses_nothing(
    shared: Shared,
) -> None:
    alice, bob = shared.site("alice", clock=lambda: NOW), shared.site("bob", clock=lambda: NOW)
    alice.write("old/a.txt", b"first")
    alice.write("old/b.txt", b"second")
    assert alice.sync().ok and bob.sync().ok
    os.rename(alice.folder / "old", alice.folder / "new")
    planned = {a.path: a for a in alice.plan()}
    assert {a.kind for a in planned.values()} == {ActionKind.MOVE}

    # Before alice's moves run, bob edits old/a.txt and someone creates new/b.txt.
    bob.write("old/a.txt", b"bob's newer version")
    assert bob.sync().ok
    bob.write("new/b.txt", b"bob's own new/b.txt")
    assert bob.sync().ok

    report = alice.engine.execute([(a, None) for a in planned.values()])
    assert not report.done
    assert all(o.stale for o in report.outcomes)
    dump = shared.dump()
    assert dump["old/a.txt"] == b"bob's newer version"
    assert dump["new/b.txt"] == b"bob's own new/b.txt"
    assert dump["old/b.txt"] == b"second"
    assert "new/a.txt" not in dump

    # The re-plan sees what happened: no move, and nothing either side holds is lost.
    kinds = {a.path: a.kind for a in alice.plan()}
    assert ActionKind.MOVE not in kinds.values()
    assert kinds["old/a.txt"] is ActionKind.CONFLICT
    assert kinds["new/b.txt"] is ActionKind.CONFLICT


def test_the_queue_keeps_a_move_and_the_policy_needs_upload_and_delete(shared: Shared) -> None:
    alice = shared.site("alice", clock=lambda: NOW)
    alice.write("old/a.txt", b"content")
    assert alice.sync().ok
    os.rename(alice.folder / "old", alice.folder / "new")
    (move,) = alice.plan()
    assert (
        approvals.action_from_json(json.loads(json.dumps(approvals.action_to_json(move)))) == move
    )

    brake = approvals.delete_brake([move], 1, Policy(frozenset()))
    assert not brake.engaged
    for kinds, expected in [
        ({ActionKind.UPLOAD}, False),
        ({ActionKind.DELETE_REMOTE}, False),
        ({ActionKind.UPLOAD, ActionKind.DELETE_REMOTE}, True),
    ]:
        assert approvals.auto_approved(move, Policy(frozenset(kinds)), brake) is expected


@pytest.mark.daemon
def test_pending_shows_a_move_and_approve_runs_it(
    daemon: tuple[Path, Path],  # noqa: F811 - the fixture imported above
) -> None:
    cfg, remote = daemon
    data = cfg.parent / "Data"
    (data / "old").mkdir()
    (data / "old" / "a.txt").write_bytes(b"a" * 4096)
    assert run_ctl(cfg, "sync")[0] == 0
    code, out = run_ctl(cfg, "approve", "--all", "--kind", "upload")
    assert code == 0, out
    wait_until(lambda: (remote / "old" / "a.txt").exists(), what="the upload")
    wait_until(lambda: run_ctl(cfg, "pending", "--json")[1].strip() == "[]", what="no pending")

    os.rename(data / "old", data / "new")

    def moves() -> list[dict[str, Any]]:
        run_ctl(cfg, "sync")
        code, out = run_ctl(cfg, "pending", "--json")
        assert code == 0, out
        return [it for it in json.loads(out) if it["kind"] == "move"]

    (item,) = wait_until(moves, what="the move to be queued")
    assert (item["source"], item["path"], item["size"]) == ("old/a.txt", "new/a.txt", 4096)
    code, out = run_ctl(cfg, "pending")
    assert code == 0
    (line,) = [ln for ln in out.splitlines() if ln.startswith(item["id"])]
    assert "move" in line and "old/a.txt -> new/a.txt" in line
    assert len(json.loads(run_ctl(cfg, "pending", "--json")[1])) == 1  # the move alone

    code, out = run_ctl(cfg, "approve", item["id"])
    assert code == 0, out
    wait_until(lambda: (remote / "new" / "a.txt").exists(), what="the move")
    wait_until(lambda: not (remote / "old" / "a.txt").exists(), what="the old name's delete")
    assert (remote / "new" / "a.txt").read_bytes() == b"a" * 4096
    assert list((remote / ".S3" / "deleted" / "old").glob("a.txt~*"))
