"""Feedback benchmark: POST /v1/feedback throughput and join latency, SQLite store against Redis.

    .venv/bin/python bench/bench_feedback.py [--posts 2000] [--batch 100] [--concurrency 1,16]

Calls `FeedbackService.handle` directly (the REST proxy's cost is measured by bench_rest.py), on the event loop the
sidecar would use (uvloop when installed). Scenarios, each on a fresh service whose predictions were stored first:
- `single`: one instance per POST, `concurrency` POSTs in flight;
- `batched`: `batch` single-instance items per POST (a JSON array);
- `held`: feedback posted before its prediction; the latency runs from `add_predictions` to the joined count.
Latency of `single`/`batched` runs from the call to the response, by which time the metrics are updated.
Baseline in the same run: `parse only` (parse and validate the same bodies, answer, no store), so the table shows
what the store and the join cost on top of reading the JSON. Redis rows need `redis-server` on the PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sidecar.feedback.api import FeedbackService
from sidecar.feedback.parse import parse_body
from sidecar.feedback.settings import FeedbackSettings
from sidecar.messages.results import PredictedInstance, Predictions
from sidecar.proxy.ids import new_prediction_id
from sidecar.proxy.rest.local import LocalRequest, LocalResponse
from sidecar.telemetry.metrics import new_registry

MODEL = "bench"
CLASSES = 5


@dataclass
class Row:
    store: str
    scenario: str
    concurrency: int
    posts: int
    instances: int
    seconds: float
    latencies: list[float]

    @property
    def posts_per_second(self) -> float:
        return self.posts / self.seconds if self.seconds else 0.0

    @property
    def instances_per_second(self) -> float:
        return self.instances / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


def predictions(ids: list[str]) -> Predictions:
    items = [PredictedInstance(pid, 0, MODEL, {"class": index % CLASSES,
                                               "probabilities": [1.0 / CLASSES] * CLASSES})
             for index, pid in enumerate(ids)]
    return Predictions(MODEL, "classification", items)


def single_bodies(ids: list[str]) -> list[bytes]:
    return [json.dumps({"prediction_id": pid, "truth": [index % CLASSES]}).encode() for index, pid in enumerate(ids)]


def batched_bodies(ids: list[str], batch: int) -> list[bytes]:
    bodies = []
    for start in range(0, len(ids), batch):
        chunk = ids[start:start + batch]
        bodies.append(json.dumps([{"prediction_id": pid, "instance": 0, "truth": (start + offset) % CLASSES}
                                  for offset, pid in enumerate(chunk)]).encode())
    return bodies


async def drive(handler: Callable[[LocalRequest], Awaitable[LocalResponse]], bodies: list[bytes],
                concurrency: int) -> tuple[float, list[float]]:
    """POST every body through `handler` with `concurrency` in flight; (seconds, per-post latencies)."""
    latencies: list[float] = []
    queue = iter(bodies)

    async def worker() -> None:
        for body in queue:
            started = time.perf_counter()
            response = await handler(LocalRequest("POST", "/v1/feedback", {}, body))
            latencies.append(time.perf_counter() - started)
            if response.status != 200 or json.loads(response.body).get("pending"):
                raise RuntimeError(f"feedback did not join: {response.status} {response.body!r}")

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - began, latencies


async def parse_only(request: LocalRequest) -> LocalResponse:
    items = parse_body(request.body, 1_000_000)
    body = json.dumps({"joined": sum(item.size for item in items), "duplicate": 0, "pending": 0}).encode()
    return LocalResponse(200, {"Content-Type": "application/json"}, body)


async def fresh_service(store: str, state: Path, ids: list[str]) -> FeedbackService:
    settings = replace(FeedbackSettings(), store=store, store_key_prefix=f"bench{time.monotonic_ns()}:",
                       pending_max=10_000_000, feedback_max_instances=1_000_000)
    service = FeedbackService(settings, state, new_registry(), {})
    await service.start()
    if ids:
        service.add_predictions(predictions(ids))
        await service.flush()
    return service


async def run_store(store: str, label: str, args: argparse.Namespace, work: Path) -> list[Row]:
    rows: list[Row] = []
    for concurrency in args.concurrency:
        ids = [new_prediction_id() for _ in range(args.posts)]
        if store == "parse":
            seconds, latencies = await drive(parse_only, single_bodies(ids), concurrency)
        else:
            service = await fresh_service(store, work / f"{label}-single-{concurrency}", ids)
            seconds, latencies = await drive(service.handle, single_bodies(ids), concurrency)
            await service.stop()
        rows.append(Row(label, "single", concurrency, len(ids), len(ids), seconds, latencies))

    ids = [new_prediction_id() for _ in range(args.posts * 5)]
    bodies = batched_bodies(ids, args.batch)
    if store == "parse":
        seconds, latencies = await drive(parse_only, bodies, 4)
    else:
        service = await fresh_service(store, work / f"{label}-batched", ids)
        seconds, latencies = await drive(service.handle, bodies, 4)
        await service.stop()
    rows.append(Row(label, f"batched x{args.batch}", 4, len(bodies), len(ids), seconds, latencies))

    if store != "parse":
        rows.append(await held(store, label, args, work))
    return rows


async def held(store: str, label: str, args: argparse.Namespace, work: Path) -> Row:
    """Feedback first, prediction later: from `add_predictions` to the joined count, one prediction at a time."""
    service = await fresh_service(store, work / f"{label}-held", [])
    count = max(50, args.posts // 10)
    ids = [new_prediction_id() for _ in range(count)]
    for body in single_bodies(ids):
        await service.handle(LocalRequest("POST", "/v1/feedback", {}, body))
    latencies: list[float] = []
    began = time.perf_counter()
    for index, pid in enumerate(ids, start=1):
        started = time.perf_counter()
        service.add_predictions(predictions([pid]))
        while service.counts.outcomes.get((MODEL, "joined"), 0) < index:
            await asyncio.sleep(0)
        latencies.append(time.perf_counter() - started)
    seconds = time.perf_counter() - began
    await service.stop()
    return Row(label, "held, then joined", 1, count, count, seconds, latencies)


@contextlib.contextmanager
def redis_server(work: Path) -> Iterator[str | None]:
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                "no", "--dir", str(work)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(port=port)
        for _ in range(100):
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


def table(rows: list[Row]) -> str:
    baseline = {(row.scenario, row.concurrency): row for row in rows if row.store == "parse only"}
    lines = ["| store | scenario | in flight | posts/s | instances/s | p50 ms | p99 ms | posts/s vs parse only |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        base = baseline.get((row.scenario, row.concurrency))
        ratio = f"{row.posts_per_second / base.posts_per_second:.2f}" if base and base.posts_per_second else "-"
        lines.append(f"| {row.store} | {row.scenario} | {row.concurrency} | {row.posts_per_second:,.0f} | "
                     f"{row.instances_per_second:,.0f} | {row.percentile(0.5):.3f} | {row.percentile(0.99):.3f} | "
                     f"{ratio} |")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        rows += await run_store("parse", "parse only", args, work)
        rows += await run_store("sqlite", "sqlite", args, work)
        with redis_server(work) as url:
            if url is None:
                print("redis-server not found: Redis rows skipped (apt-get install -y redis-server)", file=sys.stderr)
            else:
                rows += await run_store(url, "redis", args, work)
    print(table(rows))
    sqlite = {(r.scenario, r.concurrency): r for r in rows if r.store == "sqlite"}
    for row in rows:
        other = sqlite.get((row.scenario, row.concurrency))
        if row.store == "redis" and other is not None and other.posts_per_second:
            print(f"redis/sqlite throughput, {row.scenario} x{row.concurrency}: "
                  f"{row.posts_per_second / other.posts_per_second:.2f}; p50 "
                  f"{row.percentile(0.5) / max(other.percentile(0.5), 1e-9):.2f}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=2000, help="single-instance posts per scenario")
    parser.add_argument("--batch", type=int, default=100, help="items per batched post")
    parser.add_argument("--concurrency", type=lambda text: [int(part) for part in text.split(",")], default=[1, 16],
                        help="posts in flight for the single scenario, comma-separated")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(arguments))
    else:
        uvloop.run(main(arguments))
