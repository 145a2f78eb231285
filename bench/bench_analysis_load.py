"""Proxy latency with the analysis workers saturated vs analysis off (issue 3 target: p99 ratio at most 1.1).

Runs the real `sidecar run` (uvloop, REST only) in front of an instant upstream (nginx `return 200`, else a
uvloop stand-in), twice: with analysis off (capture still on, drained into a counter) and with analysis on at
settings that keep the one worker busy all the time (windows of 50 instances, MMD with `--mmd-permutations`, by
default 10,000: about 900 records a second, about what wrk's paced single connection sends). wrk sends a decodable
1-instance, 120-feature JSON predict body. For each run it prints p50/p99/throughput at the chosen concurrencies,
the worker's CPU use during the measured run and, from /metrics, the records captured, analysed and dropped at the
ring: a worker near 1.0 CPU with records left waiting or dropped is saturated.

With 200 permutations (this script's setting until 2026-11-21) the worker kept up at 4 connections using about
half a CPU: that measured analysis at half load, not saturated workers.

A third mode, `off+burner` (`--burner`), is a reference: analysis off while an unrelated process computes numpy
at idle priority (what the worker's CPU use alone costs the proxy on this machine, whatever the sidecar does).
`--parts` adds two diagnostic modes with analysis on and one part switched off (bench/analysis_parts.py):
`no-detectors` (workers skip decoding and detectors: what shipping batches costs) and `no-store` (predictions are
not stored for feedback).

Usage: python bench/bench_analysis_load.py [--duration 10] [--connections 1,4] [--pace-ms 1] [--burner] [--parts]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_rest  # noqa: E402
from analysis_parts import PARTS  # noqa: E402

FEATURES = 120


def body() -> str:
    row = [round(0.5 + (i % 17) / 10, 3) for i in range(FEATURES)]
    return json.dumps({"instances": [row]})


def wrk_script(directory: Path, pace_ms: int) -> Path:
    """The REST bench's wrk script with our body; `pace_ms` > 0 makes each connection wait that long between
    requests (an open-ish load below the proxy's capacity, so only the analysis is saturated)."""
    script = bench_rest.wrk_script(directory, pace_ms)
    lines = script.read_text().splitlines()
    lines[1] = f"wrk.body = [=[{body()}]=]"
    paced = directory / f"predict-{pace_ms}ms.lua"
    paced.write_text("\n".join(lines) + "\n")
    return paced


@contextlib.contextmanager
def sidecar(directory: Path, upstream_port: int, analysis: bool, cpu_share: str,
            part: str = "", permutations: int = 10_000,
            launcher: list[str] | None = None) -> Iterator[tuple[int, int, int]]:
    """`sidecar run` with the given analysis setting; `launcher` replaces `-m sidecar` (a script whose `run`
    command is `sidecar run`, e.g. analysis_parts.py or analysis_timeline.py)."""
    port, admin = bench_rest.free_port(), bench_rest.free_port()
    state = directory / (f"state-on-{part}" if analysis else "state-off")
    if launcher is None:
        launcher = [str(HERE / "analysis_parts.py")] if part else ["-m", "sidecar"]
    command = [sys.executable, *launcher, "run", "--upstream-rest", f"http://127.0.0.1:{upstream_port}",
               "--listen-rest", f"127.0.0.1:{port}", "--listen-grpc", "off", "--upstream-grpc", "off",
               "--listen-admin", f"127.0.0.1:{admin}", "--state-dir", str(state), "--log-level", "error",
               "--analysis-enabled", str(analysis).lower(), "--workers", "1", "--reference-size", "200",
               "--window-size", "50", "--mmd-enabled", "true", "--mmd-permutations", str(permutations),
               "--worker-cpu-share", cpu_share]
    env = {**os.environ, "SIDECAR_BENCH_PART": part}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        bench_rest.wait_listening(port, timeout=60)
        bench_rest.wait_listening(admin, timeout=10)
        yield port, admin, process.pid
    finally:
        bench_rest.stop(process)


BURNER = """
import os
import numpy as np
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
a = np.random.rand(1000, 64)
while True:
    (a @ a.T).sum()
"""


@contextlib.contextmanager
def burner(enabled: bool) -> Iterator[None]:
    """An idle-priority numpy loop in its own process, single-threaded like the analysis workers."""
    if not enabled:
        yield
        return
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", BURNER], env=env)
    try:
        yield
    finally:
        bench_rest.stop(process)


def workers_cpu(pid: int) -> float:
    """CPU seconds used so far by the sidecar's child processes (the analysis workers; any of its threads may have
    started them, and /proc lists children per thread)."""
    children: set[int] = set()
    for listing in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            children.update(int(child) for child in listing.read_text().split())
    return sum(bench_rest.cpu_seconds(child) for child in children)


def scrape(admin: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10).read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("sidecar_capture_dropped_total", "sidecar_analysed_instances_total",
                            "sidecar_capture_records_total")):
            name = line.split("{")[0].split(" ")[0]
            totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", default="1,4")
    parser.add_argument("--rounds", type=int, default=2, help="alternating off/on rounds (medians reported)")
    parser.add_argument("--worker-cpu-share", default="1.0", help="passed to sidecar run (1.0: no cap)")
    parser.add_argument("--mmd-permutations", type=int, default=10_000,
                        help="the analysis load: MMD permutations per 50-instance window")
    parser.add_argument("--pace-ms", type=int, default=1,
                        help="wait between a connection's requests (0: closed loop at full speed, which also "
                             "saturates the proxy on a 2-core machine)")
    parser.add_argument("--burner", action="store_true",
                        help="also measure analysis off next to an unrelated idle-priority numpy loop")
    parser.add_argument("--parts", action="store_true",
                        help="also measure analysis on with the detectors, then the prediction store, switched off")
    args = parser.parse_args()
    modes = ["off", "on"] + (["off+burner"] if args.burner else []) + (list(PARTS) if args.parts else [])
    counts = [int(c) for c in args.connections.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        script = wrk_script(directory, args.pace_ms)
        upstream = (bench_rest.nginx_upstream(directory) if bench_rest.shutil.which("nginx")
                    else bench_rest.server_process("upstream", directory))
        with upstream as (upstream_port, _):
            runs: dict[tuple[str, int], list[bench_rest.Result]] = {}
            evidence: dict[str, dict[str, float]] = {}
            worker_use: dict[tuple[str, int], list[float]] = {}
            for round_index in range(args.rounds):
                for mode in modes:
                    part = mode if mode in PARTS else ""
                    with sidecar(directory / f"r{round_index}", upstream_port, mode == "on" or bool(part),
                                 args.worker_cpu_share, part, args.mmd_permutations) as (port, admin, pid), \
                            burner(mode == "off+burner"):
                        target = bench_rest.Target(f"analysis {mode}", port, pid)
                        bench_rest.run_wrk(script, port, 4, 3)  # warm-up: reference collected, workers busy
                        for connections in counts:
                            used = workers_cpu(pid)
                            [result] = bench_rest.measure(target, script, [connections], args.duration, warmup=0)
                            share = (workers_cpu(pid) - used) / result.seconds
                            worker_use.setdefault((mode, connections), []).append(share)
                            runs.setdefault((mode, connections), []).append(result)
                        evidence[mode] = scrape(admin)
    load = f"each connection pausing {args.pace_ms} ms between requests" if args.pace_ms else "closed loop"
    print(f"wrk {load}, {args.duration:g} s per run, {args.rounds} rounds (medians), "
          f"MMD permutations {args.mmd_permutations}, worker CPU share {args.worker_cpu_share}; "
          f"{bench_rest.idle_note()}\n")
    rows = ["| analysis | connections | p50 ms | p99 ms | req/s | worker CPU | p99 each round (ms, in order) |",
            "|---|---:|---:|---:|---:|---:|---|"]
    medians: dict[tuple[str, int], bench_rest.Result] = {}
    for key, results in sorted(runs.items()):
        each = " ".join(f"{result.p99_ms:.3f}" for result in results)
        results = sorted(results, key=lambda r: r.p99_ms)
        medians[key] = median = results[len(results) // 2]
        use = sorted(worker_use.get(key, [0.0]))[len(worker_use.get(key, [0.0])) // 2]
        rows.append(f"| {key[0]} | {key[1]} | {median.p50_ms:.3f} | {median.p99_ms:.3f} | {median.throughput:.0f} "
                    f"| {use:.2f} | {each} |")
    print("\n".join(rows))
    for mode, totals in evidence.items():
        print(f"\nanalysis {mode}, last round: " + ", ".join(f"{k}={v:.0f}" for k, v in sorted(totals.items())))
    print()
    for connections in counts:
        on, off = medians.get(("on", connections)), medians.get(("off", connections))
        if on and off:
            print(f"p99 ratio (saturated workers / analysis off) at c={connections}: {on.p99_ms / off.p99_ms:.2f} "
                  f"(target <= 1.1); throughput ratio {on.throughput / off.throughput:.2f}")
        burned = medians.get(("off+burner", connections))
        if burned and off:
            print(f"p99 ratio (idle-priority numpy loop, analysis off / analysis off) at c={connections}: "
                  f"{burned.p99_ms / off.p99_ms:.2f} (reference)")
        for part in PARTS:
            partial = medians.get((part, connections))
            if partial and off:
                print(f"p99 ratio (analysis on, {part} / analysis off) at c={connections}: "
                      f"{partial.p99_ms / off.p99_ms:.2f} (diagnostic)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
