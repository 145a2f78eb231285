"""Varints as protobuf writes them: the proxy's peek and the shadow's rewrite read them with one function."""

from __future__ import annotations

import pytest
from google.protobuf.internal.encoder import _VarintBytes

from sidecar.messages.protowire import MalformedMessage, read_varint


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**31, 2**63 - 1])
def test_varints_written_by_protobuf_read_back_with_the_position_after_them(value: int) -> None:
    data = b"\x01" + _VarintBytes(value) + b"\xff"
    assert read_varint(data, 1) == (value, 1 + len(_VarintBytes(value)))


def test_a_varint_running_past_the_end_or_the_bound_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        read_varint(b"\x80\x80", 0)
    with pytest.raises(MalformedMessage):
        read_varint(_VarintBytes(300) + b"\x00", 0, end=1)  # the bound cuts it
    with pytest.raises(MalformedMessage):
        read_varint(b"\xff" * 20, 0)  # longer than any 64-bit varint
