"""The message bytes of a captured exchange: undo gzip and, for gRPC, an optional length-prefixed frame.

REST requests are gunzipped when the record says `request_encoding == "gzip"` (other encodings are
unsupported, as in TF Serving). Any body that starts with the gzip magic is gunzipped too: neither JSON
(whitespace or a value first) nor protobuf (0x1f is an invalid wire type) can start that way, so the check
never misreads plain bytes; gRPC messages are judged by this check alone. A gRPC message may also come with
its 5-byte frame (compressed flag + big-endian length); a protobuf message cannot start with 0x00 or 0x01
(field number 0), so the frame is recognised without ambiguity and a compressed frame is gunzipped.
Decompression is capped like TF Serving's own (100 MiB) so a tiny body cannot exhaust a worker's memory.
"""

from __future__ import annotations

import zlib

from sidecar.codec.errors import DecodeError
from sidecar.messages.records import PROTOCOL_GRPC, CaptureRecord

MAX_DECOMPRESSED_BYTES = 100 * 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_PLAIN_ENCODINGS = frozenset({"", "identity"})
_GZIP_ENCODINGS = frozenset({"gzip", "x-gzip"})


def request_bytes(record: CaptureRecord) -> bytes:
    body = record.request
    if record.protocol == PROTOCOL_GRPC:
        # grpc-encoding may be reported while the message itself was already decompressed by the gRPC
        # library: only the bytes tell, and the magic check is exact for protobuf.
        message = _unframe(body)
        return message if message is not None else _sniffed(body)
    encoding = record.request_encoding.strip().lower()
    if encoding in _GZIP_ENCODINGS:
        return gunzip(body)
    if encoding not in _PLAIN_ENCODINGS:
        raise DecodeError("unsupported", f"request content encoding {encoding[:40]!r}")
    return _sniffed(body)


def response_bytes(record: CaptureRecord) -> bytes:
    body = record.response
    if record.protocol == PROTOCOL_GRPC:
        message = _unframe(body)
        if message is not None:
            return message
    return _sniffed(body)


def _sniffed(body: bytes) -> bytes:
    return gunzip(body) if body.startswith(_GZIP_MAGIC) else body


def _unframe(body: bytes) -> bytes | None:
    """The message inside a gRPC length-prefixed frame (gunzipped when flagged compressed), or None."""
    if len(body) >= 5 and body[0] in (0, 1) and int.from_bytes(body[1:5], "big") == len(body) - 5:
        return gunzip(body[5:]) if body[0] == 1 else body[5:]
    return None


def gunzip(body: bytes, limit: int = MAX_DECOMPRESSED_BYTES) -> bytes:
    """Decompress one gzip member, refusing output beyond `limit` bytes."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit)
    except zlib.error as exc:
        raise DecodeError("gzip", str(exc)) from exc
    if inflater.unconsumed_tail:
        raise DecodeError("gzip", f"decompresses to more than {limit} bytes")
    if not inflater.eof:
        raise DecodeError("gzip", "truncated gzip data")
    return data
