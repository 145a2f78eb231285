"""gRPC-over-HTTP/2 rules of the relay: timeouts, statuses, message prefixes and model peeks."""

from __future__ import annotations

import gzip
import zlib

import pytest

from sidecar.codec.bodies import request_bytes
from sidecar.messages.records import PROTOCOL_GRPC, CaptureRecord
from sidecar.proxy.grpc.h2 import frames
from sidecar.proxy.grpc.h2.wire import (
    MessageMeter,
    captured_bytes,
    encode_message,
    format_timeout,
    parse_timeout,
    peek_model,
    status_of,
    status_of_http,
    status_of_reset,
)
from sidecar.proxy.grpc.methods import KNOWN_METHODS
from sidecar.proxy.grpc.peek import ModelRef
from sidecar.proxy.grpc.status import StatusCode

PREDICT = KNOWN_METHODS["/tensorflow.serving.PredictionService/Predict"]
PREDICT_M = b"\x0a\x0b\x0a\x01m\x12\x02\x08\x03\x1a\x02sd"  # PredictRequest {model_spec {name "m" version 3 ...}}


def framed(message: bytes, compressed: bool = False) -> bytes:
    return bytes((int(compressed),)) + len(message).to_bytes(4, "big") + message


@pytest.mark.parametrize(("value", "seconds"), [(b"10S", 10.0), (b"10100m", 10.1), (b"2M", 120.0), (b"1H", 3600.0),
                                                (b"250000u", 0.25), (b"7n", 7e-9)])
def test_grpc_timeouts_are_read_in_their_unit(value: bytes, seconds: float) -> None:
    assert parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"S", b"10", b"10s", b"123456789S", b"1.5S", b"-1S"])
def test_malformed_grpc_timeouts_are_none(value: bytes) -> None:
    assert parse_timeout(value) is None


@pytest.mark.parametrize(("seconds", "value"), [(30.0, b"30000m"), (0.0001, b"1m"), (12.3456, b"12346m"),
                                                (200_000.0, b"200000S"), (1e9, b"16666667M")])
def test_timeouts_are_written_rounded_up_in_at_most_eight_digits(seconds: float, value: bytes) -> None:
    assert format_timeout(seconds) == value
    parsed = parse_timeout(value)
    assert parsed is not None and parsed >= seconds


def test_statuses_follow_grpcs_mappings() -> None:
    assert status_of(b"0") is StatusCode.OK and status_of(b"14") is StatusCode.UNAVAILABLE
    assert status_of(b"99") is StatusCode.UNKNOWN and status_of(None) is StatusCode.UNKNOWN
    assert status_of_reset(frames.REFUSED_STREAM) is StatusCode.UNAVAILABLE
    assert status_of_reset(frames.CANCEL) is StatusCode.CANCELLED
    assert status_of_reset(frames.PROTOCOL_ERROR) is StatusCode.INTERNAL
    assert status_of_http(b"503") is StatusCode.UNAVAILABLE
    assert status_of_http(b"404") is StatusCode.UNIMPLEMENTED
    assert status_of_http(b"418") is StatusCode.UNKNOWN


def test_grpc_messages_are_percent_encoded_beyond_printable_ascii() -> None:
    assert encode_message("sidecar: upstream 127.0.0.1:9500 is down") == b"sidecar: upstream 127.0.0.1:9500 is down"
    assert encode_message("100% sure\n: caf\u00e9") == b"100%25 sure%0A: caf%C3%A9"


def test_the_meter_counts_messages_split_anywhere_across_chunks() -> None:
    stream = framed(b"a" * 10) + framed(b"") + framed(b"b" * 300)
    meter = MessageMeter(limit=1000)
    for start in range(0, len(stream), 3):
        assert meter.feed(stream[start:start + 3]) == -1
    assert (meter.count, meter.total, meter.remaining) == (3, 310, 0)


def test_the_meter_stops_at_the_first_message_over_the_limit() -> None:
    meter = MessageMeter(limit=100)
    data = framed(b"x" * 100) + framed(b"y" * 101)
    assert meter.feed(data) == 105  # where the oversized message's prefix starts
    assert (meter.count, meter.oversized) == (1, 101)
    split = MessageMeter(limit=100)
    assert split.feed(data[:107]) == -1  # the second prefix is incomplete yet
    assert split.feed(data[107:]) == 0 and split.oversized == 101


def test_capture_keeps_plain_messages_without_and_compressed_ones_with_their_prefix() -> None:
    assert captured_bytes(framed(PREDICT_M)) == PREDICT_M
    compressed = framed(gzip.compress(PREDICT_M), compressed=True)
    assert captured_bytes(compressed) == compressed
    record = CaptureRecord("p", 0.0, "m", "", "", PROTOCOL_GRPC, "tfserving", "predict", compressed, b"", 0, 0.0)
    assert request_bytes(record) == PREDICT_M  # the codec inflates it off the request path


@pytest.mark.parametrize("encoding", [b"gzip", b"deflate"])
def test_the_model_is_peeked_from_plain_and_compressed_requests(encoding: bytes) -> None:
    assert peek_model(PREDICT, framed(PREDICT_M), None) == ModelRef("m", "3", "")
    squeezed = gzip.compress(PREDICT_M) if encoding == b"gzip" else zlib.compress(PREDICT_M)
    assert peek_model(PREDICT, framed(squeezed, compressed=True), encoding) == ModelRef("m", "3", "")
    assert peek_model(PREDICT, framed(b"garbage", compressed=True), encoding) == ModelRef("", "", "")
