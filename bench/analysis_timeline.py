"""Where the proxy's slowest requests come from with the analysis on: a timeline of the main process's work.

    python bench/analysis_timeline.py [--connections 4] [--duration 8] [--analysis on|off] [--mmd-permutations N]

Runs `sidecar run` as bench_analysis_load.py does (nginx upstream, wrk pausing 1 ms between a connection's
requests, one saturated worker), but through this file, which wraps a few main-process functions with timers
before the sidecar starts. Recorded: each answered REST request's time inside the process (first byte parsed to
answer written), the garbage collector's passes per generation, handing batches to the workers, reading worker
results and applying each message, the predictions hook and its event-loop half, and the store writer's flushes.
It prints percentiles of the in-process time, each event's count and duration, and, for the requests slower than
the in-process p99, how many overlapped each kind of event (or none).

A diagnostic, not a benchmark: the timers cost a little themselves, and wrk's latency also holds what happens
outside the process (the kernel waking threads on busy vCPUs), which no timer here sees. The spawned workers import
this file as their main module under another name, so the timers stay in the main process.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import threading
import time
from array import array
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

TIMELINE_FILE = "SIDECAR_TIMELINE_FILE"
NEAR_SECONDS = 0.0002  # an event that ended this shortly before a request began still counts as overlapping it


def _instrument(path: str) -> None:
    """Wrap the functions the timeline records; write the records to `path` when `path`.request appears (only
    then: writing them holds the GIL for milliseconds, and their tuples would set off collections)."""
    from sidecar.analysis.pool import AnalysisPool
    from sidecar.feedback.api import FeedbackService
    from sidecar.feedback.threads import StoreThread
    from sidecar.proxy.rest.connection import RestClientConnection

    clock = time.perf_counter
    events: list[tuple[str, float, float]] = []
    starts, stops = array("d"), array("d")  # not a tuple per request: those would set off collections themselves

    def timed(owner: Any, attribute: str, name: str) -> None:
        function = getattr(owner, attribute)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                return function(*args, **kwargs)
            finally:
                events.append((name, started, clock()))

        setattr(owner, attribute, wrapper)

    timed(AnalysisPool, "_publish_all", "hand batches to the workers")
    timed(AnalysisPool, "_on_results", "read results")
    timed(AnalysisPool, "_apply_frame", "apply a result message")
    timed(FeedbackService, "add_stored", "predictions hook")
    timed(FeedbackService, "_accept", "predictions on loop")
    timed(StoreThread, "_flush", "store flush")
    respond = RestClientConnection.respond

    def responding(self: RestClientConnection, request: Any, head: bytes, body: bytes, keep_alive: bool) -> None:
        starts.append(request.started)
        stops.append(clock())
        respond(self, request, head, body, keep_alive)

    RestClientConnection.respond = responding  # type: ignore[method-assign]
    collecting: dict[str, float] = {}

    def collector(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collecting["started"] = clock()
        else:
            events.append((f"gc gen{info['generation']}", collecting.get("started", clock()), clock()))

    gc.callbacks.append(collector)

    def dump() -> None:
        request = Path(path + ".request")
        while True:
            time.sleep(0.1)
            if not request.exists():
                continue
            Path(path + ".tmp").write_text(json.dumps({"events": events, "starts": list(starts),
                                                       "stops": list(stops)}))
            request.unlink()
            os.replace(path + ".tmp", path)

    threading.Thread(target=dump, name="timeline-dump", daemon=True).start()


def report(timeline: dict[str, Any], begin: float, end: float) -> str:
    requests = [(start, stop) for start, stop in zip(timeline["starts"], timeline["stops"], strict=True)
                if begin <= start <= end]
    events = [(name, start, stop) for name, start, stop in timeline["events"] if begin <= start <= end]
    if not requests:
        return "no requests recorded"
    took = sorted(stop - start for start, stop in requests)

    def percentile(values: list[float], fraction: float) -> float:
        return values[min(len(values) - 1, int(len(values) * fraction))] * 1e6

    lines = [f"{len(took)} requests; time inside the process: p50 {percentile(took, 0.5):.0f} us, "
             f"p99 {percentile(took, 0.99):.0f} us, p99.9 {percentile(took, 0.999):.0f} us", "",
             "| event | count | p50 us | max us | total ms |", "|---|---:|---:|---:|---:|"]
    durations: dict[str, list[float]] = defaultdict(list)
    for name, start, stop in events:
        durations[name].append(stop - start)
    for name, values in sorted(durations.items()):
        values.sort()
        lines.append(f"| {name} | {len(values)} | {percentile(values, 0.5):.0f} | {values[-1] * 1e6:.0f} "
                     f"| {sum(values) * 1e3:.1f} |")
    threshold = took[min(len(took) - 1, int(len(took) * 0.99))]
    slow = [(start, stop) for start, stop in requests if stop - start >= threshold]
    overlaps: Counter[str] = Counter()
    for start, stop in slow:
        names = {name for name, event_start, event_stop in events
                 if event_start < stop and event_stop > start - NEAR_SECONDS}
        overlaps.update(names or {"(none)"})
    lines += ["", f"{len(slow)} requests at or above the in-process p99 ({threshold * 1e6:.0f} us) overlapped: "
              + ", ".join(f"{name} {count}" for name, count in overlaps.most_common())]
    return "\n".join(lines)


def measure(args: argparse.Namespace) -> str:
    import bench_analysis_load
    import bench_rest

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        timeline_file = directory / "timeline.json"
        os.environ[TIMELINE_FILE] = str(timeline_file)
        script = bench_analysis_load.wrk_script(directory, 1)
        with bench_rest.nginx_upstream(directory) as (upstream_port, _), bench_analysis_load.sidecar(
                directory, upstream_port, args.analysis == "on", "1.0", permutations=args.mmd_permutations,
                launcher=[__file__]) as (port, _, _):
            bench_rest.run_wrk(script, port, 4, 3)  # warm-up: reference collected, workers busy
            begin = time.perf_counter()
            requests, _, p50, p99, _ = bench_rest.run_wrk(script, port, args.connections, args.duration)
            end = time.perf_counter()
            request = Path(f"{timeline_file}.request")
            request.touch()
            deadline = time.monotonic() + 30
            while request.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            timeline = json.loads(timeline_file.read_text())
    return (f"analysis {args.analysis}, {args.connections} connections, {args.duration:g} s: wrk saw {requests} "
            f"requests, p50 {p50:.3f} ms, p99 {p99:.3f} ms; {bench_rest.idle_note()}\n\n"
            + report(timeline, begin, end))


def main(argv: list[str]) -> int:
    if argv[:1] == ["run"]:  # the instrumented sidecar
        _instrument(os.environ[TIMELINE_FILE])
        from sidecar.__main__ import main as sidecar_main

        return sidecar_main(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--analysis", choices=("on", "off"), default="on")
    parser.add_argument("--mmd-permutations", type=int, default=10_000)
    print(measure(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
