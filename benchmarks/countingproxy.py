"""A pass-through HTTP proxy on 127.0.0.1 that counts S3 requests and bytes, for benchmarks.

Each request is forwarded unchanged (the Host header included: SigV4 signs it, so a client
signs for the proxy's address and the server checks that same header). The proxy counts
requests per kind (GET, HEAD, PUT, COPY = a PUT with ``x-amz-copy-source``, POST, DELETE)
and the body bytes sent up and down. It adds latency, so benchmarks time a run without it
and repeat the run through it only to count.

    with CountingProxy(server.endpoint) as proxy:
        ...  # point the client at proxy.endpoint
        counts = proxy.counts()
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

# Hop-by-hop headers (RFC 9110 7.6.1), and Expect: http.server answers 100-continue itself.
_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "expect"}
)


@dataclass(frozen=True, slots=True)
class Counts:
    """What went through the proxy since the last :meth:`CountingProxy.reset`."""

    requests: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.by_kind.items()))
        return f"{self.requests} requests ({kinds or 'none'})"


class CountingProxy:
    """Forwards to ``upstream`` (``http://host:port``) and counts what passes."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"upstream needs a host and a port: {upstream!r}")
        self.upstream = (parts.hostname, parts.port)
        self._lock = threading.Lock()
        self._kinds: collections.Counter[str] = collections.Counter()
        self._up = 0
        self._down = 0
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            name="countingproxy",
            kwargs={"poll_interval": 0.1},
        )

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> CountingProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)
        self._server.server_close()

    def __enter__(self) -> CountingProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def reset(self) -> None:
        with self._lock:
            self._kinds.clear()
            self._up = self._down = 0

    def counts(self) -> Counts:
        with self._lock:
            return Counts(sum(self._kinds.values()), self._up, self._down, dict(self._kinds))

    def record(self, kind: str, up: int, down: int) -> None:
        with self._lock:
            self._kinds[kind] += 1
            self._up += up
            self._down += down


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins them: no thread outlives the proxy
    block_on_close = True
    proxy: CountingProxy

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up mid-request is not ours to report


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 30  # an idle keep-alive connection ends, so stop() cannot hang
    _upstream: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (OSError, ValueError, http.client.HTTPException):
            self.close_connection = True

    def finish(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            super().finish()
        if self._upstream is not None:
            self._upstream.close()

    def _body(self) -> tuple[bytes, bool]:
        """The raw request body, and whether it is chunked (then forwarded chunked)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raw = bytearray()
            while True:
                line = self.rfile.readline()
                raw += line
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, up to the blank line
                        trailer = self.rfile.readline()
                        raw += trailer
                        if trailer in (b"\r\n", b"\n", b""):
                            return bytes(raw), True
                raw += self.rfile.read(size + 2)
        length = int(self.headers.get("Content-Length") or 0)
        return (self.rfile.read(length) if length else b""), False

    def _forward(self, body: bytes, chunked: bool) -> tuple[int, str, list[tuple[str, str]], bytes]:
        for attempt in (1, 2):
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(
                    *self.server.proxy.upstream, timeout=120
                )
            conn = self._upstream
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() in _HOP or (chunked and name.lower() == "content-length"):
                        continue
                    conn.putheader(name, value)
                conn.endheaders()
                if body:
                    conn.send(body)
                resp = conn.getresponse()
                data = resp.read()
                return resp.status, resp.reason, resp.getheaders(), data
            except (OSError, http.client.HTTPException):
                conn.close()
                self._upstream = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _reply(self, status: int, reason: str, headers: list[tuple[str, str]], data: bytes) -> None:
        self.send_response_only(status, reason)
        head = self.command == "HEAD"
        for name, value in headers:
            low = name.lower()
            if low in _HOP or low == "transfer-encoding" or (low == "content-length" and not head):
                continue
            self.send_header(name, value)
        if not head:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head and data:
            self.wfile.write(data)
        self.wfile.flush()

    def _handle(self) -> None:
        body, chunked = self._body()
        kind = self.command
        if kind == "PUT" and "x-amz-copy-source" in self.headers:
            kind = "COPY"
        try:
            status, reason, headers, data = self._forward(body, chunked)
        except (OSError, http.client.HTTPException):
            self.server.proxy.record(kind, len(body), 0)
            self._reply(502, "Bad Gateway", [], b"")
            return
        self.server.proxy.record(kind, len(body), len(data))
        self._reply(status, reason, headers, data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle
