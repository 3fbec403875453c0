"""The listing's ETag as the change signal, and buckets whose ETags are not MD5s (issue 6,
defects 2 and 13), against the real SeaweedFS on 127.0.0.1.

Defect 2: an object uploaded in parts has no MD5 in its ETag, so a stale row written back
by an old client could not be told from the truth, and a colleague's edit went over v2.
Defect 13: on SSE-KMS buckets a single-part ETag is 32 hex digits that are not the MD5;
trusting it made every row look stale. SeaweedFS refuses SSE-KMS writes without a KMS
(InternalError) and keeps MD5 ETags under SSE-S3, so :class:`KmsLikeS3Remote` stands in
for such a bucket at the platform seam: real HTTP, only the ETags it reports are changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import unique_name
from s3sites import MULTIPART_THRESHOLD, Site, make_site

from s3syncd import executor
from s3syncd.model import Action, ActionKind, Row
from s3syncd.remote.base import MANIFEST_KEY
from s3syncd.remote.s3 import S3Remote
from s3syncd.state import StateDir

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from s3server import S3Server

pytestmark = pytest.mark.s3

_HEX32 = re.compile(r"[0-9a-f]{32}")


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def big(tag: str) -> bytes:
    """Content above the multipart threshold, distinct per tag."""
    return tag.encode() + os.urandom(3 * MULTIPART_THRESHOLD)


class KmsLikeS3Remote(S3Remote):
    """An S3 platform whose bucket reports SSE-KMS-style ETags: a single-part object's
    ETag is 32 hex digits but not its MD5. Requests still go to the real server; the
    ETags we send back (If-Match) are translated to the server's own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._real: dict[str, str] = {}
        super().__init__(*args, **kwargs)

    def _etag(self, raw: str) -> str:
        etag = super()._etag(raw)
        if not _HEX32.fullmatch(etag):
            return etag  # multipart ETags look the same on every bucket
        fake = md5(b"kms:" + etag.encode())
        self._real[fake] = etag
        return fake

    def _wire_etag(self, etag: str) -> str:
        return super()._wire_etag(self._real.get(etag, etag))


@pytest.fixture
def sites(tmp_path: Path, s3_server: S3Server, s3_bucket: str) -> Iterator[tuple[Site, Site, str]]:
    prefix = unique_name("team")
    a = make_site(tmp_path, "alice", s3_server, s3_bucket, prefix)
    b = make_site(tmp_path, "bob", s3_server, s3_bucket, prefix)
    try:
        yield a, b, prefix
    finally:
        a.close()
        b.close()


@pytest.fixture
def kms_sites(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> Iterator[tuple[Site, Site, str]]:
    prefix = unique_name("kms")
    a = make_site(tmp_path, "alice", s3_server, s3_bucket, prefix, KmsLikeS3Remote)
    b = make_site(tmp_path, "bob", s3_server, s3_bucket, prefix, KmsLikeS3Remote)
    try:
        yield a, b, prefix
    finally:
        a.close()
        b.close()


def everywhere(client: S3Client, bucket: str, prefix: str, *folders: Path) -> set[str]:
    """MD5 of every copy of anything: remote objects (trash included) and local files
    (trash and conflict copies included)."""
    found = set()
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix + "/"
    ):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"]
            found.add(md5(body.read()))
    for folder in folders:
        found |= {md5(p.read_bytes()) for p in folder.rglob("*") if p.is_file()}
    return found


def manifest_bytes(client: S3Client, bucket: str, prefix: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=f"{prefix}/{MANIFEST_KEY}")["Body"].read()


def blind_write(client: S3Client, bucket: str, prefix: str, data: bytes) -> None:
    """What the original package does at the end of every run."""
    client.put_object(Bucket=bucket, Key=f"{prefix}/{MANIFEST_KEY}", Body=data)


# --- defect 2: a multipart object under a stale row --------------------------------------


