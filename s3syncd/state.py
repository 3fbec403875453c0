"""The files s3syncd keeps inside ``<datafolder>/.S3/``.

Legacy files (shared with the original package): ``versions.csv``, ``versionsLocal.csv``,
``deletedS3.csv``, ``deletedLocal.csv``, ``ignores3.txt``, ``user_name.txt``, ``aws.txt``,
``tmp/``, ``logs/``.

Files of our own (all JSON, written atomically, versioned with a ``"v"`` field):

- ``sync-base.json``: the last version both sides agreed on, path -> MD5 (``files``), the
  ETag the object had in that version where known (``etags``, path -> ETag: a listed ETag
  that differs is the sign that the object changed, even under a stale row; files written
  before ``etags`` existed are read as "no ETag known"), and a generation number ``gen``.
- ``sync-base.log``: agreements reached since that snapshot (a verified download), one JSON
  line each (``{"g": gen, "p": path, "m": md5 or null}``), appended as they happen so a
  kill -9 in the middle of a batch keeps them; replayed over the snapshot of the same
  generation, dropped when the next snapshot is written. A logged path's ETag is forgotten
  (unknown costs one HEAD, never a wrong MD5).
- ``sync-index.json``: the local hash cache, path -> [size, mtime_ns, md5], so a file is
  rehashed only when its size or mtime changed.
- ``sync-journal.json``: completed transfers whose manifest rows are not committed yet;
  replayed at the next start so a crash between transfer and commit loses nothing. It
  accumulates (newest change per path) until a commit succeeds. Each entry records in
  ``"replaces"`` the checksum of the remote row it was made over (null: no row); a
  change whose row a colleague has changed since is dropped and re-planned, not replayed.
  Entries without ``"replaces"`` (older versions) are replayed unconditionally.
- ``sync-journal.log``: the same, one JSON line per change (``RowChange.to_json``),
  appended as each transfer completes so a kill -9 in the middle of a batch keeps it;
  read after ``sync-journal.json`` (a later line wins for its path), dropped when the
  journal is next saved.
- ``sync-queue.json``: the approval queue, rejected actions and the mass-delete window
  (daemon; see ``approvals.DeleteWindow``).
- ``trash/``: local files removed by a sync, kept until the user deletes them.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3syncd.atomicfile import write_atomic
from s3syncd.errors import StateError
from s3syncd.model import STATE_DIR, LocalFile, Row

log = logging.getLogger(__name__)

STATE_VERSION = 1

BASE_FILE = "sync-base.json"
BASE_LOG = "sync-base.log"
INDEX_FILE = "sync-index.json"
JOURNAL_FILE = "sync-journal.json"
JOURNAL_LOG = "sync-journal.log"
QUEUE_FILE = "sync-queue.json"
# The legacy tables are sync state too (recomputed from the remote and the folder).
LEGACY_TABLES = ("versions.csv", "versionsLocal.csv", "deletedS3.csv", "deletedLocal.csv")
SYNC_STATE_FILES = (
    *LEGACY_TABLES,
    BASE_FILE,
    BASE_LOG,
    INDEX_FILE,
    JOURNAL_FILE,
    JOURNAL_LOG,
    QUEUE_FILE,
)


@dataclass(frozen=True, slots=True)
class RowChange:
    """One manifest change: ``row`` to upsert, or a removal with its tombstone row.

    A ``guarded`` change applies only while the remote row's checksum is still
    ``replaces`` (None: no row), the state it was made over; otherwise it is refused.
    """

    path: str
    row: Row | None
    tombstone: Row | None = None
    replaces: str | None = None
    guarded: bool = False

    @property
    def checksum(self) -> str | None:
        """The checksum the row has once this change is in effect (None: no row)."""
        return self.row.checksum if self.row else None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "path": self.path,
            "row": self.row.to_list() if self.row else None,
            "tombstone": self.tombstone.to_list() if self.tombstone else None,
        }
        if self.guarded:
            data["replaces"] = self.replaces
        return data

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> RowChange:
        row, tomb = data.get("row"), data.get("tombstone")
        replaces = data.get("replaces")
        return RowChange(
            str(data["path"]),
            Row.from_list(row) if row else None,
            Row.from_list(tomb) if tomb else None,
            None if replaces is None else str(replaces),
            "replaces" in data,
        )


class StateDir:
    """Paths and JSON state inside ``.S3/``. Not thread-safe: the engine serialises writes."""

    def __init__(self, datafolder: Path) -> None:
        self.datafolder = datafolder
        self.root = datafolder / STATE_DIR
        self._base_gen = 0  # generation of the base snapshot; log lines of others are old
        self._logged: set[str] = set()  # paths in the base log: their ETags are unknown

    # legacy files
    @property
    def versions(self) -> Path:
        return self.root / "versions.csv"

    @property
    def versions_local(self) -> Path:
        return self.root / "versionsLocal.csv"

    @property
    def deleted_remote(self) -> Path:
        return self.root / "deletedS3.csv"

    @property
    def deleted_local(self) -> Path:
        return self.root / "deletedLocal.csv"

    @property
    def ignores(self) -> Path:
        return self.root / "ignores3.txt"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def trash(self) -> Path:
        return self.root / "trash"

    def file(self, name: str) -> Path:
        return self.root / name

    def ensure(self) -> None:
        try:
            for folder in (self.root, self.tmp, self.logs):
                folder.mkdir(parents=True, exist_ok=True)
            if not self.ignores.exists():
                self.ignores.touch()
        except OSError as exc:
            raise StateError(f"cannot create {self.root}: {exc.strerror}") from exc

    def clean_tmp(self) -> None:
        """Partial downloads from an interrupted run are worthless: the remote still has them."""
        if self.tmp.is_dir():
            for child in self.tmp.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)

    # JSON state
    def read_json(self, name: str) -> dict[str, Any]:
        path = self.file(name)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StateError(f"{path} is unreadable ({exc}); move it aside to start over") from exc
        if not isinstance(data, dict) or data.get("v") != STATE_VERSION:
            raise StateError(f"{path} has an unknown format (expected v={STATE_VERSION})")
        return data

    def write_json(self, name: str, data: Mapping[str, Any]) -> None:
        payload = {"v": STATE_VERSION, **data}
        write_atomic(self.file(name), json.dumps(payload, indent=1, sort_keys=True).encode())

    def load_base(self) -> dict[str, str]:
        data = self.read_json(BASE_FILE)
        base = {str(k): str(v) for k, v in data.get("files", {}).items()}
        self._base_gen = int(data.get("gen", 0))
        self._logged = set()
        try:
            lines = self.file(BASE_LOG).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return base
        except (OSError, UnicodeDecodeError) as exc:
            raise StateError(f"{self.file(BASE_LOG)} is unreadable ({exc})") from exc
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # the last line, torn by a crash while it was written
            if not isinstance(rec, dict) or rec.get("g") != self._base_gen:
                continue  # written before the snapshot we have: already in it
            path, md5 = rec.get("p"), rec.get("m")
            if isinstance(path, str):
                self._logged.add(path)
            if isinstance(path, str) and md5 is None:
                base.pop(path, None)
            elif isinstance(path, str) and isinstance(md5, str):
                base[path] = md5
        return base

    def load_base_etags(self) -> dict[str, str]:
        """The agreed ETags; call after :meth:`load_base`, whose log paths lose theirs."""
        etags = {str(k): str(v) for k, v in self.read_json(BASE_FILE).get("etags", {}).items()}
        for path in self._logged:
            etags.pop(path, None)
        return etags

    def save_base(self, base: Mapping[str, str], etags: Mapping[str, str]) -> None:
        """Write the base; an ETag is kept only for a path the base holds."""
        self._base_gen += 1
        kept = {p: e for p, e in sorted(etags.items()) if p in base and e}
        self.write_json(
            BASE_FILE,
            {"files": dict(sorted(base.items())), "etags": kept, "gen": self._base_gen},
        )
        self.file(BASE_LOG).unlink(missing_ok=True)
        self._logged = set()

    def append_base(self, updates: Mapping[str, str | None]) -> None:
        """Record agreements now, O(change), without rewriting the snapshot."""
        lines = "".join(
            json.dumps({"g": self._base_gen, "p": p, "m": m}) + "\n" for p, m in updates.items()
        )
        with self.file(BASE_LOG).open("a", encoding="utf-8") as fh:
            fh.write(lines)  # one write: a kill -9 leaves whole lines or a torn last one
        self._logged.update(updates)

    def load_index(self) -> dict[str, LocalFile]:
        files = self.read_json(INDEX_FILE).get("files", {})
        return {
            str(p): LocalFile(str(p), int(v[0]), int(v[1]), str(v[2])) for p, v in files.items()
        }

    def save_index(self, index: Mapping[str, LocalFile]) -> None:
        files = {p: [f.size, f.mtime_ns, f.md5] for p, f in sorted(index.items())}
        self.write_json(INDEX_FILE, {"files": files})

    def load_journal(self) -> list[RowChange]:
        changes = [RowChange.from_json(c) for c in self.read_json(JOURNAL_FILE).get("changes", [])]
        try:
            lines = self.file(JOURNAL_LOG).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return changes
        except (OSError, UnicodeDecodeError) as exc:
            raise StateError(f"{self.file(JOURNAL_LOG)} is unreadable ({exc})") from exc
        by_path = {c.path: c for c in changes}
        for line in lines:
            try:
                change = RowChange.from_json(json.loads(line))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # the last line, torn by a crash while it was written
            by_path.pop(change.path, None)  # a later change of a path replaces the earlier
            by_path[change.path] = change
        return list(by_path.values())

    def save_journal(self, changes: list[RowChange]) -> None:
        self.write_json(JOURNAL_FILE, {"changes": [c.to_json() for c in changes]})
        self.file(JOURNAL_LOG).unlink(missing_ok=True)

    def append_journal(self, changes: Sequence[RowChange]) -> None:
        """Journal one transfer's changes now, O(change), without rewriting the journal."""
        lines = "".join(json.dumps(c.to_json()) + "\n" for c in changes)
        with self.file(JOURNAL_LOG).open("a", encoding="utf-8") as fh:
            fh.write(lines)  # one write: a kill -9 leaves whole lines or a torn last one

    def has_base(self) -> bool:
        return self.file(BASE_FILE).exists()

    def remove_sync_state(self) -> list[str]:
        """Delete every sync-state file (data, settings, logs and trash stay); returns them."""
        removed = []
        for name in SYNC_STATE_FILES:
            path = self.file(name)
            if path.exists():
                path.unlink()
                removed.append(f"{STATE_DIR}/{name}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        return removed
