"""``s3syncd init`` tries what it wrote with one request against the real SeaweedFS."""

from __future__ import annotations

import io
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3server import ACCESS_KEY, SECRET_KEY, S3Server

from s3syncd import cli

pytestmark = pytest.mark.s3


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    for var in list(os.environ):
        if var.startswith(("S3SYNCD_", "AWS_")) and var != "AWS_CA_BUNDLE":
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    root = logging.getLogger()
    handlers = root.handlers[:]
    yield
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)


def init(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, bucket: str, endpoint: str
) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(
        [
            "init",
            "--config",
            str(tmp_path / "team.toml"),
            "--bucket",
            bucket,
            "--prefix",
            "projects/alpha",
            "--endpoint-url",
            endpoint,
            "--user-name",
            "ana",
        ]
    )
    out, err = capsys.readouterr()
    return code, out, err


def test_a_good_bucket_passes_and_the_next_command_is_printed(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = init(capsys, tmp_path, s3_bucket, s3_server.endpoint)
    assert (code, err) == (0, "")
    assert f"checked: s3://{s3_bucket}/projects/alpha" in out
    assert "nothing synced there yet" in out
    assert f"s3syncd run --config {tmp_path / 'team.toml'}" in out


def test_an_existing_manifest_is_counted(
    s3_server: S3Server,
    s3_bucket: str,
    s3_client: object,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    body = b"File,Edited By,Time Edited,Checksum\na.csv,bob,2024-01-01 10:00:00,00\n"
    s3_client.put_object(  # type: ignore[attr-defined]
        Bucket=s3_bucket, Key="projects/alpha/.S3/versions.csv", Body=body
    )
    code, out, _ = init(capsys, tmp_path, s3_bucket, s3_server.endpoint)
    assert code == 0 and "manifest lists 1 file(s)" in out


def test_a_missing_bucket_is_named(
    s3_server: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = init(capsys, tmp_path, "no-such-bucket-here", s3_server.endpoint)
    assert code == 1
    assert "bucket 'no-such-bucket-here' does not exist" in err
    assert "create the bucket, or correct [s3] bucket in" in err
    assert (tmp_path / "team.toml").exists()  # kept: the fix is usually outside it


def test_bad_credentials_are_named(
    s3_server: S3Server,
    s3_bucket: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    code, _, err = init(capsys, tmp_path, s3_bucket, s3_server.endpoint)
    assert code == 1
    assert "access denied" in err and "AWS_PROFILE" in err
    assert "not-the-secret" not in err


def test_no_credentials_at_all_are_named(
    s3_server: S3Server,
    s3_bucket: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, _, err = init(capsys, tmp_path, s3_bucket, s3_server.endpoint)
    assert code == 1 and "no AWS credentials found" in err


def test_an_unreachable_endpoint_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = init(capsys, tmp_path, "any", f"http://127.0.0.1:{port}")
    assert code == 1
    assert f"cannot reach the S3 endpoint http://127.0.0.1:{port}" in err
    assert "correct [s3] endpoint_url" in err


def test_a_missing_local_remote_folder_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        [
            "init",
            "--config",
            str(tmp_path / "team.toml"),
            "--platform",
            "Local",
            "--remote-path",
            str(tmp_path / "nas"),
            "--user-name",
            "ana",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert f"the remote folder {tmp_path / 'nas'} does not exist" in err
    assert "correct [local] remote_path" in err
