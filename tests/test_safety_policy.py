"""Safety policy (issue 6, items 10 and 11): the ignore list and the mass-delete brake.

- An edit of ``.S3/ignores3.txt`` takes effect without a restart, and every side of the plan
  (local included) is filtered by it: a newly ignored secret is never uploaded, even with
  uploads auto-approved.
- The mass-delete brake counts deletions over a window, not per plan: deleting most files a
  few at a time is held as surely as deleting them at once, across a restart too.
- A data folder whose root cannot be listed yields no delete at all.

Engine tests run the real engine on the Local platform; daemon tests run the real daemon as a
subprocess on the Local platform, driven by ``s3syncctl`` in-process.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from folders import put
from polling import wait_until

from s3syncd import api, ctl, localfs, tables
from s3syncd.config import build_config
from s3syncd.engine import Engine
from s3syncd.model import APPROVABLE_KINDS, ActionKind
from s3syncd.remote.localdir import LocalDirRemote

ALL = frozenset(APPROVABLE_KINDS)


def quiet(_text: str) -> None:
    pass


# --- engine helpers ---------------------------------------------------------------------------


@dataclass
class Site:
    folder: Path
    remote_root: Path
    engine: Engine

    def sync(self, auto: frozenset[ActionKind] = ALL) -> api.SyncSummary:
        return api.run_once(self.engine.cfg, auto=auto, ask=None, say=quiet, engine=self.engine)

    def rows(self) -> dict[str, Any]:
        key = self.remote_root / ".S3" / "versions.csv"
        return tables.parse_table(key.read_bytes(), "test versions") if key.exists() else {}


def make_site(tmp: Path, name: str = "alice") -> Site:
    folder = tmp / name / "Data"
    folder.mkdir(parents=True)
    remote_root = tmp / "remote"
    remote_root.mkdir(exist_ok=True)
    cfg = build_config(
        {
            "platform": "Local",
            "local.remote_path": str(remote_root),
            "datafolder": str(folder),
            "user_name": name,
        },
        tmp,
    )
    engine = Engine(cfg, LocalDirRemote(remote_root), name, workers=2)
    return Site(folder, remote_root, engine)


# --- item 10: the ignore list -----------------------------------------------------------------


def test_an_ignores3_edit_applies_to_the_next_plan_without_a_restart(tmp_path: Path) -> None:
    """The daemon's order of events: the file is indexed (watcher), then the user lists it in
    ignores3.txt, then a poll re-plans. Nothing re-reads the list at start-up here."""
    site = make_site(tmp_path)
    put(site.folder, "notes.csv", "shared\n")
    assert site.sync().ok
    eng = site.engine
    put(site.folder, "secret.env", "TOKEN=do-not-share\n")
    put(site.folder, "keys/id.key", "private\n")
    assert eng.update_local({"secret.env", "keys"})
    assert {"secret.env", "keys/id.key"} <= set(eng.index)  # indexed before the edit

    eng.state.ignores.write_text("secret.env\n*.key\n", encoding="utf-8")
    eng.refresh_remote(listing=True, force=True)
    plan = eng.plan()
    uploads = {a.path for a in plan.actions if a.kind is ActionKind.UPLOAD}
    assert uploads == set(), uploads
    # and a pass on the same engine (no restart) uploads nothing of it either
    report = eng.execute([(a, None) for a in plan.actions])
    assert report.failed == []
    assert sorted(site.rows()) == ["notes.csv"]
    assert not (site.remote_root / "secret.env").exists()


def test_an_unignored_file_is_found_after_the_ignores3_edit(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    site.engine.state.ensure()
    site.engine.state.ignores.write_text("draft.csv\n", encoding="utf-8")
    put(site.folder, "draft.csv", "d\n")
    assert site.sync().ok
    assert site.rows() == {}
    eng = site.engine
    eng.state.ignores.write_text("", encoding="utf-8")
    eng.scan_local()  # the daemon rescans when the watcher reports the edit
    plan = eng.plan()
    assert [(a.kind, a.path) for a in plan.actions] == [(ActionKind.UPLOAD, "draft.csv")]


# --- item 11: an unlistable root blocks every delete ------------------------------------------


def test_a_data_folder_root_that_cannot_be_listed_yields_no_delete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One file is below the brake's two-delete minimum, so only the root check can hold it;
    the other case (many files) must not depend on the brake either."""
    site = make_site(tmp_path)
    put(site.folder, "only.csv", "1\n")
    put(site.folder, "sub/two.csv", "2\n")
    assert site.sync().ok
    real_scan = localfs.scan
    root = str(site.folder)

    def refusing(path: str) -> Iterator[os.DirEntry[str]]:
        if path == root:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return os.scandir(path)

    def scan(root_: Path, index: Any, ignored: Callable[[str], bool]) -> localfs.ScanResult:
        return real_scan(root_, index, ignored, scandir=refusing)

    monkeypatch.setattr(localfs, "scan", scan)
    summary = site.sync()
    assert "" in summary.skipped_files
    deletes = [a for a in summary.planned if a.kind in (ActionKind.DELETE_REMOTE,)]
    assert deletes == []
    assert sorted(site.rows()) == ["only.csv", "sub/two.csv"]
    assert (site.remote_root / "only.csv").exists()
    assert not (site.remote_root / ".S3" / "deleted").exists()


