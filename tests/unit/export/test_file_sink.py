"""The JSONL sink: CloudEvents JSON lines, rotation by size keeping N files, writes in order."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from prometheus_client import CollectorRegistry

from sidecar.export.body import BodyPolicy, prepare
from sidecar.export.events import EventContext, events_from_record
from sidecar.export.file_sink import FileSink, RotatingWriter, structured
from sidecar.export.metrics import ExportMetrics
from sidecar.export.queue import SinkQueue
from sidecar.messages.records import PROTOCOL_GRPC

from .receivers import make_record


def numbered_lines(count: int, width: int = 100) -> list[bytes]:
    return [f"{index:08d}".encode().ljust(width - 1, b".") + b"\n" for index in range(count)]


def test_files_rotate_by_size_and_only_the_newest_n_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "payload.jsonl"
    writer = RotatingWriter(path, max_bytes=1000, keep=3)
    lines = numbered_lines(95)
    for start in range(0, len(lines), 7):
        writer.write(lines[start:start + 7])
    writer.close()
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["payload.jsonl", "payload.jsonl.1", "payload.jsonl.2", "payload.jsonl.3"]
    files = [path.with_name(f"payload.jsonl.{i}") for i in (3, 2, 1)] + [path]
    for file in files:
        assert file.stat().st_size <= 1000
    kept = b"".join(file.read_bytes() for file in files).splitlines(keepends=True)
    assert kept == lines[-len(kept):]  # the newest lines, in order, nothing missing in between
    assert len(kept) == 35  # 10 lines per full file: 3 rotated files + lines 90-94 in the current one


def test_a_line_larger_than_the_limit_gets_a_file_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "payload.jsonl"
    writer = RotatingWriter(path, max_bytes=100, keep=2)
    writer.write([b"a" * 10 + b"\n", b"b" * 500 + b"\n", b"c\n"])
    writer.close()
    assert path.read_bytes() == b"c\n"
    assert path.with_name("payload.jsonl.1").read_bytes() == b"b" * 500 + b"\n"
    assert path.with_name("payload.jsonl.2").read_bytes() == b"a" * 10 + b"\n"


def test_an_existing_file_is_appended_to_and_its_size_counts(tmp_path: Path) -> None:
    path = tmp_path / "payload.jsonl"
    path.write_bytes(b"x" * 90 + b"\n")
    writer = RotatingWriter(path, max_bytes=100, keep=1)
    writer.write([b"y" * 20 + b"\n"])
    writer.close()
    assert path.with_name("payload.jsonl.1").read_bytes() == b"x" * 90 + b"\n"
    assert path.read_bytes() == b"y" * 20 + b"\n"


def test_json_bodies_are_embedded_as_data() -> None:
    request, response = events_from_record(make_record(request=b'{"instances": [[1.0, NaN]]}'))
    document = structured(request, EventContext(), prepare(request, BodyPolicy(1024)))
    assert document["data"] == {"instances": [[1.0, "NaN"]]}  # strict JSON on every line
    assert document["datacontenttype"] == "application/json"
    assert document["type"] == "org.kubeflow.serving.inference.request"
    assert structured(response, EventContext(), prepare(response, BodyPolicy(1024)))["status"] == 200


def test_truncated_bodies_are_text_with_the_marks() -> None:
    request, _ = events_from_record(make_record(request=b'{"instances": [[1.0, 2.0, 3.0]]}'))
    document = structured(request, EventContext(), prepare(request, BodyPolicy(16)))
    assert document["data"] == '{"instances": [[' and document["truncated"] is True
    assert document["bodysize"] == 32


def test_protobuf_bodies_are_base64() -> None:
    request, _ = events_from_record(make_record(request=b"\x0a\x03abc", protocol=PROTOCOL_GRPC))
    document = structured(request, EventContext(), prepare(request, BodyPolicy(1024)))
    assert base64.b64decode(document["data_base64"]) == b"\x0a\x03abc" and "data" not in document


def test_omitted_bodies_carry_no_data_but_say_why() -> None:
    request, _ = events_from_record(make_record(request=b"garbage"))
    document = structured(request, EventContext(), prepare(request, BodyPolicy(1024, frozenset({"ssn"}))))
    assert "data" not in document and "datacontenttype" not in document
    assert document["bodyomitted"].startswith("not redactable")


async def test_the_sink_writes_queued_events_in_order_and_counts_them(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = ExportMetrics(registry)
    queue = SinkQueue(100, 1_000_000, batch_size=4, flush_interval=0.01)
    path = tmp_path / "payload.jsonl"
    sink = FileSink(path, 1_000_000, 2, queue, metrics.delivery, EventContext(), BodyPolicy(1024))
    metrics.add(sink)
    await sink.start()
    for index in range(10):
        for event in events_from_record(make_record(prediction_id=f"p-{index}")):
            sink.put(event, 0.0)
    await sink.stop(5.0)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(line["id"], line["type"].rsplit(".", 1)[1]) for line in lines] == [
        (f"p-{index}", kind) for index in range(10) for kind in ("request", "response")]
    assert registry.get_sample_value("sidecar_export_events_total", {"sink": "file", "outcome": "sent"}) == 20
    assert queue.depth == 0


async def test_a_write_error_fails_the_batch_and_the_sink_recovers(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = ExportMetrics(registry)
    queue = SinkQueue(100, 1_000_000, batch_size=1, flush_interval=0.01)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    sink = FileSink(blocker / "payload.jsonl", 1_000_000, 2, queue, metrics.delivery, EventContext(),
                    BodyPolicy(1024))
    metrics.add(sink)
    await sink.start()
    sink.put(events_from_record(make_record())[0], 0.0)
    await sink.stop(5.0)
    assert registry.get_sample_value("sidecar_export_events_total", {"sink": "file", "outcome": "failed"}) == 1
