"""`sidecar run` as shipped against what a user would otherwise deploy, interleaved in one run.

    .venv/bin/python bench/bench_product.py [--rounds 3] [--duration 8] [--proxy-processes 1,2]

Targets, all in front of one instant upstream (nginx `return 200` of a small JSON answer), each a POST of a 1 KB
JSON predict body measured with wrk: `direct` (no proxy), `nginx` (proxy_pass with upstream keep-alive), `go` (a
Go `httputil.ReverseProxy` with a request/response body tee, bench/goproxy/main.go, standard library only,
GOMAXPROCS = the machine's cores: the core of the KServe agent), `sidecar` (`sidecar run` with its defaults:
analysis on, REST only; one row per `--proxy-processes` value), `aiohttp` (a plain aiohttp proxy) and
`byte-relay` (a bare uvloop byte relay: the least any Python forwarder costs). Rounds are interleaved (every
target once per round, in a rotating order) so drift of the machine spreads over all of them.

Per target: added c1 p50 (its p50 minus direct's, same round), c16 requests per second, CPU per request at c16 (the
target's processes, user + system; for the sidecar the proxy processes, and separately with its analysis workers)
and resident memory (the sidecar's main process idle, and after the load). Medians over the rounds. Needs wrk,
nginx and go (apt-get install -y wrk nginx golang-go).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench_rest import (
    cpu_seconds,
    nginx_proxy,
    nginx_upstream,
    run_wrk,
    server_process,
    sidecar_run,
    stop,
    wait_listening,
    wrk_script,
)
from machine import idle_note

HERE = Path(__file__).resolve().parent


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def descendants(pid: int) -> list[int]:
    """Child processes, recursively (Linux /proc)."""
    found: list[int] = []
    children: list[str] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):  # a child started from a thread is that thread's child
        with contextlib.suppress(OSError):
            children += (task / "children").read_text().split()
    for child in map(int, children):
        found.append(child)
        found.extend(descendants(child))
    return found


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@dataclass
class Running:
    name: str
    port: int
    proxy_pids: list[int]  # the processes that proxy (the sidecar: its main process and proxy processes)
    other_pids: list[int] = field(default_factory=list)  # the sidecar's analysis workers


@dataclass
class Sample:
    c1_p50_ms: float
    c16_rps: float
    c16_p99_ms: float
    cpu_us: float
    cpu_all_us: float
    rss_mb: float
    cpu_main_us: float  # the first proxy process alone (the sidecar's main process)


def measure(target: Running, script: Path, seconds: float, warmup: float) -> Sample:
    run_wrk(script, target.port, 1, warmup)
    _, _, c1_p50, _, _ = run_wrk(script, target.port, 1, seconds)
    run_wrk(script, target.port, 16, warmup)
    before = [cpu_seconds(pid) for pid in target.proxy_pids]
    before_other = [cpu_seconds(pid) for pid in target.other_pids]
    requests, elapsed, _, p99, _ = run_wrk(script, target.port, 16, seconds)
    after = [cpu_seconds(pid) for pid in target.proxy_pids]
    cpu = sum(after) - sum(before)
    other = sum(cpu_seconds(pid) for pid in target.other_pids) - sum(before_other)
    return Sample(c1_p50, requests / elapsed, p99, cpu / requests * 1e6, (cpu + other) / requests * 1e6,
                  sum(rss_mb(pid) for pid in target.proxy_pids[:1]), (after[0] - before[0]) / requests * 1e6)


@contextlib.contextmanager
def go_proxy(directory: Path, upstream: str) -> Iterator[tuple[int, int]]:
    binary = directory / "goproxy"
    env = {**os.environ, "GOCACHE": str(directory / "gocache"), "HOME": str(directory), "CGO_ENABLED": "0"}
    subprocess.run(["go", "build", "-o", str(binary), str(HERE / "goproxy" / "main.go")], check=True, env=env)
    process = subprocess.Popen([str(binary), "-upstream", upstream], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline().split()[1])
        wait_listening(port)
        yield port, process.pid
    finally:
        stop(process)


def sidecar_processes(pid: int) -> tuple[list[int], list[int]]:
    """(proxy processes: the main one first, then `--proxy-processes` children; analysis workers)."""
    proxies, workers = [pid], []
    for child in descendants(pid):
        (proxies if process_name(child).startswith("sidecar-proxy") else workers).append(child)
    return proxies, workers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk measurement")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--proxy-processes", default="1", help="comma-separated --proxy-processes values to run")
    parser.add_argument("--skip", default="", help="comma-separated targets to leave out")
    args = parser.parse_args()
    missing = [tool for tool in ("wrk", "nginx", "go") if shutil.which(tool) is None]
    if missing:
        print(f"missing: {', '.join(missing)} (apt-get install -y wrk nginx golang-go)", file=sys.stderr)
        return 2
    skip = set(filter(None, args.skip.split(",")))
    samples: dict[str, list[Sample]] = {}
    idle: dict[str, float] = {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-product-") as temp, contextlib.ExitStack() as stack:
        directory = Path(temp)
        script = wrk_script(directory)
        upstream_port, upstream_pid = stack.enter_context(nginx_upstream(directory))
        upstream = f"127.0.0.1:{upstream_port}"
        targets = [Running("direct", upstream_port, [upstream_pid])]
        if "nginx" not in skip:
            port, pid = stack.enter_context(nginx_proxy(directory, upstream_port))
            targets.append(Running("nginx", port, [pid]))
        if "go" not in skip:
            port, pid = stack.enter_context(go_proxy(directory, upstream))
            targets.append(Running("go", port, [pid]))
        for count in args.proxy_processes.split(","):
            name = "sidecar" if count == "1" else f"sidecar x{count}"
            state = directory / f"state-{count}"
            port, _, pid = stack.enter_context(sidecar_run(state, upstream_port, "--proxy-processes", count))
            time.sleep(8)  # workers and proxy processes up and settled
            proxies, workers = sidecar_processes(pid)
            idle[name] = rss_mb(pid)
            targets.append(Running(name, port, proxies, workers))
        if "aiohttp" not in skip:
            port, pid = stack.enter_context(server_process("aiohttp", directory, "--upstream", upstream,
                                                           "--loop", "uvloop"))
            targets.append(Running("aiohttp", port, [pid]))
        if "byte-relay" not in skip:
            port, pid = stack.enter_context(server_process("byte-relay", directory, "--upstream", upstream))
            targets.append(Running("byte-relay", port, [pid]))
        for round_ in range(args.rounds):
            order = targets[round_ % len(targets):] + targets[:round_ % len(targets)]
            for target in order:
                sample = measure(target, script, args.duration, args.warmup)
                samples.setdefault(target.name, []).append(sample)
                print(f"  round {round_ + 1} {target.name:12s} c1 p50 {sample.c1_p50_ms * 1000:6.0f} us  c16 "
                      f"{sample.c16_rps:8.0f} req/s  {sample.cpu_us:5.1f} us CPU/req", file=sys.stderr, flush=True)
    report(samples, idle, args, load_before)
    return 0


def median(values: list[float]) -> float:
    return statistics.median(values)


def report(samples: dict[str, list[Sample]], idle: dict[str, float], args: argparse.Namespace,
           load_before: float) -> None:
    direct_p50 = median([s.c1_p50_ms for s in samples["direct"]])
    print(f"## `sidecar run` against the proxies a user would otherwise deploy\n\n{os.cpu_count()} CPUs, load "
          f"average {load_before:.2f} before / {os.getloadavg()[0]:.2f} after; {args.rounds} interleaved rounds of "
          f"{args.duration:g} s per measurement (wrk -t1, POST of a 1 KB JSON predict body, instant nginx upstream); "
          f"medians. {idle_note()}.\n")
    print("| target | added c1 p50 us | c16 req/s | c16 p99 ms | CPU us/req (proxy) | of it the main process | "
          "CPU us/req (all) | RSS MB idle / after load |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, rows in samples.items():
        added = (median([s.c1_p50_ms for s in rows]) - direct_p50) * 1000
        idle_rss = f"{idle[name]:.0f} / " if name in idle else ""
        print(f"| {name} | {'-' if name == 'direct' else f'{added:.0f}'} | {median([s.c16_rps for s in rows]):.0f} "
              f"| {median([s.c16_p99_ms for s in rows]):.2f} | {median([s.cpu_us for s in rows]):.1f} | "
              f"{median([s.cpu_main_us for s in rows]):.1f} | {median([s.cpu_all_us for s in rows]):.1f} | "
              f"{idle_rss}{median([s.rss_mb for s in rows]):.0f} |")
    print()

    def ratio(a: str, b: str, key: str) -> float | None:
        if a not in samples or b not in samples:
            return None
        if key == "added":
            top = median([s.c1_p50_ms for s in samples[a]]) - direct_p50
            bottom = median([s.c1_p50_ms for s in samples[b]]) - direct_p50
        else:
            top, bottom = (median([getattr(s, key) for s in samples[name]]) for name in (a, b))
        return top / bottom if bottom else None

    sidecars = [name for name in samples if name.startswith("sidecar")]
    for name in sidecars:
        goals = [(ratio(name, "go", "c16_rps"), "c16 throughput / Go", ">= 1.5x"),
                 (ratio(name, "aiohttp", "c16_rps"), "c16 throughput / aiohttp", ">= 3x"),
                 (ratio(name, "go", "added"), "added c1 p50 / Go's", "<= 0.5x"),
                 (ratio(name, "byte-relay", "cpu_us"), "CPU per request / byte relay's", "<= 2x")]
        print(f"- {name}: " + "; ".join(f"{label} **{value:.2f}x** (goal {goal})" for value, label, goal in goals
                                          if value is not None))


if __name__ == "__main__":
    sys.exit(main())
