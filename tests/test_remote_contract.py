"""One contract for every platform: S3 (through a real SeaweedFS on 127.0.0.1) and Local.

The platform-specific tests at the end cover what only one platform has (credentials,
buckets, endpoints; symlinks and mount points).
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import unique_name
from s3server import S3Server

from s3syncd.errors import (
    AuthError,
    BucketNotFoundError,
    ConfigError,
    EndpointError,
    PreconditionFailedError,
    RemoteNotFoundError,
    SyncError,
    UnsafePathError,
)
from s3syncd.remote import platform_class
from s3syncd.remote.base import MANIFEST_KEY, NOT_MODIFIED, Blob, Remote
from s3syncd.remote.localdir import LocalDirRemote

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from s3syncd.remote.s3 import S3Remote

MiB = 1024 * 1024


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def make_s3_remote(server: S3Server, bucket: str, prefix: str, **kwargs: Any) -> S3Remote:
    from s3syncd.remote.s3 import S3Remote

    return S3Remote(bucket, prefix, server.client(), **kwargs)


@pytest.fixture(
    params=[
        pytest.param("S3", marks=pytest.mark.s3),
        pytest.param("S3-boto3", marks=pytest.mark.s3),
        "Local",
    ]
)
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Remote]:
    """Each platform, empty. S3 uses a 5 MiB multipart threshold so multipart is cheap.

    "S3" carries data transfers on the CRT (awscrt is a dependency), "S3-boto3" on boto3
    alone, as where awscrt is missing: the same contract holds on both.
    """
    if request.param.startswith("S3"):
        from s3syncd.remote.s3 import TransferEngine

        server: S3Server = request.getfixturevalue("s3_server")
        bucket: str = request.getfixturevalue("s3_bucket")
        engine = TransferEngine.BOTO3 if request.param == "S3-boto3" else TransferEngine.CRT
        s3 = make_s3_remote(
            server,
            bucket,
            unique_name("p"),
            multipart_threshold=5 * MiB,
            multipart_chunksize=5 * MiB,
            transfer_engine=engine,
        )
        try:
            yield s3
        finally:
            s3.close()
    else:
        root = tmp_path / "remote"
        root.mkdir()
        yield LocalDirRemote(root)


def write_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- contract --------------------------------------------------------------------------


def test_registry_names_the_platform(remote: Remote) -> None:
    assert platform_class(remote.name) is type(remote)


def test_check_and_describe(remote: Remote) -> None:
    remote.check()
    assert remote.describe()


def test_list_empty(remote: Remote) -> None:
    assert remote.list() == {}


def test_list_leaves_out_state_folder_unless_asked(remote: Remote) -> None:
    remote.write_blob(MANIFEST_KEY, b"File,Edited By,Time Edited,Checksum\n")
    remote.write_blob(".S3/deleted/a/b.txt", b"trash")
    remote.write_blob("data.txt", b"data")
    assert set(remote.list()) == {"data.txt"}
    assert set(remote.list(".S3/")) == {MANIFEST_KEY, ".S3/deleted/a/b.txt"}
    assert set(remote.list(".S3/deleted/")) == {".S3/deleted/a/b.txt"}


def test_list_under_is_a_key_prefix(remote: Remote) -> None:
    for key in ("a/x", "a/sub/y", "ab/z", "b"):
        remote.write_blob(key, key.encode())
    assert set(remote.list("a/")) == {"a/x", "a/sub/y"}
    assert set(remote.list("a")) == {"a/x", "a/sub/y", "ab/z"}
    assert set(remote.list("a/s")) == {"a/sub/y"}
    assert remote.list("nothing/") == {}


def test_list_more_than_one_page(remote: Remote) -> None:
    # S3 returns at most 1000 keys per page; 1100 forces the paginator to a second page.
    keys = [f"many/{i // 100:02d}/k{i:04d}.txt" for i in range(1100)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: remote.write_blob(k, k.encode()), keys))
    listing = remote.list()
    assert set(listing) == set(keys)
    sample = listing["many/10/k1050.txt"]
    assert sample.key == "many/10/k1050.txt"
    assert sample.size == len(b"many/10/k1050.txt")
    assert sample.md5 == md5_of(b"many/10/k1050.txt")
    assert len(remote.list("many/03/")) == 100


@pytest.mark.parametrize(
    "key", ["with space/ünïcødé 文件.txt", "sym+bols&eq=1 (copy).csv", "deep/er/é/ß.bin"]
)
def test_unusual_keys_roundtrip(remote: Remote, tmp_path: Path, key: str) -> None:
    data = f"content of {key}".encode()
    src = write_file(tmp_path / "src", data)
    obj = remote.upload(src, key, md5_of(data))
    assert obj.key == key
    assert set(remote.list()) == {key}
    dest = tmp_path / "dest"
    remote.download(key, dest)
    assert dest.read_bytes() == data
    blob = remote.read_blob(key)
    assert isinstance(blob, Blob) and blob.data == data
    remote.delete(key)
    assert remote.list() == {}


def test_upload_download_roundtrip_with_progress(remote: Remote, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    src = write_file(tmp_path / "src.bin", data)
    sent: list[int] = []
    obj = remote.upload(src, "dir/file.bin", md5_of(data), sent.append)
    assert sum(sent) == len(data)
    assert (obj.key, obj.size, obj.md5) == ("dir/file.bin", len(data), md5_of(data))
    listed = remote.list()["dir/file.bin"]
    assert (listed.size, listed.etag, listed.md5) == (len(data), obj.etag, md5_of(data))
    received: list[int] = []
    dest = tmp_path / "dest.bin"
    remote.download("dir/file.bin", dest, received.append)
    assert dest.read_bytes() == data
    assert sum(received) == len(data)


@pytest.mark.parametrize("size", [0, 4096, 1 * MiB + 3, 11 * MiB], ids=str)
def test_download_returns_the_md5_of_what_it_wrote(
    remote: Remote, tmp_path: Path, size: int
) -> None:
    """The MD5 comes from the bytes as they were written, so the caller need not read the
    file back; it is what the file holds, never the metadata's word for it."""
    data = os.urandom(size)
    remote.upload(write_file(tmp_path / "src", data), "f.bin", md5_of(data))
    dest = tmp_path / "dest"
    written = remote.download("f.bin", dest)
    assert dest.read_bytes() == data
    assert written == md5_of(data)


