"""HTTP/1.1 wire helpers for the REST proxy: hop-by-hop filtering, status lines and the sidecar's own answers.

Header names are compared lower-cased as bytes; values pass through as the peer sent them (llhttp has already
rejected CR/LF inside values, so a forwarded line can never smuggle a header). Hop-by-hop fields are the ones
RFC 9110 section 7.6.1 names, any `Proxy-*` field, and every field nominated by `Connection`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from http import HTTPStatus

HOP_BY_HOP: frozenset[bytes] = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
})
# Fields the proxy re-creates itself on the way to the upstream: framing, the 100-continue handshake (the
# proxy answers it and buffers the body) and the prediction id (replaced by the one the proxy chose).
REQUEST_DROP: frozenset[bytes] = HOP_BY_HOP | {b"content-length", b"expect", b"x-prediction-id"}
TRACE_FIELDS: frozenset[bytes] = frozenset({b"traceparent", b"tracestate"})
REQUEST_DROP_TRACED: frozenset[bytes] = REQUEST_DROP | TRACE_FIELDS
# The upstream's Content-Length stays in place (the body is passed whole, so it stays true); see upstream.py.
RESPONSE_DROP: frozenset[bytes] = HOP_BY_HOP | {b"x-prediction-id"}
# Connection options that are not field names.
_CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive", b"upgrade"})

PREDICTION_ID_HEADER = b"X-Prediction-Id"
JSON_CONTENT_TYPE = b"application/json"
CONTINUE_RESPONSE = b"HTTP/1.1 100 Continue\r\n\r\n"

_STATUS_LINES: dict[int, bytes] = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode("ascii") for status in HTTPStatus
}
_STATUS_CODES: dict[int, bytes] = {code: str(code).encode("ascii") for code in range(100, 600)}


def is_hop_by_hop(lower_name: bytes) -> bool:
    return lower_name in HOP_BY_HOP or lower_name.startswith(b"proxy-")


def connection_nominated(value: bytes) -> set[bytes]:
    """Field names listed in a `Connection` value (its options such as close/keep-alive left out)."""
    names = {token.strip().lower() for token in value.split(b",")}
    return names - _CONNECTION_OPTIONS - {b""}


_PEER_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}


def status_line(status: int, reason: bytes | None = None) -> bytes:
    """`HTTP/1.1 <status> <reason>\\r\\n`, keeping the peer's reason phrase when it gave one."""
    if reason is None:
        line = _STATUS_LINES.get(status)
        if line is not None:
            return line
        reason = b""
    key = (status, reason)
    line = _PEER_STATUS_LINES.get(key)
    if line is None:
        code = _STATUS_CODES.get(status) or str(status).encode("ascii")
        line = b"HTTP/1.1 " + code + b" " + reason + b"\r\n"
        if len(_PEER_STATUS_LINES) < 1024:  # bounded: reason phrases come from the upstream
            _PEER_STATUS_LINES[key] = line
    return line


def status_text(status: int) -> str:
    """The status as the `code` metric label wants it."""
    code = _STATUS_CODES.get(status)
    return code.decode("ascii") if code is not None else str(status)


def end_to_end_lines(headers: Iterable[tuple[bytes, bytes, bytes]], drop: frozenset[bytes],
                     into: list[bytes] | None = None) -> list[bytes]:
    """Append the forwardable fields of (lower name, name, value) triples to `into`, in their original order, as
    flat `name, b": ", value, b"\\r\\n"` pieces ready for `b"".join`.

    Drops `drop`, every `Proxy-*` field and every field nominated by a `Connection` header.
    """
    out: list[bytes] = [] if into is None else into
    start = len(out)
    nominated: set[bytes] | None = None
    for lower, name, value in headers:
        if lower in drop or lower.startswith(b"proxy-"):
            if lower == b"connection":
                nominated = connection_nominated(value) | (nominated or set())
            continue
        out += (name, b": ", value, b"\r\n")
    if nominated:
        kept = [(lower, name, value) for lower, name, value in headers
                if lower not in nominated and lower not in drop and not lower.startswith(b"proxy-")]
        del out[start:]
        for _, name, value in kept:
            out += (name, b": ", value, b"\r\n")
    return out


def header_line(name: bytes, value: bytes) -> bytes:
    return name + b": " + value + b"\r\n"


def error_body(message: str) -> bytes:
    """The model server's own error shape: `{"error": "<message>"}`."""
    return json.dumps({"error": message}).encode("utf-8")


CLOSE_LINE = b"Connection: close\r\n"
KEEP_ALIVE_LINE = b"Connection: keep-alive\r\n"


def simple_response(status: int, body: bytes, *, content_type: bytes = JSON_CONTENT_TYPE,
                    prediction_id: str | None = None, connection_line: bytes = b"", head_only: bool = False) -> bytes:
    """A complete response written by the sidecar itself; `connection_line` is a `Connection: ...` line or empty.
    With `head_only` (the answer to a HEAD request) the body is left out and Content-Length still gives its size."""
    parts = [status_line(status), b"Content-Type: ", content_type, b"\r\nContent-Length: ",
             str(len(body)).encode("ascii"), b"\r\n"]
    if prediction_id is not None:
        parts += (PREDICTION_ID_HEADER, b": ", prediction_id.encode("ascii"), b"\r\n")
    parts += (connection_line, b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)


def error_response(status: int, message: str, *, prediction_id: str | None = None,
                   connection_line: bytes = b"", head_only: bool = False) -> bytes:
    """The sidecar's own error answer, in the model server's shape (its body left out for a HEAD request)."""
    return simple_response(status, error_body(message), prediction_id=prediction_id, connection_line=connection_line,
                           head_only=head_only)


def origin_form(target: bytes) -> bytes:
    """Turn an absolute-form request target (`http://host/path`) into origin form (`/path`)."""
    lower = target[:8].lower()
    if not (lower.startswith(b"http://") or lower.startswith(b"https://")):
        return target
    authority = target.find(b"//") + 2
    end = len(target)
    for separator in (b"/", b"?"):
        index = target.find(separator, authority)
        if index >= 0:
            end = min(end, index)
    rest = target[end:]
    return rest if rest.startswith(b"/") else b"/" + rest
