"""The shadow sender: a capture target that mirrors inference calls to shadow model servers, off the request path.

`append` runs on the request path (through the proxies' `Tee`): it looks the model's shadow up (cached), keeps a
`sample` share of the calls, chosen by a hash of the prediction id, and puts the record in the shadow's lane, a
bounded deque (by calls and by bytes: the oldest is dropped and counted when it is full). Nothing else happens there.

Each lane (one per shadow) runs a task on the event loop that takes records from its deque and sends them, at most
`shadow_concurrency` at a time, over its own connection pool (aiohttp for REST, a grpc.aio channel for gRPC), each
bounded by `shadow_timeout`; an answer larger than the sidecar's own limits (max_body_bytes, grpc_max_message_bytes)
is not read whole but counted `oversize`. The shadow's answer is never returned to anyone: it goes, with the
primary's answer to the same request, into one capture record naming the shadow (`CaptureRecord.shadow`,
`primary_response`), which `deliver` hands to the analysis; the workers decode both and compare them. A REST call
is mirrored only to a shadow with a REST address, a gRPC call only to one with a gRPC address (a call is never
translated): otherwise it is counted `unsupported`. A call the primary failed is mirrored too; when the shadow fails
it as well, it is counted `both_failed`, not against the shadow.

A shadow that does not answer costs the primary's clients nothing but the `append`: after `DOWN_AFTER` calls in a
row found it unreachable, its lane stops connecting for a while (`DOWN_SECONDS`, doubling up to `DOWN_MAX_SECONDS`)
and counts the calls it takes meanwhile as `unreachable` without sending them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

import aiohttp
import grpc
from prometheus_client import CollectorRegistry

from sidecar.messages.records import PROTOCOL_GRPC, PROTOCOL_REST, CaptureRecord
from sidecar.shadow.metrics import ShadowMetrics, ShadowStats
from sidecar.shadow.requests import (
    Unsupported,
    compressed,
    grpc_message,
    grpc_method,
    grpc_request,
    naming,
    rest_path,
)
from sidecar.shadow.settings import ShadowSettings, ShadowTarget

log = logging.getLogger(__name__)
Deliver = Callable[[CaptureRecord], None]
DOWN_AFTER = 3  # unreachable calls in a row before a lane stops connecting for a while
DOWN_SECONDS = 0.5
DOWN_MAX_SECONDS = 10.0
MAX_CACHED_MODELS = 10_000
TAKEN_PER_TURN = 64  # queued calls a lane handles before it lets the loop run other work
_HASH_SPACE = float(1 << 32)
COST = ("; each mirrored call costs the proxy's event loop about as much CPU as proxying it (a live shadow of "
        "every call measured 2.3-3.2x the p99 latency of a busy proxy): lower shadow_sample where the proxy is busy")


def sampled(prediction_id: str, share: float) -> bool:
    """Whether the call with this id is mirrored at `share` (the same answer for an id everywhere)."""
    if share >= 1.0:
        return True
    return zlib.crc32(prediction_id.encode("utf-8", "surrogatepass")) < share * _HASH_SPACE


class _Lane:
    """One shadow: its queue, its connections and the task sending what waits."""

    def __init__(self, sender: ShadowSender, target: ShadowTarget) -> None:
        self.sender = sender
        self.target = target
        self.queue: deque[tuple[CaptureRecord, ShadowTarget]] = deque()  # each with its model's target
        self.queued_bytes = 0
        self.inflight = 0
        self.wake = asyncio.Event()
        self.room = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.sending: set[asyncio.Task[None]] = set()
        self.session: aiohttp.ClientSession | None = None
        self.channel: grpc.aio.Channel | None = None
        self.calls: dict[str, Any] = {}
        self.breakers = {PROTOCOL_REST: _Breaker(), PROTOCOL_GRPC: _Breaker()}
        self.told_unsupported: set[str] = set()

    def start(self) -> None:
        settings = self.sender.settings
        target = self.target
        if target.rest is not None:
            host, port = target.rest
            connector = aiohttp.TCPConnector(limit=settings.shadow_concurrency)
            self.session = aiohttp.ClientSession(
                base_url=f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}", connector=connector,
                timeout=aiohttp.ClientTimeout(total=settings.shadow_timeout), auto_decompress=True)
        if target.grpc is not None:
            host, port = target.grpc
            size = self.sender.max_message_bytes
            self.channel = grpc.aio.insecure_channel(
                f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                options=[("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)])
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"shadow-{target.name}")

    async def stop(self) -> None:
        """Stop sending: the calls still queued or in flight are counted `dropped` (and said in one line)."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        queued, inflight = len(self.queue), len(self.sending)
        while self.queue:
            self.sender.count(self._take()[0].model, self.target.name, "dropped")
        for task in list(self.sending):
            task.cancel()
        if self.sending:
            await asyncio.gather(*self.sending, return_exceptions=True)
        if queued or inflight:
            log.info("shadow %s stopped with %d calls queued and %d in flight: counted dropped", self.target.name,
                     queued, inflight)
        if self.session is not None:
            await self.session.close()
        if self.channel is not None:
            await self.channel.close()

    def put(self, record: CaptureRecord, target: ShadowTarget) -> None:
        breaker = self.breakers.get(record.protocol)
        if breaker is not None and breaker.down_until and time.monotonic() < breaker.down_until:
            self.sender.count(record.model, self.target.name, "unreachable")  # not connecting for a while
            return
        queue = self.queue
        settings = self.sender.settings
        size = _size(record)
        while queue and (len(queue) >= settings.shadow_queue_max
                         or self.queued_bytes + size > settings.shadow_queue_max_bytes):
            self.sender.count(self._take()[0].model, self.target.name, "dropped")
        if size > settings.shadow_queue_max_bytes:
            self.sender.count(record.model, self.target.name, "dropped")  # alone beyond the bound
            return
        queue.append((record, target))
        self.queued_bytes += size
        self.wake.set()

    def _take(self) -> tuple[CaptureRecord, ShadowTarget]:
        record, target = self.queue.popleft()
        self.queued_bytes -= _size(record)
        return record, target

    async def _run(self) -> None:
        concurrency = self.sender.settings.shadow_concurrency
        loop = asyncio.get_running_loop()
        while True:
            if not self.queue:
                self.wake.clear()
                await self.wake.wait()
            taken = 0
            while self.queue and self.inflight < concurrency and taken < TAKEN_PER_TURN:
                taken += 1
                record, target = self._take()
                breaker = self.breakers.get(record.protocol)
                if breaker is not None and time.monotonic() < breaker.down_until:  # counted, not sent
                    self.sender.count(record.model, self.target.name, "unreachable")
                    continue
                self.inflight += 1
                task = loop.create_task(self._send(record, target))
                self.sending.add(task)
                task.add_done_callback(self.sending.discard)
            if self.inflight >= concurrency:
                self.room.clear()
                await self.room.wait()
            elif taken >= TAKEN_PER_TURN:
                await asyncio.sleep(0)  # requests waiting on the loop go first

    async def _send(self, record: CaptureRecord, target: ShadowTarget) -> None:
        started = time.perf_counter()
        outcome = "error"
        status, body = -1, b""
        try:
            name = naming(record.model, record.version, record.label, target.model, target.version)
            if record.protocol == PROTOCOL_REST and self.session is not None:
                status, body = await self._rest(record, rest_path(record.api, record.method, name))
                ok = status == 200
            elif record.protocol == PROTOCOL_GRPC and self.channel is not None:
                message = record.request
                if compressed(message):  # inflated off the loop: the channel compresses nothing itself
                    message = await asyncio.to_thread(grpc_message, message, self.sender.max_message_bytes)
                status, body = await self._grpc(record, grpc_method(record.api, record.method),
                                                grpc_request(record.api, message, name))
                ok = status == 0
            else:
                outcome = "unsupported"
                if record.protocol not in self.told_unsupported:
                    self.told_unsupported.add(record.protocol)
                    log.warning("shadow %s has no %s address: the %s calls mirrored to it are counted unsupported "
                                "(a call is never translated to the other protocol)", target.name, record.protocol,
                                record.protocol)
                return
            outcome = "ok" if ok else "error"
            self._reachable(record.protocol)
        except Unsupported as exc:
            outcome = "unsupported"
            log.debug("shadow %s: %s", target.name, exc)
        except _Oversize:
            outcome = "oversize"
        except TimeoutError:
            outcome = "timeout"
        except (aiohttp.ClientConnectionError, OSError):
            outcome = "unreachable"
            self._unreachable(record.protocol)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            outcome = {grpc.StatusCode.DEADLINE_EXCEEDED: "timeout", grpc.StatusCode.UNAVAILABLE: "unreachable",
                       grpc.StatusCode.RESOURCE_EXHAUSTED: "oversize"}.get(code, "error")
            if outcome == "unreachable":
                self._unreachable(record.protocol)
        except asyncio.CancelledError:  # stopped
            outcome = "dropped"
            raise
        except Exception:  # a shadow must never break anything else
            log.exception("mirroring a call to shadow %s failed", target.name)
        finally:
            self.inflight -= 1
            self.room.set()
            if outcome in ("unsupported", "dropped"):
                self.sender.count(record.model, target.name, outcome)
            else:
                self.sender.finished(record, target.name, outcome, status, body, time.perf_counter() - started)

    async def _rest(self, record: CaptureRecord, path: str) -> tuple[int, bytes]:
        assert self.session is not None
        headers = {"Content-Type": "application/json", "X-Sidecar-Shadow": "1"}
        if record.request_encoding:
            headers["Content-Encoding"] = record.request_encoding
        limit = self.sender.max_body_bytes
        async with self.session.post(path, data=record.request, headers=headers) as response:
            if response.content_length is not None and response.content_length > limit:
                raise _Oversize
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > limit:
                    raise _Oversize
            return response.status, bytes(body)

    async def _grpc(self, record: CaptureRecord, method: str, request: bytes) -> tuple[int, bytes]:
        assert self.channel is not None
        call = self.calls.get(method)
        if call is None:
            call = self.calls[method] = self.channel.unary_unary(method)
        response = await call(request, timeout=self.sender.settings.shadow_timeout,
                              metadata=(("x-sidecar-shadow", "1"),))
        return 0, bytes(response)

    def _unreachable(self, protocol: str) -> None:
        breaker = self.breakers[protocol]
        breaker.in_a_row += 1
        if breaker.in_a_row >= DOWN_AFTER:
            breaker.down_until = time.monotonic() + breaker.seconds
            if not breaker.told:
                breaker.told = True
                log.warning("shadow %s (%s) is unreachable; its mirrored calls are counted as unreachable without "
                            "being sent, retrying every %.1f-%.0f s", self.target.name, protocol, DOWN_SECONDS,
                            DOWN_MAX_SECONDS)
            breaker.seconds = min(DOWN_MAX_SECONDS, breaker.seconds * 2)

    def _reachable(self, protocol: str) -> None:
        breaker = self.breakers[protocol]
        if breaker.told:
            log.info("shadow %s (%s) answers again", self.target.name, protocol)
        breaker.in_a_row, breaker.seconds, breaker.told = 0, DOWN_SECONDS, False


