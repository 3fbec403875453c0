"""Carrying out approved actions, one file each, safely enough to be killed at any point.

- Downloads go to ``.S3/tmp``, are checked against the manifest's MD5, then renamed over
  the target only if the local file is still as planned.
- A remote delete first copies the object into ``.S3/deleted/<path>~<stamp>-<user>``
  (never over an earlier copy, never at a key the original package writes); a local
  delete moves the file into ``.S3/trash/``.
- An upload whose source changes while it is sent is not recorded.
- A conflict keeps both sides unless the user chose one; even then the losing side goes to
  the (remote or local) trash.

Each function returns an Outcome; the engine commits manifest rows and updates the base
only from outcomes that succeeded.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from s3syncd import localfs
from s3syncd.errors import (
    ChecksumMismatchError,
    PreconditionFailedError,
    RemoteNotFoundError,
    StaleActionError,
    SyncError,
    TransferError,
)
from s3syncd.model import Action, ActionKind, LocalFile, Resolution, Row
from s3syncd.reconcile import UNKNOWN_MD5
from s3syncd.remote.base import TRASH_PREFIX, ProgressCallback, Remote
from s3syncd.state import RowChange, StateDir

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    action: Action
    ok: bool
    message: str
    changes: tuple[RowChange, ...] = ()
    base: Mapping[str, str | None] = field(default_factory=dict)  # md5, or None to forget
    local: Mapping[str, LocalFile | None] = field(default_factory=dict)  # our own writes
    stale: bool = False
    # ETag of the object holding the ``base`` MD5, where the write told us (uploads).
    etags: Mapping[str, str] = field(default_factory=dict)
    # The remote object is not what the plan said (e.g. replaced under an unchanged row):
    # the engine looks at it again before the next plan.
    recheck: bool = False


@dataclass(frozen=True, slots=True)
class Context:
    state: StateDir
    remote: Remote
    user: str
    stamp: Callable[[], str]  # "YYYYmmdd-HHMMSS" in local time, for trash and conflict names
    known_rows: Mapping[str, Row]  # the last manifest we read, to restore lost rows verbatim
    progress: ProgressCallback | None = None
    # Set on shutdown: actions not yet started are abandoned (they stay approved).
    cancel: threading.Event | None = None
    # Whether the remote enforces upload preconditions (the start-up probe). If not, the
    # object an upload replaces is first copied into .S3/deleted/.
    conditional_writes: bool = True
    # path -> MD5 of our uploads whose rows still wait in the journal (failed commits).
    uncommitted: Mapping[str, str] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.state.datafolder


def run(ctx: Context, action: Action, resolution: Resolution | None = None) -> Outcome:
    """Carry out one action; errors become a failed Outcome, never an exception."""
    if ctx.cancel is not None and ctx.cancel.is_set():
        return Outcome(action, False, "not started: shutting down", stale=True)
    try:
        if action.kind is ActionKind.UPLOAD:
            out = _upload(ctx, action)
        elif action.kind is ActionKind.DOWNLOAD:
            out = _download(ctx, action)
        elif action.kind is ActionKind.DELETE_REMOTE:
            out = _delete_remote(ctx, action)
        elif action.kind is ActionKind.DELETE_LOCAL:
            out = _delete_local(ctx, action)
        elif action.kind is ActionKind.CONFLICT:
            out = _conflict(ctx, action, resolution or Resolution.BOTH)
        elif action.kind is ActionKind.MOVE:
            out = _move(ctx, action)
        else:
            out = _record(ctx, action)
    except StaleActionError as exc:
        log.info("action %s %s %s: stale: %s", action.id, action.kind.value, action.path, exc)
        return Outcome(action, False, exc.message, local=_reexamine(ctx, action), stale=True)
    except ChecksumMismatchError as exc:
        log.error("action %s %s %s failed: %s", action.id, action.kind.value, action.path, exc)
        return Outcome(action, False, exc.message, recheck=True)
    except SyncError as exc:
        log.error("action %s %s %s failed: %s", action.id, action.kind.value, action.path, exc)
        return Outcome(action, False, exc.message)
    except OSError as exc:
        log.error("action %s %s %s failed: %s", action.id, action.kind.value, action.path, exc)
        return Outcome(action, False, f"{action.path}: {exc.strerror or exc}")
    log.info("action %s %s %s: %s", action.id, action.kind.value, action.path, out.message)
    return out


def _reexamine(ctx: Context, action: Action) -> dict[str, LocalFile | None]:
    """The planned local file of a stale action, hashed afresh for the index.

    An edit that kept size and mtime is invisible to the index: without this, the same
    action would be planned, and refused, on every pass.
    """
    if action.local is None or action.kind is ActionKind.RECORD:
        return {}
    try:
        found, why = localfs.examine(ctx.root, action.path, {}, lambda _path: False)
    except OSError:
        return {}
    return {} if why is not None else {action.path: found}


def _row_for(ctx: Context, lf: LocalFile) -> Row:
    return Row(lf.path, ctx.user, localfs.time_edited(lf.mtime_ns / 1e9), lf.md5)


def _send(
    ctx: Context, action: Action, lf: LocalFile, keep_copy: bool = False
) -> tuple[RowChange, LocalFile, dict[str, str]]:
    """Upload ``lf`` over the remote version ``action`` was planned from, and nothing else.

    Planned absent: create-only. Planned over a known object: that object, named by its
    ETag, is the only one the upload may replace. A refusal is a re-plan, never an
    overwrite. ``keep_copy`` first copies the replaced object into the remote trash.
    Also returns the new object's ETag where it names exactly the content we hashed.
    """
    localfs.check_unchanged(ctx.root, lf.path, lf)
    if_match, create_only = _replacing(ctx, action)
    replacing = not create_only
    if not ctx.conditional_writes:
        # Nothing stops a colleague's write landing after our check: keep what we replace.
        if_match, create_only = None, False
        keep_copy = keep_copy or replacing
    if keep_copy and replacing:
        trash_key(ctx, lf.path)  # the replaced version stays recoverable
    try:
        sent = ctx.remote.upload(
            ctx.root / lf.path,
            lf.path,
            lf.md5,
            ctx.progress,
            if_match=if_match,
            create_only=create_only,
        )
    except PreconditionFailedError:
        raise StaleActionError(
            f"{lf.path} changed on the remote since the action was planned; not replaced"
        ) from None
    try:
        localfs.check_unchanged(ctx.root, lf.path, lf)
    except StaleActionError:
        # The file changed around the upload. Record it only if the platform vouches that
        # the bytes it stored are exactly the version we hashed (sent.md5 is verified,
        # None when it cannot tell); the newer save is then simply the next upload.
        if sent.md5 != lf.md5:
            raise StaleActionError(f"{lf.path} changed while uploading; not recorded") from None
    # The ETag names the agreed version only if the stored bytes are the ones we hashed.
    etags = {lf.path: sent.etag} if sent.etag and sent.md5 == lf.md5 else {}
    return RowChange(lf.path, _row_for(ctx, lf)), lf, etags


def _replacing(ctx: Context, action: Action) -> tuple[str | None, bool]:
    """(if_match ETag, create_only) naming the remote version ``action`` was planned over.

    A HEAD right before the upload: if the object is no longer that version, the action
    is stale. An object whose MD5 nobody recorded (an old client's multipart upload) can
    only be named by the ETag seen now.
    """
    path = action.path
    own = ctx.uncommitted.get(path)
    if action.remote_md5 is None and own is None:
        # The server enforces create-only itself; without it, a HEAD is the best we have.
        if not ctx.conditional_writes and ctx.remote.stat(path) is not None:
            raise StaleActionError(f"{path} appeared on the remote since the action was planned")
        return None, True
    current = ctx.remote.stat(path)
    if current is None:
        raise StaleActionError(f"{path} was deleted on the remote since the action was planned")
    if own is not None and current.md5 == own:
        # Our own upload whose row still waits in the journal (a failed commit): the
        # manifest does not show it yet, but it is the version this edit follows.
        return current.etag or None, False
    planned = action.remote_md5
    if planned is None:
        raise StaleActionError(f"{path} appeared on the remote since the action was planned")
    if planned != UNKNOWN_MD5 and current.md5 is not None and current.md5 != planned:
        raise StaleActionError(f"{path} changed on the remote since the action was planned")
    return current.etag or None, False


def _upload(ctx: Context, action: Action) -> Outcome:
    assert action.local is not None
    change, lf, etags = _send(ctx, action, action.local)
    return Outcome(action, True, "uploaded", (change,), {lf.path: lf.md5}, etags=etags)


def _fetch(ctx: Context, action: Action) -> tuple[Path, str]:
    """Download the remote version of ``action.path`` into ``.S3/tmp``, verified.

    Returns (temp file, MD5); the caller installs it and removes the temp file.
    """
    tmp = ctx.state.tmp / f"{uuid.uuid4().hex}.part"
    ctx.state.tmp.mkdir(parents=True, exist_ok=True)
    try:
        # Hashed while written where the platform can: reading each file back doubled
        # the disk reads of a bulk download.
        digest = ctx.remote.download(action.path, tmp, ctx.progress) or localfs.md5_file(tmp)
        want = action.remote_md5
        # The row vouches too: ``want`` may come from an ETag that is not an MD5 (SSE-KMS).
        vouched = action.remote is not None and digest == action.remote.checksum
        if want not in (None, UNKNOWN_MD5) and digest != want and not vouched:
            raise ChecksumMismatchError(
                f"{action.path}: downloaded MD5 {digest} does not match the manifest's {want}"
            )
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, digest


def _install(
    ctx: Context, action: Action, fetched: tuple[Path, str], expected_local: LocalFile | None
) -> LocalFile:
    tmp, digest = fetched
    try:
        mtime = localfs.parse_time_edited(action.remote.time_edited) if action.remote else None
        return localfs.install(
            ctx.root,
            action.path,
            tmp,
            digest,
            expected_local,
            mtime,
            trash=ctx.state.trash,
            stamp=ctx.stamp(),
        )
    finally:
        tmp.unlink(missing_ok=True)


def _download(ctx: Context, action: Action) -> Outcome:
    lf = _install(ctx, action, _fetch(ctx, action), action.local)
    changes: tuple[RowChange, ...] = ()
    if action.remote is None or action.remote.checksum != lf.md5:
        # An object nobody catalogued (or whose row is stale): record what it really is,
        # so old clients see it too.
        by = action.remote.edited_by if action.remote else "unknown"
        row = Row(lf.path, by, localfs.time_edited(lf.mtime_ns / 1e9), lf.md5)
        changes = (RowChange(lf.path, row),)
    return Outcome(action, True, "downloaded", changes, {lf.path: lf.md5}, {lf.path: lf})


def trash_key(ctx: Context, path: str, source_etag: str | None = None) -> str:
    """Copy the object into ``.S3/deleted/<path>~<YYYYmmdd-HHMMSS>-<user>`` (``-2``, ``-3``
    ... beside an earlier copy) and return the key.

    Always suffixed: the original package writes ``.S3/deleted/<basename>`` blindly, so an
    unsuffixed key could be overwritten by an old client's later delete. With
    ``source_etag``, only that version is copied (StaleActionError otherwise).
    """
    stem = f"{TRASH_PREFIX}{path}~{ctx.stamp()}-{_safe_user(ctx.user)}"
    for key in [stem] + [f"{stem}-{n}" for n in range(2, 100)]:
        try:
            ctx.remote.copy(path, key, source_etag=source_etag)
        except PreconditionFailedError:
            if source_etag is not None and not _has_version(ctx, path, source_etag):
                raise StaleActionError(
                    f"{path} changed on the remote since the action was planned"
                ) from None
            continue
        return key
    raise TransferError(f"{path}: could not find a free name under {TRASH_PREFIX}")


def _has_version(ctx: Context, path: str, etag: str) -> bool:
    current = ctx.remote.stat(path)
    return current is not None and current.etag == etag.strip('"')


def _safe_user(user: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in user) or "user"


def _remove_remote(ctx: Context, action: Action) -> RowChange:
    """Copy the object into the remote trash, then delete it, if it is still the version
    ``action`` was planned from (a colleague's newer version is a re-plan, not a delete)."""
    path = action.path
    if action.remote_md5 is None:
        key: str | None = trash_key(ctx, path)
        ctx.remote.delete(path)
    else:
        current = ctx.remote.stat(path)
        if current is None:
            key = None  # gone already: only the row is left to drop
        else:
            planned = action.remote_md5
            if planned != UNKNOWN_MD5 and current.md5 is not None and current.md5 != planned:
                raise StaleActionError(f"{path} changed on the remote since the action was planned")
            key = trash_key(ctx, path)
            try:
                ctx.remote.delete(path, if_match=current.etag or None)
            except PreconditionFailedError:
                raise StaleActionError(
                    f"{path} changed on the remote since the action was planned; not deleted"
                ) from None
    tomb = action.remote or Row(
        action.path, ctx.user, localfs.time_edited(0), action.base_md5 or ""
    )
    if key is not None:
        log.info("%s: remote copy kept at %s", path, key)
    return RowChange(action.path, None, tomb if tomb.checksum else None)


def _delete_remote(ctx: Context, action: Action) -> Outcome:
    localfs.check_unchanged(ctx.root, action.path, None)
    change = _remove_remote(ctx, action)
    return Outcome(
        action,
        True,
        "deleted on remote (copy kept in .S3/deleted/)",
        (change,),
        {action.path: None},
    )


def _delete_local(ctx: Context, action: Action) -> Outcome:
    localfs.check_unchanged(ctx.root, action.path, action.local)
    dest = localfs.move_to_trash(ctx.root, action.path, ctx.state.trash, ctx.stamp())
    return Outcome(
        action,
        True,
        f"moved to {dest.relative_to(ctx.root)}",
        (),
        {action.path: None},
        {action.path: None},
    )


def _move(ctx: Context, action: Action) -> Outcome:
    """A local rename, done on the remote without sending a byte: a server-side copy of
    the old name's object to the new name, then the old name's soft delete (trash copy,
    conditional delete, tombstone), as an upload plus a remote delete would leave it.

    Both copies and the delete name the old object's ETag, and the new name is created
    only if absent: any change on either name since planning makes the move stale.
    """
    src, lf = action.source, action.local
    assert src is not None and lf is not None
    localfs.check_unchanged(ctx.root, lf.path, lf)
    localfs.check_unchanged(ctx.root, src.path, None)
    etag = src.etag
    if etag is None:
        # No listing named the version (e.g. our own upload this session): a HEAD does.
        current = ctx.remote.stat(src.path)
        if current is None or current.md5 != src.row.checksum or not current.etag:
            raise StaleActionError(f"{src.path} changed on the remote since the move was planned")
        etag = current.etag
    try:
        ctx.remote.copy(src.path, lf.path, source_etag=etag)
    except PreconditionFailedError:
        raise StaleActionError(
            f"{lf.path} appeared or {src.path} changed on the remote since the move was "
            "planned; nothing moved"
        ) from None
    except RemoteNotFoundError:
        raise StaleActionError(
            f"{src.path} was deleted on the remote since the move was planned; nothing moved"
        ) from None
    # From here the new name holds the content. Should the soft delete be refused, the
    # next plan restores its row (it matches the local file) and re-plans the old name.
    key = trash_key(ctx, src.path, source_etag=etag)
    try:
        ctx.remote.delete(src.path, if_match=etag)
    except PreconditionFailedError:
        raise StaleActionError(
            f"{src.path} changed on the remote since the move was planned; not deleted"
        ) from None
    log.info("%s: remote copy kept at %s", src.path, key)
    return Outcome(
        action,
        True,
        f"moved from {src.path} on the remote (copy kept in .S3/deleted/)",
        (RowChange(lf.path, _row_for(ctx, lf)), RowChange(src.path, None, src.row)),
        {lf.path: lf.md5, src.path: None},
    )


def _conflict(ctx: Context, action: Action, resolution: Resolution) -> Outcome:
    lf, path = action.local, action.path
    has_remote = action.remote_md5 is not None
    if resolution is Resolution.LOCAL or (resolution is Resolution.BOTH and not has_remote):
        if lf is None:
            change = _remove_remote(ctx, action)
            return Outcome(
                action, True, "kept local (deleted on remote, copy kept)", (change,), {path: None}
            )
        change, sent, etags = _send(ctx, action, lf, keep_copy=has_remote)
        return Outcome(
            action, True, "kept local (uploaded)", (change,), {path: sent.md5}, etags=etags
        )
    if resolution is Resolution.REMOTE:
        local_updates: dict[str, LocalFile | None] = {}
        fetched = _fetch(ctx, action) if has_remote else None
        try:
            if lf is not None:
                localfs.check_unchanged(ctx.root, path, lf)
                localfs.move_to_trash(ctx.root, path, ctx.state.trash, ctx.stamp())
                local_updates[path] = None
        except BaseException:
            if fetched is not None:
                fetched[0].unlink(missing_ok=True)
            raise
        if fetched is None:
            return Outcome(
                action, True, "kept remote (local moved to trash)", (), {path: None}, local_updates
            )
        got = _install(ctx, action, fetched, None)
        return Outcome(action, True, "kept remote (downloaded)", (), {path: got.md5}, {path: got})
    # BOTH, with a remote version: download and verify it first; only then does the local
    # one step aside under a conflict name (a failed download leaves it at its name).
    fetched = _fetch(ctx, action)
    updates: dict[str, LocalFile | None] = {}
    message = "kept both"
    try:
        if lf is not None:
            localfs.check_unchanged(ctx.root, path, lf)
            aside = localfs.rename_aside(
                ctx.root, path, localfs.conflict_name(path, ctx.user, ctx.stamp())
            )
            updates[path] = None
            message = f"kept both: local copy renamed to {aside}"
    except BaseException:
        fetched[0].unlink(missing_ok=True)
        raise
    got = _install(ctx, action, fetched, None)
    updates[path] = got
    return Outcome(action, True, message, (), {path: got.md5}, updates)


def _record(ctx: Context, action: Action) -> Outcome:
    path = action.path
    if action.local is None:
        # Row whose object is gone and which we do not have: drop it, keep a tombstone.
        return Outcome(
            action,
            True,
            "dropped row of a vanished object",
            (RowChange(path, None, action.remote),),
            {path: None},
        )
    lf = action.local
    known = ctx.known_rows.get(path)
    row = known if known and known.checksum == lf.md5 else _row_for(ctx, lf)
    return Outcome(action, True, "restored manifest row", (RowChange(path, row),), {path: lf.md5})
