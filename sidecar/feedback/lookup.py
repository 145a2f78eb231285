"""`GET /v1/predictions/{id}` on the admin listener: what the prediction store keeps under one prediction id.

The answer: the model (its analysis name), the request's version, when the prediction was stored, its task, and per
instance the predicted class or value, the outlier detectors that scored it (score, and whether it was flagged), its
data-quality issues and, once feedback joined, its truth (as compared: a class label or a number). A field the
stored row lacks (stored by an older version) reads "not recorded". Unknown and expired ids are 404 with the reason.
"""

from __future__ import annotations

import math
import time
from typing import Any

from sidecar.feedback import arrival
from sidecar.feedback.store import Predicted, PredictionRecord, StoredInstance
from sidecar.feedback.tasks import UNUSABLE
from sidecar.messages.results import ISSUE_CODES, OUTLIER_CODES

NOT_RECORDED = "not recorded"
Answer = tuple[int, dict[str, Any]]
_ISSUES = {code: issue for issue, code in ISSUE_CODES.items()}
_DETECTORS = {code: detector for detector, code in OUTLIER_CODES.items()}


def found(prediction_id: str, record: PredictionRecord, retention: float, now: float | None = None) -> Answer:
    """The answer for a stored prediction: 200, or 404 once it is older than `retention` (not trimmed yet)."""
    age = (time.time() if now is None else now) - record.time
    if age > retention:
        return 404, {"error": f"prediction id {prediction_id!r} has expired: it was stored {age:.0f} s ago and "
                              f"predictions are kept {retention:.0f} s (store_retention)"}
    first = next(iter(record.instances.values()), None)
    return 200, {
        "prediction_id": prediction_id,
        "model": record.model,
        "version": NOT_RECORDED if record.version is None else (record.version or None),
        "time": record.time,
        "task": first.task if first is not None else None,
        "instances": [_instance(number, stored, record.truths)
                      for number, stored in sorted(record.instances.items())],
    }


def not_found(prediction_id: str, retention: float, now: float | None = None) -> Answer:
    """The 404 for an id the store does not hold, with the likely reason."""
    now = time.time() if now is None else now
    minted = arrival.minted_at(prediction_id)
    if minted is None:
        reason = (f"unknown prediction id {prediction_id!r}: not in the prediction store (never analysed, or "
                  "removed to respect store_max_rows)")
    elif now - minted > retention:
        reason = (f"prediction id {prediction_id!r} has expired: it was issued {now - minted:.0f} s ago and "
                  f"predictions are kept {retention:.0f} s (store_retention)")
    else:
        reason = (f"unknown prediction id {prediction_id!r}: issued {max(0.0, now - minted):.0f} s ago but not in "
                  "the prediction store (not analysed yet, or never: a failed call, an answer the analysis could "
                  "not read, a full capture ring; or removed to respect store_max_rows)")
    return 404, {"error": reason}


def _instance(number: int, stored: StoredInstance, truths: dict[int, Predicted | None]) -> dict[str, Any]:
    truth: Predicted | str | None = None
    if number in truths:
        truth = truths[number]
        if truth is None:
            truth = NOT_RECORDED
    return {
        "instance": number,
        "predicted": None if stored.task == UNUSABLE else stored.predicted,
        "outliers": NOT_RECORDED if stored.outliers is None else _outliers(stored),
        "quality": NOT_RECORDED if stored.issues is None else [_ISSUES.get(code, code) for code in stored.issues],
        "truth": truth,
    }


def _outliers(stored: StoredInstance) -> dict[str, dict[str, Any]]:
    """Per detector that scored the instance: its score and whether it flagged the instance."""
    answer: dict[str, dict[str, Any]] = {}
    for letter in stored.outliers or "":
        detector = _DETECTORS.get(letter.lower(), letter.lower())
        score = stored.scores.get(detector)
        answer[detector] = {"score": score if score is not None and math.isfinite(score) else None,
                            "outlier": letter.isupper()}
    return answer
