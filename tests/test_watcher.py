"""The watcher (s3syncd.watcher) on real files in a temp dir, with real watchdog threads.

Waiting is always "poll a condition with a deadline"; the one fixed wait is in the idle test,
where doing nothing for a while is the point.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from s3syncd.watcher import _JOIN_TIMEOUT, Watcher, collapse

DEBOUNCE = 0.1
# How long a wait may take before the test fails; waits return as soon as the condition
# holds, so a generous deadline only matters on a loaded machine. Latency figures belong
# in benchmarks/, not in assertions here.
DEADLINE = 15.0


class Collector:
    """Thread-safe record of what the watcher reported."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.batches: list[set[str]] = []
        self.rescans = 0
        self.fail_next = 0  # on_change raises this many times before recording

    def on_change(self, paths: set[str]) -> None:
        with self._cond:
            if self.fail_next:
                self.fail_next -= 1
                self._cond.notify_all()
                raise RuntimeError("consumer bug")
            self.batches.append(set(paths))
            self._cond.notify_all()

    def on_rescan(self) -> None:
        with self._cond:
            self.rescans += 1
            self._cond.notify_all()

    def reported(self) -> set[str]:
        with self._cond:
            return set().union(*self.batches)

    def wait_for(self, pred: Callable[[Collector], bool], timeout: float = DEADLINE) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: pred(self), timeout)

    def wait_reported(self, *paths: str, timeout: float = DEADLINE) -> bool:
        return self.wait_for(lambda c: set(paths) <= set().union(*c.batches), timeout)


def covered(path: str, reported: set[str]) -> bool:
    """A file is covered by its own path or by a reported ancestor folder."""
    parts = path.split("/")
    return any("/".join(parts[:i]) in reported for i in range(1, len(parts) + 1))


def watch_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


@pytest.fixture
def no_leaked_threads() -> Iterator[None]:
    before = watch_threads()
    yield
    leaked = [t.name for t in watch_threads() - before]
    assert not leaked, f"threads left running: {leaked}"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    return data


@pytest.fixture
def make_watcher(
    no_leaked_threads: None, root: Path
) -> Iterator[Callable[..., tuple[Watcher, Collector]]]:
    """Start watchers on ``root``; each is stopped (and its threads checked) afterwards."""
    started: list[Watcher] = []

    def make(**kwargs: Any) -> tuple[Watcher, Collector]:
        c = Collector()
        kwargs.setdefault("debounce", DEBOUNCE)
        w = Watcher(root, c.on_change, on_rescan=c.on_rescan, **kwargs)
        w.start()
        started.append(w)
        return w, c

    yield make
    for w in started:
        w.stop()


def test_create_modify_delete_are_reported(
    root: Path, make_watcher: Callable[..., tuple[Watcher, Collector]]
) -> None:
    (root / "old.txt").write_text("old")
    _, c = make_watcher()
    (root / "new.txt").write_text("new")
    assert c.wait_reported("new.txt")

    with (root / "old.txt").open("a") as f:
        f.write("more")
    assert c.wait_reported("old.txt")

    n = len(c.batches)
    (root / "new.txt").unlink()
    assert c.wait_for(lambda c: any("new.txt" in b for b in c.batches[n:]))
    assert c.rescans == 0


def test_a_write_right_after_start_is_seen(root: Path, no_leaked_threads: None) -> None:
    """watchdog adds its watches in a thread after start() returns; start() waits for
    them (a probe in the state folder), so a file written at once is not missed."""
    (root / ".S3").mkdir()
    for i in range(10):
        c = Collector()
        w = Watcher(root, c.on_change, on_rescan=c.on_rescan, debounce=0.05)
        w.start()
        try:
            assert w.ready()  # start() returned only once events were flowing
            (root / f"early{i}.txt").write_text("x")
            assert c.wait_reported(f"early{i}.txt"), f"round {i}: the write was missed"
            assert not (root / ".S3" / ".watch-probe").exists()
        finally:
            w.stop()


