"""Windows of instances compared with the reference: tumbling, sliding (count based) and time buckets.

Instances arrive as row-aligned blocks (input features, output features, capture times). A window is emitted
as soon as it is complete: count windows when `size` rows are in and, for sliding windows, every `step` rows
after that; time windows when an instance of a later bucket arrives or when the bucket's end (plus a grace for
records still in flight) has passed, checked by `poll`.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import numpy as np

from sidecar.worker.settings import ModelConfig

TIME_GRACE_SECONDS = 1.0  # records of a bucket may still be in the ring or a queue this long after it ends


class Window(NamedTuple):
    number: int  # windows evaluated before this one
    inputs: np.ndarray
    outputs: np.ndarray | None
    start: float  # earliest capture time in the window
    end: float  # latest capture time in the window

    @property
    def instances(self) -> int:
        return int(self.inputs.shape[0])

    def describe(self) -> dict[str, Any]:
        return {"index": self.number, "instances": self.instances, "start": self.start, "end": self.end}


class Windows(Protocol):
    def push(self, inputs: np.ndarray, outputs: np.ndarray | None, times: np.ndarray) -> list[Window]: ...

    def poll(self, now: float) -> list[Window]: ...

    def describe(self) -> dict[str, Any]: ...


class _Rows:
    """Row-aligned blocks kept as lists, concatenated lazily."""

    def __init__(self) -> None:
        self.inputs: list[np.ndarray] = []
        self.outputs: list[np.ndarray | None] = []
        self.times: list[np.ndarray] = []
        self.count = 0

    def add(self, inputs: np.ndarray, outputs: np.ndarray | None, times: np.ndarray) -> None:
        self.inputs.append(inputs)
        self.outputs.append(outputs)
        self.times.append(times)
        self.count += inputs.shape[0]

    def compact(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        inputs = np.concatenate(self.inputs, axis=0)
        outputs = None if any(part is None for part in self.outputs) else np.concatenate(
            [part for part in self.outputs if part is not None], axis=0)
        times = np.concatenate(self.times, axis=0)
        self.inputs, self.outputs, self.times = [inputs], [outputs], [times]
        return inputs, outputs, times

    def keep_last(self, rows: int) -> None:
        inputs, outputs, times = self.compact()
        start = max(0, inputs.shape[0] - rows)
        self.inputs = [inputs[start:]]
        self.outputs = [None if outputs is None else outputs[start:]]
        self.times = [times[start:]]
        self.count = inputs.shape[0] - start

    def clear(self) -> None:
        self.inputs, self.outputs, self.times, self.count = [], [], [], 0


class CountWindows:
    """The last `size` rows every `step` rows once `size` rows are in; tumbling when `step == size`."""

    def __init__(self, size: int, step: int) -> None:
        self.size = size
        self.step = step
        self.seen = 0  # rows pushed in all
        self.emitted = 0
        self._rows = _Rows()
        self._next = size  # row count at which the next window closes

    def push(self, inputs: np.ndarray, outputs: np.ndarray | None, times: np.ndarray) -> list[Window]:
        if inputs.shape[0] == 0:
            return []
        first = self.seen  # absolute index of the buffer's first row after adding
        first -= self._rows.count
        self._rows.add(inputs, outputs, times)
        self.seen += inputs.shape[0]
        if self.seen < self._next:
            return []
        all_inputs, all_outputs, all_times = self._rows.compact()
        windows: list[Window] = []
        while self._next <= self.seen:
            stop = self._next - first
            start = stop - self.size
            windows.append(Window(self.emitted, all_inputs[start:stop],
                                  None if all_outputs is None else all_outputs[start:stop],
                                  float(all_times[start:stop].min()), float(all_times[start:stop].max())))
            self.emitted += 1
            self._next += self.step
        self._rows.keep_last(max(0, self.size - (self._next - self.seen)))
        return windows

    def poll(self, now: float) -> list[Window]:
        return []

    def describe(self) -> dict[str, Any]:
        mode = "tumbling" if self.step == self.size else "sliding"
        return {"mode": mode, "size": self.size, "step": self.step, "evaluated": self.emitted,
                "instances_to_next": self._next - self.seen}


class TimeWindows:
    """Instances bucketed by capture time into `seconds`-long buckets; small buckets are skipped (counted)."""

    def __init__(self, seconds: float, min_instances: int) -> None:
        self.seconds = seconds
        self.min_instances = min_instances
        self.emitted = 0
        self.skipped = 0
        self._bucket: int | None = None
        self._rows = _Rows()

    def push(self, inputs: np.ndarray, outputs: np.ndarray | None, times: np.ndarray) -> list[Window]:
        windows: list[Window] = []
        if inputs.shape[0] == 0:
            return windows
        buckets = np.floor(times / self.seconds).astype(np.int64)
        if self._bucket is not None:
            buckets = np.maximum(buckets, self._bucket)  # late rows join the open bucket
        for bucket in np.unique(buckets).tolist():
            if self._bucket is not None and bucket != self._bucket:
                windows.extend(self._close())
            self._bucket = int(bucket)
            rows = buckets == bucket
            self._rows.add(inputs[rows], None if outputs is None else outputs[rows], times[rows])
        return windows

    def poll(self, now: float) -> list[Window]:
        if self._bucket is None or now < (self._bucket + 1) * self.seconds + TIME_GRACE_SECONDS:
            return []
        windows = self._close()
        self._bucket = None
        return windows

    def _close(self) -> list[Window]:
        if self._rows.count == 0:
            return []
        inputs, outputs, times = self._rows.compact()
        self._rows.clear()
        if inputs.shape[0] < self.min_instances:
            self.skipped += 1
            return []
        window = Window(self.emitted, inputs, outputs, float(times.min()), float(times.max()))
        self.emitted += 1
        return [window]

    def describe(self) -> dict[str, Any]:
        return {"mode": "time", "seconds": self.seconds, "min_instances": self.min_instances,
                "evaluated": self.emitted, "skipped": self.skipped, "pending": self._rows.count}


def make_windows(config: ModelConfig, min_instances: int) -> CountWindows | TimeWindows:
    if config.window_mode == "time":
        return TimeWindows(config.window_seconds, min_instances)
    if config.window_mode == "sliding":
        return CountWindows(config.window_size, config.effective_step)
    return CountWindows(config.window_size, config.window_size)
