"""Soak: `sidecar run` as shipped (analysis on) for minutes at a steady rate, with a dead payload-log sink and a
churn of client connections; prints the proxy's memory every 30 s and every request's outcome.

The load: `--rate` requests per second of a 4-feature predict body, spread over clients that each open a
connection, send `--requests-per-connection` requests on it (keep-alive) and close it, so connections are opened
and closed all the time. The payload log posts CloudEvents to a port nobody listens on: its queue fills and
drops (counted) while the proxy must stay flat. Each 30 s line: elapsed time, the main process's RSS, requests
answered by status, client errors (connect/read failures and timeouts), and the sidecar's own counters (payload
events not sent: failed or dropped; records analysed). At the end: the RSS after warm-up (`--warmup`) against the
largest later one (goal: within 10%), and the outcome of every request.

    python bench/soak.py [--duration 600] [--rate 200] [--warmup 60]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_rest  # noqa: E402

REPORT_SECONDS = 30.0
BODY = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}).encode()  # the upstream answers one prediction


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def counters(admin: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10).read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        for name in ("sidecar_export_events_total", "sidecar_analysed_instances_total"):
            if line.startswith(name + "{") and ('outcome="sent"' not in line or name.startswith("sidecar_analysed")):
                found[name] = found.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


def sidecar(directory: Path, upstream_port: int) -> contextlib.AbstractContextManager[tuple[int, int, int]]:
    dead = bench_rest.free_port()  # nobody listens: the payload log's sink is dead
    return bench_rest.sidecar_run(directory / "state", upstream_port,
                                  "--payload-log-url", f"http://127.0.0.1:{dead}/events")


async def client(port: int, requests: int, outcomes: Counter[str], pace: asyncio.Queue[None]) -> None:
    """One connection: `requests` keep-alive requests, each when the pacer says, then close."""
    request = (b"POST /v1/models/iris:predict HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
               b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    except (OSError, TimeoutError):
        outcomes["connect error"] += 1
        return
    try:
        for _ in range(requests):
            await pace.get()
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            status = head.split(b" ", 2)[1].decode()
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await asyncio.wait_for(reader.readexactly(length), 10)
            outcomes[status] += 1
    except (OSError, TimeoutError, asyncio.IncompleteReadError, StopIteration, ValueError) as exc:
        outcomes[f"error {type(exc).__name__}"] += 1
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def soak(port: int, admin: int, pid: int, args: argparse.Namespace) -> tuple[list[tuple[float, float]],
                                                                                   Counter[str]]:
    outcomes: Counter[str] = Counter()
    pace: asyncio.Queue[None] = asyncio.Queue(maxsize=args.rate)
    samples: list[tuple[float, float]] = []
    start = time.monotonic()
    clients: set[asyncio.Task[None]] = set()

    async def pacer() -> None:
        interval, due = 1.0 / args.rate, time.monotonic()
        while True:
            due += interval
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            with contextlib.suppress(asyncio.QueueFull):
                pace.put_nowait(None)

    async def churn() -> None:
        while True:
            if len(clients) < args.clients:
                task = asyncio.create_task(client(port, args.requests_per_connection, outcomes, pace))
                clients.add(task)
                task.add_done_callback(clients.discard)
            await asyncio.sleep(0.001)

    tasks = [asyncio.create_task(pacer()), asyncio.create_task(churn())]
    print("| elapsed s | RSS MiB | answered by status | client errors | payload events not sent | analysed |")
    print("|---:|---:|---|---:|---:|---:|")
    try:
        while (elapsed := time.monotonic() - start) < args.duration:
            await asyncio.sleep(min(REPORT_SECONDS, args.duration - elapsed))
            elapsed = time.monotonic() - start
            rss = rss_mib(pid)
            samples.append((elapsed, rss))
            seen = counters(admin)
            statuses = ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())
                                 if not k.startswith(("error", "conn")))
            errors = sum(v for k, v in outcomes.items() if k.startswith(("error", "conn")))
            print(f"| {elapsed:.0f} | {rss:.1f} | {statuses} | {errors} | "
                  f"{seen.get('sidecar_export_events_total', 0):.0f} | "
                  f"{seen.get('sidecar_analysed_instances_total', 0):.0f} |", flush=True)
    finally:
        for task in tasks:
            task.cancel()
        for task in list(clients):
            task.cancel()
        await asyncio.gather(*tasks, *clients, return_exceptions=True)
    return samples, outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--rate", type=int, default=200, help="requests per second in all")
    parser.add_argument("--clients", type=int, default=8, help="connections open at a time")
    parser.add_argument("--requests-per-connection", type=int, default=20)
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the RSS baseline")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        upstream = (bench_rest.nginx_upstream(directory) if bench_rest.shutil.which("nginx")
                    else bench_rest.server_process("upstream", directory))
        with upstream as (upstream_port, _), sidecar(directory, upstream_port) as (port, admin, pid):
            print(f"soak: {args.duration:g} s at {args.rate} req/s, {args.clients} connections at a time, "
                  f"{args.requests_per_connection} requests each; payload log to a dead endpoint\n")
            samples, outcomes = asyncio.run(soak(port, admin, pid, args))
    after = [rss for elapsed, rss in samples if elapsed >= args.warmup]
    if after:
        base = after[0]
        print(f"\nRSS after warm-up {base:.1f} MiB, largest later {max(after):.1f} MiB: "
              f"{max(after) / base:.3f}x (goal <= 1.10)")
    total = sum(outcomes.values())
    print("outcomes: " + ", ".join(f"{k} {v} ({v / total:.2%})" for k, v in sorted(outcomes.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
