"""Values shared by every layer. No I/O, no clock."""

from __future__ import annotations

import enum
import hashlib
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from s3syncd.errors import UnsafePathError

STATE_DIR = ".S3"
LEGACY_COLUMNS = ("File", "Edited By", "Time Edited", "Checksum")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
# The longest file or folder name (in UTF-8 bytes) that common filesystems take.
MAX_NAME_BYTES = 255
_DRIVE_RE = re.compile(r"[A-Za-z]:")
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f]")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


class ActionKind(enum.Enum):
    UPLOAD = "upload"
    DOWNLOAD = "download"
    DELETE_REMOTE = "delete_remote"
    DELETE_LOCAL = "delete_local"
    CONFLICT = "conflict"
    # A local rename: the remote object is copied server-side to the new name, then the
    # old name is soft-deleted (``Action.path`` is the new name, ``Action.source`` the old).
    MOVE = "move"
    # Manifest bookkeeping only (restore a row lost to a blind write, drop a row whose
    # object and local file are both gone). Touches no user file, so never waits.
    RECORD = "record"


APPROVABLE_KINDS = tuple(k for k in ActionKind if k is not ActionKind.RECORD)
# The kinds a policy names. A move is not one: it runs unasked only when both ``upload``
# and ``delete_remote`` do (see approvals.auto_approved).
POLICY_KINDS = tuple(k for k in APPROVABLE_KINDS if k is not ActionKind.MOVE)
DELETE_KINDS = (ActionKind.DELETE_REMOTE, ActionKind.DELETE_LOCAL)


class Resolution(enum.Enum):
    LOCAL = "local"
    REMOTE = "remote"
    BOTH = "both"


@dataclass(frozen=True, slots=True)
class Row:
    """One row of a legacy CSV table: File, Edited By, Time Edited, Checksum."""

    path: str
    edited_by: str
    time_edited: str
    checksum: str

    def to_list(self) -> list[str]:
        """The four cells in column order (also the JSON form in our state files)."""
        return [self.path, self.edited_by, self.time_edited, self.checksum]

    @staticmethod
    def from_list(cells: Sequence[object]) -> Row:
        path, edited_by, time_edited, checksum = (str(c) for c in cells)
        return Row(path, edited_by, time_edited, checksum)


@dataclass(frozen=True, slots=True)
class LocalFile:
    path: str
    size: int
    mtime_ns: int
    md5: str


@dataclass(frozen=True, slots=True)
class RemoteObject:
    """An object seen in a remote listing. ``md5`` is None when the ETag is not an MD5."""

    key: str
    size: int
    etag: str
    md5: str | None


@dataclass(frozen=True, slots=True)
class RemoteView:
    """What is known of the remote for one reconcile.

    ``objects`` is the listing of data objects, or None when no listing was made this
    time (then an object's absence is not evidence of a delete).
    """

    rows: Mapping[str, Row]
    tombstones: Mapping[str, Row] = field(default_factory=dict)
    objects: Mapping[str, RemoteObject] | None = None
    etag: str | None = None


@dataclass(frozen=True, slots=True)
class MoveSource:
    """The old name of a move, as planned: its manifest row (whose checksum is the
    content moved) and the listed ETag of its object, which the copy and the soft delete
    must still find (None when no listing vouched for it)."""

    path: str
    row: Row
    etag: str | None


@dataclass(frozen=True, slots=True)
class Action:
    """One proposed change, with the facts it was planned from.

    The executor re-checks ``local`` and ``remote_md5`` before acting, so an approval
    given on stale facts leads to a re-plan instead of a wrong transfer.
    """

    kind: ActionKind
    path: str
    reason: str
    local: LocalFile | None
    remote: Row | None
    remote_md5: str | None
    base_md5: str | None
    manifest_etag: str | None = None
    remote_size: int | None = None
    source: MoveSource | None = None  # moves only

    @property
    def id(self) -> str:
        """Stable for the same change, so a re-plan keeps ids and rejections stick."""
        local_md5 = self.local.md5 if self.local else "-"
        raw = f"{self.kind.value}\0{self.path}\0{local_md5}\0{self.remote_md5 or '-'}"
        if self.source is not None:
            # Appended only for moves, so every other id stays what it was.
            raw += f"\0{self.source.path}\0{self.source.row.checksum}"
        return hashlib.sha1(raw.encode()).hexdigest()[:10]

    @property
    def size(self) -> int | None:
        """Bytes that would move (the local file's for uploads, the remote's otherwise)."""
        if (
            self.kind in (ActionKind.UPLOAD, ActionKind.DELETE_LOCAL, ActionKind.MOVE)
            and self.local
        ):
            return self.local.size
        if self.remote_size is not None:
            return self.remote_size
        return self.local.size if self.local else None

    @property
    def edited_by(self) -> str:
        return self.remote.edited_by if self.remote else ""