class _Oversize(Exception):
    """The shadow's answer is larger than the sidecar accepts (max_body_bytes, grpc_max_message_bytes)."""


def _size(record: CaptureRecord) -> int:
    return len(record.request) + len(record.response)


class _Breaker:
    """Whether a shadow's endpoint is skipped for a while after calls in a row found it unreachable."""

    def __init__(self) -> None:
        self.in_a_row = 0
        self.down_until = 0.0
        self.seconds = DOWN_SECONDS
        self.told = False


def _queued(lane: _Lane) -> float:
    return len(lane.queue)


def _inflight(lane: _Lane) -> float:
    return lane.inflight


class ShadowSender:
    """Mirrors inference calls to the shadows `settings` name. `append` is a capture target (request path, O(1));
    `deliver` takes the shadow records made of the answers (the analysis pool's `append`), or None."""

    def __init__(self, settings: ShadowSettings, registry: CollectorRegistry, deliver: Deliver | None = None, *,
                 model_label_cap: int = 100, max_message_bytes: int = 64 * 1024**2,
                 max_body_bytes: int = 64 * 1024**2) -> None:
        self.settings = settings
        self.deliver = deliver
        self.max_message_bytes = max_message_bytes  # gRPC messages either way
        self.max_body_bytes = max_body_bytes  # REST answers read
        self.metrics = ShadowMetrics(registry, model_label_cap)
        self.metrics.threshold.set(settings.shadow_min_agreement)
        self.stats = self.metrics.stats
        self._lanes: dict[ShadowTarget, _Lane] = {}
        self._routes: dict[str, tuple[_Lane, ShadowTarget] | None] = {}
        self._started = False

    async def start(self) -> None:
        """Open every configured shadow's lane (connections, task) and say what is mirrored, before any traffic:
        `append` then only looks up and queues."""
        self._started = True
        settings = self.settings
        everyone = settings.global_target()
        if everyone is not None:
            self._lane(everyone)
            self.metrics.sample.labels("*", everyone.name).set(everyone.sample)
            log.info("shadow %s: %.0f%% of every model's inference calls mirrored (shadow_sample)%s", everyone.name,
                     100 * everyone.sample, COST if everyone.sample >= 1.0 else "")
        for model in settings.shadow_models:
            route = self._route(model)
            if route is None:
                continue
            target = route[1]
            self.metrics.sample.labels(self.metrics.models(model), target.name).set(target.sample)
            log.info("model %s: %.0f%% of its inference calls mirrored to shadow %s%s%s", model, 100 * target.sample,
                     target.name, f" as model {target.model}" if target.model else "",
                     COST if target.sample >= 1.0 else "")

    async def stop(self) -> None:
        self._started = False
        for lane in self._lanes.values():
            await lane.stop()  # its queue is empty now: the gauge reads 0

    def append(self, record: CaptureRecord) -> None:
        """Mirror one captured call when its model has a shadow and its id is sampled. Never waits."""
        routes = self._routes
        route = routes[record.model] if record.model in routes else self._route(record.model)
        if route is None or record.shadow:
            return
        lane, target = route
        if target.sample >= 1.0 or sampled(record.prediction_id, target.sample):
            lane.put(record, target)

    def _route(self, model: str) -> tuple[_Lane, ShadowTarget] | None:
        """The lane and target of `model`, cached (the oldest cached names leave first beyond MAX_CACHED_MODELS)."""
        if not self._started:
            return None
        routes = self._routes
        while len(routes) >= MAX_CACHED_MODELS:
            del routes[next(iter(routes))]
        target = self.settings.target(model)
        if target is None:
            routes[model] = None
            return None
        route = routes[model] = (self._lane(target), target)
        return route

    def _lane(self, target: ShadowTarget) -> _Lane:
        where = target._replace(sample=1.0, model=None, version="")  # a lane per shadow, shared by its models
        lane = self._lanes.get(where)
        if lane is None:
            lane = self._lanes[where] = _Lane(self, where)
            lane.start()
            self.metrics.queued.labels(target.name).set_function(partial(_queued, lane))
            self.metrics.inflight.labels(target.name).set_function(partial(_inflight, lane))
            log.info("shadow %s: mirroring to%s%s", target.name,
                     f" REST http://{target.rest[0]}:{target.rest[1]}" if target.rest else "",
                     f" gRPC {target.grpc[0]}:{target.grpc[1]}" if target.grpc else "")
        return lane

    def count(self, model: str, shadow: str, outcome: str) -> None:
        outcomes = self._stats(model, shadow).outcomes
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    def finished(self, record: CaptureRecord, shadow: str, outcome: str, status: int, body: bytes,
                 seconds: float) -> None:
        """A mirrored call ended (answered, failed, timed out): count both sides; pair two good answers for the
        analysis."""
        model = self.metrics.models(record.model)
        metrics = self.metrics
        if outcome == "error" and not record.ok:
            outcome = "both_failed"  # the call failed on the primary too: bad traffic, not the shadow's fault
        self.count(record.model, shadow, outcome)
        stats = self._stats(record.model, shadow)
        metrics.duration.labels(model, shadow, "shadow").observe(seconds)
        metrics.duration.labels(model, shadow, "primary").observe(record.latency)
        stats.latencies["shadow"].append(seconds)
        stats.latencies["primary"].append(record.latency)
        if not record.ok:
            metrics.primary_errors.labels(model, shadow).inc()
            stats.primary_errors += 1
        if outcome == "ok" and record.ok and not record.response_truncated and self.deliver is not None:
            self.deliver(record._replace(response=body, status=status, latency=seconds, shadow=shadow,
                                         primary_response=record.response, log_opt_out=True))

    def _stats(self, model: str, shadow: str) -> ShadowStats:
        key = (self.metrics.models(model), shadow)
        stats = self.stats.get(key)
        if stats is None:
            stats = self.stats[key] = ShadowStats()
        return stats

    def snapshot(self, model: str) -> dict[str, Any] | None:
        """Per shadow of `model`: calls by outcome, both sides' error rates and latency percentiles."""
        found = {shadow: stats.snapshot() for (name, shadow), stats in self.stats.items() if name == model}
        return found or None
