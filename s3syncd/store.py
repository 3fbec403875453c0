"""``.S3/sync-state.db``: the state that changes per file, in one SQLite database.

The base (last agreed MD5 and ETag per path), the local hash index and the commit journal
used to be whole JSON files rewritten on every change, O(files) each time. Here every
change is a transaction over the rows it touches, O(change), and SQLite's WAL makes each
transaction all-or-nothing across a ``kill -9`` (Syncthing and Maestral keep their
indexes the same way). ``synchronous=NORMAL`` in WAL mode survives a process crash; a
power cut may lose the last transactions, never tear the file, and what it loses is
recovered by the next scan and plan.

Tables (schema version in ``meta``):

- ``base(path, md5, etag)``: the last version both sides agreed on, and the ETag the object
  had in that version where known (NULL: unknown, which costs one HEAD, never a wrong MD5).
- ``idx(path, size, mtime_ns, md5)``: the local hash cache.
- ``journal(seq, path, change)``: completed transfers whose manifest rows are not committed
  yet, newest change per path, in order (``change`` is ``RowChange.to_json`` as JSON).
- ``meta(key, value)``: ``schema`` and ``base_initialised`` (a base was ever written).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from sys import intern
from typing import Any

from s3syncd.errors import StateError

log = logging.getLogger(__name__)

DB_FILE = "sync-state.db"
DB_FILES = (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm")
SCHEMA = 1

_DDL = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS base(
    path TEXT PRIMARY KEY, md5 TEXT NOT NULL, etag TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idx(
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, md5 TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS journal(
    seq INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL UNIQUE, change TEXT NOT NULL
);
"""

# (md5, etag) to upsert, or None to remove the path.
BaseChange = tuple[str, str | None] | None
# (size, mtime_ns, md5) to upsert, or None to remove the path.
IndexChange = tuple[int, int, str] | None


class StateStore:
    """One connection, shared by the engine's threads under a lock of its own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None

    # --- connection ---------------------------------------------------------------------
    @property
    def exists(self) -> bool:
        return self.path.exists()

    def _open(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one per change set.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_DDL)
            row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES('schema', ?)", (str(SCHEMA),))
            elif int(row[0]) != SCHEMA:
                conn.close()
                raise StateError(
                    f"{self.path} has schema {row[0]}, this s3syncd knows {SCHEMA}; "
                    "move it aside to start over"
                )
        except sqlite3.Error as exc:
            raise StateError(
                f"{self.path} is unusable ({exc}); move it aside to start over"
            ) from exc
        self._conn = conn
        return conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._open()
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(conn)
                raise StateError(f"cannot write {self.path}: {exc}") from exc
            except BaseException:
                _rollback(conn)
                raise

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._open().execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise StateError(f"cannot read {self.path}: {exc}") from exc

    # --- meta ---------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key=?", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as conn:
            conn.execute("INSERT OR REPLACE INTO meta VALUES(?, ?)", (key, value))

    # --- base ---------------------------------------------------------------------------
    def load_base(self) -> tuple[dict[str, str], dict[str, str]]:
        """(path -> MD5, path -> ETag where known)."""
        base: dict[str, str] = {}
        etags: dict[str, str] = {}
        # Interned: the same path and MD5 strings are shared with the index, the manifest
        # and the listing instead of a copy each (memory per tracked file).
        for path, md5, etag in self._query("SELECT path, md5, etag FROM base"):
            path = intern(path)
            base[path] = intern(md5)
            if etag:
                etags[path] = etag
        return base, etags

    def replace_base(self, base: Mapping[str, str], etags: Mapping[str, str]) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM base")
            conn.executemany(
                "INSERT INTO base VALUES(?, ?, ?)",
                ((p, m, etags.get(p) or None) for p, m in base.items()),
            )
            conn.execute("INSERT OR REPLACE INTO meta VALUES('base_initialised', '1')")

    def update_base(self, changes: Mapping[str, BaseChange]) -> None:
        if not changes:
            return
        with self._tx() as conn:
            _apply_base(conn, changes)

    # --- index --------------------------------------------------------------------------
    def load_index(self) -> Iterator[tuple[str, int, int, str]]:
        for path, size, mtime_ns, md5 in self._query("SELECT path, size, mtime_ns, md5 FROM idx"):
            yield intern(path), size, mtime_ns, intern(md5)

    def replace_index(self, rows: Iterable[tuple[str, int, int, str]]) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM idx")
            conn.executemany("INSERT INTO idx VALUES(?, ?, ?, ?)", rows)

    def update_index(self, changes: Mapping[str, IndexChange]) -> None:
        if not changes:
            return
        with self._tx() as conn:
            gone = [(p,) for p, v in changes.items() if v is None]
            if gone:
                conn.executemany("DELETE FROM idx WHERE path=?", gone)
            conn.executemany(
                "INSERT OR REPLACE INTO idx VALUES(?, ?, ?, ?)",
                ((p, *v) for p, v in changes.items() if v is not None),
            )

    # --- journal ------------------------------------------------------------------------
    def load_journal(self) -> list[dict[str, Any]]:
        out = []
        for (raw,) in self._query("SELECT change FROM journal ORDER BY seq"):
            try:
                out.append(json.loads(raw))
            except ValueError as exc:
                raise StateError(f"{self.path}: a journal entry is unreadable ({exc})") from exc
        return out

    def replace_journal(self, changes: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM journal")
            _append_journal(conn, changes)

    def append_journal(self, changes: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """A later change of a path replaces the earlier one and moves to the end."""
        with self._tx() as conn:
            _append_journal(conn, changes)

    def clear_journal_and_update_base(self, base: Mapping[str, BaseChange]) -> None:
        """A commit landed: its rows leave the journal and enter the base in one transaction,
        so no crash can leave a committed change in neither."""
        with self._tx() as conn:
            conn.execute("DELETE FROM journal")
            _apply_base(conn, base)


def _apply_base(conn: sqlite3.Connection, changes: Mapping[str, BaseChange]) -> None:
    gone = [(p,) for p, v in changes.items() if v is None]
    if gone:
        conn.executemany("DELETE FROM base WHERE path=?", gone)
    conn.executemany(
        "INSERT OR REPLACE INTO base VALUES(?, ?, ?)",
        ((p, v[0], v[1] or None) for p, v in changes.items() if v is not None),
    )


def _append_journal(
    conn: sqlite3.Connection, changes: Iterable[tuple[str, Mapping[str, Any]]]
) -> None:
    for path, data in changes:
        conn.execute("DELETE FROM journal WHERE path=?", (path,))
        conn.execute(
            "INSERT INTO journal(path, change) VALUES(?, ?)", (path, json.dumps(dict(data)))
        )


def _rollback(conn: sqlite3.Connection) -> None:
    with suppress(sqlite3.Error):  # no transaction was open (BEGIN itself failed)
        conn.execute("ROLLBACK")
