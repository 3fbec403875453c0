"""One-shot sync end to end: two data folders sharing one prefix of a real S3 server.

Driven through ``s3syncd sync`` in-process (``cli.main``) and, for the kill test, as a
subprocess.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest
from folders import tree

from s3syncd import cli
from s3syncd.state import StateDir

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from s3server import S3Server

pytestmark = pytest.mark.s3


@pytest.fixture
def creds(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    for var in list(os.environ):
        if var.startswith("S3SYNCD_"):
            monkeypatch.delenv(var)


def write_config(
    path: Path, folder: str, user: str, server: S3Server, bucket: str, prefix: str, extra: str = ""
) -> Path:
    path.write_text(
        f'datafolder = "{folder}"\nplatform = "S3"\nuser_name = "{user}"\n'
        f'[s3]\nbucket = "{bucket}"\nprefix = "{prefix}"\n'
        f'endpoint_url = "{server.endpoint}"\nregion = "{server.region}"\n{extra}'
    )
    return path


@pytest.fixture
def pair(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str, creds: None
) -> Iterator[tuple[Path, Path, Path, Path]]:
    """(A.toml, B.toml, A's data folder, B's data folder) on one fresh prefix."""
    a = write_config(tmp_path / "A.toml", "A/Data", "alice", s3_server, s3_bucket, "team/alpha")
    b = write_config(tmp_path / "B.toml", "B/Data", "bob", s3_server, s3_bucket, "team/alpha")
    (tmp_path / "A/Data").mkdir(parents=True)
    yield a, b, tmp_path / "A/Data", tmp_path / "B/Data"


def sync(config: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = cli.main(["sync", "--config", str(config), "--yes", *extra])
    return code, capsys.readouterr().out


def remote_manifest(client: S3Client, bucket: str, prefix: str) -> pd.DataFrame:
    body = client.get_object(Bucket=bucket, Key=f"{prefix}/.S3/versions.csv")["Body"].read()
    return pd.read_csv(io.BytesIO(body))


def test_two_folders_converge_create_modify_delete(
    pair: tuple[Path, Path, Path, Path],
    capsys: pytest.CaptureFixture[str],
    s3_client: S3Client,
    s3_bucket: str,
) -> None:
    a_cfg, b_cfg, a, b = pair
    files = {
        "top.csv": b"a,b\n1,2\n",
        "nested/deeper/data 1.txt": b"spaces in the name\n",
        "données/résumé é.csv": "non-ascii ✓\n".encode(),
        "nested/empty.bin": b"",
        "big.bin": os.urandom(3 << 20),
    }
    for rel, data in files.items():
        (a / rel).parent.mkdir(parents=True, exist_ok=True)
        (a / rel).write_bytes(data)
    code, out = sync(a_cfg, capsys)
    assert code == 0, out
    code, out = sync(b_cfg, capsys)
    assert code == 0, out
    assert tree(b) == tree(a)

    # modify one, delete one, add one in A
    (a / "top.csv").write_bytes(b"a,b\n1,3\n")
    (a / "nested/deeper/data 1.txt").unlink()
    (a / "nested/new.txt").write_bytes(b"new\n")
    assert sync(a_cfg, capsys)[0] == 0
    code, out = sync(b_cfg, capsys)
    assert code == 0, out
    assert tree(b) == tree(a)
    assert "delete_local" in out
    # B's deleted file went to its local trash, not away
    trashed = list((b / ".S3/trash").rglob("data 1.txt"))
    assert len(trashed) == 1

    df = remote_manifest(s3_client, s3_bucket, "team/alpha")
    assert list(df.columns) == ["File", "Edited By", "Time Edited", "Checksum"]
    assert sorted(df["File"]) == sorted(tree(a))
    assert len(df.dropna()) == len(df)  # the original's dropna keeps every row
    assert dict(zip(df["File"], df["Checksum"], strict=True)) == tree(a)
    # The remote delete kept a copy under its full relative path.
    trash = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="team/alpha/.S3/deleted/")
    [key] = [o["Key"] for o in trash["Contents"]]
    assert key.startswith("team/alpha/.S3/deleted/nested/deeper/data 1.txt~")
    assert key.endswith("-alice")
    assert s3_client.head_object(Bucket=s3_bucket, Key=key)["ContentLength"] > 0
    tomb = s3_client.get_object(Bucket=s3_bucket, Key="team/alpha/.S3/deletedS3.csv")
    tombs = pd.read_csv(io.BytesIO(tomb["Body"].read()))
    assert list(tombs["File"]) == ["nested/deeper/data 1.txt"]
    # A second pass on both sides has nothing to do.
    assert "Everything is in sync." in sync(a_cfg, capsys)[1]
    assert "Everything is in sync." in sync(b_cfg, capsys)[1]


def test_conflict_keeps_both_versions(
    pair: tuple[Path, Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a_cfg, b_cfg, a, b = pair
    (a / "report.csv").write_bytes(b"v1\n")
    assert sync(a_cfg, capsys)[0] == 0
    assert sync(b_cfg, capsys)[0] == 0
    (a / "report.csv").write_bytes(b"alice's edit\n")
    (b / "report.csv").write_bytes(b"bob's edit\n")
    assert sync(a_cfg, capsys)[0] == 0
    code, out = sync(b_cfg, capsys)
    assert code == 0
    assert "Conflict on report.csv" in out
    contents = {p.read_bytes() for p in b.iterdir() if p.is_file()}
    assert contents == {b"alice's edit\n", b"bob's edit\n"}
    copies = [p.name for p in b.iterdir() if p.name.startswith("report.conflict-bob-")]
    assert len(copies) == 1 and copies[0].endswith(".csv")
    # The conflict copy travels to A on the next round, so nobody loses either edit.
    assert sync(b_cfg, capsys)[0] == 0
    assert sync(a_cfg, capsys)[0] == 0
    assert tree(a) == tree(b)


def test_dry_run_changes_nothing(
    pair: tuple[Path, Path, Path, Path],
    capsys: pytest.CaptureFixture[str],
    s3_client: S3Client,
    s3_bucket: str,
) -> None:
    a_cfg, _b_cfg, a, _b = pair
    (a / "x.txt").write_bytes(b"x")
    code, out = sync(a_cfg, capsys, "--dry-run")
    assert code == 0
    assert "would upload: x.txt" in out
    listed = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="team/alpha/x.txt")
    assert listed.get("KeyCount", 0) == 0


def test_lost_row_is_restored_not_deleted(
    pair: tuple[Path, Path, Path, Path],
    capsys: pytest.CaptureFixture[str],
    s3_client: S3Client,
    s3_bucket: str,
) -> None:
    """An old client's blind write drops our row: the object is still there, so the
    row is restored and nobody's file is deleted."""
    a_cfg, b_cfg, a, b = pair
    (a / "keep.txt").write_bytes(b"precious")
    (a / "other.txt").write_bytes(b"other")
    assert sync(a_cfg, capsys)[0] == 0
    assert sync(b_cfg, capsys)[0] == 0
    key = "team/alpha/.S3/versions.csv"
    body = s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read().decode()
    blind = "\n".join(line for line in body.splitlines() if not line.startswith("keep.txt"))
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=(blind + "\n").encode())
    code, _out = sync(b_cfg, capsys)
    assert code == 0
    assert (b / "keep.txt").read_bytes() == b"precious"
    df = remote_manifest(s3_client, s3_bucket, "team/alpha")
    assert "keep.txt" in set(df["File"])


