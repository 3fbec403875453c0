"""The local side: scanning and hashing the data folder, and applying changes to it.

Scanning takes ``lstat``/``scandir`` as parameters so tests can hand in others. Every
change to a user file is a rename within the data folder's filesystem, so an interrupted
sync leaves each file either old or new.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from s3syncd.errors import StaleActionError, SymlinkInPathError, TransferError
from s3syncd.model import (
    STATE_DIR,
    TIME_FORMAT,
    LocalFile,
    fit_name,
    is_legacy_excluded,
    path_problem,
    tagged_name,
)

log = logging.getLogger(__name__)

CHUNK = 1 << 20

IgnoreFn = Callable[[str], bool]
StatFn = Callable[[str], os.stat_result]


def md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def time_edited(mtime: float) -> str:
    """The legacy ``Time Edited``: the mtime in this machine's local time, to the second."""
    return time.strftime(TIME_FORMAT, time.localtime(mtime))


def parse_time_edited(text: str) -> float | None:
    try:
        return time.mktime(time.strptime(text, TIME_FORMAT))
    except (ValueError, OverflowError):
        return None


@dataclass(slots=True)
class ScanResult:
    files: dict[str, LocalFile]
    skipped: dict[str, str] = field(default_factory=dict)  # path -> why
    hashed: int = 0


