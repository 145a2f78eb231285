"""Just enough of the protobuf wire format to walk a message's fields without decoding it: base-128 varints.

The gRPC proxy peeks at a request's model spec with it (on the request path: no protobuf runtime) and the shadow
sender rewrites a request's model spec with it; each walks the fields its own way.
"""

from __future__ import annotations


class MalformedMessage(ValueError):
    """The bytes are not a well-formed protobuf message."""


def read_varint(data: bytes, pos: int, end: int | None = None) -> tuple[int, int]:
    """Decode the varint at `pos` (not reading at or past `end`); returns (value, position after it)."""
    end = len(data) if end is None else end
    result = shift = 0
    while pos < end and shift < 70:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise MalformedMessage("a varint runs past the end of the message")