def test_rename_reports_both_names(
    root: Path, make_watcher: Callable[..., tuple[Watcher, Collector]]
) -> None:
    (root / "a.txt").write_text("a")
    (root / "dir").mkdir()
    _, c = make_watcher()
    (root / "a.txt").rename(root / "dir" / "b.txt")
    assert c.wait_reported("a.txt", "dir/b.txt")


def test_touch_is_reported(
    root: Path, make_watcher: Callable[..., tuple[Watcher, Collector]]
) -> None:
    # Only the mtime changes (IN_ATTRIB): the consumer compares mtimes, so it must hear of it.
    (root / "f").write_text("x")
    _, c = make_watcher()
    os.utime(root / "f", (1_000_000, 1_000_000))
    assert c.wait_reported("f")


def test_files_in_new_nested_folders_are_covered(
    root: Path, make_watcher: Callable[..., tuple[Watcher, Collector]]
) -> None:
    # Files written before watchdog adds the new folder's watch get only a synthetic event,
    # or none while the folder itself is reported: either covers them.
    _, c = make_watcher()
    files = []
    for a in range(5):
        for b in range(3):
            d = root / f"a{a}" / f"b{b}" / "c"
            d.mkdir(parents=True)
            for i in range(4):
                (d / f"f{i}.txt").write_text("x")
                files.append(f"a{a}/b{b}/c/f{i}.txt")
        (root / f"a{a}" / "top.txt").write_text("x")
        files.append(f"a{a}/top.txt")
    assert c.wait_for(lambda c: all(covered(f, c.reported()) for f in files))
    # Nothing redundant: no reported path lies below another one of the same batch.
    assert all(collapse(b) == b for b in c.batches)


def test_burst_is_reported_in_a_few_batches(
    root: Path, make_watcher: Callable[..., tuple[Watcher, Collector]]
) -> None:
    _, c = make_watcher()
    files = [f"f{i:03}" for i in range(500)]
    for name in files:
        (root / name).write_bytes(b"x" * 100)
    assert c.wait_reported(*files)
    # The 500 writes come a few ms apart, less than the debounce: one or two batches when
    # idle. A stalled writer on a loaded machine may split them more, but a watcher that
    # did not debounce would report hundreds.
    assert len(c.batches) <= len(files) // 10, [len(b) for b in c.batches]


def test_max_delay_reports_a_folder_written_continuously(
    root: Path, make_watcher: Callable[..., tuple[Watcher, Collector]]
) -> None:
    # The quiet period (1 s) is longer than max_delay (0.5 s): only max_delay can report
    # while the writer keeps going, unless the writer itself stalls for a second.
    _, c = make_watcher(debounce=1.0, max_delay=0.5)
    start = time.monotonic()
    for i in range(200):
        (root / "log.txt").write_text(str(i))
        # Paces the writer (gaps far below the debounce) and stops once something arrives.
        if c.wait_for(lambda c: bool(c.batches), timeout=0.02):
            break
    else:
        pytest.fail("nothing reported while the file kept changing")
    elapsed = time.monotonic() - start
    assert c.batches[0] == {"log.txt"}
    # Not before max_delay; an upper bound would only measure the machine's load (without
    # max_delay nothing arrives before the writer stops, and the loop above fails).
    assert elapsed >= 0.4


def test_state_folder_is_never_reported(
    root: Path, make_watcher: Callable[..., tuple[Watcher, Collector]]
) -> None:
    (root / ".S3" / "tmp").mkdir(parents=True)
    _, c = make_watcher()
    (root / ".S3" / "versions.csv").write_text("a,b")
    (root / ".S3" / "trash" / "x").mkdir(parents=True)
    (root / ".S3" / "trash" / "x" / "f").write_text("x")
    (root / ".S3" / "tmp" / "dl").write_text("downloaded")
    # A download renamed into place: only its target is a data path.
    (root / ".S3" / "tmp" / "dl").rename(root / "doc.txt")
    (root / ".S3x").write_text("a data file that merely starts like the state folder")
    assert c.wait_reported("doc.txt", ".S3x")
    assert not [p for p in c.reported() if p == ".S3" or p.startswith(".S3/")]


