"""The daemon's end of the control socket (DESIGN.md §4).

One thread named ``s3syncd-control`` owns the listening socket and every connection and
multiplexes them with :mod:`selectors`; it never blocks on a request. Requests run on a small
pool (``s3syncd-request-N``) so that a long ``sync`` does not hold up ``status``; a worker hands
its encoded reply back through a queue and wakes the selector through a socketpair, and only the
selector thread ever touches a connection. The idle server sleeps in ``select()`` without a
timeout, so it costs no CPU.

Per connection, one request is in flight at a time and nothing more is read from the peer until
its reply is queued, so replies come back in request order and a peer cannot make the daemon
buffer without bound (a line is at most :data:`~s3syncd.protocol.MAX_REQUEST_BYTES`, and reading
also pauses while unsent replies pile up).

Wire codes made here rather than by a handler: ``bad_request`` and ``unknown_method`` (from
:func:`~s3syncd.protocol.parse_request`), ``forbidden`` for a peer of another uid (the reply is
sent, then the connection closed), and ``internal`` for a handler that raised something other
than a :class:`SyncError` (logged with its traceback; the server carries on). ``hello`` is answered
here, not by the handler, since the protocol version belongs to this layer.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import stat
import struct
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, TypeAlias

from s3syncd.errors import AlreadyRunningError, ConfigError, SyncError
from s3syncd.protocol import (
    BAD_REQUEST,
    FORBIDDEN,
    INTERNAL,
    MAX_REQUEST_BYTES,
    METHODS,
    PROTOCOL_VERSION,
    Rejection,
    Request,
    encode_error,
    encode_result,
    parse_request,
)

log = logging.getLogger(__name__)

Handler: TypeAlias = Callable[[str, dict[str, Any]], Any]

# sun_path is 108 bytes on Linux and 104 on macOS, both counting the terminating NUL.
MAX_SOCKET_PATH = 100
# Connections beyond this wait in the listen backlog until one closes.
MAX_CONNECTIONS = 64
REQUEST_WORKERS = 4

_READ_CHUNK = 1 << 16
# Stop reading requests from a peer that does not read its replies.
_OUTBUF_HIGH_WATER = 1 << 20
# How long probing an existing socket file may take before we take it as alive (busy backlog).
_PROBE_TIMEOUT = 1.0
# Errors of accept() that mean "no descriptors/memory now": pause accepting instead of spinning.
_ACCEPT_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

# Selector keys' data for the two sockets that are not connections.
_LISTENER = "listener"
_WAKE = "wake"


def default_socket_path(name: str, state_dir: Path, environ: Mapping[str, str]) -> Path:
    """Where the daemon for config ``name`` listens.

    ``$XDG_RUNTIME_DIR/s3syncd/<name>.sock`` when XDG_RUNTIME_DIR is set (and absolute, as the
    XDG spec requires), else ``<state_dir>/s3syncd.sock``. A path longer than the AF_UNIX limit
    falls back to the other location; if both are too long this raises :class:`ConfigError`.
    ``state_dir`` is made absolute, since the daemon and s3syncctl may run in different folders.
    """
    if not name or name in {".", ".."} or "/" in name or "\0" in name:
        raise ConfigError(f"invalid config name {name!r} for a socket file name")
    candidates: list[Path] = []
    runtime_dir = environ.get("XDG_RUNTIME_DIR", "")
    if runtime_dir and os.path.isabs(runtime_dir):
        candidates.append(Path(runtime_dir) / "s3syncd" / f"{name}.sock")
    candidates.append(Path(os.path.abspath(state_dir)) / "s3syncd.sock")
    for candidate in candidates:
        if len(os.fsencode(candidate)) <= MAX_SOCKET_PATH:
            return candidate
    raise ConfigError(
        f"the control socket path would be longer than {MAX_SOCKET_PATH} bytes "
        f"({' and '.join(str(c) for c in candidates)}); "
        "set XDG_RUNTIME_DIR to a short directory or move the data folder to a shorter path"
    )


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket.

    None on a platform without a way to ask (the 0700 directory and 0600 socket still keep other
    users out there). Raises OSError if the platform has a way and it fails.
    """
    if sys.platform.startswith("linux"):
        # struct ucred { pid_t pid; uid_t uid; gid_t gid; }
        fmt = "=iII"
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(fmt))
        _pid, uid, _gid = struct.unpack(fmt, raw)
        return int(uid)
    if sys.platform == "darwin":  # best effort: not exercised by the test suite
        # getpeereid(3) is LOCAL_PEERCRED at level SOL_LOCAL (0), which fills a struct xucred
        # { u_int cr_version; uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16]; }.
        level = getattr(socket, "SOL_LOCAL", 0)
        option = getattr(socket, "LOCAL_PEERCRED", 0x001)
        raw = sock.getsockopt(level, option, struct.calcsize("=IIh2x16I"))
        version, uid = struct.unpack_from("=II", raw)
        if version != 0:  # XUCRED_VERSION
            raise OSError(errno.EPROTO, f"unexpected xucred version {version}")
        return int(uid)
    return None