def test_unsafe_manifest_rows_are_refused(
    pair: tuple[Path, Path, Path, Path],
    capsys: pytest.CaptureFixture[str],
    s3_client: S3Client,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    a_cfg, b_cfg, a, b = pair
    (a / "ok.txt").write_bytes(b"fine")
    assert sync(a_cfg, capsys)[0] == 0
    key = "team/alpha/.S3/versions.csv"
    body = s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read().decode()
    evil = "".join(
        f"{p},mallory,2026-01-01 00:00:00,{'0' * 32}\n"
        for p in ("../escape.txt", "/etc/owned", ".S3/versions.csv", "a/../../x")
    )
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=(body + evil).encode())
    for p in ("escape.txt", "x"):
        s3_client.put_object(Bucket=s3_bucket, Key=f"team/{p}", Body=b"evil")
    code, _out = sync(b_cfg, capsys)
    assert code == 0
    assert (b / "ok.txt").read_bytes() == b"fine"
    assert not (tmp_path / "B/escape.txt").exists()
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "x").exists()
    assert sorted(tree(b)) == ["ok.txt"]


def test_malformed_manifest_is_a_clear_error(
    pair: tuple[Path, Path, Path, Path],
    capsys: pytest.CaptureFixture[str],
    s3_client: S3Client,
    s3_bucket: str,
) -> None:
    a_cfg, _b, a, _bb = pair
    (a / "ok.txt").write_bytes(b"fine")
    assert sync(a_cfg, capsys)[0] == 0
    before = StateDir(a).load_base()
    s3_client.put_object(
        Bucket=s3_bucket,
        Key="team/alpha/.S3/versions.csv",
        Body=b'File,Edited By,Time Edited,Checksum\nok.txt,a,b\n"unterminated\n',
    )
    code = cli.main(["sync", "--config", str(a_cfg), "--yes"])
    err = capsys.readouterr().err
    assert code == 1
    assert "versions.csv" in err and "line" in err
    assert StateDir(a).load_base() == before
    assert (a / "ok.txt").read_bytes() == b"fine"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("bucket", "does not exist"),
        ("creds", "credentials"),
        ("endpoint", "reach"),
    ],
)
def test_bad_remote_is_one_clear_sentence(
    tmp_path: Path,
    s3_server: S3Server,
    creds: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    setup: str,
    message: str,
) -> None:
    bucket = "no-such-bucket-xyz"
    server = s3_server
    if setup != "bucket":
        bucket = "whatever"
    cfg = write_config(tmp_path / "c.toml", "Data", "u", server, bucket, "p")
    if setup == "creds":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    if setup == "endpoint":
        text = cfg.read_text().replace(server.endpoint, "http://127.0.0.1:9")
        cfg.write_text(text)
    code = cli.main(["sync", "--config", str(cfg), "--yes"])
    err = capsys.readouterr().err
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert message in lines[0].lower(), err
    assert "wrong-secret-value" not in err


