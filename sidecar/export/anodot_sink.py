"""Anodot export: bucket files on disk and, when a URL and token are set, posts to the Anodot API.

Buckets are aligned to multiples of `anodot_bucket` seconds since the epoch. At each boundary the samples of
the bucket (see `sidecar.export.anodot`) are written to `<out_dir>/anodot-<start>.json` (a JSON array, exactly
the body the API takes; written atomically; merged with an existing file of the same bucket after a restart)
and queued for posting. Posting (`POST {url}/api/v1/metrics?token=...&protocol=anodot20`, at most 1000
samples per request) retries 408/429/5xx and connection errors with backoff a bounded number of times; what
fails stays in the files, for `sidecar anodot-replay`. On stop the partial bucket is written too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
from prometheus_client import CollectorRegistry

from sidecar.export.anodot import BucketAggregator, Reading, Sample, bucket_name, merge, read_registry
from sidecar.export.anodot_history import history_samples
from sidecar.export.metrics import AnodotMetrics
from sidecar.export.settings import ExportSettings
from sidecar.export.sink import backoff

log = logging.getLogger(__name__)
HistorySource = Callable[[], list[tuple[str, dict[str, Any]]]]  # (model, history bucket) closed since the last call

CHUNK = 1000
POST_QUEUE = 16
RETRY_STATUSES = frozenset({408, 429})


class PostResult(NamedTuple):
    posted: int
    failed: int
    problems: list[str]


def metrics_url(base_url: str) -> str:
    return base_url.rstrip("/") + "/api/v1/metrics"


async def post_samples(session: aiohttp.ClientSession, base_url: str, token: str, samples: Sequence[Sample],
                       retries: int, retry_base: float = 0.5) -> PostResult:
    """Post samples in chunks; the token never appears in the problems reported."""
    posted = failed = 0
    problems: list[str] = []
    for offset in range(0, len(samples), CHUNK):
        chunk = list(samples[offset:offset + CHUNK])
        ok, rejected, problem = await _post_chunk(session, base_url, token, chunk, retries, retry_base)
        posted += ok
        failed += rejected
        if problem:
            problems.append(problem)
    return PostResult(posted, failed, problems)


async def _post_chunk(session: aiohttp.ClientSession, base_url: str, token: str, chunk: list[Sample],
                      retries: int, retry_base: float) -> tuple[int, int, str]:
    url = metrics_url(base_url)
    params = {"token": token, "protocol": "anodot20"}
    attempt = 0
    while True:
        try:
            async with session.post(url, params=params, json=chunk) as response:
                status = response.status
                text = await response.text()
            if 200 <= status < 300:
                return _accepted(chunk, text)
            problem = f"{url} answered {status}: {text[:200]}"
            if status < 500 and status not in RETRY_STATUSES:
                return 0, len(chunk), problem
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            problem = f"cannot post to {url}: {exc!r}"
        attempt += 1
        if attempt > retries:
            return 0, len(chunk), f"{problem} (after {attempt} attempts)"
        await asyncio.sleep(backoff(attempt, base=retry_base))


def _accepted(chunk: list[Sample], text: str) -> tuple[int, int, str]:
    """Anodot answers 200 with `{"errors": [{"error", "description", "index"?}]}` for samples it refused."""
    try:
        errors = (json.loads(text).get("errors") or []) if text.strip() else []
    except (ValueError, AttributeError):
        errors = []
    if not errors:
        return len(chunk), 0, ""
    indexes = {item.get("index") for item in errors if isinstance(item, dict)}
    refused = len(chunk) if None in indexes else len(indexes)
    first = errors[0] if isinstance(errors[0], dict) else {"error": errors[0]}
    return len(chunk) - refused, refused, f"Anodot refused {refused} sample(s): {first.get('error')} - " \
                                          f"{first.get('description', '')}"


def write_bucket(path: Path, samples: list[Sample]) -> list[Sample]:
    """Write (or merge into) a bucket file atomically; returns what the file now holds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        try:
            samples = merge(json.loads(path.read_text(encoding="utf-8")), samples)
        except (ValueError, OSError):
            log.warning("anodot: %s is unreadable; overwriting it", path)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(samples, separators=(",", ":")), encoding="utf-8")
    os.replace(temporary, path)
    return samples


