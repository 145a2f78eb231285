"""Message bytes of a record: gzip (declared or recognised), decompression cap, gRPC frames."""

from __future__ import annotations

import gzip

import pytest

from sidecar.codec import DecodeError
from sidecar.codec.bodies import gunzip, request_bytes, response_bytes
from sidecar.messages.records import API_TFSERVING, PROTOCOL_GRPC, PROTOCOL_REST

from .support import record

PAYLOAD = b'{"instances": [1.0, 2.0]}'


def test_plain_request_is_returned_as_is() -> None:
    assert request_bytes(record(PROTOCOL_REST, API_TFSERVING, "predict", PAYLOAD)) == PAYLOAD


@pytest.mark.parametrize("encoding", ["gzip", "GZIP", " x-gzip "])
def test_declared_gzip_request_is_decompressed(encoding: str) -> None:
    rec = record(PROTOCOL_REST, API_TFSERVING, "predict", gzip.compress(PAYLOAD), encoding=encoding)

    assert request_bytes(rec) == PAYLOAD


def test_gzip_bodies_are_recognised_by_their_magic_even_when_undeclared() -> None:
    rec = record(PROTOCOL_REST, API_TFSERVING, "predict", gzip.compress(PAYLOAD), gzip.compress(b'{"outputs": 1}'))

    assert request_bytes(rec) == PAYLOAD
    assert response_bytes(rec) == b'{"outputs": 1}'


@pytest.mark.parametrize("data", [b"not gzip at all", gzip.compress(PAYLOAD)[:-6], b"\x1f\x8b\x08garbage"])
def test_bad_or_truncated_gzip_is_a_gzip_error(data: bytes) -> None:
    with pytest.raises(DecodeError) as caught:
        request_bytes(record(PROTOCOL_REST, API_TFSERVING, "predict", data, encoding="gzip"))

    assert caught.value.reason == "gzip"


def test_decompression_stops_at_the_cap() -> None:
    bomb = gzip.compress(b"\x00" * 1_000_000)

    with pytest.raises(DecodeError) as caught:
        gunzip(bomb, limit=1000)

    assert caught.value.reason == "gzip"
    assert len(gunzip(bomb, limit=1_000_000)) == 1_000_000


def test_other_content_encodings_are_unsupported() -> None:
    with pytest.raises(DecodeError) as caught:
        request_bytes(record(PROTOCOL_REST, API_TFSERVING, "predict", b"\x00", encoding="br"))

    assert caught.value.reason == "unsupported"


def test_grpc_length_prefixed_frames_are_unwrapped() -> None:
    message = b"\x12\x03abc"
    framed = b"\x00" + len(message).to_bytes(4, "big") + message
    compressed = gzip.compress(message)
    framed_compressed = b"\x01" + len(compressed).to_bytes(4, "big") + compressed

    rec = record(PROTOCOL_GRPC, API_TFSERVING, "predict", framed, framed_compressed)

    assert request_bytes(rec) == message
    assert response_bytes(rec) == message
    assert request_bytes(record(PROTOCOL_GRPC, API_TFSERVING, "predict", message)) == message


def test_grpc_messages_are_judged_by_their_bytes_not_the_reported_encoding() -> None:
    message = b"\x12\x03abc"

    plain = record(PROTOCOL_GRPC, API_TFSERVING, "predict", message, encoding="gzip")
    compressed = record(PROTOCOL_GRPC, API_TFSERVING, "predict", gzip.compress(message), encoding="gzip")

    assert request_bytes(plain) == message
    assert request_bytes(compressed) == message
