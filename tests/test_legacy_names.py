"""Names the original package cannot carry are still synced, with a warning."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from s3syncd import api
from s3syncd.config import build_config
from s3syncd.model import APPROVABLE_KINDS


def test_a_file_named_null_is_synced_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "share").mkdir()
    data = tmp_path / "Data"
    data.mkdir()
    (data / "null").write_bytes(b"x")
    (data / "fine.csv").write_bytes(b"y")
    cfg = build_config(
        {"platform": "Local", "local.remote_path": "share", "user_name": "u"}, tmp_path
    )
    with caplog.at_level(logging.WARNING, logger="s3syncd.engine"):
        summary = api.run_once(cfg, auto=APPROVABLE_KINDS, say=lambda _s: None)
    assert summary.ok and len(summary.done) == 2
    assert (tmp_path / "share" / "null").read_bytes() == b"x"
    warned = [r.getMessage() for r in caplog.records if "original" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("null ")
