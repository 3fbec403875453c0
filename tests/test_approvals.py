"""The approval policy (mass-delete brake, auto-approval) and the persisted approval queue."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from s3syncd.approvals import (
    ApprovalQueue,
    DeleteBrake,
    EntryState,
    auto_approved,
    delete_brake,
)
from s3syncd.config import Policy
from s3syncd.errors import UnknownActionError
from s3syncd.model import Action, ActionKind, LocalFile, Resolution, Row
from s3syncd.state import QUEUE_FILE, StateDir

NO_BRAKE = DeleteBrake(deletes=0, total=10, max_percent=50.0)
ENGAGED = DeleteBrake(deletes=9, total=10, max_percent=50.0)
NOBODY = Policy()


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def action(
    kind: ActionKind, path: str, local: str | None = "L", remote: str | None = "R"
) -> Action:
    """An action on ``path`` planned from local content ``local`` and remote content ``remote``."""
    lf = (
        None
        if local is None
        else LocalFile(path, len(local), 1_700_000_000_000_000_000, md5(local))
    )
    row = None if remote is None else Row(path, "user-b", "2024-01-02 03:04:05", md5(remote))
    return Action(
        kind=kind,
        path=path,
        reason=f"{kind.value} for the test",
        local=lf,
        remote=row,
        remote_md5=None if remote is None else md5(remote),
        base_md5=md5("base"),
        manifest_etag='"etag-1"',
        remote_size=None if remote is None else len(remote),
    )


def upload(path: str, content: str = "L") -> Action:
    return action(ActionKind.UPLOAD, path, local=content, remote=None)


def download(path: str) -> Action:
    return action(ActionKind.DOWNLOAD, path, local=None, remote="R")


def delete_remote(path: str) -> Action:
    return action(ActionKind.DELETE_REMOTE, path, local=None, remote="R")


def delete_local(path: str) -> Action:
    return action(ActionKind.DELETE_LOCAL, path, local="L", remote=None)


def conflict(path: str) -> Action:
    return action(ActionKind.CONFLICT, path)


def record(path: str) -> Action:
    return action(ActionKind.RECORD, path, local=None, remote="R")


# --- delete_brake --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("deletes", "others", "total", "max_percent", "engaged"),
    [
        (0, 3, 10, 50.0, False),
        (5, 0, 10, 50.0, False),  # exactly the limit: not above it
        (6, 0, 10, 50.0, True),
        (1, 0, 1, 50.0, False),  # one delete never engages, even 100% of one file
        (2, 0, 2, 50.0, True),
        (2, 0, 4, 50.0, False),
        (2, 0, 3, 50.0, True),
        (3, 5, 10, 25.0, True),
        (3, 5, 10, 30.0, False),
        (4, 0, 0, 50.0, True),  # no known files: the deletes themselves are the total
    ],
)
def test_delete_brake(
    deletes: int, others: int, total: int, max_percent: float, engaged: bool
) -> None:
    acts = [delete_remote(f"d{i}") for i in range(deletes // 2)]
    acts += [delete_local(f"l{i}") for i in range(deletes - deletes // 2)]
    acts += [upload(f"u{i}") for i in range(others)]
    brake = delete_brake(acts, total, Policy(max_delete_percent=max_percent))
    assert brake.deletes == deletes
    assert brake.engaged is engaged
    if engaged:
        assert f"{deletes} of" in brake.describe()


def test_brake_percent_of_empty_plan() -> None:
    brake = delete_brake([], 0, NOBODY)
    assert brake.percent == 0.0
    assert not brake.engaged


# --- auto_approved ---------------------------------------------------------------------------


def test_record_is_always_auto_approved() -> None:
    assert auto_approved(record("a"), NOBODY, NO_BRAKE)
    assert auto_approved(record("a"), NOBODY, ENGAGED)


@pytest.mark.parametrize(
    "make", [upload, download, delete_remote, delete_local, conflict], ids=lambda f: f.__name__
)
def test_nothing_else_is_auto_approved_by_default(make: Callable[[str], Action]) -> None:
    assert not auto_approved(make("a"), NOBODY, NO_BRAKE)


def test_kinds_per_policy() -> None:
    policy = Policy(auto_approve=frozenset({ActionKind.UPLOAD, ActionKind.CONFLICT}))
    assert auto_approved(upload("a"), policy, NO_BRAKE)
    assert auto_approved(conflict("a"), policy, NO_BRAKE)
    assert not auto_approved(download("a"), policy, NO_BRAKE)
    assert not auto_approved(delete_remote("a"), policy, NO_BRAKE)


def test_deletes_are_never_auto_approved_while_the_brake_is_engaged() -> None:
    policy = Policy(
        auto_approve=frozenset(
            {ActionKind.DELETE_REMOTE, ActionKind.DELETE_LOCAL, ActionKind.UPLOAD}
        )
    )
    assert auto_approved(delete_remote("a"), policy, NO_BRAKE)
    assert auto_approved(delete_local("a"), policy, NO_BRAKE)
    assert not auto_approved(delete_remote("a"), policy, ENGAGED)
    assert not auto_approved(delete_local("a"), policy, ENGAGED)
    assert auto_approved(upload("a"), policy, ENGAGED)  # the brake holds deletes only


# --- the queue -------------------------------------------------------------------------------


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    sd = StateDir(tmp_path)
    sd.ensure()
    return sd


@pytest.fixture
def queue(state: StateDir) -> ApprovalQueue:
    return ApprovalQueue(state)


def states(q: ApprovalQueue) -> dict[str, EntryState]:
    return {e.action.path: e.state for e in q.entries.values()}


def test_update_adds_pending_entries(queue: ApprovalQueue) -> None:
    plan = [upload("a"), download("b"), conflict("c")]
    queue.update(plan, now=100.0, policy=NOBODY, brake=NO_BRAKE)
    assert set(queue.entries) == {a.id for a in plan}
    assert all(e.state is EntryState.PENDING for e in queue.entries.values())
    assert all(e.queued_at == 100.0 for e in queue.entries.values())
    assert [e.action.path for e in queue.pending()] == ["a", "b", "c"]


def test_replan_keeps_queued_at_and_adds_new_ones(queue: ApprovalQueue) -> None:
    queue.update([upload("a")], now=100.0, policy=NOBODY, brake=NO_BRAKE)
    queue.update([upload("a"), upload("b")], now=200.0, policy=NOBODY, brake=NO_BRAKE)
    by_path = {e.action.path: e for e in queue.entries.values()}
    assert by_path["a"].queued_at == 100.0
    assert by_path["b"].queued_at == 200.0
    # pending() is ordered by queue time
    assert [e.action.path for e in queue.pending()] == ["a", "b"]


def test_replan_drops_actions_no_longer_planned(queue: ApprovalQueue) -> None:
    queue.update([upload("a"), upload("b")], now=1.0, policy=NOBODY, brake=NO_BRAKE)
    queue.update([upload("b")], now=2.0, policy=NOBODY, brake=NO_BRAKE)
    assert states(queue) == {"b": EntryState.PENDING}


def test_replan_keeps_an_approval(queue: ApprovalQueue) -> None:
    a = upload("a")
    queue.update([a], now=1.0, policy=NOBODY, brake=NO_BRAKE)
    queue.approve([a.id])
    queue.update([a], now=2.0, policy=NOBODY, brake=NO_BRAKE)
    assert queue.entries[a.id].state is EntryState.APPROVED


def test_update_auto_approves_per_policy(queue: ApprovalQueue) -> None:
    policy = Policy(auto_approve=frozenset({ActionKind.UPLOAD, ActionKind.DELETE_REMOTE}))
    plan = [upload("u"), download("d"), delete_remote("x"), record("r")]
    queue.update(plan, now=1.0, policy=policy, brake=NO_BRAKE)
    assert states(queue) == {
        "u": EntryState.APPROVED,
        "d": EntryState.PENDING,
        "x": EntryState.APPROVED,
        "r": EntryState.APPROVED,
    }
    # RECORD entries are bookkeeping: never shown as pending
    assert {e.action.path for e in queue.pending()} == {"u", "d", "x"}


def test_update_holds_policy_deletes_while_brake_engaged(queue: ApprovalQueue) -> None:
    policy = Policy(auto_approve=frozenset({ActionKind.UPLOAD, ActionKind.DELETE_REMOTE}))
    queue.update([upload("u"), delete_remote("x")], now=1.0, policy=policy, brake=ENGAGED)
    assert states(queue) == {"u": EntryState.APPROVED, "x": EntryState.PENDING}


def test_approve_by_id_and_by_unique_prefix(queue: ApprovalQueue) -> None:
    a, b = upload("a"), upload("b")
    assert a.id[:4] != b.id[:4]
    queue.update([a, b], now=1.0, policy=NOBODY, brake=NO_BRAKE)
    assert queue.approve([a.id]) == ([a.id], [])
    assert queue.approve([b.id[:4]]) == ([b.id], [])
    assert states(queue) == {"a": EntryState.APPROVED, "b": EntryState.APPROVED}


def test_approve_refuses_short_ambiguous_and_unknown_ids(queue: ApprovalQueue) -> None:
    acts = [upload(f"f{i}") for i in range(40)]
    queue.update(acts, now=1.0, policy=NOBODY, brake=NO_BRAKE)
    with pytest.raises(UnknownActionError, match="no pending action has id 'ffffffffff'"):
        queue.approve(["ffffffffff"])
    with pytest.raises(UnknownActionError):
        queue.approve([acts[0].id[:3]])  # shorter than 4 characters: never taken as a prefix
    assert all(e.state is EntryState.PENDING for e in queue.entries.values())


def test_ambiguous_prefix_is_refused(queue: ApprovalQueue) -> None:
    # ids are deterministic: find two paths whose ids share their first four characters
    seen: dict[str, Action] = {}
    for i in range(100_000):
        a = upload(f"f{i}")
        if a.id[:4] in seen:
            pair = [seen[a.id[:4]], a]
            break
        seen[a.id[:4]] = a
    shared = pair[0].id[:4]
    queue.update(pair, now=1.0, policy=NOBODY, brake=NO_BRAKE)
    with pytest.raises(UnknownActionError):
        queue.approve([shared])
    # the full id still picks exactly one
    assert queue.approve([pair[1].id]) == ([pair[1].id], [])
    assert states(queue) == {pair[0].path: EntryState.PENDING, pair[1].path: EntryState.APPROVED}


def test_unknown_id_is_an_error_for_reject(queue: ApprovalQueue) -> None:
    queue.update([upload("a")], now=1.0, policy=NOBODY, brake=NO_BRAKE)
    with pytest.raises(UnknownActionError):
        queue.reject(["0123456789"])


def test_approve_all_and_by_kind(queue: ApprovalQueue) -> None:
    plan = [upload("u1"), upload("u2"), download("d"), conflict("c")]
    queue.update(plan, now=1.0, policy=NOBODY, brake=NO_BRAKE)
    done, held = queue.approve(all_=True, kind=ActionKind.UPLOAD)
    assert sorted(done) == sorted(a.id for a in plan[:2])
    assert held == []
    assert states(queue)["d"] is EntryState.PENDING
    done, held = queue.approve(all_=True)
    assert {plan[2].id, plan[3].id} <= set(done)
    assert all(e.state is EntryState.APPROVED for e in queue.entries.values())
    # an approved conflict defaults to keeping both copies
    assert queue.entries[plan[3].id].resolution is Resolution.BOTH


def test_approve_without_ids_or_all_does_nothing(queue: ApprovalQueue) -> None:
    queue.update([upload("a")], now=1.0, policy=NOBODY, brake=NO_BRAKE)
    assert queue.approve() == ([], [])
    assert states(queue) == {"a": EntryState.PENDING}


def test_approve_all_with_brake_holds_deletions_back(queue: ApprovalQueue) -> None:
    dr, dl, up = delete_remote("x"), delete_local("y"), upload("u")
    queue.update([dr, dl, up], now=1.0, policy=NOBODY, brake=ENGAGED)
    done, held = queue.approve(all_=True, brake=ENGAGED)
    assert done == [up.id]
    assert sorted(held) == sorted([dr.id, dl.id])
    assert states(queue) == {
        "x": EntryState.PENDING,
        "y": EntryState.PENDING,
        "u": EntryState.APPROVED,
    }
    # naming the deletion kind releases it (that kind only)
    done, held = queue.approve(all_=True, kind=ActionKind.DELETE_REMOTE, brake=ENGAGED)
    assert (done, held) == ([dr.id], [])
    assert states(queue)["y"] is EntryState.PENDING
    # explicit ids are never held
    assert queue.approve([dl.id], brake=ENGAGED) == ([dl.id], [])


def test_approve_all_with_disengaged_brake_approves_deletions(queue: ApprovalQueue) -> None:
    dr = delete_remote("x")
    queue.update([dr], now=1.0, policy=NOBODY, brake=NO_BRAKE)
    assert queue.approve(all_=True, brake=NO_BRAKE) == ([dr.id], [])


def test_approve_with_resolution(queue: ApprovalQueue) -> None:
    c = conflict("c")
    queue.update([c], now=1.0, policy=NOBODY, brake=NO_BRAKE)
    queue.approve([c.id], resolution=Resolution.REMOTE)
    assert queue.entries[c.id].resolution is Resolution.REMOTE
    assert queue.take_approved() == [(c, Resolution.REMOTE)]


def test_reject_sticks_until_the_action_changes(queue: ApprovalQueue) -> None:
    a = upload("a", content="v1")
    queue.update([a], now=1.0, policy=NOBODY, brake=NO_BRAKE)
    assert queue.reject([a.id[:6]]) == [a.id]
    assert queue.entries == {}
    # the same facts again: not proposed again
    queue.update([a], now=2.0, policy=NOBODY, brake=NO_BRAKE)
    assert queue.entries == {}
    assert queue.pending() == []
    # the file changed: a new id, proposed again
    changed = upload("a", content="v2")
    assert changed.id != a.id
    queue.update([changed], now=3.0, policy=NOBODY, brake=NO_BRAKE)
    assert list(queue.entries) == [changed.id]
    assert queue.entries[changed.id].state is EntryState.PENDING
    # the old rejection is forgotten once its action is no longer planned
    assert a.id not in queue.rejected


def test_rejected_action_is_not_auto_approved_either(queue: ApprovalQueue) -> None:
    a = upload("a")
    queue.update([a], now=1.0, policy=NOBODY, brake=NO_BRAKE)
    queue.reject([a.id])
    policy = Policy(auto_approve=frozenset({ActionKind.UPLOAD}))
    queue.update([a], now=2.0, policy=policy, brake=NO_BRAKE)
    assert queue.entries == {}


def test_take_approved_marks_running(queue: ApprovalQueue) -> None:
    a, b = upload("a"), upload("b")
    queue.update([a, b], now=1.0, policy=NOBODY, brake=NO_BRAKE)
    queue.approve([a.id])
    assert queue.take_approved() == [(a, None)]
    assert states(queue) == {"a": EntryState.RUNNING, "b": EntryState.PENDING}
    assert queue.take_approved() == []  # already taken
    # a running action is neither re-approved nor rejected
    assert queue.approve([a.id]) == ([], [])
    assert queue.reject([a.id]) == []
    assert states(queue)["a"] is EntryState.RUNNING


def test_running_entry_survives_a_replan_without_it(queue: ApprovalQueue) -> None:
    a = upload("a")
    queue.update([a], now=1.0, policy=NOBODY, brake=NO_BRAKE)
    queue.approve([a.id])
    queue.take_approved()
    queue.update([], now=2.0, policy=NOBODY, brake=NO_BRAKE)
    assert states(queue) == {"a": EntryState.RUNNING}


@pytest.mark.parametrize(("ok", "stale"), [(True, False), (False, True)])
def test_finish_ok_or_stale_removes(queue: ApprovalQueue, ok: bool, stale: bool) -> None:
    a = upload("a")
    queue.update([a], now=1.0, policy=NOBODY, brake=NO_BRAKE)
    queue.approve([a.id])
    queue.take_approved()
    queue.finish(a.id, ok=ok, stale=stale, message="done")
    assert queue.entries == {}


def test_finish_failure_keeps_the_entry_with_its_error(queue: ApprovalQueue) -> None:
    a = upload("a")
    queue.update([a], now=1.0, policy=NOBODY, brake=NO_BRAKE)
    queue.approve([a.id])
    queue.take_approved()
    queue.finish(a.id, ok=False, stale=False, message="disk full")
    entry = queue.entries[a.id]
    assert entry.state is EntryState.FAILED
    assert entry.error == "disk full"
    assert [e.action.id for e in queue.pending()] == [a.id]
    # approving again retries and clears the error
    queue.approve([a.id])
    assert queue.entries[a.id].state is EntryState.APPROVED
    assert queue.entries[a.id].error is None


def test_finish_of_an_unknown_id_is_ignored(queue: ApprovalQueue) -> None:
    queue.update([upload("a")], now=1.0, policy=NOBODY, brake=NO_BRAKE)
    queue.finish("0000000000", ok=True, stale=False, message="")
    assert states(queue) == {"a": EntryState.PENDING}


def test_persistence_round_trip(state: StateDir, queue: ApprovalQueue) -> None:
    u, d, c, x, r = upload("u"), download("d"), conflict("c"), delete_remote("x"), upload("r")
    queue.update([u, d, c, x, r], now=42.5, policy=NOBODY, brake=NO_BRAKE)
    queue.approve([d.id])
    queue.approve([c.id], resolution=Resolution.LOCAL)
    queue.reject([r.id])
    queue.approve([x.id])
    queue.take_approved()  # d, c and x are now RUNNING
    queue.finish(x.id, ok=False, stale=False, message="boom")
    queue.save()
    assert state.file(QUEUE_FILE).is_file()
    assert json.loads(state.file(QUEUE_FILE).read_text())["rejected"] == [r.id]

    loaded = ApprovalQueue(state)
    loaded.load()
    assert set(loaded.entries) == {u.id, d.id, c.id, x.id}
    assert loaded.rejected == {r.id}
    for key, before in queue.entries.items():
        after = loaded.entries[key]
        assert after.action == before.action  # every fact survives, incl. LocalFile and Row
        assert after.queued_at == 42.5
        assert after.resolution == before.resolution
        assert after.error == before.error
    # interrupted (RUNNING) actions come back approved, to run again
    assert loaded.entries[d.id].state is EntryState.APPROVED
    assert loaded.entries[c.id].state is EntryState.APPROVED
    assert loaded.entries[c.id].resolution is Resolution.LOCAL
    assert loaded.entries[u.id].state is EntryState.PENDING
    assert loaded.entries[x.id].state is EntryState.FAILED
    assert loaded.entries[x.id].error == "boom"
    # the rejection still holds after the restart
    loaded.update([r], now=50.0, policy=NOBODY, brake=NO_BRAKE)
    assert r.id not in loaded.entries


def test_every_change_is_saved(state: StateDir, queue: ApprovalQueue) -> None:
    a = upload("a")
    queue.update([a], now=1.0, policy=NOBODY, brake=NO_BRAKE)
    queue.approve([a.id])
    other = ApprovalQueue(state)
    other.load()
    assert other.entries[a.id].state is EntryState.APPROVED


def test_load_of_a_fresh_folder_is_empty(state: StateDir) -> None:
    q = ApprovalQueue(state)
    q.load()
    assert q.entries == {}
    assert q.rejected == set()