def test_kill_9_mid_sync_loses_nothing(
    pair: tuple[Path, Path, Path, Path],
    capsys: pytest.CaptureFixture[str],
    s3_client: S3Client,
    s3_bucket: str,
) -> None:
    """kill -9 while uploading; the next run resumes and both sides converge."""
    a_cfg, b_cfg, a, b = pair
    for i in range(60):
        (a / f"f{i:03}.bin").write_bytes(os.urandom(200_000))
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, "-m", "s3syncd", "sync", "--config", str(a_cfg), "--yes"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            listed = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="team/alpha/f")
            if listed.get("KeyCount", 0) >= 5 or proc.poll() is not None:
                break
            time.sleep(0.01)
        killed = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert killed, "the sync finished before it could be interrupted"
    code, out_a = sync(a_cfg, capsys)
    assert code == 0, out_a
    code, out_b = sync(b_cfg, capsys)
    assert code == 0, out_b
    assert tree(b) == tree(a), out_a + out_b
    assert len(tree(b)) == 60
    assert not list((a / ".S3/tmp").iterdir())


def test_reset_removes_state_but_keeps_data_and_deleted_copies(
    pair: tuple[Path, Path, Path, Path],
    capsys: pytest.CaptureFixture[str],
    s3_client: S3Client,
    s3_bucket: str,
) -> None:
    a_cfg, _b, a, _bb = pair
    (a / "x.txt").write_bytes(b"x")
    (a / "y.txt").write_bytes(b"y")
    assert sync(a_cfg, capsys)[0] == 0
    (a / "y.txt").unlink()
    assert sync(a_cfg, capsys)[0] == 0
    assert cli.main(["reset", "--config", str(a_cfg), "--yes"]) == 0
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert "team/alpha/x.txt" in keys
    assert any(k.startswith("team/alpha/.S3/deleted/y.txt~") for k in keys)
    assert "team/alpha/.S3/versions.csv" not in keys
    assert (a / "x.txt").read_bytes() == b"x"
    assert not (a / ".S3/versions.csv").exists()
    assert not (a / ".S3/sync-state.db").exists()
