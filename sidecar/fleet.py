"""`--proxy-processes N`: N - 1 more processes accept and forward requests on the sidecar's ports.

Why: one Python process proxies on one core whatever the node has. With SO_REUSEPORT the kernel spreads new
connections over every process listening on a port, so each extra process adds a core's worth of forwarding. The
rest stays single, in the main process: the analysis pool and its workers, the feedback store, the admin listener
and the readiness probes. A proxy process keeps its own request metrics and capture list and sends the main
process, over a pipe, its captured records every `capture_flush_interval` (appended to the main process's capture
tee as if its own proxies had captured them), its cumulative request metrics and limit counts once a second
(merged into `/metrics`), and the requests for the sidecar's own REST routes (`POST /v1/feedback`, and `:explain` of
the models the sidecar explains), answered by the main process.

Why `:explain` goes through that same pipe rather than a listener of its own: the explainer processes, their
admission queue and their metrics belong to the main process, as the feedback store does, so a proxy process must
hand the request over whole and relay the answer; the pipe already carries exactly that (a request in, its answer
back by sequence number), is private to the two processes, and needs no port, socket file or authentication. An
explain request waits for its answer as long as the explanation may take (`explain_timeout`) plus the relay's own
margin. Records a busy main process cannot take fast enough are dropped in the proxy process (bounded
by `capture_max_bytes` waiting in the pipe) and counted as `sidecar_limit_events_total{protocol="fleet",
limit="capture_backlog"}`. A proxy process that exits is started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import signal
from collections.abc import Callable, Mapping
from multiprocessing import get_context
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from sidecar.analysis.pipes import FrameReader, FrameWriter
from sidecar.config import Settings
from sidecar.messages.records import CaptureRecord
from sidecar.proxy.rest.local import LocalHandler, LocalRequest, LocalResponse, LocalRoutes
from sidecar.proxy.rest.routes import Route
from sidecar.telemetry.metrics import LimitMetrics, RequestMetrics

log = logging.getLogger(__name__)

METRICS_INTERVAL = 1.0
LOCAL_TIMEOUT = 30.0
CAPTURE_BACKLOG = "capture_backlog"
_CAPTURE, _METRICS, _LOCAL, _ANSWER = "capture", "metrics", "local", "answer"


class _Child:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: BaseProcess | None = None
        self.writer: FrameWriter | None = None
        self.reader: FrameReader | None = None
        self.limit_events: dict[str, int] = {}  # summed over the process's protocols, by "protocol/limit"


class ProxyFleet:
    """The main process's side: starts the extra proxy processes, takes in what they send, answers local routes."""

    def __init__(self, settings: Settings, capture: Callable[[CaptureRecord], None] | None, metrics: RequestMetrics,
                 limits: LimitMetrics, local_routes: LocalRoutes | None,
                 route_handlers: Callable[[Route], LocalHandler | None] | None = None) -> None:
        self.settings = settings
        self.capture = capture
        self.metrics = metrics
        self.local_routes = dict(local_routes or {})
        self.route_handlers = route_handlers  # model routes the main process answers (`:explain`)
        self._children = [_Child(index) for index in range(1, settings.proxy.proxy_processes)]
        self._limits = {protocol: _ProtocolEvents(self._children, protocol) for protocol in ("rest", "grpc", "fleet")}
        for protocol, events in self._limits.items():
            limits.add(protocol, events)
        self._context = get_context("spawn")
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pids(self) -> list[int]:
        """The proxy processes running now."""
        return [child.process.pid for child in self._children
                if child.process is not None and child.process.pid is not None and child.process.exitcode is None]

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for child in self._children:
            await self._start(child)
        log.info("%d more proxy processes forward requests on the same ports", len(self._children))

    async def _start(self, child: _Child) -> None:
        loop = self._loop
        assert loop is not None
        to_child_receive, to_child_send = self._context.Pipe(duplex=False)
        from_child_receive, from_child_send = self._context.Pipe(duplex=False)
        logging_level = logging.getLogger().getEffectiveLevel()
        from sidecar.telemetry.logs import current_format

        process = self._context.Process(target=run, name=f"sidecar-proxy-{child.index}", daemon=True,
                                        args=(child.index, self.settings, to_child_receive, from_child_send,
                                              logging_level, current_format()))
        await asyncio.to_thread(process.start)
        to_child_receive.close()
        from_child_send.close()
        child.process = process
        child.writer = FrameWriter(_own_fd(to_child_send), loop)
        child.reader = FrameReader(_own_fd(from_child_receive))
        loop.add_reader(child.reader.fd, self._on_frames, child)

    def _on_frames(self, child: _Child) -> None:
        reader = child.reader
        if reader is None:
            return
        frames, ended = reader.read()
        for frame in frames:
            try:
                self._handle(child, pickle.loads(frame))
            except Exception:
                log.exception("a message from proxy process %d could not be handled", child.index)
        if ended:
            self._ended(child)

    def _handle(self, child: _Child, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == _CAPTURE:
            capture = self.capture
            if capture is not None:
                for record in message[1]:
                    capture(record)
        elif kind == _METRICS:
            self.metrics.absorb(child.index, message[1])
            child.limit_events = message[2]
        elif kind == _LOCAL:
            route = message[3] if len(message) > 3 else None
            task = asyncio.ensure_future(self._answer(child, message[1], message[2], route))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, child: _Child, sequence: int, request: LocalRequest, route: Route | None) -> None:
        if route is not None:
            handler = self.route_handlers(route) if self.route_handlers is not None else None
        else:
            handler = self.local_routes.get(request.path)
        try:
            response = await handler(request) if handler is not None else LocalResponse.json(
                404, {"error": f"no such route: {request.path}"})
        except Exception:
            log.exception("the local route %s failed for proxy process %d", request.path, child.index)
            response = LocalResponse.json(500, {"error": "internal error"})
        if child.writer is not None:
            child.writer.send(pickle.dumps((_ANSWER, sequence, response)))

    def _ended(self, child: _Child) -> None:
        loop = self._loop
        assert loop is not None
        if child.reader is not None:
            loop.remove_reader(child.reader.fd)
            child.reader.close()
            child.reader = None
        if child.writer is not None:
            child.writer.close()
            child.writer = None
        self.metrics.retire(child.index)
        if self._stopping:
            return
        process = child.process
        code = process.exitcode if process is not None else None
        log.warning("proxy process %d exited (code %s); starting it again", child.index, code)
        task = loop.create_task(self._restart(child))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _restart(self, child: _Child) -> None:
        if child.process is not None:
            await asyncio.to_thread(child.process.join, 5.0)
        await asyncio.sleep(0.5)
        if not self._stopping:
            await self._start(child)

    async def stop(self, grace: float = 10.0) -> None:
        """Ask every proxy process to stop (SIGTERM: it finishes its requests within its grace) and wait for it."""
        self._stopping = True
        for child in self._children:
            if child.process is not None and child.process.pid is not None and child.process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.process.pid, signal.SIGTERM)
        for child in self._children:
            if child.process is not None:
                await asyncio.to_thread(child.process.join, grace)
                if child.process.exitcode is None:
                    child.process.kill()
            if child.reader is not None:
                self._on_frames(child)  # what it sent last
                if child.reader is not None:
                    self._ended(child)
        for task in list(self._tasks):
            task.cancel()


