"""The explain endpoint in the main process: parse, admit, hand the work to an explainer process, answer.

No numpy and no shap here (`tests/unit/explain/test_imports.py`): the explanation runs in a process pool of
`explain_concurrency` spawned processes (`kernel.explain`), each with one connection to the model server, so
explanations never share the proxy's upstream pool or its event loop's CPU. At most `explain_queue` requests wait
for a process; beyond, 503. Every failure is a JSON `{"error": ...}` with its status, answered to this request only;
predictions never pass through here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram

from sidecar.explain.kernel import ExplainError, Job, explain, lower_priority
from sidecar.explain.settings import ExplainSettings
from sidecar.messages.records import API_TFSERVING
from sidecar.proxy.rest.local import LocalHandler, LocalRequest, LocalResponse
from sidecar.proxy.rest.routes import Route
from sidecar.telemetry.metrics import ModelLabels

log = logging.getLogger(__name__)
T = TypeVar("T")
EXPLAIN_METHOD = "explain"


class ExplainService:
    def __init__(self, settings: ExplainSettings, upstream: tuple[str, int], state_dir: Path,
                 registry: CollectorRegistry, max_body_bytes: int, model_label_cap: int = 100,
                 analysis_name: Callable[[str, str], str] | None = None) -> None:
        self.settings = settings
        # (model, version or label) -> the analysis name whose reference is the background (`model@version` when
        # versions are analysed apart)
        self.analysis_name = analysis_name or (lambda model, version: model)
        self._fallbacks_said: set[str] = set()
        self._backgrounds: dict[str, dict[str, Any]] = {}  # analysis name -> the latest answer's background
        self.upstream = upstream
        self.state_dir = state_dir
        self.max_body_bytes = max_body_bytes
        self.models = ModelLabels(model_label_cap)
        self._pool: ProcessPoolExecutor | None = None
        self._admitted = 0
        self.requests = Counter("sidecar_explain_requests", "Explain requests the sidecar answered, by outcome (ok, "
                                "or the HTTP status of the error).", ["model", "outcome"], registry=registry)
        self.fallbacks = Counter("sidecar_explain_background_fallbacks", "Explanations of a version analysed apart "
                                 "(model@version) measured against the model's reference, the version having none "
                                 "yet.", ["model"], registry=registry)
        self.model_calls = Counter("sidecar_explain_model_calls", "Predict calls explanations made to the model.",
                                   ["model"], registry=registry)
        self.duration = Histogram("sidecar_explain_duration_seconds", "Time to answer an explain request.",
                                  ["model"], registry=registry,
                                  buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0))

    def start(self) -> None:
        self._pool = self._new_pool()
        if not self.settings.any_enabled:
            return
        which = "every model" if self.settings.explain_enabled else ", ".join(self.settings.explain_models)
        log.info("explain: the sidecar answers :explain for %s (KernelSHAP, %d explainer process(es) at %s CPU "
                 "priority, at most %d predict calls per explanation)", which, self.settings.explain_concurrency,
                 self.settings.explain_priority,
                 self.settings.explain_max_model_calls)

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.settings.explain_concurrency, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=lower_priority, initargs=(self.settings.explain_priority,))

    async def stop(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)

    def handler_for(self, route: Route) -> LocalHandler | None:
        """The handler of an `:explain` route the sidecar answers itself, or None (forwarded as it is)."""
        if not answered_by_sidecar(self.settings, route):
            return None
        model, version, version_label = route.model, route.version, route.label

        async def handle(request: LocalRequest) -> LocalResponse:
            return await self.handle(model, version, request, version_label)
        return handle

    async def handle(self, model: str, version: str, request: LocalRequest, version_label: str = "") -> LocalResponse:
        """Explain `request` for `model` (at a version number, or a version label of TF Serving, when given)."""
        started = time.monotonic()
        label = self.models(model)
        try:
            answer = await self._explain(model, version, version_label, request)
        except ExplainError as exc:
            self.requests.labels(label, str(exc.status)).inc()
            return LocalResponse.json(exc.status, {"error": str(exc)})
        finally:
            self.duration.labels(label).observe(time.monotonic() - started)
        self.requests.labels(label, "ok").inc()
        self.model_calls.labels(label).inc(answer.get("model_calls", 0))
        self._said_background(answer.get("background", {}))
        return LocalResponse.json(200, answer)

    def _said_background(self, background: dict[str, Any]) -> None:
        """Keep the background the latest answer used (for `/v1/monitor`); count an explanation measured against the
        model's reference instead of its version's and log that once."""
        missing = background.get("fallback_from")
        name = missing or background.get("reference")
        if name:
            self._backgrounds[name] = {"reference": background.get("reference"), "fallback": background.get("fallback"),
                                       "at": time.time()}
        if not missing:
            return
        self.fallbacks.labels(self.models(missing)).inc()
        if missing not in self._fallbacks_said:
            self._fallbacks_said.add(missing)
            log.warning("explain: %s", background.get("fallback"))

    def snapshot(self, name: str) -> dict[str, Any] | None:
        """What `/v1/monitor/{name}` shows of the explanations: the reference the latest one was measured against,
        and why when it is not the analysis name's own (`fallback`); None before any."""
        background = self._backgrounds.get(name)
        return {"background": dict(background)} if background is not None else None

    async def _explain(self, model: str, version: str, version_label: str, request: LocalRequest) -> dict[str, Any]:
        settings = self.settings
        body = self._body(request)
        if self._pool is None:
            raise ExplainError(503, "the explainer is not running")
        if self._admitted >= settings.explain_concurrency + settings.explain_queue:
            raise ExplainError(503, f"too many explanations in progress ({self._admitted}); try again later")
        name = self.analysis_name(model, version or version_label)
        job = Job(name, predict_path(model, version, version_label), body, self.upstream, str(self.state_dir),
                  settings.explain_background, settings.explain_samples, settings.explain_max_model_calls,
                  settings.explain_batch_rows, settings.explain_timeout, settings.explain_model_share,
                  fallback=model if name != model else "")
        self._admitted += 1
        try:
            return await self.run(explain, job)
        finally:
            self._admitted -= 1

    async def run(self, function: Callable[[T], dict[str, Any]], job: T) -> dict[str, Any]:
        """`function(job)` in an explainer process, within explain_timeout; every failure is an `ExplainError`."""
        if self._pool is None:
            raise ExplainError(503, "the explainer is not running")
        model = getattr(job, "model", "?")
        future = asyncio.get_running_loop().run_in_executor(self._pool, function, job)
        try:
            return await asyncio.wait_for(future, self.settings.explain_timeout)
        except TimeoutError:
            raise ExplainError(504, f"the explanation took longer than {self.settings.explain_timeout:g}s "
                                    "(explain_timeout)") from None
        except ExplainError:
            raise
        except BrokenProcessPool:  # an explainer process died (out of memory?): the next request gets new ones
            log.warning("an explainer process died while explaining model %s; starting new ones", model)
            broken, self._pool = self._pool, self._new_pool()
            if broken is not None:
                broken.shutdown(wait=False, cancel_futures=True)
            raise ExplainError(500, "the explainer process died; try again") from None
        except Exception as exc:  # a broken explainer process, or a bug: this request fails, nothing else
            log.exception("explaining model %s failed", model)
            raise ExplainError(500, f"the explanation failed: {type(exc).__name__}: {exc}"[:300]) from None

    def _body(self, request: LocalRequest) -> dict[str, Any]:
        """The predict body, checked as far as it can be without numpy (its tensors are read in the explainer
        process); raises a 4xx `ExplainError`."""
        if request.method != "POST":
            raise ExplainError(405, "use POST for :explain")
        if len(request.body) > self.max_body_bytes:
            raise ExplainError(413, f"body larger than {self.max_body_bytes} bytes")
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ExplainError(400, "the body is not JSON") from None
        if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
            raise ExplainError(400, "expected a predict body: {\"instances\": [...]} (row format) or {\"inputs\": "
                                    "...} (columnar), exactly one of them")
        count = _instance_count(body)
        if count == 0:
            raise ExplainError(400, "the body holds no instances")
        if count > self.settings.explain_max_instances:
            raise ExplainError(400, f"{count} instances; one explain request may ask for at most "
                                    f"{self.settings.explain_max_instances} (explain_max_instances)")
        return body


def answered_by_sidecar(settings: ExplainSettings, route: Route) -> bool:
    """Whether the sidecar answers this route itself: `:explain` of a model it explains (every proxy process asks
    the same question, `sidecar.fleet`)."""
    return route.method == EXPLAIN_METHOD and route.api == API_TFSERVING and settings.enabled_for(route.model)


def _instance_count(body: dict[str, Any]) -> int:
    """Instances of a predict body: the rows of `instances`, or the first dimension of (each) `inputs` tensor."""
    if "instances" in body:
        rows = body["instances"]
        return len(rows) if isinstance(rows, list) else 0
    tensors = body["inputs"]
    first = next(iter(tensors.values()), None) if isinstance(tensors, dict) else tensors
    return len(first) if isinstance(first, list) else 0


def predict_path(model: str, version: str, label: str = "") -> str:
    """The TF Serving REST predict route of a model at a version number or a version label, when given (a `version`
    that is not a number is taken for a label: analysis names hold either)."""
    if label:
        return f"/v1/models/{model}/labels/{label}:predict"
    if not version:
        return f"/v1/models/{model}:predict"
    where = "versions" if version.isdigit() else "labels"
    return f"/v1/models/{model}/{where}/{version}:predict"
