"""Desktop notifications: off by default; with ``[daemon] notify = true`` the real daemon
runs ``notify-send`` (here a fake one on PATH that records its arguments)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
from folders import put
from polling import wait_until

from s3syncd import ctl, notify
from s3syncd.config import load_config
from s3syncd.errors import ConfigError

FAKE = '#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done >> "{record}"\n'


def run_ctl(config: Path, *args: str) -> tuple[int, str]:
    out = StringIO()
    saved = sys.stdout
    sys.stdout = out
    try:
        code = ctl.main(["--config", str(config), *args])
    finally:
        sys.stdout = saved
    return code, out.getvalue()


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    """(folder, record file); a fake notify-send first on PATH writes into the record."""
    run = Path(tempfile.mkdtemp(prefix="s3sd-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    for var in list(os.environ):
        if var.startswith("S3SYNCD_"):
            monkeypatch.delenv(var)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "notified.txt"
    fake = bin_dir / "notify-send"
    fake.write_text(FAKE.format(record=record))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "share").mkdir()
    try:
        yield tmp_path, record
    finally:
        shutil.rmtree(run, ignore_errors=True)


def start(folder: Path, notify_line: str) -> tuple[Path, subprocess.Popen[bytes]]:
    cfg = folder / "lab.toml"
    cfg.write_text(
        'platform = "Local"\nuser_name = "lab"\n[local]\nremote_path = "share"\n'
        f"[daemon]\ndebounce = 0.2\npoll_interval = 0.5\n{notify_line}"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "s3syncd", "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ),
    )
    wait_until(lambda: run_ctl(cfg, "status")[0] == 0, 60, "the daemon to serve")
    return cfg, proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


@pytest.mark.daemon
def test_new_pending_actions_notify_when_enabled(lab: tuple[Path, Path]) -> None:
    folder, record = lab
    cfg, proc = start(folder, "notify = true\n")
    try:
        put(folder / "Data", "report.csv", "a,b\n")
        wait_until(lambda: record.exists(), 60, "a notification")
        args = record.read_text().splitlines()
        assert args[0] == "--app-name=s3syncd"
        assert args[1] == "s3syncd lab: 1 new action(s) to approve"
        assert "s3syncctl pending" in args[2]
        # The same action waiting on does not notify again at the next pass.
        assert run_ctl(cfg, "sync")[0] == 0
        assert len(record.read_text().splitlines()) == 3
    finally:
        stop(proc)


@pytest.mark.daemon
def test_no_notification_by_default(lab: tuple[Path, Path]) -> None:
    folder, record = lab
    cfg, proc = start(folder, "")
    try:
        put(folder / "Data", "report.csv", "a,b\n")
        wait_until(lambda: "report.csv" in run_ctl(cfg, "pending")[1], 60, "a pending upload")
        assert run_ctl(cfg, "sync")[0] == 0  # a whole pass, notification included, has run
        assert not record.exists()
    finally:
        stop(proc)


def test_the_command_per_desktop() -> None:
    found = {"notify-send": "/usr/bin/notify-send", "osascript": "/usr/bin/osascript"}
    assert notify.command("t", "b", found.get, "linux") == [
        "/usr/bin/notify-send",
        "--app-name=s3syncd",
        "t",
        "b",
    ]
    mac = notify.command('say "hi"', "b\\", found.get, "darwin")
    assert mac == [
        "/usr/bin/osascript",
        "-e",
        'display notification "b\\\\" with title "say \\"hi\\""',
    ]
    assert notify.command("t", "b", {}.get, "linux") is None


def test_notify_is_a_boolean_setting(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('platform = "Local"\n[local]\nremote_path = "r"\n[daemon]\nnotify = true\n')
    assert load_config(path, environ={}).daemon.notify is True
    assert load_config(path, environ={"S3SYNCD_NOTIFY": "off"}).daemon.notify is False
    default = load_config(None, {"platform": "Local", "local.remote_path": "r"}, {})
    assert default.daemon.notify is False
    with pytest.raises(ConfigError, match=r"daemon\.notify must be true or false"):
        load_config(path, environ={"S3SYNCD_NOTIFY": "maybe"})
