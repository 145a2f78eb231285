from __future__ import annotations

import pytest

from sidecar.testbed.status import MAX_GRPC_MESSAGE_CHARS, Code, ServingError, http_status


@pytest.mark.parametrize(("code", "status"), [
    (Code.INVALID_ARGUMENT, 400), (Code.FAILED_PRECONDITION, 400), (Code.OUT_OF_RANGE, 400),
    (Code.NOT_FOUND, 404), (Code.DEADLINE_EXCEEDED, 504), (Code.ALREADY_EXISTS, 409), (Code.ABORTED, 409),
    (Code.PERMISSION_DENIED, 403), (Code.RESOURCE_EXHAUSTED, 429), (Code.UNIMPLEMENTED, 501),
    (Code.UNAVAILABLE, 503), (Code.UNAUTHENTICATED, 401), (Code.CANCELLED, 499), (Code.INTERNAL, 500),
    (Code.UNKNOWN, 500), (Code.DATA_LOSS, 500),
])
def test_codes_map_to_tf_serving_http_statuses(code: Code, status: int) -> None:
    assert http_status(code) == status
    assert ServingError(code, "x").http_status == status


def test_codes_have_grpc_numbers() -> None:
    assert [int(Code.NOT_FOUND), int(Code.INVALID_ARGUMENT), int(Code.UNIMPLEMENTED)] == [5, 3, 12]


def test_grpc_messages_are_truncated_like_tf_serving() -> None:
    short = ServingError(Code.INTERNAL, "short")
    long = ServingError(Code.INTERNAL, "x" * 5000)
    assert short.grpc_message == "short"
    assert len(long.grpc_message) == MAX_GRPC_MESSAGE_CHARS and long.grpc_message.endswith("...")
    assert str(short) == "INTERNAL: short"