def test_colleague_edit_never_goes_over_a_multipart_version_hidden_by_a_stale_row(
    sites: tuple[Site, Site, str], s3_client: S3Client, s3_bucket: str
) -> None:
    a, b, prefix = sites
    v1, v2, v3 = big("v1"), big("v2"), big("v3")
    a.write("f.bin", v1)
    assert a.sync().ok
    assert b.sync().ok and b.read("f.bin") == v1
    head = s3_client.head_object(Bucket=s3_bucket, Key=f"{prefix}/f.bin")
    assert head["ETag"].strip('"').endswith("-1"), "the test needs a multipart object"
    stale = manifest_bytes(s3_client, s3_bucket, prefix)  # an old client starts its run
    a.write("f.bin", v2)
    assert a.sync().ok
    blind_write(s3_client, s3_bucket, prefix, stale)  # ... and ends it: row says v1 again
    b.write("f.bin", v3)  # bob edits on top of v1
    kinds = b.kinds("f.bin")
    assert kinds == [ActionKind.CONFLICT], f"bob would {kinds} f.bin over alice's v2"
    report = b.sync()
    assert report.ok, report.failed
    assert {md5(v2), md5(v3)} <= everywhere(s3_client, s3_bucket, prefix, b.folder, a.folder)
    assert b.read("f.bin") == v2  # kept both: the remote version in place, bob's aside
    assert md5(v3) in {md5(p.read_bytes()) for p in b.folder.glob("f.conflict-*")}


def test_unchanged_side_downloads_the_multipart_version_a_stale_row_hides(
    sites: tuple[Site, Site, str], s3_client: S3Client, s3_bucket: str
) -> None:
    a, b, prefix = sites
    v1, v2 = big("v1"), big("v2")
    a.write("f.bin", v1)
    assert a.sync().ok
    assert b.sync().ok
    stale = manifest_bytes(s3_client, s3_bucket, prefix)
    a.write("f.bin", v2)
    assert a.sync().ok
    blind_write(s3_client, s3_bucket, prefix, stale)
    assert b.kinds("f.bin") == [ActionKind.DOWNLOAD]
    assert b.sync().ok
    assert b.read("f.bin") == v2
    # The download also put the row right again for everyone.
    assert md5(v2).encode() in manifest_bytes(s3_client, s3_bucket, prefix)


def test_changed_object_without_md5_metadata_is_unknown_not_unchanged(
    sites: tuple[Site, Site, str], s3_client: S3Client, s3_bucket: str, tmp_path: Path
) -> None:
    """An old client re-uploads in parts (boto3 upload_file, no md5 metadata) and writes
    back its stale manifest: nothing tells us the MD5, so the object counts as changed."""
    a, b, prefix = sites
    v1, v2, v3 = big("v1"), big("v2"), big("v3")
    a.write("f.bin", v1)
    assert a.sync().ok
    assert b.sync().ok
    stale = manifest_bytes(s3_client, s3_bucket, prefix)
    src = tmp_path / "old-client-v2.bin"
    src.write_bytes(v2)
    from boto3.s3.transfer import TransferConfig

    s3_client.upload_file(
        str(src),
        s3_bucket,
        f"{prefix}/f.bin",
        Config=TransferConfig(multipart_threshold=MULTIPART_THRESHOLD),
    )
    blind_write(s3_client, s3_bucket, prefix, stale)
    b.write("f.bin", v3)
    assert b.kinds("f.bin") == [ActionKind.CONFLICT]
    assert b.sync().ok
    assert {md5(v2), md5(v3)} <= everywhere(s3_client, s3_bucket, prefix, b.folder)


