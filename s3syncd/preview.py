"""``s3syncctl diff ID``: the two versions a queued action involves, compared.

Which two, by kind (left -> right reads as "what approving changes"):

- upload: the remote object -> the local file;
- download and conflict: the local file -> the remote object (a conflict's other
  resolutions are this read the other way round);
- delete on the remote: the remote object -> nothing; delete here: the local file -> nothing.

The remote side is fetched to a private temp file in ``.S3/tmp`` and removed afterwards;
nothing in the data folder or on the remote changes. The base version is not kept as content
anywhere, so it is named (its MD5) but not compared.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from s3syncd.diffing import FileDiff, compare
from s3syncd.errors import RemoteNotFoundError
from s3syncd.model import Action, ActionKind
from s3syncd.remote.base import Remote

# Kinds whose approval moves the remote version onto the local side.
_TOWARDS_LOCAL = (ActionKind.DOWNLOAD, ActionKind.CONFLICT)


def describe(action: Action, remote: Remote, root: Path, tmp_dir: Path) -> FileDiff:
    """Compare the versions ``action`` involves (see the module docstring)."""
    who = action.edited_by
    remote_label = f"remote ({who})" if who else "remote"
    with _remote_copy(action, remote, tmp_dir) as theirs:
        mine = _local_file(root, action.path)
        if action.kind is ActionKind.UPLOAD:
            return compare(action.path, theirs, mine, remote_label, "local")
        if action.kind in _TOWARDS_LOCAL:
            return compare(action.path, mine, theirs, "local", remote_label)
        if action.kind is ActionKind.DELETE_REMOTE:
            return compare(action.path, theirs, None, remote_label, "deleted")
        return compare(action.path, mine, None, "local", "deleted")


def _local_file(root: Path, rel: str) -> Path | None:
    # Only a regular file is read: the scan never syncs anything else either.
    path = root / rel
    try:
        return path if stat.S_ISREG(os.lstat(path).st_mode) else None
    except OSError:
        return None


@contextlib.contextmanager
def _remote_copy(action: Action, remote: Remote, tmp_dir: Path) -> Iterator[Path | None]:
    if action.kind is ActionKind.DELETE_LOCAL:
        yield None
        return
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="diff-", dir=tmp_dir)
    os.close(fd)
    tmp = Path(name)
    try:
        try:
            remote.download(action.path, tmp)
        except RemoteNotFoundError:
            yield None  # nothing there (a new file, or gone since the plan)
            return
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
