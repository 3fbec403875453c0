"""Shared fixtures. Each section says who owns it; add new sections below the last one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from s3server import S3Server, start_server

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from s3syncd.remote.s3 import S3Remote


# --------------------------------------------------------------------------------------
# S3 server fixtures (remote platforms). Non-fixture code lives in tests/s3server.py so
# benchmarks and daemon tests can start a server without pytest.
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One SeaweedFS `weed mini` on 127.0.0.1 for the whole session (auth enforced)."""
    server = start_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_client(s3_server: S3Server) -> Iterator[S3Client]:
    """An admin boto3 client for setting up buckets and inspecting objects directly."""
    client = s3_server.client()
    try:
        yield client
    finally:
        client.close()


def unique_name(stem: str) -> str:
    """A bucket-safe unique name (lowercase letters, digits, '-')."""
    return f"{stem}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def s3_bucket(s3_client: S3Client) -> str:
    """A fresh, empty bucket. Not deleted afterwards: the server's folder goes at session end."""
    name = unique_name("t")
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_remote(s3_server: S3Server, s3_bucket: str) -> Iterator[S3Remote]:
    """An ``S3Remote`` on a unique prefix of a fresh bucket, with default transfer settings."""
    from s3syncd.remote.s3 import S3Remote

    remote = S3Remote(s3_bucket, unique_name("p"), s3_server.client())
    try:
        yield remote
    finally:
        remote.close()


# --------------------------------------------------------------------------------------
# (end of S3 server fixtures)
# --------------------------------------------------------------------------------------
