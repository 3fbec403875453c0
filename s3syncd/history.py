"""Who changed a file when, as far as this folder has seen it: ``.S3/sync-history.log``.

One JSON object per line, appended in the order changes were seen: rows of the remote
manifest that changed from one read to the next (the row's own ``Edited By`` and ``Time
Edited``), and our own commits. Each append is one ``write`` of whole lines to an
``O_APPEND`` file, so a kill -9 leaves at most a torn last line, which readers skip. The
file is bounded: once it passes ``max_bytes`` it is rewritten atomically with its newest
half, so trimming happens rarely and never leaves a torn file.

Losing history is never worth stopping a sync for: write failures are logged and dropped.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3syncd import tables
from s3syncd.atomicfile import write_atomic
from s3syncd.errors import StateError, SyncError
from s3syncd.manifest import Manifest
from s3syncd.model import TIME_FORMAT, Row

log = logging.getLogger(__name__)

HISTORY_FILE = "sync-history.log"
MAX_BYTES = 4 << 20


class Change(enum.Enum):
    ADDED = "added"
    MODIFIED = "modified"
    DELETED = "deleted"


class Source(enum.Enum):
    OBSERVED = "observed"  # a manifest change someone else committed
    OURS = "ours"  # a commit of this folder


@dataclass(frozen=True, slots=True)
class Entry:
    path: str
    change: Change
    source: Source
    user: str
    time: str  # the row's Time Edited (local time, as the manifest has it)
    md5: str
    size: int | None
    seen: str  # when this folder saw it (ISO 8601, UTC)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "action": self.change.value,
            "source": self.source.value,
            "user": self.user,
            "time": self.time,
            "md5": self.md5,
            "size": self.size,
            "seen": self.seen,
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Entry:
        size = data.get("size")
        return Entry(
            str(data["path"]),
            Change(data["action"]),
            Source(data["source"]),
            str(data["user"]),
            str(data["time"]),
            str(data["md5"]),
            int(size) if isinstance(size, int) else None,
            str(data["seen"]),
        )


def changes(
    before: Mapping[str, Row],
    after: Mapping[str, Row],
    tombstones: Mapping[str, Row],
    ours: Iterable[str],
    size_of: Callable[[str, str], int | None],
    seen: str,
    our_user: str = "",
    our_time: str = "",
) -> list[Entry]:
    """The entries for a manifest going from ``before`` to ``after`` (pure).

    ``ours`` are the paths of a commit of this folder (made by ``our_user`` at ``our_time``);
    ``size_of(path, md5)`` the size where known. A row removed by someone else is a delete
    named after its tombstone where there is one: that row says who last had the file, the best a
    manifest tells of who deleted it.
    """
    own = set(ours)
    out: list[Entry] = []
    for path in sorted(set(before) | set(after)):
        old, new = before.get(path), after.get(path)
        if new is not None and (old is None or old.checksum != new.checksum):
            kind = Change.ADDED if old is None else Change.MODIFIED
            row = new
        elif new is None and old is not None:
            kind, row = Change.DELETED, tombstones.get(path, old)
        else:
            continue
        user, when = row.edited_by, row.time_edited
        source = Source.OURS if path in own else Source.OBSERVED
        if source is Source.OURS and kind is Change.DELETED:
            user, when = our_user or user, our_time or when  # the tombstone is the last edit
        size = size_of(row.path, row.checksum) if kind is not Change.DELETED else None
        out.append(Entry(path, kind, source, user, when, row.checksum, size, seen))
    return out


def iso_utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")


def rows_on_disk(path: Path) -> dict[str, Row] | None:
    """The manifest copy an earlier run left (what to compare the first read with), or
    None when there is none or it is unreadable: then nothing is recorded as changed."""
    if not path.exists():
        return None
    try:
        return tables.read_table_file(path)
    except SyncError as exc:
        log.warning("no history for this read of the manifest: %s", exc)
        return None


class HistoryLog:
    """The append-only history file of one data folder; safe to use from several threads."""

    def __init__(
        self, path: Path, max_bytes: int = MAX_BYTES, manifest_copy: Path | None = None
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        # The local copy of the manifest: what a first read after a restart is compared with.
        self.manifest_copy = manifest_copy
        self._lock = threading.Lock()

    def observe(
        self,
        before: Mapping[str, Row] | None,
        fresh: Manifest,
        ours: Iterable[str],
        size_of: Callable[[str, str], int | None],
        user: str,
        now: float,
    ) -> None:
        """Record how the manifest changed from ``before`` (None: the copy on disk) to
        ``fresh``; ``ours`` are the paths of our own commit, made by ``user``."""
        if before is None and self.manifest_copy is not None:
            try:
                unchanged = self.manifest_copy.read_bytes() == fresh.raw_rows
            except OSError:
                unchanged = False
            if unchanged:
                return  # the common restart: no parse of the whole copy to find nothing
            before = rows_on_disk(self.manifest_copy)
        if before is None:
            return  # the first read ever: nothing to compare with
        our_time = time.strftime(TIME_FORMAT, time.localtime(now))
        found = changes(
            before, fresh.rows, fresh.tombstones, ours, size_of, iso_utc(now), user, our_time
        )
        self.append(found)

    def append(self, entries: Iterable[Entry]) -> None:
        payload = "".join(
            json.dumps(e.to_json(), ensure_ascii=False, separators=(",", ":")) + "\n"
            for e in entries
        ).encode("utf-8")
        if not payload:
            return
        with self._lock:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, payload)  # one write: whole lines or a torn last one
                    size = os.fstat(fd).st_size
                finally:
                    os.close(fd)
                if size > self.max_bytes:
                    self._trim()
            except (OSError, StateError) as exc:
                log.warning("could not record history in %s: %s", self.path, exc)

    def _trim(self) -> None:
        # Keep the newest half, so the next trim is far away (O(1) amortised per line).
        data = self.path.read_bytes()
        keep = data[-(self.max_bytes // 2) :]
        if len(keep) < len(data):
            keep = keep[keep.find(b"\n") + 1 :]  # start at a whole line
        write_atomic(self.path, keep, mode=0o600)
        log.info("trimmed %s to its newest %d bytes", self.path, len(keep))

    def entries(self) -> list[Entry]:
        """Every readable entry, oldest first; torn or foreign lines are skipped."""
        with self._lock:
            try:
                lines = self.path.read_bytes().splitlines()
            except FileNotFoundError:
                return []
            except OSError as exc:
                raise StateError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        out = []
        for line in lines:
            try:
                out.append(Entry.from_json(json.loads(line)))
            except (ValueError, KeyError, TypeError):
                continue
        return out

    def for_path(self, path: str, limit: int | None = None) -> list[Entry]:
        """The entries of ``path``, newest first (the order this folder saw them in)."""
        found = [e for e in reversed(self.entries()) if e.path == path]
        return found[:limit] if limit is not None else found
