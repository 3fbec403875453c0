"""Which actions may run without asking, the mass-delete brake, and the approval queue."""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from s3syncd.config import Policy
from s3syncd.errors import UnknownActionError
from s3syncd.model import (
    DELETE_KINDS,
    Action,
    ActionKind,
    LocalFile,
    MoveSource,
    Resolution,
    Row,
)
from s3syncd.state import QUEUE_FILE, StateDir

# How long deletions that ran without a person's say-so keep counting against the brake.
DELETE_WINDOW = 3600.0


@dataclass(frozen=True, slots=True)
class DeleteWindow:
    """The deletions auto-approved since ``started``, and the most files seen since then.

    A plan is judged with these, so deleting most files a few at a time is held like
    deleting them at once (each plan alone is a small share of a shrinking folder). The
    window ends ``DELETE_WINDOW`` seconds after it opened, or when a person approves a
    deletion (they have seen what goes); the next plan opens a new one.
    """

    started: float
    peak_files: int
    deleted: frozenset[str] = frozenset()

    def roll(self, now: float, total_files: int, length: float = DELETE_WINDOW) -> DeleteWindow:
        """The window in force at ``now``: this one (seeing ``total_files``), or a new one."""
        if not self.started <= now < self.started + length:  # expired, or the clock went back
            return DeleteWindow(now, total_files)
        return replace(self, peak_files=max(self.peak_files, total_files))

    def to_json(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "peak_files": self.peak_files,
            "deleted": sorted(self.deleted),
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> DeleteWindow:
        return DeleteWindow(
            float(data["started"]),
            int(data["peak_files"]),
            frozenset(str(p) for p in data.get("deleted", [])),
        )


@dataclass(frozen=True, slots=True)
class DeleteBrake:
    """A plan that deletes more than ``max_percent`` of the files is held whole.

    ``deletes`` includes the ``earlier`` deletions of the window (see DeleteWindow), and
    ``total`` is at least the window's peak file count.
    """

    deletes: int
    total: int
    max_percent: float
    earlier: int = 0

    @property
    def percent(self) -> float:
        return 100.0 * self.deletes / self.total if self.total else 0.0

    @property
    def engaged(self) -> bool:
        # Tiny folders would trip on a single delete: require at least two.
        return self.deletes >= 2 and self.percent > self.max_percent

    def describe(self) -> str:
        within = (
            f" within the hour ({self.earlier} already deleted without approval)"
            if self.earlier
            else ""
        )
        return (
            f"{self.deletes} of {self.total} files ({self.percent:.0f}%) would be deleted"
            f"{within}, more than the {self.max_percent:.0f}% allowed; nothing is deleted "
            "until you approve the deletions explicitly"
        )


def delete_brake(
    actions: Sequence[Action],
    total_files: int,
    policy: Policy,
    window: DeleteWindow | None = None,
) -> DeleteBrake:
    planned = {a.path for a in actions if a.kind in DELETE_KINDS}
    # A path re-planned (e.g. an approved delete not run yet) is counted once.
    earlier = len(window.deleted - planned) if window else 0
    deletes = len(planned) + earlier
    total = max(total_files, window.peak_files if window else 0, deletes)
    return DeleteBrake(deletes, total, policy.max_delete_percent, earlier)


def auto_approved(action: Action, policy: Policy, brake: DeleteBrake) -> bool:
    """True if ``action`` may run without the user's say-so."""
    if action.kind is ActionKind.RECORD:
        return True  # manifest bookkeeping; touches no file
    if action.kind is ActionKind.MOVE:
        # A move is an upload (by copy) plus a remote delete: it runs unasked only if
        # both would. Not a delete for the brake: the content stays, under the new name.
        return {ActionKind.UPLOAD, ActionKind.DELETE_REMOTE} <= policy.auto_approve
    if action.kind in DELETE_KINDS and brake.engaged:
        return False
    return action.kind in policy.auto_approve


# --- the daemon's persisted queue ------------------------------------------------------


class EntryState(enum.Enum):
    PENDING = "pending"  # waiting for the user
    APPROVED = "approved"  # waiting for the executor
    RUNNING = "running"
    FAILED = "failed"  # last attempt failed; approve again to retry


@dataclass(frozen=True, slots=True)
class Entry:
    action: Action
    queued_at: float
    state: EntryState = EntryState.PENDING
    resolution: Resolution | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "action": action_to_json(self.action),
            "queued_at": self.queued_at,
            "state": self.state.value,
            "resolution": self.resolution.value if self.resolution else None,
            "error": self.error,
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Entry:
        res = data.get("resolution")
        return Entry(
            action=action_from_json(data["action"]),
            queued_at=float(data["queued_at"]),
            state=EntryState(data.get("state", "pending")),
            resolution=Resolution(res) if res else None,
            error=data.get("error"),
        )


def action_to_json(a: Action) -> dict[str, Any]:
    return {
        "kind": a.kind.value,
        "path": a.path,
        "reason": a.reason,
        "local": None if a.local is None else [a.local.size, a.local.mtime_ns, a.local.md5],
        "remote": a.remote.to_list() if a.remote else None,
        "remote_md5": a.remote_md5,
        "base_md5": a.base_md5,
        "manifest_etag": a.manifest_etag,
        "remote_size": a.remote_size,
        "source": None
        if a.source is None
        else {"path": a.source.path, "row": a.source.row.to_list(), "etag": a.source.etag},
    }


def action_from_json(d: Mapping[str, Any]) -> Action:
    local = d.get("local")
    remote = d.get("remote")
    source = d.get("source")  # absent in queues written before moves existed
    return Action(
        kind=ActionKind(d["kind"]),
        path=str(d["path"]),
        reason=str(d.get("reason", "")),
        local=None
        if local is None
        else LocalFile(str(d["path"]), int(local[0]), int(local[1]), str(local[2])),
        remote=None if remote is None else Row.from_list(remote),
        remote_md5=d.get("remote_md5"),
        base_md5=d.get("base_md5"),
        manifest_etag=d.get("manifest_etag"),
        remote_size=d.get("remote_size"),
        source=None
        if source is None
        else MoveSource(str(source["path"]), Row.from_list(source["row"]), source.get("etag")),
    )


class ApprovalQueue:
    """Proposed actions awaiting the user, persisted in ``.S3/sync-queue.json``.

    Action ids are fingerprints of (kind, path, local MD5, remote MD5): a re-plan of the
    same facts keeps the same id, and a rejected id is not proposed again until the file
    changes on either side (which changes the id). Not thread-safe: the daemon's worker
    thread and request handlers share it under the daemon's lock.
    """

    def __init__(self, state: StateDir) -> None:
        self.state = state
        self.entries: dict[str, Entry] = {}
        self.rejected: set[str] = set()
        # Persisted with the queue, so a restart does not reset the mass-delete count.
        self.window: DeleteWindow | None = None

    def load(self) -> None:
        data = self.state.read_json(QUEUE_FILE)
        self.entries = {}
        for raw in data.get("entries", []):
            entry = Entry.from_json(raw)
            if entry.state is EntryState.RUNNING:  # interrupted: ask again
                entry = replace(entry, state=EntryState.APPROVED)
            self.entries[entry.action.id] = entry
        self.rejected = set(data.get("rejected", []))
        window = data.get("delete_window")
        self.window = DeleteWindow.from_json(window) if window else None

    def save(self) -> None:
        self.state.write_json(
            QUEUE_FILE,
            {
                "entries": [e.to_json() for e in self.entries.values()],
                "rejected": sorted(self.rejected),
                "delete_window": self.window.to_json() if self.window else None,
            },
        )

    def brake_for(
        self, actions: Sequence[Action], now: float, total_files: int, policy: Policy
    ) -> DeleteBrake:
        """The brake for a plan, counting this window's earlier auto-approved deletions."""
        window = self.window or DeleteWindow(now, total_files)
        self.window = window.roll(now, total_files)
        return delete_brake(actions, total_files, policy, self.window)

    def outside(self, scope: Collection[str] | None) -> list[Action]:
        """The queued actions a plan of only ``scope`` leaves as they are."""
        if scope is None:
            return []
        return [e.action for e in self.entries.values() if e.action.path not in scope]

    def update(
        self,
        actions: Sequence[Action],
        now: float,
        policy: Policy,
        brake: DeleteBrake,
        scope: Collection[str] | None = None,
    ) -> None:
        """Make the queue the current plan (minus rejections), auto-approving per policy.

        With ``scope``, ``actions`` plan only those paths: entries of other paths stay.
        """
        fresh: dict[str, Entry] = {}
        if scope is not None:
            fresh = {k: e for k, e in self.entries.items() if e.action.path not in scope}
        plan_ids = set()
        for a in actions:
            plan_ids.add(a.id)
            if a.id in self.rejected:
                continue
            old = self.entries.get(a.id)
            entry = replace(old, action=a) if old is not None else Entry(a, now)
            if entry.state is EntryState.PENDING and auto_approved(a, policy, brake):
                entry = replace(entry, state=EntryState.APPROVED)
                if a.kind in DELETE_KINDS:
                    window = self.window or DeleteWindow(now, brake.total)
                    self.window = replace(window, deleted=window.deleted | {a.path})
            fresh[a.id] = entry
        for key, old in self.entries.items():
            if old.state is EntryState.RUNNING and key not in fresh:
                fresh[key] = old
        self.entries = fresh
        if scope is None:
            # A rejection lasts while its facts do; only a whole plan tells which still do.
            self.rejected &= plan_ids
        self.save()

    def pending(self) -> list[Entry]:
        return sorted(
            (e for e in self.entries.values() if e.action.kind is not ActionKind.RECORD),
            key=lambda e: (e.queued_at, e.action.path),
        )

    def get(self, ids: Iterable[str]) -> list[Entry]:
        """Entries by id or unique id prefix (4+ characters); UnknownActionError otherwise."""
        found = []
        for i in ids:
            matches = [
                e for k, e in self.entries.items() if k == i or (len(i) >= 4 and k.startswith(i))
            ]
            if len(matches) != 1:
                raise UnknownActionError(f"no pending action has id {i!r}")
            found.append(matches[0])
        return found

    def approve(
        self,
        ids: Sequence[str] = (),
        *,
        all_: bool = False,
        kind: ActionKind | None = None,
        brake: DeleteBrake | None = None,
        resolution: Resolution | None = None,
    ) -> tuple[list[str], list[str]]:
        """Approve by id, or all (optionally of one kind). Returns (approved, held back).

        ``--all`` leaves deletions pending while the mass-delete brake is engaged, unless
        the deletion kind is named explicitly.
        """
        chosen = (
            self.get(ids)
            if ids
            else [e for e in self.pending() if kind is None or e.action.kind is kind]
        )
        if not ids and not all_:
            return [], []
        done, held = [], []
        for e in chosen:
            if (
                not ids
                and brake is not None
                and brake.engaged
                and kind is None
                and e.action.kind in DELETE_KINDS
            ):
                held.append(e.action.id)
                continue
            if e.state is EntryState.RUNNING or (not ids and e.state is EntryState.APPROVED):
                continue
            res = resolution or e.resolution
            if e.action.kind is ActionKind.CONFLICT and res is None:
                res = Resolution.BOTH
            self.entries[e.action.id] = replace(
                e, state=EntryState.APPROVED, resolution=res, error=None
            )
            done.append(e.action.id)
            if e.action.kind in DELETE_KINDS:
                self.window = None  # a person saw deletions go: count afresh from the next plan
        self.save()
        return done, held

    def reject(self, ids: Sequence[str]) -> list[str]:
        out = []
        for e in self.get(ids):
            if e.state is EntryState.RUNNING:
                continue
            self.rejected.add(e.action.id)
            del self.entries[e.action.id]
            out.append(e.action.id)
        self.save()
        return out

    def take_approved(self) -> list[tuple[Action, Resolution | None]]:
        batch = []
        for key, e in self.entries.items():
            if e.state is EntryState.APPROVED:
                self.entries[key] = replace(e, state=EntryState.RUNNING)
                batch.append((e.action, e.resolution))
        if batch:
            self.save()
        return batch

    def finish(self, action_id: str, ok: bool, stale: bool, message: str) -> None:
        """Record an outcome in memory; the caller saves once per batch (a crash before
        that only makes the finished actions come back for a re-plan, which drops them)."""
        e = self.entries.get(action_id)
        if e is None:
            return
        if ok or stale:
            del self.entries[action_id]  # stale ones come back from the re-plan
        else:
            self.entries[action_id] = replace(e, state=EntryState.FAILED, error=message)
