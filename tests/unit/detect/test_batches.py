"""Batches go to the workers as one pickled head of small fields plus the bodies, written without copying them."""

from __future__ import annotations

import threading
from multiprocessing import Pipe

from sidecar.capture.records import CaptureRecord
from sidecar.detect import batches


def record(number: int, request: bytes, response: bytes = b'{"predictions": [1]}') -> CaptureRecord:
    return CaptureRecord(f"id-{number}-é", 1700000000.5 + number, "model/ü", "3", "", "rest", "tfserving", "predict",
                         request, response, 200, 0.001 * number, "gzip" if number % 2 else "", number % 3 == 0)


def through_a_pipe(parts: list[bytes]) -> bytes:
    """What the worker's `Connection.recv_bytes` reads after `batches.send` wrote `parts`."""
    receive, send = Pipe(duplex=False)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(receive.recv_bytes()))
    reader.start()
    batches.send(send.fileno(), parts)
    reader.join(10)
    receive.close()
    send.close()
    return received[0]


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


def test_a_frame_larger_than_the_pipe_and_with_more_parts_than_one_writev_takes_arrives_whole() -> None:
    records = [record(n, bytes([n % 256]) * 700) for n in range(1500)]  # 3,001 parts, about 1 MB
    batch = batches.decode(through_a_pipe(batches.encode(3, 9, records)))
    assert batch.records == records


def test_the_stop_message_is_an_empty_frame() -> None:
    assert through_a_pipe([batches.STOP]) == batches.STOP == b""
