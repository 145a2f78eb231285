"""gRPC over HTTP/2 as the relay sees it: timeouts, statuses, length-prefixed messages, compressed peeks.

The relay never decodes messages; it only reads the 5-byte prefix of each (compressed flag, big-endian length)
to count bytes, enforce the size limit and find the message to capture.
"""

from __future__ import annotations

import zlib

from sidecar.proxy.grpc.h2 import frames
from sidecar.proxy.grpc.methods import GrpcMethod
from sidecar.proxy.grpc.peek import NO_MODEL, ModelRef
from sidecar.proxy.grpc.status import STATUS_BY_NUMBER, StatusCode

PREFIX_BYTES = 5
PEEK_BYTES = 64 * 1024  # a compressed request is inflated this far to read its model; the model spec comes first

_TIMEOUT_UNITS = {ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0, ord("m"): 1e-3, ord("u"): 1e-6, ord("n"): 1e-9}
_TIMEOUT_FORMATS = ((1e-3, b"m"), (1.0, b"S"), (60.0, b"M"), (3600.0, b"H"))
_MAX_TIMEOUT_DIGITS = 99_999_999
# HTTP/2 RST_STREAM codes as gRPC clients map them (gRPC's PROTOCOL-HTTP2.md).
_RESET_STATUS = {frames.NO_ERROR: StatusCode.INTERNAL, frames.REFUSED_STREAM: StatusCode.UNAVAILABLE,
                 frames.CANCEL: StatusCode.CANCELLED, frames.ENHANCE_YOUR_CALM: StatusCode.RESOURCE_EXHAUSTED}
# HTTP statuses without a grpc-status, as gRPC clients map them (gRPC's http-grpc-status-mapping.md).
_HTTP_STATUS = {400: StatusCode.INTERNAL, 401: StatusCode.UNAUTHENTICATED,
                403: StatusCode.PERMISSION_DENIED, 404: StatusCode.UNIMPLEMENTED,
                429: StatusCode.UNAVAILABLE, 502: StatusCode.UNAVAILABLE, 503: StatusCode.UNAVAILABLE,
                504: StatusCode.UNAVAILABLE}


def parse_timeout(value: bytes) -> float | None:
    """Seconds of a `grpc-timeout` value (1-8 digits and a unit); None when malformed."""
    if not 2 <= len(value) <= 9 or not value[:-1].isdigit():
        return None
    unit = _TIMEOUT_UNITS.get(value[-1])
    return None if unit is None else int(value[:-1]) * unit


def format_timeout(seconds: float) -> bytes:
    """A `grpc-timeout` value for `seconds`, rounded up to the finest unit that fits in 8 digits."""
    for unit, suffix in _TIMEOUT_FORMATS:
        count = -int(-seconds // unit)  # ceiling
        if count <= _MAX_TIMEOUT_DIGITS:
            return str(max(count, 1)).encode() + suffix
    return b"99999999H"


def status_of(value: bytes | None) -> StatusCode:
    """The status code of a `grpc-status` value; UNKNOWN when absent or not a known code."""
    if value is None or not value.isdigit():
        return StatusCode.UNKNOWN
    return STATUS_BY_NUMBER.get(int(value), StatusCode.UNKNOWN)


def status_of_reset(code: int) -> StatusCode:
    return _RESET_STATUS.get(code, StatusCode.INTERNAL)


def status_of_http(status: bytes) -> StatusCode:
    return _HTTP_STATUS.get(int(status) if status.isdigit() else 0, StatusCode.UNKNOWN)


def encode_message(text: str) -> bytes:
    """`grpc-message` percent-encoding: printable ASCII except '%' stays, every other byte becomes %XX."""
    raw = text.encode()
    if all(0x20 <= byte <= 0x7E and byte != 0x25 for byte in raw):
        return raw
    return b"".join(bytes((byte,)) if 0x20 <= byte <= 0x7E and byte != 0x25 else b"%%%02X" % byte for byte in raw)


def too_large_details(length: int, limit: int) -> str:
    """What gRPC's own libraries say about an oversized message (grpc-core's wording)."""
    return f"Received message larger than max ({length} vs. {limit})"


class MessageMeter:
    """Follows the length-prefixed messages in one direction of a call across DATA chunks.

    Counts messages and their bytes (without prefixes), and stops at the first message longer than `limit`.
    """

    __slots__ = ("_prefix", "compressed", "count", "limit", "oversized", "remaining", "total")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.total = 0
        self.remaining = 0  # payload bytes of the current message still to come
        self.oversized = 0  # length of the refused message, when one was
        self.compressed = False  # the first message had the compressed flag
        self._prefix = b""

    def feed(self, data: bytes | memoryview) -> int:
        """Account for `data`; -1 when all of it is fine, else the offset where the oversized message starts."""
        pos, end = 0, len(data)
        if not self.remaining and not self._prefix and end > PREFIX_BYTES:  # the usual: exactly one whole message
            length = int.from_bytes(data[1:PREFIX_BYTES], "big")
            if length + PREFIX_BYTES == end and length <= self.limit:
                if not self.count:
                    self.compressed = data[0] == 1
                self.count += 1
                self.total += length
                return -1
        while pos < end:
            remaining = self.remaining
            if remaining:
                if remaining >= end - pos:
                    self.remaining = remaining - (end - pos)
                    return -1
                pos += remaining
                self.remaining = 0
                continue
            start = pos - len(self._prefix)
            prefix = self._prefix + bytes(data[pos:pos + PREFIX_BYTES - len(self._prefix)])
            pos += len(prefix) - len(self._prefix)
            if len(prefix) < PREFIX_BYTES:
                self._prefix = prefix
                return -1
            self._prefix = b""
            length = int.from_bytes(prefix[1:], "big")
            if length > self.limit:
                self.oversized = length
                return max(start, 0)
            if not self.count:
                self.compressed = prefix[0] == 1
            self.count += 1
            self.total += length
            self.remaining = length
        return -1


def single_message(body: bytes) -> bytes | None:
    """The message of a body holding exactly one uncompressed message, else None."""
    if len(body) >= PREFIX_BYTES and body[0] == 0 and int.from_bytes(body[1:5], "big") == len(body) - PREFIX_BYTES:
        return body[PREFIX_BYTES:]
    return None


def captured_bytes(body: bytes) -> bytes:
    """What a capture record holds for a request or response body.

    One plain message: the message itself, as the aio engine records it. A compressed message keeps its 5-byte
    prefix (the codec recognises the frame and inflates it off the request path); anything else is kept whole.
    """
    message = single_message(body)
    return body if message is None else message


def peek_model(method: GrpcMethod, body: bytes, encoding: bytes | None) -> ModelRef:
    """The model a request addresses, read from its first message (inflating the start of a compressed one)."""
    if method.peek is None or len(body) < PREFIX_BYTES:
        return NO_MODEL
    message = single_message(body)
    if message is not None:
        return method.peek(message)
    if body[0] != 1 or encoding not in (b"gzip", b"deflate"):
        return NO_MODEL
    try:
        inflater = zlib.decompressobj(wbits=31 if encoding == b"gzip" else 15)
        return method.peek(inflater.decompress(body[PREFIX_BYTES:], PEEK_BYTES))
    except zlib.error:
        return NO_MODEL
