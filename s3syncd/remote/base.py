"""The platform interface: what the engine needs from a remote.

Keys are relative to the configured prefix and use '/': data objects at ``<path>``, the
manifest at ``.S3/versions.csv``, tombstones at ``.S3/deletedS3.csv``, soft-deleted
copies under ``.S3/deleted/``. Implementations translate their own errors into the
``s3syncd.errors`` tree (RemoteNotFoundError, PreconditionFailedError, AuthError, ...).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3syncd.errors import RemoteNotFoundError
from s3syncd.model import RemoteObject

MANIFEST_KEY = ".S3/versions.csv"
TOMBSTONES_KEY = ".S3/deletedS3.csv"
STATE_PREFIX = ".S3/"
TRASH_PREFIX = ".S3/deleted/"

# Called with the number of bytes moved since the last call (progress bars).
ProgressCallback = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Blob:
    """A small object read whole (the manifest, the tombstones) with its ETag."""

    data: bytes
    etag: str


@dataclass(frozen=True, slots=True)
class ObjectVersion:
    """One version of an object in a bucket with versioning (or a delete marker)."""

    key: str
    version_id: str
    size: int
    etag: str
    modified: float  # POSIX time the version was written
    latest: bool
    delete_marker: bool


class NotModified:
    """Returned by a conditional read when the object still has the ETag we hold."""

    _instance: NotModified | None = None

    def __new__(cls) -> NotModified:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOT_MODIFIED"


NOT_MODIFIED = NotModified()


class Remote(ABC):
    """One remote store, e.g. an S3 prefix or a directory on a network mount."""

    #: Platform name as listed by ``get_supported_platforms()``.
    name: str = ""

    @classmethod
    @abstractmethod
    def from_config(cls, settings: dict[str, Any]) -> Remote:
        """Build from the platform's config table (e.g. ``[s3]`` or ``[local]``)."""

    @abstractmethod
    def describe(self) -> str:
        """A human location such as ``s3://bucket/prefix`` (never includes secrets)."""

    @abstractmethod
    def check(self) -> None:
        """Verify the remote is reachable and usable; raise a clear RemoteError if not."""

    @abstractmethod
    def list(self, under: str = "") -> dict[str, RemoteObject]:
        """Every object whose key starts with ``under`` (paginated to the end).

        With ``under=""`` the state folder ``.S3/`` is left out.
        """

    @abstractmethod
    def stat(self, key: str) -> RemoteObject | None:
        """The object's facts, or None if it does not exist. ``md5`` from metadata if set."""

    @abstractmethod
    def download(
        self, key: str, dest: Path, progress: ProgressCallback | None = None
    ) -> str | None:
        """Write the object's content to ``dest`` (a temp file the caller owns).

        Returns the hex MD5 of the bytes written to ``dest``, hashed as they were written
        (so the caller need not read the file again), or None if the platform did not
        compute it.
        """

    @abstractmethod
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
        """Store ``src`` at ``key`` (multipart when large), recording ``md5`` as metadata.

        The returned object's ``md5`` is the MD5 of the bytes actually stored (which
        differs from ``md5`` if the file changed while it was read), or None when the
        platform cannot tell.

        Preconditions, as for :meth:`write_blob`: ``if_match`` replaces only the object
        whose ETag is this one (the version the caller planned over); ``create_only``
        writes only if the key holds nothing. Either refusal raises PreconditionFailedError
        and leaves the stored object untouched.
        """

    @abstractmethod
    def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Remove the object; a missing object is not an error.

        ``if_match``: only if the object's ETag is still this one (the version the caller
        planned to delete), else PreconditionFailedError and the object stays.
        """

    @abstractmethod
    def copy(self, src_key: str, dst_key: str, *, source_etag: str | None = None) -> None:
        """Server-side copy. Raises PreconditionFailedError if ``dst_key`` already exists.

        ``source_etag``: copy only that version of the source (``CopySourceIfMatch``);
        if the source now holds another, PreconditionFailedError and nothing is copied.
        """

    @abstractmethod
    def read_blob(self, key: str, if_none_match: str | None = None) -> Blob | NotModified | None:
        """Read a small object whole.

        None if missing; NOT_MODIFIED if its ETag is still ``if_none_match``.
        """

    @abstractmethod
    def write_blob(
        self, key: str, data: bytes, if_match: str | None = None, create_only: bool = False
    ) -> str:
        """Write a small object, returning its new ETag.

        ``if_match``: only if the current ETag is this one; ``create_only``: only if it does
        not exist. Either refusal raises PreconditionFailedError.
        """

    def list_versions(self, under: str = "") -> tuple[ObjectVersion, ...]:
        """Every version (and delete marker) of the objects whose key starts with ``under``,
        where the platform keeps versions; empty where it does not (the default)."""
        return ()

    def download_version(self, key: str, version_id: str, dest: Path) -> None:
        """Write one version of an object to ``dest`` (a temp file the caller owns)."""
        raise RemoteNotFoundError(f"{self.describe()} keeps no versions of {key}")

    def request_count(self) -> int | None:
        """Requests sent so far, if the platform counts them (for ``status`` and tests)."""
        return None

    def supports_conditional_writes(self) -> bool:
        """Whether ``write_blob`` preconditions are enforced (probed at start-up)."""
        return True

    def close(self) -> None:  # noqa: B027 - optional hook, most platforms hold nothing
        """Release connections (e.g. the S3 client's pool); the remote is unusable after."""
