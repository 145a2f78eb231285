"""gRPC status codes, the same names and values as `grpc.StatusCode`, without importing grpcio.

Why our own: the default engine (the HTTP/2 relay) needs only the codes, and importing grpcio for them costs the
main process about 20 MB of resident memory (`import grpc`: 10.9 -> 30.9 MB). The grpc.aio engine converts at
its edge (`sidecar.proxy.grpc.aio.forwarding`).
"""

from __future__ import annotations

import enum


class StatusCode(enum.Enum):
    OK = (0, "ok")
    CANCELLED = (1, "cancelled")
    UNKNOWN = (2, "unknown")
    INVALID_ARGUMENT = (3, "invalid argument")
    DEADLINE_EXCEEDED = (4, "deadline exceeded")
    NOT_FOUND = (5, "not found")
    ALREADY_EXISTS = (6, "already exists")
    PERMISSION_DENIED = (7, "permission denied")
    RESOURCE_EXHAUSTED = (8, "resource exhausted")
    FAILED_PRECONDITION = (9, "failed precondition")
    ABORTED = (10, "aborted")
    OUT_OF_RANGE = (11, "out of range")
    UNIMPLEMENTED = (12, "unimplemented")
    INTERNAL = (13, "internal")
    UNAVAILABLE = (14, "unavailable")
    DATA_LOSS = (15, "data loss")
    UNAUTHENTICATED = (16, "unauthenticated")


OK = StatusCode.OK
CANCELLED = StatusCode.CANCELLED
DEADLINE_EXCEEDED = StatusCode.DEADLINE_EXCEEDED
UNAVAILABLE = StatusCode.UNAVAILABLE
INTERNAL = StatusCode.INTERNAL
RESOURCE_EXHAUSTED = StatusCode.RESOURCE_EXHAUSTED
STATUS_BY_NUMBER: dict[int, StatusCode] = {code.value[0]: code for code in StatusCode}
