"""Watch the data folder and report which paths may have changed.

The only module that imports watchdog. Events are hints, never actions (DESIGN §3): each one
marks a relative path dirty, and after a quiet period the dirty set goes to ``on_change``,
whose consumer re-stats each path (a folder is re-scanned recursively). When events may have
been lost the watcher asks for a full rescan through ``on_rescan`` instead.

What is detected as "events may have been lost" (each leads to ``on_rescan``):

- inotify queue overflow. watchdog 7.1.0 reports it only in its log: ``InotifyFD.handle_event``
  logs ``Inotify queue overflowed; filesystem events were lost`` (``watchdog.observers.inotify_c``)
  and each recursive watch group logs ``... reconciling recursive watches below <root>``
  (``watchdog.observers.inotify``) while it re-adds its watches; no event reaches handlers.
  A ``logging.Handler`` on ``watchdog.observers`` catches records mentioning an overflow that
  were emitted by one of our threads or name our root. This needs those loggers enabled for
  WARNING (the default); ``start()`` warns when they are not.
- watchdog failing to rebuild its watches after an overflow (``Unable to rebuild recursive
  inotify watches``, same handler): rescan and restart the observer.
- a watchdog thread that ends while we did not stop it (an exception in the observer or an
  emitter, or the emitter stopping itself because the root was deleted): pushed by a wrapper
  around the thread's ``run``, so it needs no polling; rescan and restart the observer.
- the inotify reader thread (started inside watchdog's constructor, so it cannot be wrapped)
  dying, the root folder deleted, or replaced by another folder (moved away: inotify keeps
  watching the moved folder under the old names): checked with ``is_alive()`` and a stat of
  the root whenever a batch is delivered, on ``flush()`` and on ``check()``, which the daemon
  may call from a periodic job. Rescan and restart.

Automatic restarts happen at most once per ``_RESTART_INTERVAL``; ``check()`` always tries.
The daemon's periodic full rescan remains the safety net for anything not detected here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from watchdog.events import (
    EVENT_TYPE_ATTRIB,
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from s3syncd.errors import SyncError

log = logging.getLogger(__name__)

# Content may have changed. Opened/closed-without-write are left out: they are our own
# hashing reads as often as not, and must not echo back as dirty paths.
_FILE_EVENTS = frozenset(
    {
        EVENT_TYPE_CREATED,
        EVENT_TYPE_MODIFIED,
        EVENT_TYPE_CLOSED,
        EVENT_TYPE_DELETED,
        EVENT_TYPE_MOVED,
        EVENT_TYPE_ATTRIB,  # os.utime / touch: the mtime the consumer compares
    }
)
# A folder's "modified" event only accompanies an event for a child, which is reported
# itself; marking the folder would make every new file re-scan its parent recursively.
_DIR_EVENTS = frozenset({EVENT_TYPE_CREATED, EVENT_TYPE_DELETED, EVENT_TYPE_MOVED})

_WATCHDOG_LOGGER = "watchdog.observers"
_RESTART_INTERVAL = 30.0  # seconds between automatic observer restarts
_JOIN_TIMEOUT = 5.0


def collapse(paths: Iterable[str]) -> set[str]:
    """Drop every path that lies below another path of the set.

    The consumer re-scans a dirty folder recursively, so its descendants are redundant
    (a moved folder otherwise brings one path per file below it).
    """
    given = set(paths)
    out: set[str] = set()
    for path in given:
        cut = path.rfind("/")
        while cut > 0 and path[:cut] not in given:
            cut = path.rfind("/", 0, cut)
        if cut <= 0:
            out.add(path)
    return out


# Written in the excluded state folder to learn when inotify watches are in place.
_PROBE = ".watch-probe"
_READY_TIMEOUT = 5.0


class _Sink(FileSystemEventHandler):
    """Hands every watchdog event to the watcher."""

    def __init__(self, on_event: Callable[[FileSystemEvent], None]) -> None:
        super().__init__()
        self._on_event = on_event

    def dispatch(self, event: FileSystemEvent) -> None:
        self._on_event(event)


class _WatchdogLogHandler(logging.Handler):
    """Sees watchdog's log records: an overflow is only ever reported there."""

    def __init__(self, on_record: Callable[[logging.LogRecord], None]) -> None:
        super().__init__(logging.WARNING)
        self._on_record = on_record

    def emit(self, record: logging.LogRecord) -> None:
        self._on_record(record)


