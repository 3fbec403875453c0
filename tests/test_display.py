"""Terminal output of ``s3syncctl``: colours only on a colour terminal, ``--json`` pinned."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import pytest

from s3syncd import ctl

STATUS: dict[str, Any] = {
    "state": "running",
    "name": "lab",
    "datafolder": "/d/Data",
    "remote": "/share",
    "user": "ana",
    "pending": 1,
    "approved": 0,
    "failed": 0,
    "connected": True,
    "last_poll": "2026-01-01T00:00:00+00:00",
    "last_poll_result": "unchanged",
    "errors": [{"time": "2026-01-01T00:00:01+00:00", "message": "boom \u00e9"}],
    "counts": {"local_files": 2, "remote_files": 1, "skipped": 0},
    "skipped": [],
    "conditional_writes": True,
    "held": None,
    "transfers": {"active": ["big.bin"], "bytes_done": 10, "bytes_total": 20},
    "actions": {},
}
PENDING: list[dict[str, Any]] = [
    {
        "id": "3f2a9c01d4",
        "kind": "upload",
        "path": "[red]notes[/red] " + "x" * 150 + ".txt",
        "size": 2048,
        "edited_by": "ana",
        "time_edited": None,
        "reason": "new local file",
        "queued_at": "2026-01-01T00:00:00+00:00",
        "state": "pending",
        "error": None,
    }
]

# What `status --json` and `pending --json` printed before rich came in; scripts parse them.
STATUS_JSON = (
    '{\n "state": "running",\n "name": "lab",\n "datafolder": "/d/Data",\n'
    ' "remote": "/share",\n "user": "ana",\n "pending": 1,\n "approved": 0,\n "failed": 0,\n'
    ' "connected": true,\n "last_poll": "2026-01-01T00:00:00+00:00",\n'
    ' "last_poll_result": "unchanged",\n "errors": [\n  {\n'
    '   "time": "2026-01-01T00:00:01+00:00",\n   "message": "boom \\u00e9"\n  }\n ],\n'
    ' "counts": {\n  "local_files": 2,\n  "remote_files": 1,\n  "skipped": 0\n },\n'
    ' "skipped": [],\n "conditional_writes": true,\n "held": null,\n "transfers": {\n'
    '  "active": [\n   "big.bin"\n  ],\n  "bytes_done": 10,\n  "bytes_total": 20\n },\n'
    ' "actions": {}\n}\n'
)
PENDING_JSON = (
    '[\n {\n  "id": "3f2a9c01d4",\n  "kind": "upload",\n'
    '  "path": "[red]notes[/red] ' + "x" * 150 + '.txt",\n  "size": 2048,\n'
    '  "edited_by": "ana",\n  "time_edited": null,\n  "reason": "new local file",\n'
    '  "queued_at": "2026-01-01T00:00:00+00:00",\n  "state": "pending",\n  "error": null\n'
    " }\n]\n"
)


class FakeCtl:
    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return {"status": STATUS, "pending": PENDING}[method]


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(argv: list[str], stdout: io.StringIO) -> str:
    args = ctl.build_parser().parse_args(argv)
    saved = sys.stdout
    sys.stdout = stdout
    try:
        assert ctl._dispatch(FakeCtl(), args) == 0  # type: ignore[arg-type]
    finally:
        sys.stdout = saved
    return stdout.getvalue()


@pytest.fixture(autouse=True)
def colour_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")


@pytest.mark.parametrize("stream", [io.StringIO, Tty])
def test_json_output_is_byte_stable_even_on_a_terminal(stream: type[io.StringIO]) -> None:
    assert run(["status", "--json"], stream()) == STATUS_JSON
    assert run(["pending", "--json"], stream()) == PENDING_JSON


@pytest.mark.parametrize("command", ["status", "pending"])
def test_no_escape_codes_off_a_terminal(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # a pipe stays plain even so
    out = run([command], io.StringIO())
    assert "\x1b" not in out


@pytest.mark.parametrize("command", ["status", "pending"])
def test_no_escape_codes_with_no_color_on_a_terminal(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    out = run([command], Tty())
    assert "\x1b" not in out
    assert "3f2a9c01d4" in out or "lab" in out


def test_a_terminal_gets_colours() -> None:
    assert "\x1b[" in run(["pending"], Tty())


def test_plain_pending_keeps_each_row_on_one_line_and_names_literal() -> None:
    out = run(["pending"], io.StringIO())
    lines = out.splitlines()
    assert len(lines) == 2, out  # header + one row, however long the path
    assert lines[0].split() == ["ID", "ACTION", "PATH", "SIZE", "WHO", "WHEN", "WHY"]
    assert PENDING[0]["path"] in lines[1]  # brackets are not taken as markup
    assert "2.0 KiB" in lines[1] and lines[1].endswith("new local file")


def test_plain_status_lists_the_facts() -> None:
    out = run(["status"], io.StringIO())
    assert out.splitlines()[0] == "s3syncd lab: running"
    assert "  pending     1 waiting for approval, 0 approved, 0 failed" in out
    assert "1 running, 10 B of 20 B" in out
    assert "boom \u00e9" in out


def test_one_shot_sync_draws_a_transfer_bar_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from s3syncd import api, cli
    from s3syncd.config import load_config
    from s3syncd.model import APPROVABLE_KINDS

    (tmp_path / "share").mkdir()
    (tmp_path / "Data").mkdir()
    (tmp_path / "Data" / "a.bin").write_bytes(b"x" * 3000)
    (tmp_path / "Data" / "b.bin").write_bytes(b"y" * 1000)
    cfg = load_config(
        None,
        {
            "platform": "Local",
            "datafolder": str(tmp_path / "Data"),
            "local.remote_path": str(tmp_path / "share"),
            "user_name": "ana",
        },
        environ={},
    )
    err = Tty()
    monkeypatch.setattr(sys, "stderr", err)
    said: list[str] = []
    summary = api.run_once(cfg, auto=APPROVABLE_KINDS, say=said.append, meter=cli._transfer_bar)
    assert summary.ok and len(summary.done) == 2
    assert "2/2 files" in err.getvalue() and "3.9/3.9 KiB" in err.getvalue()
