"""Composition root: builds every part from settings, starts them in dependency order, stops them in reverse.

Data flows one way: proxies -> capture rings (tee) -> drainers -> analysis workers / payload log -> telemetry;
feedback joins ground truth to the predictions the analysis stored. Every part started is pushed on one
`AsyncExitStack`, so `stop()` (or a failed start) unwinds exactly what was started, last first; a part that fails
to stop is logged and the others still stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from sidecar.capture.ring import CaptureRing, CountingConsumer, Drainer, Tee
from sidecar.config import Settings
from sidecar.messages.records import CaptureRecord
from sidecar.proxy.listener import Listener
from sidecar.telemetry.admin import AdminServer, build_admin_app
from sidecar.telemetry.drilldown import DrillDown
from sidecar.telemetry.health import Probe, UpstreamHealth, UpstreamMetrics, h2_probe, tcp_http_probe
from sidecar.telemetry.metrics import (
    CaptureMetrics,
    LimitMetrics,
    RequestMetrics,
    add_process_metrics,
    new_registry,
)
from sidecar.telemetry.tracing import Tracing, disabled

if TYPE_CHECKING:  # each part's module is imported only when the settings ask for the part
    from sidecar.analysis.pool import AnalysisPool
    from sidecar.explain.importance import FeatureImportance, ShadowRoute
    from sidecar.explain.service import ExplainService
    from sidecar.export.payload_log import PayloadLog
    from sidecar.feedback.api import FeedbackService
    from sidecar.fleet import ProxyFleet
    from sidecar.history.recorder import HistoryRecorder
    from sidecar.history.store import HistoryStore
    from sidecar.shadow.sender import ShadowSender

log = logging.getLogger(__name__)
Stopper = Callable[[], Awaitable[object]]


class StartupError(Exception):
    """A part could not start: `str()` is one line naming the setting, its value and the cause."""


@contextlib.asynccontextmanager
async def _starting(setting: str, value: object) -> AsyncIterator[None]:
    """Turn a part's start-up failure (a taken port, an unusable directory, an unreachable store) into one line."""
    try:
        yield
    except StartupError:
        raise
    except (OSError, ConnectionError, RuntimeError, ValueError) as exc:
        cause = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise StartupError(f"{setting} {value}: {cause}") from exc