class _ProtocolEvents(Mapping[str, int]):
    """The limit counts of one protocol summed over the proxy processes, read at scrape time."""

    def __init__(self, children: list[_Child], protocol: str) -> None:
        self._children = children
        self._prefix = protocol + "/"

    def _totals(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for child in self._children:
            for key, count in child.limit_events.items():
                if key.startswith(self._prefix):
                    limit = key[len(self._prefix):]
                    totals[limit] = totals.get(limit, 0) + count
        return totals

    def __getitem__(self, key: str) -> int:
        return self._totals()[key]

    def __iter__(self) -> Any:
        return iter(self._totals())

    def __len__(self) -> int:
        return len(self._totals())


def _own_fd(connection: Connection) -> int:
    fd = os.dup(connection.fileno())
    connection.close()
    return fd


# -- the proxy process ----------------------------------------------------------------------------------------

def run(index: int, settings: Settings, from_main: Connection, to_main: Connection, level: int,
        log_format: str) -> None:
    """Entry point of proxy process `index` (spawned)."""
    from sidecar.runtime import install_fast_loop, name_process, shorten_gil_switch_interval
    from sidecar.telemetry.logs import configure

    name_process(f"sidecar-proxy-{index}")
    configure(level, log_format, process=f"proxy-{index}")
    shorten_gil_switch_interval()
    install_fast_loop()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the main process stops us
    asyncio.run(_serve(index, settings, _own_fd(from_main), _own_fd(to_main)))


class _Outbox:
    """The proxy process's end of the pipe to the main process, with the captured records waiting to go."""

    def __init__(self, writer: FrameWriter, max_bytes: int, max_records: int) -> None:
        self.writer = writer
        self.max_bytes = max_bytes
        self.max_records = max_records
        self.records: list[CaptureRecord] = []
        self.dropped = 0

    def capture(self, record: CaptureRecord) -> None:
        if len(self.records) < self.max_records:
            self.records.append(record)
        else:
            self.dropped += 1

    def flush(self) -> None:
        records, self.records = self.records, []
        if not records:
            return
        if self.writer.pending_bytes > self.max_bytes:  # the main process is not keeping up: drop, count
            self.dropped += len(records)
            return
        self.writer.send(pickle.dumps((_CAPTURE, records), pickle.HIGHEST_PROTOCOL))


async def _serve(index: int, settings: Settings, read_fd: int, write_fd: int) -> None:
    from sidecar.proxy.grpc.engine import GrpcProxy
    from sidecar.proxy.rest.proxy import RestProxy
    from sidecar.telemetry.tracing import from_environment

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    writer, reader = FrameWriter(write_fd, loop), FrameReader(read_fd)
    capture_settings = settings.capture
    outbox = _Outbox(writer, capture_settings.capture_max_bytes, capture_settings.capture_max_records)
    capture = outbox.capture if capture_settings.capture_enabled and settings.analysis.analysis_enabled else None
    metrics = RequestMetrics(settings.telemetry.model_label_cap)
    tracing = from_environment(os.environ)
    waiting: dict[int, asyncio.Future[LocalResponse]] = {}
    sequence = itertools.count()

    async def relay(request: LocalRequest, route: Route | None = None,
                    timeout: float = LOCAL_TIMEOUT) -> LocalResponse:
        number = next(sequence)
        answer = waiting[number] = loop.create_future()
        writer.send(pickle.dumps((_LOCAL, number, request, route)))
        try:
            return await asyncio.wait_for(answer, timeout)
        except TimeoutError:
            return LocalResponse.json(503, {"error": "sidecar: the main process did not answer in time"})
        finally:
            waiting.pop(number, None)

    def on_answers() -> None:
        frames, ended = reader.read()
        for frame in frames:
            _, number, response = pickle.loads(frame)
            future = waiting.get(number)
            if future is not None and not future.done():
                future.set_result(response)
        if ended:  # the main process is gone
            stop.set()

    loop.add_reader(reader.fd, on_answers)
    proxy_settings = settings.proxy
    listeners: list[Any] = []
    events: list[tuple[str, Mapping[str, int]]] = []
    explain = settings.explain
    explain_wait = explain.explain_timeout + LOCAL_TIMEOUT

    def explain_routes(route: Route) -> LocalHandler | None:
        """`:explain` of a model the sidecar explains: answered by the main process's explainer."""
        from sidecar.explain.service import answered_by_sidecar

        if not answered_by_sidecar(explain, route):
            return None

        async def handle(request: LocalRequest) -> LocalResponse:
            return await relay(request, route, explain_wait)
        return handle

    explaining = explain.any_enabled and proxy_settings.upstream_rest is not None
    if proxy_settings.listen_rest is not None:
        rest = RestProxy(proxy_settings, capture=capture, metrics=metrics, tracing=tracing, health=None,
                         local_routes={"/v1/feedback": relay}, route_handlers=explain_routes if explaining else None)
        await rest.start()
        listeners.append(rest)
        events.append(("rest", rest.limit_events))
    if proxy_settings.listen_grpc is not None:
        grpc = GrpcProxy(proxy_settings, capture=capture, metrics=metrics, tracing=tracing, health=None)
        await grpc.start()
        listeners.append(grpc)
        grpc_events = getattr(grpc.engine, "limit_events", None)
        if grpc_events is not None:
            events.append(("grpc", grpc_events))

    def send_metrics() -> None:
        limits = {f"{protocol}/{limit}": count for protocol, source in events for limit, count in source.items()}
        limits[f"fleet/{CAPTURE_BACKLOG}"] = outbox.dropped
        writer.send(pickle.dumps((_METRICS, metrics.counts(), limits), pickle.HIGHEST_PROTOCOL))

    flush_every = capture_settings.capture_flush_interval
    ticks_per_metrics = max(1, round(METRICS_INTERVAL / flush_every))
    try:
        for tick in itertools.count():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), flush_every)
            outbox.flush()
            if stop.is_set():
                break
            if tick % ticks_per_metrics == 0:
                send_metrics()
    finally:
        for listener in reversed(listeners):
            await listener.stop()
        outbox.flush()
        send_metrics()
        loop.remove_reader(reader.fd)
        await _drain(writer)
        writer.close()
        reader.close()


async def _drain(writer: FrameWriter, timeout: float = 5.0) -> None:
    """Let the last frames reach the main process before the pipe closes."""
    deadline = asyncio.get_running_loop().time() + timeout
    while writer.pending_bytes and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
