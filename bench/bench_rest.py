"""REST proxy benchmark: the sidecar against direct calls and a plain aiohttp proxy, measured with wrk.

    .venv/bin/python bench/bench_rest.py [--duration 10] [--connections 1,16]

The upstream answers instantly (nginx `return 200` when nginx is installed, else a uvloop + httptools server), so
the numbers show what each proxy costs; `--service-ms N` makes a Python upstream take N ms per request instead,
like a real model. Against an instant upstream the p50 ratio measures pure proxy overhead (tens of microseconds
on loopback, for nginx's own proxy too, shown as a reference row), so it is far above 1.5x; with a model's
service time it approaches 1. Every request is a POST of a 1 KB JSON predict body to
/v1/models/m:predict. Targets: `direct` (wrk -> upstream), `sidecar` (wrk -> RestProxy under uvloop with capture
on, into a CaptureRing drained by a CountingConsumer -> upstream) and `aiohttp` (wrk -> aiohttp web server +
ClientSession -> upstream) and, as references, `byte-relay` (a bare uvloop byte relay: the least any Python
forwarder costs) and `nginx-proxy` (nginx proxy_pass with upstream keep-alive); each proxy runs in its own
process. Prints a markdown table and the two ratios the performance target is stated in: sidecar/direct p50 at
concurrency 1 (target <= 1.5) and sidecar/aiohttp throughput at concurrency 16 (target >= 3). `--relay-busy-us N`
adds the byte relay spinning N us before, then after, each of its writes: on a VM whose idle vCPUs halt at once
(see the machine line printed with the results) work before a write costs far more latency than its duration.
Needs `wrk` (apt-get install -y wrk; nginx optional).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from machine import idle_note

HERE = Path(__file__).resolve().parent
SERVERS = HERE / "rest_servers.py"
PATH = "/v1/models/m:predict"
ANSWER = '{"predictions": [[0.12, 0.34, 0.54]]}'


@dataclass
class Result:
    target: str
    connections: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float | None  # CPU time the proxy (or, for direct, the upstream) process spent per request

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def predict_body(size: int = 1024) -> str:
    values: list[str] = []
    while len(json.dumps({"instances": [values]})) < size:
        values.append(f"{0.123456 + len(values) / 1000:.6f}")
    return json.dumps({"instances": [values]})


def wrk_script(directory: Path, pace_ms: int = 0) -> Path:
    """The wrk script: POST the predict body and print the results; `pace_ms` > 0 makes each connection wait that
    long between requests."""
    script = directory / "predict.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [=[{predict_body()}]=]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        "done = function(summary, latency, requests)\n"
        "  local e = summary.errors\n"
        '  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests, summary.duration,\n'
        "    latency:percentile(50), latency:percentile(99),\n"
        "    e.connect + e.read + e.write + e.timeout + e.status))\n"
        "end\n"
        + (f"delay = function() return {pace_ms} end\n" if pace_ms > 0 else ""))
    return script


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Target:
    name: str
    port: int
    pid: int


@contextlib.contextmanager
def nginx(directory: Path, name: str, http_block: str) -> Iterator[tuple[int, int]]:
    """One single-process nginx (no master) serving `http_block` (with `{port}` to fill in) on a free port."""
    port = free_port()
    home = directory / name
    home.mkdir()
    temp = "\n".join(f"  {kind}_temp_path {home / kind};" for kind in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = home / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
master_process off;
daemon off;
pid {home / 'nginx.pid'};
error_log {home / 'error.log'} warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
{temp}
  keepalive_requests 10000000;
{http_block.replace("{port}", str(port))}
}}
""")
    process = subprocess.Popen(["nginx", "-p", str(home), "-e", str(home / "error.log"), "-c", str(conf)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        yield port, process.pid
    finally:
        stop(process)


def nginx_upstream(directory: Path) -> contextlib.AbstractContextManager[tuple[int, int]]:
    body = ANSWER.replace("'", "\\'")
    return nginx(directory, "upstream", f"""
  server {{
    listen 127.0.0.1:{{port}} backlog=1024;
    location / {{ default_type application/json; return 200 '{body}'; }}
  }}""")


def nginx_proxy(directory: Path, upstream_port: int) -> contextlib.AbstractContextManager[tuple[int, int]]:
    """nginx's own reverse proxy with upstream keep-alive: what a C proxy costs on this machine."""
    return nginx(directory, "proxy", f"""
  upstream model {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{{port}} backlog=1024;
    location / {{ proxy_pass http://model; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}""")


@contextlib.contextmanager
def server_process(kind: str, directory: Path, *options: str) -> Iterator[tuple[int, int]]:
    """Run one of rest_servers.py's servers; its stderr goes to a log that is shown if it misbehaves."""
    log_path = directory / f"{kind}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, str(SERVERS), kind, *options], stdout=subprocess.PIPE,
                                   stderr=log, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"{kind} server did not start:\n{log_path.read_text()[-2000:]}")
        yield int(line.split()[1]), process.pid
    finally:
        stop(process)
        text = log_path.read_text()
        if "Traceback" in text or "Error" in text:
            print(f"--- {kind} server log (tail) ---\n{text[-2000:]}", file=sys.stderr)


@contextlib.contextmanager
def sidecar_run(state: Path, upstream_port: int, *options: str) -> Iterator[tuple[int, int, int]]:
    """`sidecar run` as users run it (REST only, admin on loopback) in front of `upstream_port`, with `options`
    added; yields its REST port, admin port and pid once both listen."""
    port, admin = free_port(), free_port()
    command = [sys.executable, "-m", "sidecar", "run", "--upstream-rest", f"http://127.0.0.1:{upstream_port}",
               "--listen-rest", f"127.0.0.1:{port}", "--listen-grpc", "off", "--upstream-grpc", "off",
               "--listen-admin", f"127.0.0.1:{admin}", "--state-dir", str(state), "--log-level", "error", *options]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, timeout=60)
        wait_listening(admin, timeout=10)
        yield port, admin, process.pid
    finally:
        stop(process)