def test_download_over_an_existing_temp_file_replaces_it(remote: Remote, tmp_path: Path) -> None:
    data = b"short"
    remote.upload(write_file(tmp_path / "src", data), "f.txt", md5_of(data))
    dest = write_file(tmp_path / "dest", b"a much longer leftover from an earlier attempt")
    assert remote.download("f.txt", dest) == md5_of(data)
    assert dest.read_bytes() == data


@pytest.mark.parametrize("size", [1 * MiB, 11 * MiB], ids=["single", "multipart"])
def test_upload_never_vouches_for_content_it_did_not_store(
    remote: Remote, tmp_path: Path, size: int
) -> None:
    """The file changed after it was hashed: the platform must refuse the upload or
    report the MD5 of what it really stored, never the planned one."""
    hashed = os.urandom(size)
    planned = md5_of(hashed)
    src = write_file(tmp_path / "live.bin", hashed[:-4096] + os.urandom(4096))
    try:
        obj = remote.upload(src, "live.bin", planned)
    except SyncError:
        return
    assert obj.md5 == md5_of(src.read_bytes()) != planned


def test_multipart_upload_keeps_md5(remote: Remote, tmp_path: Path) -> None:
    data = os.urandom(11 * MiB)
    md5 = md5_of(data)
    obj = remote.upload(write_file(tmp_path / "big.bin", data), "big.bin", md5)
    # upload() reports the MD5 of the bytes it actually stored.
    assert (obj.size, obj.md5) == (len(data), md5)
    stat = remote.stat("big.bin")
    assert stat is not None and stat.md5 == md5
    if remote.name == "S3":
        # 3 parts of 5 MiB: the ETag is md5-of-md5s, so only the metadata knows the MD5.
        assert stat.etag.endswith("-3")
        assert remote.list()["big.bin"].md5 is None
    else:
        assert remote.list()["big.bin"].md5 == md5
    dest = tmp_path / "back.bin"
    remote.download("big.bin", dest)
    assert md5_of(dest.read_bytes()) == md5


