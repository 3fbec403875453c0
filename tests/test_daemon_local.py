"""The real daemon on the Local platform (a folder as the remote): failure handling
that is easier to provoke without an S3 server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from polling import wait_until

from s3syncd import ctl

pytestmark = pytest.mark.daemon


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
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    """(config, remote folder) of a running daemon; stopped by SIGTERM afterwards."""
    run = Path(tempfile.mkdtemp(prefix="s3sd-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    for var in list(os.environ):
        if var.startswith("S3SYNCD_"):
            monkeypatch.delenv(var)
    remote = tmp_path / "share"
    remote.mkdir()
    (tmp_path / "Data").mkdir()
    cfg = tmp_path / "lab.toml"
    cfg.write_text(
        'platform = "Local"\nuser_name = "lab"\n[local]\nremote_path = "share"\n'
        "[daemon]\ndebounce = 0.2\npoll_interval = 0.5\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "s3syncd", "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ),
    )
    try:
        wait_until(lambda: run_ctl(cfg, "status")[0] == 0, what="the daemon to serve")
        yield cfg, remote
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        shutil.rmtree(run, ignore_errors=True)


def status(cfg: Path) -> dict[str, Any]:
    code, out = run_ctl(cfg, "status", "--json")
    assert code == 0, out
    result: dict[str, Any] = json.loads(out)
    return result


def test_failing_polls_are_reported_and_the_scheduler_keeps_going(
    daemon: tuple[Path, Path],
) -> None:
    cfg, remote = daemon
    hidden = remote.with_name("share-away")
    remote.rename(hidden)  # the network share "goes away"
    st = wait_until(
        lambda: (lambda s: s if not s["connected"] else None)(status(cfg)), what="a failed poll"
    )
    assert st["last_poll_result"].startswith("error")
    assert st["errors"] and "poll" in st["errors"][-1]["message"]
    code, out = run_ctl(cfg, "status")
    assert code == 0 and "NOT CONNECTED" in out
    hidden.rename(remote)  # it comes back: the next polls succeed again
    wait_until(lambda: status(cfg)["connected"], what="polls to recover")


def test_a_bad_request_param_is_an_error_reply_not_a_crash(daemon: tuple[Path, Path]) -> None:
    cfg, _remote = daemon
    code, out = run_ctl(cfg, "approve", "no-such-id")
    assert code == 1 and "no pending action" in out
    code, out = run_ctl(cfg, "resolve", "nope", "--keep", "local")
    assert code == 1
    assert status(cfg)["state"] == "running"


class FakeCtl:
    """Replays daemon status replies for ctl.wait_for."""

    def __init__(self, replies: list[dict[str, Any]]) -> None:
        self.replies = replies

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        assert method == "status"
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]


def reply(state: str, done: int, total: int) -> dict[str, Any]:
    return {
        "actions": {"abc": {"state": state, "message": None if state != "failed" else "boom"}},
        "transfers": {"bytes_done": done, "bytes_total": total, "active": ["x"]},
    }


class Tty(StringIO):
    def isatty(self) -> bool:
        return True


def test_approve_waits_with_a_progress_bar_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    fake = FakeCtl([reply("running", 0, 100), reply("running", 50, 100), reply("done", 100, 100)])
    assert ctl.wait_for(fake, ["abc"]) == 0  # type: ignore[arg-type]
    bars = tty.getvalue()
    assert "1/1 files" in bars and "100/100 bytes" in bars  # the last frame, all done
    assert "bytes/s" in bars  # the rate
    assert "abc: done" in capsys.readouterr().out


def test_approve_draws_no_bar_off_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeCtl([reply("running", 0, 100), reply("done", 100, 100)])
    assert ctl.wait_for(fake, ["abc"]) == 0  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    assert out == "abc: done\n" and err == ""


def test_approve_exit_code_is_1_when_an_action_failed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = FakeCtl([reply("failed", 0, 0)])
    assert ctl.wait_for(fake, ["abc"]) == 1  # type: ignore[arg-type]
    assert "abc: failed: boom" in capsys.readouterr().out
