"""The control socket's wire format: one JSON object per line, versioned. Pure: no sockets.

A request is ``{"v":1,"id":<int|str>,"method":"...","params":{...}}`` followed by ``\\n``; a
reply is ``{"v":1,"id":..,"result":..}`` or ``{"v":1,"id":..,"error":{"code":..,"message":..}}``.

Error codes on the wire are the ``code`` of the error classes in :mod:`s3syncd.errors`, plus three
that only the socket layer produces and that have no class of their own (errors live in
``errors.py`` only): ``unknown_method``, ``forbidden`` and ``internal``. They are produced as data,
not as exceptions: :func:`parse_request` returns a :class:`Rejection` (id to echo, code, message)
for a line the daemon refuses, and the server writes it back with :func:`encode_error`. On the
client side :func:`error_for` turns any code back into an exception: a code of the tree into its
class, ``unknown_method`` into a :class:`ProtocolError`, anything else into a plain
:class:`SyncError`; the instance's ``code`` is always the wire code.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NoReturn, TypeAlias

from s3syncd.errors import ProtocolError, SyncError

PROTOCOL_VERSION = 1
# A request line longer than this (without its newline) is refused and the connection closed.
MAX_REQUEST_BYTES = 1 << 20
# Replies can be big (``pending``, ``log``) but a client must not buffer without bound either.
MAX_RESPONSE_BYTES = 1 << 26

METHODS = frozenset(
    {
        "hello",
        "status",
        "pending",
        "approve",
        "reject",
        "resolve",
        "sync",
        "pause",
        "resume",
        "reset",
        "log",
        "diff",
        "history",
        "trash",
        "restore",
    }
)

# Wire codes produced by the socket layer itself.
BAD_REQUEST = ProtocolError.code
UNKNOWN_METHOD = "unknown_method"
FORBIDDEN = "forbidden"
INTERNAL = "internal"

RequestId: TypeAlias = int | str


@dataclass(frozen=True, slots=True)
class Request:
    """A well-formed request for one of :data:`METHODS`."""

    id: int | str | None
    method: str
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Rejection:
    """A request line the daemon refuses: what its error reply says.

    ``id`` is the request's id when it could be read, so the client can match the reply.
    """

    id: RequestId | None
    code: str
    message: str

    def to_error(self) -> ProtocolError:
        return ProtocolError(self.message)


def _refuse_constant(name: str) -> NoReturn:
    # json accepts NaN/Infinity by default; they are not JSON and other clients choke on them.
    raise ValueError(f"{name} is not valid JSON")


def _is_id(value: object) -> bool:
    # bool is an int subclass, and true/false are no ids.
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _is_version(value: object, version: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value == version


def _loads(line: bytes, what: str) -> Any:
    """Parse one line as JSON, raising ProtocolError with what went wrong."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what} is not UTF-8 (bad byte at offset {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ProtocolError(f"{what} is not JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and the int digit limit
        raise ProtocolError(f"{what} is not JSON: {exc}") from None


def _dumps(obj: dict[str, Any]) -> bytes:
    # json escapes control characters inside strings, so the line can never contain a newline.
    return (
        json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
        + b"\n"
    )


def parse_request(line: bytes) -> Request | Rejection:
    """Read one request line (with or without its newline); never raises.

    Checks, in order: UTF-8, JSON, an object, the id (read first so every later refusal can
    echo it), the version, the method, the params (optional, default ``{}``), and finally that
    the method is known (code ``unknown_method``). Unknown extra keys are ignored so that a
    later minor revision can add some.
    """
    try:
        obj = _loads(line, "request")
    except ProtocolError as exc:
        return Rejection(None, BAD_REQUEST, exc.message)
    if not isinstance(obj, dict):
        return Rejection(None, BAD_REQUEST, f"request is not a JSON object but {_kind(obj)}")
    if "id" not in obj:
        return Rejection(None, BAD_REQUEST, 'request has no "id"')
    request_id = obj["id"]
    if not _is_id(request_id):
        message = f'request "id" must be an integer or a string, not {_kind(request_id)}'
        return Rejection(None, BAD_REQUEST, message)
    if "v" not in obj:
        return Rejection(
            request_id,
            BAD_REQUEST,
            f'request has no protocol version "v"; this daemon speaks version {PROTOCOL_VERSION}',
        )
    if not _is_version(obj["v"], PROTOCOL_VERSION):
        return Rejection(
            request_id,
            BAD_REQUEST,
            f"unsupported protocol version {obj['v']!r}; "
            f"this daemon speaks version {PROTOCOL_VERSION}",
        )
    method = obj.get("method")
    if method is None:
        return Rejection(request_id, BAD_REQUEST, 'request has no "method"')
    if not isinstance(method, str):
        return Rejection(
            request_id, BAD_REQUEST, f'request "method" must be a string, not {_kind(method)}'
        )
    params = obj.get("params", {})
    if not isinstance(params, dict):
        return Rejection(
            request_id, BAD_REQUEST, f'request "params" must be an object, not {_kind(params)}'
        )
    if method not in METHODS:
        return Rejection(
            request_id,
            UNKNOWN_METHOD,
            f"unknown method {method!r}; known methods: {', '.join(sorted(METHODS))}",
        )
    return Request(request_id, method, params)


