"""The one error tree of s3syncd.

Each class's docstring is its default message; each carries a stable ``code`` for the
control socket and an ``exit_code`` for the command-line tools. Foreign exceptions
(botocore, OSError, json, pandas) are translated into these where they enter.
"""

from __future__ import annotations

# Exit codes shared by s3syncd and s3syncctl (documented in --help and README).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3


class SyncError(Exception):
    """s3syncd failed."""

    code = "error"
    exit_code = EXIT_ERROR

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or self.code).strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigError(SyncError):
    """The configuration is invalid."""

    code = "config"
    exit_code = EXIT_USAGE


class StateError(SyncError):
    """A state file in .S3/ could not be read or written."""

    code = "state"


class MalformedTableError(StateError):
    """A CSV table is malformed."""

    code = "malformed_table"


class UnsafePathError(SyncError):
    """A path is unsafe (absolute, contains '..', or inside .S3/)."""

    code = "unsafe_path"


class RemoteError(SyncError):
    """The remote could not be reached or refused the request."""

    code = "remote"


class RemoteNotFoundError(RemoteError):
    """The remote object does not exist."""

    code = "not_found"


class BucketNotFoundError(RemoteError):
    """The bucket does not exist."""

    code = "no_bucket"


class AuthError(RemoteError):
    """The remote rejected the credentials."""

    code = "auth"


class EndpointError(RemoteError):
    """The remote endpoint could not be reached."""

    code = "unreachable"


class PreconditionFailedError(RemoteError):
    """The remote object changed since it was read (conditional write refused)."""

    code = "precondition_failed"


class TransferError(SyncError):
    """A file transfer failed."""

    code = "transfer"


class ChecksumMismatchError(TransferError):
    """The downloaded content does not match the manifest's checksum."""

    code = "checksum_mismatch"


class StaleActionError(SyncError):
    """The file changed since the action was planned; it will be planned again."""

    code = "stale"


class AlreadyRunningError(SyncError):
    """Another s3syncd is already running on this data folder."""

    code = "already_running"


class NotRunningError(SyncError):
    """The daemon is not running."""

    code = "not_running"
    exit_code = EXIT_NOT_RUNNING


class ProtocolError(SyncError):
    """The control request is malformed."""

    code = "bad_request"
    exit_code = EXIT_USAGE


class UnknownActionError(SyncError):
    """No pending action has that id."""

    code = "unknown_action"


class CancelledError(SyncError):
    """Cancelled."""

    code = "cancelled"


class SymlinkInPathError(UnsafePathError):
    """A folder on the way to a local path is a symbolic link; nothing is written through it."""

    code = "symlink_in_path"
