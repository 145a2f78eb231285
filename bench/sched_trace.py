"""How long the proxy's event loop waited for a CPU, and what ran instead: a Linux scheduler trace of `sidecar run`.

    sudo .venv/bin/python bench/sched_trace.py [--duration 4] [--connections 4] [--analysis on,off]

The same load as bench/bench_analysis_load.py (nginx upstream, wrk with paced connections, the analysis worker
saturated when analysis is on). While wrk runs, the kernel's sched_switch and sched_wakeup events are recorded in
a tracefs instance of their own. From them, every interval in which the event loop's thread was runnable but not
running (from its wakeup or its preemption to its next switch-in) is a wait; each wait is charged to what ran on
its CPU meanwhile: the analysis worker, another thread of the sidecar (the store's writer, ...), `idle` (the vCPU
was halted and had to be woken: a VM exit), or another process by name.

Unlike a latency percentile, this does not depend on how noisy the machine is: the analysis's share of the loop's
waits is what the analysis itself cost the proxy. Needs root and tracefs (/sys/kernel/tracing), wrk and nginx.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import re
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_analysis_load as load  # noqa: E402
import bench_rest  # noqa: E402

TRACEFS = Path("/sys/kernel/tracing")
EVENTS = ("sched/sched_switch", "sched/sched_wakeup")
LINE = re.compile(r"^\s*.+?-\d+\s+\[(\d+)\] \S+ (\d+\.\d+): (sched_switch|sched_wakeup): (.*)$")
SWITCH = re.compile(r"prev_pid=(\d+) .*?prev_state=(\S+) ==> next_comm=(.*?) next_pid=(\d+)")
WAKEUP = re.compile(r" pid=(\d+) .*?target_cpu=(\d+)")


@contextlib.contextmanager
def trace_instance(name: str, buffer_kb: int = 65536) -> Iterator[Path]:
    """A tracefs instance recording the scheduler events (removed afterwards)."""
    instance = TRACEFS / "instances" / name
    instance.mkdir()
    try:
        (instance / "buffer_size_kb").write_text(str(buffer_kb))
        for event in EVENTS:
            (instance / "events" / event / "enable").write_text("1")
        (instance / "tracing_on").write_text("0")
        yield instance
    finally:
        (instance / "tracing_on").write_text("0")
        instance.rmdir()


@dataclass
class Waits:
    """The loop thread's waits for a CPU, and what ran on that CPU meanwhile (seconds per culprit)."""

    durations: list[float] = field(default_factory=list)
    charged: Counter[str] = field(default_factory=Counter)
    long_charged: Counter[str] = field(default_factory=Counter)  # within waits above the threshold


def parse(text: str, loop: int, names: dict[int, str], threshold: float) -> Waits:
    """Waits of thread `loop`; `names` labels known thread ids (others are labelled by their command name)."""
    running: dict[int, list[tuple[float, str]]] = defaultdict(list)  # cpu -> [(since, who)]
    spans: list[tuple[float, float, int]] = []
    since: tuple[float, int] | None = None
    for line in text.splitlines():
        match = LINE.match(line)
        if match is None:
            continue
        cpu, stamp, event, detail = int(match.group(1)), float(match.group(2)), match.group(3), match.group(4)
        if event == "sched_wakeup":
            woken = WAKEUP.search(detail)
            if woken and int(woken.group(1)) == loop and since is None:
                since = (stamp, int(woken.group(2)))
            continue
        switch = SWITCH.search(detail)
        if switch is None:
            continue
        previous, state, command, following = (int(switch.group(1)), switch.group(2), switch.group(3),
                                               int(switch.group(4)))
        running[cpu].append((stamp, "idle" if following == 0 else names.get(following, command)))
        if previous == loop and state.startswith("R"):
            since = (stamp, cpu)
        if following == loop and since is not None:
            spans.append((since[0], stamp, since[1]))
            since = None
    waits = Waits()
    for start, end, cpu in spans:
        waits.durations.append(end - start)
        timeline = running[cpu]
        index = max(0, bisect.bisect_right(timeline, (start, "\uffff")) - 1)
        while index < len(timeline) and timeline[index][0] < end:
            stop = timeline[index + 1][0] if index + 1 < len(timeline) else end
            overlap = min(stop, end) - max(timeline[index][0], start)
            who = timeline[index][1]
            if overlap > 0 and who != "event loop":
                waits.charged[who] += overlap
                if end - start > threshold:
                    waits.long_charged[who] += overlap
            index += 1
    return waits