def _walk(
    root: Path,
    rel: str,
    scandir: Callable[[str], Iterator[os.DirEntry[str]]],
    unlisted: dict[str, str],
) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Files below ``rel``; folders that cannot be listed go into ``unlisted`` (path -> why),
    so their files are not mistaken for deleted ones."""
    try:
        entries = list(scandir(str(root / rel) if rel else str(root)))
    except OSError as exc:
        log.warning("cannot list %s: %s", root / rel, exc.strerror)
        unlisted[rel] = f"cannot list folder: {exc.strerror or exc}"
        return
    for entry in entries:
        child = f"{rel}/{entry.name}" if rel else entry.name
        if not rel and entry.name == STATE_DIR:
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(root, child, scandir, unlisted)
            else:
                yield child, entry
        except OSError:
            continue


def examine(
    root: Path,
    rel: str,
    index: Mapping[str, LocalFile],
    ignored: IgnoreFn,
    lstat: StatFn = os.lstat,
) -> tuple[LocalFile | None, str | None]:
    """Stat (and hash if needed) one path: (file, None), or (None, why skipped / None if absent)."""
    if is_legacy_excluded(rel):
        return None, "name contains '.S3', which the original package cannot sync"
    if ignored(rel):
        return None, "ignored"
    # The manifest reader's rule: a name it would refuse must never be uploaded (the
    # next pass would then take the refused row for a remote delete).
    problem = path_problem(rel)
    if problem is not None:
        return None, f"unsafe name, not synced: {problem}"
    full = root / rel
    try:
        st = lstat(str(full))
    except (FileNotFoundError, NotADirectoryError):
        return None, None  # NotADirectory: a folder on the way became a file
    except OSError as exc:
        return None, f"cannot stat: {exc.strerror}"
    if stat.S_ISLNK(st.st_mode):
        return None, "symbolic link (not synced)"
    if not stat.S_ISREG(st.st_mode):
        # Present but unreadable as a file: not absent, or it would be proposed as a delete.
        return None, f"not a regular file ({_special_kind(st.st_mode)}); not synced"
    cached = index.get(rel)
    if cached and cached.size == st.st_size and cached.mtime_ns == st.st_mtime_ns:
        return cached, None
    try:
        digest = md5_file(full)
        after = lstat(str(full))
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot read: {exc.strerror}"
    if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
        return None, "changing while being read; will retry"
    # Interned: shared with the base, the manifest and the listing (memory per file).
    return LocalFile(sys.intern(rel), st.st_size, st.st_mtime_ns, sys.intern(digest)), None


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISDIR(mode):
        return "folder"
    return "special file"


def scan(
    root: Path,
    index: Mapping[str, LocalFile],
    ignored: IgnoreFn,
    lstat: StatFn = os.lstat,
    scandir: Callable[[str], Iterator[os.DirEntry[str]]] = os.scandir,
) -> ScanResult:
    """Every regular file under ``root`` except ``.S3/``, reusing cached MD5s."""
    result = ScanResult(files={})
    for rel, _entry in _walk(root, "", scandir, result.skipped):
        found, why = examine(root, rel, index, ignored, lstat)
        if found is not None:
            if index.get(rel) is not found:
                result.hashed += 1
            result.files[rel] = found
        elif why and why != "ignored":
            result.skipped[rel] = why
    return result


def rescan_paths(
    root: Path,
    paths: Iterable[str],
    files: Mapping[str, LocalFile],
    ignored: IgnoreFn,
) -> tuple[dict[str, LocalFile], dict[str, str]]:
    """Re-examine ``paths`` and return the whole updated table (see :func:`rescan_delta`)."""
    delta, skipped = rescan_delta(
        root, paths, files, ignored, lambda rel: [p for p in files if p.startswith(rel + "/")]
    )
    out = dict(files)
    for path, found in delta.items():
        if found is None:
            out.pop(path, None)
        else:
            out[path] = found
    return out, skipped


def rescan_delta(
    root: Path,
    paths: Iterable[str],
    files: Mapping[str, LocalFile],
    ignored: IgnoreFn,
    below: Callable[[str], Iterable[str]],
) -> tuple[dict[str, LocalFile | None], dict[str, str]]:
    """Re-examine ``paths`` (files or folders, relative): only the entries that changed
    (None: gone) and the paths skipped, in O(paths) — not a copy of the whole table.

    ``below(rel)`` lists the indexed paths under folder ``rel``; the caller answers it
    without a walk of the table when ``rel`` holds nothing (the common case).
    """
    delta: dict[str, LocalFile | None] = {}
    skipped: dict[str, str] = {}

    def current(p: str) -> LocalFile | None:
        return delta[p] if p in delta else files.get(p)

    def under(rel: str) -> list[str]:
        prefix = rel + "/"
        return [*below(rel), *(p for p in delta if p.startswith(prefix) and p not in files)]

    for rel in paths:
        if rel == STATE_DIR or rel.startswith(STATE_DIR + "/"):
            continue
        full = root / rel
        if full.is_dir() and not full.is_symlink():
            # Walk from the data folder's root, so every rule sees the whole relative path
            # (e.g. 'run.S3/x.csv' is legacy-excluded exactly as in a full scan). A file
            # that became this folder is gone too.
            if current(rel) is not None:
                delta[rel] = None
            seen = set()
            for child, _entry in _walk(root, rel, os.scandir, skipped):
                found, why = examine(root, child, files, ignored)
                if found is not None:
                    seen.add(child)
                    if current(child) != found:
                        delta[child] = found
                elif why and why != "ignored":
                    skipped[child] = why
            for p in under(rel):
                if p not in seen and current(p) is not None:
                    delta[p] = None
            continue
        cached = current(rel)
        found, why = examine(root, rel, {rel: cached} if cached else {}, ignored)
        if found is None:
            if current(rel) is not None:
                delta[rel] = None
            # A vanished folder: drop everything below it.
            for p in under(rel):
                if current(p) is not None and not (root / p).exists():
                    delta[p] = None
            if why and why != "ignored":
                skipped[rel] = why
        else:
            if current(rel) != found:
                delta[rel] = found
            # A folder that became this file: nothing below it exists any more.
            for p in under(rel):
                if current(p) is not None:
                    delta[p] = None
                skipped.pop(p, None)
    return delta, skipped


def refuse_symlinked_parents(root: Path, rel: str) -> None:
    """Raise SymlinkInPathError if a folder on the way from ``root`` to ``rel`` is a link.

    A write, rename or trash move through ``linkdir -> /elsewhere`` would change files
    outside the data folder. ``root`` itself may be a link; missing folders are fine (we
    create them as real ones). The last component is not checked: replacing or moving a
    link itself does not reach through it.
    """
    path = root
    for part in rel.split("/")[:-1]:
        path = path / part
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise TransferError(f"cannot check {rel}: {exc.strerror}") from exc
        if stat.S_ISLNK(st.st_mode):
            folder = path.relative_to(root).as_posix()
            raise SymlinkInPathError(
                f"not writing {rel}: {folder} is a symbolic link (nothing is written through one)"
            )


def check_unchanged(root: Path, rel: str, expected: LocalFile | None) -> None:
    """Raise StaleActionError unless the local file is still as planned."""
    full = root / rel
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        if expected is None:
            return
        raise StaleActionError(f"{rel} was deleted locally since the action was planned") from None
    if expected is None:
        raise StaleActionError(f"{rel} was created locally since the action was planned")
    if (st.st_size, st.st_mtime_ns) != (expected.size, expected.mtime_ns):
        raise StaleActionError(f"{rel} changed locally since the action was planned")


def install(
    root: Path,
    rel: str,
    tmp_file: Path,
    md5: str,
    expected: LocalFile | None,
    mtime: float | None,
    *,
    trash: Path | None = None,
    stamp: str = "",
) -> LocalFile:
    """Rename a verified download (of content ``md5``) over ``rel`` if the local file is
    still as planned; returns the installed file's entry for the index.

    The file being replaced must be exactly ``expected`` (same size, mtime and MD5, checked
    right before the rename); a file planned absent is created, never replaced. If the
    replaced file was written to during the swap, it goes to ``trash`` (when given).
    """
    target = root / rel
    refuse_symlinked_parents(root, rel)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if mtime is not None:
            os.utime(tmp_file, (mtime, mtime))
        if expected is None:
            _create(root, rel, tmp_file)
        else:
            _replace(root, rel, tmp_file, expected, trash, stamp)
        st = os.lstat(target)
    except OSError as exc:
        raise TransferError(f"cannot write {rel}: {exc.strerror}") from exc
    return LocalFile(rel, st.st_size, st.st_mtime_ns, md5)


# errno values of a filesystem without hard links (FAT, some network shares).
_NO_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV, errno.EMLINK})


def _create(root: Path, rel: str, tmp_file: Path) -> None:
    target = root / rel
    try:
        # O_EXCL semantics: a file the user created since the plan is never replaced.
        os.link(tmp_file, target)
    except FileExistsError:
        raise StaleActionError(f"{rel} was created locally since the action was planned") from None
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        check_unchanged(root, rel, None)
        os.replace(tmp_file, target)
        return
    os.unlink(tmp_file)


def _replace(
    root: Path, rel: str, tmp_file: Path, expected: LocalFile, trash: Path | None, stamp: str
) -> None:
    target = root / rel
    check_unchanged(root, rel, expected)
    # Hold a second name for the version being replaced (a hard link: no copy, and the
    # file stays at its name meanwhile), so it can be verified and, if need be, kept.
    held = tmp_file.with_name(tmp_file.name + ".replaced")
    try:
        os.link(target, held, follow_symlinks=False)
    except FileNotFoundError:
        raise StaleActionError(f"{rel} was deleted locally since the action was planned") from None
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        # No hard links: verify in place, then rename; the window is one hash long.
        _verify(target, rel, expected)
        check_unchanged(root, rel, expected)
        os.replace(tmp_file, target)
        return
    try:
        verified = _verify(held, rel, expected)
        # Right next to the rename: still the very file we verified (not replaced, not
        # written to); a save in the microseconds left ends up in `held` (same inode).
        now = os.lstat(target)
        if (now.st_ino, now.st_size, now.st_mtime_ns) != verified:
            raise StaleActionError(f"{rel} changed locally since the action was planned")
        os.replace(tmp_file, target)
        after = os.lstat(held)
        if (after.st_ino, after.st_size, after.st_mtime_ns) != verified and trash is not None:
            kept = unique_path(trash / (stamp or "replaced") / rel)
            kept.parent.mkdir(parents=True, exist_ok=True)
            os.replace(held, kept)
            log.warning("%s was written to while it was replaced; old copy kept at %s", rel, kept)
    finally:
        held.unlink(missing_ok=True)


def _verify(path: Path, rel: str, expected: LocalFile) -> tuple[int, int, int]:
    """(inode, size, mtime_ns) of ``path`` if its content is ``expected``'s, else stale."""
    st = os.lstat(path)
    if (st.st_size, st.st_mtime_ns) != (expected.size, expected.mtime_ns) or (
        md5_file(path) != expected.md5
    ):
        raise StaleActionError(f"{rel} changed locally since the action was planned")
    return st.st_ino, st.st_size, st.st_mtime_ns


