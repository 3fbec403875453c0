"""Commits must not undo a colleague's work (issue 6, defects 3-5).

- A commit that merged other users' rows leaves the engine with a listing older than its
  manifest; planning on that mix "corrects" their fresh rows, re-adds rows of files they
  deleted and tombstones files they just added (defect 3).
- The journal of uncommitted rows must survive the next batch, and a replay must not put
  our row over a colleague's newer one (defect 4).
- Rows of other clients are written back byte for byte, however odd (defect 5).

Engines run against the Local platform (a directory as the remote), as in test_engine.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_engine import World, md5

from s3syncd import tables
from s3syncd.errors import RemoteError
from s3syncd.model import RemoteObject, Row
from s3syncd.remote.base import ProgressCallback
from s3syncd.remote.localdir import LocalDirRemote


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    leaked = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not leaked, f"threads left running: {leaked}"


@pytest.fixture
def world(tmp_path: Path) -> World:
    root = tmp_path / "remote"
    root.mkdir()
    return World(tmp_path, root)


class HookedRemote(LocalDirRemote):
    """Runs ``hook`` (once) just before the upload of ``key``: a colleague acting mid-batch."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.key = ""
        self.hook: Callable[[], None] | None = None

    def upload(
        self, src: Path, key: str, md5: str, progress: ProgressCallback | None = None
    ) -> RemoteObject:
        hook, self.hook = (self.hook, None) if key == self.key else (None, self.hook)
        if hook is not None:
            hook()
        return super().upload(src, key, md5, progress)


class UnreachableRemote(LocalDirRemote):
    """Reads work; every manifest write fails while ``down`` (the network went away)."""

    down = False

    def write_blob(
        self,
        key: str,
        data: bytes,
        if_match: str | None = None,
        create_only: bool = False,
    ) -> str:
        if self.down:
            raise RemoteError(f"write {key}: the remote is unreachable")
        return super().write_blob(key, data, if_match=if_match, create_only=create_only)


# --- defect 5: foreign rows are written back as read ------------------------------------

FOREIGN = [
    b"odd/abc.txt,carol,2026-01-02 03:04:05,abc",
    b"odd/upper.txt,carol,2026-01-02 03:04:05,0CC175B9C0F1B6A831C399E269772661",
    b"odd/nan.txt,carol,2026-01-02 03:04:05,nan",
    b"odd/notime.txt,carol,,0cc175b9c0f1b6a831c399e269772661",
    b"odd/na-time.txt,carol,NA,0cc175b9c0f1b6a831c399e269772661",
    b'"odd/comma, quoted.txt",carol,2026-01-02 03:04:05,ABC',
    b"shared.txt,NA,2026-01-02 03:04:05," + md5(b"shared\n").encode(),
]


@pytest.mark.parametrize("foreign", FOREIGN, ids=lambda raw: raw.split(b",")[0].decode())
def test_foreign_row_survives_our_commit_byte_for_byte(world: World, foreign: bytes) -> None:
    alice = world.site("alice")
    alice.write("mine.txt", b"mine\n")
    assert alice.sync().ok
    # Rows we can act on have their objects (else "object gone; drop row" is right).
    (world.remote_root / "shared.txt").write_bytes(b"shared\n")
    (world.remote_root / "odd").mkdir()
    (world.remote_root / "odd/na-time.txt").write_bytes(b"a")
    manifest_key = world.obj(".S3/versions.csv")
    manifest_key.write_bytes(manifest_key.read_bytes() + foreign + b"\n")

    alice.write("new.txt", b"new\n")
    summary = alice.sync()
    assert summary.ok, summary.failed
    written = manifest_key.read_bytes()
    lines = written.split(b"\n")
    assert foreign in lines, f"foreign row changed or dropped: {written!r}"
    ours = [ln for ln in lines if ln.startswith((b"mine.txt,", b"new.txt,"))]
    assert len(ours) == 2
    for ln in ours:
        cells = ln.split(b",")
        assert len(cells) == 4 and all(cells), ln
    assert world.rows()["new.txt"].checksum == md5(b"new\n")
    # the rows we could act on were acted on (downloaded), without being rewritten
    assert alice.read("shared.txt") == b"shared\n"
    assert alice.read("odd/na-time.txt") == b"a"


M = md5(b"a")


def test_splice_of_a_table_we_wrote_equals_rendering_it_whole() -> None:
    old = [Row("a.txt", "x", "2026-01-01 00:00:00", M), Row("c.txt", "x", "2026-01-01 00:00:00", M)]
    ours = [
        Row("b.txt", "me", "2026-01-02 00:00:00", M),
        Row("c.txt", "me", "2026-01-02 00:00:00", M),
    ]
    spliced = tables.splice_rows(tables.render_rows(old), {"c.txt"}, ours, "t")
    assert spliced == tables.render_rows([old[0], *ours])


def test_splice_keeps_bom_line_ends_order_and_odd_rows() -> None:
    data = (
        b"\xef\xbb\xbfFile,Edited By,Time Edited,Checksum\r\n"
        b"z.txt,NA,,ABC\r\n"
        b"a.txt,x,t,abc\r\n"
        b'"q""\nx",a,b,c'  # a quoted newline, no line end at the end of the file
    )
    ours = Row("m.txt", "me", "2026-01-02 00:00:00", M)
    spliced = tables.splice_rows(data, {"a.txt"}, [ours], "t")
    assert (
        spliced
        == (
            b"\xef\xbb\xbfFile,Edited By,Time Edited,Checksum\r\n"
            b"m.txt,me,2026-01-02 00:00:00," + M.encode() + b"\r\n"  # before all that sort after
            b"z.txt,NA,,ABC\r\n"
            b'"q""\nx",a,b,c'
        )
    )


def test_splice_drops_an_index_column_but_keeps_the_cells() -> None:
    data = b",File,Edited By,Time Edited,Checksum\n0,z.txt,NA,t,abc\n"
    ours = Row("m.txt", "me", "2026-01-02 00:00:00", M)
    spliced = tables.splice_rows(data, set(), [ours], "t")
    assert spliced == (
        b"File,Edited By,Time Edited,Checksum\n"
        b"m.txt,me,2026-01-02 00:00:00," + M.encode() + b"\n"
        b"z.txt,NA,t,abc\n"
    )