def stop(process: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_wrk(script: Path, port: int, connections: int, seconds: float) -> tuple[int, float, float, float, int]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s", "-s",
               str(script), f"http://127.0.0.1:{port}{PATH}"]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    for line in output.splitlines():
        if line.startswith("RESULT "):
            requests, micros, p50, p99, errors = (int(part) for part in line.split()[1:])
            return requests, micros / 1e6, p50 / 1000, p99 / 1000, errors
    raise RuntimeError(f"wrk printed no result:\n{output}")


def measure(target: Target, script: Path, connection_counts: list[int], seconds: float,
            warmup: float) -> list[Result]:
    results = []
    for connections in connection_counts:
        if warmup:
            run_wrk(script, target.port, connections, warmup)
        cpu_before = cpu_seconds(target.pid)
        requests, elapsed, p50, p99, errors = run_wrk(script, target.port, connections, seconds)
        cpu = (cpu_seconds(target.pid) - cpu_before) / requests * 1e6 if requests else None
        results.append(Result(target.name, connections, requests, elapsed, p50, p99, errors, cpu))
        print(f"  {target.name:8s} c={connections:<3d} {requests / elapsed:9.0f} req/s  p50 {p50:.3f} ms",
              file=sys.stderr, flush=True)
    return results


def table(results: list[Result]) -> str:
    rows = ["| target | connections | p50 ms | p99 ms | req/s | errors | server CPU us/req |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    rows += [f"| {r.target} | {r.connections} | {r.p50_ms:.3f} | {r.p99_ms:.3f} | {r.throughput:.0f} | {r.errors} "
             f"| {'-' if r.cpu_us is None else f'{r.cpu_us:.1f}'} |" for r in results]
    return "\n".join(rows)


