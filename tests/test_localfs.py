"""The local side (s3syncd.localfs): scanning with a hash cache, and safe changes to files."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from s3syncd import localfs
from s3syncd.errors import StaleActionError
from s3syncd.model import LocalFile

STAMP = "20260101-000000"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def no_ignores(_rel: str) -> bool:
    return False


def put(root: Path, rel: str, data: bytes, mtime_ns: int | None = None) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def local_file(root: Path, rel: str) -> LocalFile:
    path = root / rel
    st = path.stat()
    return LocalFile(rel, st.st_size, st.st_mtime_ns, md5(path.read_bytes()))


class CountingHasher:
    """Stands in for ``localfs.md5_file`` and records which files were read."""

    def __init__(self) -> None:
        self.real = localfs.md5_file
        self.calls: list[str] = []

    def __call__(self, path: Path) -> str:
        self.calls.append(path.name)
        return self.real(path)


@pytest.fixture
def hasher(monkeypatch: pytest.MonkeyPatch) -> CountingHasher:
    counting = CountingHasher()
    monkeypatch.setattr(localfs, "md5_file", counting)
    return counting


@pytest.fixture
def root(tmp_path: Path) -> Path:
    data = tmp_path / "Data"
    data.mkdir()
    return data


# --- scan and the hash cache -------------------------------------------------------------


def test_scan_hashes_every_regular_file_once(root: Path, hasher: CountingHasher) -> None:
    put(root, "a.csv", b"a")
    put(root, "sub/deeper/b.bin", b"\x00" * 10)
    put(root, "empty.txt", b"")
    result = localfs.scan(root, {}, no_ignores)
    assert result.files == {
        "a.csv": local_file(root, "a.csv"),
        "sub/deeper/b.bin": local_file(root, "sub/deeper/b.bin"),
        "empty.txt": local_file(root, "empty.txt"),
    }
    assert result.files["empty.txt"].md5 == md5(b"")
    assert result.hashed == 3
    assert sorted(hasher.calls) == ["a.csv", "b.bin", "empty.txt"]
    assert result.skipped == {}


def test_scan_reuses_cached_md5_while_size_and_mtime_are_unchanged(
    root: Path, hasher: CountingHasher
) -> None:
    put(root, "a.csv", b"alpha", mtime_ns=1_600_000_000_000_000_000)
    put(root, "b.csv", b"beta", mtime_ns=1_600_000_000_000_000_000)
    first = localfs.scan(root, {}, no_ignores)
    hasher.calls.clear()

    second = localfs.scan(root, first.files, no_ignores)
    assert hasher.calls == []
    assert second.hashed == 0
    assert second.files == first.files

    # A lying cache entry proves the MD5 really came from the cache, not the disk.
    lying = dict(first.files)
    lying["a.csv"] = LocalFile("a.csv", 5, 1_600_000_000_000_000_000, "cached")
    assert localfs.scan(root, lying, no_ignores).files["a.csv"].md5 == "cached"
    assert hasher.calls == []


def test_scan_rehashes_when_only_the_mtime_changes(root: Path, hasher: CountingHasher) -> None:
    put(root, "a.csv", b"alpha", mtime_ns=1_600_000_000_000_000_000)
    first = localfs.scan(root, {}, no_ignores)
    hasher.calls.clear()
    os.utime(root / "a.csv", ns=(1_600_000_000_000_000_001,) * 2)  # 1 ns later, same bytes
    second = localfs.scan(root, first.files, no_ignores)
    assert hasher.calls == ["a.csv"]
    assert second.hashed == 1
    assert second.files["a.csv"].mtime_ns == 1_600_000_000_000_000_001
    assert second.files["a.csv"].md5 == md5(b"alpha")


def test_scan_rehashes_when_only_the_size_changes(root: Path, hasher: CountingHasher) -> None:
    put(root, "a.csv", b"alpha", mtime_ns=1_600_000_000_000_000_000)
    first = localfs.scan(root, {}, no_ignores)
    hasher.calls.clear()
    put(root, "a.csv", b"alpha and more", mtime_ns=1_600_000_000_000_000_000)  # mtime kept
    second = localfs.scan(root, first.files, no_ignores)
    assert hasher.calls == ["a.csv"]
    assert second.files["a.csv"] == local_file(root, "a.csv")
    assert second.files["a.csv"].md5 == md5(b"alpha and more")


def test_scan_drops_files_that_are_gone(root: Path) -> None:
    put(root, "a.csv", b"a")
    put(root, "b.csv", b"b")
    first = localfs.scan(root, {}, no_ignores)
    (root / "b.csv").unlink()
    assert set(localfs.scan(root, first.files, no_ignores).files) == {"a.csv"}


def test_scan_skips_the_state_folder_symlinks_and_legacy_names(
    root: Path, tmp_path: Path, hasher: CountingHasher
) -> None:
    put(root, "real.csv", b"r")
    put(root, ".S3/versions.csv", b"state, never scanned")
    put(root, ".S3/tmp/part", b"partial download")
    outside = put(tmp_path, "outside/secret.txt", b"outside the data folder")
    (root / "link.txt").symlink_to(outside)
    (root / "linkdir").symlink_to(outside.parent, target_is_directory=True)
    (root / "dangling").symlink_to(tmp_path / "missing")
    put(root, "sub/.S3/x.csv", b"the original skips any path containing .S3")
    put(root, "run.S3.csv", b"likewise")

    result = localfs.scan(root, {}, no_ignores)
    assert set(result.files) == {"real.csv"}
    assert hasher.calls == ["real.csv"]  # nothing else was even read
    assert result.skipped.keys() == {
        "link.txt",
        "linkdir",
        "dangling",
        "sub/.S3/x.csv",
        "run.S3.csv",
    }
    assert "symbolic link" in result.skipped["link.txt"]
    assert "symbolic link" in result.skipped["linkdir"]
    assert ".S3" in result.skipped["run.S3.csv"]
    assert not any(p.startswith(".S3") for p in result.skipped)


def test_scan_leaves_ignored_files_out_without_reporting_them(root: Path) -> None:
    put(root, "keep.csv", b"k")
    put(root, "scratch/x.tmp", b"x")

    def ignored(rel: str) -> bool:
        return rel.endswith(".tmp")

    result = localfs.scan(root, {}, ignored)
    assert set(result.files) == {"keep.csv"}
    assert result.skipped == {}


def test_examine_skips_a_file_that_changes_while_being_read(root: Path) -> None:
    put(root, "growing.log", b"line 1\n")
    real = os.lstat(root / "growing.log")
    seen = 0

    def lstat(path: str) -> os.stat_result:
        nonlocal seen
        seen += 1
        st = os.lstat(path)
        if seen == 1:
            return st
        # the second look (after hashing) sees a bigger file
        fields = list(st)
        fields[6] = st.st_size + 100  # st_size
        return os.stat_result(fields)

    found, why = localfs.examine(root, "growing.log", {}, no_ignores, lstat)
    assert found is None
    assert why is not None and "changing" in why
    assert os.lstat(root / "growing.log").st_size == real.st_size


def test_examine_reports_an_unreadable_file(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    put(root, "locked.xlsx", b"x")

    def refuse(path: Path) -> str:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(localfs, "md5_file", refuse)
    assert localfs.examine(root, "locked.xlsx", {}, no_ignores) == (
        None,
        "cannot read: Permission denied",
    )
    assert localfs.examine(root, "absent.csv", {}, no_ignores) == (None, None)


# --- rescan_paths (the watcher's dirty paths) ---------------------------------------------


def test_rescan_a_changed_file_and_a_new_file(root: Path, hasher: CountingHasher) -> None:
    put(root, "a.csv", b"a", mtime_ns=1_600_000_000_000_000_000)
    put(root, "b.csv", b"b")
    files = localfs.scan(root, {}, no_ignores).files
    hasher.calls.clear()
    put(root, "a.csv", b"a, edited")
    put(root, "new.csv", b"n")

    out, skipped = localfs.rescan_paths(root, ["a.csv", "new.csv"], files, no_ignores)
    assert skipped == {}
    assert out == {
        "a.csv": local_file(root, "a.csv"),
        "b.csv": files["b.csv"],
        "new.csv": local_file(root, "new.csv"),
    }
    assert sorted(hasher.calls) == ["a.csv", "new.csv"]  # b.csv was not looked at
    assert files["a.csv"].md5 == md5(b"a")  # the input table is not mutated


def test_rescan_a_deleted_file(root: Path) -> None:
    put(root, "a.csv", b"a")
    put(root, "b.csv", b"b")
    files = localfs.scan(root, {}, no_ignores).files
    (root / "a.csv").unlink()
    out, _ = localfs.rescan_paths(root, ["a.csv"], files, no_ignores)
    assert set(out) == {"b.csv"}


def test_rescan_a_new_directory(root: Path, hasher: CountingHasher) -> None:
    put(root, "top.csv", b"t")
    files = localfs.scan(root, {}, no_ignores).files
    hasher.calls.clear()
    put(root, "new/one.csv", b"1")
    put(root, "new/deeper/two.csv", b"2")
    put(root, "new/deeper/skip.tmp", b"ignored below the folder too")
    (root / "new/link").symlink_to(root / "top.csv")

    def ignored(rel: str) -> bool:
        return rel == "new/deeper/skip.tmp"

    out, skipped = localfs.rescan_paths(root, ["new"], files, ignored)
    assert out == {
        "top.csv": files["top.csv"],
        "new/one.csv": local_file(root, "new/one.csv"),
        "new/deeper/two.csv": local_file(root, "new/deeper/two.csv"),
    }
    assert out["new/deeper/two.csv"].path == "new/deeper/two.csv"
    assert list(skipped) == ["new/link"]
    assert sorted(hasher.calls) == ["one.csv", "two.csv"]


def test_rescan_an_unchanged_directory_reuses_the_cache(root: Path, hasher: CountingHasher) -> None:
    put(root, "d/a.csv", b"a")
    put(root, "d/b.csv", b"b")
    files = localfs.scan(root, {}, no_ignores).files
    hasher.calls.clear()
    out, _ = localfs.rescan_paths(root, ["d"], files, no_ignores)
    assert out == files
    assert hasher.calls == []


def test_rescan_a_deleted_directory(root: Path) -> None:
    put(root, "gone/a.csv", b"a")
    put(root, "gone/sub/b.csv", b"b")
    put(root, "gone2.csv", b"a sibling whose name starts the same")
    put(root, "kept/c.csv", b"c")
    files = localfs.scan(root, {}, no_ignores).files
    for p in ("gone/sub/b.csv", "gone/a.csv"):
        (root / p).unlink()
    (root / "gone/sub").rmdir()
    (root / "gone").rmdir()

    out, skipped = localfs.rescan_paths(root, ["gone"], files, no_ignores)
    assert set(out) == {"gone2.csv", "kept/c.csv"}
    assert skipped == {}


def test_rescan_a_directory_applies_the_same_rules_as_a_full_scan(root: Path) -> None:
    """Names are judged by their whole relative path, not the part below the folder."""
    put(root, "run.S3/f.csv", b"the original cannot sync this")
    put(root, "new/.S3/g.csv", b"nor this")
    put(root, "new/ok.csv", b"fine")
    (root / "new/link").symlink_to(root / "new/ok.csv")
    full = localfs.scan(root, {}, no_ignores)

    out, skipped = localfs.rescan_paths(root, ["run.S3", "new"], {}, no_ignores)
    assert out == full.files
    assert set(out) == {"new/ok.csv"}
    assert skipped == full.skipped
    assert set(skipped) == {"run.S3/f.csv", "new/.S3/g.csv", "new/link"}


def test_rescan_a_symlinked_directory_is_skipped(root: Path, tmp_path: Path) -> None:
    put(tmp_path, "elsewhere/x.csv", b"outside")
    (root / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    out, skipped = localfs.rescan_paths(root, ["linked"], {}, no_ignores)
    assert out == {}
    assert "symbolic link" in skipped["linked"]


def test_rescan_ignores_the_state_folder(root: Path) -> None:
    put(root, "a.csv", b"a")
    put(root, ".S3/versions.csv", b"state")
    files = localfs.scan(root, {}, no_ignores).files
    out, skipped = localfs.rescan_paths(root, [".S3", ".S3/versions.csv"], files, no_ignores)
    assert out == files
    assert skipped == {}


# --- names that never overwrite ----------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "user", "expected"),
    [
        ("a/b.csv", "user", f"a/b.conflict-user-{STAMP}.csv"),
        ("b.csv", "user", f"b.conflict-user-{STAMP}.csv"),
        ("README", "user", f"README.conflict-user-{STAMP}"),
        ("dir.v2/notes", "user", f"dir.v2/notes.conflict-user-{STAMP}"),
        (".env", "user", f".env.conflict-user-{STAMP}"),
        ("x/.gitignore", "user", f"x/.gitignore.conflict-user-{STAMP}"),
        ("a/b.tar.gz", "user", f"a/b.tar.conflict-user-{STAMP}.gz"),
        ("b.csv", "Jane Doe/../x", f"b.conflict-Jane_Doe____x-{STAMP}.csv"),
        ("b.csv", "Zoë", f"b.conflict-Zoë-{STAMP}.csv"),
        ("b.csv", "", f"b.conflict-user-{STAMP}.csv"),
    ],
)
def test_conflict_name(rel: str, user: str, expected: str) -> None:
    name = localfs.conflict_name(rel, user, STAMP)
    assert name == expected
    # the conflict copy stays in the same folder and is a single path component there
    assert name.rpartition("/")[0] == rel.rpartition("/")[0]


def test_unique_path_never_returns_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "report.csv"
    assert localfs.unique_path(target) == target
    target.write_bytes(b"1")
    (tmp_path / "report-2.csv").write_bytes(b"2")
    assert localfs.unique_path(target) == tmp_path / "report-3.csv"
    noext = tmp_path / "README"
    noext.write_bytes(b"r")
    assert localfs.unique_path(noext) == tmp_path / "README-2"
    folder = tmp_path / "taken"
    folder.mkdir()  # a folder is in the way too
    assert localfs.unique_path(folder) == tmp_path / "taken-2"


def test_move_to_trash_keeps_every_copy(root: Path) -> None:
    trash = root / ".S3/trash"
    put(root, "a/b.csv", b"first")
    first = localfs.move_to_trash(root, "a/b.csv", trash, STAMP)
    put(root, "a/b.csv", b"second")
    second = localfs.move_to_trash(root, "a/b.csv", trash, STAMP)
    assert first == trash / STAMP / "a/b.csv"
    assert second == trash / STAMP / "a/b-2.csv"
    assert first.read_bytes() == b"first"
    assert second.read_bytes() == b"second"
    assert not (root / "a/b.csv").exists()


def test_rename_aside_never_overwrites(root: Path) -> None:
    put(root, "doc.txt", b"mine")
    put(root, "doc.conflict-u-1.txt", b"an earlier conflict copy")
    used = localfs.rename_aside(root, "doc.txt", "doc.conflict-u-1.txt")
    assert used == "doc.conflict-u-1-2.txt"
    assert (root / used).read_bytes() == b"mine"
    assert (root / "doc.conflict-u-1.txt").read_bytes() == b"an earlier conflict copy"
    assert not (root / "doc.txt").exists()


# --- install: the last step of a download -------------------------------------------------


def download(tmp_path: Path, data: bytes) -> Path:
    tmp = tmp_path / "dl.part"
    tmp.write_bytes(data)
    return tmp


def test_install_replaces_the_planned_file_and_sets_its_mtime(root: Path, tmp_path: Path) -> None:
    put(root, "a.csv", b"old")
    expected = local_file(root, "a.csv")
    tmp = download(tmp_path, b"new content")
    got = localfs.install(root, "a.csv", tmp, "md5-of-new", expected, 1_600_000_000.0)
    assert (root / "a.csv").read_bytes() == b"new content"
    assert not tmp.exists()
    st = (root / "a.csv").stat()
    assert st.st_mtime == 1_600_000_000.0
    assert (got.size, got.mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert got.md5 == "md5-of-new"


def test_install_creates_a_new_file_in_new_folders(root: Path, tmp_path: Path) -> None:
    tmp = download(tmp_path, b"new")
    localfs.install(root, "x/y/z.csv", tmp, "m", None, None)
    assert (root / "x/y/z.csv").read_bytes() == b"new"


def test_install_refuses_a_target_edited_since_planned(root: Path, tmp_path: Path) -> None:
    put(root, "a.csv", b"old", mtime_ns=1_600_000_000_000_000_000)
    expected = local_file(root, "a.csv")
    put(root, "a.csv", b"the user's new work", mtime_ns=1_600_000_100_000_000_000)
    tmp = download(tmp_path, b"remote content")
    with pytest.raises(StaleActionError, match="changed locally"):
        localfs.install(root, "a.csv", tmp, "m", expected, None)
    assert (root / "a.csv").read_bytes() == b"the user's new work"
    assert (root / "a.csv").stat().st_mtime_ns == 1_600_000_100_000_000_000


def test_install_refuses_a_same_size_edit(root: Path, tmp_path: Path) -> None:
    put(root, "a.csv", b"aaaa", mtime_ns=1_600_000_000_000_000_000)
    expected = local_file(root, "a.csv")
    put(root, "a.csv", b"bbbb", mtime_ns=1_600_000_000_000_000_001)
    with pytest.raises(StaleActionError):
        localfs.install(root, "a.csv", download(tmp_path, b"cccc"), "m", expected, None)
    assert (root / "a.csv").read_bytes() == b"bbbb"


def test_install_refuses_a_file_created_or_deleted_since_planned(
    root: Path, tmp_path: Path
) -> None:
    put(root, "new.csv", b"created by the user meanwhile")
    with pytest.raises(StaleActionError, match="created locally"):
        localfs.install(root, "new.csv", download(tmp_path, b"remote"), "m", None, None)
    assert (root / "new.csv").read_bytes() == b"created by the user meanwhile"

    put(root, "gone.csv", b"x")
    expected = local_file(root, "gone.csv")
    (root / "gone.csv").unlink()
    with pytest.raises(StaleActionError, match="deleted locally"):
        localfs.install(root, "gone.csv", download(tmp_path, b"remote"), "m", expected, None)
    assert not (root / "gone.csv").exists()


def test_check_unchanged(root: Path) -> None:
    localfs.check_unchanged(root, "absent.csv", None)
    put(root, "a.csv", b"a")
    lf = local_file(root, "a.csv")
    localfs.check_unchanged(root, "a.csv", lf)
    with pytest.raises(StaleActionError):
        localfs.check_unchanged(root, "a.csv", LocalFile("a.csv", lf.size + 1, lf.mtime_ns, ""))


# --- Time Edited: the machine's local time ------------------------------------------------


@pytest.fixture
def set_tz() -> Iterator[Callable[[str], None]]:
    saved = os.environ.get("TZ")

    def set_zone(zone: str) -> None:
        os.environ["TZ"] = zone
        time.tzset()

    yield set_zone
    if saved is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = saved
    time.tzset()


def test_time_edited_is_local_time(set_tz: Callable[[str], None]) -> None:
    set_tz("IST-5:30")  # POSIX spelling of UTC+05:30, no tz database needed
    assert localfs.time_edited(0) == "1970-01-01 05:30:00"
    assert localfs.time_edited(0.999) == "1970-01-01 05:30:00"  # truncated, not rounded
    set_tz("UTC0")
    assert localfs.time_edited(0) == "1970-01-01 00:00:00"


def test_time_edited_follows_daylight_saving(set_tz: Callable[[str], None]) -> None:
    set_tz("EST5EDT,M3.2.0,M11.1.0")
    winter = 1_610_712_000  # 2021-01-15 12:00:00 UTC
    summer = 1_625_140_800  # 2021-07-01 12:00:00 UTC
    assert localfs.time_edited(winter) == "2021-01-15 07:00:00"
    assert localfs.time_edited(summer) == "2021-07-01 08:00:00"
    assert localfs.parse_time_edited("2021-01-15 07:00:00") == winter
    assert localfs.parse_time_edited("2021-07-01 08:00:00") == summer


@pytest.mark.parametrize("zone", ["UTC0", "IST-5:30", "EST5EDT,M3.2.0,M11.1.0", "NZST-12"])
def test_time_edited_round_trip(set_tz: Callable[[str], None], zone: str) -> None:
    set_tz(zone)
    for ts in (0.0, 1_600_000_000.25, 1_614_556_800.0, 1_700_000_000.999):
        text = localfs.time_edited(ts)
        assert localfs.parse_time_edited(text) == float(int(ts)), (zone, ts, text)
        assert localfs.time_edited(localfs.parse_time_edited(text) or 0.0) == text


@pytest.mark.parametrize(
    "text", ["", "yesterday", "2021-13-01 00:00:00", "2021-03-04T09:15:27", "2021-03-04"]
)
def test_parse_time_edited_rejects_other_formats(text: str) -> None:
    assert localfs.parse_time_edited(text) is None
