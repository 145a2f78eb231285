"""Batches go to the workers as one pickled head of small fields plus the bodies, which are not copied into it."""

from __future__ import annotations

from sidecar.capture.records import CaptureRecord
from sidecar.detect import batches


def record(number: int, request: bytes, response: bytes = b'{"predictions": [1]}') -> CaptureRecord:
    return CaptureRecord(f"id-{number}-é", 1700000000.5 + number, "model/ü", "3", "", "rest", "tfserving", "predict",
                         request, response, 200, 0.001 * number, "gzip" if number % 2 else "", number % 3 == 0)


def test_records_come_back_field_for_field() -> None:
    records = [record(n, b"x" * n, b"" if n == 2 else b"answer") for n in range(5)]  # empty bodies included
    batch = batches.decode(b"".join(batches.encode(7, 42, records)))
    assert batch == batches.Batch(7, 42, records)


def test_bodies_are_handed_over_as_they_are_not_copied_into_the_head() -> None:
    records = [record(n, bytes(1000 + n)) for n in range(3)]
    head, *bodies = batches.encode(1, 1, records)
    assert all(body is original for body, original in zip(bodies, [r.request for r in records] +
                                                          [r.response for r in records], strict=True))
    assert len(head) < 1000
