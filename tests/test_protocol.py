"""The control socket's wire format (s3syncd.protocol): pure, no sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from s3syncd.errors import (
    AlreadyRunningError,
    MalformedTableError,
    ProtocolError,
    SyncError,
    UnknownActionError,
)
from s3syncd.protocol import (
    BAD_REQUEST,
    MAX_REQUEST_BYTES,
    METHODS,
    PROTOCOL_VERSION,
    UNKNOWN_METHOD,
    Rejection,
    Request,
    decode_request,
    decode_response,
    encode_error,
    encode_request,
    encode_result,
    error_for,
    parse_request,
)


def line(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def test_constants() -> None:
    assert PROTOCOL_VERSION == 1
    assert MAX_REQUEST_BYTES == 1 << 20
    assert {"hello", "status", "pending", "approve", "reject", "resolve"} <= METHODS
    assert {"sync", "pause", "resume", "reset", "log"} <= METHODS
    assert {"diff", "history", "trash", "restore"} <= METHODS
    assert len(METHODS) == 15


@pytest.mark.parametrize("request_id", [1, 0, -7, "abc", ""])
def test_request_round_trip(request_id: int | str) -> None:
    params = {"ids": ["a1", "b2"], "note": "two\nlines ünïcode", "all": True}
    encoded = encode_request(request_id, "approve", params)
    assert encoded.endswith(b"\n")
    assert encoded.count(b"\n") == 1  # the newline inside the string is escaped
    assert decode_request(encoded) == Request(request_id, "approve", params)
    assert json.loads(encoded) == {
        "v": 1,
        "id": request_id,
        "method": "approve",
        "params": params,
    }


def test_request_without_params_gets_empty_dict() -> None:
    assert decode_request(line({"v": 1, "id": 3, "method": "status"})) == Request(3, "status", {})
    assert json.loads(encode_request(3, "status"))["params"] == {}


def test_request_line_without_newline_and_with_crlf() -> None:
    body = json.dumps({"v": 1, "id": 1, "method": "status", "params": {}}).encode()
    assert decode_request(body).method == "status"
    assert decode_request(body + b"\r\n").method == "status"


def test_extra_keys_are_ignored() -> None:
    obj = {"v": 1, "id": 1, "method": "status", "params": {}, "trace": "x"}
    assert decode_request(line(obj)) == Request(1, "status", {})


# (line, expected id echoed, expected code, fragment of the message)
REFUSED: list[tuple[bytes, int | str | None, str, str]] = [
    (b"\xff\xfe{}\n", None, BAD_REQUEST, "not UTF-8"),
    (b"hello there\n", None, BAD_REQUEST, "not JSON"),
    (b'{"v":1,"id":1,"method":"status"\n', None, BAD_REQUEST, "not JSON"),
    (b'{"v":1,"id":1,"method":"status","params":{"x":NaN}}\n', None, BAD_REQUEST, "NaN"),
    (b"[" * 100_000 + b"]" * 100_000 + b"\n", None, BAD_REQUEST, "not JSON"),
    (b"1" * 10_000 + b"\n", None, BAD_REQUEST, "not JSON"),
    (line([1, 2]), None, BAD_REQUEST, "not a JSON object but an array"),
    (line("status"), None, BAD_REQUEST, "not a JSON object but a string"),
    (line({"v": 1, "method": "status"}), None, BAD_REQUEST, 'no "id"'),
    (line({"v": 1, "id": 1.5, "method": "status"}), None, BAD_REQUEST, "not a number"),
    (line({"v": 1, "id": True, "method": "status"}), None, BAD_REQUEST, "not a boolean"),
    (line({"v": 1, "id": None, "method": "status"}), None, BAD_REQUEST, "not null"),
    (line({"v": 1, "id": [1], "method": "status"}), None, BAD_REQUEST, "not an array"),
    (line({"id": 4, "method": "status"}), 4, BAD_REQUEST, "speaks version 1"),
    (line({"v": 2, "id": 4, "method": "status"}), 4, BAD_REQUEST, "version 2; this daemon speaks"),
    (line({"v": "1", "id": "x", "method": "status"}), "x", BAD_REQUEST, "speaks version 1"),
    (line({"v": True, "id": 4, "method": "status"}), 4, BAD_REQUEST, "version True"),
    (line({"v": 1, "id": 5}), 5, BAD_REQUEST, 'no "method"'),
    (line({"v": 1, "id": 5, "method": 7}), 5, BAD_REQUEST, '"method" must be a string'),
    (line({"v": 1, "id": 6, "method": "status", "params": []}), 6, BAD_REQUEST, "an object"),
    (line({"v": 1, "id": 6, "method": "status", "params": None}), 6, BAD_REQUEST, "not null"),
    (line({"v": 1, "id": 7, "method": "shutdown"}), 7, UNKNOWN_METHOD, "unknown method"),
    (line({"v": 1, "id": 7, "method": "Status"}), 7, UNKNOWN_METHOD, "'Status'"),
]


@pytest.mark.parametrize(("raw", "request_id", "code", "fragment"), REFUSED)
def test_refused_lines(raw: bytes, request_id: int | str | None, code: str, fragment: str) -> None:
    parsed = parse_request(raw)
    assert isinstance(parsed, Rejection)
    assert parsed.id == request_id
    assert parsed.code == code
    assert fragment in parsed.message
    with pytest.raises(ProtocolError) as info:
        decode_request(raw)
    assert info.value.message == parsed.message


def test_unknown_method_lists_known_ones() -> None:
    parsed = parse_request(line({"v": 1, "id": 1, "method": "nope"}))
    assert isinstance(parsed, Rejection)
    assert parsed.message.startswith("unknown method 'nope'")
    assert "status" in parsed.message


def test_result_round_trip() -> None:
    result = {"paused": False, "pending": [{"id": "a1", "path": "x/ü.csv"}], "n": 3.5}
    assert decode_response(encode_result(9, result), 9) == result
    assert decode_response(encode_result("s", None), "s") is None


def test_result_must_be_json() -> None:
    with pytest.raises(TypeError):
        encode_result(1, object())
    with pytest.raises(ValueError):
        encode_result(1, float("nan"))


def test_error_reply_becomes_the_class_of_its_code() -> None:
    with pytest.raises(UnknownActionError, match="no action x9") as info:
        decode_response(encode_error(2, "unknown_action", "no action x9"), 2)
    assert info.value.code == "unknown_action"
    # A grandchild of SyncError is found too.
    with pytest.raises(MalformedTableError):
        decode_response(encode_error(2, "malformed_table", "bad"), 2)
    with pytest.raises(AlreadyRunningError):
        decode_response(encode_error(2, "already_running", "busy"), 2)


def test_error_reply_with_socket_layer_codes() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_response(encode_error(2, UNKNOWN_METHOD, "unknown method 'x'"), 2)
    assert info.value.code == UNKNOWN_METHOD
    for code in ("forbidden", "internal", "something_new"):
        with pytest.raises(SyncError) as generic:
            decode_response(encode_error(2, code, "msg"), 2)
        assert type(generic.value) is SyncError
        assert generic.value.code == code
        assert generic.value.message == "msg"


def test_error_for_does_not_change_class_codes() -> None:
    assert error_for("forbidden", "x").code == "forbidden"
    assert SyncError.code == "error"
    assert SyncError("y").code == "error"


def test_error_reply_without_id_matches_any_request() -> None:
    # The daemon could not read the request's id (e.g. an oversized line).
    with pytest.raises(ProtocolError, match="limit"):
        decode_response(encode_error(None, BAD_REQUEST, "request exceeds the limit"), 5)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (encode_result(3, 1), "reply is for request 3, expected 4"),
        (encode_error(3, "state", "x"), "reply is for request 3, expected 4"),
        (encode_result(None, 1), "reply is for request None"),
        (line({"v": 2, "id": 4, "result": 1}), "protocol version 2"),
        (line({"id": 4, "result": 1}), "protocol version None"),
        (line({"v": 1, "id": 4}), "exactly one"),
        (line({"v": 1, "id": 4, "result": 1, "error": {}}), "exactly one"),
        (line({"v": 1, "id": 4, "error": "boom"}), '"error" must be an object'),
        (line({"v": 1, "id": 4, "error": {"code": 1, "message": "m"}}), "string"),
        (line([1]), "not a JSON object"),
        (b"\xff\n", "not UTF-8"),
        (b"{\n", "not JSON"),
    ],
)
def test_bad_replies(raw: bytes, fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_response(raw, 4)
    assert fragment in info.value.message
