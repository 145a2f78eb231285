"""How fast the analysis comes back after its worker is killed (kill -9) on a busy machine, and what clients see.

`sidecar run` as users run it (one worker, analysis on) in front of an instant upstream, wrk keeping both vCPUs
busy with a closed-loop load at 16 connections, plus an optional normal-priority CPU burner. Each round kills the
analysis worker with SIGKILL and polls the admin metrics every 20 ms until (a) the restart is counted and (b) the
analysed-instances counter moves again; it prints the seconds from the kill to each, the records counted lost
(`reason="worker_died"`), and wrk's non-2xx answers and socket errors over the whole round (goal: none).
The baseline in the same run is `--worker-priority normal` (no priority change at all): the default `idle`
worker starts at normal priority and lowers it only once ready, so the two should resume alike.

    python bench/bench_respawn.py [--rounds 5] [--burner]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_analysis_load  # noqa: E402
import bench_rest  # noqa: E402

POLL_SECONDS = 0.02
BURNER = "while True:\n    pass\n"


def metrics(admin: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10).read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("sidecar_analysed_instances_total", "sidecar_worker_restarts_total",
                            'sidecar_analysis_lost_records_total{reason="worker_died"')):
            name = line.split("{")[0].split(" ")[0]
            found[name] = found.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


def worker_pid(sidecar_pid: int) -> int:
    children: set[int] = set()
    for listing in Path(f"/proc/{sidecar_pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            children.update(int(child) for child in listing.read_text().split())
    for child in children:
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
    raise RuntimeError("no analysis worker found")


def sidecar(directory: Path, upstream_port: int, priority: str) -> contextlib.AbstractContextManager[
        tuple[int, int, int]]:
    return bench_rest.sidecar_run(directory / f"state-{priority}", upstream_port, "--workers", "1",
                                  "--reference-size", "200", "--window-size", "200", "--worker-priority", priority,
                                  "--signature-lookup", "false")


@contextlib.contextmanager
def burners(count: int) -> Iterator[None]:
    processes = [subprocess.Popen([sys.executable, "-c", BURNER]) for _ in range(count)]
    try:
        yield
    finally:
        for process in processes:
            bench_rest.stop(process)


def one_round(script: Path, port: int, admin: int, pid: int, seconds: float) -> dict[str, float]:
    outcome: dict[str, object] = {}

    def load() -> None:
        outcome["wrk"] = bench_rest.run_wrk(script, port, 16, seconds)

    loader = threading.Thread(target=load)
    loader.start()
    deadline = time.monotonic() + 60
    while metrics(admin).get("sidecar_analysed_instances_total", 0) < 400 and time.monotonic() < deadline:
        time.sleep(0.1)
    before = metrics(admin)
    worker = worker_pid(pid)
    killed = time.monotonic()
    os.kill(worker, signal.SIGKILL)
    restarted = resumed = float("nan")
    seen_restart = before.get("sidecar_worker_restarts_total", 0.0)
    analysed_at_restart = None
    while time.monotonic() - killed < 30:
        now = metrics(admin)
        if restarted != restarted and now.get("sidecar_worker_restarts_total", 0.0) > seen_restart:
            restarted = time.monotonic() - killed
            analysed_at_restart = now.get("sidecar_analysed_instances_total", 0.0)
        if analysed_at_restart is not None and now.get("sidecar_analysed_instances_total", 0.0) > analysed_at_restart:
            resumed = time.monotonic() - killed
            break
        time.sleep(POLL_SECONDS)
    loader.join()
    after = metrics(admin)
    requests, _, _, _, errors = outcome["wrk"]  # type: ignore[misc]
    return {"restarted": restarted, "resumed": resumed, "requests": float(requests), "errors": float(errors),
            "lost": after.get("sidecar_analysis_lost_records_total", 0.0)
            - before.get("sidecar_analysis_lost_records_total", 0.0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0, help="wrk run per round; the kill comes early in it")
    parser.add_argument("--burner", action="store_true", help="add two normal-priority busy loops")
    args = parser.parse_args()
    rows: dict[str, list[dict[str, float]]] = {"idle": [], "normal": []}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        script = bench_analysis_load.wrk_script(directory, 0)
        upstream = (bench_rest.nginx_upstream(directory) if bench_rest.shutil.which("nginx")
                    else bench_rest.server_process("upstream", directory))
        with upstream as (upstream_port, _), burners(2 if args.burner else 0):
            for _ in range(args.rounds):
                for priority in rows:
                    with sidecar(directory, upstream_port, priority) as (port, admin, pid):
                        rows[priority].append(one_round(script, port, admin, pid, args.seconds))
    print(f"wrk c16 closed loop, {args.seconds:g} s per round, {args.rounds} rounds"
          f"{', two normal-priority busy loops' if args.burner else ''}; {bench_rest.idle_note()}\n")
    print("| worker priority | restart counted s (median, max) | analysis resumed s (median, max) | "
          "records lost per kill | requests | non-2xx or socket errors |")
    print("|---|---|---|---|---:|---:|")
    for priority, results in rows.items():
        def stat(key: str, results: list[dict[str, float]] = results) -> str:
            values = [r[key] for r in results if r[key] == r[key]]
            return f"{statistics.median(values):.2f}, {max(values):.2f}" if values else "-"
        lost = ", ".join(f"{r['lost']:.0f}" for r in results)
        print(f"| {priority} | {stat('restarted')} | {stat('resumed')} | {lost} | "
              f"{sum(r['requests'] for r in results):.0f} | {sum(r['errors'] for r in results):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
