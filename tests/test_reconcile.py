"""Tests of the three-way reconcile (DESIGN.md §3): ``reconcile(base, local, remote, user)``.

1. An exhaustive table: every combination of base x local x remote state, with and
   without a remote listing, and the outcome each must give.
2. The facts each action carries (local file, remote and base MD5, manifest ETag),
   its reason, and the stability of ``Action.id``.
3. Purity: no clock, no I/O, no mutation of the inputs, same inputs -> equal plans.
4. Hypothesis properties, checked with a small simulator that applies a plan to a model
   of both sides: convergence, no version lost, no action on a path that already agrees,
   at most one action per path.
5. Moves: a local rename paired into one server-side move, and every case that must not be.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import NoReturn, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3syncd import reconcile as reconcile_module
from s3syncd.model import (
    Action,
    ActionKind,
    LocalFile,
    MoveSource,
    Plan,
    RemoteObject,
    RemoteView,
    Row,
)
from s3syncd.reconcile import UNKNOWN_MD5, reconcile

T = TypeVar("T")


def md5(content: str) -> str:
    return hashlib.md5(content.encode()).hexdigest()


# --------------------------------------------------------------------------------------
# 1. The exhaustive table
# --------------------------------------------------------------------------------------

P = "data/report.csv"  # the path under test
OTHER = "other.txt"  # in sync everywhere, in every case: must only ever be agreed
CONTENT = {"B": md5("base"), "X": md5("x"), "Y": md5("y"), "O": md5("other")}
ETAG = '"etag-of-versions.csv"'
USER = "me"
EDITOR = "alice"  # "Edited By" of the manifest rows
DELETER = "bob"  # "Edited By" of the tombstones
TIME = "2024-05-01 12:00:00"
LOCAL_SIZE = 11
OBJECT_SIZE = 22

BASES = ("B", "none")
# absent: no file.  same: the base content.  X, Y: two different changed contents.
LOCAL_STATES = ("absent", "same", "X", "Y")
# absent:      no row, no tombstone, no object
# same/X/Y:    a row and its object with that content
# tombstone:   no row, no object, a row in deletedS3.csv
# gone:        a row, but the object is missing (the listing shows the delete); the row
#              holds the base content (X when there is no base)
# orphan_same: the object with the base content, no row (a row lost to a blind write)
# orphan_X:    the object with content X, no row
REMOTE_STATES = ("absent", "same", "X", "Y", "tombstone", "gone", "orphan_same", "orphan_X")

# Outcomes: an ActionKind value (the one action on P), or
#   noop          nothing at all (P not agreed, not forgotten, no action)
#   agree         no action; plan.agreed[P] is the common MD5
#   agree+record  agree, plus a RECORD action restoring the lost row
#   forget        no action; P is dropped from the base
#   forget+record forget, plus a RECORD action dropping the row of the vanished object
#   record        only the RECORD dropping the row (there was no base to forget)
#
# (base, local, remote): (outcome with a listing, outcome without a listing)
TABLE: dict[tuple[str, str, str], tuple[str, str]] = {
    # -- base B, local unchanged: whatever the remote did is propagated --------------------
    ("B", "same", "absent"): ("delete_local", "noop"),  # no row: only a listing proves a delete
    ("B", "same", "same"): ("agree", "agree"),
    ("B", "same", "X"): ("download", "download"),
    ("B", "same", "Y"): ("download", "download"),
    ("B", "same", "tombstone"): ("delete_local", "delete_local"),
    ("B", "same", "gone"): ("delete_local", "agree"),  # unlisted, the row still says B
    ("B", "same", "orphan_same"): ("agree+record", "noop"),  # lost row: restore it
    ("B", "same", "orphan_X"): ("download", "noop"),
    # -- base B, local deleted: propagate the delete unless the remote changed -------------
    ("B", "absent", "absent"): ("forget", "noop"),
    ("B", "absent", "same"): ("delete_remote", "delete_remote"),
    ("B", "absent", "X"): ("conflict", "conflict"),  # deleted here, changed there
    ("B", "absent", "Y"): ("conflict", "conflict"),
    ("B", "absent", "tombstone"): ("forget", "forget"),  # deleted on both sides
    ("B", "absent", "gone"): ("forget+record", "delete_remote"),
    ("B", "absent", "orphan_same"): ("delete_remote", "noop"),
    ("B", "absent", "orphan_X"): ("conflict", "noop"),
    # -- base B, local changed to X ----------------------------------------------------------
    ("B", "X", "absent"): ("conflict", "noop"),  # changed here, deleted there
    ("B", "X", "same"): ("upload", "upload"),
    ("B", "X", "X"): ("agree", "agree"),  # both changed to the same content
    ("B", "X", "Y"): ("conflict", "conflict"),  # both changed, differently
    ("B", "X", "tombstone"): ("conflict", "conflict"),
    ("B", "X", "gone"): ("conflict", "upload"),
    ("B", "X", "orphan_same"): ("upload", "noop"),
    ("B", "X", "orphan_X"): ("agree+record", "noop"),
    # -- base B, local changed to Y (mirror of X, against a remote X) ------------------------
    ("B", "Y", "absent"): ("conflict", "noop"),
    ("B", "Y", "same"): ("upload", "upload"),
    ("B", "Y", "X"): ("conflict", "conflict"),
    ("B", "Y", "Y"): ("agree", "agree"),
    ("B", "Y", "tombstone"): ("conflict", "conflict"),
    ("B", "Y", "gone"): ("conflict", "upload"),
    ("B", "Y", "orphan_same"): ("upload", "noop"),
    ("B", "Y", "orphan_X"): ("conflict", "noop"),
    # -- no base, no local file: whatever the remote has is new -------------------------------
    ("none", "absent", "absent"): ("noop", "noop"),  # P is nowhere
    ("none", "absent", "X"): ("download", "download"),
    ("none", "absent", "Y"): ("download", "download"),
    ("none", "absent", "tombstone"): ("noop", "noop"),
    ("none", "absent", "gone"): ("record", "download"),  # unlisted, the row says X
    ("none", "absent", "orphan_X"): ("download", "noop"),
    # -- no base, local X -----------------------------------------------------------------------
    ("none", "X", "absent"): ("upload", "upload"),
    ("none", "X", "X"): ("agree", "agree"),
    ("none", "X", "Y"): ("conflict", "conflict"),  # no common version
    ("none", "X", "tombstone"): ("upload", "upload"),
    ("none", "X", "gone"): ("upload", "agree"),
    ("none", "X", "orphan_X"): ("agree+record", "upload"),  # unlisted orphan is invisible
    # -- no base, local Y -----------------------------------------------------------------------
    ("none", "Y", "absent"): ("upload", "upload"),
    ("none", "Y", "X"): ("conflict", "conflict"),
    ("none", "Y", "Y"): ("agree", "agree"),
    ("none", "Y", "tombstone"): ("upload", "upload"),
    ("none", "Y", "gone"): ("upload", "conflict"),
    ("none", "Y", "orphan_X"): ("conflict", "upload"),
}


def all_combinations() -> list[tuple[str, str, str]]:
    """Every meaningful (base, local, remote): 'same' needs a base to be the same as."""
    combos = []
    for base in BASES:
        for local in LOCAL_STATES:
            for remote in REMOTE_STATES:
                if base == "none" and "same" in (local, remote, remote.removeprefix("orphan_")):
                    continue
                combos.append((base, local, remote))
    return combos


def row(path: str, md5_: str, by: str = EDITOR) -> Row:
    return Row(path=path, edited_by=by, time_edited=TIME, checksum=md5_)


def listed(path: str, md5_: str | None) -> RemoteObject:
    etag = f'"{md5_}"' if md5_ else '"0123-2"'
    return RemoteObject(key=path, size=OBJECT_SIZE, etag=etag, md5=md5_)


@dataclass(frozen=True)
class Case:
    base: str
    local: str
    remote: str
    listing: bool

    @property
    def id(self) -> str:
        listing = "listing" if self.listing else "no-listing"
        return f"base={self.base}-local={self.local}-remote={self.remote}-{listing}"

    @property
    def expected(self) -> str:
        return TABLE[(self.base, self.local, self.remote)][0 if self.listing else 1]

    def base_md5(self) -> str | None:
        return CONTENT["B"] if self.base == "B" else None

    def local_md5(self) -> str | None:
        if self.local == "absent":
            return None
        return CONTENT["B" if self.local == "same" else self.local]

    def row_md5(self) -> str:
        """The content of the row in the 'gone' and 'tombstone' states."""
        return CONTENT["B"] if self.base == "B" else CONTENT["X"]

    def object_md5(self) -> str | None:
        """The content of the object actually on the remote, if there is one."""
        if self.remote in ("same", "X", "Y"):
            return CONTENT["B" if self.remote == "same" else self.remote]
        if self.remote.startswith("orphan_"):
            return CONTENT["B" if self.remote == "orphan_same" else "X"]
        return None

    def inputs(self) -> tuple[dict[str, str], dict[str, LocalFile], RemoteView]:
        base = {OTHER: CONTENT["O"]}
        local = {OTHER: LocalFile(OTHER, LOCAL_SIZE, 1, CONTENT["O"])}
        rows = {OTHER: row(OTHER, CONTENT["O"])}
        tombstones: dict[str, Row] = {}
        objects = {OTHER: listed(OTHER, CONTENT["O"])}
        if (b := self.base_md5()) is not None:
            base[P] = b
        if (m := self.local_md5()) is not None:
            local[P] = LocalFile(P, LOCAL_SIZE, 1_700_000_000_000_000_000, m)
        if (o := self.object_md5()) is not None:
            objects[P] = listed(P, o)
            if not self.remote.startswith("orphan_"):
                rows[P] = row(P, o)
        elif self.remote == "gone":
            rows[P] = row(P, self.row_md5())
        elif self.remote == "tombstone":
            tombstones[P] = row(P, self.row_md5(), by=DELETER)
        view = RemoteView(
            rows=rows,
            tombstones=tombstones,
            objects=objects if self.listing else None,
            etag=ETAG,
        )
        return base, local, view

    def seen_remote_md5(self) -> str | None:
        """What reconcile can know of the remote content of P."""
        if self.remote in ("same", "X", "Y"):
            return self.object_md5()
        if self.remote.startswith("orphan_"):
            return self.object_md5() if self.listing else None
        if self.remote == "gone" and not self.listing:
            return self.row_md5()
        return None

    def seen_remote_row(self) -> Row | None:
        """The row an action on P carries: the manifest row, else the tombstone."""
        _, _, view = self.inputs()
        return view.rows.get(P) or view.tombstones.get(P)

    def seen_remote_size(self) -> int | None:
        return OBJECT_SIZE if self.listing and self.object_md5() is not None else None


CASES = [
    Case(base, local, remote, listing)
    for base, local, remote in all_combinations()
    for listing in (True, False)
]
ACTION_CASES = [c for c in CASES if c.expected not in ("noop", "agree", "forget")]


def test_table_covers_every_combination_exactly_once() -> None:
    assert set(TABLE) == set(all_combinations())
    assert len(all_combinations()) == len(TABLE) == 50
    assert len(CASES) == 100
    outcomes = {kind.value for kind in ActionKind} - {"record"}
    outcomes |= {"noop", "agree", "agree+record", "forget", "forget+record", "record"}
    assert {o for pair in TABLE.values() for o in pair} <= outcomes


def plan_for(case: Case) -> tuple[Plan, dict[str, LocalFile]]:
    base, local, view = case.inputs()
    return reconcile(base, local, view, USER), local


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_table_outcome(case: Case) -> None:
    plan, _ = plan_for(case)
    outcome = case.expected
    on_p = [a.kind.value for a in plan.actions if a.path == P]
    if outcome in ("noop", "agree", "forget"):
        assert on_p == []
    elif outcome.endswith("record"):
        assert on_p == ["record"]
    else:
        assert on_p == [outcome]

    if outcome.startswith("agree"):
        assert plan.agreed.get(P) == case.local_md5()
    else:
        assert P not in plan.agreed
    assert (P in plan.forget) == outcome.startswith("forget")

    # The path in sync everywhere is only ever agreed.
    assert [a for a in plan.actions if a.path == OTHER] == []
    assert plan.agreed[OTHER] == CONTENT["O"]
    assert OTHER not in plan.forget


# --------------------------------------------------------------------------------------
# 2. Fields, reasons, ids
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ACTION_CASES, ids=lambda c: c.id)
def test_action_carries_the_facts_it_was_planned_from(case: Case) -> None:
    plan, local = plan_for(case)
    (action,) = plan.actions
    assert action.path == P
    assert action.local is local.get(P)
    assert action.base_md5 == case.base_md5()
    assert action.remote_md5 == case.seen_remote_md5()
    assert action.remote == case.seen_remote_row()
    assert action.remote_size == case.seen_remote_size()
    assert action.manifest_etag == ETAG
    assert action.reason.strip()


REASONS: list[tuple[Case, tuple[str, ...]]] = [
    (Case("B", "same", "X", True), ("changed on remote", EDITOR)),
    (Case("B", "same", "tombstone", True), ("deleted on remote", DELETER)),
    (Case("B", "absent", "same", True), ("deleted locally",)),
    (Case("B", "X", "same", True), ("changed locally",)),
    (Case("none", "absent", "X", True), ("new on remote", EDITOR)),
    (Case("none", "X", "absent", True), ("new local file",)),
    (Case("none", "X", "tombstone", True), ("new local file", "deleted on remote", DELETER)),
    (Case("B", "absent", "X", True), ("deleted locally", "changed on remote", EDITOR)),
    (Case("B", "X", "tombstone", True), ("changed locally", "deleted on remote", DELETER)),
    (Case("B", "X", "Y", True), ("changed locally and on remote", EDITOR)),
    (Case("none", "X", "Y", True), ("no common version",)),
    (Case("B", "same", "orphan_same", True), ("restore",)),
    (Case("B", "absent", "gone", True), ("drop",)),
]


@pytest.mark.parametrize(("case", "words"), REASONS, ids=[c.id for c, _ in REASONS])
def test_reason_says_what_happened_and_who_did_it(case: Case, words: tuple[str, ...]) -> None:
    plan, _ = plan_for(case)
    (action,) = plan.actions
    for word in words:
        assert word in action.reason


def test_conflict_reasons_tell_the_three_kinds_apart() -> None:
    reasons = {
        plan_for(Case("B", "absent", "X", True))[0].actions[0].reason,
        plan_for(Case("B", "X", "tombstone", True))[0].actions[0].reason,
        plan_for(Case("B", "X", "Y", True))[0].actions[0].reason,
        plan_for(Case("none", "X", "Y", True))[0].actions[0].reason,
    }
    assert len(reasons) == 4


def only_action(
    base: Mapping[str, str], local: Mapping[str, LocalFile], view: RemoteView
) -> Action:
    (action,) = reconcile(base, local, view, USER).actions
    return action


def test_action_id_is_stable_for_the_same_facts() -> None:
    case = Case("B", "same", "X", True)
    first = only_action(*case.inputs())
    again = only_action(*case.inputs())
    assert first == again
    assert first.id == again.id
    assert len(first.id) == 10 and all(c in "0123456789abcdef" for c in first.id)

    # Facts that do not change what the action does keep its id (so an approval or a
    # rejection survives an unrelated manifest commit or a touch of the file).
    base, local, view = case.inputs()
    touched = {**local, P: LocalFile(P, LOCAL_SIZE, 42, local[P].md5)}
    other_etag = RemoteView(view.rows, view.tombstones, view.objects, etag='"another"')
    assert only_action(base, touched, view).id == first.id
    assert only_action(base, local, other_etag).id == first.id
    assert only_action(base, local, other_etag).manifest_etag == '"another"'


def test_action_id_changes_with_local_or_remote_content() -> None:
    # Same kind and path, different remote MD5 (download of X vs Y).
    assert only_action(*Case("B", "same", "X", True).inputs()).id != (
        only_action(*Case("B", "same", "Y", True).inputs()).id
    )
    # Same kind and path, different local MD5 (upload of X vs Y).
    assert only_action(*Case("B", "X", "same", True).inputs()).id != (
        only_action(*Case("B", "Y", "same", True).inputs()).id
    )
    # Conflicts differing on either side.
    ids = {
        only_action(*Case(b, loc, rem, True).inputs()).id
        for b, loc, rem in [
            ("B", "X", "Y"),
            ("B", "Y", "X"),
            ("B", "absent", "X"),
            ("B", "X", "absent"),
        ]
    }
    assert len(ids) == 4


def test_action_id_depends_on_kind_path_and_both_md5s() -> None:
    lf = LocalFile(P, 1, 1, CONTENT["B"])
    proto = Action(ActionKind.DOWNLOAD, P, "r", lf, None, CONTENT["X"], CONTENT["B"], ETAG)
    variants = [
        proto,
        Action(ActionKind.CONFLICT, P, "r", lf, None, CONTENT["X"], CONTENT["B"], ETAG),
        Action(ActionKind.DOWNLOAD, OTHER, "r", lf, None, CONTENT["X"], CONTENT["B"], ETAG),
        Action(ActionKind.DOWNLOAD, P, "r", None, None, CONTENT["X"], CONTENT["B"], ETAG),
        Action(ActionKind.DOWNLOAD, P, "r", lf, None, CONTENT["Y"], CONTENT["B"], ETAG),
        Action(ActionKind.DOWNLOAD, P, "r", lf, None, None, CONTENT["B"], ETAG),
    ]
    assert len({a.id for a in variants}) == len(variants)
    same_facts = Action(ActionKind.DOWNLOAD, P, "other words", lf, row(P, "z"), CONTENT["X"], None)
    assert same_facts.id == proto.id


def test_orphan_with_unknown_md5_is_never_taken_as_equal() -> None:
    # A multipart object (ETag is not an MD5) with no row: its content is unknown.
    base = {P: CONTENT["B"]}
    local = {P: LocalFile(P, 1, 1, CONTENT["B"])}
    view = RemoteView(rows={}, objects={P: listed(P, None)}, etag=ETAG)
    action = only_action(base, local, view)
    assert action.kind is ActionKind.DOWNLOAD
    assert action.remote_md5 == UNKNOWN_MD5
    assert action.remote is None  # the executor must write the row back itself
    # Without a base, it cannot be proven equal to the local file: a conflict.
    action = only_action({}, local, view)
    assert action.kind is ActionKind.CONFLICT


def test_stale_row_is_corrected_from_the_listing() -> None:
    # We uploaded X (base X); an old client then wrote versions.csv from its stale copy,
    # putting back the row with B. The object on S3 still holds X, as the listing shows.
    base = {P: CONTENT["X"]}
    local = {P: LocalFile(P, 1, 1, CONTENT["X"])}
    view = RemoteView(rows={P: row(P, CONTENT["B"])}, objects={P: listed(P, CONTENT["X"])})
    plan = reconcile(base, local, view, USER)
    assert [a.kind for a in plan.actions] == [ActionKind.RECORD]
    assert plan.agreed == {P: CONTENT["X"]}


# --------------------------------------------------------------------------------------
# 3. Purity
# --------------------------------------------------------------------------------------

_IO_EVENT_PREFIXES = ("open", "os.", "shutil.", "socket.", "subprocess.", "tempfile.", "glob.")


class _IoWatch:
    """A process-wide audit hook (they cannot be removed), recording only while active."""

    def __init__(self) -> None:
        self.active = False
        self.events: list[str] = []

    def hook(self, event: str, args: tuple[object, ...]) -> None:
        if self.active and event.startswith(_IO_EVENT_PREFIXES):
            self.events.append(event)


_IO_WATCH = _IoWatch()
sys.addaudithook(_IO_WATCH.hook)


def _forbidden(name: str) -> object:
    def clock(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError(f"reconcile read the clock: {name}")

    return clock


class _NoClockDatetime(dt.datetime):
    @classmethod
    def now(cls, tz: dt.tzinfo | None = None) -> NoReturn:
        raise AssertionError("reconcile read the clock: datetime.now")

    @classmethod
    def utcnow(cls) -> NoReturn:
        raise AssertionError("reconcile read the clock: datetime.utcnow")

    @classmethod
    def today(cls) -> NoReturn:
        raise AssertionError("reconcile read the clock: datetime.today")


class _NoClockDate(dt.date):
    @classmethod
    def today(cls) -> NoReturn:
        raise AssertionError("reconcile read the clock: date.today")


@contextmanager
def no_clock_no_io() -> Iterator[list[str]]:
    """Make every clock read raise and record I/O audit events for the duration."""
    clocks = ("time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "localtime")
    with pytest.MonkeyPatch.context() as mp:
        for name in (*clocks, "gmtime", "strftime", "ctime", "sleep"):
            mp.setattr(time, name, _forbidden(f"time.{name}"))
        mp.setattr(dt, "datetime", _NoClockDatetime)
        mp.setattr(dt, "date", _NoClockDate)
        _IO_WATCH.events = []
        _IO_WATCH.active = True
        try:
            yield _IO_WATCH.events
        finally:
            _IO_WATCH.active = False


def freeze(
    base: dict[str, str], local: dict[str, LocalFile], view: RemoteView
) -> tuple[Mapping[str, str], Mapping[str, LocalFile], RemoteView]:
    """Read-only views of the inputs: any attempt to mutate them raises."""
    objects = MappingProxyType(dict(view.objects)) if view.objects is not None else None
    frozen_view = RemoteView(
        MappingProxyType(dict(view.rows)),
        MappingProxyType(dict(view.tombstones)),
        objects,
        view.etag,
    )
    return MappingProxyType(base), MappingProxyType(local), frozen_view


def test_purity_harness_catches_clock_reads_and_io() -> None:
    with no_clock_no_io() as io_events:
        with pytest.raises(AssertionError, match="clock"):
            time.time()
        with pytest.raises(AssertionError, match="clock"):
            dt.datetime.now()
        with open(__file__, "rb") as f:
            f.read(1)
    assert "open" in io_events


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_reconcile_is_pure(case: Case) -> None:
    base, local, view = case.inputs()
    before = copy.deepcopy((base, local, view))
    frozen = freeze(base, local, view)
    with no_clock_no_io() as io_events:
        first = reconcile(*frozen, USER)
        second = reconcile(*frozen, USER)
    assert io_events == []
    assert first == second
    assert (base, local, view) == before
    # Plain dicts give the same plan as read-only mappings.
    assert reconcile(base, local, view, USER) == first


def test_reconcile_module_imports_nothing_that_does_io() -> None:
    forbidden = {"os", "io", "time", "datetime", "pathlib", "socket", "shutil", "subprocess"}
    imported = {v.__name__ for v in vars(reconcile_module).values() if isinstance(v, ModuleType)}
    assert not imported & forbidden


# --------------------------------------------------------------------------------------
# 4. Properties, with a simulator of both sides
# --------------------------------------------------------------------------------------

SIM_PATHS = ("a.csv", "d/b.txt", "d/e/c")
SIM_CONTENTS = tuple(md5(f"v{i}") for i in range(3))  # a content is its own MD5 here
TRANSFERS = frozenset(ActionKind) - {ActionKind.RECORD}


@dataclass
class World:
    """Both sides, as the simulator sees them (contents are MD5 strings)."""

    base: dict[str, str] = field(default_factory=dict)
    local: dict[str, str] = field(default_factory=dict)
    rows: dict[str, str] = field(default_factory=dict)  # the manifest, versions.csv
    objects: dict[str, str] = field(default_factory=dict)  # the data objects truly on S3
    tombstones: set[str] = field(default_factory=set)  # deletedS3.csv
    trash: list[str] = field(default_factory=list)  # soft-deleted and overwritten contents
    conflict_copies: set[str] = field(default_factory=set)

    def contents(self) -> set[str]:
        return set(self.local.values()) | set(self.objects.values())

    def view(self, listing: bool) -> tuple[dict[str, str], dict[str, LocalFile], RemoteView]:
        local = {p: LocalFile(p, len(c), 7, c) for p, c in self.local.items()}
        # Sizes as the local files' (len of the MD5 string), so renames pair into moves.
        objects = {p: RemoteObject(p, len(c), f'"{c}"', c) for p, c in self.objects.items()}
        view = RemoteView(
            rows={p: row(p, c) for p, c in self.rows.items()},
            tombstones={p: row(p, md5("deleted"), by=DELETER) for p in self.tombstones},
            objects=objects if listing else None,
            etag=ETAG,
        )
        return dict(self.base), local, view

    def apply(self, plan: Plan) -> list[tuple[str, str]]:
        """Execute every action (conflicts resolved 'both'); return what went to the trash."""
        trashed: list[tuple[str, str]] = []

        def trash(path: str, content: str | None) -> None:
            if content is not None:
                trashed.append((path, content))
                self.trash.append(content)

        for a in plan.actions:
            p = a.path
            if a.kind is ActionKind.UPLOAD:
                content = self.local[p]
                if self.objects.get(p) != content:
                    trash(p, self.objects.get(p))
                self.objects[p] = self.rows[p] = self.base[p] = content
                self.tombstones.discard(p)
            elif a.kind is ActionKind.DOWNLOAD:
                content_or_none = self.objects.get(p)
                if content_or_none is None or a.remote_md5 not in (content_or_none, UNKNOWN_MD5):
                    continue  # the executor's re-check fails: nothing happens
                if self.local.get(p) != content_or_none:
                    trash(p, self.local.get(p))
                self.local[p] = self.base[p] = content_or_none
            elif a.kind is ActionKind.DELETE_LOCAL:
                trash(p, self.local.pop(p))
                self.base.pop(p, None)
            elif a.kind is ActionKind.DELETE_REMOTE:
                trash(p, self.objects.pop(p, None))
                self.rows.pop(p, None)
                self.tombstones.add(p)
                self.base.pop(p, None)
            elif a.kind is ActionKind.MOVE:
                assert a.source is not None
                old, content = a.source.path, self.local[p]
                if self.objects.get(old) != a.source.row.checksum or p in self.objects:
                    continue  # the conditional copy is refused: nothing happens
                assert content == self.objects[old]
                self.objects[p] = self.rows[p] = self.base[p] = content
                self.tombstones.discard(p)
                trash(old, self.objects.pop(old))
                self.rows.pop(old, None)
                self.tombstones.add(old)
                self.base.pop(old, None)
            elif a.kind is ActionKind.CONFLICT:  # keep both
                if p in self.local:
                    copy_path = self.free_conflict_path(p)
                    self.local[copy_path] = self.local.pop(p)
                    self.conflict_copies.add(copy_path)
                if p in self.objects:
                    self.local[p] = self.base[p] = self.objects[p]
                else:
                    self.base.pop(p, None)
            elif a.kind is ActionKind.RECORD:
                if p in self.objects:
                    self.rows[p] = self.objects[p]
                else:
                    self.rows.pop(p, None)
        self.base.update(plan.agreed)
        for p in plan.forget:
            self.base.pop(p, None)
        return trashed

    def free_conflict_path(self, path: str) -> str:
        candidate, n = f"{path}.conflict", 1
        while candidate in self.local or candidate in self.objects or candidate in self.rows:
            n += 1
            candidate = f"{path}.conflict{n}"
        return candidate

    def in_sync(self) -> bool:
        paths = set(self.local) | set(self.objects) | set(self.rows) | set(self.base)
        return all(
            self.local.get(p) == self.objects.get(p) == self.rows.get(p) == self.base.get(p)
            for p in paths
        )


@dataclass(frozen=True)
class Round:
    listing: bool
    before: World
    view: RemoteView
    plan: Plan
    trashed: list[tuple[str, str]]


def reversed_dict(mapping: Mapping[str, T]) -> dict[str, T]:
    return dict(list(mapping.items())[::-1])


def run_round(world: World, listing: bool) -> Round:
    before = copy.deepcopy(world)
    base, local, view = world.view(listing)
    plan = reconcile(base, local, view, USER)
    # Determinism: the insertion order of the inputs does not matter.
    shuffled = RemoteView(
        rows=reversed_dict(view.rows),
        tombstones=reversed_dict(view.tombstones),
        objects=reversed_dict(view.objects) if view.objects is not None else None,
        etag=view.etag,
    )
    reordered = reconcile(reversed_dict(base), reversed_dict(local), shuffled, USER)
    assert reordered == plan
    trashed = world.apply(plan)
    return Round(listing, before, view, plan, trashed)


def sync_rounds(world: World, first_listing: bool) -> list[Round]:
    """One round without a listing if so drawn, then three rounds with one."""
    rounds = [run_round(world, listing=False)] if not first_listing else []
    rounds += [run_round(world, listing=True) for _ in range(3)]
    return rounds


@st.composite
def worlds(draw: st.DrawFn) -> World:
    world = World()
    maybe_content = st.one_of(st.none(), st.sampled_from(SIM_CONTENTS))
    for p in SIM_PATHS:
        if (b := draw(maybe_content)) is not None:
            world.base[p] = b
        if (c := draw(maybe_content)) is not None:
            world.local[p] = c
        # none | row and object | object only (row lost) | row only (object deleted)
        remote = draw(st.sampled_from(("none", "present", "orphan", "row_only")))
        content = draw(st.sampled_from(SIM_CONTENTS))
        if remote in ("present", "orphan"):
            world.objects[p] = content
        if remote in ("present", "row_only"):
            world.rows[p] = content
        if draw(st.booleans()):
            world.tombstones.add(p)
    for p in SIM_PATHS:
        # Sometimes an agreed file renamed locally, so moves are planned and applied too
        # (each other fact drawn above may still break the pairing).
        if p in world.base and draw(st.booleans()):
            world.local[f"{p}.moved"] = world.local.pop(p, world.base[p])
    return world


def seen_remote_md5(view: RemoteView, path: str) -> str | None:
    """The remote content the view shows for ``path`` (restated from DESIGN.md §3)."""
    if path in view.rows and (view.objects is None or path in view.objects):
        return view.rows[path].checksum
    if view.objects is not None and path in view.objects:
        return view.objects[path].md5
    return None


PROPERTY_SETTINGS = settings(max_examples=300, deadline=None)


@PROPERTY_SETTINGS
@given(world=worlds(), first_listing=st.booleans())
def test_applying_plans_converges(world: World, first_listing: bool) -> None:
    rounds = sync_rounds(world, first_listing)
    full = [r for r in rounds if r.listing]
    # (a) After one round with full information, only the conflict copies remain to be
    # uploaded (and rows to be restored or dropped), and then nothing at all.
    second = [a for a in full[1].plan.actions if a.kind in TRANSFERS]
    assert all(a.kind is ActionKind.UPLOAD for a in second), second
    assert all(a.path in full[1].before.conflict_copies for a in second), second
    assert not any(a.path in full[1].before.base for a in second)
    third = full[2].plan
    assert third.actions == ()
    assert third.forget == frozenset()
    assert dict(third.agreed).items() <= full[2].before.base.items()
    assert world.in_sync(), world


@PROPERTY_SETTINGS
@given(world=worlds(), first_listing=st.booleans())
def test_no_version_is_lost(world: World, first_listing: bool) -> None:
    start = world.contents()
    rounds = sync_rounds(world, first_listing)
    # (b) Every content on either side before is somewhere after: local, remote or trash.
    assert start <= world.contents() | set(world.trash)
    for r in rounds:
        assert r.before.contents() <= world.contents() | set(world.trash)
    # With full information, only the agreed (base) version of a path is ever replaced
    # or deleted; a version only one side has is never destroyed.
    for r in rounds:
        if r.listing:
            for path, content in r.trashed:
                assert content == r.before.base.get(path), (path, r.plan)


@PROPERTY_SETTINGS
@given(world=worlds(), first_listing=st.booleans())
def test_no_action_on_a_path_that_already_agrees(world: World, first_listing: bool) -> None:
    for r in sync_rounds(world, first_listing):
        for a in r.plan.actions:
            if a.kind is ActionKind.RECORD:  # bookkeeping of the manifest only
                continue
            local_md5 = r.before.local.get(a.path)
            # (c) As far as the view shows...
            assert local_md5 is None or local_md5 != seen_remote_md5(r.view, a.path), a
            assert a.path not in r.plan.agreed, a
            # ... and, with a listing, in truth.
            if r.listing:
                assert local_md5 is None or local_md5 != r.before.objects.get(a.path), a


@PROPERTY_SETTINGS
@given(world=worlds(), first_listing=st.booleans())
def test_at_most_one_action_per_path(world: World, first_listing: bool) -> None:
    for r in sync_rounds(world, first_listing):
        # A move acts on its old name too.
        counts = Counter(
            [a.path for a in r.plan.actions] + [a.source.path for a in r.plan.actions if a.source]
        )
        assert all(n == 1 for n in counts.values()), r.plan
        # (d) and a path forgotten is neither agreed nor acted on except to drop its row.
        assert not r.plan.forget & set(r.plan.agreed)
        for a in r.plan.actions:
            if a.path in r.plan.forget:
                assert a.kind is ActionKind.RECORD


def has_delete_evidence(view: RemoteView, path: str) -> bool:
    """A tombstone, or a listing without the object (DESIGN.md §3)."""
    return path in view.tombstones or (view.objects is not None and path not in view.objects)


@PROPERTY_SETTINGS
@given(world=worlds(), first_listing=st.booleans())
def test_every_action_is_justified_by_the_facts_it_carries(
    world: World, first_listing: bool
) -> None:
    for r in sync_rounds(world, first_listing):
        base, view, plan = r.before.base, r.view, r.plan
        # Deterministic order, whatever the hash seed: by path.
        assert [a.path for a in plan.actions] == sorted(a.path for a in plan.actions)
        assert plan.forget <= set(base)
        for a in plan.actions:
            local_md5 = r.before.local.get(a.path)
            remote_md5 = seen_remote_md5(view, a.path)
            assert (a.local.md5 if a.local else None) == local_md5, a
            assert a.remote_md5 == remote_md5, a
            assert a.base_md5 == base.get(a.path), a
            assert a.manifest_etag == view.etag, a
            if a.kind is ActionKind.RECORD:
                # Only where the manifest and the listing disagree about the path.
                assert view.objects is not None
                assert (a.path in view.rows) != (a.path in view.objects), a
            elif remote_md5 is None and a.base_md5 is not None:
                # A remote delete is acted on only with evidence, and with a listing
                # only if the object is truly gone.
                assert a.kind in (ActionKind.DELETE_LOCAL, ActionKind.CONFLICT), a
                assert has_delete_evidence(view, a.path), a
                if r.listing:
                    assert a.path not in r.before.objects, a
            if a.kind is ActionKind.MOVE:
                # A rename: the old name deleted locally and unchanged on the remote (row
                # and listed object), the new name new on both sides, same content.
                assert a.source is not None and view.objects is not None
                old = a.source.path
                assert old not in r.before.local and old not in plan.agreed
                assert (
                    base.get(old)
                    == r.before.rows.get(old)
                    == r.before.objects.get(old)
                    == a.source.row.checksum
                    == local_md5
                ), a
                assert a.base_md5 is None and remote_md5 is None and a.path not in view.objects
            if a.kind is ActionKind.CONFLICT:
                # Only when both sides changed (or both are new and different).
                if a.base_md5 is None:
                    assert local_md5 is not None and remote_md5 is not None, a
                else:
                    assert local_md5 != a.base_md5 and remote_md5 != a.base_md5, a


# --------------------------------------------------------------------------------------
# 5. Moves
# --------------------------------------------------------------------------------------

OLD, NEW = "a/x.csv", "b/x.csv"
SIZE = 4096


def rename_world(
    *,
    old_row: str = "B",
    old_object: str | None = "B",
    old_size: int = SIZE,
    old_local: str | None = None,
    new_local: str = "B",
    new_row: str | None = None,
    new_object: str | None = None,
    new_base: str | None = None,
    listing: bool = True,
) -> tuple[dict[str, str], dict[str, LocalFile], RemoteView]:
    """OLD agreed at B, then renamed locally to NEW; each keyword breaks one fact."""
    base = {OLD: CONTENT["B"], **({NEW: CONTENT[new_base]} if new_base else {})}
    local = {NEW: LocalFile(NEW, SIZE, 7, CONTENT[new_local])}
    if old_local:
        local[OLD] = LocalFile(OLD, SIZE, 7, CONTENT[old_local])
    rows = {
        OLD: row(OLD, CONTENT[old_row]),
        **({NEW: row(NEW, CONTENT[new_row])} if new_row else {}),
    }
    objects = {}
    if old_object:
        objects[OLD] = RemoteObject(OLD, old_size, f'"{CONTENT[old_object]}"', CONTENT[old_object])
    if new_object:
        objects[NEW] = RemoteObject(NEW, SIZE, f'"{CONTENT[new_object]}"', CONTENT[new_object])
    view = RemoteView(rows=rows, objects=objects if listing else None, etag=ETAG)
    return base, local, view


def kinds_by_path(plan: Plan) -> dict[str, str]:
    return {a.path: a.kind.value for a in plan.actions}


def test_a_rename_is_one_move_carrying_the_old_name() -> None:
    plan = reconcile(*rename_world(), USER)
    (move,) = plan.actions
    assert move.kind is ActionKind.MOVE
    assert move.path == NEW
    assert move.source == MoveSource(OLD, row(OLD, CONTENT["B"]), f'"{CONTENT["B"]}"')
    assert move.local == LocalFile(NEW, SIZE, 7, CONTENT["B"])
    assert (move.remote_md5, move.base_md5, move.manifest_etag) == (None, None, ETAG)
    assert move.size == SIZE
    assert OLD in move.reason


# Every fact a move relies on, broken one at a time: the plan stays what it was before
# moves existed (an upload of the new name, and whatever the old name needs).
NOT_A_MOVE = {
    "no listing (nothing vouches for the object)": (
        {"listing": False},
        {NEW: "upload", OLD: "delete_remote"},
    ),
    "old name changed on the remote": (
        {"old_row": "X", "old_object": "X"},
        {NEW: "upload", OLD: "conflict"},
    ),
    "old object contradicts its row (blind write)": (
        {"old_object": "X"},
        {NEW: "upload", OLD: "conflict"},
    ),
    "old object gone": ({"old_object": None}, {NEW: "upload", OLD: "record"}),
    "old object of another size": ({"old_size": SIZE + 1}, {NEW: "upload", OLD: "delete_remote"}),
    "old name still here (a copy, not a rename)": ({"old_local": "B"}, {NEW: "upload"}),
    "old name edited, not deleted": ({"old_local": "X"}, {NEW: "upload", OLD: "upload"}),
    "new content differs": ({"new_local": "X"}, {NEW: "upload", OLD: "delete_remote"}),
    "new name taken on the remote": (
        {"new_row": "Y", "new_object": "Y"},
        {NEW: "conflict", OLD: "delete_remote"},
    ),
    "new name's object present without a row": (
        {"new_object": "Y"},
        {NEW: "conflict", OLD: "delete_remote"},
    ),
    "new name was agreed before": (
        {"new_base": "Y", "new_row": "Y", "new_object": "Y"},
        {NEW: "upload", OLD: "delete_remote"},
    ),
}


@pytest.mark.parametrize("facts", NOT_A_MOVE.values(), ids=list(NOT_A_MOVE))
def test_no_move_unless_every_fact_holds(facts: tuple[dict[str, object], dict[str, str]]) -> None:
    broken, expected = facts
    plan = reconcile(*rename_world(**broken), USER)  # type: ignore[arg-type]
    assert kinds_by_path(plan) == expected


def test_an_object_we_wrote_this_session_pairs_without_a_listed_size() -> None:
    # After our own commit the engine lists what it wrote with size -1 and no ETag: the
    # move is still planned, and names no ETag (the executor reads the current one).
    base, local, view = rename_world()
    assert view.objects is not None
    objects = {OLD: RemoteObject(OLD, -1, "", CONTENT["B"])}
    plan = reconcile(base, local, RemoteView(view.rows, objects=objects, etag=ETAG), USER)
    (move,) = plan.actions
    assert move.kind is ActionKind.MOVE and move.source is not None
    assert move.source.etag is None


def test_moves_are_never_counted_as_deletes_of_content() -> None:
    base, local, view = rename_world()
    plan = reconcile(base, local, view, USER)
    assert not plan.by_kind(ActionKind.DELETE_REMOTE)
    assert not plan.by_kind(ActionKind.UPLOAD)


def folder_rename(
    names: list[str], contents: list[str]
) -> tuple[dict[str, str], dict[str, LocalFile], RemoteView]:
    """``old/<name>`` agreed with the given contents, all renamed to ``new/<name>``."""
    base, local, rows, objects = {}, {}, {}, {}
    for name, c in zip(names, contents, strict=True):
        old, new, digest = f"old/{name}", f"new/{name}", CONTENT[c]
        base[old] = digest
        local[new] = LocalFile(new, SIZE, 7, digest)
        rows[old] = row(old, digest)
        objects[old] = RemoteObject(old, SIZE, f'"{digest}"', digest)
    return base, local, RemoteView(rows=rows, objects=objects, etag=ETAG)


def test_identical_files_in_a_renamed_folder_pair_by_name() -> None:
    plan = reconcile(*folder_rename(["a", "b", "c"], ["B", "B", "X"]), USER)
    assert [(a.kind, a.source.path if a.source else None, a.path) for a in plan.actions] == [
        (ActionKind.MOVE, "old/a", "new/a"),
        (ActionKind.MOVE, "old/b", "new/b"),
        (ActionKind.MOVE, "old/c", "new/c"),
    ]


def test_more_new_copies_than_old_names_leave_uploads_deterministically() -> None:
    base, local, view = folder_rename(["a"], ["B"])
    for extra in ("new/copy1", "z/a"):
        local[extra] = LocalFile(extra, SIZE, 7, CONTENT["B"])
    plan = reconcile(base, local, view, USER)
    # Same name first ("a" sorts before "copy1"), then by path: new/a < z/a.
    assert kinds_by_path(plan) == {"new/a": "move", "new/copy1": "upload", "z/a": "upload"}
    assert reconcile(reversed_dict(base), reversed_dict(local), view, USER) == plan


def test_move_id_is_stable_and_names_the_old_path() -> None:
    first = only_action(*rename_world())
    again = only_action(*rename_world())
    assert first.id == again.id
    assert first.source is not None
    other = Action(
        ActionKind.MOVE,
        NEW,
        "r",
        first.local,
        None,
        None,
        None,
        source=MoveSource("c/x.csv", first.source.row, None),
    )
    assert other.id != first.id
    # Without a source the fingerprint is the one every other kind always had.
    upload = Action(ActionKind.UPLOAD, NEW, "r", first.local, None, None, None)
    assert upload.id != first.id