@dataclass(frozen=True, slots=True)
class Plan:
    """The result of a reconcile.

    ``agreed`` are paths whose two sides already hold the same content (the base becomes
    that MD5); ``forget`` are paths gone on both sides (dropped from the base).
    """

    actions: tuple[Action, ...]
    agreed: Mapping[str, str]
    forget: frozenset[str]

    def by_kind(self, kind: ActionKind) -> list[Action]:
        return [a for a in self.actions if a.kind is kind]


def validate_rel_path(path: str) -> str:
    """Return ``path`` if it is a safe relative path with '/' separators, else raise
    UnsafePathError saying why (see :func:`path_problem`)."""
    problem = path_problem(path)
    if problem is not None:
        raise UnsafePathError(f"unsafe path {path!r}: {problem}")
    return path


def path_problem(path: str) -> str | None:
    """Why ``path`` is not a safe relative path with '/' separators; None if it is.

    The one rule for manifest rows, listed keys and local names alike (a local file it
    refuses is skipped, never uploaded). Refuses: absolute paths and Windows drive letters
    (``x:notes.txt`` is drive-relative on Windows, so an old client there would write it
    on drive X:; a colon anywhere else is allowed), backslashes, '..' and '.' segments,
    empty segments, control characters (C0, DEL, C1), names that are not valid UTF-8
    (``os.scandir``'s surrogate escapes: the CSV cannot hold them), a segment longer than
    255 bytes (no filesystem takes it), and anything inside the state folder.
    """
    if not path:
        return "empty"
    # Regexes, not a per-character category lookup: this runs for every path of every
    # listing, manifest and scan (Cc is exactly C0, DEL and C1; Cs the surrogates).
    if _CONTROL_RE.search(path):
        return "control characters or line breaks"
    if _SURROGATE_RE.search(path):
        return "not valid UTF-8"
    if "\\" in path:
        return "backslash"
    if path.startswith("/"):
        return "absolute"
    if _DRIVE_RE.match(path):
        return "absolute (a Windows drive letter)"
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "empty, '.' or '..' segment"
    if len(path) * 4 > MAX_NAME_BYTES and any(len(p.encode()) > MAX_NAME_BYTES for p in parts):
        return f"a name longer than {MAX_NAME_BYTES} bytes"
    if parts[0] == STATE_DIR or posixpath.normpath(path) != path:
        return f"inside {STATE_DIR}/ or not normal"
    return None


def shown(text: object) -> str:
    """``text`` safe for a terminal: control, format (bidi overrides like U+202E) and other
    non-printing characters are escaped as ``\\n``, ``\\x1b``, ``\\u202e``, and a backslash
    as ``\\\\``, so a file name cannot rewrite the line or pose as another name."""
    out = []
    for c in str(text):
        if c == "\\":
            out.append("\\\\")
        elif c.isprintable():
            out.append(c)
        else:
            out.append(repr(c)[1:-1])
    return "".join(out)


def is_legacy_excluded(path: str) -> bool:
    """The original skips every path containing '.S3'; such files cannot be shared with it."""
    return STATE_DIR in path


def tagged_name(path: str, tag: str) -> str:
    """``dir/name.<tag>.ext``: a sibling name that keeps the extension (and so the app).

    A name without an extension, or a dotfile like ``.env``, gets the tag at the end. The
    name is shortened (see :func:`fit_name`) so that it still fits in a folder.
    """
    head, _, name = path.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    if not stem:
        stem, dot, ext = name, "", ""
    tagged = fit_name(stem, f".{tag}", f"{dot}{ext}")
    return f"{head}/{tagged}" if head else tagged


def fit_name(stem: str, tag: str, ext: str) -> str:
    """``stem + tag + ext`` in at most MAX_NAME_BYTES UTF-8 bytes: the stem is cut (at a
    character boundary), the tag always kept; an extension too long to keep is cut as part
    of the stem."""
    budget = MAX_NAME_BYTES - len(tag.encode())
    if len(ext.encode()) > budget // 2:
        stem, ext = stem + ext, ""
    room = budget - len(ext.encode())
    if len(stem.encode()) > room:
        stem = stem.encode()[:room].decode("utf-8", "ignore")
    return stem + tag + ext
