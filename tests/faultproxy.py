"""An HTTP proxy on 127.0.0.1 that makes an S3 endpoint unreliable, for attack tests.

It forwards each request unchanged (the Host header included: SigV4 signs it, so clients
sign for the proxy's address and the server checks that same header) and, for a seeded
random share of them, injects a fault instead:

- ``500``: an ``InternalError`` reply, the request never reaches the server;
- ``503``: a ``SlowDown`` reply (S3's throttling error body);
- ``reset``: the connection is reset before the request is forwarded;
- ``reset_late``: the request is forwarded and applied, then the connection is reset
  before the reply (the client cannot know its write happened);
- ``stall``: the reply is held back for ``stall_seconds``, then sent.

Not a fixture module: tests start and stop it (``with FaultProxy(...) as proxy``).
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import random
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

FAULT_KINDS = ("500", "503", "reset", "reset_late", "stall")
DEFAULT_RATES = {"500": 0.03, "503": 0.03, "reset": 0.025, "reset_late": 0.01, "stall": 0.005}
# Hop-by-hop headers (RFC 9110 7.6.1) and the ones this proxy recomputes.
_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "expect"}
)
_ERROR_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>{code}</Code><Message>{message}</Message>"
    "<RequestId>faultproxy</RequestId></Error>"
)
_REPLIES = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "SlowDown", "Please reduce your request rate."),
}


class FaultProxy:
    """Forwards to ``upstream`` (``http://host:port``); counts requests and faults."""

    def __init__(
        self,
        upstream: str,
        seed: int,
        rates: dict[str, float] | None = None,
        stall_seconds: float = 2.0,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"upstream needs a host and a port: {upstream!r}")
        self.upstream = (parts.hostname, parts.port)
        self.rates = dict(DEFAULT_RATES if rates is None else rates)
        self.stall_seconds = stall_seconds
        self.enabled = True
        self.seed = seed
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.requests = 0
        self.faults: collections.Counter[str] = collections.Counter()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="faultproxy", kwargs={"poll_interval": 0.1}
        )

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)
        self._server.server_close()  # joins the connection threads

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def choose(self) -> str | None:
        """The fault for the next request (None: forward it normally)."""
        with self._lock:
            self.requests += 1
            if not self.enabled:
                return None
            roll = self._rng.random()
            for kind in FAULT_KINDS:
                roll -= self.rates.get(kind, 0.0)
                if roll < 0:
                    self.faults[kind] += 1
                    return kind
            return None


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins them: no thread outlives the proxy
    block_on_close = True
    proxy: FaultProxy

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a reset connection is the point, not an error to print


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
        """The raw request body, and whether it is chunked (then kept chunked)."""
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

    def _reset(self) -> None:
        # SO_LINGER 0 makes close() send RST instead of FIN: "connection reset by peer".
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        for stream in (self.rfile, self.wfile):
            with contextlib.suppress(OSError):
                stream.close()
        self.connection.close()
        self.close_connection = True

    def _forward(self, body: bytes, chunked: bool) -> tuple[int, str, list[tuple[str, str]], bytes]:
        for attempt in (1, 2):
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(*self.server.proxy.upstream, timeout=60)
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
        fault = self.server.proxy.choose()
        if fault == "reset":
            self._reset()
            return
        if fault in _REPLIES:
            status, code, message = _REPLIES[fault]
            xml = _ERROR_BODY.format(code=code, message=message).encode()
            self._reply(status, code, [("Content-Type", "application/xml")], xml)
            return
        try:
            status, reason, headers, data = self._forward(body, chunked)
        except (OSError, http.client.HTTPException):
            self._reply(502, "Bad Gateway", [], b"")
            return
        if fault == "reset_late":
            self._reset()
            return
        if fault == "stall":
            time.sleep(self.server.proxy.stall_seconds)  # the slow network being simulated
        self._reply(status, reason, headers, data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle
