"""What 'trash' lists and how 'restore' writes, on the Local platform (no daemon)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from s3syncd import recovery
from s3syncd.errors import AuthError, SyncError
from s3syncd.model import Row
from s3syncd.recovery import Origin
from s3syncd.remote.base import ObjectVersion
from s3syncd.remote.localdir import LocalDirRemote

if TYPE_CHECKING:
    from s3syncd.remote.s3 import S3Remote


def test_trash_keys_of_ours_and_of_the_original_package() -> None:
    path, user, when = recovery.parse_trash_key(".S3/deleted/a/b.csv~20260102-030405-ann")
    assert (path, user) == ("a/b.csv", "ann")
    assert when == time.mktime((2026, 1, 2, 3, 4, 5, 0, 0, -1))
    assert recovery.parse_trash_key(".S3/deleted/x~20260102-030405-bob-smith-3")[:2] == (
        "x",
        "bob-smith",
    )
    # A tilde in a name is no tag unless a stamp follows.
    assert recovery.parse_trash_key(".S3/deleted/report~draft.csv") == (
        "report~draft.csv",
        "",
        None,
    )
    assert recovery.parse_trash_key(".S3/deleted/report.csv") == ("report.csv", "", None)


@pytest.fixture
def remote(tmp_path: Path) -> LocalDirRemote:
    root = tmp_path / "share"
    (root / ".S3" / "deleted" / "d").mkdir(parents=True)
    (root / ".S3" / "deleted" / "d" / "r.csv~20260101-000000-ann").write_text("old\n")
    (root / ".S3" / "deleted" / "d" / "r.csv~20260301-000000-bob").write_text("newer\n")
    (root / ".S3" / "deleted" / "legacy.txt").write_text("from s3synchrony\n")
    return LocalDirRemote(root)


def test_catalogue_lists_both_trashes_newest_first_with_who_and_when(
    tmp_path: Path, remote: LocalDirRemote
) -> None:
    trash = tmp_path / "Data" / ".S3" / "trash"
    (trash / "20260201-120000" / "d").mkdir(parents=True)
    (trash / "20260201-120000" / "d" / "r.csv").write_text("local copy\n")
    tomb = {"old/legacy.txt": Row("old/legacy.txt", "cy", "2025-05-05 05:05:05", "f" * 32)}
    items = recovery.catalogue(remote, trash, tomb)
    got = [(n, i.path, i.origin, i.deleted_by) for n, i in recovery.numbered(items)]
    assert got == [
        (1, "d/r.csv", Origin.REMOTE_TRASH, "bob"),
        (2, "d/r.csv", Origin.LOCAL_TRASH, ""),
        (3, "d/r.csv", Origin.REMOTE_TRASH, "ann"),
        (1, "legacy.txt", Origin.REMOTE_TRASH, "cy"),  # who and when from the tombstone
    ]
    assert items[-1].to_json()["deleted_at"] == "2025-05-05 05:05:05"
    assert [i.path for i in recovery.catalogue(remote, trash, {}, "d/r.csv")] == ["d/r.csv"] * 3


def test_restore_writes_beside_an_existing_file_or_over_it_with_force(
    tmp_path: Path, remote: LocalDirRemote
) -> None:
    root = tmp_path / "Data"
    (root / "d").mkdir(parents=True)
    trash, tmp = root / ".S3" / "trash", root / ".S3" / "tmp"
    items = recovery.catalogue(remote, trash, {}, "d/r.csv")
    newest = recovery.pick(items, "d/r.csv", 1)

    def restore(force: bool) -> str:
        return recovery.restore(
            newest, remote, root, tmp, trash, "d/r.csv", force=force, stamp="20260401-000000"
        )

    assert restore(False) == "d/r.csv"
    (root / "d" / "r.csv").write_text("mine\n")
    assert restore(False) == "d/r.restored-20260401-000000.csv"
    assert restore(False) == "d/r.restored-20260401-000000-2.csv"
    assert (root / "d" / "r.csv").read_text() == "mine\n"
    assert restore(True) == "d/r.csv"
    assert (root / "d" / "r.csv").read_text() == "newer\n"
    assert (trash / "20260401-000000" / "d" / "r.csv").read_text() == "mine\n"
    assert list(tmp.iterdir()) == []  # no temp file left behind
    with pytest.raises(SyncError, match=r"--version 1\.\.2"):
        recovery.pick(items, "d/r.csv", 4)
    with pytest.raises(SyncError, match="nothing to restore"):
        recovery.pick(items, "elsewhere", 1)


@pytest.mark.s3
def test_an_unversioned_bucket_has_no_versions_and_one_request_tells(
    s3_remote: S3Remote,
) -> None:
    s3_remote.write_blob("a.txt", b"x")
    s3_remote.write_blob("a.txt", b"y")
    before = s3_remote.request_count()
    assert s3_remote.list_versions("") == ()
    assert s3_remote.request_count() == before + 1
    assert recovery.object_versions(s3_remote, "a.txt") == []


class NoVersionRights(LocalDirRemote):
    def list_versions(self, under: str = "") -> tuple[ObjectVersion, ...]:
        raise AuthError("access denied to ListObjectVersions")


def test_no_right_to_list_versions_still_lists_the_trash(
    tmp_path: Path, remote: LocalDirRemote
) -> None:
    denied = NoVersionRights(remote.root)
    items = recovery.catalogue(denied, tmp_path / "trash", {})
    assert len(items) == 3