def test_callback_exception_does_not_stop_reports(
    root: Path,
    make_watcher: Callable[..., tuple[Watcher, Collector]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, c = make_watcher()
    c.fail_next = 1
    (root / "first").write_text("x")
    assert c.wait_for(lambda c: c.fail_next == 0)
    (root / "second").write_text("x")
    assert c.wait_reported("second")
    assert "watcher callback on_change failed" in caplog.text


def test_flush_and_pending(
    root: Path, make_watcher: Callable[..., tuple[Watcher, Collector]]
) -> None:
    w, c = make_watcher(debounce=30.0)
    (root / "f").write_text("x")
    deadline = time.monotonic() + DEADLINE
    while w.pending() == 0 and time.monotonic() < deadline:  # poll: no callback to wait on
        threading.Event().wait(0.01)
    assert w.pending() == 1
    w.flush()
    assert c.batches == [{"f"}]
    assert w.pending() == 0


def test_stop_joins_every_thread(root: Path, no_leaked_threads: None) -> None:
    before = watch_threads()
    c = Collector()
    w = Watcher(root, c.on_change, on_rescan=c.on_rescan, debounce=DEBOUNCE)
    assert watch_threads() == before  # constructing starts nothing
    w.start()
    names = {t.name for t in watch_threads() - before}
    assert {
        "s3syncd-watch",
        "s3syncd-watch-debounce",
        "s3syncd-watch-emitter",
        "s3syncd-watch-inotify",
    } <= names
    (root / "f").write_text("x")
    assert c.wait_reported("f")
    t0 = time.monotonic()
    w.stop()
    took = time.monotonic() - t0
    w.stop()  # idempotent
    assert watch_threads() - before == set()
    # A thread that ignored the stop request would have cost a whole join timeout.
    assert took < _JOIN_TIMEOUT


def test_idle_watcher_does_not_wake_up(
    root: Path, make_watcher: Callable[..., tuple[Watcher, Collector]]
) -> None:
    w, c = make_watcher()
    (root / "f").write_text("x")
    assert c.wait_reported("f")
    # After the batch the debounce thread goes back to an untimed wait; it may still be on
    # its way there (one count) when we read the counter, and on a loaded machine the
    # write's last event can come as a batch of its own (two more).
    wakeups = w.wakeups
    # A fixed wait on purpose: we check that nothing happens during it. A thread that polled
    # (say every 0.1 s, like the debounce) would wake ~10 times.
    threading.Event().wait(1.0)
    assert w.wakeups - wakeups <= 3


def test_observer_failure_rescans_and_keeps_watching(
    root: Path,
    make_watcher: Callable[..., tuple[Watcher, Collector]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An emitter that raises (as on an inotify read error) ends its thread.
    from watchdog.observers.inotify import InotifyEmitter

    original = InotifyEmitter.queue_events
    fired = threading.Event()

    def fail_once(self: InotifyEmitter, timeout: float, **kwargs: bool) -> None:
        if not fired.is_set():
            fired.set()
            raise OSError(errno.EIO, "injected inotify read error")
        original(self, timeout, **kwargs)

    monkeypatch.setattr(InotifyEmitter, "queue_events", fail_once)
    _, c = make_watcher()
    # The emitter is blocked in a read begun before the patch: one event lets it loop.
    (root / "wake").write_text("x")
    assert c.wait_for(lambda c: c.rescans == 1)
    assert "watchdog thread s3syncd-watch-emitter failed" in caplog.text
    # The observer was restarted: changes are reported again.
    (root / "after").write_text("x")
    assert c.wait_reported("after")


def test_root_deleted_rescans(
    root: Path,
    make_watcher: Callable[..., tuple[Watcher, Collector]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    w, c = make_watcher()
    root.rmdir()
    assert c.wait_for(lambda c: c.rescans >= 1)
    assert "cannot watch" in caplog.text  # the restart failed, and says why
    assert not w.check()


def test_root_moved_away_rescans(
    root: Path, make_watcher: Callable[..., tuple[Watcher, Collector]]
) -> None:
    # inotify follows the moved folder and keeps using the old names: the root's identity
    # is checked whenever a batch is delivered.
    _, c = make_watcher()
    moved = root.with_name("moved")
    root.rename(moved)
    (moved / "f").write_text("x")
    assert c.wait_for(lambda c: c.rescans >= 1)


def test_queue_overflow_rescans(
    root: Path,
    make_watcher: Callable[..., tuple[Watcher, Collector]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A real IN_Q_OVERFLOW: stall watchdog's inotify reader (it takes this lock around each
    # read) while more events than fs.inotify.max_queued_events pile up in the kernel.
    w, c = make_watcher()
    reader = getattr(getattr(w, "_observer", None), "_inotify_fd", None)
    lock = getattr(reader, "_lock", None)
    if lock is None:
        pytest.skip("not watchdog's inotify reader (this test knows watchdog 7.1.0)")
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    a, b = root / "a", root / "b"
    a.write_text("a")
    b.write_text("b")
    assert c.wait_reported("a", "b")
    with lock:
        # Alternating names: the kernel merges only identical consecutive events.
        for i in range(limit + 2048 + 100):
            os.utime(a if i % 2 else b, ns=(i, i))
    assert c.wait_for(lambda c: c.rescans >= 1)
    assert "Inotify queue overflowed; filesystem events were lost" in caplog.text
    assert "inotify queue overflowed on" in caplog.text  # ours, not a thread failure
    assert "ended" not in caplog.text


def test_overflow_log_of_another_watcher_is_ignored(
    root: Path, make_watcher: Callable[..., tuple[Watcher, Collector]]
) -> None:
    _, c = make_watcher()
    inotify_log = logging.getLogger("watchdog.observers.inotify")
    msg = "Inotify queue overflowed; reconciling recursive watches below %r"
    inotify_log.warning(msg, os.fsencode(root.with_name("elsewhere")))
    (root / "sentinel").write_text("x")
    assert c.wait_reported("sentinel")
    assert c.rescans == 0
    inotify_log.warning(msg, os.fsencode(root))
    assert c.wait_for(lambda c: c.rescans == 1)


def test_only_watchdogs_callback_warning_is_silenced(
    make_watcher: Callable[..., tuple[Watcher, Collector]],
) -> None:
    # watchdog's reader thread warns this while new folders appear in a burst; under
    # `filterwarnings = error` the warning would end that thread.
    make_watcher()
    msg = "Callback with id '1' already exists for watch <Watch: wd=1>. It will be Overwritten."
    warnings.warn_explicit(msg, RuntimeWarning, "inotify.py", 1, "watchdog.observers.inotify")
    with pytest.raises(RuntimeWarning):
        warnings.warn_explicit(msg, RuntimeWarning, "other.py", 1, "somewhere.else")
    with pytest.raises(RuntimeWarning):
        warnings.warn_explicit("other news", RuntimeWarning, "inotify.py", 1, "watchdog.observers")


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        (set(), set()),
        ({"a", "b/c"}, {"a", "b/c"}),
        ({"d", "d/x", "d/y/z", "dx/y"}, {"d", "dx/y"}),
        ({"d/y/z", "d/y", "e/f/g"}, {"d/y", "e/f/g"}),
    ],
)
def test_collapse(paths: set[str], expected: set[str]) -> None:
    assert collapse(paths) == expected
