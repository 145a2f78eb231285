"""DecodeError: bounded reasons, readable text, intact across process boundaries."""

from __future__ import annotations

import pickle

import pytest

from sidecar.codec import REASONS, DecodeError


def test_reasons_are_the_documented_label_values() -> None:
    assert frozenset({"gzip", "json", "protobuf", "shape", "dtype", "missing", "unsupported", "empty",
                      "truncated"}) == REASONS


def test_an_unknown_reason_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown decode error reason"):
        DecodeError("typo")


def test_message_names_reason_and_detail() -> None:
    assert str(DecodeError("shape", "3 values for shape [2, 2]")) == "shape: 3 values for shape [2, 2]"
    assert str(DecodeError("empty")) == "empty"


def test_reason_and_detail_survive_pickling() -> None:
    copy = pickle.loads(pickle.dumps(DecodeError("dtype", "unknown datatype 'FP8'")))

    assert isinstance(copy, DecodeError)
    assert (copy.reason, copy.detail) == ("dtype", "unknown datatype 'FP8'")
