"""The shared manifest on the remote: ``.S3/versions.csv`` and ``.S3/deletedS3.csv``.

Reads are conditional (``If-None-Match``), so an idle poll costs one request that the
server answers with 304. Writes are compare-and-swap: we re-read, re-apply only our own
row changes, and ``PutObject`` with ``If-Match``; a 412 means someone else committed
first, so we retry on their version. Old clients keep writing blindly; their rows are
never dropped by us, and ours they drop are restored by reconcile.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from s3syncd import tables
from s3syncd.errors import PreconditionFailedError, RemoteError
from s3syncd.model import Row
from s3syncd.remote.base import (
    MANIFEST_KEY,
    NOT_MODIFIED,
    TOMBSTONES_KEY,
    Blob,
    NotModified,
    Remote,
)
from s3syncd.state import RowChange

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 12


@dataclass(frozen=True, slots=True)
class Manifest:
    """The remote tables as last read, with the raw bytes kept for the local copies."""

    rows: dict[str, Row]
    tombstones: dict[str, Row]
    etag: str | None
    raw_rows: bytes
    raw_tombstones: bytes
    unsafe: tuple[tuple[Row, str], ...] = ()


EMPTY_TABLE = tables.render_rows([])


def changed_paths(old: Manifest, new: Manifest) -> set[str]:
    """Paths whose row or tombstone differs between two reads: what a poll must look at."""
    changed: set[str] = set()
    for before, after in ((old.rows, new.rows), (old.tombstones, new.tombstones)):
        if before is after:
            continue
        changed.update(p for p, r in after.items() if before.get(p) != r)
        changed.update(p for p in before if p not in after)
    return changed


def _parse(data: bytes, source: str) -> tuple[dict[str, Row], list[tuple[Row, str]]]:
    safe, unsafe = tables.split_unsafe(tables.parse_rows(data, source))
    return {r.path: r for r in safe}, unsafe


def _build(data: bytes, etag: str | None, tomb_data: bytes) -> Manifest:
    rows, unsafe = _parse(data, "remote .S3/versions.csv")
    tombstones, unsafe_t = _parse(tomb_data, "remote .S3/deletedS3.csv")
    return Manifest(rows, tombstones, etag, data, tomb_data, tuple(unsafe + unsafe_t))


def read_manifest(remote: Remote, known_etag: str | None = None) -> Manifest | None:
    """Fetch both tables; None when ``known_etag`` still holds (nothing changed).

    Unsafe rows (absolute paths, '..', inside .S3/) are left out and reported; they stay
    in the remote file untouched because commits only change our own rows.
    """
    blob = remote.read_blob(MANIFEST_KEY, if_none_match=known_etag)
    if blob is NOT_MODIFIED:
        return None
    assert not isinstance(blob, NotModified)
    tomb_blob = remote.read_blob(TOMBSTONES_KEY)
    assert not isinstance(tomb_blob, NotModified)
    fresh = _build(
        blob.data if blob else EMPTY_TABLE,
        blob.etag if blob else None,
        tomb_blob.data if tomb_blob else EMPTY_TABLE,
    )
    for row, why in fresh.unsafe:
        log.error("refusing manifest row %r: %s", row.path, why)
    return fresh


@dataclass(frozen=True, slots=True)
class Committed:
    """What a conditional write left on the remote: the new ETag and the bytes we wrote."""

    etag: str
    data: bytes


# Given the rows as read (all of them, in file order), the paths whose rows we replace
# and the rows we put in their place.
Update = Callable[[list[Row]], tuple[set[str], list[Row]]]


def _cas_update(
    remote: Remote,
    key: str,
    update: Update,
    sleep: Callable[[float], None],
    verify: bool,
) -> Committed:
    """Read-modify-write ``key`` until our conditional write wins.

    Only our rows change: the others are spliced back byte for byte, even those we would
    refuse to act on or to write ourselves (they belong to other clients).
    """
    for attempt in range(MAX_ATTEMPTS):
        blob = remote.read_blob(key)
        assert not isinstance(blob, NotModified)
        rows = tables.parse_rows(blob.data, f"remote {key}") if blob else []
        remove, add = update(rows)
        if blob is None:
            data = tables.render_rows(add)
        else:
            data = tables.splice_rows(blob.data, remove, add, f"remote {key}")
        try:
            etag = remote.write_blob(
                key, data, if_match=blob.etag if blob else None, create_only=blob is None
            )
        except PreconditionFailedError:
            delay = min(2.0, 0.05 * 2**attempt) * (0.5 + random.random())
            log.info("%s changed under us; retrying in %.2fs", key, delay)
            sleep(delay)
            continue
        if verify:
            # Without enforced preconditions, read back and redo if a writer raced us.
            check = remote.read_blob(key)
            if isinstance(check, Blob) and check.data != data:
                sleep(0.05 * (1 + random.random()))
                continue
        return Committed(etag, data)
    raise RemoteError(f"could not update {key}: it kept changing ({MAX_ATTEMPTS} attempts)")


def _current(rows: list[Row]) -> dict[str, str]:
    """path -> checksum of the rows we act on (last row wins), as reconcile saw them."""
    safe, _unsafe = tables.split_unsafe(rows)
    return {r.path: r.checksum for r in safe}


def admitted(change: RowChange, current: dict[str, str]) -> bool:
    """Whether ``change`` may be applied over rows whose checksums are ``current``."""
    if not change.guarded:
        return True
    now = current.get(change.path)
    return now == change.replaces or now == change.checksum


def _admit(
    changes: Sequence[RowChange], current: dict[str, str], refused: dict[str, RowChange]
) -> list[RowChange]:
    kept = []
    for c in changes:
        if admitted(c, current):
            kept.append(c)
        elif c.path not in refused:
            refused[c.path] = c
            log.warning(
                "not committing our row for %s: its remote row changed since (now %s, "
                "was %s); re-planning it",
                c.path,
                current.get(c.path) or "absent",
                c.replaces or "absent",
            )
    return kept


def commit(
    remote: Remote,
    changes: Sequence[RowChange],
    previous: Manifest | None,
    sleep: Callable[[float], None] = time.sleep,
    verify: bool = False,
) -> Manifest | None:
    """Apply our row changes to the remote tables; returns the manifest as written.

    Tombstones are written first: a crash between the two writes leaves a row whose
    object is gone, which reconcile treats as deleted, never as new. A guarded change
    whose remote row a colleague changed meanwhile is left out (and logged): the caller
    re-plans that path (see :func:`admitted`).
    """
    if not changes:
        return None
    refused: dict[str, RowChange] = {}
    tomb_changes = [c for c in changes if c.tombstone is not None]
    if any(c.guarded for c in tomb_changes):
        blob = remote.read_blob(MANIFEST_KEY)
        assert not isinstance(blob, NotModified)
        rows = tables.parse_rows(blob.data, f"remote {MANIFEST_KEY}") if blob else []
        tomb_changes = _admit(tomb_changes, _current(rows), refused)
    tombs = []
    for c in tomb_changes:
        assert c.tombstone is not None
        problem = tables.unwritable(c.tombstone)
        if problem:
            # A tombstone copied from a hand-edited row: the row still goes, the
            # object's absence is evidence enough of the delete.
            log.warning("not writing a tombstone for %s: %s", c.path, problem)
        else:
            tombs.append(c.tombstone)
    tomb_data = previous.raw_tombstones if previous else EMPTY_TABLE
    if tombs:
        tomb_data = _cas_update(
            remote, TOMBSTONES_KEY, lambda _rows: (set(), tombs), sleep, verify
        ).data

    def apply(rows: list[Row]) -> tuple[set[str], list[Row]]:
        by_path = {c.path: c for c in _admit(changes, _current(rows), refused)}
        return set(by_path), [c.row for c in by_path.values() if c.row is not None]

    written = _cas_update(remote, MANIFEST_KEY, apply, sleep, verify)
    return _build(written.data, written.etag, tomb_data)


def ensure_initialised(remote: Remote) -> bool:
    """Create empty tables on a prefix that has none; True if we created the manifest.

    Unlike the original we do not download the whole prefix to catalogue it: objects
    without rows are adopted by reconcile from a listing.
    """
    created = False
    for key in (TOMBSTONES_KEY, MANIFEST_KEY):
        if remote.read_blob(key) is None:
            try:
                remote.write_blob(key, EMPTY_TABLE, create_only=True)
                created = created or key == MANIFEST_KEY
            except PreconditionFailedError:
                pass  # another client created it first: fine
    return created
