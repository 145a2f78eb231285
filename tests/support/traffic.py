"""Capture records of TF Serving REST predict exchanges, from a small softmax classifier computed with numpy.

The bodies have TF Serving's wire shape (`{"instances": [...]}` -> `{"predictions": [...]}`); the analysis
decodes them with the real codec.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from sidecar.messages.records import CaptureRecord

FEATURES = 4
CLASSES = 3
_WEIGHTS = np.array([[2.0, -1.0, 0.0], [-1.0, 2.0, 0.5], [0.5, 0.0, -2.0], [0.0, 1.0, 1.0]])


def softmax_model(inputs: np.ndarray) -> np.ndarray:
    logits = inputs @ _WEIGHTS
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True))


def rest_record(model: str, inputs: np.ndarray, outputs: np.ndarray | None = None, prediction_id: str = "p",
                captured: float | None = None, status: int = 200) -> CaptureRecord:
    """A REST predict exchange in row format; `outputs` defaults to the softmax model's probabilities."""
    outputs = softmax_model(inputs) if outputs is None else outputs
    request = json.dumps({"instances": inputs.tolist()}).encode()
    response = json.dumps({"predictions": outputs.tolist()}).encode() if status == 200 else b'{"error": "boom"}'
    return CaptureRecord(prediction_id, time.time() if captured is None else captured, model, "", "", "rest",
                         "tfserving", "predict", request, response, status, 0.002)


def stream(model: str, records: int, per_record: int, seed: int, shift: float = 0.0, feature: int = 1,
           prefix: str = "id") -> Iterator[CaptureRecord]:
    """Records of `per_record` standard-normal instances; `shift` moves one feature's mean."""
    rng = np.random.default_rng(seed)
    for n in range(records):
        inputs = rng.normal(size=(per_record, FEATURES))
        inputs[:, feature] += shift
        yield rest_record(model, inputs, prediction_id=f"{prefix}-{seed}-{n}")


def named_record(model: str, rows: list[dict[str, Any]], prediction_id: str = "p",
                 captured: float | None = None) -> CaptureRecord:
    """A REST predict exchange of named inputs in row format (`{"instances": [{"city": "oslo", ...}]}`), as a
    scikit-learn pipeline with string columns is called; the answer is a constant two-class probability."""
    request = json.dumps({"instances": rows}).encode()
    response = json.dumps({"predictions": [[0.3, 0.7]] * len(rows)}).encode()
    return CaptureRecord(prediction_id, time.time() if captured is None else captured, model, "", "", "rest",
                         "tfserving", "predict", request, response, 200, 0.002)
