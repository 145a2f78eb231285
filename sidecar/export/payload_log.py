"""The payload log: the consumer of its own capture ring, fanning sampled events out to the configured sinks.

Wiring (done by the composition root):

    ring = payload_log_ring(settings.export)        # its own ring, teed from the proxies' capture
    tee.add(ring)
    log = PayloadLog(settings.export, registry)
    drainer = Drainer(ring, log, settings.export.payload_log_flush_interval)
    await log.start(); drainer.start()
    ...
    await drainer.stop(flush=True); await log.stop()   # on SIGTERM, within shutdown_flush_timeout

`submit` runs on the drainer's task, never on the request path, and never awaits: it samples, builds events
(no copies of bodies) and puts them on each sink's bounded queue, which drops and counts when full. So
`free_slots` always offers room: holding records back in the ring would let one dead sink starve the others.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from sidecar.capture.ring import CaptureRing
from sidecar.export.body import BodyPolicy, redaction_fields
from sidecar.export.events import EventContext, events_from_record, feedback_event
from sidecar.export.file_sink import FileSink
from sidecar.export.http_sink import HttpSink
from sidecar.export.metrics import ExportMetrics
from sidecar.export.queue import SinkQueue
from sidecar.export.settings import ExportSettings
from sidecar.export.sink import Sink
from sidecar.messages.records import CaptureRow, as_record

_HASH_SPACE = 1 << 64


def payload_log_ring(settings: ExportSettings) -> CaptureRing:
    """The payload log's own capture ring, bounded like one sink queue."""
    return CaptureRing(settings.payload_log_queue, settings.payload_log_queue_bytes,
                       batch_size=min(settings.payload_log_batch, 1024))


class Sampler:
    """Keeps a prediction id or not, the same way every time (request, response and feedback stay together)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._threshold = int(rate * _HASH_SPACE)

    def keep(self, prediction_id: str) -> bool:
        if self.rate >= 1.0:
            return True
        if self.rate <= 0.0:
            return False
        digest = hashlib.blake2b(prediction_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        return int.from_bytes(digest, "big") < self._threshold


class PayloadLog:
    def __init__(self, settings: ExportSettings, registry: CollectorRegistry) -> None:
        if not settings.payload_log_enabled:
            raise ValueError("payload log: neither payload_log_file nor payload_log_url is set")
        self.settings = settings
        self.metrics = ExportMetrics(registry)
        self.sampler = Sampler(settings.payload_log_sample_rate)
        self.requests = settings.payload_log_mode in ("request", "all")
        self.responses = settings.payload_log_mode in ("response", "all")
        context = EventContext(settings.payload_log_source, settings.payload_log_service,
                               settings.payload_log_namespace)
        policy = BodyPolicy(settings.payload_log_max_body, redaction_fields(settings.payload_log_redact))
        self.sinks: list[Sink] = []
        delivery = self.metrics.delivery
        if settings.payload_log_file is not None:
            self.sinks.append(FileSink(Path(settings.payload_log_file), settings.payload_log_file_max_bytes,
                                       settings.payload_log_file_keep, self._queue(), delivery, context, policy))
        if settings.payload_log_url is not None:
            self.sinks.append(HttpSink(settings.payload_log_url, self._queue(), delivery, context, policy,
                                       settings.payload_log_senders, settings.payload_log_timeout,
                                       settings.payload_log_retries))
        for sink in self.sinks:
            self.metrics.add(sink)
        self.sampled_out = 0
        self.opted_out = 0

    def _queue(self) -> SinkQueue:
        s = self.settings
        return SinkQueue(s.payload_log_queue, s.payload_log_queue_bytes, s.payload_log_batch,
                         s.payload_log_flush_interval)

    async def start(self) -> None:
        for sink in self.sinks:
            await sink.start()

    def free_slots(self) -> int:
        return self.settings.payload_log_queue

    def submit(self, batch: list[CaptureRow]) -> None:
        now = time.monotonic()
        keep = self.sampler.keep
        per_record = int(self.requests) + int(self.responses)
        sinks = self.sinks
        for record in map(as_record, batch):
            if record.log_opt_out:
                self.opted_out += 1
                continue
            if not keep(record.prediction_id):
                self.sampled_out += 1
                continue
            if all(sink.queue.full for sink in sinks):  # count the drops without building events
                for sink in sinks:
                    sink.queue.reject(per_record)
                continue
            for event in events_from_record(record, self.requests, self.responses):
                for sink in sinks:
                    sink.put(event, now)

    def feedback_event(self, prediction_id: str, model: str, body: bytes, version: str = "") -> bool:
        """Log a feedback body for a prediction (sampled like its exchange); never blocks. True when queued."""
        if not self.sampler.keep(prediction_id):
            self.sampled_out += 1
            return False
        event = feedback_event(prediction_id, model, body, version)
        queued = False
        for sink in self.sinks:
            queued = sink.put(event, time.monotonic()) or queued
        return queued

    async def stop(self, timeout: float | None = None) -> None:
        """Flush every sink within `timeout` seconds (default: shutdown_flush_timeout), then close them."""
        budget = self.settings.shutdown_flush_timeout if timeout is None else timeout
        await asyncio.gather(*(sink.stop(budget) for sink in self.sinks))
