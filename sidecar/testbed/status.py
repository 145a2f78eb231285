"""Errors with TF Serving's canonical codes, and how each protocol shows them.

TF Serving answers REST errors as `{"error": "<message>"}` with an HTTP status derived from the canonical code
(tensorflow_serving/model_servers/http_server.cc) and gRPC errors as the same code and message.
"""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    """Canonical error codes (tensorflow/core/protobuf/error_codes.proto, same numbers as gRPC status codes)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


_HTTP_STATUS = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.INVALID_ARGUMENT: 400,
    Code.FAILED_PRECONDITION: 400,
    Code.OUT_OF_RANGE: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.ABORTED: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.UNIMPLEMENTED: 501,
    Code.UNAVAILABLE: 503,
    Code.UNAUTHENTICATED: 401,
}

MAX_GRPC_MESSAGE_CHARS = 1024


class ServingError(Exception):
    """A request failed with a canonical code and a TF-Serving-style message."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    @property
    def http_status(self) -> int:
        return http_status(self.code)

    @property
    def grpc_message(self) -> str:
        """TF Serving truncates gRPC error messages longer than 1024 characters."""
        if len(self.message) <= MAX_GRPC_MESSAGE_CHARS:
            return self.message
        return self.message[: MAX_GRPC_MESSAGE_CHARS - 3] + "..."


def http_status(code: Code) -> int:
    return _HTTP_STATUS.get(code, 500)


def invalid_argument(message: str) -> ServingError:
    return ServingError(Code.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(Code.NOT_FOUND, message)
