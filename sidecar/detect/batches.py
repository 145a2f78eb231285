"""How a batch of capture records travels from the main process to a worker: small fields pickled, bodies raw.

Why not pickle the records: pickling copies every request and response body into one new bytes object, on the
event loop. For 256 records of about 1 KB that took 140-160 us warm and about 300 us inside the running sidecar
(bench/bench_analysis_load.py with saturated workers), and it was the single largest cause of requests slower
than the proxy's p99. Here the loop pickles only the small fields, as columns (`zip(*records)` and one `pickle`
call, no Python per record), and the bodies go to the kernel with `os.writev` straight from the records' own bytes
objects (`pipes.FrameWriter`).

A frame is one multiprocessing `Connection` message, so the worker reads it with `Connection.recv_bytes`:
  4 bytes  length of the head, big-endian
  head     pickle of (generation, batch_id, the other fields as columns, request lengths, response lengths)
  bodies   the request bodies, then the response bodies, back to back
An empty message (`STOP`) asks the worker to stop.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Sequence
from itertools import accumulate, pairwise
from typing import NamedTuple

from sidecar.capture.records import REQUEST_INDEX, RESPONSE_INDEX, CaptureRecord, CaptureRow, as_record

STOP = b""
_HEAD_LENGTH = struct.Struct("!I")


class Batch(NamedTuple):
    """Main -> worker: records of the models sharded to that worker."""

    generation: int
    batch_id: int
    records: list[CaptureRecord]


def encode(generation: int, batch_id: int, records: Sequence[CaptureRow]) -> list[bytes]:
    """The frame's parts (head first, then each body); `b"".join` of them is the message `decode` reads."""
    columns = list(zip(*records, strict=True))
    if not columns:
        return [_HEAD_LENGTH.pack(0)]
    requests, responses = columns[REQUEST_INDEX], columns[RESPONSE_INDEX]
    fields = columns[:REQUEST_INDEX] + columns[RESPONSE_INDEX + 1:]
    head = pickle.dumps((generation, batch_id, fields, list(map(len, requests)), list(map(len, responses))),
                        pickle.HIGHEST_PROTOCOL)
    return [_HEAD_LENGTH.pack(len(head)) + head, *requests, *responses]


def decode(message: bytes) -> Batch:
    (head_length,) = _HEAD_LENGTH.unpack_from(message)
    if not head_length:
        return Batch(0, 0, [])
    body_start = _HEAD_LENGTH.size + head_length
    generation, batch_id, fields, request_lengths, response_lengths = pickle.loads(
        memoryview(message)[_HEAD_LENGTH.size:body_start])
    ends = list(accumulate(request_lengths + response_lengths, initial=body_start))
    bodies = [message[start:end] for start, end in pairwise(ends)]
    count = len(request_lengths)
    rows = zip(*fields[:REQUEST_INDEX], bodies[:count], bodies[count:], *fields[REQUEST_INDEX:], strict=True)
    return Batch(generation, batch_id, list(map(as_record, rows)))
