"""The library API kept from the original package, on the Local platform (no S3 server)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from folders import md5, put, tree

import s3syncd
from s3syncd import api
from s3syncd import remote as platforms
from s3syncd.errors import ConfigError
from s3syncd.model import ActionKind
from s3syncd.remote.localdir import LocalDirRemote
from s3syncd.state import StateDir


class FakeRemote(LocalDirRemote):
    """A third-party platform: a Local directory under another name."""

    name = "Fake"


class NotARemote:
    """Registered by mistake: not a Remote subclass."""


@pytest.fixture(autouse=True)
def no_tty(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No TTY on stdin, no S3SYNCD_* from the caller, and no threads left running."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    for var in list(os.environ):
        if var.startswith("S3SYNCD_"):
            monkeypatch.delenv(var)
    threads = set(threading.enumerate())
    yield
    leaked = [t.name for t in set(threading.enumerate()) - threads]
    assert leaked == [], f"threads left running: {leaked}"


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    path = tmp_path / "remote"
    path.mkdir()
    return path


def sync(folder: Path, remote: Path, user: str, **kwargs: object) -> api.SyncSummary:
    return s3syncd.smart_sync(
        platform="Local",
        datafolder=folder,
        remote_path=str(remote),
        user_name=user,
        **kwargs,  # type: ignore[arg-type]
    )


# --- platforms -------------------------------------------------------------------------------


def test_supported_platforms_start_with_the_builtins() -> None:
    names = s3syncd.get_supported_platforms()
    assert names[:2] == ["S3", "Local"]
    assert len(names) == len(set(names))


def fake_entry_points(
    entries: list[tuple[str, str]],
) -> object:
    def entry_points(*, group: str) -> list[SimpleNamespace]:
        assert group == platforms.ENTRY_POINT_GROUP
        return [SimpleNamespace(name=n, value=v) for n, v in entries]

    return entry_points


def test_plugin_platform_is_listed_and_usable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, remote: Path
) -> None:
    monkeypatch.setattr(
        platforms,
        "entry_points",
        fake_entry_points(
            [
                ("Zeta", f"{__name__}:FakeRemote"),
                ("Fake", f"{__name__}:FakeRemote"),
                ("S3", f"{__name__}:FakeRemote"),  # cannot replace a built-in
            ]
        ),
    )
    assert s3syncd.get_supported_platforms() == ["S3", "Local", "Fake", "Zeta"]
    assert platforms.platform_class("Fake") is FakeRemote
    assert platforms.platform_class("S3").__name__ == "S3Remote"

    # a plugin's settings come from its own table, named after it
    data = tmp_path / "Data"
    put(data, "p.txt", "plugin")
    config = tmp_path / "fake.toml"
    config.write_text(
        f'datafolder = "{data}"\nplatform = "Fake"\nuser_name = "u"\n\n'
        f'[fake]\nremote_path = "{remote}"\n',
        encoding="utf-8",
    )
    summary = s3syncd.smart_sync(config=config, auto_approve=True)
    assert summary.ok
    assert [a.path for a, _ in summary.done if a.kind is ActionKind.UPLOAD] == ["p.txt"]
    assert tree(remote) == {"p.txt": md5(data / "p.txt")}


def test_plugin_that_is_not_a_remote_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        platforms, "entry_points", fake_entry_points([("Bad", f"{__name__}:NotARemote")])
    )
    assert "Bad" in s3syncd.get_supported_platforms()
    with pytest.raises(ConfigError, match="not a Remote subclass"):
        platforms.platform_class("Bad")


def test_unknown_platform_lists_the_supported_ones(tmp_path: Path, remote: Path) -> None:
    with pytest.raises(ConfigError) as info:
        s3syncd.smart_sync(
            platform="Nope", datafolder=tmp_path / "Data", user_name="u", auto_approve=True
        )
    assert "unknown platform 'Nope'" in info.value.message
    assert "S3, Local" in info.value.message


# --- smart_sync ------------------------------------------------------------------------------


def test_smart_sync_converges_two_folders(tmp_path: Path, remote: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    put(a, "one.txt", "1")
    put(a, "deep/er/two.csv", "2")
    put(b, "ünï/три.txt", "3")

    first = sync(a, remote, "user-a", auto_approve=True)
    assert isinstance(first, api.SyncSummary)
    assert first.ok
    assert sorted(act.path for act, _ in first.done) == ["deep/er/two.csv", "one.txt"]
    assert first.not_approved == []

    second = sync(b, remote, "user-b", auto_approve=True)
    assert second.ok
    assert {(act.kind, act.path) for act, _ in second.done} == {
        (ActionKind.DOWNLOAD, "one.txt"),
        (ActionKind.DOWNLOAD, "deep/er/two.csv"),
        (ActionKind.UPLOAD, "ünï/три.txt"),
    }
    third = sync(a, remote, "user-a", auto_approve=True)
    assert [act.path for act, _ in third.done] == ["ünï/три.txt"]

    assert set(tree(a)) == {"one.txt", "deep/er/two.csv", "ünï/три.txt"}
    assert tree(a) == tree(b) == tree(remote)

    last = sync(b, remote, "user-b", auto_approve=True)
    assert last.planned == []
    assert last.done == []


def test_smart_sync_auto_approve_list_only_uploads(tmp_path: Path, remote: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    put(b, "from-b.txt", "b")
    assert sync(b, remote, "user-b", auto_approve=True).ok
    put(a, "from-a.txt", "a")

    summary = sync(a, remote, "user-a", auto_approve=["upload"])
    assert summary.ok
    assert [(act.kind, act.path) for act, _ in summary.done] == [(ActionKind.UPLOAD, "from-a.txt")]
    assert [(act.kind, act.path) for act in summary.not_approved] == [
        (ActionKind.DOWNLOAD, "from-b.txt")
    ]
    assert set(tree(a)) == {"from-a.txt"}
    assert set(tree(remote)) == {"from-a.txt", "from-b.txt"}


def test_smart_sync_without_approval_and_tty_does_nothing(tmp_path: Path, remote: Path) -> None:
    a = tmp_path / "a"
    put(a, "x.txt", "x")
    summary = sync(a, remote, "user-a")
    assert summary.done == []
    assert [act.path for act in summary.not_approved] == ["x.txt"]
    assert tree(remote) == {}


def test_smart_sync_dry_run(tmp_path: Path, remote: Path) -> None:
    a = tmp_path / "a"
    put(a, "x.txt", "x")
    summary = sync(a, remote, "user-a", auto_approve=True, dry_run=True)
    assert [act.path for act in summary.planned] == ["x.txt"]
    assert summary.done == []
    assert tree(remote) == {}


def test_unknown_keyword_argument_is_a_config_error(tmp_path: Path, remote: Path) -> None:
    with pytest.raises(ConfigError, match="unknown keyword argument 'colour'"):
        sync(tmp_path / "a", remote, "u", colour="blue")


def test_unknown_auto_approve_kind_is_a_config_error(tmp_path: Path, remote: Path) -> None:
    with pytest.raises(ConfigError, match="unknown action kind 'explode'"):
        sync(tmp_path / "a", remote, "u", auto_approve=["upload", "explode"])
    assert tree(remote) == {}


# --- reset_all -------------------------------------------------------------------------------


def test_reset_all_removes_state(tmp_path: Path, remote: Path) -> None:
    a = tmp_path / "a"
    put(a, "x.txt", "x")
    assert sync(a, remote, "user-a", auto_approve=True).ok
    state = StateDir(a)
    assert state.versions.exists()
    assert state.file("sync-state.db").exists()
    assert (remote / ".S3" / "versions.csv").exists()

    assert (
        s3syncd.reset_all(
            platform="Local", datafolder=a, remote_path=str(remote), user_name="u", yes=True
        )
        is True
    )
    assert not state.versions.exists()
    assert not state.versions_local.exists()
    assert not state.file("sync-state.db").exists()
    assert not state.file("sync-state.db-wal").exists()
    assert not (remote / ".S3" / "versions.csv").exists()
    assert (a / "x.txt").read_text() == "x"
    assert tree(remote) == {"x.txt": md5(a / "x.txt")}


def test_reset_all_without_yes_and_tty_refuses(tmp_path: Path, remote: Path) -> None:
    a = tmp_path / "a"
    put(a, "x.txt", "x")
    assert sync(a, remote, "user-a", auto_approve=True).ok
    with pytest.raises(ConfigError, match="needs confirmation"):
        s3syncd.reset_all(platform="Local", datafolder=a, remote_path=str(remote))
    assert StateDir(a).versions.exists()
    assert (remote / ".S3" / "versions.csv").exists()


# --- no boto3 for Local ----------------------------------------------------------------------


def run_python(code: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("S3SYNCD_")}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_import_does_not_import_boto3(tmp_path: Path) -> None:
    code = "import s3syncd, sys; s3syncd.get_supported_platforms(); print('boto3' in sys.modules)"
    assert run_python(code, tmp_path).strip() == "False"


def test_local_sync_does_not_import_boto3(tmp_path: Path, remote: Path) -> None:
    put(tmp_path / "Data", "x.txt", "x")
    code = textwrap.dedent(
        f"""
        import sys
        import s3syncd
        s = s3syncd.smart_sync(platform="Local", datafolder="Data",
                               remote_path={str(remote)!r}, user_name="u", auto_approve=True)
        assert s.ok and len(s.done) == 1, s
        print("boto3 imported:", "boto3" in sys.modules, "botocore" in sys.modules)
        """
    )
    out = run_python(code, tmp_path)
    assert out.splitlines()[-1] == "boto3 imported: False False"
    assert (remote / "x.txt").read_text() == "x"