# --- daemon helpers (Local platform) ----------------------------------------------------------


@dataclass
class LocalDaemon:
    config: Path
    data: Path
    remote: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    def ctl(self, *args: str) -> tuple[int, str]:
        out, err = StringIO(), StringIO()
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        try:
            code = ctl.main(["--config", str(self.config), *args])
        finally:
            sys.stdout, sys.stderr = saved
        return code, out.getvalue() + err.getvalue()

    def status(self) -> dict[str, Any]:
        code, out = self.ctl("status", "--json")
        assert code == 0, out
        result: dict[str, Any] = json.loads(out)
        return result

    def pending(self) -> list[dict[str, Any]]:
        code, out = self.ctl("pending", "--json")
        assert code == 0, out
        items: list[dict[str, Any]] = json.loads(out)
        return items

    def rows(self) -> dict[str, Any]:
        key = self.remote / ".S3" / "versions.csv"
        return tables.parse_table(key.read_bytes(), "test versions") if key.exists() else {}

    def start(self) -> None:
        log = (self.config.parent / "daemon.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "s3syncd", "run", "--config", str(self.config)],
            stdout=log,
            stderr=log,
            env=self.env,
        )
        log.close()

        def up() -> bool:
            assert self.proc is not None
            assert self.proc.poll() is None, (self.config.parent / "daemon.log").read_text()
            return self.ctl("status")[0] == 0

        wait_until(up, 30, "the daemon to serve")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            assert self.proc.wait(timeout=30) == 0
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


@pytest.fixture
def local_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str], LocalDaemon]]:
    """make(policy_toml) -> a configured (not started) daemon; all are stopped afterwards."""
    run = Path(tempfile.mkdtemp(prefix="s3sd-", dir="/tmp"))  # AF_UNIX paths stay short
    run.chmod(0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    for var in list(os.environ):
        if var.startswith("S3SYNCD_"):
            monkeypatch.delenv(var)
    made: list[LocalDaemon] = []

    def make(extra: str) -> LocalDaemon:
        remote = tmp_path / "share"
        remote.mkdir()
        data = tmp_path / "Data"
        data.mkdir()
        cfg = tmp_path / "lab.toml"
        cfg.write_text(
            'platform = "Local"\nuser_name = "lab"\n[local]\nremote_path = "share"\n'
            f"[daemon]\ndebounce = 0.2\npoll_interval = 0.5\n{extra}"
        )
        d = LocalDaemon(cfg, data, remote, dict(os.environ))
        made.append(d)
        return d

    try:
        yield make
    finally:
        for d in made:
            if d.proc is not None:
                d.proc.send_signal(signal.SIGTERM)
                try:
                    d.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    d.proc.kill()
                    d.proc.wait()
        shutil.rmtree(run, ignore_errors=True)


def test_daemon_never_uploads_a_file_listed_in_ignores3_after_start(
    local_daemon: Callable[[str], LocalDaemon],
) -> None:
    d = local_daemon('[policy]\nauto_approve = ["upload"]\n')
    d.start()
    try:
        put(d.data, "before.txt", "b\n")
        wait_until(lambda: "before.txt" in d.rows(), what="the auto-approved upload")

        (d.data / ".S3" / "ignores3.txt").write_text("secret.txt\n")
        put(d.data, "secret.txt", "TOKEN=do-not-share\n")
        # events are delivered in order: once the canary is up, the secret was judged
        put(d.data, "canary.txt", "c\n")
        wait_until(lambda: "canary.txt" in d.rows(), what="the canary upload")
        wait_until(lambda: d.pending() == [], what="the queue to drain")
        rows = d.rows()
        assert "secret.txt" not in rows
        assert not (d.remote / "secret.txt").exists()
    finally:
        d.stop()


def test_daemon_uploads_a_file_taken_off_ignores3_without_a_restart(
    local_daemon: Callable[[str], LocalDaemon],
) -> None:
    """Only a rescan finds a file that was ignored: the watcher reports the edit of
    ignores3.txt (inside the otherwise unwatched .S3/) so the daemon rescans at once."""
    d = local_daemon('[policy]\nauto_approve = ["upload"]\n')  # rescans: hourly
    (d.data / ".S3").mkdir()
    (d.data / ".S3" / "ignores3.txt").write_text("draft.csv\n")
    put(d.data, "draft.csv", "d\n")
    d.start()
    try:
        put(d.data, "canary.txt", "c\n")
        wait_until(lambda: "canary.txt" in d.rows(), what="the canary upload")
        assert "draft.csv" not in d.rows()
        (d.data / ".S3" / "ignores3.txt").write_text("")
        wait_until(lambda: "draft.csv" in d.rows(), what="the un-ignored file's upload")
    finally:
        d.stop()
