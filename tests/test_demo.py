"""``s3syncd demo``: real daemons on a local remote, run to the end and interrupted."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from polling import wait_until

from s3syncd import cli

pytestmark = pytest.mark.daemon


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_demo_walks_through_and_cleans_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = tmp_path / "demo"
    assert cli.main(["demo", "--yes", "--dir", str(where)]) == 0
    out = capsys.readouterr().out
    for command in (
        "$ s3syncd run -c ana/s3syncd.toml 2> ana/daemon.log &",
        "$ s3syncctl -c ana/s3syncd.toml pending",
        "$ s3syncctl -c ben/s3syncd.toml approve --all",
        "$ cat ben/Data/results.csv",
    ):
        assert command in out
    assert re.search(r"\$ s3syncctl -c ana/s3syncd.toml approve [0-9a-f]{10}\n", out)
    assert "done: uploaded" in out and "done: downloaded" in out
    assert "A1,0.42" in out  # Ben's copy, printed by the last step
    # diff is used only where this version of s3syncctl has it.
    usage = subprocess.run(
        [sys.executable, "-c", "from s3syncd.ctl import main; main(['--help'])"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    has_diff = re.search(r"^\s+diff\s", usage, re.M) is not None
    assert has_diff == ("$ s3syncctl -c ana/s3syncd.toml diff" in out)
    assert not where.exists()
    pids = [int(p) for p in re.findall(r"^\[\d\] (\d+)$", out, re.M)]
    assert len(pids) == 2 and all(gone(p) for p in pids)


def test_ctrl_c_stops_the_daemons_and_removes_the_folder(tmp_path: Path) -> None:
    where = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "s3syncd", "demo", "--yes", "--dir", str(where)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    seen = b""

    def started() -> bool:
        nonlocal seen
        if select.select([proc.stdout], [], [], 0.1)[0]:
            seen += os.read(proc.stdout.fileno(), 65536)
        return b"2. Ana saves" in seen

    try:
        wait_until(started, timeout=120, what="the daemons to be up")
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = (seen + rest).decode()
    assert proc.returncode == 1 and "interrupted" in out
    pids = [int(p) for p in re.findall(r"^\[\d\] (\d+)$", out, re.M)]
    assert len(pids) == 2 and all(gone(p) for p in pids)
    assert not where.exists()