class _Connection:
    """One client, touched only by the selector thread."""

    __slots__ = ("busy", "closed", "closing", "eof", "events", "inbuf", "outbuf", "scanned", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.scanned = 0  # inbuf[:scanned] holds no newline: don't search it again
        self.outbuf = bytearray()
        self.busy = False  # a request is running on the pool
        self.eof = False  # the peer will send nothing more
        self.closing = False  # close once the queued replies are sent
        self.closed = False
        self.events = 0  # what it is registered for in the selector (0: not registered)


class ControlServer:
    """Serves the control socket at ``path``, calling ``handler(method, params)`` per request.

    The handler runs on a worker thread, so it must be thread-safe. Its return value must be
    JSON-serialisable; a :class:`SyncError` it raises becomes an error reply with its code.
    ``hello`` never reaches the handler: the server answers it at once, even when every worker is
    busy, with ``protocol``, ``pid`` and ``methods`` plus the entries of ``info`` (e.g. the
    daemon's version and config name).
    """

    def __init__(
        self,
        path: Path,
        handler: Handler,
        *,
        allowed_uid: int | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        self._path = Path(path)
        self._handler = handler
        self._info = dict(info or {})
        self._allowed_uid = os.getuid() if allowed_uid is None else allowed_uid
        # Guards the completion queue, the wake socket's lifetime and the started/stopped flags.
        self._lock = threading.Lock()
        self._completions: deque[tuple[_Connection, bytes]] = deque()
        self._stop_event = threading.Event()
        self._started = False
        self._stopped = False
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[_Connection] = set()
        self._accept_paused = False

    @property
    def path(self) -> Path:
        return self._path

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the socket and start serving; raises AlreadyRunningError or SyncError."""
        with self._lock:
            if self._started:
                raise RuntimeError("ControlServer.start() called twice")
            self._started = True
        try:
            self._prepare_directory()
            self._evict_stale_socket()
            self._bind()
            assert self._listener is not None
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._listener, selectors.EVENT_READ, _LISTENER)
            self._selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
            self._pool = ThreadPoolExecutor(
                max_workers=REQUEST_WORKERS, thread_name_prefix="s3syncd-request"
            )
            self._thread = threading.Thread(target=self._serve, name="s3syncd-control", daemon=True)
            self._thread.start()
        except BaseException:
            self._release()
            raise
        log.info("control socket listening on %s", self._path)

    def stop(self) -> None:
        """Stop serving, close every connection, remove our socket file, join the threads.

        Idempotent. Waits for requests already running on the pool (the daemon cancels a
        running pass first); must not be called from a handler.
        """
        with self._lock:
            if not self._started or self._stopped:
                return
            self._stopped = True
        self._stop_event.set()
        self._wake()
        self._release()
        log.info("control socket %s closed", self._path)

    def _release(self) -> None:
        """Undo whatever start() got done; the selector thread is gone before anything closes."""
        with self._lock:
            self._stopped = True  # a failed start() leaves nothing for stop() to do
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        # Connections first, so their peers see EOF at once even if a handler is still running.
        for conn in list(self._conns):
            self._close(conn)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._unlink_own_socket()
        with self._lock:
            for sock in (self._wake_r, self._wake_w):
                if sock is not None:
                    sock.close()
            self._wake_r = self._wake_w = None
            self._completions.clear()

    def _prepare_directory(self) -> None:
        parent = self._path.parent
        try:
            os.mkdir(parent, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise SyncError(
                f"cannot create the socket directory {parent}: {exc.strerror}"
            ) from None
        else:
            os.chmod(parent, 0o700)  # the umask may have narrowed it below what we need
        try:
            st = os.stat(parent)
        except OSError as exc:
            raise SyncError(f"cannot use the socket directory {parent}: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise SyncError(f"cannot use {parent} for the control socket: not a directory")
        if st.st_uid != os.geteuid():
            raise SyncError(
                f"refusing to serve in {parent}: it is owned by uid {st.st_uid}, "
                f"not by this user (uid {os.geteuid()})"
            )
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise SyncError(
                f"refusing to serve in {parent}: other users can access it (mode {mode:04o}); "
                f"run: chmod 700 {parent}"
            )

    def _evict_stale_socket(self) -> None:
        """Remove a socket file left by a daemon that died; refuse if one is still serving."""
        path = self._path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise SyncError(f"cannot inspect {path}: {exc.strerror}") from None
        if not stat.S_ISSOCK(st.st_mode):
            raise SyncError(f"{path} exists and is not a socket; remove it if it is not needed")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(_PROBE_TIMEOUT)
            try:
                probe.connect(os.fspath(path))
            except ConnectionRefusedError:
                pass  # nobody listens: stale
            except FileNotFoundError:
                return  # removed meanwhile
            except OSError as exc:
                # A timeout or EAGAIN means a full backlog: something is alive there.
                raise AlreadyRunningError(
                    f"another s3syncd seems to be serving {path} ({exc})"
                ) from None
            else:
                raise AlreadyRunningError(f"another s3syncd is already serving {path}")
        log.info("removing stale control socket %s", path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise SyncError(f"cannot remove the stale socket {path}: {exc.strerror}") from None

    def _bind(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener = listener
        # bind() creates the file with 0777 & ~umask: bind under 0o177 so it is never wider than
        # 0600, not even for an instant. The umask is process-wide, so keep the window to the one
        # call; files other threads create meanwhile come out narrower, never wider.
        old_umask = os.umask(0o177)
        try:
            listener.bind(os.fspath(self._path))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise AlreadyRunningError(
                    f"another s3syncd is already serving {self._path}"
                ) from None
            raise SyncError(
                f"cannot create the control socket {self._path}: {exc.strerror}"
            ) from None
        finally:
            os.umask(old_umask)
        try:
            st = os.stat(self._path)
            self._identity = (st.st_dev, st.st_ino)
            os.chmod(self._path, 0o600)
            listener.listen(socket.SOMAXCONN)
        except OSError as exc:
            raise SyncError(f"cannot listen on {self._path}: {exc.strerror}") from None
        listener.setblocking(False)

    def _unlink_own_socket(self) -> None:
        # Only our own file: a later daemon may have replaced it after evicting us as stale.
        if self._identity is None:
            return
        try:
            st = os.lstat(self._path)
            if (st.st_dev, st.st_ino) == self._identity:
                os.unlink(self._path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove the control socket %s: %s", self._path, exc)
        self._identity = None

    # -- the selector thread -----------------------------------------------------------------

    def _serve(self) -> None:
        selector = self._selector
        assert selector is not None
        while not self._stop_event.is_set():
            for key, mask in selector.select():
                try:
                    self._on_event(key.data, mask)
                except Exception:
                    # Never let one bad connection take the control socket down.
                    log.exception("control socket: unexpected error")
                    if isinstance(key.data, _Connection):
                        self._close(key.data)
            try:
                self._drain_completions()
            except Exception:
                log.exception("control socket: unexpected error delivering replies")

    def _on_event(self, data: Any, mask: int) -> None:
        if data == _LISTENER:
            self._accept()
        elif data == _WAKE:
            self._drain_wake()
        else:
            conn: _Connection = data
            if mask & selectors.EVENT_READ:
                self._read(conn)
            if mask & selectors.EVENT_WRITE and not conn.closed:
                self._flush(conn)
            self._process(conn)
            self._update(conn)

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            if len(self._conns) >= MAX_CONNECTIONS:
                # Leave further peers waiting in the backlog rather than failing them.
                log.warning("control socket: %d connections open; waiting", MAX_CONNECTIONS)
                self._pause_accept()
                return
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_EXHAUSTED:
                    # The listener stays readable: selecting on it would spin. Resume once a
                    # connection closes or a reply is delivered.
                    log.error("control socket: cannot accept (%s); pausing", exc)
                    self._pause_accept()
                else:
                    log.warning("control socket: accept failed: %s", exc)
                return
            sock.setblocking(False)
            conn = _Connection(sock)
            self._conns.add(conn)
            try:
                uid = peer_uid(sock)
            except OSError as exc:
                log.warning("control socket: cannot read the peer's credentials: %s", exc)
                self._forbid(conn, "permission denied: the peer's credentials are unavailable")
            else:
                if uid is not None and uid != self._allowed_uid:
                    log.warning("control socket: refused a peer with uid %d", uid)
                    self._forbid(conn, f"permission denied: uid {uid} may not control s3syncd")
            self._update(conn)

    def _forbid(self, conn: _Connection, message: str) -> None:
        conn.closing = True
        self._queue(conn, encode_error(None, FORBIDDEN, message))

    def _pause_accept(self) -> None:
        if not self._accept_paused and self._selector is not None and self._listener is not None:
            self._selector.unregister(self._listener)
            self._accept_paused = True

    def _resume_accept(self) -> None:
        if self._accept_paused and not self._stop_event.is_set():
            assert self._selector is not None and self._listener is not None
            self._selector.register(self._listener, selectors.EVENT_READ, _LISTENER)
            self._accept_paused = False

    def _read(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(_READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if data:
            conn.inbuf += data
        else:
            conn.eof = True

    def _process(self, conn: _Connection) -> None:
        """Handle the complete lines buffered for ``conn``, up to the next one that runs."""
        while not (conn.closed or conn.busy or conn.closing) and (
            len(conn.outbuf) < _OUTBUF_HIGH_WATER
        ):
            end = conn.inbuf.find(b"\n", conn.scanned)
            if end < 0:
                if len(conn.inbuf) > MAX_REQUEST_BYTES:
                    self._refuse_oversized(conn)
                    return
                if not (conn.eof and conn.inbuf):
                    conn.scanned = len(conn.inbuf)
                    return
                end = len(conn.inbuf)  # a last line without its newline: take it as a line
            if end > MAX_REQUEST_BYTES:
                self._refuse_oversized(conn)
                return
            line = bytes(conn.inbuf[:end])
            del conn.inbuf[: end + 1]
            conn.scanned = 0
            self._dispatch(conn, line)

    def _refuse_oversized(self, conn: _Connection) -> None:
        log.warning("control socket: refused a request over %d bytes", MAX_REQUEST_BYTES)
        conn.inbuf = bytearray()  # discard it; the rest of it is never read
        conn.scanned = 0
        conn.closing = True
        message = f"request exceeds the limit of {MAX_REQUEST_BYTES} bytes; closing the connection"
        self._queue(conn, encode_error(None, BAD_REQUEST, message))

    def _dispatch(self, conn: _Connection, line: bytes) -> None:
        if not line.strip():
            return  # blank lines are harmless: ignore them
        parsed = parse_request(line)
        if isinstance(parsed, Rejection):
            log.info("control socket: refused a request: %s", parsed.message)
            self._queue(conn, encode_error(parsed.id, parsed.code, parsed.message))
            return
        if parsed.method == "hello":
            self._queue(conn, encode_result(parsed.id, self._hello()))
            return
        assert self._pool is not None
        conn.busy = True
        try:
            self._pool.submit(self._execute, conn, parsed)
        except RuntimeError:  # the pool is shutting down: so are we
            conn.busy = False
            conn.closing = True

    def _hello(self) -> dict[str, Any]:
        # The protocol version is this layer's to state: info cannot override it.
        return {
            **self._info,
            "protocol": PROTOCOL_VERSION,
            "pid": os.getpid(),
            "methods": sorted(METHODS),
        }

    def _queue(self, conn: _Connection, reply: bytes) -> None:
        conn.outbuf += reply
        self._flush(conn)  # most replies fit the socket buffer: skip a trip through select()

    def _flush(self, conn: _Connection) -> None:
        while conn.outbuf and not conn.closed:
            try:
                sent = conn.sock.send(conn.outbuf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # the peer went away (EPIPE, ECONNRESET)
                self._close(conn)
                return
            del conn.outbuf[:sent]

    def _update(self, conn: _Connection) -> None:
        """Close ``conn`` if it is done, else register it for what it now waits on."""
        if conn.closed:
            return
        if not conn.busy and not conn.outbuf and (conn.closing or (conn.eof and not conn.inbuf)):
            self._close(conn)
            return
        want = 0
        if not (conn.busy or conn.closing or conn.eof) and len(conn.outbuf) < _OUTBUF_HIGH_WATER:
            want |= selectors.EVENT_READ
        if conn.outbuf:
            want |= selectors.EVENT_WRITE
        if want == conn.events:
            return
        selector = self._selector
        assert selector is not None
        if conn.events == 0:
            selector.register(conn.sock, want, conn)
        elif want == 0:
            selector.unregister(conn.sock)
        else:
            selector.modify(conn.sock, want, conn)
        conn.events = want

    def _close(self, conn: _Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        if conn.events and self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(conn.sock)
        conn.events = 0
        conn.sock.close()
        self._conns.discard(conn)
        self._resume_accept()

    # -- hand-over between the pool and the selector thread ----------------------------------

    def _execute(self, conn: _Connection, request: Request) -> None:
        """Run one request on a pool thread; the reply always goes back to the selector."""
        reply = encode_error(request.id, INTERNAL, "internal error; see the s3syncd log")
        try:
            result = self._handler(request.method, request.params)
            reply = encode_result(request.id, result)
        except SyncError as exc:
            log.info("control request %s (id %r) failed: %s", request.method, request.id, exc)
            reply = encode_error(request.id, exc.code, exc.message)
        except Exception as exc:
            log.exception("control request %s (id %r) failed", request.method, request.id)
            reply = encode_error(
                request.id, INTERNAL, f"internal error ({type(exc).__name__}); see the s3syncd log"
            )
        finally:
            self._post(conn, reply)

    def _post(self, conn: _Connection, reply: bytes) -> None:
        with self._lock:
            if self._wake_w is None:
                return  # stopped: nobody will deliver it
            self._completions.append((conn, reply))
        self._wake()

    def _wake(self) -> None:
        with self._lock:
            if self._wake_w is None:
                return
            try:
                self._wake_w.send(b"\0")
            except (BlockingIOError, InterruptedError):
                pass  # the buffer is full of wake-ups already: one is pending
            except OSError as exc:
                log.warning("control socket: cannot wake the selector: %s", exc)

    def _drain_wake(self) -> None:
        assert self._wake_r is not None
        while True:
            try:
                if not self._wake_r.recv(4096):
                    return
            except (BlockingIOError, InterruptedError):
                return

    def _drain_completions(self) -> None:
        with self._lock:
            done = list(self._completions)
            self._completions.clear()
        for conn, reply in done:
            conn.busy = False
            if conn.closed:
                continue
            self._queue(conn, reply)
            self._process(conn)
            self._update(conn)
        if done:
            self._resume_accept()