def find(results: list[Result], target: str, connections: int) -> Result | None:
    return next((r for r in results if r.target == target and r.connections == connections), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of unrecorded load before each one")
    parser.add_argument("--connections", default="1,16", help="comma-separated wrk connection counts")
    parser.add_argument("--pace-ms", type=int, default=0,
                        help="each connection pauses this long between requests (0: back to back)")
    parser.add_argument("--upstream", choices=("auto", "nginx", "python"), default="auto")
    parser.add_argument("--service-ms", type=float, default=0.0,
                        help="model time the upstream spends per request (uses the Python upstream); 0 = instant")
    parser.add_argument("--aiohttp-uvloop", action="store_true", help="run the aiohttp baseline under uvloop")
    parser.add_argument("--no-nginx-proxy", action="store_true", help="skip the nginx reverse-proxy reference row")
    parser.add_argument("--relay-busy-us", type=float, default=0.0,
                        help="also run the byte relay spinning this long before, then after, each write (what a "
                             "forwarder's own work costs in latency on this machine)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    connection_counts = [int(part) for part in args.connections.split(",")]
    has_nginx = shutil.which("nginx") is not None
    use_nginx = not args.service_ms and (args.upstream == "nginx" or (args.upstream == "auto" and has_nginx))
    aiohttp_loop = "uvloop" if args.aiohttp_uvloop else "asyncio"
    results: list[Result] = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-rest-") as temp:
        directory = Path(temp)
        script = wrk_script(directory, args.pace_ms)
        upstream_cm = nginx_upstream(directory) if use_nginx else server_process(
            "upstream", directory, "--delay-ms", str(args.service_ms))
        with upstream_cm as (upstream_port, upstream_pid):
            upstream = f"127.0.0.1:{upstream_port}"
            timing = (script, connection_counts, args.duration, args.warmup)
            results += measure(Target("direct", upstream_port, upstream_pid), *timing)
            with server_process("sidecar", directory, "--upstream", upstream) as (port, pid):
                results += measure(Target("sidecar", port, pid), *timing)
            with server_process("aiohttp", directory, "--upstream", upstream, "--loop", aiohttp_loop) as (port, pid):
                results += measure(Target("aiohttp", port, pid), *timing)
            with server_process("byte-relay", directory, "--upstream", upstream) as (port, pid):
                results += measure(Target("byte-relay", port, pid), *timing)
            if args.relay_busy_us:
                for when in ("before", "after"):
                    busy = ("--busy-us", str(args.relay_busy_us), "--busy-when", when)
                    with server_process("byte-relay", directory, "--upstream", upstream, *busy) as (port, pid):
                        results += measure(Target(f"byte-relay+{args.relay_busy_us:g}us-{when}", port, pid), *timing)
            if has_nginx and not args.no_nginx_proxy:
                with nginx_proxy(directory, upstream_port) as (port, pid):
                    results += measure(Target("nginx-proxy", port, pid), *timing)
    upstream_name = "nginx return 200" if use_nginx else f"uvloop+httptools, {args.service_ms:g} ms per request"
    pacing = f", each connection pausing {args.pace_ms} ms between requests" if args.pace_ms else ""
    print(f"## REST proxy benchmark\n\n{os.cpu_count()} CPUs, load average {load_before:.2f} before / "
          f"{os.getloadavg()[0]:.2f} after, {args.duration:g} s per run, wrk -t1, POST of a "
          f"{len(predict_body())} B JSON body{pacing}; upstream: {upstream_name}; aiohttp baseline on {aiohttp_loop}. "
          f"Server CPU is the target process's user+system time per request (direct: the upstream's). "
          f"{idle_note()}.\n")
    print(table(results))
    print()
    sidecar_c1, direct_c1 = find(results, "sidecar", 1), find(results, "direct", 1)
    if sidecar_c1 and direct_c1 and direct_c1.p50_ms:
        added = (sidecar_c1.p50_ms - direct_c1.p50_ms) * 1000
        print(f"- p50 sidecar/direct at c1: **{sidecar_c1.p50_ms / direct_c1.p50_ms:.2f}x** (target <= 1.5x), "
              f"{added:.0f} us added")
        busy = [f"byte-relay+{args.relay_busy_us:g}us-{when}" for when in ("before", "after")] \
            if args.relay_busy_us else []
        for reference in ("byte-relay", "nginx-proxy", *busy):
            measured = find(results, reference, 1)
            if measured:
                print(f"- p50 {reference}/direct at c1: {measured.p50_ms / direct_c1.p50_ms:.2f}x "
                      f"({(measured.p50_ms - direct_c1.p50_ms) * 1000:.0f} us added)")
    sidecar_c16, aiohttp_c16 = find(results, "sidecar", 16), find(results, "aiohttp", 16)
    if sidecar_c16 and aiohttp_c16 and aiohttp_c16.throughput:
        print(f"- throughput sidecar/aiohttp at c16: **{sidecar_c16.throughput / aiohttp_c16.throughput:.2f}x** "
              f"(target >= 3x)")
        if sidecar_c16.cpu_us and aiohttp_c16.cpu_us:
            print(f"- CPU per request aiohttp/sidecar at c16: {aiohttp_c16.cpu_us / sidecar_c16.cpu_us:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
