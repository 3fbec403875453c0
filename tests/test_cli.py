"""``s3syncd`` and ``s3syncctl`` driven in-process through ``main(argv)``.

No S3 server: the one-shot sync runs on the Local platform (a directory as the remote).
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from folders import put, tree

from s3syncd import cli, ctl
from s3syncd.config import load_config
from s3syncd.state import StateDir

NESTED = "sub/dir/nested.csv"
UNICODE = "données/ünïcødé файл 名前.txt"


@pytest.fixture(autouse=True)
def clean_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No TTY on stdin, no S3SYNCD_* from the caller; no handlers or threads left behind.

    ``cli.main`` calls ``logging.basicConfig``, which would keep a handler on this test's
    captured stderr for the rest of the session.
    """
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    for var in list(os.environ):
        if var.startswith("S3SYNCD_"):
            monkeypatch.delenv(var)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    threads = set(threading.enumerate())
    yield
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    leaked = [t.name for t in set(threading.enumerate()) - threads]
    assert leaked == [], f"threads left running: {leaked}"


class Team:
    """Two data folders (users a and b) sharing one Local remote, each with its config."""

    def __init__(self, tmp_path: Path) -> None:
        self.remote = tmp_path / "remote"
        self.remote.mkdir()
        self.a = tmp_path / "a" / "Data"
        self.b = tmp_path / "b" / "Data"
        self.cfg_a = self._config(tmp_path / "a", "user-a")
        self.cfg_b = self._config(tmp_path / "b", "user-b")

    def _config(self, home: Path, user: str) -> Path:
        (home / "Data").mkdir(parents=True)
        path = home / "s3syncd.toml"
        path.write_text(
            f'datafolder = "Data"\nplatform = "Local"\nuser_name = "{user}"\n\n'
            f'[local]\nremote_path = "{self.remote}"\n',
            encoding="utf-8",
        )
        return path


@pytest.fixture
def team(tmp_path: Path) -> Team:
    return Team(tmp_path)


def manifest_rows(remote: Path) -> list[str]:
    """The data rows of the remote manifest (none when it does not exist)."""
    path = remote / ".S3" / "versions.csv"
    if not path.exists():
        return []
    return path.read_text(encoding="utf-8").splitlines()[1:]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- help and usage --------------------------------------------------------------------------


def test_help_mentions_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "exit codes: 0 ok, 1 error" in out
    for command in ("init", "sync", "reset", "run"):
        assert command in out


def test_sync_help_mentions_exit_codes_and_flags(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "sync", "--help")
    assert code == 0
    assert "exit codes" in out
    assert "2 usage" in out
    for flag in ("--yes", "--dry-run", "--approve", "--config", "--remote-path"):
        assert flag in out


def test_ctl_help_lists_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl.main(["--help"]) == 0
    out = capsys.readouterr().out
    for line in ("0  ok", "1  error", "2  usage error", "3  the daemon is not running"):
        assert line in out


@pytest.mark.parametrize("argv", [["frobnicate"], [], ["sync", "--approve", "explode"]])
def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert "usage: s3syncd" in err


def test_ctl_bad_subcommand_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl.main(["frobnicate"]) == 2
    assert "usage: s3syncctl" in capsys.readouterr().err