class Watcher:
    """Marks paths under ``root`` dirty on file-system events and reports them debounced.

    ``on_change(paths)`` gets relative posix paths (files or folders; a folder means
    "re-scan it recursively"; a path may no longer exist); nothing below ``exclude`` is
    reported except the files named in ``include``. ``on_rescan()`` means events may
    have been lost and the whole tree must be scanned. Both run on the debounce thread (or
    the thread calling ``flush()``), never at the same time; their exceptions are logged.
    """

    def __init__(
        self,
        root: Path,
        on_change: Callable[[set[str]], None],
        *,
        debounce: float = 2.0,
        on_rescan: Callable[[], None],
        exclude: str = ".S3",
        include: Iterable[str] = (),
        max_delay: float | None = None,
    ) -> None:
        if debounce < 0 or (max_delay is not None and max_delay < 0):
            raise ValueError("debounce and max_delay must not be negative")
        # Absolute but not resolved: watchdog reports paths below the path it was given.
        self._root = Path(os.path.abspath(root))
        self._root_str = str(self._root)
        self._prefix = self._root_str.rstrip(os.sep) + os.sep
        self._exclude = exclude.strip("/")
        # Files inside the excluded folder that are still reported (e.g. the ignore list).
        self._include = frozenset(p.strip("/") for p in include)
        self._on_change = on_change
        self._on_rescan = on_rescan
        self._debounce = debounce
        self._max_delay = 10 * debounce if max_delay is None else max_delay

        self._cond = threading.Condition()
        # Guarded by _cond:
        self._dirty: set[str] = set()
        self._rescan = False
        self._restart = False
        self._first_mark = 0.0  # when the pending batch began (for max_delay)
        self._last_mark = 0.0  # latest event (for the quiet period)
        self._stopping = False
        self._wakeups = 0

        # Held while a batch is taken and delivered: callbacks never overlap, and a flush()
        # returns only after everything marked before it was delivered.
        self._deliver_lock = threading.RLock()
        # Held while the observer is created or torn down.
        self._life_lock = threading.Lock()
        self._observer: BaseObserver | None = None
        self._watch_threads: tuple[threading.Thread, ...] = ()
        self._root_id: tuple[int, int] | None = None
        self._ready = threading.Event()
        self._last_restart = float("-inf")

        self._thread: threading.Thread | None = None
        self._log_handler = _WatchdogLogHandler(self._on_watchdog_log)
        self._sink = _Sink(self._on_event)

    # --- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start watching (the watchdog observer) and the debounce thread."""
        if self._thread is not None:
            raise RuntimeError("Watcher.start() called twice")
        # inotify re-adds a watch that already has our callback (new folders during a burst)
        # and warns about it each time; harmless, and fatal under `-W error` in the reader
        # thread. Installed here, not at import, so it comes after pytest's own filters.
        warnings.filterwarnings(
            "ignore",
            message=r"Callback with id .* already exists",
            category=RuntimeWarning,
            module=r"watchdog\.observers\.",
        )
        watchdog_log = logging.getLogger(f"{_WATCHDOG_LOGGER}.inotify_c")
        if not watchdog_log.isEnabledFor(logging.WARNING):
            log.warning(
                "watchdog warnings are disabled: an inotify overflow goes unnoticed "
                "until the periodic rescan"
            )
        logging.getLogger(_WATCHDOG_LOGGER).addHandler(self._log_handler)
        try:
            with self._life_lock:
                self._start_observer()
        except BaseException:
            logging.getLogger(_WATCHDOG_LOGGER).removeHandler(self._log_handler)
            raise
        self._thread = threading.Thread(
            target=self._run, name="s3syncd-watch-debounce", daemon=True
        )
        self._thread.start()
        self._await_watches()
        log.info("watching %s (debounce %.1f s)", self._root, self._debounce)

    def _await_watches(self) -> None:
        """Return once inotify reports events, so no change made after start() is missed.

        watchdog adds its watches in the emitter thread, after ``observer.start()`` has
        returned; a file written in between would go unseen until the hourly rescan. A
        probe file in the (excluded) state folder tells us when events flow.
        """
        folder = self._root / self._exclude
        if not folder.is_dir():
            return
        probe = folder / _PROBE
        deadline = time.monotonic() + _READY_TIMEOUT
        try:
            while not self._ready.wait(0.02):
                probe.write_bytes(b"")
                if time.monotonic() > deadline:
                    log.warning("no filesystem events from %s yet; relying on rescans", folder)
                    return
        except OSError as exc:
            log.warning("cannot probe %s: %s", folder, exc)
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()

    def stop(self) -> None:
        """Stop both threads and join them. Pending paths stay for a later ``flush()``."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)
            if thread.is_alive():
                log.warning("debounce thread did not stop within %.0f s", _JOIN_TIMEOUT)
        with self._life_lock:
            self._stop_observer()
        logging.getLogger(_WATCHDOG_LOGGER).removeHandler(self._log_handler)

    def flush(self) -> None:
        """Deliver what is pending now, in the calling thread (tests, shutdown)."""
        self._check_health()
        self._deliver()

    def ready(self) -> bool:
        """True once events were seen flowing (start() waits for this when it can)."""
        return self._ready.is_set()

    def pending(self) -> int:
        """How many dirty paths wait for delivery (a pending rescan counts as one)."""
        with self._cond:
            return len(self._dirty) + int(self._rescan)

    def check(self) -> bool:
        """True if watching normally; otherwise request a rescan and an observer restart.

        Meant for a periodic job of the daemon: it retries a restart that failed or was
        held back, and notices a dead reader thread while no events arrive.
        """
        if self._thread is None:
            return False
        return self._check_health(force=True)

    @property
    def wakeups(self) -> int:
        """How often the debounce thread woke up (diagnostics: idle means it stays put)."""
        with self._cond:
            return self._wakeups

    # --- the observer -----------------------------------------------------------------------
    def _start_observer(self) -> None:
        """Create, schedule and start an observer; called with _life_lock held."""
        try:
            st = os.stat(self._root)
            observer = Observer()
        except OSError as exc:
            raise SyncError(f"cannot watch {self._root}: {exc}") from exc
        observer.name = "s3syncd-watch"
        threads: list[threading.Thread] = [observer]
        try:
            observer.schedule(self._sink, self._root_str, recursive=True)
            for emitter in observer.emitters:
                emitter.name = "s3syncd-watch-emitter"
                threads.append(emitter)
            for thread in threads:
                self._supervise(thread, observer)
            # watchdog's inotify observer starts its reader thread in its constructor:
            # we can only name it and check is_alive() on it.
            reader = getattr(observer, "_inotify_fd", None)
            if isinstance(reader, threading.Thread):
                reader.name = "s3syncd-watch-inotify"
                threads.append(reader)
            self._observer = observer
            self._watch_threads = tuple(threads)
            self._root_id = (st.st_dev, st.st_ino)
            observer.start()
        except BaseException as exc:
            self._observer = None
            observer.stop()  # also stops the reader thread started by the constructor
            if observer.is_alive():
                observer.join(_JOIN_TIMEOUT)
            if isinstance(exc, OSError):
                raise SyncError(f"cannot watch {self._root}: {exc}") from exc
            raise

    def _stop_observer(self) -> None:
        """Stop and join the observer (and so its emitters and reader); _life_lock held."""
        observer, self._observer = self._observer, None  # first: its threads' exits are ours
        if observer is None:
            return
        observer.stop()
        if observer.is_alive() and observer is not threading.current_thread():
            observer.join(_JOIN_TIMEOUT)
        for thread in self._watch_threads:
            if thread.is_alive():
                log.warning("watchdog thread %s did not stop", thread.name)

    def _restart_observer(self) -> None:
        """Replace a failed observer; on failure, stay down until check() asks again."""
        with self._life_lock:
            if self._stopping:
                return
            self._stop_observer()
            try:
                self._start_observer()
            except SyncError as exc:
                log.error("watcher stopped: %s; local changes wait for the periodic rescan", exc)
                return
        log.warning("watcher restarted on %s", self._root)

    def _supervise(self, thread: threading.Thread, observer: BaseObserver) -> None:
        """Report the end of a watchdog thread that we did not stop."""
        run = thread.run

        def supervised() -> None:
            try:
                run()
            except Exception:
                log.exception("watchdog thread %s failed", thread.name)
            finally:
                if self._observer is observer and not self._stopping:
                    self._failed(f"watchdog thread {thread.name} ended")

        # Only way in: watchdog creates and starts these threads itself.
        thread.run = supervised  # type: ignore[method-assign]

    def _check_health(self, *, force: bool = False) -> bool:
        """Look for dead watchdog threads and a replaced root; request a restart if so."""
        with self._cond:
            if self._stopping or (self._restart and not force):
                return True  # a restart is already on its way
        problem = None
        if self._observer is None:
            problem = "the watcher is not running"
        elif dead := [t.name for t in self._watch_threads if not t.is_alive()]:
            problem = "watchdog threads ended: " + ", ".join(dead)
        else:
            try:
                st = os.stat(self._root)
                if (st.st_dev, st.st_ino) != self._root_id:
                    problem = f"{self._root} was replaced"
            except OSError as exc:
                problem = f"{self._root} is gone: {exc}"
        if problem is None:
            return True
        self._failed(problem, force=force)
        return False

    def _failed(self, problem: str, *, force: bool = False) -> None:
        """Events may be lost and watching may have stopped: rescan and restart."""
        log.warning("%s; rescanning", problem)
        with self._cond:
            if force:
                self._last_restart = float("-inf")
            self._request_locked(rescan=True, restart=True)

    def _on_watchdog_log(self, record: logging.LogRecord) -> None:
        text = record.getMessage().lower()
        lost = "overflow" in text
        broken = "unable to rebuild" in text
        if not (lost or broken):
            return
        ours = record.thread is not None and record.thread in {t.ident for t in self._watch_threads}
        args = record.args if isinstance(record.args, tuple) else ()
        ours = ours or any(a in (self._root_str, os.fsencode(self._root_str)) for a in args)
        if not ours:
            return
        if broken:
            self._failed("watchdog could not rebuild its watches")
            return
        with self._cond:
            # watchdog re-adds its watches itself; only the events are lost. One overflow
            # is logged by the reader and by the watch group: say it once.
            if not self._rescan:
                log.warning("inotify queue overflowed on %s; rescanning", self._root)
            self._request_locked(rescan=True)

    # --- events -----------------------------------------------------------------------------
    def _on_event(self, event: FileSystemEvent) -> None:
        """Mark the event's path(s) dirty; the root itself means a rescan."""
        # Runs on the observer thread: never let an odd event end it.
        try:
            kinds = _DIR_EVENTS if event.is_directory else _FILE_EVENTS
            if event.event_type not in kinds:
                return
            raw = [event.src_path]
            if event.event_type == EVENT_TYPE_MOVED:
                raw.append(event.dest_path)
            rels = [self._relative(os.fsdecode(p)) for p in raw]
            if f"{self._exclude}/{_PROBE}" in rels:
                self._ready.set()
            if "" in rels:
                log.warning("%s was %s; rescanning", self._root, event.event_type)
            marked = [r for r in rels if r and not self._excluded(r)]
            if marked or "" in rels:
                with self._cond:
                    self._request_locked(marked, rescan="" in rels)
        except Exception:
            log.exception("cannot handle %r; rescanning", event)
            with self._cond:
                self._request_locked(rescan=True)

    def _relative(self, path: str) -> str | None:
        """The posix path relative to the root; "" for the root; None outside it."""
        if path == self._root_str:
            return ""
        if path.startswith(self._prefix):
            return path[len(self._prefix) :].replace(os.sep, "/")
        return None

    def _excluded(self, rel: str) -> bool:
        ex = self._exclude
        if rel in self._include:
            return False
        return bool(ex) and (rel == ex or rel.startswith(ex + "/"))

    def _request_locked(
        self, paths: Iterable[str] = (), *, rescan: bool = False, restart: bool = False
    ) -> None:
        """Note new work (_cond held); wake the debounce thread if it was idle."""
        now = time.monotonic()
        if not self._has_work_locked():
            self._first_mark = now
            # Only from idle: a thread already waiting for a batch re-reads _last_mark
            # when its timeout ends, so a burst does not wake it once per event.
            self._cond.notify()
        self._dirty.update(paths)
        self._rescan = self._rescan or rescan
        self._restart = self._restart or restart
        self._last_mark = now

    def _has_work_locked(self) -> bool:
        return bool(self._dirty) or self._rescan or self._restart

    # --- debounce ---------------------------------------------------------------------------
    def _run(self) -> None:
        while self._wait_until_due():
            self._check_health()
            self._deliver()

    def _wait_until_due(self) -> bool:
        """Block until a batch is due; False when stopping."""
        with self._cond:
            while True:
                self._wakeups += 1
                if self._stopping:
                    return False
                if not self._has_work_locked():
                    self._cond.wait()  # idle: no timeout, no periodic wake-ups
                    continue
                due = min(self._last_mark + self._debounce, self._first_mark + self._max_delay)
                remaining = due - time.monotonic()
                if remaining <= 0:
                    return True
                self._cond.wait(remaining)

    def _deliver(self) -> None:
        """Take the pending batch and hand it over (restarting the observer first if asked)."""
        with self._deliver_lock:
            with self._cond:
                paths, rescan, restart = self._dirty, self._rescan, self._restart
                self._dirty, self._rescan, self._restart = set(), False, False
                now = time.monotonic()
                # At most one automatic restart per interval: a watcher that keeps dying
                # must not turn into a loop of restarts and full rescans.
                held_back = restart and now - self._last_restart < _RESTART_INTERVAL
                if restart and not held_back:
                    self._last_restart = now
            if held_back:
                log.error(
                    "watchdog failed again within %.0f s; not restarting it until the next check()",
                    _RESTART_INTERVAL,
                )
            elif restart:
                self._restart_observer()
            if rescan:
                # A full rescan covers every path marked so far.
                self._call("on_rescan", self._on_rescan)
            elif paths:
                self._call("on_change", self._on_change, collapse(paths))

    def _call(self, name: str, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("watcher callback %s failed", name)
