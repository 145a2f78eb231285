"""A batch message names a range of the worker's shared capture ring in a few bytes; the records stay in the ring."""

from __future__ import annotations

import pytest

from sidecar.messages import batches

BATCH_LENGTH = len(batches.encode(batches.Batch(0, 0, 0, 0, 0)))


def test_a_batch_comes_back_field_for_field() -> None:
    batch = batches.Batch(generation=7, batch_id=42, start=1 << 40, end=(1 << 40) + 5_000, records=12)
    assert batches.decode(batches.encode(batch)) == batch


def test_a_batch_message_is_small_and_never_mistaken_for_the_stop_message() -> None:
    message = batches.encode(batches.Batch(0, 0, 0, 0, 0))
    assert 0 < len(message) <= 64
    assert message != batches.STOP


@pytest.mark.parametrize("model", ["iris", "", "a/b c", "モデル-v2", "m" * 500])
def test_a_reset_message_names_its_model(model: str) -> None:
    assert batches.reset_model(batches.encode_reset(model)) == model


def test_a_model_whose_reset_message_would_be_as_long_as_a_batch_message_still_comes_back() -> None:
    model = "m" * (BATCH_LENGTH - len(batches.RESET_PREFIX))
    message = batches.encode_reset(model)
    assert len(message) != BATCH_LENGTH
    assert batches.reset_model(message) == model


def test_a_non_ascii_model_whose_reset_message_would_be_as_long_as_a_batch_message_still_comes_back() -> None:
    width = BATCH_LENGTH - len(batches.RESET_PREFIX)
    model = "é" * (width // 2) + "x" * (width % 2)  # two bytes per "é" in UTF-8
    assert len(model.encode("utf-8")) == width
    assert batches.reset_model(batches.encode_reset(model)) == model


def test_a_reset_message_is_never_the_length_of_a_batch_message() -> None:
    lengths = {len(batches.encode_reset("m" * size)) for size in range(100)}
    assert BATCH_LENGTH not in lengths


@pytest.mark.parametrize("batch", [
    batches.Batch(0, 0, 0, 0, 0),
    batches.Batch(7, 42, 1 << 40, (1 << 40) + 5_000, 12),
    batches.Batch(2**64 - 1, 2**64 - 1, 2**64 - 1, 2**64 - 1, 2**32 - 1),
    # a generation whose big-endian bytes spell the reset prefix: the message starts with b"reset:"
    batches.Batch(int.from_bytes(batches.RESET_PREFIX.ljust(8, b"\0"), "big"), 1, 2, 3, 4),
], ids=["zeros", "typical", "largest", "starts-with-reset-prefix"])
def test_a_batch_message_is_never_taken_for_a_reset(batch: batches.Batch) -> None:
    message = batches.encode(batch)
    assert batches.reset_model(message) is None
    assert batches.decode(message) == batch


def test_the_stop_message_is_not_a_reset_and_no_reset_is_the_stop_message() -> None:
    assert batches.reset_model(batches.STOP) is None
    assert batches.encode_reset("") != batches.STOP
