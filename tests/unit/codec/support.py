"""Builders shared by the codec tests: capture records around payload bytes, official protos to our wire types."""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

from sidecar.messages.records import API_TFSERVING, API_V2, PROTOCOL_GRPC, PROTOCOL_REST, CaptureRecord


def record(protocol: str, api: str, method: str, request: bytes, response: bytes = b"", *, status: int | None = None,
           encoding: str = "") -> CaptureRecord:
    if status is None:
        status = 200 if protocol == PROTOCOL_REST else 0
    return CaptureRecord("prediction-1", 1_700_000_000.0, "model", "", "", protocol, api, method, request, response,
                         status, 0.002, encoding)


def body(document: Any) -> bytes:
    """JSON bytes; Python writes NaN/Infinity as the bare tokens TF Serving uses."""
    return json.dumps(document).encode()


def tfs_rest(method: str, request: Any, response: Any = None, *, status: int = 200,
             encoding: str = "") -> CaptureRecord:
    request_bytes = request if isinstance(request, bytes) else body(request)
    response_bytes = b"" if response is None else response if isinstance(response, bytes) else body(response)
    return record(PROTOCOL_REST, API_TFSERVING, method, request_bytes, response_bytes, status=status,
                  encoding=encoding)


def tfs_grpc(method: str, request: Any, response: Any = None, *, status: int = 0) -> CaptureRecord:
    request_bytes = request if isinstance(request, bytes) else request.SerializeToString()
    response_bytes = b"" if response is None else response if isinstance(response, bytes) else \
        response.SerializeToString()
    return record(PROTOCOL_GRPC, API_TFSERVING, method, request_bytes, response_bytes, status=status)


def v2_rest(request: Any, response: Any = None, *, status: int = 200) -> CaptureRecord:
    request_bytes = request if isinstance(request, bytes) else body(request)
    response_bytes = b"" if response is None else response if isinstance(response, bytes) else body(response)
    return record(PROTOCOL_REST, API_V2, "infer", request_bytes, response_bytes, status=status)


def v2_grpc(request: Any, response: Any = None, *, status: int = 0) -> CaptureRecord:
    request_bytes = request if isinstance(request, bytes) else request.SerializeToString()
    response_bytes = b"" if response is None else response if isinstance(response, bytes) else \
        response.SerializeToString()
    return record(PROTOCOL_GRPC, API_V2, "infer", request_bytes, response_bytes, status=status)


def png_bytes(width: int = 3, height: int = 2) -> bytes:
    """A small valid RGB PNG (built with zlib, so codec tests need no imaging library): binary, not UTF-8."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes((x * 80 + y * 30) % 256 for x in range(width * 3)) for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
