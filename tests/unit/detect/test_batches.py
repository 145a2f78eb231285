"""A batch message names a range of the worker's shared capture ring in a few bytes; the records stay in the ring."""

from __future__ import annotations

from sidecar.detect import batches


def test_a_batch_comes_back_field_for_field() -> None:
    batch = batches.Batch(generation=7, batch_id=42, start=1 << 40, end=(1 << 40) + 5_000, records=12)
    assert batches.decode(batches.encode(batch)) == batch


def test_a_batch_message_is_small_and_never_mistaken_for_the_stop_message() -> None:
    message = batches.encode(batches.Batch(0, 0, 0, 0, 0))
    assert 0 < len(message) <= 64
    assert message != batches.STOP