def decode_request(line: bytes) -> Request:
    """Like :func:`parse_request` but raises :class:`ProtocolError` for a refused line.

    The exception loses the id and the ``unknown_method`` code; the server uses
    :func:`parse_request` to keep both.
    """
    parsed = parse_request(line)
    if isinstance(parsed, Rejection):
        raise parsed.to_error()
    return parsed


def encode_request(id: RequestId, method: str, params: dict[str, Any] | None = None) -> bytes:
    """One request line, newline included. Raises TypeError/ValueError for params not JSON."""
    return _dumps({"v": PROTOCOL_VERSION, "id": id, "method": method, "params": params or {}})


def encode_result(id: RequestId | None, result: Any) -> bytes:
    """One success reply line. Raises TypeError/ValueError if ``result`` is not JSON."""
    return _dumps({"v": PROTOCOL_VERSION, "id": id, "result": result})


def encode_error(id: RequestId | None, code: str, message: str) -> bytes:
    """One error reply line; ``id`` is None when the request's id could not be read."""
    return _dumps({"v": PROTOCOL_VERSION, "id": id, "error": {"code": code, "message": message}})


def _walk(cls: type[SyncError]) -> Iterator[type[SyncError]]:
    yield cls
    for sub in cls.__subclasses__():
        yield from _walk(sub)


def _classes_by_code() -> dict[str, type[SyncError]]:
    # Walked on each call (it is cheap) so it always reflects the classes that exist. On a
    # duplicate code the class nearer the root wins, which is the safer, more general reading.
    by_code: dict[str, type[SyncError]] = {}
    for cls in _walk(SyncError):
        by_code.setdefault(cls.code, cls)
    by_code.setdefault(UNKNOWN_METHOD, ProtocolError)
    return by_code


def error_for(code: str, message: str) -> SyncError:
    """The exception a client raises for an error reply; its ``code`` is the wire code."""
    cls = _classes_by_code().get(code, SyncError)
    try:
        exc = cls(message)
    except TypeError:  # a subclass with a richer constructor: fall back to the root
        exc = SyncError(message)
    if exc.code != code:
        # Keep the wire code (e.g. "forbidden", "internal") so callers can still tell them apart.
        exc.code = code
    return exc


def decode_response(line: bytes, expect_id: RequestId | None) -> Any:
    """The result of a reply line, or raise the error it carries.

    An error reply with id null is accepted for any request: the daemon sends those when it
    could not read the request's id (oversized or garbled line, refused peer).
    """
    obj = _loads(line, "reply")
    if not isinstance(obj, dict):
        raise ProtocolError(f"reply is not a JSON object but {_kind(obj)}")
    if not _is_version(obj.get("v"), PROTOCOL_VERSION):
        raise ProtocolError(
            f"s3syncd replied with protocol version {obj.get('v')!r}; "
            f"this client speaks version {PROTOCOL_VERSION} (restart s3syncd after an upgrade)"
        )
    has_result, has_error = "result" in obj, "error" in obj
    if has_result == has_error:
        raise ProtocolError('reply must have exactly one of "result" and "error"')
    reply_id = obj.get("id")
    if has_error:
        if reply_id is not None and reply_id != expect_id:
            raise ProtocolError(f"reply is for request {reply_id!r}, expected {expect_id!r}")
        error = obj["error"]
        if not isinstance(error, dict):
            raise ProtocolError(f'reply "error" must be an object, not {_kind(error)}')
        code, message = error.get("code"), error.get("message")
        if not isinstance(code, str) or not isinstance(message, str):
            raise ProtocolError('reply "error" needs a string "code" and "message"')
        raise error_for(code, message)
    if reply_id != expect_id:
        raise ProtocolError(f"reply is for request {reply_id!r}, expected {expect_id!r}")
    return obj["result"]


def _kind(value: object) -> str:
    """The JSON kind of a decoded value, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
