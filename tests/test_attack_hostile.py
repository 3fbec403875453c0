"""Attack: hostile remote manifests (issue 6, "Hostile input").

A colleague's broken tool or a malicious writer puts rows into ``.S3/versions.csv`` (and
objects under the prefix, on a real SeaweedFS) that name places outside the data folder,
our own state files, names no filesystem takes, control and bidi characters, duplicates,
and files that are not clean tables at all. A sync with everything approved must:

- write nothing outside the data folder: not at ``/etc/s3syncd-hostile-<uuid>``, not in
  the data folder's parent, not over ``.S3/versions.csv``; no file anywhere under the
  test's root holds a hostile payload except the ones that legitimately belong inside;
- log each refused row (caplog);
- leave every hostile row on the remote exactly as it was, byte for byte, after our own
  commits (a malformed table is not committed to at all).

Scaled by S3SYNCD_ATTACK_SCALE (the hypothesis example count); prints the cases tried.
Large run: ``S3SYNCD_ATTACK_SCALE=10 python -m pytest tests/test_attack_hostile.py -s``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from botocore.exceptions import BotoCoreError, ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3syncd import api, tables
from s3syncd.config import build_config
from s3syncd.engine import Engine
from s3syncd.errors import MalformedTableError, SyncError
from s3syncd.model import APPROVABLE_KINDS, STATE_DIR, is_legacy_excluded, path_problem
from s3syncd.remote.s3 import S3Remote

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from s3server import S3Server

pytestmark = pytest.mark.s3

SCALE = int(os.environ.get("S3SYNCD_ATTACK_SCALE", "1"))
ALL = frozenset(APPROVABLE_KINDS)
TIME = "2026-01-01 00:00:00"
HEADER = b"File,Edited By,Time Edited,Checksum\n"
MANIFEST = ".S3/versions.csv"
TOMBSTONES = ".S3/deletedS3.csv"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def quiet(_text: str) -> None:
    pass


def cell(value: str) -> str:
    """A CSV cell as pandas quotes it, and also quoted when it holds a bare CR (which
    pandas leaves unquoted, so a reader would split the row there)."""
    if any(c in value for c in ',"\n\r'):
        return '"' + value.replace('"', '""') + '"'
    return value


def line(path: str, checksum: str, who: str = "mallory") -> bytes:
    return (",".join(cell(v) for v in (path, who, TIME, checksum)) + "\n").encode(
        "utf-8", "surrogateescape"
    )


@dataclass
class Prefix:
    """One S3 prefix, written to directly with the admin client (as another tool would)."""

    client: S3Client
    bucket: str
    name: str

    def key(self, rel: str) -> str:
        return f"{self.name}/{rel}"

    def put(self, rel: str, data: bytes) -> bool:
        """Put an object at exactly ``<prefix>/<rel>``; False if the server refused the
        key or stored it under another (normalised) name, which is then removed."""
        key = self.key(rel)
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        except (ClientError, BotoCoreError, ValueError):
            return False
        stored = self.stored()
        if key in stored:
            return True
        for other in stored:
            got = self.client.get_object(Bucket=self.bucket, Key=other)["Body"].read()
            if got == data:
                self.client.delete_object(Bucket=self.bucket, Key=other)
        return False

    def stored(self) -> set[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.name + "/"
        )
        return {item["Key"] for page in pages for item in page.get("Contents", [])}

    def read(self, rel: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self.key(rel))["Body"].read()


def sync(server: S3Server, prefix: Prefix, folder: Path) -> api.SyncSummary:
    """One pass with everything approved, as a fresh client would run it."""
    cfg = build_config(
        {
            "platform": "S3",
            "s3.bucket": prefix.bucket,
            "s3.prefix": prefix.name,
            "datafolder": str(folder),
            "user_name": "alice",
        },
        folder.parent,
    )
    remote = S3Remote(prefix.bucket, prefix.name, server.client())
    try:
        engine = Engine(cfg, remote, "alice", workers=2)
        return api.run_once(cfg, auto=ALL, ask=None, say=quiet, engine=engine)
    finally:
        remote.close()


def files_under(root: Path) -> dict[str, bytes]:
    """Every regular file below ``root`` (symlinks not followed), relative path -> bytes."""
    out: dict[str, bytes] = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            full = Path(dirpath) / name
            if full.is_file() and not full.is_symlink():
                out[full.relative_to(root).as_posix()] = full.read_bytes()
    return out


def user_files(data: Path) -> dict[str, bytes]:
    return {p: b for p, b in files_under(data).items() if not p.startswith(STATE_DIR + "/")}


@contextlib.contextmanager
def guarded(root: Path, data: Path, etc_name: str, marker: bytes) -> Iterator[None]:
    """Fail if anything outside ``data`` changes, or /etc/<etc_name> appears."""
    etc = Path("/etc") / etc_name
    outside_before = {p: b for p, b in files_under(root).items() if not _inside(root, data, p)}
    try:
        yield
    finally:
        appeared = etc.exists()
        if appeared:
            etc.unlink()
    assert not appeared, f"a hostile row wrote {etc}"
    outside_after = {p: b for p, b in files_under(root).items() if not _inside(root, data, p)}
    assert outside_after == outside_before
    assert sorted(os.listdir(root)) == sorted({p.split("/")[0] for p in outside_before} | {"Data"})
    # Nothing of the attacker's landed in our state folder (the temp downloads are gone).
    for rel, content in files_under(data / STATE_DIR).items():
        assert marker not in content, f".S3/{rel} holds a hostile payload"


def _inside(root: Path, data: Path, rel: str) -> bool:
    return (root / rel).is_relative_to(data)


def naive_spot(data: Path, rel: str) -> Path | None:
    """Where a careless client would have written ``rel`` (None if not even a path)."""
    if "\0" in rel:
        return None
    return Path(os.path.normpath(os.path.join(data, rel)))


def is_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:  # missing, or a name no filesystem takes
        return False


@pytest.fixture
def prefix(s3_client: S3Client, s3_bucket: str) -> Prefix:
    return Prefix(s3_client, s3_bucket, f"p-{uuid.uuid4().hex[:12]}")


# --- fixed hostile rows --------------------------------------------------------------------


def test_hostile_rows_are_refused_logged_and_left_untouched(
    s3_server: S3Server, prefix: Prefix, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tag = uuid.uuid4().hex[:8]
    marker = f"HOSTILE-{tag}".encode()
    etc_name = f"s3syncd-hostile-{tag}"
    refused = [
        f"../hostile-{tag}",
        f"a/../../hostile-{tag}",
        f"/etc/{etc_name}",
        f"C:\\hostile-{tag}",
        f"C:hostile-{tag}",
        f"a\\..\\..\\hostile-{tag}",
        MANIFEST,
        TOMBSTONES,
        f".S3/trash/hostile-{tag}",
        f"nul\0-{tag}",
        f"line\nbreak-{tag}",
        f"carriage\rreturn-{tag}",
        f"tab\t-{tag}",
        f"del\x7f-{tag}",
        f"c1\x85-{tag}",
        f"esc\x1b[2J-{tag}",
        "h" * 300,
        f"./dot-{tag}",
        f"sub//double-{tag}",
        f"sub/-{tag}/..",
    ]
    # Not refused, but never acted on: the original package skips every '.S3' path.
    legacy = [f"sub/.S3/legacy-{tag}"]
    # Safe names that must land exactly where they say, inside the folder.
    landing = [f"bidi\u202e-{tag}.txt", f"good-{tag}.txt", f"colon:{tag}.txt"]
    dup = f"dup-{tag}.txt"

    payload = {p: marker + f"-{i}".encode() for i, p in enumerate(refused + legacy + landing)}
    dup_old, dup_new = marker + b"-dup-old", marker + b"-dup-new"
    rows = [line(p, md5(payload[p])) for p in sorted(refused + legacy + landing)]
    rows += [line(dup, md5(dup_old)), line(dup, md5(dup_new), "mallory2")]
    original = HEADER + b"".join(rows)
    # Objects first (never at the two table keys themselves), then the manifest.
    state = (MANIFEST, TOMBSTONES)
    objects = sum(prefix.put(p, payload[p]) for p in refused + legacy + landing if p not in state)
    assert prefix.put(dup, dup_new)
    assert prefix.put(MANIFEST, original)

    root = tmp_path / "site"
    data = root / "Data"
    (data / "a").mkdir(parents=True)
    (data / "mine.txt").write_bytes(b"my own new file")
    (root / "neighbour.txt").write_bytes(b"next to the data folder")
    caplog.set_level(logging.INFO)

    with guarded(root, data, etc_name, marker):
        for _ in range(2):  # the second pass must not undo or redo anything
            summary = sync(s3_server, prefix, data)
            assert not summary.failed, summary.failed
            assert summary.commit_error is None

    expected = {p: payload[p] for p in landing} | {dup: dup_new, "mine.txt": b"my own new file"}
    assert user_files(data) == expected
    for rel in refused + legacy:
        spot = naive_spot(data, rel)
        # Our own tables are there by right; guarded() checks they hold no payload.
        if spot is not None and rel not in (MANIFEST, TOMBSTONES):
            assert not is_file(spot), rel

    after = prefix.read(MANIFEST)
    assert after != original  # our commit (mine.txt) did happen
    assert b"mine.txt,alice," in after
    for row in rows:
        assert row in after, f"hostile row changed on the remote: {row!r}"
    for rel in refused:
        said = [
            r
            for r in caplog.records
            if r.name == "s3syncd.manifest" and repr(rel) in r.getMessage()
        ]
        assert said, f"refusal of {rel!r} not logged"
        assert all(r.levelno >= logging.WARNING for r in said)
    print(
        f"hostile rows: {len(refused)} refused, {len(legacy)} legacy-excluded, "
        f"{len(landing)} safe, 1 duplicate; {objects} hostile objects stored verbatim"
    )


# --- whole files that are not clean tables --------------------------------------------------


def _good(path: str) -> bytes:
    return line(path, md5(b"x"))


MALFORMED = {
    "bad utf-8": HEADER + _good("ok.txt") + b"caf\xe9.txt,bob," + TIME.encode() + b"," + b"0" * 32,
    "missing column": b"File,Edited By,Time Edited\nok.txt,bob," + TIME.encode() + b"\n",
    "renamed columns": b"Path,Who,When,Sum\n" + _good("ok.txt"),
    "ragged row": HEADER + _good("ok.txt") + b"x.txt,bob," + TIME.encode() + b",a,b\n",
    "extra cell every row": HEADER + b"1," + _good("ok.txt") + b"2," + _good("y.txt"),
    "empty name": HEADER + _good("ok.txt") + b",bob," + TIME.encode() + b"," + b"0" * 32 + b"\n",
    "empty checksum": HEADER + b"ok.txt,bob," + TIME.encode() + b",\n",
    "unterminated quote": HEADER + b'"ok.txt,bob,' + TIME.encode() + b"," + b"0" * 32 + b"\n",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_manifest_is_refused_whole_and_never_rewritten(
    name: str, s3_server: S3Server, prefix: Prefix, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    original = MALFORMED[name]
    assert prefix.put(MANIFEST, original)
    assert prefix.put("ok.txt", b"x")
    root = tmp_path / "site"
    data = root / "Data"
    data.mkdir(parents=True)
    (data / "mine.txt").write_bytes(b"mine")

    with (
        guarded(root, data, f"s3syncd-hostile-{tag}", b"\0never\0"),
        pytest.raises(SyncError) as caught,
    ):
        sync(s3_server, prefix, data)
    assert isinstance(caught.value, MalformedTableError)
    assert "versions.csv" in caught.value.message
    assert prefix.read(MANIFEST) == original
    assert prefix.key("mine.txt") not in prefix.stored()
    assert user_files(data) == {"mine.txt": b"mine"}
    print(f"malformed manifest {name!r}: refused ({caught.value.message})")


# --- generated manifests ---------------------------------------------------------------------

SEGMENTS = st.one_of(
    st.sampled_from(
        [
            *("..", ".", "", ".S3", "etc", "C:", "c:\\x", "a\\b", "x:y", "\0", "\n", "\r"),
            *("\x7f", "\u202e", "\x85", " ", "~", "-", "versions.csv", "h" * 256, "é" * 128),
        ]
    ),
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=12),
)
HOSTILE_PATHS = st.builds(
    lambda lead, parts: lead + "/".join(parts),
    st.sampled_from(["", "", "/", "../", "/etc/", "C:"]),
    st.lists(SEGMENTS, min_size=1, max_size=4),
)
# Plain names too, so that downloads happen beside the hostile rows.
SAFE_PATHS = st.lists(
    st.text("abcxyz019-_. é日\u202e", min_size=1, max_size=8), min_size=1, max_size=3
).map("/".join)
PATHS = st.one_of(HOSTILE_PATHS, SAFE_PATHS)  # "" arises too: a malformed file
ROWS = st.lists(
    st.tuples(PATHS, st.booleans(), st.booleans()),  # path, has object, checksum matches
    min_size=1,
    max_size=8,
)


def test_generated_manifests_never_write_outside_or_lose_rows(
    s3_server: S3Server, s3_client: S3Client, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    tried = {"cases": 0, "rows": 0, "refused": 0, "objects": 0, "malformed": 0, "landed": 0}

    @settings(max_examples=8 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(rows=ROWS)
    def case(rows: list[tuple[str, bool, bool]]) -> None:
        caplog.clear()
        counts = check_generated(s3_server, Prefix(s3_client, s3_bucket, "g"), caplog, rows)
        tried["cases"] += 1
        for k, v in counts.items():
            tried[k] += v

    caplog.set_level(logging.INFO)
    case()
    print(f"generated hostile manifests: {tried}")
    assert tried["cases"] >= 1 and tried["refused"] >= 1


def check_generated(
    server: S3Server,
    base: Prefix,
    caplog: pytest.LogCaptureFixture,
    rows: list[tuple[str, bool, bool]],
) -> dict[str, int]:
    tag = uuid.uuid4().hex[:8]
    marker = f"HOSTILE-{tag}".encode()
    prefix = Prefix(base.client, base.bucket, f"g-{tag}")
    etc_name = f"s3syncd-hostile-{tag}"
    lines: list[bytes] = []
    content: dict[str, bytes] = {}
    for i, (raw, has_object, matches) in enumerate(rows):
        path = raw.replace("/etc/", f"/etc/{etc_name}-", 1)
        data_i = marker + f"-{i}".encode()
        lines.append(line(path, md5(data_i) if matches else md5(b"other")))
        if has_object and path and prefix.put(path, data_i):
            content[path] = data_i
    original = HEADER + b"".join(lines)
    assert prefix.put(MANIFEST, original)
    # The paths as the reader sees them (it drops a trailing CR, left by CRCRLF line ends).
    try:
        as_read = [r.path for r in tables.parse_rows(original, "generated")]
    except MalformedTableError:
        as_read = [""] * len(lines)  # refused whole: the error branch below checks it
    refused = [(p, ln) for p, ln in zip(as_read, lines, strict=True) if path_problem(p)]
    counts = {"rows": len(rows), "refused": len(refused), "objects": len(content)}

    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        root = Path(tmp)
        data = root / "Data"
        data.mkdir()
        mine = f"mine-{tag}.txt"
        (data / mine).write_bytes(b"ours")  # so that a pass commits
        (root / "neighbour.txt").write_bytes(b"keep")
        error: SyncError | None = None
        with guarded(root, data, etc_name, marker):
            try:
                summary = sync(server, prefix, data)
            except SyncError as exc:
                error = exc
        landed = user_files(data)

    after = prefix.read(MANIFEST)
    if error is not None:
        # Only a table that is not clean is refused whole, and then it is not touched.
        assert isinstance(error, MalformedTableError), error
        assert after == original
        assert landed == {mine: b"ours"}
        return counts | {"malformed": 1}
    for action, message in summary.failed:
        assert path_problem(action.path) is None, (action.path, message)
    landed.pop(mine)
    for rel, got in landed.items():
        # Only a safe, shared name, exactly where it says, with the object's content.
        assert path_problem(rel) is None and not is_legacy_excluded(rel), rel
        assert got == content[rel]
    assert f"{mine},alice,".encode() in after
    for rel, row in refused:
        assert any(repr(rel) in r.getMessage() for r in caplog.records), rel
        assert row in after, f"hostile row changed on the remote: {row!r}"
    return counts | {"landed": len(landed)}