def test_base_keeps_the_agreed_etag_and_reads_the_old_format(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.ensure()
    # sync-base.json as written before ETags were kept.
    state.file("sync-base.json").write_text(json.dumps({"v": 1, "files": {"a.txt": "0" * 32}}))
    assert state.load_base() == {"a.txt": "0" * 32}
    assert state.load_base_etags() == {}
    state.save_base({"a.txt": "1" * 32, "b.txt": "2" * 32}, {"a.txt": "e-1", "gone.txt": "e"})
    assert state.load_base() == {"a.txt": "1" * 32, "b.txt": "2" * 32}
    # An ETag is kept only beside the MD5 it was agreed with.
    assert state.load_base_etags() == {"a.txt": "e-1"}


def test_engine_records_etags_of_what_it_agreed(
    sites: tuple[Site, Site, str], s3_client: S3Client, s3_bucket: str
) -> None:
    a, b, prefix = sites
    a.write("f.bin", big("v1"))
    a.write("small.txt", b"small")
    assert a.sync().ok
    assert b.sync().ok
    for site in (a, b):
        etags = site.engine.state.load_base_etags()
        base = site.engine.state.load_base()
        for rel in ("f.bin", "small.txt"):
            head = s3_client.head_object(Bucket=s3_bucket, Key=f"{prefix}/{rel}")
            etag = head["ETag"].strip('"')
            # An ETag that is the content's MD5 says nothing more: the base keeps it as
            # its MD5 only (memory per file); any other ETag is kept beside the MD5.
            kept = None if etag == base[rel] else etag
            assert etags.get(rel) == kept, (site.name, rel)
        assert etags.get("f.bin") is not None, "a multipart ETag must be remembered"


def test_unchanged_multipart_objects_cost_no_head_requests(
    sites: tuple[Site, Site, str],
) -> None:
    a, b, _ = sites
    for n in range(4):
        a.write(f"f{n}.bin", big(str(n)))
    assert a.sync().ok
    assert b.sync().ok
    before = b.remote.request_count()
    b.engine._relist()
    # One LIST page, no HEAD: every listed ETag is the agreed one.
    assert b.remote.request_count() - before == 1


# --- defect 13: ETags that are not MD5s ----------------------------------------------------


def test_bucket_with_non_md5_etags_syncs_without_stale_rows_or_conflicts(
    kms_sites: tuple[Site, Site, str],
) -> None:
    a, b, _ = kms_sites
    files = {"one.txt": b"one", "dir/two.txt": b"two", "f.bin": big("v1")}
    for rel, data in files.items():
        a.write(rel, data)
    first = a.sync()
    assert first.ok, first.failed
    assert a.plan() == [], "every row looked stale on the uploader's side"
    # The listing's 32-hex ETag is not taken for the MD5; the metadata is.
    listed = a.remote.list()["one.txt"]
    assert _HEX32.fullmatch(listed.etag) and listed.etag != md5(b"one")
    assert listed.md5 is None
    stat = a.remote.stat("one.txt")
    assert stat is not None and stat.md5 == md5(b"one")
    # A colleague already holding the same files (no common base): agreement, no copies.
    b.write("one.txt", b"one")
    second = b.sync()
    assert second.ok, second.failed
    assert second.conflicts() == []
    assert {p.relative_to(b.folder).as_posix(): p.read_bytes() for p in _user_files(b)} == files
    assert b.plan() == []
    # Changes flow both ways.
    b.write("one.txt", b"one, edited by bob")
    assert b.sync().ok
    assert a.sync().ok and a.read("one.txt") == b"one, edited by bob"
    assert a.plan() == [] and b.plan() == []


def test_download_whose_md5_differs_from_the_etag_but_equals_the_row_is_fine(
    kms_sites: tuple[Site, Site, str], s3_client: S3Client, s3_bucket: str
) -> None:
    a, _, prefix = kms_sites
    data = b"content whose ETag is not its MD5"
    s3_client.put_object(Bucket=s3_bucket, Key=f"{prefix}/x.txt", Body=data)
    listed = a.remote.list()["x.txt"]
    row = Row("x.txt", "carol", "2026-01-01 00:00:00", md5(data))
    # Planned from facts that took the ETag for the MD5 (an old listing, a stale row fix).
    action = Action(ActionKind.DOWNLOAD, "x.txt", "test", None, row, listed.etag, None)
    a.engine.state.ensure()
    ctx = executor.Context(a.engine.state, a.remote, "alice", lambda: "20260101-000000", {})
    out = executor.run(ctx, action, None)
    assert out.ok, out.message
    assert a.read("x.txt") == data


def test_learns_that_etags_are_md5s_from_its_own_single_part_upload(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    plain = S3Remote(s3_bucket, unique_name("p"), s3_server.client())
    kms = KmsLikeS3Remote(s3_bucket, unique_name("p"), s3_server.client())
    try:
        src = tmp_path / "f.txt"
        src.write_bytes(b"hello")
        for remote in (plain, kms):
            remote.upload(src, "f.txt", md5(b"hello"))
        assert plain.list()["f.txt"].md5 == md5(b"hello")
        assert kms.list()["f.txt"].md5 is None
    finally:
        plain.close()
        kms.close()


def _user_files(site: Site) -> list[Path]:
    return [
        p
        for p in site.folder.rglob("*")
        if p.is_file() and not p.relative_to(site.folder).as_posix().startswith(".S3/")
    ]


def test_kms_like_platform_keeps_conditional_writes_working(
    kms_sites: tuple[Site, Site, str],
) -> None:
    """The double must not break If-Match: both sites commit, neither loses a row."""
    a, b, _ = kms_sites
    a.write("a.txt", b"a")
    b.write("b.txt", b"b")
    assert a.sync().ok and b.sync().ok and a.sync().ok
    assert a.read("b.txt") == b"b" and b.read("a.txt") == b"a"
    assert a.remote.supports_conditional_writes()