def sidecar_threads(pid: int) -> dict[int, str]:
    """Labels for the sidecar's own threads and its analysis workers (children of any of its threads)."""
    names = {pid: "event loop"}
    for task in Path(f"/proc/{pid}/task").iterdir():
        tid = int(task.name)
        if tid != pid:
            names[tid] = "sidecar thread"
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                names[int(child)] = "analysis worker"
    return names


def trace_once(mode: str, connections: int, seconds: float, threshold: float) -> tuple[Waits, bench_rest.Result]:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        script = load.wrk_script(directory, 1)
        with bench_rest.nginx_upstream(directory) as (upstream, _), \
                load.sidecar(directory / "run", upstream, mode == "on", "1.0") as (port, _admin, pid):
            bench_rest.run_wrk(script, port, connections, 3)  # warm-up: reference collected, worker busy
            names = sidecar_threads(pid)
            results: list[bench_rest.Result] = []
            target = bench_rest.Target(f"analysis {mode}", port, pid)
            wrk = threading.Thread(target=lambda: results.extend(
                bench_rest.measure(target, script, [connections], seconds + 3, warmup=0)))
            with trace_instance(f"sidecar-bench-{pid}") as instance:
                wrk.start()
                time.sleep(1.5)
                (instance / "trace").write_text("")
                (instance / "tracing_on").write_text("1")
                time.sleep(seconds)
                (instance / "tracing_on").write_text("0")
                text = (instance / "trace").read_text()
                wrk.join()
    return parse(text, pid, names, threshold), results[0]


def report(mode: str, waits: Waits, result: bench_rest.Result, seconds: float, threshold: float) -> str:
    durations = sorted(waits.durations)

    def quantile(q: float) -> float:
        return durations[min(len(durations) - 1, int(q * len(durations)))] * 1e6 if durations else 0.0

    long_waits = [d for d in durations if d > threshold]
    lines = [f"analysis {mode}: wrk p99 {result.p99_ms:.3f} ms over {result.requests} requests; "
             f"{len(durations)} waits for a CPU in {seconds:g} s, p50 {quantile(0.5):.0f} us, "
             f"p99 {quantile(0.99):.0f} us, p99.9 {quantile(0.999):.0f} us, "
             f"max {durations[-1] * 1e6 if durations else 0:.0f} us; {len(long_waits)} waits over "
             f"{threshold * 1e6:.0f} us, {sum(long_waits) * 1e3:.2f} ms in all",
             "| ran meanwhile | in all waits (ms) | in waits over the threshold (ms) |", "|---|---:|---:|"]
    for who, spent in waits.charged.most_common(8):
        lines.append(f"| {who} | {spent * 1e3:.2f} | {waits.long_charged[who] * 1e3:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds traced per mode")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--analysis", default="on,off", help="modes to trace, in order")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threshold-us", type=float, default=100.0)
    args = parser.parse_args()
    if not (TRACEFS / "instances").is_dir():
        print(f"needs tracefs at {TRACEFS} (and root)", file=sys.stderr)
        return 2
    threshold = args.threshold_us * 1e-6
    for round_index in range(args.rounds):
        for mode in args.analysis.split(","):
            waits, result = trace_once(mode, args.connections, args.duration, threshold)
            print(f"round {round_index + 1}, " + report(mode, waits, result, args.duration, threshold) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
