"""Protobuf parsing with the codec's error: any unparsable message is DecodeError("protobuf")."""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import DecodeError as ProtobufDecodeError  # type: ignore[import-untyped]
from google.protobuf.message import Message  # type: ignore[import-untyped]

from sidecar.codec.errors import DecodeError

M = TypeVar("M", bound=Message)


def parse(message_type: type[M], data: bytes) -> M:
    try:
        message: M = message_type.FromString(data)
    except (ProtobufDecodeError, ValueError, RecursionError) as exc:
        raise DecodeError("protobuf", f"not a {message_type.__name__}: {exc}"[:200]) from exc
    return message