class AnodotExporter:
    def __init__(self, settings: ExportSettings, registry: CollectorRegistry, out_dir: Path,
                 clock: Callable[[], float] = time.time, history: HistorySource | None = None,
                 history_features: int = 20) -> None:
        """`history`: the history buckets closed since its last call, exported with the bucket they close in
        (their first `history_features` inputs)."""
        if not settings.anodot_enabled:
            raise ValueError("anodot: anodot_bucket is 0 (off)")
        self.settings = settings
        self.bucket = settings.anodot_bucket
        self.registry = registry
        self.out_dir = out_dir
        self.clock = clock
        self.history = history
        self.history_features = history_features
        self.metrics = AnodotMetrics(registry)
        self.aggregator = BucketAggregator(settings.anodot_properties)
        self._previous: Reading = {}
        self._start = 0.0
        self._timer: asyncio.Task[None] | None = None
        self._poster: asyncio.Task[None] | None = None
        self._posts: asyncio.Queue[tuple[str, list[Sample]]] = asyncio.Queue(POST_QUEUE)
        self._session: aiohttp.ClientSession | None = None

    def bucket_start(self, now: float) -> float:
        return math.floor(now / self.bucket) * self.bucket

    async def start(self) -> None:
        self._previous = read_registry(self.registry)
        self._start = self.bucket_start(self.clock())
        loop = asyncio.get_running_loop()
        if self.settings.anodot_posting:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.anodot_timeout))
            self._poster = loop.create_task(self._post_loop(), name="anodot-poster")
        self._timer = loop.create_task(self._bucket_loop(), name="anodot-buckets")

    async def _bucket_loop(self) -> None:
        while True:
            end = self._start + self.bucket
            delay = end - self.clock()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            await self.close_bucket()

    async def close_bucket(self) -> Path:
        """Read the registry, write the current bucket's file and queue it for posting; starts the next bucket."""
        start = self._start
        current = read_registry(self.registry)
        samples = self.aggregator.samples(self._previous, current, int(start))
        if self.history is not None:
            for model, bucket in self.history():
                samples.extend(history_samples(self.aggregator, model, bucket, self.history_features))
        self._previous = current
        self._start = max(start + self.bucket, self.bucket_start(self.clock()))
        path = self.out_dir / bucket_name(start)
        try:
            await asyncio.to_thread(write_bucket, path, samples)
        except OSError as exc:
            log.warning("anodot: cannot write %s: %s", path, exc)
        else:
            self.metrics.written.inc(len(samples))
        if self._poster is not None and samples:
            try:
                self._posts.put_nowait((path.name, samples))
            except asyncio.QueueFull:
                self.metrics.failed.inc(len(samples))
                log.warning("anodot: posting is behind; %s stays on disk for replay", path.name)
        return path

    async def _post_loop(self) -> None:
        while True:
            name, samples = await self._posts.get()
            try:
                await self._post(name, samples)
            finally:
                self._posts.task_done()

    async def _post(self, name: str, samples: list[Sample]) -> None:
        assert self._session is not None and self.settings.anodot_url and self.settings.anodot_token
        result = await post_samples(self._session, self.settings.anodot_url, self.settings.anodot_token, samples,
                                    self.settings.anodot_retries)
        self.metrics.posted.inc(result.posted)
        self.metrics.failed.inc(result.failed)
        for problem in result.problems:
            log.warning("anodot: %s (bucket %s kept for replay)", problem, name)

    async def stop(self, timeout: float | None = None) -> None:
        """Write the partial bucket, give pending posts up to `timeout` (default shutdown_flush_timeout)."""
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
            self._timer = None
            await self.close_bucket()
        if self._poster is not None:
            budget = self.settings.shutdown_flush_timeout if timeout is None else timeout
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._posts.join(), budget)
            self._poster.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poster
            self._poster = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def pending_posts(self) -> int:
        return self._posts.qsize()


def load_bucket(path: Path) -> list[Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{path.name} does not hold a JSON array of samples")
    return data
