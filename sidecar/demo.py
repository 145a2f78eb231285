"""`sidecar demo`: the testbed model server, the sidecar in front of it, and traffic a user can watch.

Phases (by share of `--traffic`): 0-45% stable inputs with feedback ~90% correct; 45-100% inputs shifted by
1.5 standard deviations on one feature, 2% injected outliers, feedback ~40% correct. Ground truth is simulated
from the model's own answers (correct with the phase's probability), so accuracy moves exactly as announced.
After the traffic the sidecar and the testbed keep serving, so the links stay alive, until Ctrl-C; `--duration`
ends the whole demo after that many seconds instead (and sets the traffic to the same length unless given).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from sidecar.config import from_mapping
from sidecar.telemetry.tracing import disabled

MODEL = "classifier"
FEATURES = 4
CLASSES = 3


@dataclass
class Tally:
    requests: int = 0
    errors: int = 0
    instances: int = 0
    feedback: int = 0
    grpc_requests: int = 0
    latencies: list[float] = field(default_factory=list)

    def p50_ms(self) -> float:
        recent = sorted(self.latencies[-500:])
        return 1000 * recent[len(recent) // 2] if recent else 0.0


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sidecar demo", description=__doc__)
    parser.add_argument("--traffic", type=float, default=None, help="seconds of traffic (default 60, or --duration)")
    parser.add_argument("--duration", type=float, default=None,
                        help="end the demo after this many seconds (default: keep serving until Ctrl-C)")
    parser.add_argument("--testbed-rest-port", type=int, default=0, help="the testbed's REST port (default: free)")
    parser.add_argument("--testbed-grpc-port", type=int, default=0, help="the testbed's gRPC port (default: free)")
    parser.add_argument("--rate", type=float, default=40.0, help="predict requests per second (default 40)")
    parser.add_argument("--batch", type=int, default=10, help="instances per request (default 10)")
    parser.add_argument("--listen-rest", default="127.0.0.1:8501")
    parser.add_argument("--listen-grpc", default="127.0.0.1:8500")
    parser.add_argument("--listen-admin", default="127.0.0.1:8508")
    parser.add_argument("--state-dir", default=None, help="state directory (default: a temporary one)")
    parser.add_argument("--reference-size", type=int, default=500)
    parser.add_argument("--window-size", type=int, default=500)
    args = parser.parse_args(list(argv))
    if args.traffic is None:
        args.traffic = args.duration if args.duration is not None else 60.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    from sidecar.runtime import configure_logging, install_fast_loop

    configure_logging("warning")
    install_fast_loop()
    try:
        asyncio.run(_demo(args))
    except KeyboardInterrupt:
        pass
    except DemoError as exc:
        print(f"sidecar demo: {exc}", file=sys.stderr)
        return 1
    return 0


class DemoError(RuntimeError):
    pass


def start_testbed(rest_port: int = 0, grpc_port: int = 0) -> tuple[subprocess.Popen[str], int, int]:
    print("starting the testbed model server (TensorFlow import and model training take a few seconds)...",
          flush=True)
    log = tempfile.TemporaryFile()  # noqa: SIM115 - kept open for the testbed's lifetime
    process = subprocess.Popen([sys.executable, "-m", "sidecar.testbed.cli", "--rest-port", str(rest_port),
                                "--grpc-port", str(grpc_port)],
                               stdout=subprocess.PIPE, stderr=log, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert process.stdout is not None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("TESTBED READY"):
            parts = dict(item.split("=") for item in line.split()[2:])
            return process, int(parts["rest"]), int(parts["grpc"])
    process.kill()
    log.seek(0)
    tail = log.read().decode(errors="replace").strip().splitlines()[-5:]
    raise DemoError("the testbed did not start:\n  " + "\n  ".join(tail))


async def _demo(args: argparse.Namespace) -> None:
    testbed, rest_port, grpc_port = start_testbed(args.testbed_rest_port, args.testbed_grpc_port)
    state = tempfile.TemporaryDirectory(prefix="sidecar-demo-") if args.state_dir is None else None
    settings = from_mapping({
        "upstream_rest": f"http://127.0.0.1:{rest_port}", "upstream_grpc": f"127.0.0.1:{grpc_port}",
        "listen_rest": args.listen_rest, "listen_grpc": args.listen_grpc, "listen_admin": args.listen_admin,
        "state_dir": args.state_dir or (state.name if state else "."),
        "reference_size": args.reference_size, "window_size": args.window_size,
    })
    from sidecar.app import Sidecar

    sidecar = Sidecar(settings, tracing=disabled())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await sidecar.start()
        base = f"http://127.0.0.1:{sidecar.rest_port}"
        admin = f"http://127.0.0.1:{sidecar.admin_port}"
        print(f"sidecar up: REST {base}  gRPC 127.0.0.1:{sidecar.grpc_port}  metrics {admin}/metrics  "
              f"drill-down {admin}/v1/monitor/{MODEL}  (testbed: REST 127.0.0.1:{rest_port}, gRPC "
              f"127.0.0.1:{grpc_port})", flush=True)
        print(f"monitoring page: {admin}/  (open it in a browser: the models, drift, outliers and quality, live)",
              flush=True)
        tally = Tally()
        started = loop.time()
        async with aiohttp.ClientSession() as session:
            await _traffic(session, base, admin, args, tally, stop, f"127.0.0.1:{sidecar.grpc_port}")
            await asyncio.sleep(1.0)
            await _summary(session, admin, tally)
        if not stop.is_set():
            left = None if args.duration is None else max(0.0, args.duration - (loop.time() - started))
            print("traffic done; the sidecar and the testbed keep serving at the links above "
                  + ("until Ctrl-C" if left is None else f"for {left:.0f} s more"), flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), left)
    finally:
        await sidecar.stop()
        testbed.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            testbed.wait(timeout=10)
        if state is not None:
            state.cleanup()
        print("stopped cleanly.", flush=True)


def _instance(rng: random.Random, shifted: bool) -> list[float]:
    row = [rng.gauss(0.0, 1.0) for _ in range(FEATURES)]
    if shifted:
        row[0] += 1.5
        if rng.random() < 0.02:
            row = [value * 10 + 12 for value in row]
    return row


async def _traffic(session: aiohttp.ClientSession, base: str, admin: str, args: argparse.Namespace, tally: Tally,
                   stop: asyncio.Event, grpc_target: str | None = None) -> None:
    rng = random.Random(7)
    grpc_call = _grpc_predict_call(grpc_target) if grpc_target else None
    started = time.monotonic()
    next_report = started + 1.0
    interval = 1.0 / args.rate
    while not stop.is_set():
        elapsed = time.monotonic() - started
        if elapsed >= args.traffic:
            break
        shifted = elapsed >= 0.45 * args.traffic
        rows = [_instance(rng, shifted) for _ in range(args.batch)]
        await _predict_and_feedback(session, base, rows, 0.4 if shifted else 0.9, rng, tally)
        if grpc_call is not None and tally.requests % 4 == 0:
            await _grpc_predict(grpc_call, rows, tally)
        if time.monotonic() >= next_report:
            next_report += 1.0
            await _progress(session, admin, elapsed, shifted, tally)
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started - elapsed)))


def _grpc_predict_call(target: str) -> Any:
    """A raw-bytes Predict call on the tensorflow.serving API (the official client sends the same bytes)."""
    import grpc

    channel = grpc.aio.insecure_channel(target)
    return channel.unary_unary("/tensorflow.serving.PredictionService/Predict")


async def _grpc_predict(call: Any, rows: list[list[float]], tally: Tally) -> None:
    from sidecar._proto import tf_pb2, tfs_pb2

    request = tfs_pb2.PredictRequest()
    request.model_spec.name = "regressor"
    tensor = request.inputs["features"]
    tensor.dtype = tf_pb2.DT_FLOAT
    tensor.tensor_shape.dim.add(size=len(rows))
    tensor.tensor_shape.dim.add(size=FEATURES)
    tensor.float_val.extend(value for row in rows for value in row)
    try:
        await call(request.SerializeToString(), timeout=10)
        tally.grpc_requests += 1
    except Exception:
        tally.errors += 1


async def _predict_and_feedback(session: aiohttp.ClientSession, base: str, rows: list[list[float]],
                                accuracy: float, rng: random.Random, tally: Tally) -> None:
    t0 = time.perf_counter()
    try:
        async with session.post(f"{base}/v1/models/{MODEL}:predict", json={"instances": rows}) as response:
            body = await response.json(content_type=None)
            prediction_id = response.headers.get("X-Prediction-Id", "")
            ok = response.status == 200
    except aiohttp.ClientError:
        tally.errors += 1
        return
    tally.latencies.append(time.perf_counter() - t0)
    tally.requests += 1
    if not ok:
        tally.errors += 1
        return
    tally.instances += len(rows)
    predicted = [_argmax(probs) for probs in body["predictions"]]
    truth = [p if rng.random() < accuracy else rng.choice([k for k in range(CLASSES) if k != p]) for p in predicted]
    with contextlib.suppress(aiohttp.ClientError):
        async with session.post(f"{base}/v1/feedback", json={"prediction_id": prediction_id, "truth": truth}) as fb:
            if fb.status == 200:
                tally.feedback += len(truth)


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


async def _metrics(session: aiohttp.ClientSession, admin: str) -> dict[str, float]:
    """Scrape /metrics like Prometheus would and keep the series the demo talks about."""
    async with session.get(f"{admin}/metrics") as response:
        text = await response.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or (f'model="{MODEL}"' not in line and "capture" not in line):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            values[name] = float(value)
    return values


def _pick(values: dict[str, float], prefix: str, *needles: str) -> float | None:
    for name, value in values.items():
        if name.startswith(prefix) and all(needle in name for needle in needles):
            return value
    return None


async def _progress(session: aiohttp.ClientSession, admin: str, elapsed: float, shifted: bool, tally: Tally) -> None:
    values = await _metrics(session, admin)
    drift = _pick(values, "sidecar_drift_detected", 'detector="feature_drift"')
    accuracy = _pick(values, "sidecar_quality_accuracy")
    outliers = _pick(values, "sidecar_outliers_total")
    phase = "shifted" if shifted else "stable "
    print(f"[{elapsed:5.1f}s] {phase} rest={tally.requests} grpc={tally.grpc_requests} instances={tally.instances} "
          f"p50={tally.p50_ms():.1f}ms feedback={tally.feedback} "
          f"drift={'-' if drift is None else int(drift)} outliers={'-' if outliers is None else int(outliers)} "
          f"accuracy={'-' if accuracy is None else f'{accuracy:.2f}'}", flush=True)


async def _summary(session: aiohttp.ClientSession, admin: str, tally: Tally) -> None:
    values = await _metrics(session, admin)
    async with session.get(f"{admin}/v1/monitor/{MODEL}") as response:
        monitor: dict[str, Any] = await response.json() if response.status == 200 else {}
    print("\nsummary")
    print(f"  REST requests: {tally.requests}, gRPC requests: {tally.grpc_requests} ({tally.errors} errors), "
          f"classifier instances: {tally.instances}, "
          f"feedback instances: {tally.feedback}")
    for name, value in sorted(values.items()):
        if name.startswith(("sidecar_drift_detected", "sidecar_drift_checks_total", "sidecar_outliers_total",
                            "sidecar_quality_accuracy", "sidecar_reference_instances", "sidecar_capture_dropped")):
            print(f"  {name} = {value:g}")
    detectors = monitor.get("detectors") or {}
    if isinstance(detectors, dict):
        for detector, window in detectors.items():
            if isinstance(window, dict):
                print(f"  latest window, {detector}: drift={window.get('drift')} p={window.get('p_value')}")
    print(json.dumps({"drill_down": f"{admin}/v1/monitor/{MODEL}", "monitoring_page": f"{admin}/"}))
