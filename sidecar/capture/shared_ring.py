"""The analysis capture ring in shared memory: the request path writes each record once, a worker process reads it.

Why: records used to wait in a deque on the event loop and travel to the worker in batches: drained, their small
fields pickled (about 144 us per 256 records inside the running sidecar) and the bodies written through a 64 KiB
pipe in several steps, each waking the worker and then the loop again. With one saturated worker and 4 paced
connections (bench/bench_analysis_load.py) the proxy's p99 was 1.2-1.5x its p99 with analysis off. Written here
once on the request path, and found by the worker where they are, interleaved runs measured 1.05x and 1.16x before
the worker's heap was fixed (see `worker.keep_heap_memory`) and the benchmark 0.99x after. Writing a record costs
the request about 1.4 us (`python -m timeit`; bench/rest_hotpath.py: 13.7 -> 15.1 us of proxy work per request),
against 0.46 us for the deque.

Layout: one anonymous memory file of `size` bytes per worker. Records are written back to back; a record never
straddles the end of the buffer (the space left is skipped, marked by a zero length when it has room for one).
Positions are byte counts since the start and never wrap, so `head - tail` is the space in use. A record is a
header (`_HEADER`: its total length, the character length of each string field, the body lengths and the numeric
fields), the string fields joined and UTF-8 encoded, then the request and response bodies and, on a shadow's
record, the primary's response.

The writer and the reader share no index: the writer tells the reader which range to read in a message through a
pipe (`batches`), and the reader says it is done with a range in its answer through another pipe. Those system
calls order the memory accesses on every architecture, so no lock or atomic is needed. A full ring drops the
record being written (counted by the caller); what is in the ring stays, so nothing the reader is reading changes.

This module imports nothing heavy: the main process writes, the workers read.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import tempfile
from collections import deque
from multiprocessing import reduction
from typing import Any

from sidecar.messages.records import CaptureRecord, CaptureRow

_STRING_FIELDS = ("prediction_id", "model", "version", "label", "protocol", "api", "method", "request_encoding",
                  "shadow")
_STRINGS = tuple(CaptureRecord._fields.index(name) for name in _STRING_FIELDS)
_P, _M, _V, _L, _PR, _A, _ME, _E, _SH = _STRINGS
_TIME, _REQUEST, _RESPONSE, _STATUS, _LATENCY, _OPT_OUT, _TRUNCATED, _PRIMARY = (
    CaptureRecord._fields.index(name) for name in ("time", "request", "response", "status", "latency", "log_opt_out",
                                                   "response_truncated", "primary_response"))
# total, string lengths, request, response, primary response, time, latency, status, opt-out, response truncated
_HEADER = struct.Struct("<I9IIIIddi??")
_TOTAL = struct.Struct("<I")
_ZEROS = bytes(1 << 20)


def _memory_file(size: int) -> int:
    """A file descriptor of `size` bytes of memory that a spawned process can map too."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("sidecar-capture", os.MFD_CLOEXEC)
    else:  # not Linux: an unlinked temporary file
        with tempfile.TemporaryFile() as file:
            fd = os.dup(file.fileno())
    os.ftruncate(fd, size)
    return fd