class Sidecar:
    """The running sidecar. `start()` then `stop()`; ports actually bound are on `rest_port`, `grpc_port`,
    `admin_port` (useful when settings ask for port 0)."""

    def __init__(self, settings: Settings, *, tracing: Tracing | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.tracing = tracing or disabled()
        self.registry = registry or add_process_metrics(new_registry())
        self.request_metrics = RequestMetrics(settings.telemetry.model_label_cap)
        self.registry.register(self.request_metrics)
        self.tee = Tee()
        self.pool: AnalysisPool | None = None
        self.feedback: FeedbackService | None = None
        self.payload_log: PayloadLog | None = None
        self.shadow: ShadowSender | None = None
        self.history_store: HistoryStore | None = None
        self.history: HistoryRecorder | None = None
        self.health: UpstreamHealth | None = None
        self.rest: Listener | None = None
        self.grpc: Listener | None = None
        self.admin: AdminServer | None = None
        self.fleet: ProxyFleet | None = None
        self.explainer: ExplainService | None = None
        self.importance: FeatureImportance | None = None
        self.drilldown = DrillDown(None, None)
        self.limit_metrics = LimitMetrics()
        self.registry.register(self.limit_metrics)
        self._stack = contextlib.AsyncExitStack()

    @property
    def rest_port(self) -> int | None:
        return self.rest.port if self.rest is not None else None

    @property
    def grpc_port(self) -> int | None:
        return self.grpc.port if self.grpc is not None else None

    @property
    def admin_port(self) -> int | None:
        return self.admin.port if self.admin is not None else None

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    def _on_stop(self, name: str, stopper: Stopper) -> None:
        self._stack.push_async_callback(_logged_stop, name, stopper)

    async def _start(self) -> None:
        settings = self.settings
        state_dir = settings.state_path
        async with _starting("--state-dir", state_dir):
            _check_writable(state_dir)
        self._on_stop("tracing", self._shutdown_tracing)

        if settings.capture.capture_enabled and settings.analysis.analysis_enabled:
            await self._start_history(state_dir)  # stopped after the Anodot export, which reads it
        await self._start_anodot(state_dir)  # stopped last but the history, so its final bucket has the final counts
        if settings.proxy.listen_rest is not None:
            await self._start_feedback(state_dir)
        if settings.capture.capture_enabled:
            await self._start_analysis(state_dir)
            await self._start_payload_log()
        await self._start_shadow()
        await self._start_health()
        await self._start_proxies()
        await self._start_admin()

    async def _shutdown_tracing(self) -> None:
        self.tracing.shutdown()

    async def _start_history(self, state_dir: Path) -> None:
        from sidecar.history.recorder import HistoryRecorder
        from sidecar.history.store import FILE_NAME, HistoryStore

        analysis = self.settings.analysis
        store = self.history_store = HistoryStore(state_dir / FILE_NAME, analysis.history_retention,
                                                  analysis.history_max_rows)
        async with _starting("--state-dir", state_dir):
            await store.start()
        self._on_stop("history", store.stop)
        self.history = HistoryRecorder(store, analysis.history_max_levels,
                                       export=self.settings.export.anodot_bucket > 0)

    async def _start_feedback(self, state_dir: Path) -> None:
        from sidecar.feedback.api import FeedbackService

        feedback = self.feedback = FeedbackService(
            self.settings.feedback, state_dir, self.registry, self.settings.analysis.task_overrides(),
            model_label_cap=self.settings.telemetry.model_label_cap, shadows=self.settings.shadow.names())
        async with _starting("--store", self.settings.feedback.store):
            await feedback.start()
        self._on_stop("feedback", feedback.stop)
        if self.history is not None:
            feedback.set_truth_sink(self.history.add_truths)

    async def _start_analysis(self, state_dir: Path) -> None:
        capture = self.settings.capture
        models = self.request_metrics.models
        if self.settings.analysis.analysis_enabled:
            from sidecar.analysis.pool import AnalysisPool

            feedback = self.feedback
            pool = self.pool = AnalysisPool(self.settings.analysis, state_dir, self.registry,
                                            on_predictions=feedback.add_stored if feedback is not None else None,
                                            model_label_cap=self.settings.telemetry.model_label_cap, capture=capture,
                                            prediction_rules=feedback.rules if feedback is not None else None,
                                            upstreams=(self.settings.proxy.upstream_rest,
                                                       self.settings.proxy.upstream_grpc),
                                            on_history=self.history.add_bucket if self.history is not None else None,
                                            prediction_writer=feedback.store.row_writer() if feedback is not None
                                            else None)
            await pool.start()
            self._on_stop("analysis", pool.stop)
            if feedback is not None:
                feedback.set_label_sink(pool.send_labels)
            self.registry.register(CaptureMetrics(pool, lambda: pool.drained, models))
            self.tee.add(pool)
            return
        ring = CaptureRing(capture.capture_max_records, capture.capture_max_bytes, capture.capture_batch_size)
        drainer = Drainer(ring, CountingConsumer(), capture.capture_flush_interval)  # the capture metrics still count
        drainer.start()
        self._on_stop("capture drainer", drainer.stop)
        self.registry.register(CaptureMetrics(ring, lambda: drainer.drained, models))
        self.tee.add(ring)

    async def _start_payload_log(self) -> None:
        export = self.settings.export
        if not (export.payload_log_file or export.payload_log_url):
            return
        from sidecar.export.payload_log import PayloadLog, payload_log_ring

        payload_log = self.payload_log = PayloadLog(export, self.registry)
        await payload_log.start()
        self._on_stop("payload log", lambda: payload_log.stop(export.shutdown_flush_timeout))
        ring = payload_log_ring(export)
        drainer = Drainer(ring, payload_log, self.settings.capture.capture_flush_interval)
        drainer.start()
        self._on_stop("payload log drainer", drainer.stop)
        self.tee.add(ring)
        if self.feedback is not None:
            self.feedback.set_event_sink(payload_log.feedback_event)

    async def _start_shadow(self) -> None:
        """Mirror inference calls to the shadows when any is configured: one more capture target; its paired
        answers go to the analysis (when it runs)."""
        if not self.settings.shadow.enabled:
            return
        from sidecar.shadow.sender import ShadowSender

        shadow = self.shadow = ShadowSender(self.settings.shadow, self.registry,
                                            self.pool.append if self.pool is not None else None,
                                            model_label_cap=self.settings.telemetry.model_label_cap,
                                            max_message_bytes=self.settings.proxy.grpc_max_message_bytes,
                                            max_body_bytes=self.settings.proxy.max_body_bytes)
        await shadow.start()
        self._on_stop("shadow", shadow.stop)
        self.tee.add(shadow)

    async def _start_anodot(self, state_dir: Path) -> None:
        export = self.settings.export
        if export.anodot_bucket <= 0:
            return
        from sidecar.export.anodot_sink import AnodotExporter

        out_dir = Path(export.anodot_dir) if export.anodot_dir else state_dir / "anodot"
        exporter = AnodotExporter(export, self.registry, out_dir,
                                  history=self.history.take_exported if self.history is not None else None,
                                  history_features=self.settings.analysis.max_feature_labels)
        await exporter.start()
        self._on_stop("anodot", exporter.stop)

    async def _start_health(self) -> None:
        proxy = self.settings.proxy
        probes: dict[str, Probe] = {}
        if proxy.listen_rest is not None and proxy.upstream_rest is not None:
            host, port = proxy.upstream_rest
            probes["rest"] = lambda: tcp_http_probe(host, port)
        if proxy.listen_grpc is not None and proxy.upstream_grpc is not None:
            grpc_host, grpc_port = proxy.upstream_grpc
            probes["grpc"] = lambda: h2_probe(grpc_host, grpc_port)
        health = self.health = UpstreamHealth(probes, self.settings.telemetry.readiness_interval)
        await health.start()
        self._on_stop("health", health.stop)
        self.registry.register(UpstreamMetrics(health))

    async def _start_proxies(self) -> None:
        proxy = self.settings.proxy
        capture = self.tee.append if self.tee.rings else None
        explainer = await self._start_explainer()
        if proxy.listen_rest is not None:
            from sidecar.proxy.rest.proxy import RestProxy

            local_routes = {"/v1/feedback": self.feedback.handle} if self.feedback is not None else None
            rest = self.rest = RestProxy(proxy, capture=capture, metrics=self.request_metrics, tracing=self.tracing,
                                         health=self.health, local_routes=local_routes,
                                         route_handlers=explainer.handler_for if explainer is not None else None)
            async with _starting("--listen-rest", _address(proxy.listen_rest)):
                await rest.start()
            self._on_stop("rest proxy", rest.stop)
            self.limit_metrics.add("rest", rest.limit_events)
        if proxy.listen_grpc is not None:
            from sidecar.proxy.grpc.engine import GrpcProxy

            grpc = self.grpc = GrpcProxy(proxy, capture=capture, metrics=self.request_metrics, tracing=self.tracing,
                                         health=self.health)
            async with _starting("--listen-grpc", _address(proxy.listen_grpc)):
                await grpc.start()
            self._on_stop("grpc proxy", grpc.stop)
            events = getattr(grpc.engine, "limit_events", None)  # the h2 relay counts its limits; grpc.aio has none
            if events is not None:
                self.limit_metrics.add("grpc", events)
        if proxy.proxy_processes > 1:
            await self._start_fleet(capture)

    async def _start_explainer(self) -> ExplainService | None:
        """The explain endpoint's service, when any model is to be explained by the sidecar."""
        settings = self.settings
        importance = self._importance_wanted()
        explain = settings.explain.any_enabled and settings.proxy.listen_rest is not None
        if not (explain or importance) or settings.proxy.upstream_rest is None:
            return None
        from sidecar.explain.service import ExplainService

        explainer = self.explainer = ExplainService(settings.explain, settings.proxy.upstream_rest,
                                                    settings.state_path, self.registry,
                                                    settings.proxy.max_body_bytes,
                                                    settings.telemetry.model_label_cap,
                                                    settings.analysis.analysis_name)
        explainer.start()
        self._on_stop("explainer", explainer.stop)
        if importance and self.pool is not None:
            from sidecar.explain.importance import FeatureImportance

            found = self.importance = FeatureImportance(settings.analysis, explainer, self.pool.models,
                                                        self.registry, settings.telemetry.model_label_cap,
                                                        self._shadow_route)
            found.start()
            self._on_stop("feature importance", found.stop)
        return explainer if explain else None

    def _shadow_route(self, model: str) -> ShadowRoute | None:
        """Where `model`'s shadow answers over REST, as the feature importance asks it."""
        target = self.settings.shadow.target(model)
        if target is None:
            return None
        from sidecar.explain.importance import ShadowRoute

        return ShadowRoute(target.name, target.rest, target.model or model, target.version)

    def _importance_wanted(self) -> bool:
        """Whether the feature importance can run as asked; when it cannot, says why once."""
        settings = self.settings
        if not settings.analysis.importance_enabled:
            return False
        missing = ("analysis_enabled is off (the workers keep the recent rows)"
                   if not settings.analysis.analysis_enabled or self.pool is None else
                   "no REST upstream (the model is called through its REST predict route)"
                   if settings.proxy.upstream_rest is None else None)
        if missing is not None:
            log.warning("feature importance: importance_enabled is on but it cannot run: %s", missing)
            return False
        return True

    async def _start_fleet(self, capture: Callable[[CaptureRecord], None] | None) -> None:
        """The other proxy processes, told the ports this one bound (settings may ask for port 0)."""
        from sidecar.fleet import ProxyFleet

        proxy = self.settings.proxy
        bound = replace(
            proxy,
            listen_rest=(proxy.listen_rest[0], self.rest_port or 0) if proxy.listen_rest is not None else None,
            listen_grpc=(proxy.listen_grpc[0], self.grpc_port or 0) if proxy.listen_grpc is not None else None)
        local_routes = {"/v1/feedback": self.feedback.handle} if self.feedback is not None else None
        fleet = self.fleet = ProxyFleet(replace(self.settings, proxy=bound), capture, self.request_metrics,
                                        self.limit_metrics, local_routes,
                                        self.explainer.handler_for if self.explainer is not None else None)
        async with _starting("--proxy-processes", proxy.proxy_processes):
            await fleet.start()
        self._on_stop("proxy processes", fleet.stop)

    async def _start_admin(self) -> None:
        self.drilldown = DrillDown(self.pool, self.feedback, self.shadow, self.importance, self.explainer)
        listen = self.settings.telemetry.listen_admin
        if listen is None:
            return
        history = None
        if self.history_store is not None:
            from sidecar.history.api import HistoryApi

            history = HistoryApi(self.history_store, self.settings.analysis.history_bucket(),
                                 self.drilldown.models).answer
        predictions = self.feedback.describe if self.feedback is not None and self.pool is not None else None
        app = build_admin_app(self.registry, self.health, self.drilldown.model, self.drilldown.models,
                              self.pool.reset_reference if self.pool is not None else None,
                              self.settings.telemetry.admin_token, history=history, prediction=predictions)
        admin = self.admin = AdminServer(app, *listen)
        async with _starting("--listen-admin", _address(listen)):
            await admin.start()
        self._on_stop("admin", admin.stop)

    async def stop(self) -> None:
        """Stop everything started so far, in reverse order; one part failing does not stop the rest."""
        started = asyncio.get_running_loop().time()
        log.info("shutting down")
        await self._stack.aclose()
        log.info("stopped in %.1f s", asyncio.get_running_loop().time() - started)


def _address(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


def _check_writable(directory: Path) -> None:
    """Create the state directory and prove a file can be written there (the sidecar may run as another user)."""
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".write-check-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


async def _logged_stop(name: str, stopper: Stopper) -> None:
    try:
        await stopper()
    except Exception:
        log.exception("stopping %s failed", name)
    else:
        log.debug("%s stopped", name)


async def run_until_signalled(sidecar: Sidecar, stop_event: asyncio.Event,
                              on_started: Callable[[], None] | None = None) -> None:
    await sidecar.start()
    if on_started is not None:
        on_started()
    try:
        await stop_event.wait()
    finally:
        with contextlib.suppress(Exception):
            await sidecar.stop()
