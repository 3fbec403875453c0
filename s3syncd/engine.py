"""One sync pass, shared by ``smart_sync`` and the daemon: scan -> plan -> execute -> commit.

The engine holds the current picture (base, local table, last manifest, last listing)
and is safe to call from several threads: every mutation happens under ``self.lock``;
transfers run in a thread pool outside it.

Work is O(change) where it can be: a watcher batch re-examines only its paths and writes
only their rows to the store; a changed manifest is diffed against the previous one and
only the changed paths are looked at on the remote (one HEAD each); the paths touched
since the last plan are collected (:meth:`Engine.take_dirty`) so the daemon re-plans only
them. Start-up, the periodic rescan and the LIST audit stay full passes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from s3syncd import executor, history, localfs, manifest, tables
from s3syncd.atomicfile import write_atomic
from s3syncd.config import Config
from s3syncd.errors import SyncError, UnsafePathError
from s3syncd.executor import Outcome
from s3syncd.manifest import changed_paths
from s3syncd.model import (
    Action,
    ActionKind,
    LocalFile,
    Plan,
    RemoteObject,
    RemoteView,
    Resolution,
    Row,
    is_legacy_excluded,
    validate_rel_path,
)
from s3syncd.reconcile import UNKNOWN_MD5, reconcile
from s3syncd.remote.base import ProgressCallback, Remote
from s3syncd.state import RowChange, StateDir

log = logging.getLogger(__name__)

Clock = Callable[[], float]
_V = TypeVar("_V")

# A manifest change touching more paths than this is followed by a full LIST instead of
# one HEAD per path (a LIST page covers 1,000 objects).
INCREMENTAL_LIMIT = 200


@dataclass(slots=True)
class PassReport:
    """What one execute() did, for the CLI, the logs and ``status``."""

    outcomes: list[Outcome] = field(default_factory=list)
    commit_error: str | None = None

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def done(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.ok]


class Engine:
    def __init__(
        self,
        cfg: Config,
        remote: Remote,
        user: str,
        *,
        workers: int | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.cfg = cfg
        self.remote = remote
        self.user = user
        self.workers = workers or cfg.daemon.workers
        self.clock = clock
        self.state = StateDir(cfg.datafolder)
        self.history = history.HistoryLog(
            self.state.file(history.HISTORY_FILE), manifest_copy=self.state.versions
        )
        self.lock = threading.RLock()
        self.base: dict[str, str] = {}
        # The ETag each base version had on the remote, where known: the change signal
        # for objects whose ETag is not their MD5 (multipart uploads, SSE-KMS buckets).
        self.base_etags: dict[str, str] = {}
        self.index: dict[str, LocalFile] = {}
        self.skipped: dict[str, str] = {}
        self.manifest: manifest.Manifest | None = None
        self.objects: dict[str, RemoteObject] | None = None
        self.conditional_writes = True
        self.ignore = tables.IgnoreRules()
        self._ignore_seen: tuple[int, int, int, int] | None = None
        # Paths whose facts changed since the last plan; None: all of them (full plan).
        self._dirty: set[str] | None = None
        # Files indexed below each folder, so a watcher event on a path that never was a
        # folder costs no walk of the table (see localfs.rescan_delta).
        self._dir_files: dict[str, int] = {}
        # The daemon writes versionsLocal.csv / deletedLocal.csv at most every few seconds
        # (flush_tables); a one-shot pass writes them as it goes.
        self.coalesce_tables = False
        self._tables_dirty = False
        self.reload_ignores()

    # --- start-up -----------------------------------------------------------------------
    def prepare(self, dry_run: bool = False) -> None:
        """Create .S3/, drop partial downloads, load state, initialise the remote if empty,
        and commit any manifest changes a crash left in the journal.

        ``dry_run`` only loads: nothing is written on the remote.
        """
        self.state.ensure()
        self.state.clean_tmp()
        with self.lock:
            self.base, self.base_etags = self.state.store.load_base()
            self.index = self.state.load_index()
            self._dir_files = _count_dirs(self.index)
            self._dirty = None
        self.reload_ignores()
        self.remote.check()
        self.conditional_writes = self.remote.supports_conditional_writes()
        if not self.conditional_writes:
            log.warning(
                "%s does not enforce conditional writes; verifying by read-back",
                self.remote.describe(),
            )
        if dry_run:
            return
        if manifest.ensure_initialised(self.remote):
            log.info("initialised an empty manifest at %s", self.remote.describe())
        if not self.state.has_base():
            # First run of s3syncd on this folder: never again take versionsLocal.csv
            # (which we write ourselves) for an agreed state.
            with self.lock:
                if self.state.versions_local.exists():
                    self._adopt_legacy_base()
                self.state.save_base(self.base, self.base_etags)
        pending = self.state.load_journal()
        if pending:
            log.info("committing %d manifest change(s) left by an interrupted run", len(pending))
            # Committed, they are what both sides hold: the base (see _commit). A change
            # refused because a colleague's row is newer is re-planned instead.
            self._commit(pending)

    def _adopt_legacy_base(self) -> None:
        # The original's versionsLocal.csv is a snapshot taken when its last sync ended:
        # the best base we can have when a folder switches over from it.
        try:
            rows = tables.read_table_file(self.state.versions_local)
        except SyncError as exc:
            log.warning("not using %s as a base: %s", self.state.versions_local, exc)
            return
        remote = manifest.read_manifest(self.remote)
        agreed = remote.rows if remote else {}
        # Only what the remote also holds was agreed; the rest was never pushed.
        self.base = {
            p: r.checksum
            for p, r in rows.items()
            if _safe(p) and p in agreed and agreed[p].checksum == r.checksum
        }
        log.info("took %d base entries from the original's versionsLocal.csv", len(self.base))

    # --- local side ---------------------------------------------------------------------
    def reload_ignores(self) -> bool:
        """Re-read ``ignores3.txt`` if it changed on disk (one stat); True if the rules changed.

        Called before every scan and plan, so an edit applies without a restart even when
        no watcher reported it.
        """
        seen = _file_identity(self.state.ignores)
        with self.lock:
            if seen is not None and seen == self._ignore_seen:
                return False
            rules = tables.read_ignores(self.state.ignores)
            changed = rules != self.ignore
            self.ignore, self._ignore_seen = rules, seen
        if changed:
            log.info("ignore list %s changed; applying it", self.state.ignores)
        return changed

    def _ignored(self, rel: str) -> bool:
        return self.ignore.matches(rel)

    def scan_local(self) -> localfs.ScanResult:
        self.reload_ignores()
        with self.lock:
            index = dict(self.index)
        result = localfs.scan(self.cfg.datafolder, index, self._ignored)
        with self.lock:
            delta: dict[str, LocalFile | None] = {
                p: f for p, f in result.files.items() if index.get(p) != f
            }
            delta.update((p, None) for p in index if p not in result.files)
            self.state.update_index(delta)
            self.index = result.files
            self._dir_files = _count_dirs(self.index)
            _log_new_skips(self.skipped, result.skipped)
            self.skipped = result.skipped
            self._dirty = None  # a full rescan is followed by a full plan
            self._tables_changed()
        log.info(
            "scanned %d local files (%d hashed, %d skipped)",
            len(result.files),
            result.hashed,
            len(result.skipped),
        )
        return result

    def update_local(self, paths: Iterable[str]) -> set[str]:
        """Re-examine the given paths (from the watcher), O(paths): the paths whose local
        facts changed (files and skip reasons), empty if none did."""
        if self.reload_ignores():
            return self._rescan_after_ignores()
        wanted = set(paths)
        # Only this (worker) thread changes the index, so it is read without a copy.
        delta, skipped = localfs.rescan_delta(
            self.cfg.datafolder, wanted, self.index, self._ignored, self._indexed_below
        )
        with self.lock:
            changed = set(delta)
            self._apply_index(delta)
            _log_new_skips(self.skipped, skipped)
            # Re-examined paths are judged afresh: forget why they were skipped before.
            if self.skipped:
                for p in [s for s in self.skipped if _under_any(s, wanted)]:
                    changed.add(p)
                    del self.skipped[p]
            changed |= set(skipped)
            self.skipped.update(skipped)
            if changed:
                self._mark(changed)
                self._tables_changed()
        return changed

    def _rescan_after_ignores(self) -> set[str]:
        # A file taken off the ignore list is only found by a walk; cached MD5s are reused.
        result = self.scan_local()
        return set(result.files) | set(result.skipped) | {""}

    def _indexed_below(self, folder: str) -> list[str]:
        if not self._dir_files.get(folder):
            return []
        prefix = folder + "/"
        return [p for p in self.index if p.startswith(prefix)]

    def _apply_index(self, delta: Mapping[str, LocalFile | None], persist: bool = True) -> None:
        """Apply (and persist) index changes (under ``self.lock``)."""
        if not delta:
            return
        for path, lf in delta.items():
            had = path in self.index
            if lf is None:
                self.index.pop(path, None)
                if had:
                    _count_parents(self._dir_files, path, -1)
            else:
                self.index[path] = lf
                if not had:
                    _count_parents(self._dir_files, path, 1)
        if persist:
            self.state.update_index(delta)

    def _set_base(
        self,
        changes: Mapping[str, str | None],
        etags: Mapping[str, str | None],
        commit: bool = False,
    ) -> None:
        """Apply and persist base changes (under ``self.lock``): md5 or None to forget; the
        ETag of the agreed object where known (a path missing from ``etags``: unknown).
        ``commit``: the journal's changes are committed; empty it in the same transaction."""
        if not changes and not commit:
            return
        stored: dict[str, tuple[str, str | None] | None] = {}
        for path, md5 in changes.items():
            etag = etags.get(path)
            if md5 is None:
                self.base.pop(path, None)
                self.base_etags.pop(path, None)
                stored[path] = None
                continue
            self.base[path] = md5
            # An ETag that is the MD5 says nothing the MD5 does not: not kept (memory).
            if etag and etag != md5:
                self.base_etags[path] = etag
            else:
                self.base_etags.pop(path, None)
                etag = None
            stored[path] = (md5, etag)
        if commit:
            self.state.commit_done(stored)
        else:
            self.state.update_base(stored)

    def _mark(self, paths: Iterable[str]) -> None:
        if self._dirty is not None:
            self._dirty.update(paths)

    def take_dirty(self) -> set[str] | None:
        """The paths to re-plan since the last call (None: all), and start afresh."""
        with self.lock:
            dirty, self._dirty = self._dirty, set()
        return dirty

    def give_back_dirty(self, paths: set[str] | None) -> None:
        """A plan of ``paths`` failed: they stay to be planned."""
        with self.lock:
            if paths is None or self._dirty is None:
                self._dirty = None
            else:
                self._dirty |= paths

    def _tables_changed(self) -> None:
        self._tables_dirty = True
        if not self.coalesce_tables:
            self.flush_tables()

    def flush_tables(self) -> bool:
        """Write ``versionsLocal.csv`` and ``deletedLocal.csv`` if they are behind."""
        with self.lock:
            if not self._tables_dirty:
                return False
            self._write_local_tables()
            self._tables_dirty = False
        return True

    def _write_local_tables(self) -> None:
        rows = [
            Row(f.path, self.user, localfs.time_edited(f.mtime_ns / 1e9), f.md5)
            for f in self.index.values()
        ]
        tables.write_table_file(self.state.versions_local, rows)
        known = self.manifest.rows if self.manifest else {}
        gone = [
            known.get(p) or Row(p, self.user, localfs.time_edited(0), md5)
            for p, md5 in self.base.items()
            if p not in self.index
        ]
        tables.write_table_file(self.state.deleted_local, gone)

    # --- remote side --------------------------------------------------------------------
    def refresh_remote(self, listing: bool = True, force: bool = False) -> bool:
        """Conditional GET of the manifest; True if it changed.

        A listing is only trusted when at least as fresh as the manifest. When the manifest
        changed, only the paths whose rows changed are looked at again (one HEAD each);
        ``force`` (start-up, the audit), a first read or a change of many paths re-lists.
        """
        with self.lock:
            previous = self.manifest
            etag = None if force or previous is None else previous.etag
            have_listing = self.objects is not None
        fresh = manifest.read_manifest(self.remote, etag)
        if fresh is None:
            if listing and (force or not have_listing):
                self._relist()
            return False
        # A manifest that vanished (a reset, a share that went away) is never taken path by
        # path for "all deleted": only a full listing can tell what is really there.
        if listing and not force and have_listing and previous is not None and fresh.etag:
            changed = changed_paths(previous, fresh)
            if len(changed) <= INCREMENTAL_LIMIT:
                found = self._look_up(changed)
                with self.lock:
                    self._adopt_objects(found)
                    self._mark(changed)
                self._store(fresh)
                log.debug("manifest changed: %d path(s) looked at", len(changed))
                return True
        with self.lock:
            self.objects = None
            self._dirty = None
        self._store(fresh)
        if listing:
            self._relist()
        return True

    def _look_up(self, paths: Iterable[str]) -> dict[str, RemoteObject | None]:
        """One HEAD per path: the object as it is now (None: absent)."""
        with self.lock:
            base = dict((p, self.base[p]) for p in paths if p in self.base)
            base_etags = {p: self.base_etags[p] for p in base if p in self.base_etags}
        found: dict[str, RemoteObject | None] = {}
        for path in sorted(paths):
            if not _safe(path):
                continue
            obj = self.remote.stat(path)
            if obj is not None and obj.md5 is None and self._shared(path):
                b, e = base.get(path), base_etags.get(path)
                known = _md5_from_base(obj, b, e)
                if known is not None:
                    obj = known
                elif b is not None and e is not None:
                    obj = replace(obj, md5=UNKNOWN_MD5)  # changed, content unknown
            found[path] = obj
        return found

    def _adopt_objects(self, found: Mapping[str, RemoteObject | None]) -> None:
        if self.objects is None:
            return
        for path, obj in found.items():
            if obj is None:
                self.objects.pop(path, None)
            else:
                self.objects[path] = obj

    def _relist(self) -> None:
        objects = self.remote.list()
        with self.lock:
            base = dict(self.base)
            base_etags = dict(self.base_etags)
            before = dict(self.objects or {})
        result: dict[str, RemoteObject] = {}
        for key, obj in objects.items():
            if not _safe(key):
                log.warning("ignoring remote object with an unsafe name: %r", key)
                continue
            if obj.md5 is None and self._shared(key):
                obj = self._learn_md5(obj, base.get(key), base_etags.get(key), before.get(key))
            result[key] = obj
        with self.lock:
            self.objects = result
            self._dirty = None

    def _learn_md5(
        self,
        obj: RemoteObject,
        base_md5: str | None,
        base_etag: str | None,
        seen: RemoteObject | None,
    ) -> RemoteObject:
        """The MD5 of a listed object whose ETag is not one (multipart, SSE-KMS).

        The ETag is the change signal. The ETag agreed in the base means the base's
        content. Any other ETag costs a HEAD for our ``md5`` metadata, because the row may
        be stale (an old client's blind write) and must not be trusted over the object;
        if the metadata is missing too, a changed ETag means "changed, content unknown".
        Only an object we never agreed on has nothing to compare with: the row stands.
        """
        known = _md5_from_base(obj, base_md5, base_etag)
        if known is not None:
            return known
        if seen is not None and seen.etag == obj.etag and seen.md5 not in (None, UNKNOWN_MD5):
            return seen  # learnt at an earlier listing, and unchanged since
        stat = self.remote.stat(obj.key)
        if stat is None:
            return obj  # gone since the listing; the next one will say so
        if stat.md5 is None and base_etag is not None and base_md5 is not None:
            return replace(stat, md5=UNKNOWN_MD5)
        return stat

    # --- planning -----------------------------------------------------------------------
    def plan(self, paths: Collection[str] | None = None) -> Plan:
        """Plan every path, or only ``paths`` (those touched since the last plan)."""
        if self.reload_ignores():
            paths = None  # what the rules cover changed: judge everything again
        with self.lock:
            if self.manifest is None:
                raise SyncError("the remote manifest has not been read yet")
            skipped = set(self.skipped)

            def keep(path: str) -> bool:
                # A path we could not read (or below a folder we could not list) has an
                # unknown local state: acting on it either way could lose a version.
                # An unlistable root ("") covers every path: nothing at all is planned.
                if "" in skipped:
                    return False
                return self._shared(path) and not (skipped and _under_any(path, skipped))

            objects = self.objects
            view = RemoteView(
                rows=_pick(self.manifest.rows, keep, paths),
                tombstones=_pick(self.manifest.tombstones, keep, paths),
                objects=None if objects is None else _pick(objects, keep, paths),
                etag=self.manifest.etag,
            )
            base = _pick(self.base, keep, paths)
            # The index may predate an ignore-list edit: filter it like every other side.
            local = _pick(self.index, keep, paths)
        return reconcile(base, local, view, self.user)

    def agree_landed(self, downloads: Iterable[Action]) -> None:
        """Agree on approved downloads whose file already holds what they fetch.

        A kill -9 between a download's rename and its record leaves exactly that: the
        content is a version the remote had, so it is agreed, not a local edit.
        """
        with self.lock:
            landed = {
                a.path: a.remote_md5
                for a in downloads
                if a.remote_md5 is not None
                and (lf := self.index.get(a.path)) is not None
                and lf.md5 == a.remote_md5
                and self.base.get(a.path) != a.remote_md5
            }
            if landed:
                log.info("%d download(s) had landed before an interruption", len(landed))
                self._set_base(landed, etags={})  # ETags unknown: the next listing HEADs them
                self._mark(landed)

    def _shared(self, path: str) -> bool:
        return not is_legacy_excluded(path) and not self.ignore.matches(path)

    def apply_agreement(self, plan: Plan) -> None:
        """Record what both sides already agree on (no transfer needed)."""
        with self.lock:
            changes: dict[str, str | None] = {}
            etags: dict[str, str | None] = {}
            for path, md5 in plan.agreed.items():
                etag = self._agreed_etag(path, md5)
                etag = None if etag == md5 else etag
                if self.base.get(path) != md5 or etag != self.base_etags.get(path):
                    changes[path], etags[path] = md5, etag
            for path in plan.forget:
                if path in self.base:
                    changes[path] = None
            self._set_base(changes, etags)

    def _agreed_etag(self, path: str, md5: str) -> str | None:
        """The ETag to remember with ``md5`` as the agreed version of ``path``."""
        obj = self.objects.get(path) if self.objects is not None else None
        # md5 None: an object nothing could tell the MD5 of, agreed on the row's word.
        if obj is not None and obj.etag and obj.md5 in (None, md5):
            return obj.etag
        if (obj is None or not obj.etag) and self.base.get(path) == md5:
            return self.base_etags.get(path)  # nothing new is known: keep what we had
        return None

    # --- execution ----------------------------------------------------------------------
    def stale_remote(self, actions: Sequence[Action]) -> set[str]:
        """Ids of actions whose remote facts no longer hold (one conditional GET)."""
        self.refresh_remote(listing=True)
        with self.lock:
            rows = self.manifest.rows if self.manifest else {}
            etag = self.manifest.etag if self.manifest else None
        stale = set()
        for a in actions:
            if a.kind is ActionKind.RECORD:
                # Auto-approved and planned from the listing as much as from the rows:
                # re-check both, or a repair on stale facts undoes a colleague's commit.
                if self._record_stale(a, rows):
                    stale.add(a.id)
                continue
            if a.manifest_etag == etag:
                continue
            if a.source is not None:
                # A move also needs its old name's row to be the version it copies.
                old = rows.get(a.source.path)
                if old is None or old.checksum != a.source.row.checksum:
                    stale.add(a.id)
                    continue
            row = rows.get(a.path)
            now_md5 = row.checksum if row else None
            changed = now_md5 != a.remote_md5 if a.remote is not None else row is not None
            if changed:
                stale.add(a.id)
        return stale

    def _record_stale(self, action: Action, rows: Mapping[str, Row]) -> bool:
        """Whether the row or the object a RECORD was planned from has changed since."""
        row = rows.get(action.path)
        planned_row = action.remote.checksum if action.remote else None
        if (row.checksum if row else None) != planned_row:
            return True
        try:
            obj = self.remote.stat(action.path)  # one HEAD: repairs are rare
        except SyncError as exc:
            log.info("re-planning the repair of %s: %s", action.path, exc)
            return True
        return (obj.md5 if obj else None) != action.remote_md5

    def execute(
        self,
        approved: Sequence[tuple[Action, Resolution | None]],
        progress: ProgressCallback | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> PassReport:
        """Re-check, carry out, commit. The base changes only for actions that completed."""
        report = PassReport()
        if not approved:
            return report
        stale_ids = self.stale_remote([a for a, _ in approved])
        with self.lock:
            known = dict(self.manifest.rows) if self.manifest else {}
            # Listed before any transfer: an ETag seen here can only be older than what
            # a download reads, never newer (see _absorb_base).
            listed = dict(self.objects or {})
        ctx = executor.Context(
            self.state,
            self.remote,
            self.user,
            self._stamp,
            known,
            progress,
            cancel,
            conditional_writes=self.conditional_writes,
            uncommitted={c.path: c.row.checksum for c in self.state.load_journal() if c.row},
        )
        todo = []
        for action, resolution in approved:
            if action.id in stale_ids:
                out = Outcome(
                    action, False, "changed on the remote since planned; re-planning", stale=True
                )
                report.outcomes.append(out)
                if on_outcome:
                    on_outcome(out)
            else:
                todo.append((action, resolution))
        with ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="s3syncd-xfer"
        ) as pool:
            for out in pool.map(lambda ar: self._agree_early(executor.run(ctx, *ar), known), todo):
                report.outcomes.append(out)
                self._absorb_local(out)
                if on_outcome:
                    on_outcome(out)
        with self.lock:
            # Our own writes, persisted once per batch (a crash before this only costs a
            # rehash of the files we wrote); and every path acted on is re-planned.
            self.state.update_index({p: lf for o in report.outcomes for p, lf in o.local.items()})
            self._mark(o.action.path for o in report.outcomes)
        recheck = {o.action.path for o in report.outcomes if o.recheck}
        if recheck:
            # Polls look only at paths whose rows changed; an object replaced under its row
            # (an upload whose commit never landed) is seen by a HEAD here, not at the audit.
            found = self._look_up(recheck)
            with self.lock:
                self._adopt_objects(found)
        # Each change names the row it was made over, so that if it has to wait in the
        # journal it is never replayed over a colleague's newer row.
        changes = [_guard(c, known) for o in report.done for c in o.changes]
        try:
            pending = self._journal(changes)
            dropped = self._commit(pending) if pending else set()
        except SyncError as exc:
            report.commit_error = exc.message
            log.error("manifest commit failed (kept in the journal for the next run): %s", exc)
            return report
        self._absorb_base(
            [o for o in report.done if not dropped & {c.path for c in o.changes}], listed
        )
        return report

    def _journal(self, changes: Sequence[RowChange]) -> list[RowChange]:
        """Add ``changes`` to what earlier failed commits left (newest per path wins)."""
        pending = {c.path: c for c in self.state.load_journal()}
        if not changes:
            return list(pending.values())
        for c in changes:
            pending.pop(c.path, None)
            pending[c.path] = c
        journal = list(pending.values())
        self.state.save_journal(journal)
        return journal

    def _agree_early(self, out: Outcome, known: Mapping[str, Row]) -> Outcome:
        # Make each outcome durable the moment it is done, or a kill -9 before the batch
        # ends forgets it and the next edit of that file looks like a conflict. Manifest
        # changes go to the journal (the next start commits them); an outcome that needs
        # none (a verified download, a local delete) is agreed already.
        if out.ok and out.changes:
            with self.lock:
                # Guarded like the batch's commit: a replay never lands over a newer row.
                self.state.append_journal([_guard(c, known) for c in out.changes])
        elif out.ok and out.base:
            with self.lock:
                self._set_base(out.base, etags={})  # ETags: set by _absorb_base at the end
        return out

    def _absorb_local(self, out: Outcome) -> None:
        # In memory only; saved once per pass. After a crash the index is merely behind,
        # which costs a rehash of the files we wrote, nothing more.
        if not out.local:
            return
        with self.lock:
            self._apply_index(out.local, persist=False)

    def _absorb_base(self, done: Sequence[Outcome], listed: Mapping[str, RemoteObject]) -> None:
        with self.lock:
            changes: dict[str, str | None] = {}
            etags: dict[str, str | None] = {}
            for out in done:
                for path, md5 in out.base.items():
                    changes[path] = md5
                    if md5 is None:
                        continue
                    # Uploads know their ETag. Otherwise the listing's, if it was already
                    # known to hold this very content (a download, a restored row).
                    etag = out.etags.get(path)
                    seen = listed.get(path)
                    if not etag and seen is not None and seen.md5 == md5:
                        etag = seen.etag
                    etags[path] = etag or None
            self._set_base(changes, etags)
            self._tables_changed()

    def _commit(self, changes: list[RowChange]) -> set[str]:
        """Commit ``changes`` and clear the journal; returns the paths of guarded changes
        left out because a colleague changed their rows first (they get re-planned)."""
        with self.lock:
            previous = self.manifest
        written = manifest.commit(
            self.remote, changes, previous, verify=not self.conditional_writes
        )
        if written is None:
            self.state.save_journal([])
            return set()
        dropped = {c.path for c in changes if _checksum(written.rows, c.path) != c.checksum}
        with self.lock:
            # The rows are on the remote, so both sides hold them: the base, written in the
            # transaction that empties the journal (a kill -9 in between would otherwise
            # forget an upload, and its next edit would look like a conflict). ETags are
            # learnt by the caller where the transfer told them.
            self._set_base(
                {c.path: c.checksum for c in changes if c.path not in dropped},
                etags={},
                commit=True,
            )
        lost = set(tables.legacy_unsafe_paths(written.rows.values())) & {c.path for c in changes}
        for path in sorted(lost):
            # We cannot rename the user's file; say so once per commit that adds it.
            log.warning(
                "%s is synced, but the original s3synchrony package will not see it "
                "(pandas reads that name as a missing value or a number)",
                path,
            )
        with self.lock:
            if self.objects is not None:
                for c in changes:
                    if c.path in dropped:
                        continue
                    if c.row is None:
                        self.objects.pop(c.path, None)
                    else:
                        # We just wrote this object: the listing must not contradict it.
                        self.objects[c.path] = RemoteObject(c.path, -1, "", c.row.checksum)
        self._store(written, ours={c.path for c in changes} - dropped)
        ours = {c.path for c in changes}
        with self.lock:
            self._mark(ours)
        merged = previous is None or bool(changed_paths(previous, written) - ours)
        if merged or dropped:
            # The commit merged rows of other users: our listing (and tombstones) predate
            # them, and planning on that mix would undo their work. Look again.
            log.info("the manifest held other users' changes; refreshing the remote view")
            try:
                self._refresh_after_merge(previous, ours - dropped)
            except SyncError as exc:
                # The commit itself succeeded; without a fresh listing, plan without one.
                log.warning("could not refresh the remote view after a commit: %s", exc)
                with self.lock:
                    self.objects = None
                    self._dirty = None
        return dropped

    def _refresh_after_merge(self, previous: manifest.Manifest | None, ours: set[str]) -> None:
        """Re-read both tables and look at the paths others changed (a LIST only when we had
        no listing or they changed many)."""
        with self.lock:
            have_listing = self.objects is not None
        fresh = manifest.read_manifest(self.remote)
        assert fresh is not None  # an unconditional read
        look = changed_paths(previous, fresh) - ours if previous is not None else None
        if look is None or not have_listing or len(look) > INCREMENTAL_LIMIT:
            with self.lock:
                self.objects = None
                self._dirty = None
            self._store(fresh)
            self._relist()
            return
        found = self._look_up(look)
        with self.lock:
            self._adopt_objects(found)
            self._mark(look)
        self._store(fresh)

    def _store(self, fresh: manifest.Manifest, ours: Iterable[str] = ()) -> None:
        """Adopt a manifest just read or written (``ours``: paths our commit wrote), record
        what changed in the history, and keep the legacy local copies."""
        with self.lock:
            previous, self.manifest = self.manifest, fresh
        self.history.observe(
            previous.rows if previous else None,
            fresh,
            ours,
            self._size_of,
            self.user,
            self.clock(),
        )
        write_atomic(self.state.versions, fresh.raw_rows)
        write_atomic(self.state.deleted_remote, fresh.raw_tombstones)

    def _size_of(self, path: str, md5: str) -> int | None:
        """The size of ``path``'s content ``md5``, if that is what we hold locally."""
        lf = self.index.get(path)
        return lf.size if lf is not None and lf.md5 == md5 else None

    def _stamp(self) -> str:
        return time.strftime("%Y%m%d-%H%M%S", time.localtime(self.clock()))

    # --- summary ------------------------------------------------------------------------
    def skipped_files(self) -> list[dict[str, str]]:
        """Every path not synced and why, for ``status`` (names exactly as on disk)."""
        with self.lock:
            return [{"path": p, "reason": why} for p, why in sorted(self.skipped.items())]

    def counts(self) -> Mapping[str, int]:
        with self.lock:
            return {
                "local_files": len(self.index),
                "remote_files": len(self.manifest.rows) if self.manifest else 0,
                "base_files": len(self.base),
                "skipped": len(self.skipped),
            }


