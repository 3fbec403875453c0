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
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from folders import put
from polling import wait_until

from s3syncd import api, ctl, localfs, tables
from s3syncd.approvals import ApprovalQueue, DeleteBrake, EntryState, delete_brake
from s3syncd.config import Policy, build_config
from s3syncd.engine import Engine
from s3syncd.model import APPROVABLE_KINDS, Action, ActionKind, Row
from s3syncd.remote.localdir import LocalDirRemote
from s3syncd.state import StateDir
from s3syncd.watcher import Watcher

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


def test_watcher_reports_the_ignore_list_and_nothing_else_of_the_state_folder(
    tmp_path: Path,
) -> None:
    (tmp_path / ".S3").mkdir()
    seen: list[set[str]] = []
    lock = threading.Lock()

    def on_change(paths: set[str]) -> None:
        with lock:
            seen.append(paths)

    def reported() -> set[str]:
        with lock:
            return set().union(*seen)

    w = Watcher(
        tmp_path, on_change, debounce=0.05, on_rescan=lambda: None, include=[".S3/ignores3.txt"]
    )
    w.start()
    try:
        (tmp_path / ".S3" / "versions.csv").write_text("x")
        (tmp_path / ".S3" / "ignores3.txt.tmp").write_text("secret.txt\n")
        # an editor's save: write aside, rename over
        (tmp_path / ".S3" / "ignores3.txt.tmp").rename(tmp_path / ".S3" / "ignores3.txt")
        (tmp_path / "sentinel").write_text("x")
        wait_until(lambda: {".S3/ignores3.txt", "sentinel"} <= reported(), what="the reports")
    finally:
        w.stop()
    assert reported() == {".S3/ignores3.txt", "sentinel"}


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


# --- item 11: deletions are counted over a window ------------------------------------------

DELETES_OK = Policy(auto_approve=frozenset({ActionKind.DELETE_REMOTE}))
HOUR = 3600.0


def delete_action(path: str) -> Action:
    gone = hashlib.md5(path.encode()).hexdigest()
    row = Row(path, "lab", "2026-01-01 00:00:00", gone)
    return Action(ActionKind.DELETE_REMOTE, path, "deleted locally", None, row, gone, gone)


def plan_and_queue(
    queue: ApprovalQueue, paths: list[str], total: int, now: float
) -> tuple[DeleteBrake, dict[str, EntryState]]:
    """What the daemon does with each plan: judge it, then queue it (auto-approving)."""
    acts = [delete_action(p) for p in paths]
    brake = queue.brake_for(acts, now, total, DELETES_OK)
    queue.update(acts, now, DELETES_OK, brake)
    return brake, {e.action.path: e.state for e in queue.entries.values()}


def test_eight_of_ten_deleted_in_small_steps_is_held(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.ensure()
    queue = ApprovalQueue(state)
    files = 10
    brake, states = plan_and_queue(queue, ["f0", "f1"], files, now=0.0)
    assert not brake.engaged and set(states.values()) == {EntryState.APPROVED}
    queue.entries.clear()  # executed
    files -= 2
    brake, states = plan_and_queue(queue, ["f2", "f3"], files, now=60.0)
    assert not brake.engaged and set(states.values()) == {EntryState.APPROVED}
    queue.entries.clear()
    files -= 2
    # judged alone, the next step is a third of what is left: the old brake let it through
    alone = delete_brake([delete_action("f4"), delete_action("f5")], files, DELETES_OK)
    assert not alone.engaged

    restarted = ApprovalQueue(state)  # the window survives a restart
    restarted.load()
    brake, states = plan_and_queue(restarted, ["f4", "f5"], files, now=120.0)
    assert brake.engaged, brake
    assert "6 of 10" in brake.describe()
    assert states == {"f4": EntryState.PENDING, "f5": EntryState.PENDING}
    brake, states = plan_and_queue(restarted, ["f4", "f5", "f6", "f7"], files, now=180.0)
    assert brake.engaged and set(states.values()) == {EntryState.PENDING}
    assert "8 of 10" in brake.describe()


def test_the_window_ends_after_an_hour_or_when_a_person_approves_deletions(
    tmp_path: Path,
) -> None:
    state = StateDir(tmp_path)
    state.ensure()
    queue = ApprovalQueue(state)
    plan_and_queue(queue, ["f0", "f1", "f2"], 10, now=0.0)
    queue.entries.clear()
    brake, _ = plan_and_queue(queue, ["f3", "f4", "f5"], 7, now=100.0)
    assert brake.engaged  # 6 of 10 within the hour
    # a person approves the held deletions: they have seen them, a new window starts
    done, _held = queue.approve(all_=True, kind=ActionKind.DELETE_REMOTE, brake=brake)
    assert len(done) == 3
    queue.entries.clear()
    brake, states = plan_and_queue(queue, ["f6"], 4, now=200.0)
    assert not brake.engaged and states == {"f6": EntryState.APPROVED}
    queue.entries.clear()
    brake, _ = plan_and_queue(queue, ["f7", "f8"], 3, now=300.0)
    assert brake.engaged  # 3 of 4 since the approval
    # an hour after the window opened, only what is left counts: 1 of 3
    queue.entries.clear()
    brake, states = plan_and_queue(queue, ["f7"], 3, now=200.0 + HOUR)
    assert not brake.engaged and states == {"f7": EntryState.APPROVED}


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


def test_daemon_holds_most_files_deleted_a_few_at_a_time_across_a_restart(
    local_daemon: Callable[[str], LocalDaemon],
) -> None:
    d = local_daemon('[policy]\nauto_approve = ["upload", "delete_remote"]\n')
    for i in range(10):
        put(d.data, f"f{i}.txt", f"{i}\n")
    d.start()
    try:
        wait_until(lambda: len(d.rows()) == 10, what="the ten uploads")

        def delete(*names: str) -> None:
            for n in names:
                (d.data / n).unlink()

        delete("f0.txt", "f1.txt")
        wait_until(lambda: len(d.rows()) == 8, what="two auto-approved deletions")
        delete("f2.txt", "f3.txt")
        wait_until(lambda: len(d.rows()) == 6, what="two more")
        d.stop()
        # Deleted while it is down, so the start-up scan sees both in one plan (two watcher
        # batches would judge 5 of 10 first, which is allowed).
        delete("f4.txt", "f5.txt")
        d.start()

        def held() -> int:
            return sum(
                1 for p in d.pending() if p["kind"] == "delete_remote" and p["state"] == "pending"
            )

        def settled() -> str | None:
            if held() == 2:
                return "held"
            return "deleted" if len(d.rows()) < 6 else None

        assert wait_until(settled, what="the third step to be held or done") == "held"
        st = d.status()
        assert st["held"] and "6 of 10" in st["held"]
        delete("f6.txt", "f7.txt")
        wait_until(lambda: held() == 4, what="four held deletions")
        assert sorted(d.rows()) == [f"f{i}.txt" for i in range(4, 10)]
        assert all((d.remote / f"f{i}.txt").exists() for i in range(4, 10))
    finally:
        d.stop()