@pytest.fixture
def short_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short XDG_RUNTIME_DIR (socket paths are limited to ~107 bytes)."""
    path = Path(tempfile.mkdtemp(dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(path))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_ctl_status_without_daemon_exits_3(
    team: Team, short_runtime_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = ctl.main(["--config", str(team.cfg_a), "status"])
    out, err = capsys.readouterr()
    assert code == 3
    assert "not running" in err
    assert str(short_runtime_dir) in err  # it looked where the daemon would listen
    assert out == ""


def test_ctl_with_missing_config_exits_2(
    tmp_path: Path, short_runtime_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = ctl.main(["--config", str(tmp_path / "missing.toml"), "pending"])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


# --- init ------------------------------------------------------------------------------------


def test_init_with_flags_writes_a_loadable_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "conf" / "alpha.toml"
    path.parent.mkdir()
    remote = tmp_path / "shared"
    data = tmp_path / "MyData"
    argv = [
        "init",
        "--config",
        str(path),
        "--platform",
        "Local",
        "--remote-path",
        str(remote),
        "--datafolder",
        str(data),
        "--no-check",
        "--user-name",
        "user-x",
    ]
    code, out, err = run(capsys, *argv)
    assert (code, err) == (0, "")
    assert f"wrote {path}" in out
    cfg = load_config(path, environ={})
    assert cfg.platform == "Local"
    assert cfg.platform_settings["remote_path"] == str(remote)
    assert cfg.datafolder == data.resolve()
    assert cfg.user_name == "user-x"
    assert cfg.name == "alpha"
    assert cfg.policy.auto_approve == frozenset()

    before = path.read_text(encoding="utf-8")
    code, _, err = run(capsys, *argv[:-1], "someone-else")
    assert code == 1
    assert "already exists" in err
    assert "--force" in err
    assert path.read_text(encoding="utf-8") == before

    code, _, _ = run(capsys, *argv[:-1], "someone-else", "--force")
    assert code == 0
    assert load_config(path, environ={}).user_name == "someone-else"


def test_init_for_s3_without_bucket_fails_without_a_tty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s3syncd.toml"
    code, _, err = run(capsys, "init", "--config", str(path), "--platform", "S3")
    assert code == 1
    assert "bucket is required" in err
    assert not path.exists()


def test_init_for_s3_with_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s3syncd.toml"
    code, _, _ = run(
        capsys,
        "init",
        "--config",
        str(path),
        "--bucket",
        "team-data",
        "--prefix",
        "projects/alpha",
        "--endpoint-url",
        "http://127.0.0.1:8333",
        "--user-name",
        "u",
        "--no-check",
    )
    assert code == 0
    cfg = load_config(path, environ={})
    assert cfg.platform == "S3"
    assert cfg.platform_settings["bucket"] == "team-data"
    assert cfg.platform_settings["prefix"] == "projects/alpha"
    assert cfg.platform_settings["endpoint_url"] == "http://127.0.0.1:8333"
    assert cfg.datafolder == (tmp_path / "Data").resolve()


# --- sync ------------------------------------------------------------------------------------


def test_sync_yes_converges_two_folders(team: Team, capsys: pytest.CaptureFixture[str]) -> None:
    put(team.a, "top.txt", "from a\n")
    put(team.a, NESTED, "x,y\n1,2\n")
    put(team.b, UNICODE, "bonjour ☃\n")

    code, out, err = run(capsys, "sync", "--config", str(team.cfg_a), "--yes")
    assert code == 0, err
    assert "Planned: 2 upload" in out
    assert "done: 2 ok, 0 failed" in out
    assert tree(team.remote) == tree(team.a)

    code, out, err = run(capsys, "sync", "--config", str(team.cfg_b), "--yes")
    assert code == 0, err
    assert "1 upload" in out
    assert "2 download" in out
    assert "done: 3 ok, 0 failed" in out

    code, out, _ = run(capsys, "sync", "--config", str(team.cfg_a), "--yes")
    assert code == 0
    assert "done: 1 ok, 0 failed" in out  # b's file comes down

    expected = {"top.txt", NESTED, UNICODE}
    assert set(tree(team.a)) == expected
    assert tree(team.a) == tree(team.b) == tree(team.remote)
    assert (team.b / UNICODE).read_text(encoding="utf-8") == "bonjour ☃\n"

    code, out, _ = run(capsys, "sync", "--config", str(team.cfg_b), "--yes")
    assert code == 0
    assert "Everything is in sync." in out
    assert "done:" not in out


def test_sync_uses_the_config_from_the_environment(
    team: Team, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    put(team.a, "f.txt", "x")
    monkeypatch.setenv("S3SYNCD_CONFIG", str(team.cfg_a))
    code, out, _ = run(capsys, "sync", "--yes")
    assert code == 0
    assert "done: 1 ok" in out
    assert (team.remote / "f.txt").read_text() == "x"


def test_dry_run_changes_nothing(team: Team, capsys: pytest.CaptureFixture[str]) -> None:
    put(team.a, "a.txt", "a")
    put(team.a, NESTED, "n")
    code, out, _ = run(capsys, "sync", "--config", str(team.cfg_a), "--yes", "--dry-run")
    assert code == 0
    assert "would upload: a.txt" in out
    assert f"would upload: {NESTED}" in out
    assert "done:" not in out
    assert tree(team.remote) == {}
    assert manifest_rows(team.remote) == []
    assert StateDir(team.a).load_base() == {}
    # and the real run afterwards still has everything to do
    code, out, _ = run(capsys, "sync", "--config", str(team.cfg_a), "--yes")
    assert "done: 2 ok, 0 failed" in out

    # a pending download and a local change on b: a dry run moves neither
    put(team.b, "b.txt", "b")
    files_b, remote_before = tree(team.b), tree(team.remote)
    code, out, _ = run(capsys, "sync", "--config", str(team.cfg_b), "--yes", "--dry-run")
    assert code == 0
    assert "would download: a.txt" in out
    assert "would upload: b.txt" in out
    assert tree(team.b) == files_b
    assert tree(team.remote) == remote_before
    assert StateDir(team.b).load_base() == {}


def test_dry_run_does_not_initialise_the_remote(
    team: Team, capsys: pytest.CaptureFixture[str]
) -> None:
    put(team.a, "a.txt", "a")
    assert run(capsys, "sync", "--config", str(team.cfg_a), "--dry-run")[0] == 0
    assert not (team.remote / ".S3" / "versions.csv").exists()


def test_sync_without_yes_and_without_tty_approves_nothing(
    team: Team, capsys: pytest.CaptureFixture[str]
) -> None:
    put(team.a, "a.txt", "a")
    put(team.a, "b.txt", "b")
    code, out, _ = run(capsys, "sync", "--config", str(team.cfg_a))
    assert code == 0
    assert "2 action(s) not approved" in out
    assert "done:" not in out
    assert tree(team.remote) == {}


def test_approve_upload_approves_only_uploads(
    team: Team, capsys: pytest.CaptureFixture[str]
) -> None:
    put(team.b, "from-b.txt", "b")
    assert run(capsys, "sync", "--config", str(team.cfg_b), "--yes")[0] == 0
    put(team.a, "from-a.txt", "a")

    code, out, _ = run(capsys, "sync", "--config", str(team.cfg_a), "--approve", "upload")
    assert code == 0
    assert "done: 1 ok, 0 failed" in out
    assert "1 action(s) not approved" in out
    assert set(tree(team.remote)) == {"from-a.txt", "from-b.txt"}
    assert set(tree(team.a)) == {"from-a.txt"}  # the download still waits

    code, out, _ = run(capsys, "sync", "--config", str(team.cfg_a), "--approve", "download")
    assert code == 0
    assert set(tree(team.a)) == {"from-a.txt", "from-b.txt"}


def test_missing_config_file_is_a_one_line_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "sync", "--config", str(tmp_path / "nope.toml"), "--yes")
    assert code == 2
    assert out == ""
    assert err.startswith("s3syncd: config file ")
    assert "does not exist" in err
    assert err.count("\n") == 1


def test_invalid_config_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('platform = "Local"\n', encoding="utf-8")
    code, _, err = run(capsys, "sync", "--config", str(path))
    assert code == 2
    assert "local.remote_path is required" in err


def test_flags_override_the_config(
    team: Team, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other-remote"
    other.mkdir()
    put(team.a, "f.txt", "x")
    code, _, _ = run(
        capsys, "sync", "--config", str(team.cfg_a), "--yes", "--remote-path", str(other)
    )
    assert code == 0
    assert set(tree(other)) == {"f.txt"}
    assert tree(team.remote) == {}


# --- reset -----------------------------------------------------------------------------------


def synced_with_a_remote_delete(team: Team, capsys: pytest.CaptureFixture[str]) -> None:
    """a syncs three files, then deletes one: the remote keeps a copy in .S3/deleted/."""
    put(team.a, "keep.txt", "k")
    put(team.a, NESTED, "n")
    put(team.a, "gone.txt", "g")
    assert run(capsys, "sync", "--config", str(team.cfg_a), "--yes")[0] == 0
    (team.a / "gone.txt").unlink()
    code, out, _ = run(capsys, "sync", "--config", str(team.cfg_a), "--yes")
    assert code == 0
    assert "delete_remote" in out
    assert [p.name for p in (team.remote / ".S3" / "deleted").glob("gone.txt~*")]
    assert (team.a / ".S3" / "versions.csv").is_file()
    assert (team.a / ".S3" / "sync-state.db").is_file()
    assert (team.remote / ".S3" / "versions.csv").is_file()


def test_reset_yes_removes_state_but_keeps_data_and_deleted_copies(
    team: Team, capsys: pytest.CaptureFixture[str]
) -> None:
    synced_with_a_remote_delete(team, capsys)
    data_before = tree(team.a)

    code, out, _ = run(capsys, "reset", "--config", str(team.cfg_a), "--yes")
    assert code == 0
    assert "removed remote .S3/versions.csv" in out
    assert "removed local .S3/versions.csv" in out
    assert "removed local .S3/sync-state.db" in out
    assert not (team.a / ".S3" / "versions.csv").exists()
    assert not (team.a / ".S3" / "sync-state.db").exists()
    assert not (team.a / ".S3" / "versionsLocal.csv").exists()
    assert not (team.remote / ".S3" / "versions.csv").exists()
    # data and soft-deleted copies are untouched
    assert tree(team.a) == data_before
    assert set(tree(team.remote)) == {"keep.txt", NESTED}
    [copy] = (team.remote / ".S3" / "deleted").glob("gone.txt~*")
    assert copy.read_text() == "g"


def test_reset_without_yes_and_without_tty_refuses(
    team: Team, capsys: pytest.CaptureFixture[str]
) -> None:
    synced_with_a_remote_delete(team, capsys)
    state_before = sorted(p.name for p in (team.a / ".S3").iterdir())
    remote_before = sorted(p.relative_to(team.remote) for p in team.remote.rglob("*"))

    code, out, err = run(capsys, "reset", "--config", str(team.cfg_a))
    assert code != 0
    assert "needs confirmation" in err
    assert "--yes" in err
    assert "removed" not in out
    assert sorted(p.name for p in (team.a / ".S3").iterdir()) == state_before
    assert sorted(p.relative_to(team.remote) for p in team.remote.rglob("*")) == remote_before
