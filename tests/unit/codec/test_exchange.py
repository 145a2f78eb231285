"""The instance axis contract of Exchange: every array starts with the same instance count."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from sidecar.codec import DecodeError, Exchange
from sidecar.codec.exchange import make_exchange


def test_inputs_and_outputs_share_the_leading_instance_axis() -> None:
    exchange = make_exchange({"x": np.zeros((3, 2)), "y": np.zeros(3)}, {"p": np.ones((3, 4))}, "predict")

    assert exchange.n_instances == 3
    assert exchange.method == "predict"
    assert exchange.classes is None


def test_zero_dimensional_arrays_alone_are_one_instance() -> None:
    exchange = make_exchange({"x": np.array(2.0)}, {"y": np.array(5)}, "predict")

    assert exchange.n_instances == 1
    assert exchange.inputs["x"].shape == (1,)
    assert exchange.outputs["y"].tolist() == [5]


def test_zero_dimensional_arrays_apply_to_every_instance() -> None:
    exchange = make_exchange({"x": np.zeros((3, 2)), "temperature": np.array(0.5)},
                             {"p": np.zeros(3), "label": np.array("same", dtype=object)}, "predict")

    assert exchange.inputs["temperature"].tolist() == [0.5, 0.5, 0.5]
    assert exchange.outputs["label"].tolist() == ["same"] * 3


def test_names_come_in_sorted_order() -> None:
    exchange = make_exchange({"b": np.zeros(1), "a": np.zeros(1)}, {"z": np.zeros(1), "c": np.zeros(1)}, "predict")

    assert list(exchange.inputs) == ["a", "b"]
    assert list(exchange.outputs) == ["c", "z"]


@pytest.mark.parametrize(("inputs", "outputs"), [
    ({"x": np.zeros((3, 2)), "y": np.zeros(2)}, {}),
    ({"x": np.zeros(3)}, {"p": np.zeros(2)}),
    ({"x": np.zeros(3)}, {"p": np.zeros(2), "q": np.array(1.0)}),
])
def test_disagreeing_instance_counts_are_a_shape_error(inputs: dict[str, np.ndarray],
                                                       outputs: dict[str, np.ndarray]) -> None:
    with pytest.raises(DecodeError) as caught:
        make_exchange(inputs, outputs, "predict")

    assert caught.value.reason == "shape"


def test_no_inputs_is_missing_and_zero_instances_is_empty() -> None:
    with pytest.raises(DecodeError) as missing:
        make_exchange({}, {}, "predict")
    with pytest.raises(DecodeError) as empty:
        make_exchange({"x": np.zeros((0, 3))}, {}, "predict")

    assert missing.value.reason == "missing"
    assert empty.value.reason == "empty"


def test_classes_must_match_the_instances() -> None:
    with pytest.raises(DecodeError) as caught:
        make_exchange({"x": np.zeros(2)}, {}, "classify", np.array([["a"]], dtype=object))

    assert caught.value.reason == "shape"


def test_exchange_is_frozen_and_picklable_for_worker_queues() -> None:
    exchange = make_exchange({"x": np.arange(2)}, {}, "predict")

    with pytest.raises(AttributeError):
        exchange.n_instances = 5  # type: ignore[misc]
    copy = pickle.loads(pickle.dumps(exchange))
    assert isinstance(copy, Exchange)
    assert copy.inputs["x"].tolist() == [0, 1]
