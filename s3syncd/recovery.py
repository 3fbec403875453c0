"""What can be brought back, and bringing it back: ``s3syncctl trash`` and ``restore``.

Three places keep deleted or replaced versions:

- the remote trash ``.S3/deleted/``: ours are ``<path>~<YYYYmmdd-HHMMSS>-<user>[-n]`` (see
  ``executor.trash_key``), the original package's are ``<basename>`` (who and when then come
  from the tombstone in ``deletedS3.csv`` whose name matches, where one does);
- the local trash ``.S3/trash/<YYYYmmdd-HHMMSS>/<path>`` (see ``localfs.move_to_trash``);
- object versions, where the bucket has versioning on: the versions under a delete marker.

A restore writes the content as a new local file, atomically and never over an existing one
(beside it, as ``name.restored-<stamp>.ext``, unless forced; then the file it replaces goes
to the local trash first). It is not uploaded here: the watcher sees a new file and it waits
for approval like any other change.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3syncd import localfs
from s3syncd.errors import RemoteError, SyncError, TransferError, UnsafePathError
from s3syncd.model import TIME_FORMAT, Row, path_problem, tagged_name, validate_rel_path
from s3syncd.remote.base import TRASH_PREFIX, Remote

log = logging.getLogger(__name__)

# user may itself contain '-': a trailing -<digits> is read as the collision counter.
_OUR_TRASH = re.compile(r"^(?P<path>.+)~(?P<stamp>\d{8}-\d{6})-(?P<user>.+?)(?:-(?P<n>\d+))?$")
_STAMP = "%Y%m%d-%H%M%S"


class Origin(enum.Enum):
    REMOTE_TRASH = "remote-trash"
    LOCAL_TRASH = "local-trash"
    VERSION = "version"


@dataclass(frozen=True, slots=True)
class Recoverable:
    """One version that can be restored. ``ref`` is the remote key, or the file's path
    relative to the local trash folder; ``version_id`` is set for an object version."""

    path: str
    origin: Origin
    ref: str
    size: int
    deleted_by: str  # "" when unknown
    deleted_at: float | None  # POSIX time; None when unknown
    version_id: str = ""

    def to_json(self, number: int | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "path": self.path,
            "origin": self.origin.value,
            "ref": self.ref,
            "size": self.size,
            "deleted_by": self.deleted_by,
            "deleted_at": _local(self.deleted_at),
            "version_id": self.version_id,
        }
        if number is not None:
            data["version"] = number
        return data


def _local(ts: float | None) -> str | None:
    return None if ts is None else time.strftime(TIME_FORMAT, time.localtime(ts))


def _stamp_time(stamp: str) -> float | None:
    try:
        return time.mktime(time.strptime(stamp, _STAMP))  # stamps are in local time
    except (ValueError, OverflowError):
        return None


def parse_trash_key(key: str) -> tuple[str, str, float | None]:
    """``(path, deleted_by, deleted_at)`` of a key under ``.S3/deleted/``.

    A key of the original package (no ``~stamp-user`` tag) is its basename, with no who
    or when.
    """
    rest = key[len(TRASH_PREFIX) :] if key.startswith(TRASH_PREFIX) else key
    m = _OUR_TRASH.match(rest)
    if m is None:
        return rest, "", None
    return m["path"], m["user"], _stamp_time(m["stamp"])


def remote_trash(remote: Remote, tombstones: Mapping[str, Row]) -> list[Recoverable]:
    found = []
    by_name: dict[str, Row] = {}
    for row in tombstones.values():
        by_name.setdefault(row.path.rsplit("/", 1)[-1], row)
    for key, obj in remote.list(TRASH_PREFIX).items():
        path, user, when = parse_trash_key(key)
        if not user and (tomb := by_name.get(path)) is not None:
            # The original's copy: its tombstone is the best account of it.
            user, when = tomb.edited_by, localfs.parse_time_edited(tomb.time_edited)
        found.append(Recoverable(path, Origin.REMOTE_TRASH, key, obj.size, user, when))
    return found


def local_trash(trash: Path) -> list[Recoverable]:
    found: list[Recoverable] = []
    if not trash.is_dir():
        return found
    for stamp_dir in sorted(trash.iterdir()):
        if not stamp_dir.is_dir() or stamp_dir.is_symlink():
            continue
        when = _stamp_time(stamp_dir.name)
        for root, dirs, files in os.walk(stamp_dir):
            dirs[:] = [d for d in dirs if not Path(root, d).is_symlink()]
            for name in files:
                full = Path(root, name)
                if full.is_symlink():
                    continue
                try:
                    size = full.stat().st_size
                except OSError:
                    continue  # emptied by the user meanwhile
                rel = full.relative_to(stamp_dir).as_posix()
                ref = full.relative_to(trash).as_posix()
                found.append(Recoverable(rel, Origin.LOCAL_TRASH, ref, size, "", when))
    return found


def object_versions(remote: Remote, path: str | None = None) -> list[Recoverable]:
    """Versions that are not current: all older ones of ``path``, or (``path`` None) those
    of every object whose latest version is a delete marker."""
    versions = remote.list_versions(path or "")
    if path is not None:
        versions = tuple(v for v in versions if v.key == path)
    latest_marker = {v.key: v.modified for v in versions if v.latest and v.delete_marker}
    found = []
    for v in versions:
        if v.delete_marker or v.latest:
            continue
        if path is None and v.key not in latest_marker:
            continue
        when = latest_marker.get(v.key, v.modified)
        found.append(Recoverable(v.key, Origin.VERSION, v.key, v.size, "", when, v.version_id))
    return found


def catalogue(
    remote: Remote,
    trash: Path,
    tombstones: Mapping[str, Row],
    path: str | None = None,
) -> list[Recoverable]:
    """Everything recoverable (of ``path`` only, if given), by path, newest first."""
    items = [*remote_trash(remote, tombstones), *local_trash(trash)]
    if path is not None:
        items = [i for i in items if i.path == path]
    try:
        items += object_versions(remote, path)
    except RemoteError as exc:
        # A user may read the bucket without the right to list versions: the trash
        # copies are still worth showing.
        log.warning("object versions not listed: %s", exc)
    return sorted(items, key=lambda i: (i.path, -(i.deleted_at or 0.0), i.origin.value, i.ref))


def numbered(items: Iterable[Recoverable]) -> list[tuple[int, Recoverable]]:
    """Each item with its number among the versions of its path (1 = newest), the N of
    ``restore PATH --version N``."""
    out = []
    counts: dict[str, int] = {}
    for item in items:
        counts[item.path] = counts.get(item.path, 0) + 1
        out.append((counts[item.path], item))
    return out


def pick(items: list[Recoverable], path: str, number: int) -> Recoverable:
    mine = [i for i in items if i.path == path]
    if not mine:
        raise SyncError(f"nothing to restore for {path}; see 's3syncctl trash'")
    if not 1 <= number <= len(mine):
        raise SyncError(f"{path} has {len(mine)} restorable version(s); --version 1..{len(mine)}")
    return mine[number - 1]


def restore(
    item: Recoverable,
    remote: Remote,
    root: Path,
    state_tmp: Path,
    trash: Path,
    dest: str,
    *,
    force: bool,
    stamp: str,
) -> str:
    """Write ``item`` into the data folder ``root`` at ``dest`` (beside it if taken, or over
    it with ``force``, the old file going to the trash); returns the path written."""
    validate_rel_path(dest)
    state_tmp.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="restore-", dir=state_tmp)
    os.close(fd)
    tmp = Path(name)
    try:
        _fetch(item, remote, trash, tmp)
        md5 = localfs.md5_file(tmp)
        target = dest
        if os.path.lexists(root / dest):
            if force:
                moved = localfs.move_to_trash(root, dest, trash, stamp)
                log.info("restore: moved the existing %s to %s", dest, moved)
            else:
                free = localfs.unique_path(root / tagged_name(dest, f"restored-{stamp}"))
                target = free.relative_to(root).as_posix()
                if (problem := path_problem(target)) is not None:
                    raise UnsafePathError(f"cannot restore beside {dest}: {problem}")
        # expected=None: created with link semantics, so a file that appeared meanwhile is
        # never replaced (that is a StaleActionError, and the user may simply retry).
        localfs.install(root, target, tmp, md5, None, None)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    log.info("restored %s (%s %s) as %s", item.path, item.origin.value, item.ref, target)
    return target


def _fetch(item: Recoverable, remote: Remote, trash: Path, tmp: Path) -> None:
    if item.origin is Origin.REMOTE_TRASH:
        remote.download(item.ref, tmp)
    elif item.origin is Origin.VERSION:
        remote.download_version(item.ref, item.version_id, tmp)
    else:
        src = trash / item.ref
        if not src.resolve().is_relative_to(trash.resolve()):
            raise UnsafePathError(f"{item.ref} is not inside the local trash")
        try:
            shutil.copyfile(src, tmp)  # a copy: the trash keeps its version
        except OSError as exc:
            raise TransferError(f"cannot read {src}: {exc.strerror or exc}") from exc
