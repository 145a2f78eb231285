"""Admin listener: /metrics (Prometheus text, OpenMetrics on request), /healthz, /readyz, the monitor drill-down,
the history (`/v1/monitor/{model}/history`), the prediction lookup (`/v1/predictions/{id}`) and the monitoring page
(`/`)."""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from sidecar.telemetry.health import UpstreamHealth
from sidecar.telemetry.monitoring_page import add_page_routes, is_page_path

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MonitorLookup = Callable[[str, bool], dict[str, Any] | None]
MonitorIndex = Callable[[], list[str]]
ReferenceReset = Callable[[str], bool | None]  # None: no such model
Answer = tuple[int, dict[str, Any]]  # HTTP status and JSON body
HistoryLookup = Callable[[str, Mapping[str, str]], Awaitable[Answer]]  # (model, query parameters)
PredictionLookup = Callable[[str], Awaitable[Answer]]  # (prediction id)
OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # probes answer without the token
_TRUE = {"1", "true", "yes"}
# /metrics is encoded on the proxying event loop: scrapes within this many seconds (open monitoring pages, several
# Prometheus servers) share one encoding.
METRICS_CACHE_SECONDS = 1.0


def build_admin_app(registry: CollectorRegistry, health: UpstreamHealth | None,
                    monitor: MonitorLookup | None = None, monitor_index: MonitorIndex | None = None,
                    reset_reference: ReferenceReset | None = None, token: str | None = None,
                    history: HistoryLookup | None = None,
                    prediction: PredictionLookup | None = None) -> web.Application:
    """With `token`, every route but the probes and the monitoring page's static files needs `Authorization: Bearer
    <token>` (401 otherwise); without it, the routes that change state (`DELETE /v1/monitor/{model}/reference`) are
    refused (403). `monitor(model, extremes)` answers the drill-down; `?extremes=true` keeps single raw values
    (feature min and max). `history` answers `GET /v1/monitor/{model}/history` and `prediction`
    `GET /v1/predictions/{id}` (404 while off)."""

    @web.middleware
    async def authorize(request: web.Request, handler: Handler) -> web.StreamResponse:
        open_path = request.path in OPEN_PATHS or is_page_path(request.path)
        if token is not None and not open_path and not bearer_matches(request.headers.get("Authorization", ""), token):
            return web.json_response({"error": "missing or wrong bearer token"}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="sidecar-admin"'})
        return await handler(request)

    @web.middleware
    async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        """aiohttp's own errors (no such route, wrong method) as JSON, like every other answer here."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400 or exc.content_type == "application/json":
                raise
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return web.json_response({"error": f"{exc.reason}: {request.method} {request.path}"}, status=exc.status,
                                     headers=allow)

    encoded: dict[str, tuple[float, bytes]] = {}  # content type -> (when, body): see METRICS_CACHE_SECONDS

    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        now = time.monotonic()
        cached = encoded.get(content_type)
        if cached is None or now - cached[0] >= METRICS_CACHE_SECONDS:
            cached = encoded[content_type] = (now, encoder(registry))
        return web.Response(body=cached[1], headers={"Content-Type": content_type})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(_: web.Request) -> web.Response:
        if health is None or health.ready:
            return web.json_response({"status": "ready", "upstreams": health.state if health else {}})
        return web.json_response({"status": "not ready", "upstreams": health.state}, status=503)

    async def monitor_list(_: web.Request) -> web.Response:
        return web.json_response({"models": monitor_index() if monitor_index else []})

    async def monitor_model(request: web.Request) -> web.Response:
        model = request.match_info["model"]
        extremes = request.query.get("extremes", "").lower() in _TRUE
        snapshot = monitor(model, extremes) if monitor else None
        if snapshot is None:
            return web.json_response({"error": f"no monitoring data for model {model!r}"}, status=404)
        return web.Response(text=json.dumps(json_safe(snapshot), allow_nan=False), content_type="application/json")

    async def reference_reset(request: web.Request) -> web.Response:
        model = request.match_info["model"]
        if token is None or reset_reference is None:
            return web.json_response({"error": "reference resets are off: set admin_token (SIDECAR_ADMIN_TOKEN) "
                                      "to enable them"}, status=403)
        done = reset_reference(model)
        if done is None:
            return web.json_response({"error": f"no model {model!r} has been analysed"}, status=404)
        if not done:
            return web.json_response({"error": "the analysis worker of this model is not running; try again"},
                                     status=503)
        return web.json_response({"model": model, "reference": "reset: collecting a new one from traffic"},
                                 status=202)

    async def monitor_history(request: web.Request) -> web.Response:
        if history is None:
            return web.json_response({"error": "history is off (the analysis is off)"}, status=404)
        status, body = await history(request.match_info["model"], request.query)
        return _json(status, body)

    async def prediction_lookup(request: web.Request) -> web.Response:
        if prediction is None:
            return web.json_response({"error": "prediction lookup is off (no prediction store: feedback or the "
                                      "analysis is off)"}, status=404)
        status, body = await prediction(request.match_info["prediction_id"])
        return _json(status, body)

    app = web.Application(middlewares=[json_errors, authorize])
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/v1/monitor", monitor_list)
    app.router.add_get("/v1/monitor/{model}", monitor_model)
    app.router.add_delete("/v1/monitor/{model}/reference", reference_reset)
    app.router.add_get("/v1/monitor/{model}/history", monitor_history)
    app.router.add_get("/v1/predictions/{prediction_id}", prediction_lookup)
    add_page_routes(app)
    return app


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(text=json.dumps(json_safe(body), allow_nan=False), status=status,
                        content_type="application/json")


def bearer_matches(header: str, token: str) -> bool:
    scheme, _, credentials = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), token.encode())


def json_safe(value: Any) -> Any:
    """Recursively make numpy scalars/arrays and non-finite floats JSON-safe (NaN and infinities become null)."""
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [json_safe(item) for item in value]
    if hasattr(value, "tolist"):
        return json_safe(value.tolist())
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


class AdminServer:
    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.requested_port)
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("admin listener on %s:%d (monitoring page /, /metrics, /healthz, /readyz, /v1/monitor, "
                 "/v1/predictions)", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
