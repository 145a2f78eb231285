"""What an explanation burst costs clients' predictions: p99 of `:predict` through `sidecar run` with and without
`:explain` calls running (issue 22 goal: at most 1.1x).

Starts the numpy testbed (`sidecar testbed --backend numpy`) as the model server and the real `sidecar run` (REST
only, analysis on so the regressor's reference is saved, `--explain-models regressor`) in front of it, fills the
reference, then measures in alternating rounds (medians reported): `quiet` (wrk sends 1-instance regressor
predictions) and `burst` (the same wrk load while `--explainers` client loops each send one `:explain` call of
`--explain-instances` instances after another). wrk's connections pause `--pace-ms` between requests (a load below
the proxy's capacity, where p99 shows what the explanations' CPU and model calls cost a prediction). Prints
p50/p99/throughput per mode, the p99 ratio burst/quiet, the explanations' own latency (p50/p99, from the client)
and how they ended (from /metrics).

Usage: python bench/bench_explain.py [--duration 8] [--rounds 3] [--connections 4] [--pace-ms 2] [--explainers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_rest  # noqa: E402
from machine import idle_note  # noqa: E402

MODEL = "regressor"
PREDICT = f"/v1/models/{MODEL}:predict"
EXPLAIN = f"/v1/models/{MODEL}:explain"
MODES = ("quiet", "burst")


def rows(count: int, seed: int) -> list[list[float]]:
    """Regressor inputs (4 standard-normal features), without numpy in this process."""
    import random

    rng = random.Random(seed)
    return [[round(rng.gauss(0.0, 1.0), 4) for _ in range(4)] for _ in range(count)]


@contextlib.contextmanager
def testbed(directory: Path) -> Iterator[int]:
    """`sidecar testbed --backend numpy` on free ports; yields its REST port."""
    log_path = directory / "testbed.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "sidecar", "testbed", "--backend", "numpy", "--rest-port",
                                    "0", "--grpc-port", "0"], stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("TESTBED READY"):
            raise RuntimeError(f"the testbed did not start:\n{log_path.read_text()[-2000:]}")
        yield int(line.split("rest=")[1].split()[0])
    finally:
        bench_rest.stop(process)


def post(port: int, path: str, body: object, timeout: float = 30.0) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def fill_reference(port: int, state: Path, size: int) -> None:
    """Predict `size` rows through the sidecar, then wait until the analysis has saved the reference."""
    instances = rows(size, seed=1)
    for start in range(0, size, 10):
        status, _ = post(port, PREDICT, {"instances": instances[start:start + 10]})
        assert status == 200, status
    saved = state / "models" / MODEL / "reference.npz"
    deadline = time.monotonic() + 60
    while not saved.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the sidecar saved no reference")
        time.sleep(0.1)
    status, answer = post(port, EXPLAIN, {"instances": instances[:1]}, timeout=120)  # the explainer starts up
    if status != 200:
        raise RuntimeError(f"explain answered {status}: {answer}")


@dataclass
class Burst:
    """`loops` client loops sending `:explain` calls back to back, in a thread of their own, until stopped."""

    port: int
    loops: int
    instances: int
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Burst:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(180)

    async def _run(self) -> None:
        from aiohttp import ClientSession, ClientTimeout

        async with ClientSession(timeout=ClientTimeout(total=120)) as session:
            await asyncio.gather(*(self._loop(session, number) for number in range(self.loops)))

    async def _loop(self, session: object, number: int) -> None:
        from aiohttp import ClientSession

        assert isinstance(session, ClientSession)
        seed = 100 * number
        while not self._stop.is_set():
            seed += 1
            started = time.monotonic()
            async with session.post(f"http://127.0.0.1:{self.port}{EXPLAIN}",
                                    json={"instances": rows(self.instances, seed)}) as response:
                await response.read()
                self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
            if response.status == 200:
                self.latencies.append(time.monotonic() - started)


def wrk_script(directory: Path, pace_ms: int) -> Path:
    """The REST bench's wrk script with a 1-instance regressor body."""
    script = bench_rest.wrk_script(directory, pace_ms)
    lines = script.read_text().splitlines()
    lines[1] = f"wrk.body = [=[{json.dumps({'instances': rows(1, seed=7)})}]=]"
    script.write_text("\n".join(lines) + "\n")
    return script


def run_wrk(script: Path, port: int, connections: int, seconds: float) -> bench_rest.Result:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s", "-s",
               str(script), f"http://127.0.0.1:{port}{PREDICT}"]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    for line in output.splitlines():
        if line.startswith("RESULT "):
            requests, micros, p50, p99, errors = (int(part) for part in line.split()[1:])
            return bench_rest.Result("", connections, requests, micros / 1e6, p50 / 1000, p99 / 1000, errors, None)
    raise RuntimeError(f"wrk printed no result:\n{output}")