def test_stat(remote: Remote) -> None:
    assert remote.stat("missing.txt") is None
    etag = remote.write_blob("present.txt", b"hello")
    obj = remote.stat("present.txt")
    assert obj is not None
    assert (obj.key, obj.size, obj.etag, obj.md5) == ("present.txt", 5, etag, md5_of(b"hello"))


def test_delete(remote: Remote) -> None:
    remote.delete("never-existed.txt")
    remote.write_blob("d/gone.txt", b"x")
    remote.delete("d/gone.txt")
    assert remote.stat("d/gone.txt") is None
    assert remote.list() == {}
    remote.delete("d/gone.txt")


def test_download_missing_raises_not_found(remote: Remote, tmp_path: Path) -> None:
    with pytest.raises(RemoteNotFoundError):
        remote.download("missing.bin", tmp_path / "out")


def test_copy_refuses_to_overwrite(remote: Remote, tmp_path: Path) -> None:
    data = b"original content"
    remote.upload(write_file(tmp_path / "f", data), "a.txt", md5_of(data))
    remote.copy("a.txt", ".S3/deleted/a.txt")
    copied = remote.stat(".S3/deleted/a.txt")
    assert copied is not None and copied.md5 == md5_of(data)

    remote.write_blob("b.txt", b"other")
    with pytest.raises(PreconditionFailedError):
        remote.copy("b.txt", ".S3/deleted/a.txt")
    blob = remote.read_blob(".S3/deleted/a.txt")
    assert isinstance(blob, Blob) and blob.data == data

    with pytest.raises(RemoteNotFoundError):
        remote.copy("missing.txt", "elsewhere.txt")


def test_read_blob_conditional(remote: Remote) -> None:
    assert remote.read_blob(MANIFEST_KEY) is None
    assert remote.read_blob(MANIFEST_KEY, if_none_match=md5_of(b"x")) is None
    etag = remote.write_blob(MANIFEST_KEY, b"v1")
    blob = remote.read_blob(MANIFEST_KEY)
    assert blob == Blob(data=b"v1", etag=etag)
    assert remote.read_blob(MANIFEST_KEY, if_none_match=etag) is NOT_MODIFIED
    assert remote.read_blob(MANIFEST_KEY, if_none_match=f'"{etag}"') is NOT_MODIFIED
    new_etag = remote.write_blob(MANIFEST_KEY, b"v2", if_match=etag)
    assert new_etag != etag
    assert remote.read_blob(MANIFEST_KEY, if_none_match=etag) == Blob(b"v2", new_etag)


def test_write_blob_create_only_twice(remote: Remote) -> None:
    remote.write_blob(MANIFEST_KEY, b"first", create_only=True)
    with pytest.raises(PreconditionFailedError):
        remote.write_blob(MANIFEST_KEY, b"second", create_only=True)
    blob = remote.read_blob(MANIFEST_KEY)
    assert isinstance(blob, Blob) and blob.data == b"first"


def test_write_blob_stale_if_match(remote: Remote) -> None:
    old = remote.write_blob(MANIFEST_KEY, b"v1")
    current = remote.write_blob(MANIFEST_KEY, b"v2", if_match=old)
    with pytest.raises(PreconditionFailedError):
        remote.write_blob(MANIFEST_KEY, b"v3", if_match=old)
    blob = remote.read_blob(MANIFEST_KEY)
    assert blob == Blob(b"v2", current)
    # SeaweedFS answers 412 here, AWS 404: both must mean "precondition failed".
    with pytest.raises(PreconditionFailedError):
        remote.write_blob("never-written.csv", b"x", if_match=old)


