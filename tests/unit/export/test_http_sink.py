"""The CloudEvents HTTP sink against real receivers on loopback: headers, bodies, order, retries, failures."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable

from prometheus_client import CollectorRegistry

from sidecar.export.body import BodyPolicy
from sidecar.export.events import EventContext, PayloadEvent, events_from_record, rfc3339
from sidecar.export.http_sink import HttpSink, header_value
from sidecar.export.metrics import ExportMetrics
from sidecar.export.queue import SinkQueue

from .conftest import StartReceiver
from .receivers import make_record

CONTEXT = EventContext(source="urn:test", namespace="ml")


def make_sink(url: str, registry: CollectorRegistry, *, batch: int = 10, senders: int = 1, retries: int = 2,
              redact: Iterable[str] = (), capacity: int = 1000) -> HttpSink:
    metrics = ExportMetrics(registry)
    sink = HttpSink(url, SinkQueue(capacity, 10**8, batch, 0.01), metrics.delivery, CONTEXT,
                    BodyPolicy(1024, frozenset(redact)), senders, 5.0, retries)
    metrics.add(sink)
    return sink


def outcome(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value("sidecar_export_events_total", {"sink": "http", "outcome": name}) or 0.0


def exchange(index: int, **kwargs: object) -> list[PayloadEvent]:
    return events_from_record(make_record(prediction_id=f"p-{index}", **kwargs))  # type: ignore[arg-type]


async def run(sink: HttpSink, events: Iterable[PayloadEvent]) -> None:
    await sink.start()
    for event in events:
        sink.put(event, 0.0)
    await sink.stop(10.0)


async def test_request_and_response_events_carry_every_header_and_the_body(receiver_factory: StartReceiver) -> None:
    receiver = await receiver_factory()
    record = make_record(prediction_id="p-1", model="iris", version="3", label="stable", status=200,
                         request=b'{"instances": [[5.1, 3.5]]}', response=b'{"predictions": [[0.9, 0.1]]}')
    registry = CollectorRegistry()
    await run(make_sink(receiver.url + "/events", registry), events_from_record(record))
    request, response = receiver.received
    common = {
        "ce-specversion": "1.0", "ce-id": "p-1", "ce-source": "urn:test", "ce-inferenceservicename": "iris",
        "ce-namespace": "ml", "ce-component": "predictor", "ce-endpoint": "stable", "ce-requestid": "p-1",
        "ce-modelid": "iris", "ce-predictionid": "p-1", "ce-model": "iris", "ce-modelversion": "3",
        "ce-protocol": "rest", "ce-api": "tfserving", "ce-method": "predict", "content-type": "application/json",
    }
    request_ce = {k: v for k, v in request.headers.items() if k.startswith("ce-") or k == "content-type"}
    assert request_ce == {**common, "ce-type": "org.kubeflow.serving.inference.request",
                          "ce-time": rfc3339(record.time)}
    response_ce = {k: v for k, v in response.headers.items() if k.startswith("ce-") or k == "content-type"}
    assert response_ce == {**common, "ce-type": "org.kubeflow.serving.inference.response",
                           "ce-time": rfc3339(record.time + record.latency), "ce-status": "200"}
    assert (request.body, response.body) == (record.request, record.response)
    assert outcome(registry, "sent") == 2
    assert registry.get_sample_value("sidecar_export_delivery_seconds_count", {"sink": "http"}) == 2


async def test_one_sender_posts_every_event_in_order_on_one_kept_alive_connection(
        receiver_factory: StartReceiver) -> None:
    receiver = await receiver_factory()
    events = [event for index in range(30) for event in exchange(index)]
    await run(make_sink(receiver.url, CollectorRegistry(), batch=7), events)
    assert [(r.headers["ce-id"], r.headers["ce-type"].rsplit(".", 1)[1]) for r in receiver.received] == [
        (f"p-{index}", kind) for index in range(30) for kind in ("request", "response")]
    assert len({r.connection for r in receiver.received}) == 1


async def test_several_senders_each_keep_queue_order_on_their_own_connection(receiver_factory: StartReceiver) -> None:
    receiver = await receiver_factory(delay=0.005)
    events = [event for index in range(40) for event in exchange(index, response=b"{}")][::2]  # requests only
    await run(make_sink(receiver.url, CollectorRegistry(), batch=5, senders=3), events)
    assert sorted(r.headers["ce-id"] for r in receiver.received) == sorted(f"p-{i}" for i in range(40))
    connections = {r.connection for r in receiver.received}
    assert 1 < len(connections) <= 3
    for connection in connections:
        ids = [int(r.headers["ce-id"][2:]) for r in receiver.received if r.connection == connection]
        assert ids == sorted(ids)


async def test_server_errors_are_retried_then_counted_as_failed(receiver_factory: StartReceiver) -> None:
    receiver = await receiver_factory(status=500)
    registry = CollectorRegistry()
    await run(make_sink(receiver.url, registry, batch=10, retries=2), exchange(1) + exchange(2))
    assert [r.headers["ce-type"].endswith("request") for r in receiver.received] == [True] * 3  # 1 try + 2 retries
    assert outcome(registry, "failed") == 4  # the receiver is down: the rest of the batch is given up too
    assert outcome(registry, "sent") == 0


async def test_a_retry_that_succeeds_counts_as_sent(receiver_factory: StartReceiver) -> None:
    receiver = await receiver_factory(statuses=[503, 429])
    registry = CollectorRegistry()
    await run(make_sink(receiver.url, registry, retries=3), exchange(1)[:1])
    assert len(receiver.received) == 3
    assert outcome(registry, "sent") == 1 and outcome(registry, "failed") == 0


async def test_client_errors_are_not_retried(receiver_factory: StartReceiver) -> None:
    receiver = await receiver_factory(status=400)
    registry = CollectorRegistry()
    await run(make_sink(receiver.url, registry, retries=5), exchange(1) + exchange(2))
    assert len(receiver.received) == 4
    assert outcome(registry, "failed") == 4


async def test_a_dead_receiver_fails_events_and_frees_the_queue(dead_url: str) -> None:
    registry = CollectorRegistry()
    sink = make_sink(dead_url, registry, retries=1)
    await run(sink, exchange(1) + exchange(2))
    assert outcome(registry, "failed") == 4
    assert sink.queue.depth == 0


async def test_redacted_bodies_are_sent_with_the_mark(receiver_factory: StartReceiver) -> None:
    receiver = await receiver_factory()
    body = json.dumps({"instances": [{"ssn": "123-45-6789", "x": 1}]}).encode()
    await run(make_sink(receiver.url, CollectorRegistry(), redact=["ssn"]), exchange(1, request=body)[:1])
    (received,) = receiver.received
    assert json.loads(received.body) == {"instances": [{"ssn": "[REDACTED]", "x": 1}]}
    assert received.headers["ce-redacted"] == "true"
    assert b"123-45-6789" not in received.body


def test_header_values_are_percent_encoded_per_the_cloudevents_http_binding() -> None:
    assert header_value("modèle 1") == "mod%C3%A8le%201"
    assert header_value('a"b%c') == "a%22b%25c"
    assert header_value("iris-v2_x:/y") == "iris-v2_x:/y"
    assert header_value(True) == "true"


async def test_stop_without_events_is_quick_and_clean(receiver_factory: StartReceiver) -> None:
    receiver = await receiver_factory()
    sink = make_sink(receiver.url, CollectorRegistry())
    await sink.start()
    await asyncio.wait_for(sink.stop(5.0), 5)
    assert receiver.received == []