def explain_outcomes(admin: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10).read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("sidecar_explain_requests_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            found[outcome] = found.get(outcome, 0.0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith("sidecar_explain_model_calls_total{"):
            found["model_calls"] = found.get("model_calls", 0.0) + float(line.rsplit(" ", 1)[1])
    return found


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of wrk load per round and mode")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--pace-ms", type=int, default=2)
    parser.add_argument("--explainers", type=int, default=2, help="concurrent client loops sending :explain")
    parser.add_argument("--explain-instances", type=int, default=2, help="instances per :explain call")
    parser.add_argument("--explain-samples", type=int, default=256, help="the sidecar's --explain-samples")
    parser.add_argument("--explain-concurrency", type=int, default=1, help="the sidecar's --explain-concurrency")
    parser.add_argument("--explain-priority", default="idle", help="the sidecar's --explain-priority")
    parser.add_argument("--explain-batch-rows", type=int, default=64, help="the sidecar's --explain-batch-rows")
    parser.add_argument("--explain-model-share", type=float, default=1.0, help="the sidecar's --explain-model-share")
    parser.add_argument("--reference-size", type=int, default=100)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    measured: dict[str, list[bench_rest.Result]] = {mode: [] for mode in MODES}
    explain_latencies: list[float] = []
    statuses: dict[int, int] = {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-explain-") as temp:
        directory = Path(temp)
        script = wrk_script(directory, args.pace_ms)
        state = directory / "state"
        options = ["--reference-size", str(args.reference_size), "--explain-models", MODEL, "--explain-background",
                   str(min(50, args.reference_size)), "--explain-samples", str(args.explain_samples),
                   "--explain-concurrency", str(args.explain_concurrency), "--explain-priority", args.explain_priority,
                   "--explain-batch-rows", str(args.explain_batch_rows),
                   "--explain-model-share", str(args.explain_model_share),
                   "--capture-flush-interval", "0.05"]
        with testbed(directory) as upstream, bench_rest.sidecar_run(state, upstream, *options) as (port, admin, _):
            fill_reference(port, state, args.reference_size)
            for round_number in range(args.rounds):
                for mode in MODES if round_number % 2 == 0 else tuple(reversed(MODES)):
                    burst = Burst(port, args.explainers, args.explain_instances) if mode == "burst" else None
                    with burst if burst is not None else contextlib.nullcontext():
                        if args.warmup:
                            run_wrk(script, port, args.connections, args.warmup)
                        result = run_wrk(script, port, args.connections, args.duration)
                    measured[mode].append(result)
                    if burst is not None:
                        explain_latencies += burst.latencies
                        for status, count in burst.statuses.items():
                            statuses[status] = statuses.get(status, 0) + count
                    print(f"  round {round_number} {mode:5s} {result.throughput:7.0f} req/s  p99 "
                          f"{result.p99_ms:.3f} ms", file=sys.stderr, flush=True)
            ended = explain_outcomes(admin)
    pacing = f", each connection pausing {args.pace_ms} ms between requests" if args.pace_ms else ""
    print(f"## Explanation burst vs predictions\n\n{os.cpu_count()} CPUs, load average {load_before:.2f} before / "
          f"{os.getloadavg()[0]:.2f} after; numpy testbed behind `sidecar run` (analysis on, reference "
          f"{args.reference_size}); {args.rounds} alternating rounds of {args.duration:g} s per mode, medians; wrk "
          f"-c{args.connections} 1-instance regressor predictions{pacing}; burst: {args.explainers} client loops of "
          f"`:explain` with {args.explain_instances} instances each, --explain-samples {args.explain_samples}, "
          f"--explain-concurrency {args.explain_concurrency}, --explain-priority {args.explain_priority}, "
          f"--explain-batch-rows {args.explain_batch_rows}, --explain-model-share {args.explain_model_share:g}. "
          f"{idle_note()}.\n")
    print("| mode | p50 ms | p99 ms | req/s | errors |\n|---|---:|---:|---:|---:|")
    p99: dict[str, float] = {}
    for mode in MODES:
        results = measured[mode]
        p99[mode] = statistics.median(r.p99_ms for r in results)
        print(f"| {mode} | {statistics.median(r.p50_ms for r in results):.3f} | {p99[mode]:.3f} | "
              f"{statistics.median(r.throughput for r in results):.0f} | {sum(r.errors for r in results)} |")
    print()
    print(f"- p99 burst/quiet: **{p99['burst'] / p99['quiet']:.2f}x** (goal <= 1.1x); per round: " + ", ".join(
        f"{b.p99_ms / q.p99_ms:.2f}x" for q, b in zip(measured["quiet"], measured["burst"], strict=True)))
    print(f"- explanations answered during the bursts: {len(explain_latencies)}, client-side p50 "
          f"{percentile(explain_latencies, 0.5) * 1000:.0f} ms, p99 {percentile(explain_latencies, 0.99) * 1000:.0f} "
          f"ms; statuses " + ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items())))
    print("- sidecar's explain metrics at the end: " + ", ".join(
        f"{name} {count:.0f}" for name, count in sorted(ended.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
