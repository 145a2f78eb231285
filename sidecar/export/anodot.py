"""Anodot metrics 2.0 samples from the Prometheus registry, aggregated into time buckets.

At each bucket boundary the registry is read (`registry.collect()`, families named `sidecar_*` only) and
compared with the previous reading. Mapping, per family type (`what` is the family name without `sidecar_`):

| Prometheus                         | Anodot `what`                  | target_type | value                           |
|------------------------------------|--------------------------------|-------------|---------------------------------|
| counter `x_total`                  | `x`                            | counter     | increase over the bucket        |
| gauge / untyped `x`                | `x`                            | gauge       | value at the bucket's end       |
| histogram `x` (`_count`, `_sum`)   | `x_count`                      | counter     | observations in the bucket      |
|                                    | `x_avg`                        | gauge       | sum increase / count increase   |
|                                    | `x_p50`, `x_p90`, `x_p99`      | gauge       | quantiles of the bucket's own   |
|                                    |                                |             | observations (linear, like      |
|                                    |                                |             | PromQL's histogram_quantile)    |
| summary `x`                        | `x_count`, `x_avg`             | as above    | as above                        |
|                                    | `x_p<q>` per quantile label    | gauge       | value at the bucket's end       |

So request counts and latency, class frequencies, drift p-values and flags, outlier counts and quality
gauges all come out without the exporter knowing them. Averages and quantiles are left out for buckets with
no observations; a counter that went down (a restart) counts its current value as the increase; NaN and
infinite values are skipped. `_created` samples, info and stateset families are not exported.

Properties: `what`, `target_type`, `ver` ("1"), `unit` (seconds / bytes when the name ends so), the static
properties from the settings, then the metric's labels (a label named like one of those gets a `label_`
prefix). Keys and values keep only `[A-Za-z0-9_:-]` (anything else, including the `.`, `=` and space Anodot
forbids, becomes `_`), empty labels are left out (as in Prometheus), keys are cut at 50 and values at 150
characters, and a sample with more than 20 properties is skipped (Anodot would reject it). `timestamp` is the
bucket's start in whole epoch seconds; tags carry `source: tfs-sidecar`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry

PREFIX = "sidecar_"
QUANTILES = (0.5, 0.9, 0.99)
MAX_PROPERTIES = 20
MAX_KEY = 50
MAX_VALUE = 150
TAGS = {"source": ["tfs-sidecar"]}
_RESERVED = ("what", "target_type", "ver", "unit")
_UNSAFE = re.compile(r"[^A-Za-z0-9_:\-]")

Labels = tuple[tuple[str, str], ...]
Sample = dict[str, Any]


class Family(NamedTuple):
    type: str
    values: dict[tuple[str, Labels], float]  # (sample name, sorted labels) -> value


Reading = dict[str, Family]


def read_registry(registry: CollectorRegistry, prefix: str = PREFIX) -> Reading:
    """One reading of every `prefix*` family."""
    reading: Reading = {}
    for metric in registry.collect():
        if not metric.name.startswith(prefix):
            continue
        values: dict[tuple[str, Labels], float] = {}
        for sample in metric.samples:
            if sample.name.endswith("_created"):
                continue
            values[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
        reading[metric.name] = Family(metric.type, values)
    return reading


def clean(text: str, limit: int) -> str:
    return (_UNSAFE.sub("_", text) or "empty")[:limit]


def bucket_name(start: float) -> str:
    """`anodot-<bucket start, ISO 8601 basic, UTC>.json`, e.g. anodot-20240501T120000Z.json."""
    return f"anodot-{datetime.fromtimestamp(int(start), UTC).strftime('%Y%m%dT%H%M%SZ')}.json"


def bucket_start_from_name(name: str) -> float | None:
    match = re.fullmatch(r"anodot-(\d{8}T\d{6}Z)\.json", name)
    if match is None:
        return None
    return datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()


class BucketAggregator:
    """Turns two registry readings into the samples of the bucket between them."""

    def __init__(self, static: Sequence[tuple[str, str]] = ()) -> None:
        self.static = {clean(key, MAX_KEY): clean(value, MAX_VALUE) for key, value in static}
        self.skipped = 0

    def samples(self, previous: Reading, current: Reading, timestamp: int) -> list[Sample]:
        out: list[Sample] = []
        for name, family in sorted(current.items()):
            what = name[len(PREFIX):] if name.startswith(PREFIX) else name
            before = previous.get(name)
            old = before.values if before is not None and before.type == family.type else {}
            if family.type == "counter":
                self._counters(out, what, family.values, old, timestamp)
            elif family.type in ("gauge", "unknown"):
                for (_, labels), value in family.values.items():
                    self._add(out, what, "gauge", labels, value, timestamp)
            elif family.type in ("histogram", "summary"):
                self._distributions(out, what, family, old, timestamp)
        return out

    def _counters(self, out: list[Sample], what: str, values: Mapping[tuple[str, Labels], float],
                  old: Mapping[tuple[str, Labels], float], timestamp: int) -> None:
        for key, value in values.items():
            if key[0].endswith("_total"):
                self._add(out, what, "counter", key[1], _increase(value, old.get(key)), timestamp)

    def _distributions(self, out: list[Sample], what: str, family: Family,
                       old: Mapping[tuple[str, Labels], float], timestamp: int) -> None:
        groups: dict[Labels, dict[str, Any]] = {}
        for (sample, labels), value in family.values.items():
            increase = _increase(value, old.get((sample, labels)))
            if sample.endswith("_bucket"):
                rest = tuple(item for item in labels if item[0] != "le")
                bound = float(dict(labels)["le"])
                groups.setdefault(rest, {}).setdefault("buckets", []).append((bound, increase))
            elif sample.endswith("_count"):
                groups.setdefault(labels, {})["count"] = increase
            elif sample.endswith("_sum"):
                groups.setdefault(labels, {})["sum"] = increase
            elif family.type == "summary" and any(key == "quantile" for key, _ in labels):
                rest = tuple(item for item in labels if item[0] != "quantile")
                quantile = float(dict(labels)["quantile"])
                self._add(out, f"{what}_p{_percent(quantile)}", "gauge", rest, value, timestamp)
        for labels, group in groups.items():
            count = group.get("count")
            if count is None:
                continue
            self._add(out, f"{what}_count", "counter", labels, count, timestamp)
            if count > 0 and "sum" in group:
                self._add(out, f"{what}_avg", "gauge", labels, group["sum"] / count, timestamp)
            if count > 0 and "buckets" in group:
                buckets = sorted(group["buckets"])
                for quantile in QUANTILES:
                    self._add(out, f"{what}_p{_percent(quantile)}", "gauge", labels,
                              histogram_quantile(quantile, buckets), timestamp)

    def add(self, out: list[Sample], what: str, target_type: str, labels: Labels, value: float,
            timestamp: int) -> None:
        """Append one sample (skipped when `value` is not finite or it would carry too many properties)."""
        self._add(out, what, target_type, labels, value, timestamp)

    def _add(self, out: list[Sample], what: str, target_type: str, labels: Labels, value: float,
             timestamp: int) -> None:
        if not math.isfinite(value):
            return
        properties: dict[str, str] = {"what": clean(what, MAX_VALUE), "target_type": target_type, "ver": "1"}
        unit = _unit(what)
        if unit:
            properties["unit"] = unit
        properties.update(self.static)
        for key, label_value in labels:
            if not label_value:
                continue  # as in Prometheus, an empty label is no label
            name = clean(key, MAX_KEY)
            if name in properties or name in _RESERVED:
                name = clean("label_" + key, MAX_KEY)
            properties[name] = clean(label_value, MAX_VALUE)
        if len(properties) > MAX_PROPERTIES:
            self.skipped += 1
            return
        out.append({"properties": properties, "tags": TAGS, "timestamp": timestamp, "value": value})


def _increase(value: float, before: float | None) -> float:
    if before is None or value < before:
        return value
    return value - before


def _percent(quantile: float) -> str:
    text = f"{quantile * 100:.4f}".rstrip("0").rstrip(".")
    return text.replace(".", "_")


def _unit(what: str) -> str:
    for suffix, unit in (("_seconds", "seconds"), ("_bytes", "bytes")):
        if suffix in what:
            return unit
    return ""


def histogram_quantile(quantile: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Quantile from cumulative (upper bound, count) pairs, interpolating linearly inside the bucket."""
    total = buckets[-1][1]
    rank = quantile * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank and count > lower_count:
            if math.isinf(bound):
                return lower_bound
            if bound <= 0:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def merge(existing: Iterable[Sample], new: Iterable[Sample]) -> list[Sample]:
    """Samples of one bucket written twice (a restart inside a bucket): counters add up, gauges take the latest.
    Samples of different timestamps (history buckets inside one file) stay apart."""
    merged: dict[tuple[Any, ...], Sample] = {}
    for sample in (*existing, *new):
        key = (sample.get("timestamp"), *sorted(sample["properties"].items()))
        known = merged.get(key)
        if known is not None and sample["properties"].get("target_type") == "counter":
            known["value"] = known["value"] + sample["value"]
        else:
            merged[key] = dict(sample)
    return list(merged.values())