def test_if_match_race_has_exactly_one_winner(remote: Remote) -> None:
    etag = remote.write_blob(MANIFEST_KEY, b"base")
    writers = 16
    start = threading.Barrier(writers)

    def attempt(i: int) -> bytes | None:
        # Different bodies: an identical body keeps the ETag, and a second writer
        # would then succeed legitimately.
        body = f"writer {i}".encode()
        start.wait(timeout=30)
        try:
            remote.write_blob(MANIFEST_KEY, body, if_match=etag)
        except PreconditionFailedError:
            return None
        return body

    with ThreadPoolExecutor(writers) as pool:
        results = list(pool.map(attempt, range(writers)))
    winners = [body for body in results if body is not None]
    assert len(winners) == 1
    blob = remote.read_blob(MANIFEST_KEY)
    assert isinstance(blob, Blob) and blob.data == winners[0]


def test_supports_conditional_writes(remote: Remote) -> None:
    assert remote.supports_conditional_writes() is True
    assert remote.supports_conditional_writes() is True  # cached, still true
    assert remote.list(".S3/") == {}  # the probe cleaned up after itself


@pytest.mark.parametrize("key", ["../escape.txt", "/abs.txt", "a/../../b", "a//b", "", "./x"])
def test_unsafe_keys_are_refused(remote: Remote, key: str) -> None:
    with pytest.raises(UnsafePathError):
        remote.write_blob(key, b"x")
    with pytest.raises(UnsafePathError):
        remote.stat(key)


# -- S3 only ---------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def from_settings(settings: dict[str, Any]) -> S3Remote:
    from s3syncd.remote.s3 import S3Remote

    return S3Remote.from_config(settings)


@pytest.mark.s3
def test_s3_from_config_and_describe(s3_server: S3Server, s3_bucket: str) -> None:
    remote = from_settings(s3_server.remote_settings(s3_bucket, "/team/data/"))
    try:
        remote.check()
        assert remote.prefix == "team/data"
        assert remote.describe() == f"s3://{s3_bucket}/team/data at {s3_server.endpoint}"
        assert s3_server.secret_key not in remote.describe()
        remote.write_blob("x.txt", b"x")
        assert set(remote.list()) == {"x.txt"}
    finally:
        remote.close()


@pytest.mark.s3
def test_s3_endpoint_from_environment(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    settings = s3_server.remote_settings(s3_bucket, "env")
    del settings["endpoint_url"]
    remote = from_settings(settings)
    try:
        remote.check()
        assert remote.describe().endswith(f" at {s3_server.endpoint}")
        remote.write_blob("k", b"v")
        assert set(remote.list()) == {"k"}
    finally:
        remote.close()


@pytest.mark.s3
def test_s3_prefix_normalisation_and_isolation(
    s3_server: S3Server, s3_bucket: str, s3_client: S3Client
) -> None:
    with pytest.raises(ConfigError):
        make_s3_remote(s3_server, s3_bucket, "a/../b")
    root = make_s3_remote(s3_server, s3_bucket, "")
    p = make_s3_remote(s3_server, s3_bucket, "/p/")
    p2 = make_s3_remote(s3_server, s3_bucket, "p2")
    try:
        assert (root.prefix, p.prefix, root.describe()) == (
            "",
            "p",
            f"s3://{s3_bucket} at {s3_server.endpoint}",
        )
        p.write_blob("one.txt", b"1")
        p2.write_blob("two.txt", b"2")
        root.write_blob("top.txt", b"t")
        assert set(p.list()) == {"one.txt"}
        assert set(p2.list()) == {"two.txt"}
        assert set(root.list()) == {"top.txt", "p/one.txt", "p2/two.txt"}
        stored = {o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]}
        assert stored == {"top.txt", "p/one.txt", "p2/two.txt"}
    finally:
        for r in (root, p, p2):
            r.close()


