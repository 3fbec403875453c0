"""The local history log: what changed per manifest read, append-only and bounded."""

from __future__ import annotations

import threading
from pathlib import Path

from s3syncd.history import Change, Entry, HistoryLog, Source, changes
from s3syncd.model import Row

SEEN = "2026-01-01T00:00:00+00:00"


def row(path: str, user: str, md5: str, when: str = "2026-01-01 10:00:00") -> Row:
    return Row(path, user, when, md5)


def entry(path: str, n: int) -> Entry:
    return Entry(path, Change.MODIFIED, Source.OBSERVED, "u", f"t{n}", f"{n:032x}", n, SEEN)


def test_changes_name_added_modified_and_deleted_rows() -> None:
    before = {"a": row("a", "ann", "1"), "b": row("b", "bob", "2"), "c": row("c", "cy", "3")}
    after = {"a": row("a", "ann", "1"), "b": row("b", "cy", "9"), "d": row("d", "dee", "4")}
    tomb = {"c": row("c", "cy", "3", "2026-01-02 00:00:00")}
    found = changes(
        before,
        after,
        tomb,
        ours={"d"},
        size_of=lambda _p, m: {"9": 12}.get(m),
        seen=SEEN,
        our_user="me",
    )
    got = [(e.path, e.change, e.source, e.user, e.md5, e.size) for e in found]
    assert got == [
        ("b", Change.MODIFIED, Source.OBSERVED, "cy", "9", 12),
        ("c", Change.DELETED, Source.OBSERVED, "cy", "3", None),
        ("d", Change.ADDED, Source.OURS, "dee", "4", None),
    ]
    assert found[1].time == "2026-01-02 00:00:00"  # the tombstone's time


def test_our_delete_is_ours_not_the_last_editors() -> None:
    found = changes(
        {"a": row("a", "ann", "1")}, {}, {"a": row("a", "ann", "1")}, {"a"}, {}, SEEN, "me", "now"
    )
    assert [(e.user, e.time, e.source) for e in found] == [("me", "now", Source.OURS)]


def test_entries_come_back_newest_first_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    log = HistoryLog(tmp_path / "h.log")
    log.append([entry("x", 1), entry("y", 2)])
    log.append([entry("x", 3)])
    with (tmp_path / "h.log").open("ab") as fh:
        fh.write(b'{"path":"x","act')  # a kill -9 in the middle of a write
    assert [e.time for e in log.for_path("x")] == ["t3", "t1"]
    assert log.for_path("x", limit=1)[0].size == 3
    assert log.for_path("nope") == []


def test_the_log_stays_bounded_and_keeps_the_newest_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "h.log"
    log = HistoryLog(path, max_bytes=4000)
    for n in range(500):
        log.append([entry("f", n)])
        assert path.stat().st_size <= 4000
    kept = log.entries()
    assert kept[-1].time == "t499"
    assert len(kept) > 5
    # Every line is whole after trims: nothing skipped.
    assert len(path.read_bytes().splitlines()) == len(kept)
    assert [e.time for e in kept] == [f"t{n}" for n in range(500 - len(kept), 500)]


def test_concurrent_appends_keep_lines_whole(tmp_path: Path) -> None:
    log = HistoryLog(tmp_path / "h.log", max_bytes=1 << 30)

    def writer(name: str) -> None:
        for n in range(200):
            log.append([entry(name, n)])

    threads = [threading.Thread(target=writer, args=(f"p{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(log.entries()) == 800


def test_a_failing_write_is_logged_not_raised(tmp_path: Path) -> None:
    log = HistoryLog(tmp_path / "missing-dir" / "h.log")
    log.append([entry("x", 1)])  # no folder: dropped with a warning
    assert log.entries() == []
