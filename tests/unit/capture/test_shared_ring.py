"""The shared capture ring: records written once on the request path come back whole to the reader, in order,
around the end of the buffer; a full ring refuses the new record and keeps the ones it holds."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from sidecar.capture.shared_ring import RingHandle, SharedRingReader, SharedRingWriter
from sidecar.messages.records import CaptureRecord


def record(number: int, body: bytes = b'{"instances": [[1.0, 2.0]]}') -> CaptureRecord:
    return CaptureRecord(f"id-{number}-é", 1700000000.25 + number, "model/ü\x1f", "3", "", "rest", "tfserving",
                         "predict", body, b"" if number % 3 == 0 else b'{"predictions": [0.5]}', 200 + number,
                         0.001 * number, "gzip" if number % 2 else "", number % 4 == 0)


def reader_of(writer: SharedRingWriter) -> SharedRingReader:
    return SharedRingReader(RingHandle(os.dup(writer.fd), writer.size))


@pytest.fixture
def rings() -> Iterator[tuple[SharedRingWriter, SharedRingReader]]:
    writer = SharedRingWriter(4096, max_records=1000, batch_records=4)
    reader = reader_of(writer)
    yield writer, reader
    reader.close()
    writer.close()


def read_next(writer: SharedRingWriter, reader: SharedRingReader) -> list[CaptureRecord]:
    start, end, count = writer.publish()
    records = reader.read(start, end)
    assert len(records) == count
    writer.release(end, count)
    return records


def test_records_come_back_field_for_field(rings: tuple[SharedRingWriter, SharedRingReader]) -> None:
    writer, reader = rings
    records = [record(n) for n in range(3)] + [record(3, b"")]
    records.append(record(4)._replace(prediction_id="lone \udc80 surrogate", label="v\x00l"))
    assert all(writer.append(item) for item in records)
    assert read_next(writer, reader) == records[:4]  # a whole batch first
    assert read_next(writer, reader) == records[4:]  # then the rest
    assert len(reader.read(writer.published, writer.published)) == 0


def test_records_wrap_around_the_end_without_straddling_it(
        rings: tuple[SharedRingWriter, SharedRingReader]) -> None:
    writer, reader = rings
    body = bytes(range(256)) * 2
    seen = []
    for number in range(60):  # about 40 KB through a 4 KiB buffer
        assert writer.append(record(number, body))
        if writer.unpublished == writer.batch_records:
            seen += read_next(writer, reader)
    seen += read_next(writer, reader)
    assert seen == [record(number, body) for number in range(60)]
    assert writer.head > 8 * writer.size
    assert writer.bytes_waiting == 0 and writer.records == 0


def test_a_full_ring_refuses_the_new_record_and_keeps_what_it_holds(
        rings: tuple[SharedRingWriter, SharedRingReader]) -> None:
    writer, reader = rings
    body = bytes(690)
    accepted = [number for number in range(10) if writer.append(record(number, body))]
    assert accepted == [0, 1, 2, 3, 4]  # 5 records of about 800 bytes fill 4 KiB
    assert writer.records == 5 and 4096 - writer.bytes_waiting < 800
    assert read_next(writer, reader) == [record(n, body) for n in range(4)]  # freed: room again
    assert writer.append(record(10, body))
    assert read_next(writer, reader) == [record(4, body), record(10, body)]


def test_the_record_count_bounds_the_ring_too() -> None:
    writer = SharedRingWriter(1 << 16, max_records=3, batch_records=10)
    try:
        assert [writer.append(record(n)) for n in range(5)] == [True, True, True, False, False]
        _, end, count = writer.publish()
        writer.release(end, count)
        assert writer.append(record(5))
    finally:
        writer.close()


def test_a_record_larger_than_the_ring_is_refused(rings: tuple[SharedRingWriter, SharedRingReader]) -> None:
    writer, _ = rings
    assert not writer.append(record(1, bytes(5000)))
    assert writer.head == 0 and writer.records == 0


def test_a_reset_forgets_what_the_lost_reader_held_and_keeps_what_it_was_not_yet_given(
        rings: tuple[SharedRingWriter, SharedRingReader]) -> None:
    writer, _ = rings
    for number in range(6):
        writer.append(record(number))
    writer.publish()  # records 0-3 go to a reader that then dies
    assert writer.reset() == 4
    assert writer.records == 2
    successor = reader_of(writer)
    try:
        assert read_next(writer, successor) == [record(4), record(5)]
    finally:
        successor.close()


def test_a_truncated_response_is_marked_across_the_ring() -> None:
    writer = SharedRingWriter(1 << 16, 10, 10)
    try:
        cut = CaptureRecord("p", 1.0, "m", "", "", "rest", "v2", "infer", b"{}", b"data: 1", 200, 0.1,
                            response_truncated=True)
        whole = tuple(cut._replace(response_truncated=False))[:-1]  # a plain row without the field reads as False
        assert writer.append(cut) and writer.append(whole)
        start, end, _ = writer.publish()
        reader = SharedRingReader(writer.handle)
        try:
            assert [record.response_truncated for record in reader.read(start, end)] == [True, False]
        finally:
            reader.close()
    finally:
        writer.close()


def test_a_shadow_record_carries_its_name_and_the_primary_answer_across_the_ring() -> None:
    writer = SharedRingWriter(1 << 16, 10, 10)
    try:
        shadow = CaptureRecord("p", 1.0, "m", "1", "", "rest", "tfserving", "predict", b'{"instances": [[1]]}',
                               b'{"predictions": [[0.2, 0.8]]}', 200, 0.01, shadow="next",
                               primary_response=b'{"predictions": [[0.9, 0.1]]}')
        plain = shadow._replace(shadow="", primary_response=b"")
        assert writer.append(shadow) and writer.append(plain)
        start, end, _ = writer.publish()
        reader = SharedRingReader(writer.handle)
        try:
            assert reader.read(start, end) == [shadow, plain]
        finally:
            reader.close()
    finally:
        writer.close()
