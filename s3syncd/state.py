"""The files s3syncd keeps inside ``<datafolder>/.S3/``.

Legacy files (shared with the original package): ``versions.csv``, ``versionsLocal.csv``,
``deletedS3.csv``, ``deletedLocal.csv``, ``ignores3.txt``, ``user_name.txt``, ``aws.txt``,
``tmp/``, ``logs/``.

Files of our own:

- ``sync-state.db`` (with its ``-wal``/``-shm``): SQLite, see :mod:`s3syncd.store` — the
  base (last agreed MD5 and ETag per path), the local hash index, and the commit journal
  (completed transfers whose manifest rows are not committed yet; each entry names in
  ``"replaces"`` the checksum of the remote row it was made over, so a replay never lands
  over a colleague's newer row). Every change is one transaction over the rows it touches.
  Folders from before it (``sync-base.json``/``.log``, ``sync-index.json``,
  ``sync-journal.json``/``.log``) are imported once, then those files are removed.
- ``sync-queue.json``: the approval queue, rejected actions and the mass-delete window
  (daemon; see ``approvals.DeleteWindow``); JSON, written atomically.
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
from s3syncd.store import DB_FILE, DB_FILES, BaseChange, StateStore

log = logging.getLogger(__name__)

STATE_VERSION = 1

# Files of earlier versions, imported into the store once (see _import_legacy_json).
BASE_FILE = "sync-base.json"
BASE_LOG = "sync-base.log"
INDEX_FILE = "sync-index.json"
JOURNAL_FILE = "sync-journal.json"
JOURNAL_LOG = "sync-journal.log"
LEGACY_JSON = (BASE_FILE, BASE_LOG, INDEX_FILE, JOURNAL_FILE, JOURNAL_LOG)
QUEUE_FILE = "sync-queue.json"
# The legacy tables are sync state too (recomputed from the remote and the folder).
LEGACY_TABLES = ("versions.csv", "versionsLocal.csv", "deletedS3.csv", "deletedLocal.csv")
SYNC_STATE_FILES = (*LEGACY_TABLES, *DB_FILES, *LEGACY_JSON, QUEUE_FILE)


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
        self._store: StateStore | None = None

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

    # --- the store (base, index, journal) ---------------------------------------------
    @property
    def store(self) -> StateStore:
        if self._store is None:
            fresh = not self.file(DB_FILE).exists()
            self._store = StateStore(self.file(DB_FILE))
            if fresh:
                self._import_legacy_json(self._store)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def load_base(self) -> dict[str, str]:
        return self.store.load_base()[0]

    def load_base_etags(self) -> dict[str, str]:
        return self.store.load_base()[1]

    def save_base(self, base: Mapping[str, str], etags: Mapping[str, str] | None = None) -> None:
        """Replace the whole base (first run, tests); an ETag is kept only for a base path."""
        etags = etags or {}
        self.store.replace_base(base, {p: e for p, e in etags.items() if p in base and e})

    def update_base(self, changes: Mapping[str, BaseChange]) -> None:
        """Change only these paths: (md5, etag or None), or None to forget the path."""
        self.store.update_base(changes)

    def commit_done(self, changes: Mapping[str, BaseChange]) -> None:
        """Clear the journal and apply ``changes`` to the base, in one transaction."""
        self.store.clear_journal_and_update_base(changes)

    def load_index(self) -> dict[str, LocalFile]:
        return {
            p: LocalFile(p, size, mtime, md5) for p, size, mtime, md5 in self.store.load_index()
        }

    def update_index(self, changes: Mapping[str, LocalFile | None]) -> None:
        self.store.update_index(
            {p: None if f is None else (f.size, f.mtime_ns, f.md5) for p, f in changes.items()}
        )

    def load_journal(self) -> list[RowChange]:
        return [RowChange.from_json(c) for c in self.store.load_journal()]

    def save_journal(self, changes: list[RowChange]) -> None:
        self.store.replace_journal((c.path, c.to_json()) for c in changes)

    def append_journal(self, changes: Sequence[RowChange]) -> None:
        """Journal one transfer's changes now, O(change); a later change of a path wins."""
        self.store.append_journal((c.path, c.to_json()) for c in changes)

    def _import_legacy_json(self, store: StateStore) -> None:
        """Take over the JSON state of an earlier version once, then remove it."""
        present = [n for n in LEGACY_JSON if self.file(n).exists()]
        if not present:
            return
        base, etags = self._legacy_base()
        index = self.read_json(INDEX_FILE).get("files", {})
        journal = self._legacy_journal()
        if self.file(BASE_FILE).exists():
            store.replace_base(base, etags)
        store.replace_index((str(p), int(v[0]), int(v[1]), str(v[2])) for p, v in index.items())
        store.replace_journal((c.path, c.to_json()) for c in journal)
        for name in present:
            self.file(name).unlink(missing_ok=True)
        log.info("moved %s into %s", ", ".join(present), DB_FILE)

    def _legacy_base(self) -> tuple[dict[str, str], dict[str, str]]:
        data = self.read_json(BASE_FILE)
        base = {str(k): str(v) for k, v in data.get("files", {}).items()}
        etags = {str(k): str(v) for k, v in data.get("etags", {}).items()}
        gen = int(data.get("gen", 0))
        for rec in _json_lines(self.file(BASE_LOG)):
            if not isinstance(rec, dict) or rec.get("g") != gen:
                continue  # written before the snapshot we have: already in it
            path, md5 = rec.get("p"), rec.get("m")
            if not isinstance(path, str):
                continue
            etags.pop(path, None)
            if md5 is None:
                base.pop(path, None)
            elif isinstance(md5, str):
                base[path] = md5
        return base, {p: e for p, e in etags.items() if p in base}

    def _legacy_journal(self) -> list[RowChange]:
        changes = [RowChange.from_json(c) for c in self.read_json(JOURNAL_FILE).get("changes", [])]
        by_path = {c.path: c for c in changes}
        for rec in _json_lines(self.file(JOURNAL_LOG)):
            try:
                change = RowChange.from_json(rec)
            except (KeyError, TypeError, AttributeError):
                continue
            by_path.pop(change.path, None)  # a later change of a path replaces the earlier
            by_path[change.path] = change
        return list(by_path.values())

    def has_base(self) -> bool:
        return self.store.get_meta("base_initialised") is not None

    def remove_sync_state(self) -> list[str]:
        """Delete every sync-state file (data, settings, logs and trash stay); returns them."""
        removed = []
        self.close()
        for name in SYNC_STATE_FILES:
            path = self.file(name)
            if path.exists():
                path.unlink()
                removed.append(f"{STATE_DIR}/{name}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        return removed


def _json_lines(path: Path) -> list[Any]:
    """The records of an append-only JSON-lines file; a line torn by a crash is skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise StateError(f"{path} is unreadable ({exc})") from exc
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
