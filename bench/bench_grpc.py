"""gRPC proxy benchmark: the sidecar's GrpcProxy against direct calls and other ways to forward gRPC.

    .venv/bin/python bench/bench_grpc.py [--duration 10] [--targets direct,sidecar,...]

The upstream is a grpc.aio server answering every call at once with the same serialized PredictResponse. Each
target runs in its own process; the client is this process: a blocking grpc channel calling Predict in a loop
at concurrency 1 (latency), and a grpc.aio channel with 16 concurrent callers (throughput). Targets:

- `direct`: client -> upstream (the baseline every "added" number is measured against);
- `tcp-relay`: a uvloop TCP byte relay, the floor for any user-space proxy (it does no gRPC work at all);
- `aio-minimal`: grpc.aio server + channel forwarding bytes and nothing else (what grpc.aio itself costs);
- `sync-minimal`: grpc's blocking server (thread pool) + blocking channel, the same minimal forwarding;
- `sidecar`: the real GrpcProxy with the grpc.aio engine, capture on (CaptureRing drained by a CountingConsumer),
  metrics, default loop;
- `sidecar-uvloop`: the same under uvloop;
- `sidecar-ee-off`: `sidecar` with gRPC core's event-engine client/listener experiments switched off
  (GRPC_EXPERIMENTS=-event_engine_client,-event_engine_listener);
- `sidecar-h2`: the real GrpcProxy with the h2 relay engine (the default), capture and metrics on, under uvloop
  (as `python -m sidecar` runs it);
- `sidecar-h2-asyncio`: the same on the default asyncio loop.

Prints a markdown table (p50/p99 at concurrency 1, added p50 in microseconds over direct, throughput at 16, and the
CPU time the forwarding process spent per call) and the added p50 of each engine against the target (<= 150 us).
Rounds of all targets are interleaved so background load hits them alike. Internal: `bench_grpc.py serve KIND`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import idle_note  # noqa: E402  (bench/ is on the path when this script runs)

PREDICT = "/tensorflow.serving.PredictionService/Predict"
ALL_TARGETS = ("direct", "tcp-relay", "aio-minimal", "sync-minimal", "sidecar", "sidecar-uvloop", "sidecar-ee-off",
               "sidecar-h2", "sidecar-h2-asyncio")
ENGINE_TARGETS = (("sidecar", "grpc.aio engine"), ("sidecar-h2", "h2 relay engine"))
EE_OFF = "-event_engine_client,-event_engine_listener"
TARGET_ADDED_P50_US = 150.0
THROUGHPUT_CONCURRENCY = 16


def predict_messages() -> tuple[bytes, bytes]:
    """A small PredictRequest (64 floats) and the fixed PredictResponse (3 floats), serialized."""
    from sidecar._proto import tf_pb2, tfs_pb2

    request = tfs_pb2.PredictRequest()
    request.model_spec.name = "m"
    tensor = request.inputs["x"]
    tensor.dtype = tf_pb2.DT_FLOAT
    tensor.tensor_shape.dim.add(size=1)
    tensor.tensor_shape.dim.add(size=64)
    tensor.float_val.extend(float(i) / 64 for i in range(64))
    response = tfs_pb2.PredictResponse()
    output = response.outputs["y"]
    output.dtype = tf_pb2.DT_FLOAT
    output.tensor_shape.dim.add(size=1)
    output.tensor_shape.dim.add(size=3)
    output.float_val.extend([0.1, 0.3, 0.6])
    response.model_spec.name = "m"
    response.model_spec.version.value = 1
    return request.SerializeToString(), response.SerializeToString()


# --- servers (each runs in its own process: `bench_grpc.py serve KIND UPSTREAM_PORT`) -------------------------

def _announce(port: int) -> None:
    print(f"PORT {port}", flush=True)


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


async def _serve_upstream() -> None:
    import grpc

    _, answer = predict_messages()

    async def respond(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return answer

    handler = grpc.unary_unary_rpc_method_handler(respond)

    class Everything(grpc.GenericRpcHandler):  # type: ignore[misc]
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            return handler

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((Everything(),))
    _announce(server.add_insecure_port("127.0.0.1:0"))
    await server.start()
    await _until_signalled()
    await server.stop(0)


async def _serve_sidecar(upstream_port: int, engine: str = "aio") -> None:
    from sidecar.capture.ring import CaptureRing, CountingConsumer, Drainer
    from sidecar.proxy.grpc.engine import GrpcProxy
    from sidecar.proxy.settings import ProxySettings
    from sidecar.telemetry.metrics import RequestMetrics
    from sidecar.telemetry.tracing import disabled

    ring = CaptureRing(max_records=100_000, max_bytes=256 * 1024 * 1024)
    drainer = Drainer(ring, CountingConsumer(), flush_interval=0.05)
    drainer.start()
    proxy = GrpcProxy(ProxySettings(upstream_grpc=("127.0.0.1", upstream_port), listen_grpc=("127.0.0.1", 0),
                                    grpc_engine=engine),
                      capture=ring.append, metrics=RequestMetrics(), tracing=disabled())
    await proxy.start()
    assert proxy.port is not None
    _announce(proxy.port)
    await _until_signalled()
    await proxy.stop(0)
    await drainer.stop()


async def _serve_aio_minimal(upstream_port: int) -> None:
    import grpc

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{upstream_port}")
    handlers: dict[str, grpc.RpcMethodHandler] = {}

    class Forward(grpc.GenericRpcHandler):  # type: ignore[misc]
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            handler = handlers.get(details.method)
            if handler is None:
                upstream = channel.unary_unary(details.method)

                async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                    return bytes(await upstream(request, timeout=context.time_remaining()))

                handler = handlers[details.method] = grpc.unary_unary_rpc_method_handler(forward)
            return handler

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((Forward(),))
    _announce(server.add_insecure_port("127.0.0.1:0"))
    await server.start()
    await _until_signalled()
    await server.stop(0)
    await channel.close()


def _serve_sync_minimal(upstream_port: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{upstream_port}")
    handlers: dict[str, grpc.RpcMethodHandler] = {}

    class Forward(grpc.GenericRpcHandler):  # type: ignore[misc]
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            handler = handlers.get(details.method)
            if handler is None:
                upstream = channel.unary_unary(details.method)

                def forward(request: bytes, context: grpc.ServicerContext) -> bytes:
                    remaining = context.time_remaining()
                    return bytes(upstream(request, timeout=remaining if remaining < 1e6 else None))

                handler = handlers[details.method] = grpc.unary_unary_rpc_method_handler(forward)
            return handler

    server = grpc.server(ThreadPoolExecutor(max_workers=32), options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((Forward(),))
    _announce(server.add_insecure_port("127.0.0.1:0"))
    server.start()
    stopped = False

    def stop(*_: object) -> None:
        nonlocal stopped
        stopped = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopped:
        time.sleep(0.1)
    server.stop(0)


async def _serve_tcp_relay(upstream_port: int) -> None:
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(262144):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer))

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    _announce(server.sockets[0].getsockname()[1])
    await _until_signalled()
    server.close()


def serve(kind: str, upstream_port: int) -> None:
    if kind == "upstream":
        asyncio.run(_serve_upstream())
    elif kind in ("sidecar", "sidecar-ee-off"):
        asyncio.run(_serve_sidecar(upstream_port))
    elif kind == "sidecar-uvloop":
        import uvloop

        uvloop.run(_serve_sidecar(upstream_port))
    elif kind == "sidecar-h2":
        import uvloop

        uvloop.run(_serve_sidecar(upstream_port, "h2"))
    elif kind == "sidecar-h2-asyncio":
        asyncio.run(_serve_sidecar(upstream_port, "h2"))
    elif kind == "aio-minimal":
        asyncio.run(_serve_aio_minimal(upstream_port))
    elif kind == "sync-minimal":
        _serve_sync_minimal(upstream_port)
    elif kind == "tcp-relay":
        import uvloop

        uvloop.run(_serve_tcp_relay(upstream_port))
    else:
        raise SystemExit(f"unknown server kind {kind!r}")


# --- the client side ------------------------------------------------------------------------------------------

@dataclass
class Target:
    name: str
    port: int
    pid: int  # the process whose CPU time is charged to the target (the upstream for `direct`)


@dataclass
class Measurement:
    latencies_us: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0
    calls: int = 0
    throughput: list[float] = field(default_factory=list)

    def p(self, fraction: float) -> float:
        ordered = sorted(self.latencies_us)
        return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def server_process(kind: str, upstream_port: int = 0, env: dict[str, str] | None = None) -> Iterator[Target]:
    process = subprocess.Popen([sys.executable, __file__, "serve", kind, str(upstream_port)], stdout=subprocess.PIPE,
                               text=True, env={**os.environ, **(env or {})})
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"{kind} server did not start (exit code {process.poll()})")
        yield Target(kind, int(line.split()[1]), process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def latency_round(target: Target, request: bytes, seconds: float, into: Measurement) -> None:
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{target.port}") as channel:
        call = channel.unary_unary(PREDICT)
        warm_until = time.perf_counter() + min(0.3, seconds / 4)
        while time.perf_counter() < warm_until:
            call(request, timeout=10)
        cpu_before = cpu_seconds(target.pid)
        end = time.perf_counter() + seconds
        latencies = into.latencies_us
        calls = 0
        while True:
            started = time.perf_counter_ns()
            call(request, timeout=10)
            finished = time.perf_counter_ns()
            latencies.append((finished - started) / 1000)
            calls += 1
            if finished / 1e9 >= end:
                break
        into.cpu_seconds += cpu_seconds(target.pid) - cpu_before
        into.calls += calls


async def _throughput(port: int, request: bytes, seconds: float, concurrency: int) -> float:
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(PREDICT)
        await asyncio.gather(*(call(request, timeout=10) for _ in range(concurrency * 4)))  # warm up
        count = 0
        end = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal count
            while time.perf_counter() < end:
                await call(request, timeout=10)
                count += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return count / (time.perf_counter() - started)


def check_answers(targets: list[Target], request: bytes, answer: bytes) -> None:
    import grpc

    for target in targets:
        with grpc.insecure_channel(f"127.0.0.1:{target.port}") as channel:
            got = channel.unary_unary(PREDICT)(request, timeout=10)
        if got != answer:
            raise RuntimeError(f"{target.name} answered different bytes than the upstream")


def run(names: list[str], duration: float, rounds: int) -> dict[str, Measurement]:
    request, answer = predict_messages()
    results = {name: Measurement() for name in names}
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(server_process("upstream"))
        targets = []
        for name in names:
            if name == "direct":
                targets.append(Target("direct", upstream.port, upstream.pid))
            else:
                env = {"GRPC_EXPERIMENTS": EE_OFF} if name == "sidecar-ee-off" else None
                targets.append(stack.enter_context(server_process(name, upstream.port, env)))
        check_answers(targets, request, answer)
        share = duration / rounds
        for round_index in range(rounds):
            for target in targets:
                latency_round(target, request, share, results[target.name])
                rate = asyncio.run(_throughput(target.port, request, share, THROUGHPUT_CONCURRENCY))
                results[target.name].throughput.append(rate)
            print(f"  round {round_index + 1}/{rounds} done", file=sys.stderr, flush=True)
    return results


def table(results: dict[str, Measurement]) -> str:
    direct = results.get("direct")
    base = direct.p(0.5) if direct else float("nan")
    lines = ["| target | p50 us (c=1) | p99 us (c=1) | added p50 us | throughput req/s (c=16) | CPU us/call |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, measured in results.items():
        p50 = measured.p(0.5)
        added = "-" if name == "direct" else f"{p50 - base:+.0f}"
        cpu = measured.cpu_seconds / measured.calls * 1e6 if measured.calls else float("nan")
        lines.append(f"| {name} | {p50:.0f} | {measured.p(0.99):.0f} | {added} | "
                     f"{statistics.median(measured.throughput):.0f} | {cpu:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds per target and concurrency level, split over the rounds (default 10)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--targets", default=",".join(ALL_TARGETS),
                        help=f"comma-separated subset of {', '.join(ALL_TARGETS)} (direct is always included)")
    args = parser.parse_args()
    names = ["direct", *(name for name in args.targets.split(",") if name and name != "direct")]
    unknown = set(names) - set(ALL_TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    results = run(names, args.duration, max(1, args.rounds))
    load = os.getloadavg()[0]
    print(f"## gRPC proxy benchmark ({os.cpu_count()} CPUs, load average {load:.2f}, {args.duration:g}s per target "
          f"and level in {args.rounds} rounds; CPU us/call: the forwarding process, the upstream for direct; "
          f"{idle_note()})\n")
    print(table(results))
    print()
    direct = results["direct"]
    for name, engine in ENGINE_TARGETS:
        if name not in results:
            continue
        measured = results[name]
        added = measured.p(0.5) - direct.p(0.5)
        verdict = "met" if added <= TARGET_ADDED_P50_US else "NOT met"
        throughput = statistics.median(measured.throughput) / statistics.median(direct.throughput)
        print(f"- {name} ({engine}) added p50 at c=1: **{added:.0f} us** (target <= {TARGET_ADDED_P50_US:.0f} us: "
              f"{verdict}); p50 ratio {measured.p(0.5) / direct.p(0.5):.2f}x direct; throughput at "
              f"c={THROUGHPUT_CONCURRENCY} {throughput:.2f}x direct")
    if "sidecar" in results and "sidecar-h2" in results:
        h2, aio = results["sidecar-h2"], results["sidecar"]
        print(f"- h2 relay vs grpc.aio engine: p50 at c=1 {h2.p(0.5) - aio.p(0.5):+.0f} us, throughput at "
              f"c={THROUGHPUT_CONCURRENCY} {statistics.median(h2.throughput) / statistics.median(aio.throughput):.2f}x")
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0)
    else:
        sys.exit(main())
