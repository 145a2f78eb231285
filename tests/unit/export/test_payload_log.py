"""The payload log as the capture ring's consumer: sampling, modes, opt-out, fan-out, bounded queues, shutdown."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from sidecar.export.payload_log import PayloadLog, Sampler, payload_log_ring
from sidecar.export.settings import ExportSettings

from .conftest import StartReceiver
from .receivers import make_record


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def outcome(registry: CollectorRegistry, sink: str, name: str) -> float:
    return registry.get_sample_value("sidecar_export_events_total", {"sink": sink, "outcome": name}) or 0.0


def test_a_payload_log_needs_a_sink() -> None:
    with pytest.raises(ValueError, match="neither payload_log_file nor payload_log_url"):
        PayloadLog(ExportSettings(), CollectorRegistry())


def test_sampling_is_decided_by_prediction_id_alone() -> None:
    sampler = Sampler(0.25)
    kept = [sampler.keep(f"id-{index}") for index in range(4000)]
    assert kept == [Sampler(0.25).keep(f"id-{index}") for index in range(4000)]
    assert 0.2 < sum(kept) / len(kept) < 0.3
    assert all(Sampler(1.0).keep(f"id-{i}") for i in range(100))
    assert not any(Sampler(0.0).keep(f"id-{i}") for i in range(100))


async def test_sampling_keeps_request_response_and_feedback_together(tmp_path: Path) -> None:
    path = tmp_path / "payload.jsonl"
    log = PayloadLog(ExportSettings(payload_log_file=str(path), payload_log_sample_rate=0.3,
                                    payload_log_flush_interval=0.01), CollectorRegistry())
    await log.start()
    log.submit([make_record(prediction_id=f"p-{index}") for index in range(400)])
    feedback = [log.feedback_event(f"p-{index}", "iris", b'{"truth": 1}') for index in range(400)]
    await log.stop(5.0)
    kinds: dict[str, list[str]] = {}
    for line in lines(path):
        kinds.setdefault(line["id"], []).append(line["type"].rsplit(".", 1)[1])
    assert 80 < len(kinds) < 160
    assert all(found == ["request", "response", "feedback"] for found in kinds.values())
    assert [f"p-{index}" for index, queued in enumerate(feedback) if queued] == sorted(kinds, key=lambda i: int(i[2:]))
    assert log.sampled_out == 2 * (400 - len(kinds))


@pytest.mark.parametrize(("mode", "expected"), [("request", ["request"]), ("response", ["response"]),
                                                ("all", ["request", "response"])])
async def test_the_mode_chooses_requests_responses_or_both(tmp_path: Path, mode: str, expected: list[str]) -> None:
    path = tmp_path / "payload.jsonl"
    log = PayloadLog(ExportSettings(payload_log_file=str(path), payload_log_mode=mode), CollectorRegistry())
    await log.start()
    log.submit([make_record()])
    await log.stop(5.0)
    assert [line["type"].rsplit(".", 1)[1] for line in lines(path)] == expected


async def test_exchanges_that_opted_out_are_not_logged(tmp_path: Path) -> None:
    path = tmp_path / "payload.jsonl"
    log = PayloadLog(ExportSettings(payload_log_file=str(path)), CollectorRegistry())
    await log.start()
    log.submit([make_record(prediction_id="secret")._replace(log_opt_out=True), make_record(prediction_id="public")])
    await log.stop(5.0)
    assert {line["id"] for line in lines(path)} == {"public"}
    assert log.opted_out == 1


async def test_both_sinks_receive_every_event_and_metrics_are_exported(tmp_path: Path,
                                                                       receiver_factory: StartReceiver) -> None:
    receiver = await receiver_factory()
    path = tmp_path / "payload.jsonl"
    registry = CollectorRegistry()
    log = PayloadLog(ExportSettings(payload_log_file=str(path), payload_log_url=receiver.url,
                                    payload_log_flush_interval=0.01), registry)
    await log.start()
    log.submit([make_record(prediction_id=f"p-{index}") for index in range(5)])
    await log.stop(5.0)
    assert len(lines(path)) == len(receiver.received) == 10
    assert outcome(registry, "file", "sent") == outcome(registry, "http", "sent") == 10
    exposition = generate_latest(registry).decode()
    assert 'sidecar_export_queue_depth{sink="http"} 0.0' in exposition
    assert 'sidecar_export_events_total{outcome="dropped",sink="file"} 0.0' in exposition
    assert 'sidecar_export_delivery_seconds_count{sink="file"} 10.0' in exposition


async def test_a_dead_sink_keeps_memory_bounded_and_counts_drops(dead_url: str) -> None:
    registry = CollectorRegistry()
    log = PayloadLog(ExportSettings(payload_log_url=dead_url, payload_log_queue=50, payload_log_batch=10,
                                    payload_log_retries=3, payload_log_flush_interval=0.01), registry)
    await log.start()
    (sink,) = log.sinks
    deepest = 0
    for start in range(0, 2000, 100):
        log.submit([make_record(prediction_id=f"p-{i}") for i in range(start, start + 100)])  # returns at once
        deepest = max(deepest, sink.queue.depth)
        assert log.free_slots() > 0  # the ring is always drained: the sink queue decides what to drop
    await log.stop(2.0)
    assert deepest <= 50
    dropped, failed = outcome(registry, "http", "dropped"), outcome(registry, "http", "failed")
    assert dropped > 0
    assert dropped + failed + outcome(registry, "http", "sent") == 4000
    assert sink.queue.depth == 0


async def test_stop_returns_by_the_deadline_even_when_the_receiver_hangs(receiver_factory: StartReceiver) -> None:
    receiver = await receiver_factory(delay=30.0)
    registry = CollectorRegistry()
    log = PayloadLog(ExportSettings(payload_log_url=receiver.url, payload_log_flush_interval=0.01,
                                    payload_log_timeout=60.0), registry)
    await log.start()
    log.submit([make_record(prediction_id=f"p-{index}") for index in range(20)])
    started = time.monotonic()
    await log.stop(0.5)
    assert time.monotonic() - started < 5.0  # far below the receiver's 30 s: the deadline was honoured
    total = sum(outcome(registry, "http", name) for name in ("sent", "failed", "dropped"))
    assert total == 40 and outcome(registry, "http", "sent") == 0


async def test_stop_flushes_what_is_queued(receiver_factory: StartReceiver) -> None:
    receiver = await receiver_factory()
    log = PayloadLog(ExportSettings(payload_log_url=receiver.url, payload_log_flush_interval=600.0,
                                    payload_log_batch=1000), CollectorRegistry())
    await log.start()
    log.submit([make_record(prediction_id=f"p-{index}") for index in range(25)])
    assert receiver.received == []  # nothing is due before the flush interval
    await log.stop(5.0)
    assert len(receiver.received) == 50


async def test_feedback_after_stop_is_dropped_not_raised(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    log = PayloadLog(ExportSettings(payload_log_file=str(tmp_path / "p.jsonl")), registry)
    await log.start()
    await log.stop(1.0)
    assert log.feedback_event("p-1", "iris", b"{}") is False
    assert outcome(registry, "file", "dropped") == 1


def test_the_payload_log_ring_is_bounded_by_the_queue_settings() -> None:
    ring = payload_log_ring(ExportSettings(payload_log_queue=123, payload_log_queue_bytes=4096, payload_log_batch=7))
    assert (ring.max_records, ring.max_bytes, ring.batch_size) == (123, 4096, 7)
