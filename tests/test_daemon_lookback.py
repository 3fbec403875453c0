"""s3syncctl diff, history, trash and restore against real daemons (issue 8): two folders on
one Local remote (a shared directory), each with its own daemon process, driven through
``s3syncd.ctl.main`` over the real control socket."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from polling import wait_until

from s3syncd import ctl

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from s3server import S3Server

pytestmark = pytest.mark.daemon

DEADLINE = 30.0


@dataclass
class Node:
    name: str
    config: Path
    data: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def ctl(self, *args: str) -> tuple[int, str]:
        out, err = StringIO(), StringIO()
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        try:
            code = ctl.main(["--config", str(self.config), *args])
        finally:
            sys.stdout, sys.stderr = saved
        return code, out.getvalue() + err.getvalue()

    def json(self, *args: str) -> Any:
        code, out = self.ctl(*args, "--json")
        assert code == 0, out
        return json.loads(out)

    def find(self, kind: str, path: str) -> dict[str, Any] | None:
        for item in self.json("pending"):
            if item["kind"] == kind and item["path"] == path and item["state"] == "pending":
                return item
        return None

    def wait_for(self, kind: str, path: str) -> dict[str, Any]:
        def seen() -> dict[str, Any] | None:
            self.ctl("sync")
            return self.find(kind, path)

        found: dict[str, Any] = wait_until(seen, DEADLINE, f"{self.name}: {kind} {path}")
        return found

    def approve(self, kind: str, path: str) -> None:
        item = self.wait_for(kind, path)
        code, out = self.ctl("approve", item["id"])
        assert code == 0 and "done" in out, out

    def write(self, rel: str, text: str) -> None:
        target = self.data / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        old = target.stat().st_mtime_ns if target.exists() else 0
        target.write_text(text)
        bumped = max(old + 1_000_000_000, target.stat().st_mtime_ns)
        os.utime(target, ns=(bumped, bumped))  # a same-size edit is always seen


def launch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, remote_config: Callable[[str], str]
) -> Iterator[Callable[[str], Node]]:
    """Start daemons named by the caller, each on its own folder, all on one remote
    (``remote_config(name)`` gives the config lines that name it)."""
    run = Path(tempfile.mkdtemp(prefix="s3sd-", dir="/tmp"))  # AF_UNIX paths stay short
    run.chmod(0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    for var in list(os.environ):
        if var.startswith("S3SYNCD_"):
            monkeypatch.delenv(var)
    nodes: list[Node] = []

    def start(name: str) -> Node:
        data = tmp_path / name / "Data"
        data.mkdir(parents=True)
        cfg = tmp_path / name / f"{name}.toml"
        cfg.write_text(
            f'datafolder = "{data}"\nuser_name = "{name}"\n{remote_config(name)}'
            "[daemon]\ndebounce = 0.2\npoll_interval = 0.5\n"
        )
        node = Node(name, cfg, data)
        log = (tmp_path / f"{name}.log").open("ab")
        node.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "s3syncd", "run", "--config", str(cfg)],
                stdout=log,
                stderr=log,
                env=dict(os.environ),
            )
        )
        log.close()
        nodes.append(node)
        wait_until(lambda: node.ctl("status")[0] == 0, DEADLINE, f"{name} to serve")
        return node

    try:
        yield start
    finally:
        for node in nodes:
            for proc in node.procs:
                proc.send_signal(signal.SIGTERM)
        for node in nodes:
            for proc in node.procs:
                assert proc.wait(timeout=30) == 0
        shutil.rmtree(run, ignore_errors=True)


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], Node]]:
    """Daemons on one Local remote (a shared directory): fast, no server needed."""
    share = tmp_path / "share"
    share.mkdir()
    yield from launch(
        tmp_path, monkeypatch, lambda _: f'platform = "Local"\n[local]\nremote_path = "{share}"\n'
    )


@pytest.fixture
def s3_folders(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    s3_server: S3Server,
    s3_client: S3Client,
    s3_bucket: str,
) -> Iterator[Callable[[str], Node]]:
    """Daemons on one prefix of a loopback SeaweedFS bucket with versioning on."""
    s3_client.put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)

    def config(_: str) -> str:
        return (
            f'[s3]\nbucket = "{s3_bucket}"\nprefix = "team"\n'
            f'endpoint_url = "{s3_server.endpoint}"\nregion = "{s3_server.region}"\n'
        )

    yield from launch(tmp_path, monkeypatch, config)


BASE_CSV = "id,name,qty\n1,apple,3\n2,pear,5\n3,plum,7\n"
MINE_CSV = "id,name,qty\n1,apple,4\n2,pear,5\n3,plum,7\n"
# Against MINE: one row changed (pear's qty) and one row added (fig).
THEIRS_CSV = "id,name,qty\n1,apple,4\n2,pear,6\n3,plum,7\n4,fig,1\n"


def test_diff_shows_a_conflicting_csv_edit_and_a_text_conflict(
    folders: Callable[[str], Node],
) -> None:
    ann, bob = folders("ann"), folders("bob")
    ann.write("fruit.csv", BASE_CSV)
    ann.write("notes.txt", "alpha\nbeta\ngamma\n")
    ann.approve("upload", "fruit.csv")
    ann.approve("upload", "notes.txt")
    bob.approve("download", "fruit.csv")
    bob.approve("download", "notes.txt")

    # An upload's diff: remote -> local, before approving anything.
    ann.write("fruit.csv", THEIRS_CSV)
    up = ann.wait_for("upload", "fruit.csv")
    res = ann.json("diff", up["id"])
    assert res["old"]["label"] == "remote (ann)" and res["new"]["label"] == "local"
    assert (res["table"]["rows_changed"], res["table"]["rows_added"]) == (2, 1)

    bob.write("fruit.csv", MINE_CSV)
    bob.write("notes.txt", "alpha\nBETA (bob)\ngamma\n")
    ann.write("notes.txt", "alpha\nbeta\ngamma\ndelta (ann)\n")
    ann.approve("upload", "fruit.csv")
    ann.approve("upload", "notes.txt")

    conflict = bob.wait_for("conflict", "fruit.csv")
    code, text = bob.ctl("diff", conflict["id"])
    assert code == 0, text
    assert "compared by key column 'id'" in text
    assert "rows added 1, removed 0, changed 1" in text
    assert "row 2, qty: '5' -> '6'" in text
    assert "+ id=4, name=fig, qty=1" in text
    res = bob.json("diff", conflict["id"][:6])  # a unique prefix will do
    assert res["action"] == "conflict" and res["kind"] == "table"
    table = res["table"]
    assert (table["rows_added"], table["rows_removed"], table["rows_changed"]) == (1, 0, 1)
    assert table["changed_cells"] == [{"row": "2", "column": "qty", "old": "5", "new": "6"}]
    assert table["added_sample"] == [{"id": "4", "name": "fig", "qty": "1"}]
    assert res["old"]["label"] == "local" and res["new"]["label"] == "remote (ann)"
    assert "rendered" not in res

    conflict = bob.wait_for("conflict", "notes.txt")
    code, text = bob.ctl("diff", conflict["id"])
    assert code == 0, text
    assert "--- local" in text and "+++ remote (ann)" in text
    assert "-BETA (bob)" in text and "+beta" in text and "+delta (ann)" in text
    # Nothing is left behind in .S3/tmp, and nothing changed.
    assert list((bob.data / ".S3" / "tmp").iterdir()) == []
    assert (bob.data / "fruit.csv").read_text() == MINE_CSV

    code, out = bob.ctl("diff", "nosuchid")
    assert code == 1 and "no pending action" in out


def test_history_lists_three_edits_by_two_users_newest_first(
    folders: Callable[[str], Node],
) -> None:
    ann, bob = folders("ann"), folders("bob")
    ann.write("plan.txt", "v1\n")
    ann.approve("upload", "plan.txt")
    bob.approve("download", "plan.txt")
    bob.write("plan.txt", "v2 by bob\n")
    bob.approve("upload", "plan.txt")
    ann.approve("download", "plan.txt")
    ann.write("plan.txt", "v3 by ann, longer\n")
    ann.approve("upload", "plan.txt")

    def three() -> list[dict[str, Any]] | None:
        bob.ctl("sync")
        entries: list[dict[str, Any]] = bob.json("history", "plan.txt")["entries"]
        return entries if len(entries) >= 3 else None

    entries = wait_until(three, DEADLINE, "bob to see ann's last edit")
    got = [(e["user"], e["action"], e["source"]) for e in entries]
    assert got == [
        ("ann", "modified", "observed"),
        ("bob", "modified", "ours"),
        ("ann", "added", "observed"),
    ]
    md5s = [e["md5"] for e in entries]
    assert len(set(md5s)) == 3
    assert entries[1]["size"] == len("v2 by bob\n")
    code, text = bob.ctl("history", "plan.txt")
    assert code == 0, text
    lines = [line for line in text.splitlines() if line.startswith("  ")]
    assert ["ann" in lines[0], "bob (this folder)" in lines[1], "added" in lines[2]] == [True] * 3
    # Ann's own history names her commits as hers.
    ann_entries = wait_until(
        lambda: (lambda e: e if len(e) >= 3 else None)(ann.json("history", "plan.txt")["entries"]),
        DEADLINE,
        "ann's own last commit in her history",
    )
    assert [(e["user"], e["source"]) for e in ann_entries][:2] == [
        ("ann", "ours"),
        ("bob", "observed"),
    ]
    code, _ = bob.ctl("history", "../etc/passwd")
    assert code != 0


def test_trash_lists_a_file_deleted_elsewhere_and_restore_brings_it_back(
    folders: Callable[[str], Node],
) -> None:
    ann, bob = folders("ann"), folders("bob")
    ann.write("keep/data.csv", BASE_CSV)
    ann.approve("upload", "keep/data.csv")
    bob.approve("download", "keep/data.csv")
    (ann.data / "keep" / "data.csv").unlink()
    ann.approve("delete_remote", "keep/data.csv")
    bob.approve("delete_local", "keep/data.csv")
    assert not (bob.data / "keep" / "data.csv").exists()

    items = bob.json("trash")
    mine = [i for i in items if i["path"] == "keep/data.csv"]
    assert {i["origin"] for i in mine} == {"remote-trash", "local-trash"}
    remote = next(i for i in mine if i["origin"] == "remote-trash")
    assert remote["deleted_by"] == "ann" and remote["deleted_at"]
    assert remote["size"] == len(BASE_CSV)
    assert sorted(i["version"] for i in mine) == [1, 2]
    code, text = bob.ctl("trash")
    assert code == 0 and "keep/data.csv" in text and "ann" in text

    res = bob.json("restore", "keep/data.csv")
    assert res["restored"] == "keep/data.csv"
    assert (bob.data / "keep" / "data.csv").read_text() == BASE_CSV
    # It syncs again like any new file: an upload to approve, then a download for ann.
    bob.approve("upload", "keep/data.csv")
    ann.approve("download", "keep/data.csv")
    assert (ann.data / "keep" / "data.csv").read_text() == BASE_CSV

    # Never over an existing file: beside it, unless --force.
    bob.write("keep/data.csv", "edited since\n")
    res = bob.json("restore", "keep/data.csv", "--version", "2")
    beside = res["restored"]
    assert beside.startswith("keep/data.restored-") and beside.endswith(".csv")
    assert (bob.data / beside).read_text() == BASE_CSV
    assert (bob.data / "keep" / "data.csv").read_text() == "edited since\n"
    bob.wait_for("upload", beside)

    code, out = bob.ctl("restore", "keep/data.csv", "--force", "--to", "keep/data.csv")
    assert code == 0, out
    assert (bob.data / "keep" / "data.csv").read_text() == BASE_CSV
    kept = list((bob.data / ".S3" / "trash").rglob("data*.csv"))
    assert any(p.read_text() == "edited since\n" for p in kept)

    code, out = bob.ctl("restore", "never/was.txt")
    assert code == 1 and "nothing to restore" in out
    code, out = bob.ctl("restore", "keep/data.csv", "--version", "9")
    assert code == 1 and "--version 1.." in out
    code, out = bob.ctl("restore", "keep/data.csv", "--to", ".S3/versions.csv")
    assert code == 1


@pytest.mark.s3
def test_on_a_versioned_bucket_history_and_trash_show_object_versions(
    s3_folders: Callable[[str], Node],
) -> None:
    ann = s3_folders("ann")
    ann.write("v.txt", "first\n")
    ann.approve("upload", "v.txt")
    ann.write("v.txt", "second, longer\n")
    ann.approve("upload", "v.txt")

    # 'approve' returns when the transfer is done; the commit follows just after.
    res = wait_until(
        lambda: (lambda r: r if len(r["entries"]) == 2 else None)(ann.json("history", "v.txt")),
        DEADLINE,
        "both commits in the history",
    )
    assert [e["source"] for e in res["entries"]] == ["ours", "ours"]
    versions = res["versions"]
    assert [v["size"] for v in versions] == [len("second, longer\n"), len("first\n")]
    assert versions[0]["latest"] and not versions[1]["latest"]
    code, text = ann.ctl("history", "v.txt")
    assert code == 0 and "S3 object versions" in text and "(current)" in text

    (ann.data / "v.txt").unlink()
    ann.approve("delete_remote", "v.txt")
    items = [i for i in ann.json("trash") if i["path"] == "v.txt"]
    origins = sorted(i["origin"] for i in items)
    assert origins == ["remote-trash", "version", "version"]
    oldest = max((i for i in items if i["origin"] == "version"), key=lambda i: i["version"])
    res = ann.json("restore", "v.txt", "--version", str(oldest["version"]))
    assert res["restored"] == "v.txt" and res["from"]["origin"] == "version"
    assert (ann.data / "v.txt").read_text() == "first\n"
    ann.approve("upload", "v.txt")
