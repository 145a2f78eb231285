"""The main process's ends of the worker pipes, non-blocking and driven by the event loop.

Why no thread: a sender thread per worker wrote the batches and a supervisor thread read the results. Each time one
of them woke it took the GIL from the event loop, and a thread that the kernel descheduled while holding it stalled
the loop for milliseconds: with one saturated worker and 4 paced connections (bench/analysis_timeline.py), reading
results took up to 8.6 ms and the slowest 0.1% of requests spent 3.6 ms or more inside the process. Here the loop
itself writes the task messages (a few dozen bytes each since the records travel in shared memory) whenever the
pipe has room, and reads results when they arrive.

Frames are `multiprocessing.Connection`'s (a 4-byte big-endian signed length, or -1 and an 8-byte length, then the
payload), so the workers keep using `Connection.recv_bytes` and `Connection.send`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections import deque
from itertools import islice

_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")
_MAX_IOV = 1024  # Linux's IOV_MAX
READ_BYTES = 256 * 1024  # the most one readiness callback reads: bounds the loop's time per callback


def frame_header(size: int) -> bytes:
    return _SHORT.pack(size) if size < 0x7FFFFFFF else _SHORT.pack(-1) + _LONG.pack(size)


class FrameWriter:
    """Writes frames into a pipe without ever blocking: what the pipe cannot take now waits here and goes out when
    the loop sees the pipe writable. Owns `fd` (closed by `close`). A pipe whose reader is gone (the worker died)
    drops everything queued; the caller learns of the death from the process, not from here."""

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self._loop = loop
        self._pending: deque[bytes | memoryview] = deque()
        self._watching = False
        self.closed = False

    @property
    def pending_bytes(self) -> int:
        return sum(map(len, self._pending))

    def send(self, payload: bytes) -> None:
        """Queue one frame (an empty payload is an empty frame) and write what the pipe takes now."""
        if self.closed:
            return
        self._pending.append(frame_header(len(payload)))
        if payload:  # no empty part: writev could return 0 for it
            self._pending.append(payload)
        if not self._watching:
            self._write()

    def _write(self) -> None:
        pending = self._pending
        while pending:
            try:
                written = os.writev(self.fd, list(islice(pending, _MAX_IOV)))
            except BlockingIOError:
                break
            except OSError:  # the reader is gone
                pending.clear()
                break
            while written:
                part = pending[0]
                if written >= len(part):
                    written -= len(part)
                    pending.popleft()
                else:
                    pending[0] = memoryview(part)[written:]
                    written = 0
        self._watch(bool(pending))

    def _watch(self, wanted: bool) -> None:
        if wanted and not self._watching:
            self._loop.add_writer(self.fd, self._write)
        elif not wanted and self._watching:
            self._loop.remove_writer(self.fd)
        self._watching = wanted

    def close(self) -> None:
        if self.closed:
            return
        self._watch(False)
        self._pending.clear()
        self.closed = True
        with contextlib.suppress(OSError):
            os.close(self.fd)


class FrameReader:
    """Cuts the frames out of what a non-blocking pipe has to give. Owns `fd` (closed by `close`)."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self._buffer = bytearray()
        self.closed = False

    def read(self, limit: int = READ_BYTES) -> tuple[list[bytes], bool]:
        """The complete frames' payloads among up to `limit` more bytes, and whether the writer has closed its end
        (everything it wrote has then been returned)."""
        ended = False
        taken = 0
        while taken < limit:
            try:
                chunk = os.read(self.fd, limit - taken)
            except BlockingIOError:
                break
            except OSError:
                ended = True
                break
            if not chunk:
                ended = True
                break
            self._buffer += chunk
            taken += len(chunk)
        return self._frames(), ended

    def _frames(self) -> list[bytes]:
        buffer = self._buffer
        frames = []
        start = 0
        while len(buffer) - start >= _SHORT.size:
            (size,) = _SHORT.unpack_from(buffer, start)
            head = _SHORT.size
            if size == -1:
                if len(buffer) - start < head + _LONG.size:
                    break
                (size,) = _LONG.unpack_from(buffer, start + head)
                head += _LONG.size
            if len(buffer) - start - head < size:
                break
            frames.append(bytes(buffer[start + head:start + head + size]))
            start += head + size
        del buffer[:start]
        return frames

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                os.close(self.fd)
