"""JSONL payload log: one CloudEvents JSON-format event per line, rotated by size, keeping N rotated files.

Each line is a structured-mode CloudEvent: the same attributes and extensions the HTTP sink sends as `ce-*`
headers, then the body as `data` (JSON bodies, parsed; bare NaN/Infinity become strings so every line is
strict JSON), `data` as text (truncated JSON), or `data_base64` (protobuf). Rotation follows
logging.RotatingFileHandler: `payload.jsonl` is current, `payload.jsonl.1` the newest rotated file, up to
`payload.jsonl.<keep>`. A single sender encodes the lines (on the loop in short slices, see `Slicer`) and
writes them in a worker thread, so lines keep the queue's order.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
from pathlib import Path
from typing import IO, Any

from prometheus_client import Histogram

from sidecar.export.body import BodyPolicy, PreparedBody, prepare
from sidecar.export.events import JSON, EventContext, PayloadEvent, attributes
from sidecar.export.queue import SinkQueue
from sidecar.export.sink import Delivery, Sink, Slicer

_DECODER = json.JSONDecoder(parse_constant=str)  # bare NaN / Infinity become strings
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def structured(event: PayloadEvent, context: EventContext, prepared: PreparedBody) -> dict[str, Any]:
    """The event in CloudEvents JSON format."""
    out = attributes(event, context)
    out.update(prepared.marks())
    if prepared.omitted:
        return out
    content_type = event.content_type
    out["datacontenttype"] = content_type
    data = prepared.data
    if content_type == JSON:
        if not prepared.truncated:
            try:
                out["data"] = _DECODER.decode(data.decode("utf-8"))
                return out
            except ValueError:  # includes UnicodeDecodeError
                pass
        out["data"] = data.decode("utf-8", errors="replace")
    else:
        out["data_base64"] = base64.b64encode(data).decode("ascii")
    return out


class RotatingWriter:
    """Appends lines to `path`, rotating before a line would take the file past `max_bytes`. Blocking I/O."""

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._file: IO[bytes] | None = None
        self._size = 0
        self._lock = threading.Lock()  # a write cut off by the shutdown deadline may still run when close comes
        self.rotations = 0

    def write(self, lines: list[bytes]) -> None:
        with self._lock:
            self._write(lines)

    def _write(self, lines: list[bytes]) -> None:
        handle = self._open()
        chunk: list[bytes] = []
        for line in lines:
            if self._size and self._size + len(line) > self.max_bytes:
                handle.write(b"".join(chunk))
                chunk = []
                handle = self._rotate()
            chunk.append(line)
            self._size += len(line)
        handle.write(b"".join(chunk))
        handle.flush()

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")  # noqa: SIM115 - kept open across batches
            self._size = os.fstat(self._file.fileno()).st_size
        return self._file

    def _rotate(self) -> IO[bytes]:
        self._close()
        for index in range(self.keep - 1, 0, -1):
            source = self._rotated(index)
            if source.exists():
                os.replace(source, self._rotated(index + 1))
        if self.path.exists():
            os.replace(self.path, self._rotated(1))
        self.rotations += 1
        return self._open()

    def _rotated(self, index: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{index}")

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class FileSink(Sink):
    def __init__(self, path: Path, max_bytes: int, keep: int, queue: SinkQueue, delivery: Histogram,
                 context: EventContext, policy: BodyPolicy) -> None:
        super().__init__("file", queue, delivery, senders=1)
        self.writer = RotatingWriter(path, max_bytes, keep)
        self.context = context
        self.policy = policy

    def _line(self, event: PayloadEvent) -> bytes:
        document = structured(event, self.context, prepare(event, self.policy))
        return _ENCODER.encode(document).encode() + b"\n"

    async def _deliver(self, delivery: Delivery, sender: int) -> None:
        slicer = Slicer()
        lines = [await slicer.run(self._line, event) for event in delivery.events()]
        try:
            await asyncio.to_thread(self.writer.write, lines)
        except OSError as exc:
            self.warn(f"cannot write {self.writer.path}: {exc}")
            delivery.failed(delivery.remaining)
            await asyncio.to_thread(self.writer.close)  # reopened (and re-created) by the next batch
            return
        delivery.sent(delivery.remaining)

    async def _close(self) -> None:
        await asyncio.to_thread(self.writer.close)
