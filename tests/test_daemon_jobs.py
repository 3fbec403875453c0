"""The daemon's periodic jobs (DESIGN §3, "hourly full rescan + remote LIST audit"), run by the
real daemon with 2-second intervals against a loopback SeaweedFS.

Each job must find what nothing else would:

- the rescan: a local change the watcher cannot see. inotify reports a change to the folder
  through which the file was opened; a file with a second hard link outside the data folder
  that is written through that link raises no event in any watched folder (an editor or a
  tool working on the other name does exactly this). Only a full rescan, which compares
  size and mtime, notices it.
- the audit: an object written straight into the bucket, with no manifest row (another tool,
  or a client that crashed between its upload and its commit). A poll is a conditional GET
  of the manifest, which did not change, so only the LIST of the audit sees the object.

Nothing is auto-approved, so what the jobs find waits in the queue as pending actions.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from polling import wait_until
from test_daemon_e2e import (  # noqa: F401 - env and runtime_dir are fixtures used by name
    Node,
    env,
    make_node,
    runtime_dir,
    start,
    stop,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from s3server import S3Server

pytestmark = [pytest.mark.s3, pytest.mark.daemon]

JOBS = "rescan_interval = 2\naudit_interval = 2\n"
DEADLINE = 20.0  # a few job periods, with room for a loaded machine


def pending(node: Node, kind: str, path: str) -> dict[str, Any] | None:
    item = node.find(kind, path)
    return item if item is not None and item["state"] == "pending" else None


def test_rescan_and_audit_jobs_find_what_the_watcher_and_polls_cannot(
    tmp_path: Path,
    s3_server: S3Server,
    s3_bucket: str,
    s3_client: S3Client,
    env: dict[str, str],  # noqa: F811 - the fixture imported above
) -> None:
    node = make_node(tmp_path, "erin", s3_server, s3_bucket, "jobs", JOBS)
    report = node.data / "report.csv"
    report.write_bytes(b"v1\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.link(report, elsewhere / "report.csv")  # before the start: no event to be missed
    start(node, env)
    try:
        item = wait_until(lambda: pending(node, "upload", "report.csv"), what="the first upload")
        code, out = node.ctl("approve", item["id"])
        assert code == 0, out
        body = s3_client.get_object(Bucket=s3_bucket, Key="jobs/report.csv")["Body"].read()
        assert body == b"v1\n"
        assert node.pending() == []

        # (a) a change the watcher misses: written through the outside link
        changed_at = time.time()
        v2 = b"v2, edited through the other name\n"
        with open(elsewhere / "report.csv", "r+b") as fh:
            fh.write(v2)
        assert report.read_bytes() == v2  # one file, two names
        # (b) an object written around the manifest
        s3_client.put_object(Bucket=s3_bucket, Key="jobs/bypass.csv", Body=b"no row for me\n")

        up = wait_until(
            lambda: pending(node, "upload", "report.csv"), DEADLINE, "the rescan to see the edit"
        )
        assert up["reason"] == "changed locally"
        assert up["size"] == len(v2)
        down = wait_until(
            lambda: pending(node, "download", "bypass.csv"), DEADLINE, "the audit to see the object"
        )
        assert down["size"] == len(b"no row for me\n")
        st = node.status()
        rescanned = dt.datetime.fromisoformat(st["last_rescan"]).timestamp()
        assert rescanned >= int(changed_at)  # a rescan ran after the edit (second precision)
        assert st["errors"] == []
        assert sorted((p["kind"], p["path"]) for p in node.pending()) == [
            ("download", "bypass.csv"),
            ("upload", "report.csv"),
        ]
    finally:
        stop(node)
