"""Issue 6, items 7, 8, 9 and 12: odd local names and files must never lose a version.

- Unsafe local names (items 7): a name the manifest reader would refuse is never uploaded;
  it is skipped, listed once with the reason, and never trashed as "deleted on remote".
- Non-regular files and symlinked folders (item 8): a FIFO or socket is skipped, not taken
  for a delete; no local write, rename or trash move goes through a symlinked folder.
- File <-> folder swaps on the watcher path (item 9).
- Long names (item 12): "keep both" and the trash work for names near the 255-byte limit.

The engine runs against the Local platform (a directory as the remote); the status and
pending listings run against the real daemon.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from folders import put, tree
from polling import wait_until

from s3syncd import api, ctl, localfs, tables
from s3syncd.config import Config, build_config
from s3syncd.engine import Engine
from s3syncd.errors import SymlinkInPathError, UnsafePathError
from s3syncd.model import (
    APPROVABLE_KINDS,
    Action,
    ActionKind,
    LocalFile,
    Resolution,
    Row,
    validate_rel_path,
)
from s3syncd.remote.localdir import LocalDirRemote

ALL = frozenset(APPROVABLE_KINDS)
NOW = time.mktime((2026, 1, 1, 0, 0, 0, 0, 0, -1))
STAMP = "20260101-000000"


def quiet(_text: str) -> None:
    pass


@dataclass
class Site:
    folder: Path
    cfg: Config
    engine: Engine

    def sync(self, auto: frozenset[ActionKind] = ALL) -> api.SyncSummary:
        return api.run_once(self.cfg, auto=auto, ask=None, say=quiet, engine=self.engine)

    def plan(self) -> list[Action]:
        eng = self.engine
        eng.prepare()
        eng.scan_local()
        eng.refresh_remote(listing=True, force=True)
        plan = eng.plan()
        eng.apply_agreement(plan)
        return list(plan.actions)


@pytest.fixture
def remote_root(tmp_path: Path) -> Path:
    root = tmp_path / "remote"
    root.mkdir()
    return root


def make_site(tmp_path: Path, remote_root: Path, name: str) -> Site:
    folder = tmp_path / name / "Data"
    folder.mkdir(parents=True)
    values = {
        "platform": "Local",
        "local.remote_path": str(remote_root),
        "datafolder": str(folder),
        "user_name": name,
    }
    cfg = build_config(values, tmp_path)
    engine = Engine(cfg, LocalDirRemote(remote_root), name, workers=2, clock=lambda: NOW)
    return Site(cfg.datafolder, cfg, engine)


def remote_rows(remote_root: Path) -> dict[str, Row]:
    return tables.parse_table((remote_root / ".S3/versions.csv").read_bytes(), "test")


def trashed(site: Site) -> list[str]:
    trash = site.engine.state.trash
    return sorted(p.name for p in trash.rglob("*") if p.is_file()) if trash.exists() else []


# --- item 7: unsafe local names ------------------------------------------------------------

UNSAFE_LOCAL = ["a\\b.txt", "x:notes.txt", "tab\tname.txt", "line\nbreak.txt", "del\x7f.txt"]


def test_unsafe_local_names_are_skipped_listed_once_and_never_deleted(
    tmp_path: Path, remote_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site = make_site(tmp_path, remote_root, "alice")
    put(site.folder, "ok.txt", "fine")
    for name in UNSAFE_LOCAL:
        put(site.folder, name, f"content of {name!r}")
    caplog.set_level(logging.INFO)

    for _ in range(3):
        summary = site.sync()
        assert not summary.failed

    rows = remote_rows(remote_root)
    assert set(rows) == {"ok.txt"}
    # Nothing of theirs reached the remote, not even an object without a row.
    assert sorted(p.name for p in remote_root.iterdir() if p.name != ".S3") == ["ok.txt"]
    for name in UNSAFE_LOCAL:
        assert (site.folder / name).read_text() == f"content of {name!r}"
        assert name in site.engine.skipped, name
    assert "drive letter" in site.engine.skipped["x:notes.txt"]
    assert "backslash" in site.engine.skipped["a\\b.txt"]
    assert trashed(site) == []
    # Listed once, when first seen: not a log line on every pass.
    for name in UNSAFE_LOCAL:
        said = [r for r in caplog.records if repr(name) in r.getMessage()]
        assert len(said) == 1, (name, [r.getMessage() for r in said])
        assert said[0].levelno == logging.WARNING


def test_a_previously_synced_unsafe_name_is_not_trashed_as_deleted_on_remote(
    tmp_path: Path, remote_root: Path
) -> None:
    """A folder synced by the old code: the file was uploaded, its row refused on read."""
    site = make_site(tmp_path, remote_root, "alice")
    name = "a\\b.txt"
    put(site.folder, name, "mine")
    put(site.folder, "ok.txt", "fine")
    site.sync()
    # What the old code left: the object, a row the reader refuses, and a base entry.
    (remote_root / name).write_text("mine")
    lines = (remote_root / ".S3/versions.csv").read_text()
    md5 = localfs.md5_file(site.folder / name)
    (remote_root / ".S3/versions.csv").write_text(
        lines + f'"{name}",alice,2026-01-01 00:00:00,{md5}\n'
    )
    base = site.engine.state.load_base()
    base[name] = md5
    site.engine.state.save_base(base)
    site.engine.base = base

    actions = site.plan()
    assert [a for a in actions if a.path == name] == []
    site.sync()
    assert (site.folder / name).read_text() == "mine"
    assert trashed(site) == []


SAME_RULE_NAMES = [
    "plain.txt",
    "sub/dir/file.txt",
    "a\\b.txt",
    "x:notes.txt",
    "C:x",
    "1:x.txt",
    "notes:v2.txt",
    "sub/x:y.txt",
    "tab\there",
    "del\x7f",
    "c1\x85ctl",
    "bidi\u202etxt.exe",
    "é" * 127 + ".t",  # 256 bytes: no filesystem takes it
    "é" * 125 + ".txt",  # 254 bytes: fine
    "bad\udcffutf8",  # what os.scandir returns for a name that is not UTF-8
]


@pytest.mark.parametrize("name", SAME_RULE_NAMES, ids=repr)
def test_local_files_and_manifest_rows_follow_one_rule(tmp_path: Path, name: str) -> None:
    row = Row(name, "bob", "2026-01-01 00:00:00", "0" * 32)
    _, refused = tables.split_unsafe([row])
    try:
        validate_rel_path(name)
        valid = True
    except UnsafePathError:
        valid = False
    assert bool(refused) == (not valid)
    try:
        put(tmp_path, name, "x")
    except (OSError, UnicodeEncodeError):
        return  # this filesystem cannot hold it: nothing local to judge
    found, why = localfs.examine(tmp_path, name, {}, lambda _p: False)
    assert (found is not None) == valid, why
    if not valid:
        assert why


def test_drive_letter_rule_refuses_only_a_letter_and_colon() -> None:
    for bad in ("x:notes.txt", "C:x", "c:"):
        with pytest.raises(UnsafePathError, match="drive letter"):
            validate_rel_path(bad)
    for good in ("1:x.txt", "notes:v2.txt", "sub/x:y.txt", "ab:c"):
        assert validate_rel_path(good) == good


# --- item 7: status and pending escape odd names -------------------------------------------


def test_status_lists_skipped_files_with_names_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    st: dict[str, Any] = {
        "name": "lab",
        "state": "running",
        "datafolder": "/d",
        "remote": "r",
        "user": "u",
        "last_poll": None,
        "last_poll_result": "ok",
        "pending": 0,
        "approved": 0,
        "failed": 0,
        "counts": {"skipped": 2},
        "skipped": [
            {"path": "evil\u202etxt.exe", "reason": "x"},
            {"path": "line\nbreak\x1b[31m", "reason": "unsafe path 'line\\nbreak'"},
        ],
    }
    ctl.show_status(st)
    out = capsys.readouterr().out
    assert "\u202e" not in out and "\x1b" not in out
    assert "evil\\u202etxt.exe" in out
    assert "line\\nbreak\\x1b[31m" in out
    body = out.split("\n")
    assert len(body) == len([ln for ln in body if "\n" not in ln])


def test_pending_escapes_names(capsys: pytest.CaptureFixture[str]) -> None:
    item = {
        "id": "abc",
        "kind": "upload",
        "state": "pending",
        "path": "invoice\u202efdp.exe",
        "size": 3,
        "edited_by": "bob\u202e",
        "queued_at": "2026-01-01T00:00:00",
        "error": None,
        "reason": "new\tfile",
    }
    ctl.show_pending([item])
    out = capsys.readouterr().out
    assert "\u202e" not in out and "\t" not in out
    assert "invoice\\u202efdp.exe" in out and "bob\\u202e" in out


def test_a_one_shot_sync_prints_odd_names_escaped(tmp_path: Path, remote_root: Path) -> None:
    site = make_site(tmp_path, remote_root, "alice")
    put(site.folder, "invoice\u202efdp.exe", "bidi")
    put(site.folder, "esc\x1b[2J.txt", "escape")
    said: list[str] = []
    api.run_once(site.cfg, auto=ALL, ask=None, say=said.append, engine=site.engine)
    text = "\n".join(said)
    assert "invoice\\u202efdp.exe" in text  # uploaded, and said so
    assert "esc\\x1b[2J.txt" in text  # skipped, and said so
    assert "\u202e" not in text and "\x1b" not in text


def run_ctl(config: Path, *args: str) -> tuple[int, str]:
    out, err = StringIO(), StringIO()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        code = ctl.main(["--config", str(config), *args])
    finally:
        sys.stdout, sys.stderr = saved
    return code, out.getvalue() + err.getvalue()


@pytest.fixture
def daemon_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    run = Path(tempfile.mkdtemp(prefix="s3sd-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    for var in list(os.environ):
        if var.startswith("S3SYNCD_"):
            monkeypatch.delenv(var)
    try:
        yield run
    finally:
        shutil.rmtree(run, ignore_errors=True)


@pytest.mark.daemon
def test_daemon_status_lists_unsafe_names_and_pending_escapes_bidi(
    tmp_path: Path, daemon_dirs: Path
) -> None:
    (tmp_path / "share").mkdir()
    data = tmp_path / "Data"
    put(data, "a\\b.txt", "backslash")
    put(data, "new\nline.txt", "newline")
    put(data, "report\u202etxt.exe", "bidi")
    cfg = tmp_path / "lab.toml"
    cfg.write_text(
        'platform = "Local"\nuser_name = "lab"\n[local]\nremote_path = "share"\n'
        "[daemon]\ndebounce = 0.2\npoll_interval = 0.5\n"
    )
    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "s3syncd", "run", "--config", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            env=dict(os.environ),
        )
    try:
        wait_until(lambda: run_ctl(cfg, "status")[0] == 0, what="the daemon to serve")

        def listed() -> dict[str, str] | None:
            code, out = run_ctl(cfg, "status", "--json")
            assert code == 0, out
            got = {s["path"]: s["reason"] for s in json.loads(out).get("skipped", [])}
            return got if len(got) == 2 else None

        skipped = wait_until(listed, timeout=60, what="both unsafe names in status")
        assert set(skipped) == {"a\\b.txt", "new\nline.txt"}
        code, text = run_ctl(cfg, "status")
        assert code == 0
        assert "a\\\\b.txt" in text and "new\\nline.txt" in text
        assert "backslash" in text  # the reason is shown too
        assert run_ctl(cfg, "sync")[0] == 0
        code, text = run_ctl(cfg, "pending")
        assert code == 0
        assert "report\\u202etxt.exe" in text and "\u202e" not in text
        assert [p.name for p in (tmp_path / "share").iterdir() if p.name != ".S3"] == []
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    # Listed once: the second pass (the 'sync' above) did not say it again.
    log = log_path.read_text(errors="replace")
    assert log.count("'a\\\\b.txt'") == 1, log


# --- item 8: non-regular files and symlinked folders ---------------------------------------


def short_tmp() -> Path:
    # A Unix socket's path must fit in ~108 bytes; pytest's tmp_path can be longer.
    return Path(tempfile.mkdtemp(prefix="s3sd-", dir="/tmp"))


@pytest.mark.parametrize("kind", ["fifo", "socket", "device"])
def test_synced_file_replaced_by_a_special_file_is_skipped_not_deleted(
    kind: str, remote_root: Path
) -> None:
    tmp = short_tmp()
    try:
        site = make_site(tmp, remote_root, "a")
        put(site.folder, "f.txt", "v1")
        site.sync()
        (site.folder / "f.txt").unlink()
        sock = None
        if kind == "fifo":
            os.mkfifo(site.folder / "f.txt")
        elif kind == "device":
            try:  # /dev/null's numbers; needs CAP_MKNOD
                os.mknod(site.folder / "f.txt", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
            except PermissionError:
                pytest.skip("cannot create a device node here")
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(site.folder / "f.txt"))
        try:
            actions = site.plan()
            assert [a for a in actions if a.path == "f.txt"] == []
            assert "not a regular file" in site.engine.skipped["f.txt"]
            assert kind in site.engine.skipped["f.txt"]
            site.sync()
            assert set(remote_rows(remote_root)) == {"f.txt"}
            assert (remote_root / "f.txt").read_text() == "v1"
        finally:
            if sock is not None:
                sock.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def snapshot(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_a_remote_row_under_a_symlinked_folder_is_not_written_through(
    tmp_path: Path, remote_root: Path
) -> None:
    alice = make_site(tmp_path, remote_root, "alice")
    put(alice.folder, "linkdir/f.txt", "from alice")
    put(alice.folder, "linkdir/sub/g.txt", "deeper")
    alice.sync()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    bob = make_site(tmp_path, remote_root, "bob")
    (bob.folder / "linkdir").symlink_to(elsewhere)

    actions = bob.plan()
    assert [a for a in actions if a.path.startswith("linkdir/")] == []
    assert "symbolic link" in bob.engine.skipped["linkdir"]
    bob.sync()
    assert snapshot(elsewhere) == []


def test_download_refuses_a_folder_swapped_for_a_symlink_after_planning(
    tmp_path: Path, remote_root: Path
) -> None:
    alice = make_site(tmp_path, remote_root, "alice")
    put(alice.folder, "linkdir/f.txt", "from alice")
    put(alice.folder, "linkdir/sub/g.txt", "deeper")
    alice.sync()
    bob = make_site(tmp_path, remote_root, "bob")
    (bob.folder / "linkdir").mkdir()
    actions = bob.plan()
    assert {a.path: a.kind for a in actions} == {
        "linkdir/f.txt": ActionKind.DOWNLOAD,
        "linkdir/sub/g.txt": ActionKind.DOWNLOAD,
    }
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (bob.folder / "linkdir").rmdir()
    (bob.folder / "linkdir").symlink_to(elsewhere)

    report = bob.engine.execute([(a, None) for a in actions])
    assert snapshot(elsewhere) == []
    assert len(report.failed) == 2
    for out in report.failed:
        assert "symbolic link" in out.message and "linkdir" in out.message
    assert bob.engine.base == {}


def test_trash_and_rename_refuse_a_symlinked_folder(tmp_path: Path, remote_root: Path) -> None:
    """A local delete and a "keep both" planned on a real folder, run after the swap."""
    alice = make_site(tmp_path, remote_root, "alice")
    put(alice.folder, "linkdir/gone.txt", "to delete")
    put(alice.folder, "linkdir/both.txt", "v1")
    alice.sync()
    bob = make_site(tmp_path, remote_root, "bob")
    bob.sync()
    assert tree(bob.folder) == tree(alice.folder)
    (alice.folder / "linkdir/gone.txt").unlink()
    put(alice.folder, "linkdir/both.txt", "alice v2")
    alice.sync()
    put(bob.folder, "linkdir/both.txt", "bob v2!")
    actions = bob.plan()
    assert {a.path: a.kind for a in actions} == {
        "linkdir/gone.txt": ActionKind.DELETE_LOCAL,
        "linkdir/both.txt": ActionKind.CONFLICT,
    }
    # The folder moves away and a link to an identical copy takes its place (same sizes
    # and mtimes, so the executor's re-check alone cannot tell).
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(bob.folder / "linkdir", elsewhere)
    shutil.rmtree(bob.folder / "linkdir")
    (bob.folder / "linkdir").symlink_to(elsewhere)
    before = {p: (elsewhere / p).read_bytes() for p in snapshot(elsewhere)}

    report = bob.engine.execute([(a, Resolution.BOTH) for a in actions])
    assert {p: (elsewhere / p).read_bytes() for p in snapshot(elsewhere)} == before
    assert len(report.failed) == 2, [o.message for o in report.outcomes]
    assert all("symbolic link" in o.message for o in report.failed)
    assert trashed(bob) == []


def test_each_local_writer_refuses_a_symlink_component(tmp_path: Path) -> None:
    root = tmp_path / "Data"
    (root / "real").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "deep").mkdir(parents=True)
    (elsewhere / "deep/f.txt").write_text("theirs")
    (root / "real/link").symlink_to(elsewhere)
    rel = "real/link/deep/f.txt"
    download = tmp_path / "part"
    download.write_text("new")
    expected = LocalFile(rel, 6, (elsewhere / "deep/f.txt").stat().st_mtime_ns, "x")

    with pytest.raises(SymlinkInPathError, match="real/link"):
        localfs.install(root, rel, download, "x", expected, None)
    with pytest.raises(SymlinkInPathError):
        localfs.install(root, "real/link/new/g.txt", download, "x", None, None)
    with pytest.raises(SymlinkInPathError):
        localfs.move_to_trash(root, rel, root / ".S3/trash", STAMP)
    with pytest.raises(SymlinkInPathError):
        localfs.rename_aside(root, rel, "real/f.conflict.txt")
    with pytest.raises(SymlinkInPathError):
        localfs.rename_aside(root, "real/x.txt", "real/link/x.txt")
    assert snapshot(elsewhere) == ["deep", "deep/f.txt"]
    assert (elsewhere / "deep/f.txt").read_text() == "theirs"
    # The data folder itself may be a link (a folder on another disk): that is fine.
    linked_root = tmp_path / "linked-root"
    linked_root.symlink_to(root)
    got = localfs.install(linked_root, "real/sub/ok.txt", download, "x", None, None)
    assert got.path == "real/sub/ok.txt"
    assert (root / "real/sub/ok.txt").read_text() == "new"


# --- item 9: file <-> folder swaps on the watcher path -------------------------------------


@pytest.mark.parametrize("reported", [["x", "x/new.txt"], ["x"], ["x/new.txt", "x"]], ids=repr)
def test_file_becoming_a_folder_on_the_watcher_path(
    tmp_path: Path, remote_root: Path, reported: list[str]
) -> None:
    site = make_site(tmp_path, remote_root, "a")
    put(site.folder, "x", "a file")
    site.sync()
    (site.folder / "x").unlink()
    put(site.folder, "x/new.txt", "in a folder")

    assert site.engine.update_local(reported)
    assert "x" not in site.engine.index
    assert "x/new.txt" in site.engine.index
    assert site.engine.skipped == {}
    site.engine.refresh_remote(listing=True, force=True)
    kinds = {a.path: a.kind for a in site.engine.plan().actions}
    assert kinds == {"x": ActionKind.DELETE_REMOTE, "x/new.txt": ActionKind.UPLOAD}


@pytest.mark.parametrize(
    "reported", [["x/a.txt", "x/b/c.txt", "x/b", "x"], ["x"], ["x", "x/a.txt"]], ids=repr
)
def test_folder_becoming_a_file_on_the_watcher_path(
    tmp_path: Path, remote_root: Path, reported: list[str]
) -> None:
    site = make_site(tmp_path, remote_root, "a")
    put(site.folder, "x/a.txt", "one")
    put(site.folder, "x/b/c.txt", "two")
    site.sync()
    shutil.rmtree(site.folder / "x")
    put(site.folder, "x", "now a file")

    assert site.engine.update_local(reported)
    assert set(site.engine.index) == {"x"}
    assert site.engine.skipped == {}
    site.engine.refresh_remote(listing=True, force=True)
    kinds = {a.path: a.kind for a in site.engine.plan().actions}
    assert kinds == {
        "x": ActionKind.UPLOAD,
        "x/a.txt": ActionKind.DELETE_REMOTE,
        "x/b/c.txt": ActionKind.DELETE_REMOTE,
    }


# --- item 12: long names -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["a" * 246 + ".txt", "é" * 123 + ".txt", "日本" * 41 + ".csv", "n" * 255, ".e" + "v" * 253],
    ids=lambda n: f"{len(n.encode())}B-{n[:2]}",
)
def test_conflict_names_fit_in_255_bytes(name: str) -> None:
    for rel in (name, f"sub/{name}"):
        out = localfs.conflict_name(rel, "bob", STAMP)
        head, _, leaf = out.rpartition("/")
        assert head == rel.rpartition("/")[0]
        assert len(leaf.encode()) <= 255
        assert f"conflict-bob-{STAMP}" in leaf
        leaf.encode("utf-8")  # no half characters
        ext = name.rpartition(".")[2] if "." in name.lstrip(".") else ""
        if ext:
            assert leaf.endswith("." + ext)


def test_keep_both_works_for_a_250_byte_name(tmp_path: Path, remote_root: Path) -> None:
    name = "é" * 123 + ".txt"  # 250 bytes
    assert len(name.encode()) == 250
    alice = make_site(tmp_path, remote_root, "alice")
    put(alice.folder, name, "v1")
    alice.sync()
    bob = make_site(tmp_path, remote_root, "bob")
    bob.sync()
    put(alice.folder, name, "alice v2")
    alice.sync()
    put(bob.folder, name, "bob v2")
    actions = bob.plan()
    assert [a.kind for a in actions] == [ActionKind.CONFLICT]
    report = bob.engine.execute([(actions[0], Resolution.BOTH)])
    assert not report.failed, [o.message for o in report.failed]
    got = tree(bob.folder)
    assert (bob.folder / name).read_text() == "alice v2"
    copies = [p for p in got if p != name]
    assert len(copies) == 1
    assert (bob.folder / copies[0]).read_text() == "bob v2"
    assert len(copies[0].encode()) <= 255 and copies[0].endswith(".txt")


def test_trash_of_a_255_byte_name_twice_keeps_both(tmp_path: Path) -> None:
    root = tmp_path / "Data"
    name = "z" * 251 + ".txt"
    trash = root / ".S3/trash"
    for text in ("first", "second", "third"):
        put(root, name, text)
        localfs.move_to_trash(root, name, trash, STAMP)
    kept = sorted(p.read_text() for p in (trash / STAMP).iterdir())
    assert kept == ["first", "second", "third"]
    assert all(len(p.name.encode()) <= 255 for p in (trash / STAMP).iterdir())
