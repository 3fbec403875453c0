"""The daemon: wires engine, watcher, scheduler, approval queue and control socket.

Threads (all named, all joined on shutdown):
- ``s3syncd-worker``: the only thread that changes the engine's picture or runs
  transfers; everything else hands it tasks.
- the scheduler's pool (poll, rescan, audit jobs only enqueue tasks and wait),
- the watcher's observer and debounce threads,
- the control server's thread and request pool.
Signal handlers only set a flag.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import fcntl
import logging
import logging.handlers
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from s3syncd import approvals, preview, recovery
from s3syncd.api import build_engine, reset
from s3syncd.approvals import ApprovalQueue, EntryState
from s3syncd.config import Config
from s3syncd.engine import Engine
from s3syncd.errors import (
    EXIT_ERROR,
    EXIT_OK,
    AlreadyRunningError,
    ProtocolError,
    SyncError,
)
from s3syncd.executor import Outcome
from s3syncd.model import APPROVABLE_KINDS, ActionKind, Resolution, validate_rel_path
from s3syncd.notify import Notifier
from s3syncd.server import ControlServer, default_socket_path
from s3syncd.watcher import Watcher

log = logging.getLogger(__name__)

MAX_ERRORS = 50
MAX_RESULTS = 500
LOG_LINES = 2000
# Seconds between rewrites of the legacy versionsLocal.csv / deletedLocal.csv when behind.
TABLES_INTERVAL = 5.0
# Methods served before the first poll, scan and plan are done; others wait up to this.
ANSWERED_WHILE_STARTING = frozenset({"status", "log", "pause", "resume"})
STARTUP_WAIT = 120.0


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")


class MemoryLog(logging.Handler):
    """Keeps the last lines for ``s3syncctl log``."""

    def __init__(self, capacity: int = LOG_LINES) -> None:
        super().__init__()
        self.lines: collections.deque[str] = collections.deque(maxlen=capacity)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:
            self.handleError(record)  # logging's own policy for a failing handler


@dataclass(slots=True)
class Progress:
    active: dict[str, str] = field(default_factory=dict)  # action id -> path
    bytes_done: int = 0
    bytes_total: int = 0


@dataclass(slots=True)
class Task:
    name: str
    run: Callable[[], Any]
    future: Future[Any] = field(default_factory=Future)


class Daemon:
    def __init__(
        self,
        cfg: Config,
        engine: Engine | None = None,
        clock: Callable[[], float] = time.time,
        stopping: threading.Event | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.engine = engine or build_engine(cfg, ask_name=False)
        self.queue = ApprovalQueue(self.engine.state)
        self.lock = threading.RLock()  # guards queue, progress, errors, flags
        # Set by SIGTERM/SIGINT (via run()) or by a reset request: the main thread waits on it.
        self.stopping = stopping or threading.Event()
        self.cancel = threading.Event()
        self.tasks: queue.Queue[Task | None] = queue.Queue()
        self.paused = False
        self.started_at = clock()
        self.last_poll: float | None = None
        self.last_poll_result = "never"
        self.last_rescan: float | None = None
        self.errors: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_ERRORS)
        self.results: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self.progress = Progress()
        self.brake = approvals.DeleteBrake(0, 0, cfg.policy.max_delete_percent)
        self.memlog = MemoryLog()
        self.socket_path = self._socket_path()
        self._lock_fh: TextIO | None = None
        self._threads: list[threading.Thread] = []
        self._server: ControlServer | None = None
        self._watcher: Watcher | None = None
        self._scheduler: Any = None
        self.reset_requested = False
        # Set once the first poll, scan and plan are done (or failed).
        self.ready = threading.Event()
        self.notifier = Notifier(cfg.daemon.notify)

    # --- lifecycle ----------------------------------------------------------------------
    def _socket_path(self) -> Path:
        if self.cfg.daemon.socket is not None:
            return self.cfg.daemon.socket
        return default_socket_path(self.cfg.name, self.cfg.state_dir, os.environ)

    def _take_folder_lock(self) -> None:
        # flock, not a pidfile: the kernel drops it when we die, even on kill -9.
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        fh = open(self.cfg.state_dir / "s3syncd.lock", "a")  # noqa: SIM115 - held for our lifetime
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise AlreadyRunningError(
                f"another s3syncd is already running on {self.cfg.datafolder}"
            ) from None
        self._lock_fh = fh

    def start(self) -> None:
        """Load state, watch, serve; then poll, scan and plan as the worker's first task.

        The socket answers ``status`` within a moment of start even on a large folder;
        requests that need the plan (``pending``, ``approve``…) wait for that first task.
        Nothing changed meanwhile is missed: the watches are in place before the scan,
        and their events wait behind it in the worker's queue.
        """
        self._take_folder_lock()
        eng = self.engine
        eng.coalesce_tables = True
        eng.prepare()
        self.queue.load()

        ignores = self.engine.state.ignores.relative_to(self.cfg.datafolder).as_posix()

        def on_change(paths: set[str]) -> None:
            if ignores in paths:
                # Before the other paths of the batch: they are judged by the new list.
                self.submit("ignores", self._ignores_changed)
                paths = paths - {ignores}
            if paths:
                self.submit("local", lambda: self._local_changed(paths))

        def on_rescan() -> None:
            self.submit("rescan", self._rescan)

        self._watcher = Watcher(
            self.cfg.datafolder,
            on_change,
            debounce=self.cfg.daemon.debounce,
            on_rescan=on_rescan,
            include=(ignores,),
        )
        self._watcher.start()
        self.submit("start-up", self._first_pass)

        worker = threading.Thread(target=self._work, name="s3syncd-worker", daemon=True)
        worker.start()
        self._threads.append(worker)
        if self.socket_path.parent == self.cfg.state_dir:
            # The fallback location: the socket's folder must be private (it also holds
            # the original's aws.txt, so 0700 suits it anyway).
            self.cfg.state_dir.chmod(0o700)
        self._server = ControlServer(
            self.socket_path, self.handle, info={"version": "0.1.0", "name": self.cfg.name}
        )
        self._server.start()
        self._start_scheduler()
        log.info(
            "s3syncd serving %s on %s (socket %s)",
            self.cfg.datafolder,
            eng.remote.describe(),
            self.socket_path,
        )

    def _start_scheduler(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        d = self.cfg.daemon
        sched = BackgroundScheduler(
            timezone="UTC",
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        sched.add_job(
            lambda: self._job("poll", self._poll), "interval", seconds=d.poll_interval, id="poll"
        )
        sched.add_job(
            lambda: self._job("rescan", self._rescan),
            "interval",
            seconds=d.rescan_interval,
            id="rescan",
        )
        sched.add_job(
            lambda: self._job("audit", self._audit),
            "interval",
            seconds=d.audit_interval,
            id="audit",
        )
        # versionsLocal.csv / deletedLocal.csv are rewritten at most this often (O(files)).
        sched.add_job(
            lambda: self._job("tables", self._flush_tables),
            "interval",
            seconds=TABLES_INTERVAL,
            id="tables",
        )

        sched.start()
        self._scheduler = sched

    def stop(self) -> None:
        """Stop accepting work, let running transfers end or abandon them, save, clean up."""
        self.stopping.set()
        self.cancel.set()
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=True)
        if self._watcher is not None:
            self._watcher.stop()
        self.tasks.put(None)
        for t in self._threads:
            t.join(timeout=30)
        if self._server is not None:
            self._server.stop()
        # After a reset the queue file is gone on purpose: do not write it back.
        if not self.reset_requested:
            with self.lock:
                # Actions cut short by the shutdown are asked again after a restart.
                for key, e in list(self.queue.entries.items()):
                    if e.state is EntryState.RUNNING:
                        self.queue.entries[key] = replace(e, state=EntryState.APPROVED)
                self.queue.save()
        if not self.reset_requested:
            try:
                self.engine.flush_tables()
            except SyncError as exc:
                log.error("could not write the legacy tables at shutdown: %s", exc)
        self.engine.state.close()
        self.engine.remote.close()
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None
        log.info("s3syncd stopped")

    # --- the worker ---------------------------------------------------------------------
    def submit(self, name: str, fn: Callable[[], Any]) -> Future[Any]:
        task = Task(name, fn)
        if self.stopping.is_set():
            task.future.set_exception(SyncError("the daemon is stopping"))
        else:
            self.tasks.put(task)
        return task.future

    def _job(self, name: str, fn: Callable[[], Any]) -> None:
        """A scheduler job: hand the work to the worker and wait for it.

        Waiting keeps ``max_instances=1`` meaningful (the next poll starts after this one
        ended). The worker records a failure for ``status``; the job itself never raises,
        so the scheduler never sees one.
        """
        if self.paused:
            return
        with contextlib.suppress(FutureTimeout):
            self.submit(name, fn).exception(timeout=max(60.0, self.cfg.daemon.poll_interval * 2))

    def _work(self) -> None:
        while True:
            task = self.tasks.get()
            if task is None:
                return
            try:
                result = task.run()
                if not self.stopping.is_set():
                    self._execute_approved()
                task.future.set_result(result)
            except SyncError as exc:
                self._error(f"{task.name}: {exc.message}")
                task.future.set_exception(exc)
            except Exception as exc:  # the worker must survive any single task
                log.exception("task %s failed", task.name)
                self._error(f"{task.name}: {exc}")
                task.future.set_exception(exc)

    def _error(self, message: str) -> None:
        log.error("%s", message)
        with self.lock:
            self.errors.append({"time": _iso(self.clock()), "message": message})

    def _replan(self) -> None:
        """Plan the paths touched since the last plan (all of them after a full pass)."""
        eng = self.engine
        scope = eng.take_dirty()
        if scope is not None and not scope:
            return
        try:
            plan = eng.plan(scope)
            eng.apply_agreement(plan)
            total = max(len(eng.base), len(eng.index))
            now = self.clock()
            with self.lock:
                before = self._waiting_ids()
                # The brake counts what the whole queue would delete, not only this plan's.
                counted = [*plan.actions, *self.queue.outside(scope)]
                brake = self.queue.brake_for(counted, now, total, self.cfg.policy)
                self.brake = brake
                self.queue.update(plan.actions, now, self.cfg.policy, brake, scope)
                waiting = self._waiting_ids()
        except BaseException:
            eng.give_back_dirty(scope)
            raise
        if brake.engaged:
            log.warning("%s", brake.describe())
        self.notifier.new_pending(self.cfg.name, len(waiting - before), len(waiting))

    def _waiting_ids(self) -> set[str]:
        return {e.action.id for e in self.queue.pending() if e.state is EntryState.PENDING}

    def _local_changed(self, paths: set[str]) -> None:
        if self.engine.update_local(paths):
            self._replan()

    def _flush_tables(self) -> None:
        self.engine.flush_tables()

    def _first_pass(self) -> None:
        """Poll with a full listing, scan, plan; anything approved before a restart then
        runs (the worker executes after every task)."""
        try:
            try:
                self.engine.refresh_remote(listing=True, force=True)
                with self.lock:
                    self.last_poll, self.last_poll_result = self.clock(), "changed"
            except SyncError as exc:
                with self.lock:
                    self.last_poll = self.clock()
                    self.last_poll_result = f"error: {exc.message}"
                self._error(f"start-up poll: {exc.message}")
            self._rescan()  # without a manifest it scans, and the plan waits for a poll
        finally:
            self.ready.set()

    def _ignores_changed(self) -> None:
        self.engine.reload_ignores()
        # A file taken off the list is only found by a scan; the scan reuses cached MD5s.
        self._rescan()

    def _poll(self) -> None:
        try:
            changed = self.engine.refresh_remote(listing=True)
        except SyncError as exc:
            with self.lock:
                self.last_poll, self.last_poll_result = self.clock(), f"error: {exc.message}"
            raise
        with self.lock:
            self.last_poll = self.clock()
            self.last_poll_result = "changed" if changed else "unchanged"
        if changed:
            self._replan()

    def _rescan(self) -> None:
        if self._watcher is not None:
            self._watcher.check()  # notices a dead observer or a replaced root
        self.engine.scan_local()
        self.last_rescan = self.clock()
        with self.lock:
            downloads = [
                e.action
                for e in self.queue.entries.values()
                if e.state is EntryState.APPROVED and e.action.kind is ActionKind.DOWNLOAD
            ]
        self.engine.agree_landed(downloads)
        self._replan()

    def _audit(self) -> None:
        self.engine.refresh_remote(listing=True, force=True)
        self._replan()

    def _execute_approved(self) -> None:
        while not self.stopping.is_set() and not self.paused:
            with self.lock:
                batch = self.queue.take_approved()
                if not batch:
                    return
                self.progress = Progress(
                    active={a.id: a.path for a, _ in batch},
                    bytes_total=sum(max(a.size or 0, 0) for a, _ in batch),
                )
            report = self.engine.execute(
                batch, progress=self._advance, on_outcome=self._outcome, cancel=self.cancel
            )
            with self.lock:
                self.progress = Progress()
                self.queue.save()
            if self.stopping.is_set():
                return
            # A stale action saw its file differ from the local table; the watcher's news
            # of it waits behind this loop, so re-read those paths now, or the re-plan
            # proposes the same action and an auto-approved one spins forever.
            stale = {o.action.path for o in report.outcomes if o.stale}
            if stale:
                self.engine.update_local(stale)
            self._replan()

    def _advance(self, nbytes: int) -> None:
        with self.lock:
            self.progress.bytes_done += nbytes

    def _outcome(self, out: Outcome) -> None:
        a = out.action
        with self.lock:
            self.progress.active.pop(a.id, None)
            if out.stale and self.cancel.is_set():
                return  # abandoned by the shutdown; stays approved
            self.queue.finish(a.id, out.ok, out.stale, out.message)
            self.results[a.id] = {
                "ok": out.ok,
                "stale": out.stale,
                "message": out.message,
                "path": a.path,
                "kind": a.kind.value,
            }
            while len(self.results) > MAX_RESULTS:
                self.results.popitem(last=False)
        if not out.ok and not out.stale:
            self._error(f"{a.kind.value} {a.path}: {out.message}")

    # --- control requests ---------------------------------------------------------------
    def handle(self, method: str, params: dict[str, Any]) -> Any:
        fn = getattr(self, f"rpc_{method}", None)
        if fn is None:
            raise ProtocolError(f"unknown method {method!r}")
        if method not in ANSWERED_WHILE_STARTING:
            # The queue means nothing before the first plan; wait for it (bounded).
            self.ready.wait(STARTUP_WAIT)
        return fn(params)

    def rpc_status(self, params: dict[str, Any]) -> dict[str, Any]:
        eng = self.engine
        with self.lock:
            pending = self.queue.pending()
            ids = [str(i) for i in params.get("ids", [])]
            actions = {}
            for i in ids:
                match = [e for e in pending if e.action.id.startswith(i)]
                if match:
                    actions[i] = {"state": match[0].state.value, "message": match[0].error}
                elif i in self.results:
                    r = self.results[i]
                    actions[i] = {
                        "state": "done" if r["ok"] else "stale" if r["stale"] else "failed",
                        "message": r["message"],
                    }
                else:
                    actions[i] = {"state": "gone", "message": None}
            state = "paused" if self.paused else "syncing" if self.progress.active else "running"
            return {
                "state": state,
                "name": self.cfg.name,
                "datafolder": str(self.cfg.datafolder),
                "remote": eng.remote.describe(),
                "user": eng.user,
                "pid": os.getpid(),
                "started": _iso(self.started_at),
                "pending": sum(1 for e in pending if e.state is EntryState.PENDING),
                "approved": sum(
                    1 for e in pending if e.state in (EntryState.APPROVED, EntryState.RUNNING)
                ),
                "failed": sum(1 for e in pending if e.state is EntryState.FAILED),
                "connected": not self.last_poll_result.startswith("error"),
                "last_poll": _iso(self.last_poll),
                "last_poll_result": self.last_poll_result,
                "last_rescan": _iso(self.last_rescan),
                "poll_interval": self.cfg.daemon.poll_interval,
                "errors": list(self.errors),
                "counts": dict(eng.counts()),
                "skipped": eng.skipped_files(),
                "conditional_writes": eng.conditional_writes,
                "held": self.brake.describe() if self.brake.engaged else None,
                "transfers": {
                    "active": sorted(self.progress.active.values()),
                    "bytes_done": self.progress.bytes_done,
                    "bytes_total": self.progress.bytes_total,
                },
                "remote_requests": eng.remote.request_count(),
                "ready": self.ready.is_set(),
                "actions": actions,
            }

    def rpc_pending(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        with self.lock:
            return [
                {
                    "id": e.action.id,
                    "kind": e.action.kind.value,
                    "path": e.action.path,
                    # The old name of a move (null for every other kind).
                    "source": e.action.source.path if e.action.source else None,
                    "size": e.action.size,
                    "edited_by": e.action.edited_by
                    or (
                        self.engine.user
                        if e.action.kind
                        in (ActionKind.UPLOAD, ActionKind.DELETE_REMOTE, ActionKind.MOVE)
                        else ""
                    ),
                    "time_edited": e.action.remote.time_edited if e.action.remote else None,
                    "reason": e.action.reason,
                    "queued_at": _iso(e.queued_at),
                    "state": e.state.value,
                    "error": e.error,
                }
                for e in self.queue.pending()
            ]

    def rpc_approve(self, params: dict[str, Any]) -> dict[str, Any]:
        ids = [str(i) for i in params.get("ids", [])]
        kind = params.get("kind")
        try:
            kind_enum = ActionKind(kind) if kind else None
        except ValueError:
            raise ProtocolError(
                f"unknown kind {kind!r}; use {', '.join(k.value for k in APPROVABLE_KINDS)}"
            ) from None
        resolution = params.get("keep")
        with self.lock:
            done, held = self.queue.approve(
                ids,
                all_=bool(params.get("all")),
                kind=kind_enum,
                brake=self.brake,
                resolution=Resolution(resolution) if resolution else None,
            )
        if done:
            self.submit("execute", lambda: None)
        return {"approved": done, "held": held}

    def rpc_resolve(self, params: dict[str, Any]) -> dict[str, Any]:
        keep = params.get("keep")
        if keep not in ("local", "remote", "both"):
            raise ProtocolError("resolve needs keep = local, remote or both")
        action_id = str(params.get("id", ""))
        with self.lock:
            entry = self.queue.get([action_id])[0]
            if entry.action.kind is not ActionKind.CONFLICT:
                raise ProtocolError(f"{action_id} is a {entry.action.kind.value}, not a conflict")
        return self.rpc_approve({"ids": [action_id], "keep": keep})

    def rpc_reject(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            return {"rejected": self.queue.reject([str(i) for i in params.get("ids", [])])}

    def rpc_sync(self, params: dict[str, Any]) -> dict[str, Any]:
        def now() -> None:
            self._rescan()
            self._poll()

        self.submit("sync", now).result(timeout=float(params.get("timeout", 600)))
        with self.lock:
            return {"pending": len(self.queue.pending())}

    def rpc_pause(self, params: dict[str, Any]) -> dict[str, Any]:
        self.paused = True
        log.info("paused")
        return {"state": "paused"}

    def rpc_resume(self, params: dict[str, Any]) -> dict[str, Any]:
        self.paused = False
        log.info("resumed")
        self.submit("resume", self._poll)
        return {"state": "running"}

    def rpc_log(self, params: dict[str, Any]) -> dict[str, Any]:
        n = int(params.get("n", 50))
        return {"lines": list(self.memlog.lines)[-n:] if n > 0 else []}

    def rpc_reset(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("yes"):
            raise ProtocolError("reset needs yes=true")
        self.paused = True

        def do() -> list[str]:
            return reset(
                self.cfg, purge_deleted=bool(params.get("purge_deleted")), remote=self.engine.remote
            )

        removed = self.submit("reset", do).result(timeout=600)
        with self.lock:
            self.queue.entries.clear()
        # Starting afresh needs a new start-up scan and manifest: stop, let the
        # supervisor (or the user) start us again.
        self.reset_requested = True
        self.stopping.set()
        return {"removed": removed, "stopping": True}

    # --- looking back: diff, history, trash, restore (issue 8) ----------------------------
    # diff, history and trash only read, so they run on the request thread and do not wait
    # behind transfers; restore writes into the folder, so it runs on the worker.

    def rpc_diff(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            action = self.queue.get([str(params.get("id", ""))])[0].action
        found = preview.describe(
            action, self.engine.remote, self.cfg.datafolder, self.engine.state.tmp
        )
        # The text rendering travels along, so that the client needs no pandas.
        return {
            "id": action.id,
            "action": action.kind.value,
            **found.to_json(),
            "rendered": found.render(),
        }

    def rpc_history(self, params: dict[str, Any]) -> dict[str, Any]:
        path = validate_rel_path(str(params.get("path", "")))
        limit = params.get("limit")
        entries = self.engine.history.for_path(path, int(limit) if limit else None)
        with self.engine.lock:
            m = self.engine.manifest
            row = m.rows.get(path) if m else None
        versions_error = None
        try:
            found = [v for v in self.engine.remote.list_versions(path) if v.key == path]
        except SyncError as exc:
            found, versions_error = [], exc.message
        found.sort(key=lambda v: v.modified, reverse=True)
        return {
            "path": path,
            "current": row.to_list() if row else None,
            "entries": [e.to_json() for e in entries],
            "versions": [
                {
                    "version_id": v.version_id,
                    "modified": _iso(v.modified),
                    "size": v.size,
                    "etag": v.etag,
                    "latest": v.latest,
                    "delete_marker": v.delete_marker,
                }
                for v in found
            ],
            "versions_error": versions_error,
        }

    def _recoverable(self, path: str | None) -> list[recovery.Recoverable]:
        with self.engine.lock:
            m = self.engine.manifest
            tombstones = dict(m.tombstones) if m else {}
        return recovery.catalogue(self.engine.remote, self.engine.state.trash, tombstones, path)

    def rpc_trash(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        return [item.to_json(n) for n, item in recovery.numbered(self._recoverable(None))]

    def rpc_restore(self, params: dict[str, Any]) -> dict[str, Any]:
        path = validate_rel_path(str(params.get("path", "")))
        dest = validate_rel_path(str(params.get("to") or path))
        item = recovery.pick(self._recoverable(path), path, int(params.get("version") or 1))
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self.clock()))

        def do() -> str:
            eng = self.engine
            written = recovery.restore(
                item,
                eng.remote,
                self.cfg.datafolder,
                eng.state.tmp,
                eng.state.trash,
                dest,
                force=bool(params.get("force")),
                stamp=stamp,
            )
            # Noticed now rather than at the watcher's next batch: it is a new local file,
            # so it waits for approval as an upload like any other.
            self._local_changed({written})
            return written

        written = self.submit("restore", do).result(timeout=float(params.get("timeout", 600)))
        return {"restored": written, "from": item.to_json()}


def _setup_logging(cfg: Config, verbose: int, memlog: MemoryLog) -> None:
    level = logging.DEBUG if verbose > 1 else getattr(logging, cfg.daemon.log_level)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(level)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(fmt)
    root.addHandler(stderr)
    logs = cfg.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    rotating = logging.handlers.RotatingFileHandler(
        logs / "s3syncd.log", maxBytes=5 << 20, backupCount=5, encoding="utf-8"
    )
    rotating.setFormatter(fmt)
    root.addHandler(rotating)
    memlog.setFormatter(fmt)
    root.addHandler(memlog)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "apscheduler", "watchdog"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def run(cfg: Config, verbose: int = 0) -> int:
    """``s3syncd run``: serve until SIGTERM/SIGINT. Never forks."""
    d: Daemon | None = None
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    memlog = MemoryLog()
    _setup_logging(cfg, verbose, memlog)
    try:
        d = Daemon(cfg, stopping=stop)
        d.memlog = memlog
        d.start()
    except SyncError as exc:
        log.error("%s", exc.message)
        sys.stderr.write(f"s3syncd: {exc.message}\n")
        if d is not None:
            d.stop()
        return exc.exit_code
    except Exception:
        log.exception("s3syncd failed to start")
        if d is not None:
            d.stop()
        return EXIT_ERROR
    from s3syncd.service import sd_notify

    sd_notify("READY=1")
    stop.wait()
    sd_notify("STOPPING=1")
    d.stop()
    return EXIT_OK
