"""Analysis throughput per worker and detection rates on wide inputs (images as raw tensors, PNG and JPEG).

Runs one worker's analysis in this process: `AnalysisState.process` on TF Serving REST capture records, exactly
what an analysis worker does with a batch (decode, reference, windows, detectors), with the worker's own process
setup (single-threaded BLAS, glibc heap pad). No proxy, no ring, no pipes.

1. Throughput. Synthetic scenes (`sidecar.testbed.images.scenes`) sent as `{"instances": [...]}` rows of raw float
   tensors at 64 (8x8x1), 784 (28x28x1) and 3,072 (32x32x3) features, and at 3,072 as `{"b64": ...}` PNG and JPEG
   instances (the single-input row format; decoding the images is part of the cost). Default analysis settings
   (reference 1000, tumbling windows of 1000). After the reference is complete, each window's instances are fed
   in `--records-per-call` records of `--per-request` instances; per window: instances per second of wall
   (`perf_counter`) and CPU (`process_time`) time over its calls, the time of the call that closes it, and the
   detectors' own `duration` fields (feature/output drift of the window, Mahalanobis over its calls). Medians over
   `--throughput-windows` windows; ratios against the 64-feature case of the same run. Request bodies are built
   outside the timed calls. The call that completes the reference (fits the projection, builds the detectors,
   saves the reference) is shown apart.

2. Detection at default settings (`AnalysisSettings()`) on 32x32x3 scenes, raw floats, b64 PNG and b64 JPEG: for
   each of `--windows` trials, a fresh worker state whose reference is 1000 clean scenes, then one 1000-instance
   window each of clean scenes, Gaussian noise (sd `--noise`, 0.08) and the lower half brighter by each
   `--brightness` amount (0.1 and 0.05), all from other seeds. Per case: windows flagged by `feature_drift` and the
   Mahalanobis outlier rate (outliers / instances of its `OutlierBatch`es; the threshold targets 1% on clean data).
   The project's goal: noise and half-brightness flagged in every window, clean windows never.

    .venv/bin/python bench/bench_wide_inputs.py                 # throughput (5 windows per case) and detection (5)
    .venv/bin/python bench/bench_wide_inputs.py --quick         # smoke run: 2 windows per case, 1 detection trial
    .venv/bin/python bench/bench_wide_inputs.py --part detection --windows 20 --json wide.json

Needs Pillow (the `images` extra). Single-threaded by design: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sidecar.worker.process import keep_heap_memory, single_threaded_math

single_threaded_math()  # as a worker does, before numpy loads
HEAP_PAD = keep_heap_memory()

import numpy as np  # noqa: E402

from sidecar.messages.records import API_TFSERVING, PROTOCOL_REST, CaptureRecord  # noqa: E402
from sidecar.messages.results import DriftWindow, ModelError, ModelStatus, OutlierBatch, Result  # noqa: E402
from sidecar.testbed.images import brighter_half, encode, gaussian_noise, scenes  # noqa: E402
from sidecar.worker.settings import AnalysisSettings  # noqa: E402
from sidecar.worker.state import AnalysisState  # noqa: E402

ENCODINGS = ("raw", "png", "jpeg")
CLASSES = 10


@dataclass(frozen=True)
class Shape:
    size: int
    channels: int

    @property
    def features(self) -> int:
        return self.size * self.size * self.channels


THROUGHPUT_CASES: list[tuple[Shape, str]] = [
    (Shape(8, 1), "raw"), (Shape(28, 1), "raw"), (Shape(32, 3), "raw"), (Shape(32, 3), "png"), (Shape(32, 3), "jpeg"),
]


def images(count: int, shape: Shape, seed: int) -> np.ndarray:
    """Scenes of `shape`; one channel is the mean of the three (a greyscale picture of the same scene)."""
    rgb = scenes(count, size=shape.size, seed=seed)
    return rgb if shape.channels == 3 else rgb.mean(axis=3, keepdims=True)


def request_body(batch: np.ndarray, encoding: str, jpeg_quality: int) -> bytes:
    if encoding == "raw":
        return json.dumps({"instances": batch.tolist()}).encode()
    files = encode(batch, "JPEG" if encoding == "jpeg" else "PNG", quality=jpeg_quality)
    return json.dumps({"instances": [{"b64": base64.b64encode(item).decode("ascii")} for item in files]}).encode()


def response_body(count: int, rng: np.random.Generator) -> bytes:
    return json.dumps({"predictions": rng.dirichlet(np.ones(CLASSES), size=count).round(6).tolist()}).encode()


class Feeder:
    """Turns image blocks into capture records and feeds them to one worker state, call by call."""

    def __init__(self, model: str, encoding: str, args: argparse.Namespace, state_dir: Path) -> None:
        self.model = model
        self.encoding = encoding
        self.args = args
        self.state = AnalysisState(0, AnalysisSettings(), state_dir)
        self.rng = np.random.default_rng(zlib.crc32(f"{model}/{encoding}/{state_dir.name}".encode()))  # per trial
        self.sent = 0
        self.problems: list[str] = []

    def calls(self, block: np.ndarray) -> Iterator[tuple[int, list[CaptureRecord]]]:
        """(instances, records) per `process` call; the bodies of a call are built before it is handed out."""
        per_call = self.args.per_request * self.args.records_per_call
        for start in range(0, block.shape[0], per_call):
            records = []
            chunk = block[start:start + per_call]
            for offset in range(0, chunk.shape[0], self.args.per_request):
                part = chunk[offset:offset + self.args.per_request]
                self.sent += 1
                records.append(CaptureRecord(
                    f"{self.model}-{self.sent}", time.time(), self.model, "", "", PROTOCOL_REST, API_TFSERVING,
                    "predict", request_body(part, self.encoding, self.args.jpeg_quality),
                    response_body(part.shape[0], self.rng), 200, 0.001))
            yield chunk.shape[0], records

    def process(self, records: list[CaptureRecord]) -> tuple[list[Result], float, float]:
        """Results, wall and CPU seconds of one `process` call."""
        wall, cpu = time.perf_counter(), time.process_time()
        results, errors, _ = self.state.process(records)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        for (model, protocol, reason), count in errors.items():
            self.problems.append(f"{model}: {count} {protocol} records not decoded ({reason})")
        self.problems.extend(f"{item.model}: ModelError {item.error}" for item in results
                             if isinstance(item, ModelError))
        return results, wall, cpu

    def feed(self, block: np.ndarray) -> tuple[list[Result], list[tuple[int, float, float, list[Result]]]]:
        """All results of feeding `block`, and per call (instances, wall, cpu, results)."""
        everything: list[Result] = []
        calls = []
        for count, records in self.calls(block):
            results, wall, cpu = self.process(records)
            everything.extend(results)
            calls.append((count, wall, cpu, results))
        return everything, calls

    def decisions(self) -> dict[str, Any]:
        model = self.state.models.get(self.model)
        status = model.status() if model is not None else None
        return dict(status.decisions or {}) if isinstance(status, ModelStatus) else {}


def drift_windows(results: list[Result], detector: str | None = None) -> list[DriftWindow]:
    return [item for item in results if isinstance(item, DriftWindow) and detector in (None, item.detector)]


def outlier_batches(results: list[Result]) -> list[OutlierBatch]:
    return [item for item in results if isinstance(item, OutlierBatch) and item.detector == "mahalanobis"]


def layout_note(decisions: dict[str, Any]) -> str:
    layout = decisions.get("layout") or {}
    encodings = {entry.get("encoding") for entry in (decisions.get("inputs") or {}).values()}
    excluded = decisions.get("reference_rows_excluded") or {}
    return (f"{layout.get('mode', '?')}, {layout.get('analysed_columns', '?')} analysed columns, input encoding "
            f"{'/'.join(sorted(str(item) for item in encodings))}, reference rows set aside {excluded}")


# -- throughput ------------------------------------------------------------------------------------------------


@dataclass
class Throughput:
    label: str
    features: int
    encoding: str
    windows: int
    reference_seconds: float  # the call that completed the reference
    instances_per_second: float  # wall, median over windows
    cpu_instances_per_second: float
    closing_call_seconds: float  # median wall of the call that closed a window
    closing_call_cpu_seconds: float
    drift_seconds: float  # median per window: feature_drift + output_drift durations
    outlier_seconds: float  # median per window: Mahalanobis durations summed over the window's calls
    window_wall_seconds: float  # median wall of all calls of a window
    layout: str = ""
    problems: list[str] = field(default_factory=list)
    per_window: list[dict[str, float]] = field(default_factory=list)


def measure_throughput(shape: Shape, encoding: str, args: argparse.Namespace, state_dir: Path) -> Throughput:
    settings = AnalysisSettings()
    label = f"{shape.features} ({shape.size}x{shape.size}x{shape.channels}) {encoding}"
    feeder = Feeder(f"tp-{shape.features}-{encoding}", encoding, args, state_dir)
    _, reference_calls = feeder.feed(images(settings.reference_size, shape, seed=10))
    reference_seconds = reference_calls[-1][1] if reference_calls else 0.0
    rows = []
    for window in range(args.throughput_windows):
        _, calls = feeder.feed(images(settings.window_size, shape, seed=11 + window))
        closing = [call for call in calls if drift_windows(call[3], "feature_drift")]
        if len(closing) != 1 or closing[0] is not calls[-1]:
            feeder.problems.append(f"{label}: window {window}: {len(closing)} calls closed a feature_drift window "
                                   "(expected the last call only)")
        results = [item for call in calls for item in call[3]]
        instances = sum(call[0] for call in calls)
        wall = sum(call[1] for call in calls)
        cpu = sum(call[2] for call in calls)
        last = closing[-1] if closing else calls[-1]
        rows.append({"instances": instances, "wall": wall, "cpu": cpu, "closing_wall": last[1], "closing_cpu": last[2],
                     "drift": sum(item.duration for item in drift_windows(results)),
                     "outliers": sum(item.duration for item in outlier_batches(results))})

    def median(key: str) -> float:
        return statistics.median(row[key] for row in rows)

    return Throughput(label, shape.features, encoding, len(rows), reference_seconds,
                      statistics.median(row["instances"] / row["wall"] for row in rows),
                      statistics.median(row["instances"] / row["cpu"] if row["cpu"] else 0.0 for row in rows),
                      median("closing_wall"), median("closing_cpu"), median("drift"), median("outliers"),
                      median("wall"), layout_note(feeder.decisions()), feeder.problems, rows)


def report_throughput(rows: list[Throughput]) -> None:
    base = rows[0]
    print(f"\n## Throughput per worker (median of {base.windows} window(s) per case; \"vs base\": case / "
          f"{base.label})\n")
    print("| input | inst/s wall | vs base | inst/s CPU | s per window (all calls) | vs base | closing call s (CPU) "
          "| drift detectors s | Mahalanobis s per window | reference-completing call s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row.label} | {row.instances_per_second:,.0f} | "
              f"{row.instances_per_second / base.instances_per_second:.3f} | {row.cpu_instances_per_second:,.0f} | "
              f"{row.window_wall_seconds:.3f} | "
              f"{row.window_wall_seconds / base.window_wall_seconds:.1f}x | {row.closing_call_seconds:.3f} "
              f"({row.closing_call_cpu_seconds:.3f}) | {row.drift_seconds:.4f} | {row.outlier_seconds:.4f} | "
              f"{row.reference_seconds:.3f} |")
    print()
    for row in rows:
        print(f"- {row.label}: {row.layout}")


# -- detection -------------------------------------------------------------------------------------------------


@dataclass
class Detection:
    encoding: str
    case: str
    windows: int = 0
    flagged: int = 0
    instances: int = 0
    outliers: int = 0
    p_values: list[float] = field(default_factory=list)
    output_flagged: int = 0
    missing: int = 0  # windows without a feature_drift verdict

    @property
    def goal(self) -> str:
        if self.windows == 0:
            return "-"
        met = self.flagged == 0 if self.case == "clean" else self.flagged == self.windows
        return "yes" if met else "NO"


def detection_cases(args: argparse.Namespace) -> list[str]:
    return ["clean", f"noise sd {args.noise:g}"] + [f"lower half +{amount:g}" for amount in args.brightness]


def corrupted(case: str, base: np.ndarray, args: argparse.Namespace, seed: int) -> np.ndarray:
    if case == "clean":
        return base
    if case.startswith("noise"):
        return gaussian_noise(base, args.noise, seed=seed)
    return brighter_half(base, float(case.rsplit("+", 1)[1]))


def measure_detection(args: argparse.Namespace, state_root: Path) -> tuple[list[Detection], list[str], dict[str, str]]:
    settings = AnalysisSettings()
    shape = Shape(32, 3)
    cases = detection_cases(args)
    table = {(encoding, case): Detection(encoding, case) for encoding in ENCODINGS for case in cases}
    problems: list[str] = []
    layouts: dict[str, str] = {}
    for trial in range(args.windows):
        seed = 1000 + 100 * trial
        reference = images(settings.reference_size, shape, seed=seed)
        windows = {case: corrupted(case, images(settings.window_size, shape, seed=seed + 1 + index), args, seed + 50)
                   for index, case in enumerate(cases)}
        for encoding in ENCODINGS:
            directory = state_root / f"detect-{trial}-{encoding}"
            feeder = Feeder(f"det-{encoding}", encoding, args, directory)
            feeder.feed(reference)
            layouts.setdefault(encoding, layout_note(feeder.decisions()))
            for case in cases:
                results, _ = feeder.feed(windows[case])
                entry = table[(encoding, case)]
                verdicts = drift_windows(results, "feature_drift")
                entry.windows += 1
                if len(verdicts) != 1:
                    entry.missing += 1
                    problems.append(f"trial {trial} {encoding} {case}: {len(verdicts)} feature_drift verdicts")
                entry.flagged += int(any(item.drift for item in verdicts))
                entry.p_values.extend(item.p_value for item in verdicts)
                entry.output_flagged += int(any(item.drift for item in drift_windows(results, "output_drift")))
                batches = outlier_batches(results)
                entry.instances += sum(item.instances for item in batches)
                entry.outliers += sum(item.outliers for item in batches)
            problems.extend(f"trial {trial}: {problem}" for problem in feeder.problems)
    return list(table.values()), problems, layouts


def report_detection(rows: list[Detection], args: argparse.Namespace, layouts: dict[str, str]) -> None:
    print(f"\n## Detection at default settings, 32x32x3 scenes ({args.windows} window(s) per case, a fresh "
          "1000-scene reference per window)\n")
    print("| input | case | feature_drift flagged / windows | goal met | median p-value | Mahalanobis outlier rate "
          "| output_drift flagged |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        rate = row.outliers / row.instances if row.instances else float("nan")
        p_value = statistics.median(row.p_values) if row.p_values else float("nan")
        print(f"| {row.encoding} | {row.case} | {row.flagged} / {row.windows} | {row.goal} | {p_value:.3g} | "
              f"{rate:.1%} ({row.outliers}/{row.instances}) | {row.output_flagged} |")
    print("\ngoal: noise and half-brightness flagged in every window, clean windows never; the Mahalanobis "
          f"threshold targets {AnalysisSettings().outlier_fpr:.0%} outliers on clean data.")
    for encoding, note in layouts.items():
        print(f"- {encoding}: {note}")


# -- main ------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["all", "throughput", "detection"], default="all")
    parser.add_argument("--throughput-windows", type=int, default=5, help="timed windows per throughput case")
    parser.add_argument("--windows", type=int, default=5, help="detection trials: windows per case and encoding")
    parser.add_argument("--noise", type=float, default=0.08, help="Gaussian noise sd of the noise case")
    parser.add_argument("--brightness", type=float, nargs="+", default=[0.1, 0.05],
                        help="amounts added to the lower half of the image, one case each")
    parser.add_argument("--per-request", type=int, default=10, help="instances per captured request")
    parser.add_argument("--records-per-call", type=int, default=25, help="records per AnalysisState.process call")
    parser.add_argument("--jpeg-quality", type=int, default=90)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 throughput windows per case, 1 detection window per case")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")
    args = parser.parse_args()
    if args.quick:
        args.throughput_windows = min(args.throughput_windows, 2)
        args.windows = min(args.windows, 1)
    if args.throughput_windows < 1 or args.windows < 1 or args.per_request < 1 or args.records_per_call < 1:
        parser.error("window, request and call counts must be at least 1")

    settings = AnalysisSettings()
    print(f"# Wide inputs: analysis per worker\n\nreference {settings.reference_size}, {settings.window_mode} "
          f"windows of {settings.window_size}, {args.per_request} instances per request, {args.records_per_call} "
          f"records per process call; BLAS single-threaded; heap pad {'set' if HEAP_PAD else 'not set'}"
          f"{'; --quick' if args.quick else ''}")
    out: dict[str, Any] = {"settings": {key: value for key, value in vars(args).items() if key != "json"}}
    out["settings"]["reference_size"] = settings.reference_size
    out["settings"]["window_size"] = settings.window_size
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-wide-") as folder:
        root = Path(folder)
        if args.part in ("all", "throughput"):
            rows = []
            for shape, encoding in THROUGHPUT_CASES:
                started = time.perf_counter()
                rows.append(measure_throughput(shape, encoding, args, root / f"tp-{shape.features}-{encoding}"))
                print(f"  measured {rows[-1].label} in {time.perf_counter() - started:.0f} s", flush=True)
            report_throughput(rows)
            problems.extend(problem for row in rows for problem in row.problems)
            out["throughput"] = [asdict(row) for row in rows]
        if args.part in ("all", "detection"):
            detection, found, layouts = measure_detection(args, root)
            problems.extend(found)
            report_detection(detection, args, layouts)
            out["detection"] = [asdict(row) | {"goal": row.goal} for row in detection]
            out["detection_layouts"] = layouts
    if problems:
        print("\nProblems:")
        for problem in problems:
            print(f"- {problem}")
    out["problems"] = problems
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