def unique_path(path: Path) -> Path:
    """``path`` if free, else ``name-2.ext``, ``name-3.ext``, ... (never overwrite)."""
    if not path.exists():
        return path
    n = 2
    while True:
        candidate = path.with_name(fit_name(path.stem, f"-{n}", path.suffix))
        if not candidate.exists():
            return candidate
        n += 1


def move_to_trash(root: Path, rel: str, trash: Path, stamp: str) -> Path:
    """Move a local file into ``.S3/trash/<stamp>/<rel>`` (same filesystem: a rename)."""
    refuse_symlinked_parents(root, rel)
    refuse_symlinked_parents(trash, f"{stamp}/{rel}")
    dest = unique_path(trash / stamp / rel)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(root / rel, dest)
    except OSError as exc:
        raise TransferError(f"cannot move {rel} to the trash: {exc.strerror}") from exc
    return dest


def conflict_name(rel: str, user: str, stamp: str) -> str:
    """``dir/name.conflict-<user>-<YYYYmmdd-HHMMSS>.ext``."""
    safe_user = "".join(c if c.isalnum() or c in "-_" else "_" for c in user[:64]) or "user"
    return tagged_name(rel, f"conflict-{safe_user}-{stamp}")


def rename_aside(root: Path, rel: str, new_rel: str) -> str:
    """Rename ``rel`` to a free name near ``new_rel``; returns the relative name used."""
    refuse_symlinked_parents(root, rel)
    refuse_symlinked_parents(root, new_rel)
    dest = unique_path(root / new_rel)
    try:
        os.replace(root / rel, dest)
    except OSError as exc:
        raise TransferError(f"cannot rename {rel}: {exc.strerror}") from exc
    return dest.relative_to(root).as_posix()
