"""The Local platform: a directory (a NAS or network mount) as the remote.

Keys map to files below ``root`` exactly as they map to objects below an S3 prefix. The
ETag of a file is the hex MD5 of its content, so ETags and MD5s always agree.

Implementation notes:

* Writes are atomic: the content goes to a temp file in ``<root>/.S3/.tmp/``, is fsynced,
  then ``os.replace``d over the target. The temp folder is inside the state folder (not
  beside the target) so listings never see half-written files and a crash leaves debris
  only where listings do not look; :meth:`LocalDirRemote.check` sweeps old debris.
* ``write_blob`` and ``copy`` check their preconditions and rename under an exclusive
  ``fcntl.flock`` on ``<root>/.S3/.lock``. Linux NFS maps flock to POSIX byte-range
  locks, so it holds across machines with NFSv4; a mount without working locks makes
  :meth:`LocalDirRemote.supports_conditional_writes` answer False.
* MD5s are computed by streaming the file (1 MiB chunks) and cached in memory keyed by
  (size, mtime_ns, inode), so only the first listing after start-up reads every file; a
  file replaced by anyone gets a new inode and is hashed again. No sidecar file is kept,
  so other clients of the same folder need no cooperation.
* Symlinks are never followed: listings skip them and keys that pass through one are refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from s3syncd.atomicfile import fsync_dir
from s3syncd.errors import (
    ConfigError,
    EndpointError,
    PreconditionFailedError,
    RemoteError,
    RemoteNotFoundError,
    SyncError,
    TransferError,
    UnsafePathError,
)
from s3syncd.model import STATE_DIR, RemoteObject
from s3syncd.remote.base import NOT_MODIFIED, Blob, NotModified, ProgressCallback, Remote

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
LOCK_NAME = ".lock"
TMP_NAME = ".tmp"
# Temp files older than this are debris from a crash, not a write in progress.
STALE_TMP_SECONDS = 24 * 3600
# Internal files of this platform: never listed, never addressable as keys.
_INTERNAL = (f"{STATE_DIR}/{LOCK_NAME}", f"{STATE_DIR}/{TMP_NAME}")
# errno values meaning "the mount itself is gone or hung", not "this file is bad".
_UNREACHABLE = frozenset(
    {errno.EIO, errno.ENOTCONN, errno.ESTALE, errno.EHOSTDOWN, errno.ETIMEDOUT, errno.ENODEV}
)
_NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})
_NO_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV, errno.EMLINK})

_Signature = tuple[int, int, int]  # size, mtime_ns, inode


def _signature(st: os.stat_result) -> _Signature:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _copy_stream(src: IO[bytes], dst: IO[bytes], progress: ProgressCallback | None) -> str:
    digest = hashlib.md5()
    while chunk := src.read(CHUNK):
        dst.write(chunk)
        digest.update(chunk)
        if progress is not None:
            progress(len(chunk))
    return digest.hexdigest()


def _hash_file(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _translate_os(exc: OSError, what: str) -> SyncError:
    reason = exc.strerror or str(exc)
    if isinstance(exc, FileNotFoundError):
        return RemoteNotFoundError(f"{what}: no such object")
    if exc.errno in _UNREACHABLE:
        return EndpointError(f"{what}: the remote folder is unreachable ({reason})")
    return RemoteError(f"{what}: {reason}")


class LocalDirRemote(Remote):
    """A directory as the remote; see the module docstring for the guarantees."""

    name = "Local"

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().absolute()
        self._state = self.root / STATE_DIR
        self._tmp = self._state / TMP_NAME
        self._md5_cache: dict[str, tuple[_Signature, str]] = {}
        self._cache_lock = threading.Lock()
        self._locks_work: bool | None = None

    @classmethod
    def from_config(cls, settings: dict[str, Any]) -> LocalDirRemote:
        """Build from the ``[local]`` table: ``remote_path`` is the folder."""
        path = settings.get("remote_path")
        if not isinstance(path, str) or not path.strip():
            raise ConfigError("the Local platform needs a 'remote_path'")
        return cls(path)

    def describe(self) -> str:
        return str(self.root)

    # -- keys and paths ------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        """The file for ``key``; refuses keys that could leave ``root`` or hit internals."""
        if not key or key.startswith("/") or "\0" in key or any(ord(c) < 32 for c in key):
            raise UnsafePathError(f"unsafe remote key {key!r}")
        parts = key.split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise UnsafePathError(f"unsafe remote key {key!r}: empty, '.' or '..' segment")
        if any(key == name or key.startswith(name + "/") for name in _INTERNAL):
            raise UnsafePathError(f"remote key {key!r} is reserved by the Local platform")
        # A symlinked folder below root could point anywhere: refuse to pass through one.
        if self._through_symlink(parts[:-1]):
            raise UnsafePathError(f"remote key {key!r} passes through a symlink")
        return self.root.joinpath(*parts)

    def _through_symlink(self, folders: list[str]) -> bool:
        path = self.root
        for part in folders:
            path = path / part
            try:
                if stat.S_ISLNK(os.lstat(path).st_mode):
                    return True
            except OSError:
                return False  # missing: nothing below it exists to be reached
        return False

    def _md5(self, key: str, path: Path, st: os.stat_result) -> str:
        sig = _signature(st)
        with self._cache_lock:
            cached = self._md5_cache.get(key)
        if cached is not None and cached[0] == sig:
            return cached[1]
        md5 = _hash_file(path)
        with self._cache_lock:
            self._md5_cache[key] = (sig, md5)
        return md5

    def _remember(self, key: str, sig: _Signature, md5: str) -> None:
        with self._cache_lock:
            self._md5_cache[key] = (sig, md5)

    def _forget(self, key: str) -> None:
        with self._cache_lock:
            self._md5_cache.pop(key, None)

    # -- locking and installing files ------------------------------------------------

    def _require_root(self) -> None:
        # Never create the root itself: if a share is not mounted, writing into an empty
        # mount point (or a fresh folder in its place) would fork the remote.
        if not self.root.is_dir():
            raise EndpointError(f"the remote folder {self.root} is missing or not a directory")

    def _tmp_dir(self) -> Path:
        self._require_root()
        self._tmp.mkdir(parents=True, exist_ok=True)
        return self._tmp

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the folder-wide write lock (a fresh open per call, so threads exclude too)."""
        self._require_root()
        self._state.mkdir(exist_ok=True)
        fd = os.open(self._state / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                if exc.errno not in _NO_LOCKS:
                    raise
                if self._locks_work is not False:
                    log.warning("%s does not support file locks; writes are unguarded", self.root)
                self._locks_work = False
            else:
                self._locks_work = True
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _install(
        self,
        key: str,
        fill: Callable[[IO[bytes]], str],
        check: Callable[[Path], None] | None = None,
        *,
        exclusive: bool = False,
    ) -> RemoteObject:
        """Write via ``fill`` to a temp file, then rename it over ``key``'s file.

        With ``check``, the rename happens under the lock after ``check(path)`` passes.
        ``exclusive`` links instead of renaming, so even a writer that ignores the lock
        (an old client on the same share) cannot be replaced by a create-only write.
        """
        path = self._path(key)
        fd, tmp_name = tempfile.mkstemp(prefix="put-", dir=self._tmp_dir())
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                md5 = fill(fh)
                fh.flush()
                os.fsync(fh.fileno())
                # Size, mtime and inode survive the rename, so this signature is the
                # installed file's even if someone replaces it right after.
                st = os.fstat(fh.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared folder wants readable files
            if check is None:
                self._rename(tmp, path)
            else:
                with self._locked():
                    check(path)
                    if exclusive:
                        self._link(tmp, path, key)
                    else:
                        self._rename(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self._remember(key, _signature(st), md5)
        return RemoteObject(key=key, size=st.st_size, etag=md5, md5=md5)

    def _link(self, tmp: Path, path: Path, key: str) -> None:
        """Create ``path`` as ``tmp``'s content only if nothing is there (O_EXCL semantics)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(tmp, path)
        except FileExistsError as exc:
            raise PreconditionFailedError(f"write {key}: the object already exists") from exc
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            # No hard links on this share (SMB, FAT): the check under the lock must do.
            self._rename(tmp, path)
            return
        os.unlink(tmp)
        fsync_dir(path.parent)

    def _rename(self, tmp: Path, path: Path) -> None:
        # A concurrent delete may prune the folder between mkdir and rename: try again.
        for attempt in range(3):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(tmp, path)
                break
            except FileNotFoundError:
                if attempt == 2 or not tmp.exists():
                    raise
        fsync_dir(path.parent)

    # -- Remote ----------------------------------------------------------------------

    def check(self) -> None:
        if not self.root.exists():
            raise EndpointError(f"the remote folder {self.root} does not exist (is it mounted?)")
        if not self.root.is_dir():
            raise EndpointError(f"the remote folder {self.root} is not a directory")
        try:
            with tempfile.TemporaryFile(dir=self._tmp_dir()):
                pass
        except OSError as exc:
            raise EndpointError(
                f"the remote folder {self.root} is not writable ({exc.strerror or exc})"
            ) from exc
        self._sweep_tmp()

    def _sweep_tmp(self) -> None:
        cutoff = time.time() - STALE_TMP_SECONDS
        with contextlib.suppress(OSError), os.scandir(self._tmp) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                        log.info("removed stale temp file %s", entry.path)

    def list(self, under: str = "") -> dict[str, RemoteObject]:
        if under.startswith("/") or ".." in under.split("/"):
            raise UnsafePathError(f"unsafe listing prefix {under!r}")
        # An unmounted share must not look like an empty remote (all files deleted).
        self._require_root()
        found: dict[str, RemoteObject] = {}
        start = under.rsplit("/", 1)[0] + "/" if "/" in under else ""
        if start and self._through_symlink(start.rstrip("/").split("/")):
            return found
        stack = [start]
        while stack:
            rel_dir = stack.pop()
            folder = self.root / rel_dir if rel_dir else self.root
            try:
                with os.scandir(folder) as it:
                    entries = list(it)
            except (FileNotFoundError, NotADirectoryError):
                continue  # gone meanwhile, or `under` names no folder
            except OSError as exc:
                # Skipping an unreadable folder would make its files look deleted.
                raise _translate_os(exc, f"listing {folder}") from exc
            for entry in entries:
                rel = rel_dir + entry.name
                if rel in _INTERNAL or (not under and rel == STATE_DIR):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise _translate_os(exc, f"listing {entry.path}") from exc
                if stat.S_ISDIR(st.st_mode):
                    # Descend only where keys starting with `under` can be.
                    if (rel + "/").startswith(under) or under.startswith(rel + "/"):
                        stack.append(rel + "/")
                elif stat.S_ISREG(st.st_mode) and rel.startswith(under):
                    try:
                        md5 = self._md5(rel, Path(entry.path), st)
                    except FileNotFoundError:
                        continue  # deleted while listing
                    except OSError as exc:
                        raise _translate_os(exc, f"reading {entry.path}") from exc
                    found[rel] = RemoteObject(key=rel, size=st.st_size, etag=md5, md5=md5)
        if not under:
            # Drop cache entries of files that are gone (state files are kept).
            with self._cache_lock:
                self._md5_cache = {
                    k: v
                    for k, v in self._md5_cache.items()
                    if k in found or k.startswith(STATE_DIR + "/")
                }
        return found

    def stat(self, key: str) -> RemoteObject | None:
        path = self._path(key)
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                return None
            md5 = self._md5(key, path, st)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise _translate_os(exc, f"stat {key}") from exc
        return RemoteObject(key=key, size=st.st_size, etag=md5, md5=md5)

    def _open(self, key: str) -> IO[bytes]:
        """Open ``key``'s file for reading without following a symlink at the end."""
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise RemoteNotFoundError(f"{key}: no such object") from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RemoteNotFoundError(f"{key}: a symlink, not an object") from exc
            raise _translate_os(exc, f"open {key}") from exc
        fh = os.fdopen(fd, "rb")
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            fh.close()
            raise RemoteNotFoundError(f"{key}: not a regular file")
        return fh

    def download(
        self, key: str, dest: Path, progress: ProgressCallback | None = None
    ) -> str | None:
        digest = hashlib.md5(usedforsecurity=False)
        with self._open(key) as src:
            try:
                out = open(dest, "wb")  # noqa: SIM115 - closed below, errors split by side
            except OSError as exc:
                raise TransferError(f"cannot write {dest}: {exc.strerror or exc}") from exc
            with out:
                while True:
                    try:
                        chunk = src.read(CHUNK)
                    except OSError as exc:
                        raise _translate_os(exc, f"download {key}") from exc
                    if not chunk:
                        break
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        raise TransferError(f"cannot write {dest}: {exc.strerror or exc}") from exc
                    digest.update(chunk)
                    if progress is not None:
                        progress(len(chunk))
        log.debug("downloaded %s to %s", key, dest)
        return digest.hexdigest()

    def upload(
        self,
        src: Path,
        key: str,
        md5: str,
        progress: ProgressCallback | None = None,
        *,
        if_match: str | None = None,
        create_only: bool = False,
    ) -> RemoteObject:
        if if_match and create_only:
            raise ValueError("upload: if_match and create_only exclude each other")
        what = f"upload {key}"
        try:
            source = open(src, "rb")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise TransferError(f"cannot read {src}: {exc.strerror or exc}") from exc

        def fill(fh: IO[bytes]) -> str:
            got = _copy_stream(source, fh, progress)
            if got != md5.lower():
                # Like S3's Content-MD5: bytes that are not the content the caller hashed
                # (a file saved again while it was read) never replace the object.
                raise TransferError(
                    f"{what}: the bytes read (MD5 {got}) are not the expected {md5}; "
                    "the file changed while it was sent"
                )
            return got

        check = self._precondition(key, what, if_match, create_only)
        with source:
            try:
                obj = self._install(key, fill, check, exclusive=create_only)
            except OSError as exc:
                raise _translate_os(exc, what) from exc
        log.debug("uploaded %s to %s", src, key)
        return obj

    def _precondition(
        self, key: str, what: str, if_match: str | None, create_only: bool
    ) -> Callable[[Path], None] | None:
        """The check run under the lock right before the rename, or None for a blind write."""
        if not if_match and not create_only:
            return None

        def check(path: Path) -> None:
            if create_only and os.path.lexists(path):
                raise PreconditionFailedError(f"{what}: the object already exists")
            if if_match:
                try:
                    st = os.lstat(path)
                    current = self._md5(key, path, st) if stat.S_ISREG(st.st_mode) else None
                except (FileNotFoundError, NotADirectoryError):
                    current = None
                if current != if_match.strip('"').lower():
                    raise PreconditionFailedError(f"{what}: the object changed or is gone")

        return check

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        path = self._path(key)
        what = f"delete {key}"
        try:
            if if_match:
                with self._locked():
                    self._unlink(key, path, what, if_match)
            else:
                self._unlink(key, path, what, None)
        except OSError as exc:
            raise _translate_os(exc, what) from exc
        self._forget(key)
        # Folders exist only to hold keys (as on S3): prune the ones left empty.
        folder = path.parent
        while folder != self.root and folder != self._state:
            try:
                folder.rmdir()
            except OSError:
                break  # not empty, or someone is writing into it
            folder = folder.parent

    def _unlink(self, key: str, path: Path, what: str, if_match: str | None) -> None:
        try:
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                return  # a folder is not an object
            if if_match and self._md5(key, path, st) != if_match.strip('"').lower():
                raise PreconditionFailedError(f"{what}: the object changed since it was read")
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            pass

    def copy(self, src_key: str, dst_key: str, *, source_etag: str | None = None) -> None:
        what = f"copy {src_key} -> {dst_key}"

        def refuse_existing(path: Path) -> None:
            if os.path.lexists(path):
                raise PreconditionFailedError(f"{what}: destination exists")

        def fill(src: IO[bytes], fh: IO[bytes]) -> str:
            got = _copy_stream(src, fh, None)
            # The ETag is the MD5: the bytes copied are the version named, or nothing is.
            if source_etag is not None and got != source_etag.strip('"').lower():
                raise PreconditionFailedError(f"{what}: the source is not the version expected")
            return got

        # Checked early to skip a pointless read; checked again under the lock to be sure.
        refuse_existing(self._path(dst_key))
        with self._open(src_key) as src:
            try:
                self._install(
                    dst_key,
                    lambda fh: fill(src, fh),
                    refuse_existing,
                    exclusive=True,
                )
            except OSError as exc:
                raise _translate_os(exc, what) from exc

    def read_blob(self, key: str, if_none_match: str | None = None) -> Blob | NotModified | None:
        try:
            with self._open(key) as fh:
                data = fh.read()
        except RemoteNotFoundError:
            return None
        except OSError as exc:
            raise _translate_os(exc, f"read {key}") from exc
        etag = hashlib.md5(data).hexdigest()
        if if_none_match and if_none_match.strip('"').lower() == etag:
            return NOT_MODIFIED
        return Blob(data=data, etag=etag)

    def write_blob(
        self, key: str, data: bytes, if_match: str | None = None, create_only: bool = False
    ) -> str:
        if if_match and create_only:
            raise ValueError("write_blob: if_match and create_only exclude each other")
        what = f"write {key}"
        # Even a blind write takes the lock, so it cannot slip between another
        # writer's precondition check and its rename.
        precondition = self._precondition(key, what, if_match, create_only) or (lambda _p: None)

        def fill(fh: IO[bytes]) -> str:
            fh.write(data)
            return hashlib.md5(data).hexdigest()

        try:
            return self._install(key, fill, precondition, exclusive=create_only).etag
        except OSError as exc:
            raise _translate_os(exc, what) from exc

    def supports_conditional_writes(self) -> bool:
        """True if the folder-wide lock works here (probed once, on first use)."""
        if self._locks_work is None:
            try:
                with self._locked():
                    pass
            except OSError as exc:
                raise _translate_os(exc, f"locking {self.root}") from exc
        return bool(self._locks_work)