@pytest.mark.s3
def test_s3_managed_copy_above_threshold_keeps_md5(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    remote = make_s3_remote(s3_server, s3_bucket, "c", copy_threshold=1 * MiB)
    try:
        data = os.urandom(2 * MiB)
        remote.upload(write_file(tmp_path / "f", data), "big", md5_of(data))
        remote.copy("big", "big-copy")
        copied = remote.stat("big-copy")
        assert copied is not None and copied.md5 == md5_of(data)
        with pytest.raises(PreconditionFailedError):
            remote.copy("big", "big-copy")
    finally:
        remote.close()


@pytest.mark.s3
@pytest.mark.parametrize("which", ["secret", "access_key"])
def test_s3_wrong_credentials_raise_auth_error(
    s3_server: S3Server, s3_bucket: str, which: str
) -> None:
    settings = s3_server.remote_settings(s3_bucket, "p")
    bad_secret = "not-the-secret-123"
    if which == "secret":
        settings["credentials"]["aws_secret_access_key"] = bad_secret
    else:
        settings["credentials"]["aws_access_key_id"] = "nobody"
    remote = from_settings(settings)
    try:
        with pytest.raises(AuthError) as check_err:
            remote.check()
        with pytest.raises(AuthError) as list_err:
            remote.list()
        for err in (check_err.value, list_err.value):
            assert bad_secret not in str(err) and s3_server.secret_key not in str(err)
    finally:
        remote.close()


@pytest.mark.s3
def test_s3_missing_bucket(s3_server: S3Server) -> None:
    name = unique_name("missing")
    remote = from_settings(s3_server.remote_settings(name, "p"))
    try:
        with pytest.raises(BucketNotFoundError, match=f"bucket '{name}' does not exist"):
            remote.check()
        with pytest.raises(BucketNotFoundError):
            remote.list()
    finally:
        remote.close()


@pytest.mark.s3
def test_s3_unreachable_endpoint_fails_fast(s3_server: S3Server) -> None:
    settings = s3_server.remote_settings("bucket", "p")
    settings.update(
        endpoint_url=f"http://127.0.0.1:{closed_port()}",
        connect_timeout=1,
        read_timeout=1,
        max_attempts=1,
    )
    remote = from_settings(settings)
    try:
        started = time.monotonic()
        with pytest.raises(EndpointError, match=r"127\.0\.0\.1"):
            remote.check()
        assert time.monotonic() - started < 5
    finally:
        remote.close()


@pytest.mark.s3
def test_s3_no_credentials(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    # Keep boto3 away from this machine's own AWS files and from instance metadata.
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    settings = s3_server.remote_settings("bucket", "p")
    del settings["credentials"]
    remote = from_settings(settings)
    try:
        with pytest.raises(AuthError, match="no AWS credentials found"):
            remote.check()
    finally:
        remote.close()


def test_s3_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        from_settings({"prefix": "p"})
    with pytest.raises(ConfigError, match="aws_secret_key") as err:
        from_settings({"bucket": "b", "credentials": {"aws_secret_key": "hunter2"}})
    assert "hunter2" not in str(err.value)
    with pytest.raises(ConfigError):
        from_settings({"bucket": "b", "profile": "no-such-profile-s3syncd"})


# -- Local only ------------------------------------------------------------------------


def test_local_from_config(tmp_path: Path) -> None:
    remote = LocalDirRemote.from_config({"remote_path": str(tmp_path)})
    assert remote.root == tmp_path
    with pytest.raises(ConfigError):
        LocalDirRemote.from_config({})


def test_local_check_refuses_missing_or_non_directory_root(tmp_path: Path) -> None:
    missing = LocalDirRemote(tmp_path / "not-mounted")
    with pytest.raises(EndpointError, match="does not exist"):
        missing.check()
    # An unmounted share must not look empty, and must not be created by a write.
    with pytest.raises(EndpointError):
        missing.list()
    with pytest.raises(EndpointError):
        missing.write_blob(MANIFEST_KEY, b"x")
    assert not (tmp_path / "not-mounted").exists()
    with pytest.raises(EndpointError, match="not a directory"):
        LocalDirRemote(write_file(tmp_path / "file", b"")).check()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_local_check_refuses_read_only_root(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o500)
    try:
        with pytest.raises(EndpointError, match="not writable"):
            LocalDirRemote(root).check()
    finally:
        root.chmod(0o700)


def test_local_never_follows_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "remote"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    write_file(outside / "secret.txt", b"outside")
    (root / "linked-dir").symlink_to(outside)
    (root / "linked-file.txt").symlink_to(outside / "secret.txt")
    remote = LocalDirRemote(root)
    remote.write_blob("real.txt", b"real")
    assert set(remote.list()) == {"real.txt"}
    assert remote.list("linked-dir/") == {}
    assert remote.stat("linked-file.txt") is None
    with pytest.raises(UnsafePathError):
        remote.write_blob("linked-dir/new.txt", b"x")
    with pytest.raises(UnsafePathError):
        remote.stat("linked-dir/secret.txt")
    assert not (outside / "new.txt").exists()


def test_local_hides_its_internals(tmp_path: Path) -> None:
    remote = LocalDirRemote(tmp_path)
    remote.write_blob(MANIFEST_KEY, b"m", create_only=True)
    assert (tmp_path / ".S3" / ".lock").exists()
    assert set(remote.list(".S3/")) == {MANIFEST_KEY}
    assert list((tmp_path / ".S3" / ".tmp").iterdir()) == []  # no temp debris
    with pytest.raises(UnsafePathError):
        remote.write_blob(".S3/.lock", b"x")


def test_local_delete_prunes_empty_folders(tmp_path: Path) -> None:
    remote = LocalDirRemote(tmp_path)
    remote.write_blob("a/b/c.txt", b"c")
    remote.write_blob("a/keep.txt", b"k")
    remote.delete("a/b/c.txt")
    assert not (tmp_path / "a" / "b").exists()
    assert (tmp_path / "a" / "keep.txt").exists()


def test_local_md5_follows_changes_made_by_others(tmp_path: Path) -> None:
    remote = LocalDirRemote(tmp_path)
    remote.write_blob("f.txt", b"one")
    assert remote.list()["f.txt"].md5 == md5_of(b"one")
    # Another client replaces the file the way every writer does: a rename over it.
    write_file(tmp_path / "tmp", b"two")
    os.replace(tmp_path / "tmp", tmp_path / "f.txt")
    assert remote.list()["f.txt"].md5 == md5_of(b"two")


@pytest.mark.s3
def test_s3_check_aborts_abandoned_multipart_uploads(
    s3_server: S3Server, s3_bucket: str, s3_client: S3Client
) -> None:
    """A transfer killed mid-way leaves parts behind; the next start-up removes them,
    but only under our prefix and only once they are old enough."""
    mine = s3_client.create_multipart_upload(Bucket=s3_bucket, Key="ours/big.bin")["UploadId"]
    other = s3_client.create_multipart_upload(Bucket=s3_bucket, Key="theirs/x.bin")["UploadId"]
    young = make_s3_remote(s3_server, s3_bucket, "ours")
    old = make_s3_remote(s3_server, s3_bucket, "ours", stale_upload_age=0)
    try:
        young.check()
        ids = {
            u["UploadId"]
            for u in s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
        }
        assert {mine, other} <= ids
        old.check()
        ids = {
            u["UploadId"]
            for u in s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
        }
        assert mine not in ids and other in ids
    finally:
        young.close()
        old.close()


def test_upload_preconditions(remote: Remote, tmp_path: Path) -> None:
    """Create-only and If-Match ride on every upload path (the CRT's too)."""
    v1, v2, ours = b"v1", b"v2 by a colleague", b"our edit"
    first = remote.upload(write_file(tmp_path / "v1", v1), "f.txt", md5_of(v1), create_only=True)
    with pytest.raises(PreconditionFailedError):
        remote.upload(write_file(tmp_path / "o", ours), "f.txt", md5_of(ours), create_only=True)
    second = remote.upload(
        write_file(tmp_path / "v2", v2), "f.txt", md5_of(v2), if_match=first.etag
    )
    with pytest.raises(PreconditionFailedError):
        remote.upload(tmp_path / "o", "f.txt", md5_of(ours), if_match=first.etag)
    assert remote.download("f.txt", tmp_path / "now") == md5_of(v2)
    remote.delete("f.txt")
    with pytest.raises(PreconditionFailedError):
        remote.upload(tmp_path / "o", "f.txt", md5_of(ours), if_match=second.etag)
    assert remote.stat("f.txt") is None


def test_upload_refuses_content_that_is_not_the_md5(remote: Remote, tmp_path: Path) -> None:
    """Content-MD5 (S3) makes the store refuse bytes other than the ones hashed."""
    src = write_file(tmp_path / "f", b"what the file holds now")
    try:
        obj = remote.upload(src, "f.txt", md5_of(b"what was hashed"), create_only=True)
    except SyncError:
        assert remote.stat("f.txt") is None
        return
    assert obj.md5 == md5_of(src.read_bytes())


@pytest.mark.s3
@pytest.mark.parametrize("engine", ["crt", "boto3"])
def test_s3_transfer_errors_are_translated(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path, engine: str
) -> None:
    """Whatever carries the data, a missing object, a missing bucket and wrong
    credentials give the same errors, without secrets."""
    settings = s3_server.remote_settings(s3_bucket, "p")
    settings["transfer_engine"] = engine
    src = write_file(tmp_path / "f", b"data")
    remote = from_settings(settings)
    try:
        with pytest.raises(RemoteNotFoundError):
            remote.download("missing.txt", tmp_path / "d")
    finally:
        remote.close()
    bad_secret = "not-the-secret-123"
    settings["credentials"]["aws_secret_access_key"] = bad_secret
    remote = from_settings(settings)
    try:
        with pytest.raises(AuthError) as up:
            remote.upload(src, "f.txt", md5_of(b"data"), create_only=True)
        with pytest.raises(AuthError) as down:
            remote.download("f.txt", tmp_path / "d")
        for err in (up.value, down.value):
            assert bad_secret not in str(err) and s3_server.secret_key not in str(err)
    finally:
        remote.close()
    missing = {**s3_server.remote_settings(unique_name("missing"), "p"), "transfer_engine": engine}
    remote = from_settings(missing)
    try:
        with pytest.raises(BucketNotFoundError):
            remote.download("f.txt", tmp_path / "d")
    finally:
        remote.close()


@pytest.mark.s3
def test_s3_transfer_engine_setting(s3_server: S3Server, s3_bucket: str) -> None:
    settings = s3_server.remote_settings(s3_bucket, "p")
    with pytest.raises(ConfigError, match="transfer_engine"):
        from_settings({**settings, "transfer_engine": "fast"})
    for engine in ("auto", "crt", "boto3"):
        from_settings({**settings, "transfer_engine": engine}).close()


@pytest.mark.s3
@pytest.mark.parametrize("engine", ["crt", "boto3"])
def test_s3_transfers_to_an_unreachable_endpoint_fail_fast(
    s3_server: S3Server, tmp_path: Path, engine: str
) -> None:
    """The CRT keeps the client's retry budget and connect timeout, not its own (5
    retries with up to 20 s of backoff)."""
    settings = s3_server.remote_settings("bucket", "p")
    settings.update(
        endpoint_url=f"http://127.0.0.1:{closed_port()}",
        connect_timeout=1,
        read_timeout=1,
        max_attempts=1,
        transfer_engine=engine,
    )
    remote = from_settings(settings)
    src = write_file(tmp_path / "f", b"data")
    try:
        for transfer in (
            lambda: remote.upload(src, "f.txt", md5_of(b"data")),
            lambda: remote.download("f.txt", tmp_path / "d"),
        ):
            started = time.monotonic()
            with pytest.raises(EndpointError, match=r"127\.0\.0\.1"):
                transfer()
            # Loose on purpose (a loaded 2-core CI machine): the CRT's own retry policy
            # (5 attempts, up to 20 s of backoff) would take longer than this.
            assert time.monotonic() - started < 15
    finally:
        remote.close()
