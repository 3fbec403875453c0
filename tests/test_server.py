"""The control socket (s3syncd.server, s3syncd.client) over real Unix sockets.

Sockets live in a short directory under /tmp: AF_UNIX paths must stay under ~100 bytes, which
pytest's tmp_path does not guarantee.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from s3syncd.client import ControlClient, call
from s3syncd.errors import (
    AlreadyRunningError,
    ConfigError,
    NotRunningError,
    ProtocolError,
    SyncError,
    UnknownActionError,
)
from s3syncd.protocol import MAX_REQUEST_BYTES, PROTOCOL_VERSION, encode_request
from s3syncd.server import MAX_CONNECTIONS, MAX_SOCKET_PATH, ControlServer, default_socket_path

TIMEOUT = 10.0


def wait_for(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def control_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("s3syncd-")]


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    yield
    assert control_threads() == []


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="s3s-"))
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.fixture
def sock_path(short_dir: Path) -> Path:
    return short_dir / "run" / "c.sock"


class Handler:
    """A stand-in for the daemon: one behaviour per method."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, method: str, params: dict[str, Any]) -> Any:
        if method == "status":
            return {"ok": True}
        if method == "pending":
            return {"echo": params}
        if method == "approve":
            raise UnknownActionError(f"no pending action {params.get('id')}")
        if method == "reject":
            raise RuntimeError("handler bug")
        if method == "log":
            return object()  # not JSON
        if method == "sync":  # slow: runs until released
            self.entered.set()
            if not self.release.wait(TIMEOUT):
                raise AssertionError("sync never released")
            return {"synced": True}
        raise ProtocolError(f"method {method} not handled")


@pytest.fixture
def handler() -> Handler:
    return Handler()


@pytest.fixture
def server(sock_path: Path, handler: Handler) -> Iterator[ControlServer]:
    srv = ControlServer(sock_path, handler)
    srv.start()
    try:
        yield srv
    finally:
        handler.release.set()
        srv.stop()


