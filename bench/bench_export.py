"""Payload log benchmark: what a sink costs the request path, end to end and per record.

    .venv/bin/python bench/bench_export.py [--duration 10] [--connections 1,16] [--records 200000]

1. Per record, in process: the request path's capture (`Tee.append` into the analysis ring alone, then into the
   analysis ring and the payload log's ring) and the drain side (`PayloadLog.submit`: sampling, building the
   request and response events and queueing them) with a dead HTTP sink whose queue is full, i.e. the drop
   path a dead sink costs forever.
2. End to end, with wrk: POSTs of a 1 KB predict body through the real RestProxy (uvloop, its own process) to an
   instant upstream, with capture on and (a) no payload log, (b) the payload log sending CloudEvents to a dead
   port (connection refused), (c) the payload log writing the JSONL file. Prints p50/p99 per target and the
   ratio the target is stated in: p99 dead sink / no sink (target <= 1.1x).

Needs `wrk` for part 2 (apt-get install -y wrk); without it only part 1 runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_rest import predict_body, run_wrk
from rest_servers import _InstantUpstream, _until_signalled

PATH = "/v1/models/m:predict"
ANSWER = b'{"predictions": [[0.12, 0.34, 0.54]]}'
SINKS = ("none", "dead", "file")
WrkResult = tuple[int, float, float, float, int]  # requests, seconds, p50 ms, p99 ms, errors


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/"


# ---- part 1: per-record costs, in process -------------------------------------------------------------------

def per_record(records: int) -> list[tuple[str, float]]:
    from prometheus_client import CollectorRegistry

    from sidecar.capture.ring import CaptureRing, Tee
    from sidecar.export.payload_log import PayloadLog, payload_log_ring
    from sidecar.export.settings import ExportSettings
    from sidecar.messages.records import CaptureRecord

    body = predict_body().encode()
    batch = [CaptureRecord(f"id-{i}", time.time(), "m", "", "", "rest", "tfserving", "predict", body, ANSWER, 200,
                           0.001) for i in range(1000)]
    settings = ExportSettings(payload_log_url=dead_url())

    def tee_cost(tee: Tee) -> float:
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter_ns()
            for index in range(records):
                tee.append(batch[index % 1000])
            best = min(best, (time.perf_counter_ns() - started) / records)
        return best

    analysis = CaptureRing(10_000, 256 * 1024**2)
    no_sink = tee_cost(Tee(analysis))
    with_sink = tee_cost(Tee(CaptureRing(10_000, 256 * 1024**2), payload_log_ring(settings)))

    log = PayloadLog(settings, CollectorRegistry())  # not started: nothing drains its queue, which stays full
    rounds = max(1, records // 1000)
    started = time.perf_counter_ns()
    for _ in range(rounds):
        log.submit(batch)
    submit = (time.perf_counter_ns() - started) / (rounds * 1000)
    return [("capture, analysis ring only (Tee.append)", no_sink),
            ("capture, analysis ring + payload log ring (Tee.append)", with_sink),
            ("PayloadLog.submit, dead sink, queue full (drain side)", submit)]


# ---- part 2: end to end with wrk ----------------------------------------------------------------------------

async def serve_upstream() -> None:
    server = await asyncio.get_running_loop().create_server(_InstantUpstream, "127.0.0.1", 0, backlog=1024)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    await _until_signalled()


class GcPauses:
    """Longest garbage-collector pause per generation (the proxy's loop stands still meanwhile)."""

    def __init__(self) -> None:
        self.longest = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        self.longest[generation] = max(self.longest[generation], time.perf_counter() - self._started)
        self.count[generation] += 1

    def __str__(self) -> str:
        return ", ".join(f"gen{g}: {self.count[g]} passes, longest {self.longest[g] * 1000:.1f} ms" for g in range(3))


async def serve_sidecar(upstream_port: int, sink: str, directory: Path, freeze: bool) -> None:
    from prometheus_client import CollectorRegistry

    from sidecar.capture.ring import CaptureRing, CountingConsumer, Drainer, Tee
    from sidecar.export.payload_log import PayloadLog, payload_log_ring
    from sidecar.export.settings import ExportSettings
    from sidecar.proxy.rest.proxy import RestProxy
    from sidecar.proxy.settings import ProxySettings
    from sidecar.telemetry.metrics import RequestMetrics
    from sidecar.telemetry.tracing import disabled

    ring = CaptureRing(10_000, 256 * 1024**2)
    drainers = [Drainer(ring, CountingConsumer(), flush_interval=0.05)]
    tee = Tee(ring)
    log: PayloadLog | None = None
    registry = CollectorRegistry()
    if sink != "none":
        settings = (ExportSettings(payload_log_url=dead_url()) if sink == "dead"
                    else ExportSettings(payload_log_file=str(directory / "payload.jsonl")))
        log = PayloadLog(settings, registry)
        payload_ring = payload_log_ring(settings)
        tee.add(payload_ring)
        drainers.append(Drainer(payload_ring, log, flush_interval=0.05))
        await log.start()
    for drainer in drainers:
        drainer.start()
    proxy = RestProxy(ProxySettings(upstream_rest=("127.0.0.1", upstream_port), listen_rest=("127.0.0.1", 0)),
                      capture=tee.append, metrics=RequestMetrics(), tracing=disabled())
    await proxy.start()
    if freeze:
        gc.freeze()  # start-up objects (imports) leave the collector's full passes
    pauses = GcPauses()
    print(f"PORT {proxy.port}", flush=True)
    await _until_signalled()
    await proxy.stop()
    print(f"  sink {sink}: gc {pauses}", file=sys.stderr, flush=True)
    for drainer in drainers:
        await drainer.stop()
    if log is not None:
        await log.stop(1.0)
        name = log.sinks[0].name
        counts = {outcome: registry.get_sample_value("sidecar_export_events_total", {"sink": name, "outcome": outcome})
                  for outcome in ("sent", "failed", "dropped")}
        print(f"  sink {sink}: events {counts}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def process(*args: str) -> Iterator[int]:
    command = [sys.executable, __file__, *args]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"{' '.join(args)} did not start")
        yield int(line.split()[1])
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def wrk_script(directory: Path) -> Path:
    script = directory / "predict.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(predict_body())}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        "done = function(summary, latency, requests)\n"
        "  local e = summary.errors\n"
        '  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests, summary.duration,\n'
        "    latency:percentile(50), latency:percentile(99), e.connect + e.read + e.write + e.status + e.timeout))\n"
        "end\n")
    return script


