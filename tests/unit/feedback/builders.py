"""Builders shared by the feedback tests: analysed predictions as the analysis sends them, and local requests."""

from __future__ import annotations

import json
from typing import Any

from sidecar.messages.results import PredictedInstance, Predictions
from sidecar.proxy.rest.local import LocalRequest


def post(document: Any, headers: dict[str, str] | None = None, raw: bytes | None = None) -> LocalRequest:
    """A POST /v1/feedback as the REST proxy hands it over (header names lower-case)."""
    body = raw if raw is not None else json.dumps(document).encode()
    return LocalRequest("POST", "/v1/feedback", headers or {}, body)


def classified(model: str, prediction_id: str, classes: list[int], width: int = 3) -> Predictions:
    """A classifier's predictions: one instance per class index, with probabilities favouring that class."""
    items = []
    for index, chosen in enumerate(classes):
        probabilities = [0.1 / (width - 1)] * width
        probabilities[chosen] = 0.9
        items.append(PredictedInstance(prediction_id, index, model, {"class": chosen, "probabilities": probabilities}))
    return Predictions(model, "classification", items)


def regressed(model: str, prediction_id: str, values: list[float]) -> Predictions:
    items = [PredictedInstance(prediction_id, index, model, {"value": value}) for index, value in enumerate(values)]
    return Predictions(model, "regression", items)


def answer(response: Any) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(response.body)
    return document