class Raw:
    """A bare connection, to send what the real client never would."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(os.fspath(path))
        self.buffer = b""

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> dict[str, Any] | None:
        """The next reply line as JSON, or None at EOF."""
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        result: dict[str, Any] = json.loads(line)
        return result

    def at_eof(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def request(request_id: int | str, method: str, params: dict[str, Any] | None = None) -> bytes:
    return encode_request(request_id, method, params)


# -- files and lifecycle ----------------------------------------------------------------------


def test_socket_is_0600_in_a_0700_directory(server: ControlServer, sock_path: Path) -> None:
    st = os.lstat(sock_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(sock_path.parent).st_mode) == 0o700
    assert server.path == sock_path


def test_existing_private_directory_is_accepted(sock_path: Path, handler: Handler) -> None:
    os.mkdir(sock_path.parent, 0o700)
    with ControlServer(sock_path, handler):
        assert call(sock_path, "status") == {"ok": True}


def test_directory_open_to_others_is_refused(sock_path: Path, handler: Handler) -> None:
    os.mkdir(sock_path.parent)
    os.chmod(sock_path.parent, 0o755)
    srv = ControlServer(sock_path, handler)
    with pytest.raises(SyncError, match=r"other users can access it \(mode 0755\).*chmod 700"):
        srv.start()
    srv.stop()
    assert not sock_path.exists()


def test_status_round_trip_and_hello(server: ControlServer, sock_path: Path) -> None:
    assert call(sock_path, "status") == {"ok": True}
    with ControlClient(sock_path) as client:
        hello = client.hello()
        assert hello["protocol"] == PROTOCOL_VERSION
        assert hello["pid"] == os.getpid()
        assert "sync" in hello["methods"]
        # Several calls on one connection.
        assert client.call("pending", {"id": "a"}) == {"echo": {"id": "a"}}
        assert client.call("status") == {"ok": True}


def test_hello_is_answered_while_workers_are_busy(sock_path: Path, handler: Handler) -> None:
    info = {"version": "9.9", "name": "work", "protocol": 99}
    with ControlServer(sock_path, handler, info=info), ThreadPoolExecutor(max_workers=4) as pool:
        slow = [pool.submit(call, sock_path, "sync", None, None) for _ in range(4)]
        assert handler.entered.wait(TIMEOUT)
        with ControlClient(sock_path, timeout=5) as client:
            hello = client.hello()
        assert (hello["version"], hello["name"], hello["protocol"]) == ("9.9", "work", 1)
        handler.release.set()
        assert [f.result(TIMEOUT) for f in slow] == [{"synced": True}] * 4


def test_second_server_on_the_same_path_is_refused(
    server: ControlServer, sock_path: Path, handler: Handler
) -> None:
    second = ControlServer(sock_path, handler)
    with pytest.raises(AlreadyRunningError, match="already serving"):
        second.start()
    second.stop()
    # The first one keeps its socket and keeps serving.
    assert sock_path.exists()
    assert call(sock_path, "status") == {"ok": True}


def test_stale_socket_file_is_replaced(sock_path: Path, handler: Handler) -> None:
    os.mkdir(sock_path.parent, 0o700)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(os.fspath(sock_path))  # bound, never listened, closed without unlink
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    with pytest.raises(NotRunningError, match="stale socket"):
        call(sock_path, "status")
    with ControlServer(sock_path, handler):
        assert call(sock_path, "status") == {"ok": True}


def test_a_file_that_is_not_a_socket_is_left_alone(sock_path: Path, handler: Handler) -> None:
    os.mkdir(sock_path.parent, 0o700)
    sock_path.write_text("not a socket")
    srv = ControlServer(sock_path, handler)
    with pytest.raises(SyncError, match="not a socket"):
        srv.start()
    srv.stop()
    assert sock_path.read_text() == "not a socket"


def test_stop_removes_the_socket_and_joins_threads(sock_path: Path, handler: Handler) -> None:
    srv = ControlServer(sock_path, handler)
    srv.stop()  # before start: nothing to do
    srv.start()
    with Raw(sock_path) as idle:
        # Make the pool start a worker thread too.
        assert call(sock_path, "status") == {"ok": True}
        assert "s3syncd-control" in control_threads()
        assert any(name.startswith("s3syncd-request") for name in control_threads())
        srv.stop()
        assert idle.at_eof()  # open connections are closed
    assert not sock_path.exists()
    assert control_threads() == []
    srv.stop()  # idempotent
    with pytest.raises(NotRunningError, match="no socket at"):
        call(sock_path, "status")


def test_stop_leaves_a_socket_file_that_is_not_ours(sock_path: Path, handler: Handler) -> None:
    srv = ControlServer(sock_path, handler)
    srv.start()
    os.unlink(sock_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(os.fspath(sock_path))  # e.g. a newer daemon's socket
        srv.stop()
        assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)


def test_start_twice_is_a_programming_error(server: ControlServer) -> None:
    with pytest.raises(RuntimeError):
        server.start()


# -- requests ---------------------------------------------------------------------------------


def test_garbage_gets_an_error_and_the_connection_stays_usable(
    server: ControlServer, sock_path: Path
) -> None:
    with Raw(sock_path) as conn:
        conn.send(b"this is not json\n")
        reply = conn.reply()
        assert reply is not None
        assert reply["v"] == 1
        assert reply["id"] is None
        assert reply["error"]["code"] == "bad_request"
        assert "not JSON" in reply["error"]["message"]
        conn.send(b"\n\xff\xfe\n")  # a blank line is ignored; non-UTF-8 is refused
        reply = conn.reply()
        assert reply is not None
        assert "UTF-8" in reply["error"]["message"]
        conn.send(request(7, "status"))
        assert conn.reply() == {"v": 1, "id": 7, "result": {"ok": True}}


def test_refusals_echo_the_request_id(server: ControlServer, sock_path: Path) -> None:
    with Raw(sock_path) as conn:
        conn.send(b'{"v":2,"id":"x","method":"status"}\n')
        reply = conn.reply()
        assert reply is not None
        assert reply["id"] == "x"
        assert reply["error"]["code"] == "bad_request"
        assert "speaks version 1" in reply["error"]["message"]


def test_pipelined_requests_are_answered_in_order(
    server: ControlServer, sock_path: Path, handler: Handler
) -> None:
    with Raw(sock_path) as conn:
        # One write holding three requests; the slow one is first.
        conn.send(request(1, "sync") + request(2, "status") + request(3, "pending", {"n": 3}))
        assert handler.entered.wait(TIMEOUT)
        handler.release.set()
        assert [conn.reply() for _ in range(3)] == [
            {"v": 1, "id": 1, "result": {"synced": True}},
            {"v": 1, "id": 2, "result": {"ok": True}},
            {"v": 1, "id": 3, "result": {"echo": {"n": 3}}},
        ]


def test_last_request_after_half_close_is_answered(server: ControlServer, sock_path: Path) -> None:
    with Raw(sock_path) as conn:
        conn.send(request(1, "status").rstrip(b"\n"))  # no newline, then EOF
        conn.sock.shutdown(socket.SHUT_WR)
        assert conn.reply() == {"v": 1, "id": 1, "result": {"ok": True}}
        assert conn.at_eof()


def test_oversized_request_is_refused_and_the_server_lives(
    server: ControlServer, sock_path: Path
) -> None:
    with Raw(sock_path) as conn:
        # The server hangs up after the first MiB: the rest of the send fails.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.send(b'{"v":1,"id":1,"method":"status","params":{"x":"' + b"a" * 10_000_000)
        reply = conn.reply()
        assert reply is not None
        assert reply["error"]["code"] == "bad_request"
        assert str(MAX_REQUEST_BYTES) in reply["error"]["message"]
        assert conn.at_eof()
    assert call(sock_path, "status") == {"ok": True}


def test_a_long_line_with_its_newline_is_refused_too(
    server: ControlServer, sock_path: Path
) -> None:
    with Raw(sock_path) as conn:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.send(b"x" * (MAX_REQUEST_BYTES + 10) + b"\n" + request(2, "status"))
        reply = conn.reply()
        assert reply is not None
        assert reply["error"]["code"] == "bad_request"
        assert conn.at_eof()  # the request after it is not answered


def test_a_line_at_the_limit_is_read(server: ControlServer, sock_path: Path) -> None:
    head = b'{"v":1,"id":1,"method":"pending","params":{"x":"'
    tail = b'"}}'
    filler = b"a" * (MAX_REQUEST_BYTES - len(head) - len(tail))
    with Raw(sock_path) as conn:
        conn.send(head + filler + tail + b"\n")
        reply = conn.reply()
        assert reply is not None
        assert len(reply["result"]["echo"]["x"]) == len(filler)


def test_unknown_method(server: ControlServer, sock_path: Path) -> None:
    with pytest.raises(ProtocolError, match="unknown method 'shutdown'") as info:
        call(sock_path, "shutdown")
    assert info.value.code == "unknown_method"


def test_handler_sync_error_keeps_its_code(server: ControlServer, sock_path: Path) -> None:
    with pytest.raises(UnknownActionError, match="no pending action a1") as info:
        call(sock_path, "approve", {"id": "a1"})
    assert info.value.code == "unknown_action"


def test_handler_crash_is_internal_and_logged(
    server: ControlServer, sock_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="s3syncd.server"):
        for method in ("reject", "log"):  # an exception; a result that is not JSON
            with pytest.raises(SyncError, match="internal error") as info:
                call(sock_path, method)
            assert info.value.code == "internal"
    assert "handler bug" not in str(info.value)
    crashes = [r for r in caplog.records if r.exc_info]
    assert len(crashes) == 2
    assert "RuntimeError: handler bug" in caplog.text  # the traceback
    assert call(sock_path, "status") == {"ok": True}
    assert "s3syncd-control" in control_threads()


def test_other_uid_is_forbidden(sock_path: Path, handler: Handler) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("peer credentials are only tested on Linux")
    with ControlServer(sock_path, handler, allowed_uid=os.getuid() + 1):
        with pytest.raises(SyncError, match="permission denied") as info:
            call(sock_path, "status")
        assert info.value.code == "forbidden"
        with Raw(sock_path) as conn:
            reply = conn.reply()  # refused before it says anything
            assert reply is not None
            assert reply["error"]["code"] == "forbidden"
            assert conn.at_eof()


def test_concurrent_clients(server: ControlServer, sock_path: Path) -> None:
    def one(n: int) -> Any:
        with ControlClient(sock_path) as client:
            return [client.call("pending", {"n": n, "k": k}) for k in range(5)]

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(one, range(20)))
    assert results == [[{"echo": {"n": n, "k": k}} for k in range(5)] for n in range(20)]


def test_more_clients_than_the_connection_cap_wait_their_turn(
    server: ControlServer, sock_path: Path
) -> None:
    clients = MAX_CONNECTIONS + 36
    # Every client connects before any of them calls, so the cap is certainly reached.
    barrier = threading.Barrier(clients, timeout=TIMEOUT)

    def one(n: int) -> Any:
        with ControlClient(sock_path) as client:
            barrier.wait()
            return client.call("pending", {"n": n})

    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(one, range(clients)))
    assert results == [{"echo": {"n": n}} for n in range(clients)]


def test_slow_request_does_not_block_others(
    server: ControlServer, sock_path: Path, handler: Handler
) -> None:
    with ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(call, sock_path, "sync", None, None)
        assert handler.entered.wait(TIMEOUT)
        assert call(sock_path, "status", timeout=5) == {"ok": True}
        assert not slow.done()
        handler.release.set()
        assert slow.result(TIMEOUT) == {"synced": True}


def test_client_timeout_and_disconnect_during_a_request(
    server: ControlServer, sock_path: Path, handler: Handler
) -> None:
    with pytest.raises(SyncError, match="did not answer 'sync' in time"):
        call(sock_path, "sync", timeout=0.2)
    # The daemon still runs that request for a client that left; it must cope.
    assert handler.entered.wait(TIMEOUT)
    handler.release.set()
    assert call(sock_path, "status") == {"ok": True}


def test_client_after_a_timeout_is_closed(
    server: ControlServer, sock_path: Path, handler: Handler
) -> None:
    with ControlClient(sock_path) as client:
        with pytest.raises(SyncError, match="in time"):
            client.call("sync", timeout=0.1)
        with pytest.raises(SyncError, match="is closed"):
            client.call("status")
    handler.release.set()


def test_client_when_nothing_runs(short_dir: Path) -> None:
    with pytest.raises(NotRunningError, match="no socket at") as info:
        call(short_dir / "none.sock", "status")
    assert info.value.exit_code == 3


def test_hello_rejects_another_protocol_version(short_dir: Path) -> None:
    # A fake daemon that speaks version 2.
    path = short_dir / "fake.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(os.fspath(path))
        listener.listen(1)

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b'{"v":1,"id":1,"result":{"protocol":2}}\n')

        thread = threading.Thread(target=answer, name="fake-daemon")
        thread.start()
        try:
            with ControlClient(path) as client, pytest.raises(ProtocolError, match="version 2"):
                client.hello()
        finally:
            thread.join(TIMEOUT)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc")
def test_idle_server_does_not_spin(server: ControlServer) -> None:
    thread = next(t for t in threading.enumerate() if t.name == "s3syncd-control")

    def cpu_ticks() -> int:
        fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rsplit(")", 1)[1]
        utime, stime = fields.split()[11:13]
        return int(utime) + int(stime)

    before = cpu_ticks()
    threading.Event().wait(0.5)  # a measurement window, not waiting for a condition
    assert cpu_ticks() - before <= 5  # ticks are 10 ms: a spinning loop would burn ~50


# -- the socket path --------------------------------------------------------------------------


def test_default_socket_path_prefers_the_runtime_dir(tmp_path: Path) -> None:
    state = Path("/home/u/Data/.S3")
    env = {"XDG_RUNTIME_DIR": "/run/user/1000"}
    assert default_socket_path("work", state, env) == Path("/run/user/1000/s3syncd/work.sock")
    assert default_socket_path("work", state, {}) == state / "s3syncd.sock"
    # Relative runtime dirs are invalid per the XDG spec.
    assert default_socket_path("work", state, {"XDG_RUNTIME_DIR": "run"}) == state / "s3syncd.sock"


def test_default_socket_path_is_absolute(monkeypatch: pytest.MonkeyPatch, short_dir: Path) -> None:
    monkeypatch.chdir(short_dir)
    assert default_socket_path("w", Path(".S3"), {}) == short_dir / ".S3" / "s3syncd.sock"


def test_default_socket_path_falls_back_when_too_long() -> None:
    long_dir = "/" + "d" * MAX_SOCKET_PATH
    state = Path("/home/u/Data/.S3")
    env = {"XDG_RUNTIME_DIR": long_dir}
    assert default_socket_path("w", state, env) == state / "s3syncd.sock"
    assert default_socket_path("w", Path(long_dir), {"XDG_RUNTIME_DIR": "/run/user/1"}) == Path(
        "/run/user/1/s3syncd/w.sock"
    )
    with pytest.raises(ConfigError, match="longer than 100 bytes"):
        default_socket_path("w", Path(long_dir), env)
    with pytest.raises(ConfigError, match="longer than 100 bytes"):
        default_socket_path("w", Path(long_dir), {})


@pytest.mark.parametrize("name", ["", ".", "..", "a/b"])
def test_default_socket_path_rejects_bad_names(name: str) -> None:
    with pytest.raises(ConfigError):
        default_socket_path(name, Path("/s"), {})
