"""What a shadow costs the primary's clients: p99 with no shadow, with a dead one and with a live one (issue 20
goal: dead shadow p99 at most 1.1x no shadow).

Runs the real `sidecar run` (uvloop, REST only) in front of an instant upstream (nginx `return 200`, else a uvloop
stand-in) three ways, in alternating rounds (medians reported): `none` (no shadow), `dead` (`--shadow-rest` at a
loopback port nobody listens on: every mirrored call is refused, then the lane's breaker skips them) and `live`
(the shadow is the same instant upstream: every call is sent twice). The analysis is off in all three, so the
measured difference is the shadow sender's alone. wrk sends the REST bench's 1 KB predict body; `--pace-ms`
makes each connection pause between requests (a load below the proxy's capacity, where p99 shows what the shadow's
work on the event loop costs a request rather than lost throughput). Prints p50/p99/throughput per mode and the
p99 ratios, and from /metrics how the mirrored calls ended.

Usage: python bench/bench_shadow.py [--duration 10] [--connections 4,16] [--rounds 3] [--pace-ms 1] [--modes ...]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_rest  # noqa: E402
from machine import idle_note  # noqa: E402

MODES = ("none", "dead", "live")


@contextlib.contextmanager
def sidecar(directory: Path, upstream_port: int, mode: str, round_number: int) -> Iterator[tuple[int, int, int]]:
    options = ["--analysis-enabled", "false"]
    if mode == "dead":
        options += ["--shadow-rest", f"http://127.0.0.1:{bench_rest.free_port()}"]
    elif mode == "live":
        options += ["--shadow-rest", f"http://127.0.0.1:{upstream_port}"]
    with bench_rest.sidecar_run(directory / f"state-{mode}-{round_number}", upstream_port, *options) as running:
        yield running


def outcomes(admin: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10).read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("sidecar_shadow_requests_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            found[outcome] = found.get(outcome, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", default="4,16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pace-ms", type=int, default=1)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, of none, dead, live")
    args = parser.parse_args()
    modes = [mode for mode in MODES if mode in args.modes.split(",")]
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    counts = [int(part) for part in args.connections.split(",")]
    measured: dict[tuple[str, int], list[bench_rest.Result]] = {}
    ended: dict[str, dict[str, float]] = {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-shadow-") as temp:
        directory = Path(temp)
        script = bench_rest.wrk_script(directory, args.pace_ms)
        upstream = bench_rest.nginx_upstream(directory) if shutil.which("nginx") else bench_rest.server_process(
            "upstream", directory, "--delay-ms", "0")
        with upstream as (upstream_port, _):
            for round_number in range(args.rounds):
                for mode in modes:
                    with sidecar(directory, upstream_port, mode, round_number) as (port, admin, pid):
                        for result in bench_rest.measure(bench_rest.Target(mode, port, pid), script, counts,
                                                         args.duration, args.warmup):
                            measured.setdefault((mode, result.connections), []).append(result)
                        ended[mode] = outcomes(admin)
    pacing = f", each connection pausing {args.pace_ms} ms between requests" if args.pace_ms else ""
    print(f"## Shadow cost\n\n{os.cpu_count()} CPUs, load average {load_before:.2f} before / "
          f"{os.getloadavg()[0]:.2f} after; {args.rounds} rounds of {args.duration:g} s per mode and concurrency, "
          f"medians; analysis off{pacing}. {idle_note()}.\n")
    print("| mode | connections | p50 ms | p99 ms | req/s |\n|---|---:|---:|---:|---:|")
    medians: dict[tuple[str, int], float] = {}
    for (mode, connections), results in sorted(measured.items(), key=lambda item: (item[0][1], item[0][0])):
        p99 = medians[(mode, connections)] = statistics.median(r.p99_ms for r in results)
        print(f"| {mode} | {connections} | {statistics.median(r.p50_ms for r in results):.3f} | {p99:.3f} | "
              f"{statistics.median(r.throughput for r in results):.0f} |")
    print()
    for connections in counts:
        base = medians.get(("none", connections))
        for mode in ("dead", "live"):
            other = medians.get((mode, connections))
            if base and other:
                goal = " (goal <= 1.1x)" if mode == "dead" else ""
                print(f"- p99 {mode}/none at c{connections}: **{other / base:.2f}x**{goal}")
    for mode in ("dead", "live"):
        print(f"- mirrored calls, last {mode} round: " + ", ".join(
            f"{outcome} {count:.0f}" for outcome, count in sorted(ended.get(mode, {}).items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
