"""The client end of the control socket, for ``s3syncctl`` (DESIGN.md §4).

Every failure comes out as a :class:`SyncError`: no socket or nobody listening is
:class:`NotRunningError`; an error reply is the class its code names (see
:func:`s3syncd.protocol.error_for`); a timeout, a dropped connection or a garbled reply is a
:class:`SyncError`/:class:`ProtocolError` saying so. After a transport failure the connection is
closed, since a late reply could otherwise be read as the answer to the next call.
"""

from __future__ import annotations

import enum
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from s3syncd.errors import NotRunningError, ProtocolError, SyncError
from s3syncd.protocol import (
    MAX_RESPONSE_BYTES,
    PROTOCOL_VERSION,
    decode_response,
    encode_request,
)

DEFAULT_TIMEOUT = 30.0
# With timeout=None (a long call such as "sync") connecting still must not hang forever.
CONNECT_TIMEOUT = 10.0

_READ_CHUNK = 1 << 16


class _Default(enum.Enum):
    TIMEOUT = enum.auto()


def call(
    path: Path,
    method: str,
    params: dict[str, Any] | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> Any:
    """Send one request to the daemon at ``path`` and return its result.

    ``timeout`` bounds the whole call in seconds; None waits as long as the daemon takes.
    """
    with ControlClient(path, timeout=timeout) as client:
        return client.call(method, params)


class ControlClient:
    """One connection to the daemon, for several calls in a row (not thread-safe)."""

    def __init__(self, path: Path, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self._path = Path(path)
        self._timeout = timeout
        self._buffer = bytearray()
        self._next_id = 1
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(CONNECT_TIMEOUT if timeout is None else timeout)
            sock.connect(os.fspath(self._path))
        except OSError as exc:
            sock.close()
            raise self._connect_error(exc) from None
        except BaseException:
            sock.close()
            raise
        self._sock: socket.socket | None = sock

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def hello(self) -> dict[str, Any]:
        """Greet the daemon; raises ProtocolError unless it speaks our protocol version."""
        result = self.call("hello")
        version = result.get("protocol") if isinstance(result, dict) else None
        if not isinstance(version, int) or isinstance(version, bool) or version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"s3syncd speaks control protocol version {version!r}, this client speaks "
                f"version {PROTOCOL_VERSION}; restart s3syncd after upgrading"
            )
        assert isinstance(result, dict)
        return result

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float | Literal[_Default.TIMEOUT] | None = _Default.TIMEOUT,
    ) -> Any:
        """Send one request and return its result; ``timeout`` overrides the client's."""
        if timeout is _Default.TIMEOUT:
            timeout = self._timeout
        sock = self._sock
        if sock is None:
            raise SyncError(f"the connection to s3syncd at {self._path} is closed")
        request_id = self._next_id
        self._next_id += 1
        try:
            line = encode_request(request_id, method, params)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"the parameters of {method!r} are not JSON: {exc}") from None
        deadline = None if timeout is None else time.monotonic() + timeout
        send_error: OSError | None = None
        try:
            sock.settimeout(timeout)
            sock.sendall(line)
        except TimeoutError:
            self.close()
            raise SyncError(f"s3syncd did not take the {method!r} request in time") from None
        except OSError as exc:
            # The daemon may have replied and hung up already (a refused peer, an oversized
            # request): read that reply before reporting the broken pipe.
            send_error = exc
        reply = self._read_line(sock, method, deadline)
        if reply is None:
            self.close()
            reason = f": {send_error.strerror}" if send_error is not None else ""
            raise SyncError(f"s3syncd closed the connection without answering {method!r}{reason}")
        if send_error is not None:
            self.close()
        return decode_response(reply, request_id)

    def _read_line(self, sock: socket.socket, method: str, deadline: float | None) -> bytes | None:
        """The next reply line, or None if the daemon closed the connection first."""
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n")
            if end >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                return line
            if len(buffer) > MAX_RESPONSE_BYTES:
                self.close()
                raise ProtocolError(f"the reply to {method!r} exceeds {MAX_RESPONSE_BYTES} bytes")
            try:
                if deadline is not None:
                    # settimeout(0) would make the socket non-blocking: keep a tiny positive wait.
                    sock.settimeout(max(deadline - time.monotonic(), 1e-3))
                chunk = sock.recv(_READ_CHUNK)
            except TimeoutError:
                self.close()
                raise SyncError(f"s3syncd did not answer {method!r} in time") from None
            except OSError as exc:
                self.close()
                raise SyncError(f"lost the connection to s3syncd: {exc.strerror or exc}") from None
            if not chunk:
                return None
            buffer += chunk

    def _connect_error(self, exc: OSError) -> SyncError:
        path = self._path
        if isinstance(exc, FileNotFoundError):
            return NotRunningError(f"s3syncd is not running (no socket at {path})")
        if isinstance(exc, ConnectionRefusedError):
            return NotRunningError(f"s3syncd is not running (stale socket at {path})")
        if isinstance(exc, PermissionError):
            return SyncError(f"permission denied connecting to s3syncd at {path}")
        if isinstance(exc, TimeoutError):
            return SyncError(f"s3syncd at {path} did not accept the connection in time")
        return SyncError(f"cannot connect to s3syncd at {path}: {exc.strerror or exc}")