def _md5_from_base(
    obj: RemoteObject, base_md5: str | None, base_etag: str | None
) -> RemoteObject | None:
    """``obj`` with the agreed MD5 if its ETag says it still holds the agreed content: the
    agreed ETag, or an ETag that is the agreed MD5 (only an ETag other than the MD5 is
    kept); None when the ETag tells nothing."""
    if base_md5 is not None and obj.etag in (base_etag, base_md5):
        return replace(obj, md5=base_md5)
    return None


def _pick(
    table: Mapping[str, _V], keep: Callable[[str], bool], paths: Collection[str] | None
) -> dict[str, _V]:
    """The entries of ``table`` to plan: all kept ones, or only those among ``paths``."""
    if paths is None:
        return {p: v for p, v in table.items() if keep(p)}
    return {p: table[p] for p in paths if p in table and keep(p)}


def _file_identity(path: Path) -> tuple[int, int, int, int] | None:
    """What tells a rewrite of a small file apart (inode for an editor's rename-over)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _checksum(rows: Mapping[str, Row], path: str) -> str | None:
    row = rows.get(path)
    return row.checksum if row else None


def _guard(change: RowChange, known: Mapping[str, Row]) -> RowChange:
    row = known.get(change.path)
    return replace(change, replaces=row.checksum if row else None, guarded=True)


def _log_new_skips(known: Mapping[str, str], found: Mapping[str, str]) -> None:
    """Say once why a path is not synced: when first seen, or when the reason changes
    (``status`` lists them all the time)."""
    for path, why in sorted(found.items()):
        if known.get(path) != why:
            log.warning("not syncing %r: %s", path, why)


def _under_any(path: str, roots: set[str]) -> bool:
    return path in roots or any(path.startswith(r + "/") for r in roots)


def _safe(path: str) -> bool:
    try:
        validate_rel_path(path)
    except UnsafePathError:
        return False
    return True


def _count_parents(counts: dict[str, int], path: str, step: int) -> None:
    """Add ``step`` to the file count of every folder above ``path``."""
    end = path.rfind("/")
    while end > 0:
        folder = path[:end]
        n = counts.get(folder, 0) + step
        if n > 0:
            counts[folder] = n
        else:
            counts.pop(folder, None)
        end = path.rfind("/", 0, end)


def _count_dirs(index: Mapping[str, LocalFile]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for path in index:
        _count_parents(counts, path, 1)
    return counts