class RingHandle:
    """What a worker needs to map a ring: passed as an argument of a spawned process, which receives the file
    descriptor the way it receives a `multiprocessing` pipe."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_handle, (reduction.DupFd(self.fd), self.size)


def _rebuild_handle(duplicated: Any, size: int) -> RingHandle:
    return RingHandle(duplicated.detach(), size)


class SharedRingWriter:
    """The main process's end: `append` on the request path, `publish` / `release` / `reset` on the event loop.
    Holds at most `max_records` records and `size` bytes; hands them to the reader in batches of `batch_records`."""

    def __init__(self, size: int, max_records: int, batch_records: int) -> None:
        if size < _HEADER.size:
            raise ValueError(f"a capture ring needs at least {_HEADER.size} bytes")
        self.size = size
        self.max_records = max_records
        self.batch_records = batch_records
        self.fd = _memory_file(size)
        self._map = mmap.mmap(self.fd, size)
        self._view = memoryview(self._map)
        for start in range(0, size, len(_ZEROS)):  # fault every page in now, not on the request path
            end = min(size, start + len(_ZEROS))
            self._view[start:end] = _ZEROS[:end - start]
        self.head = 0  # bytes written since the start
        self.tail = 0  # bytes the reader is done with
        self.records = 0  # records written and not yet released by the reader
        self.published = 0  # where the next batch for the reader starts
        self.unpublished = 0  # records written since then
        self._cuts: deque[int] = deque()  # where each whole batch of unpublished records ends

    @property
    def handle(self) -> RingHandle:
        return RingHandle(self.fd, self.size)

    @property
    def bytes_waiting(self) -> int:
        return self.head - self.tail

    def append(self, record: CaptureRow) -> bool:
        """Write one record; False, writing nothing, when it does not fit (the ring is full or it is too large)."""
        strings = (record[_P], record[_M], record[_V], record[_L], record[_PR], record[_A], record[_ME], record[_E],
                   record[_SH] if len(record) > _SH else "")
        text = "".join(strings).encode("utf-8", "surrogatepass")
        request, response = record[_REQUEST], record[_RESPONSE]
        primary = record[_PRIMARY] if len(record) > _PRIMARY else b""
        total = _HEADER.size + len(text) + len(request) + len(response) + len(primary)
        size = self.size
        position = self.head % size
        skip = size - position if position + total > size else 0
        if self.records >= self.max_records or self.head + skip + total - self.tail > size:
            return False
        view = self._view
        if skip:
            if skip >= _TOTAL.size:
                _TOTAL.pack_into(view, position, 0)
            self.head += skip
            position = 0
        _HEADER.pack_into(view, position, total, *map(len, strings), len(request), len(response), len(primary),
                          record[_TIME],
                          record[_LATENCY], record[_STATUS], record[_OPT_OUT],
                          len(record) > _TRUNCATED and record[_TRUNCATED])
        start = position + _HEADER.size
        end = start + len(text)
        view[start:end] = text
        start, end = end, end + len(request)
        view[start:end] = request
        start, end = end, end + len(response)
        view[start:end] = response
        if primary:
            view[end:end + len(primary)] = primary
        self.head += total
        self.records += 1
        self.unpublished += 1
        if self.unpublished % self.batch_records == 0:
            self._cuts.append(self.head)
        return True

    def publish(self) -> tuple[int, int, int]:
        """The next batch for the reader, as (start, end, records): the oldest `batch_records` records not yet
        published, or all of them when there are fewer."""
        start = self.published
        if self._cuts:
            end, records = self._cuts.popleft(), self.batch_records
        else:
            end, records = self.head, self.unpublished
        self.published = end
        self.unpublished -= records
        return start, end, records

    def release(self, end: int, records: int) -> None:
        """The reader is done with everything before `end`, `records` records since its last release."""
        self.tail = max(self.tail, end)
        self.records = max(0, self.records - records)

    def reset(self) -> int:
        """The reader is gone: forget the batches published to it and not released (the next reader starts at
        the first batch not yet published); how many records that was."""
        lost = self.records - self.unpublished
        self.tail = self.published
        self.records = self.unpublished
        return lost

    def close(self) -> None:
        self._view.release()
        self._map.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)


class SharedRingReader:
    """A worker's end: copies the records of a published range out of the ring."""

    def __init__(self, handle: RingHandle) -> None:
        self.size = handle.size
        self._map = mmap.mmap(handle.fd, handle.size)
        os.close(handle.fd)
        self._view = memoryview(self._map)

    def read(self, start: int, end: int) -> list[CaptureRecord]:
        records: list[CaptureRecord] = []
        view, size = self._view, self.size
        position = start
        while position < end:
            offset = position % size
            if size - offset < _TOTAL.size or not _TOTAL.unpack_from(view, offset)[0]:
                position += size - offset  # the writer skipped the rest of the buffer
                continue
            (total, *lengths, request_length, response_length, primary_length, time, latency, status, opt_out,
             truncated) = _HEADER.unpack_from(view, offset)
            text_start = offset + _HEADER.size
            request_start = offset + total - request_length - response_length - primary_length
            response_start = request_start + request_length
            primary_start = response_start + response_length
            text = str(view[text_start:request_start], "utf-8", "surrogatepass")
            strings = []
            cut = 0
            for length in lengths:  # character lengths: the text is cut after decoding
                strings.append(text[cut:cut + length])
                cut += length
            request = bytes(view[request_start:response_start])
            response = bytes(view[response_start:primary_start])
            primary = bytes(view[primary_start:primary_start + primary_length]) if primary_length else b""
            prediction_id, model, version, label, protocol, api, method, encoding, shadow = strings
            records.append(CaptureRecord(prediction_id, time, model, version, label, protocol, api, method, request,
                                         response, status, latency, encoding, opt_out, truncated, shadow, primary))
            position += total
        return records

    def close(self) -> None:
        self._view.release()
        self._map.close()
