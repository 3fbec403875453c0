"""``s3syncctl watch`` against the real daemon (Local platform), and its rate estimate."""

from __future__ import annotations

import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
from folders import put
from polling import wait_until

from s3syncd import ctl
from s3syncd.watch import RateMeter

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
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The config of a running daemon with one file waiting to be uploaded."""
    run = Path(tempfile.mkdtemp(prefix="s3sd-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    monkeypatch.delenv("NO_COLOR", raising=False)
    for var in list(os.environ):
        if var.startswith("S3SYNCD_"):
            monkeypatch.delenv(var)
    (tmp_path / "share").mkdir()
    put(tmp_path / "Data", "notes/report.csv", "a,b\n1,2\n")
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
        wait_until(lambda: run_ctl(cfg, "status")[0] == 0, 60, "the daemon to serve")
        wait_until(lambda: "report.csv" in run_ctl(cfg, "pending")[1], 60, "a pending upload")
        yield cfg
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        shutil.rmtree(run, ignore_errors=True)


def test_watch_once_renders_one_plain_frame(daemon: Path) -> None:
    code, out = run_ctl(daemon, "watch", "--once")
    assert code == 0, out
    assert out.startswith("s3syncd lab: ")
    assert (
        "Transfers in flight" in out
        and "Queue: 1 waiting for approval, 0 approved or running, 0 failed" in out
    )
    assert "notes/report.csv" in out and "upload" in out
    assert "Recent events" in out
    assert "\x1b" not in out  # not a terminal: no escape codes


def test_watch_on_a_terminal_quits_on_q_and_restores_the_terminal(daemon: Path) -> None:
    """The real command on a pseudo-terminal: it draws, 'q' ends it, exit code 0."""
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    code = "import sys; from s3syncd.ctl import main; sys.exit(main())"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--config", str(daemon), "watch"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"},
    )
    seen = b""

    def drawn() -> bool:
        nonlocal seen
        if select.select([master], [], [], 0.1)[0]:
            seen += os.read(master, 65536)
        return b"q or Ctrl-C quits" in seen

    try:
        wait_until(drawn, timeout=30, what="the first frame")
        assert b"notes/report.csv" in seen and b"\x1b[" in seen  # drawn in colour
        os.write(master, b"q")
        assert proc.wait(timeout=30) == 0
        assert termios.tcgetattr(slave) == before  # cbreak mode undone
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)


def test_rate_meter_follows_the_byte_counts() -> None:
    meter = RateMeter(window=5.0)
    assert meter.sample(0.0, 0, 1000).bytes_per_second is None
    rate = meter.sample(2.0, 200, 1000)
    assert rate.bytes_per_second == 100.0 and rate.seconds_left == 8.0
    # A new batch starts from zero: the old samples do not make a negative rate.
    assert meter.sample(3.0, 0, 500).bytes_per_second is None