def end_to_end(connections: list[int], seconds: float, warmup: float, rounds: int,
               freeze: bool) -> dict[tuple[str, int], WrkResult]:
    """Best-of-`rounds` p99 per (sink, connections), alternating sinks so load changes hit all of them alike."""
    results: dict[tuple[str, int], WrkResult] = {}
    with tempfile.TemporaryDirectory(prefix="bench-export-") as temp:
        directory = Path(temp)
        script = wrk_script(directory)
        with process("--role", "upstream") as upstream:
            for _ in range(rounds):
                for sink in SINKS:
                    options = ["--gc-freeze"] if freeze else []
                    with process("--role", "sidecar", "--upstream-port", str(upstream), "--sink", sink,
                                 "--dir", str(directory), *options) as port:
                        for count in connections:
                            if warmup:
                                run_wrk(script, port, count, warmup)
                            result = run_wrk(script, port, count, seconds)
                            known = results.get((sink, count))
                            if known is None or result[3] < known[3]:
                                results[(sink, count)] = result
                            print(f"  {sink:5s} c={count:<3d} {result[0] / result[1]:8.0f} req/s  p50 "
                                  f"{result[2]:.3f} ms  p99 {result[3]:.3f} ms", file=sys.stderr, flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk measurement")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", default="1,16")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per target; the best p99 counts")
    parser.add_argument("--records", type=int, default=200_000, help="records for the per-record timings")
    parser.add_argument("--gc-freeze", action="store_true", help="gc.freeze() in the sidecar after start-up")
    parser.add_argument("--role", choices=("driver", "upstream", "sidecar"), default="driver",
                        help=argparse.SUPPRESS)
    parser.add_argument("--upstream-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--sink", choices=SINKS, default="none", help=argparse.SUPPRESS)
    parser.add_argument("--dir", default=".", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role != "driver":
        import uvloop

        coroutine = (serve_upstream() if args.role == "upstream"
                     else serve_sidecar(args.upstream_port, args.sink, Path(args.dir), args.gc_freeze))
        uvloop.run(coroutine)
        return 0

    print(f"## Payload log benchmark ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f})\n")
    print("| per record | ns |\n|---|---:|")
    costs = per_record(args.records)
    for name, nanos in costs:
        print(f"| {name} | {nanos:.0f} |")
    print(f"\n- capture cost added by the payload log's ring: {costs[1][1] - costs[0][1]:.0f} ns per request "
          f"({costs[1][1] / costs[0][1]:.2f}x the capture alone)\n")
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install -y wrk): end-to-end part skipped")
        return 0
    connections = [int(part) for part in args.connections.split(",")]
    results = end_to_end(connections, args.duration, args.warmup, args.rounds, args.gc_freeze)
    print(f"| sink | connections | p50 ms | p99 ms | req/s | errors |  ({args.duration:g}s runs, best p99 of "
          f"{args.rounds})\n|---|---:|---:|---:|---:|---:|")
    for (sink, count), (requests, seconds, p50, p99, errors) in sorted(results.items(), key=lambda i: (i[0][1],
                                                                                                       i[0][0])):
        print(f"| {sink} | {count} | {p50:.3f} | {p99:.3f} | {requests / seconds:.0f} | {errors} |")
    print()
    for count in connections:
        none, dead = results.get(("none", count)), results.get(("dead", count))
        if none and dead and none[3]:
            print(f"- p99 dead sink / no sink at c{count}: **{dead[3] / none[3]:.2f}x** (target <= 1.1x)")
        file = results.get(("file", count))
        if none and file and none[3]:
            print(f"- p99 file sink / no sink at c{count}: {file[3] / none[3]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
