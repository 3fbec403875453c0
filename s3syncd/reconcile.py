"""Three-way reconcile: base x local x remote -> actions. Pure: no clock, no I/O.

For every path the base is the last content both sides agreed on. A side "changed" when
its content differs from the base. Timestamps from two machines are never compared.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from s3syncd.model import Action, ActionKind, LocalFile, MoveSource, Plan, RemoteView, Row

# Stands for the content of an object whose MD5 is unknown (multipart ETag, no row):
# it equals nothing, so it is always "changed".
UNKNOWN_MD5 = "?"


class RemoteKind(enum.Enum):
    PRESENT = "present"  # a manifest row (and the object, as far as we know)
    ORPHAN = "orphan"  # an object with no row: a row lost to a blind write, or a bypass
    STALE = "stale"  # a row whose checksum the listed object contradicts (blind write)
    GONE = "gone"  # deleted, with evidence: a tombstone, or the object missing in a listing
    UNKNOWN = "unknown"  # no row and no evidence either way (no listing this time)


@dataclass(frozen=True, slots=True)
class RemoteSide:
    kind: RemoteKind
    md5: str | None
    row: Row | None
    size: int | None


def remote_side(path: str, view: RemoteView) -> RemoteSide:
    """Classify what the remote says of ``path``."""
    row = view.rows.get(path)
    obj = view.objects.get(path) if view.objects is not None else None
    size = obj.size if obj else None
    if row is not None:
        if view.objects is not None and obj is None:
            return RemoteSide(RemoteKind.GONE, None, row, None)
        if obj is not None and obj.md5 is not None and obj.md5 != row.checksum:
            # An old client rewrote the manifest from a stale copy: the object is the truth.
            return RemoteSide(RemoteKind.STALE, obj.md5, row, size)
        return RemoteSide(RemoteKind.PRESENT, row.checksum, row, size)
    if obj is not None:
        return RemoteSide(RemoteKind.ORPHAN, obj.md5 or UNKNOWN_MD5, None, size)
    if path in view.tombstones or view.objects is not None:
        return RemoteSide(RemoteKind.GONE, None, view.tombstones.get(path), None)
    return RemoteSide(RemoteKind.UNKNOWN, None, None, None)


def reconcile(
    base: Mapping[str, str],
    local: Mapping[str, LocalFile],
    remote: RemoteView,
    user: str,
) -> Plan:
    """Plan the actions that bring both sides to the same content.

    ``base`` maps path -> MD5 last agreed; ``local`` is the current scan; ``user`` is this
    machine's editor name (used only in reasons and restored rows).
    """
    paths = set(base) | set(local) | set(remote.rows)
    if remote.objects is not None:
        paths |= set(remote.objects)
    actions: list[Action] = []
    agreed: dict[str, str] = {}
    forget: set[str] = set()
    for path in sorted(paths):
        side = remote_side(path, remote)
        lf = local.get(path)
        b = base.get(path)
        decided = _decide(path, b, lf, side, remote.etag)
        if isinstance(decided, Action):
            actions.append(decided)
        elif decided is _AGREE:
            assert lf is not None
            agreed[path] = lf.md5
            if side.kind is RemoteKind.ORPHAN:
                actions.append(_record(path, b, lf, side, remote.etag, "restore lost row"))
            elif side.kind is RemoteKind.STALE:
                actions.append(_record(path, b, lf, side, remote.etag, "correct stale row"))
        elif decided is _FORGET:
            if b is not None:
                forget.add(path)
            if side.kind is RemoteKind.GONE and path in remote.rows:
                actions.append(_record(path, b, lf, side, remote.etag, "object gone; drop row"))
    return Plan(actions=tuple(pair_moves(actions, remote)), agreed=agreed, forget=frozenset(forget))


class _Outcome(enum.Enum):
    AGREE = "agree"
    FORGET = "forget"
    SKIP = "skip"


_AGREE = _Outcome.AGREE
_FORGET = _Outcome.FORGET
_SKIP = _Outcome.SKIP


def _decide(
    path: str, b: str | None, lf: LocalFile | None, side: RemoteSide, etag: str | None
) -> Action | _Outcome:
    l_md5 = lf.md5 if lf else None
    r_md5 = side.md5
    if side.kind is RemoteKind.UNKNOWN and b is not None:
        # The row vanished without a tombstone and we have no listing to tell a blind
        # overwrite by an old client from a delete: do nothing until we know.
        return _SKIP
    if l_md5 is not None and l_md5 == r_md5:
        return _AGREE
    if l_md5 is None and r_md5 is None:
        return _FORGET

    def make(kind: ActionKind, reason: str) -> Action:
        return Action(
            kind=kind,
            path=path,
            reason=reason,
            local=lf,
            remote=side.row,
            remote_md5=r_md5,
            base_md5=b,
            manifest_etag=etag,
            remote_size=side.size,
        )

    by = f" by {side.row.edited_by}" if side.row and side.row.edited_by else ""
    if b is None:
        if r_md5 is None:
            if side.kind is RemoteKind.GONE and side.row is not None:
                return make(ActionKind.UPLOAD, f"new local file (was deleted on remote{by})")
            return make(ActionKind.UPLOAD, "new local file")
        if l_md5 is None:
            return make(ActionKind.DOWNLOAD, f"new on remote{by}")
        return make(ActionKind.CONFLICT, "both sides have different content and no common version")
    local_changed = l_md5 != b
    remote_changed = r_md5 != b
    if remote_changed and not local_changed:
        if r_md5 is None:
            return make(ActionKind.DELETE_LOCAL, f"deleted on remote{by}")
        return make(ActionKind.DOWNLOAD, f"changed on remote{by}")
    if local_changed and not remote_changed:
        if l_md5 is None:
            return make(ActionKind.DELETE_REMOTE, "deleted locally")
        return make(ActionKind.UPLOAD, "changed locally")
    if l_md5 is None:
        return make(ActionKind.CONFLICT, f"deleted locally, changed on remote{by}")
    if r_md5 is None:
        return make(ActionKind.CONFLICT, f"changed locally, deleted on remote{by}")
    return make(ActionKind.CONFLICT, f"changed locally and on remote{by}")


def _record(
    path: str, b: str | None, lf: LocalFile | None, side: RemoteSide, etag: str | None, why: str
) -> Action:
    return Action(
        kind=ActionKind.RECORD,
        path=path,
        reason=why,
        local=lf,
        remote=side.row,
        remote_md5=side.md5,
        base_md5=b,
        manifest_etag=etag,
        remote_size=side.size,
    )


def pair_moves(actions: list[Action], remote: RemoteView) -> list[Action]:
    """Turn a remote delete and an upload of the same content into one move.

    A local rename shows up as "deleted locally" at the old name and "new local file" at
    the new one. Paired only when the server-side copy is sure to carry exactly the
    content the upload would: the old name unchanged locally (deleted) and on the remote
    (its row and its listed object both still the base version, of the same size where
    the listing knows it), the new name
    new on both sides (no base, no row, no object). Without a listing nothing vouches for
    the object, so nothing is paired. Several candidates with one content are paired in
    (name, path) order, so a renamed folder of identical files pairs ``a/x`` with ``b/x``;
    any pairing moves the same bytes, and the leftovers stay uploads and deletes.
    """
    if remote.objects is None:
        return actions
    sources: dict[str, list[tuple[Action, MoveSource, int]]] = {}
    targets: dict[str, list[Action]] = {}
    for a in actions:
        if (found := _move_source(a, remote)) is not None:
            sources.setdefault(found[0].row.checksum, []).append((a, *found))
        elif (md5 := _move_target(a)) is not None:
            targets.setdefault(md5, []).append(a)
    moves: dict[str, Action] = {}  # by the new path
    paired: set[str] = set()  # old paths
    for md5, dests in targets.items():
        olds = sorted(sources.get(md5, []), key=lambda s: _pair_order(s[0].path))
        for dest in sorted(dests, key=lambda d: _pair_order(d.path)):
            assert dest.local is not None
            size = dest.local.size
            # A size of -1 is an object we wrote this session, listed without one.
            match = next((s for s in olds if s[2] in (size, -1)), None)
            if match is None:
                continue  # the extra copies stay uploads
            olds.remove(match)
            old, src, _ = match
            moves[dest.path] = Action(
                kind=ActionKind.MOVE,
                path=dest.path,
                reason=f"moved from {old.path}",
                local=dest.local,
                remote=dest.remote,
                remote_md5=None,
                base_md5=None,
                manifest_etag=dest.manifest_etag,
                remote_size=None,
                source=src,
            )
            paired.add(old.path)
    if not moves:
        return actions
    return [
        moves.get(a.path, a)
        for a in actions
        if not (a.kind is ActionKind.DELETE_REMOTE and a.path in paired)
    ]


def _pair_order(path: str) -> tuple[str, str]:
    return path.rpartition("/")[2], path


def _move_source(a: Action, remote: RemoteView) -> tuple[MoveSource, int] | None:
    """(source, listed size) if ``a`` deletes an unchanged remote version of a file
    deleted locally; None otherwise."""
    if a.kind is not ActionKind.DELETE_REMOTE or a.local is not None or a.base_md5 is None:
        return None
    obj = remote.objects.get(a.path) if remote.objects is not None else None
    row = a.remote
    if obj is None or row is None or a.remote_md5 != a.base_md5:
        return None
    if row.checksum != a.base_md5 or obj.md5 != a.base_md5:
        return None
    return MoveSource(a.path, row, obj.etag or None), obj.size


def _move_target(a: Action) -> str | None:
    """The MD5 if ``a`` uploads a file new on both sides; None otherwise."""
    if a.kind is not ActionKind.UPLOAD or a.local is None:
        return None
    if a.base_md5 is not None or a.remote_md5 is not None:
        return None
    return a.local.md5
