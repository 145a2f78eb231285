"""JSON values to arrays: dtype from the values, b64 strings, TF Serving's NaN/Infinity tokens, bad shapes."""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np
import pytest

from sidecar.codec import DecodeError
from sidecar.codec.jsonvalues import (
    KIND_BOOL,
    KIND_FLOAT,
    KIND_INT,
    KIND_TEXT,
    json_array,
    load_json,
    load_object,
    typed_json_array,
)


def test_numbers_with_a_fraction_are_float64_others_int64() -> None:
    floats = json_array([[1.0, 2], [3, 4.5]])
    ints = json_array([[1, 2], [3, 4]])

    assert floats.dtype == np.float64 and floats.tolist() == [[1.0, 2.0], [3.0, 4.5]]
    assert ints.dtype == np.int64 and ints.tolist() == [[1, 2], [3, 4]]


def test_booleans_are_bool() -> None:
    assert json_array([True, False]).dtype == np.bool_


def test_bare_nan_and_infinity_tokens_are_read() -> None:
    values = json_array(load_json(b"[NaN, Infinity, -Infinity, 1.5]"))

    assert math.isnan(values[0]) and values[1] == math.inf and values[2] == -math.inf and values[3] == 1.5


def test_integers_beyond_int64_become_float64() -> None:
    assert json_array([2**64 - 1]).dtype == np.float64
    assert json_array([2**70, 1]).tolist() == [float(2**70), 1.0]


def test_b64_values_that_are_not_utf8_keep_their_exact_bytes() -> None:
    encoded = base64.b64encode(b"\x00binary\xff").decode()

    values = json_array([["plain", {"b64": encoded}], [{"b64": encoded.rstrip("=")}, "é"]])

    assert values.dtype == object
    assert values.tolist() == [["plain", b"\x00binary\xff"], [b"\x00binary\xff", "é"]]


def test_b64_values_that_are_utf8_become_str() -> None:
    values = json_array([{"b64": base64.b64encode("café".encode()).decode()}, {"b64": ""}, "plain"])

    assert values.tolist() == ["café", "", "plain"]
    assert [type(value) for value in values] == [str, str, str]


def test_a_scalar_value_is_zero_dimensional() -> None:
    assert json_array(3.5).shape == ()
    assert json_array({"b64": "YQ=="}).tolist() == "a"


@pytest.mark.parametrize("value", [[[1, 2], [3]], [1, [2]], [[{"b64": "YQ=="}], []]])
def test_ragged_nesting_is_a_shape_error(value: Any) -> None:
    with pytest.raises(DecodeError) as caught:
        json_array(value)

    assert caught.value.reason == "shape"


@pytest.mark.parametrize("value", [[1, "a"], [None, 1.0], [{"name": 1}], ["a", None], [{"b64": "YQ=="}, 2]])
def test_mixed_or_foreign_values_are_a_dtype_error(value: Any) -> None:
    with pytest.raises(DecodeError) as caught:
        json_array(value)

    assert caught.value.reason == "dtype"


def test_bad_base64_is_a_json_error() -> None:
    with pytest.raises(DecodeError) as caught:
        json_array([{"b64": "!!not base64!!"}])

    assert caught.value.reason == "json"


@pytest.mark.parametrize(("body", "reason"), [
    (b"", "empty"), (b"{", "json"), (b"\xff\xfe{}", "json"), (b"[" * 100_000 + b"]" * 100_000, "json"),
])
def test_unparsable_bodies(body: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        load_json(body)

    assert caught.value.reason == reason


def test_a_body_must_be_an_object() -> None:
    with pytest.raises(DecodeError) as caught:
        load_object(b"[1, 2]")

    assert caught.value.reason == "json"


@pytest.mark.parametrize(("value", "kind", "expected"), [
    ([1, 2.5], KIND_FLOAT, np.float64), ([1, 2], KIND_INT, np.int64), ([True], KIND_BOOL, np.bool_),
    (["a"], KIND_TEXT, object), ([], KIND_INT, np.int64), ([], KIND_TEXT, object),
])
def test_declared_kinds_accept_their_values(value: Any, kind: str, expected: type) -> None:
    assert typed_json_array(value, kind).dtype == np.dtype(expected)


@pytest.mark.parametrize(("value", "kind"), [
    ([1.5], KIND_INT), ([1], KIND_BOOL), (["a"], KIND_FLOAT), ([1], KIND_TEXT), ([True], KIND_INT),
])
def test_declared_kinds_reject_other_values(value: Any, kind: str) -> None:
    with pytest.raises(DecodeError) as caught:
        typed_json_array(value, kind)

    assert caught.value.reason == "dtype"
