"""No body gets a 500: 2,000 seeded malformed bodies through the real handler are all answered 400 or 413 in the
API's error shape, nothing is logged with a traceback, and feedback still joins afterwards."""

from __future__ import annotations

import json
import logging
from collections import Counter

import pytest

from sidecar.feedback.parse import FeedbackError, parse_body
from sidecar.proxy.ids import new_prediction_id
from sidecar.proxy.rest.local import LocalRequest
from sidecar.telemetry.metrics import new_registry
from tests.support.helpers import metric

from .builders import answer, classified, post
from .conftest import StartService
from .malformed import GENERATORS, bodies

SEED = 20240611
COUNT = 2000
MAX_BODY = 8 * 1024**2  # smaller than the default (64 MiB) to keep the test fast; a million small items still fit


async def test_two_thousand_malformed_bodies_get_400_or_413_and_feedback_still_joins(
        start_service: StartService, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    registry = new_registry()
    service = await start_service(registry=registry, pending_timeout=0.0, feedback_max_body_bytes=MAX_BODY)
    statuses: Counter[tuple[str, int]] = Counter()
    for kind, body, headers in bodies(SEED, COUNT, MAX_BODY):
        response = await service.handle(LocalRequest("POST", "/v1/feedback", headers, body))
        shown = f"{kind}: {body[:120]!r}{'...' if len(body) > 120 else ''} -> {response.status} {response.body[:200]!r}"
        assert response.status in (400, 413), shown
        assert response.headers["Content-Type"] == "application/json", shown
        document = json.loads(response.body)
        assert set(document) == {"error"} and isinstance(document["error"], str) and document["error"], shown
        assert len(document["error"]) < 400, shown  # messages quote at most a short piece of what was sent
        statuses[kind, response.status] += 1

    assert {kind for kind, _ in statuses} == {generator.__name__ for generator, _ in GENERATORS}
    assert statuses["too_large", 413] > 0 and statuses["too_large", 400] == 0
    assert sum(statuses.values()) == COUNT
    assert metric(registry, "sidecar_feedback_total", model="", outcome="invalid") == COUNT
    problems = [record for record in caplog.records if record.exc_info or record.levelno >= logging.ERROR]
    assert not problems, [record.getMessage() for record in problems]
    assert "Traceback" not in caplog.text

    pid = new_prediction_id()
    service.add_predictions(classified("iris", pid, [0, 2]))
    assert answer(await service.handle(post({"prediction_id": pid, "truth": [0, 1]}))) == {
        "joined": 2, "duplicate": 0, "pending": 0}
    assert metric(registry, "sidecar_quality_joined_total", model="iris") == 2


@pytest.mark.parametrize("kind", sorted({generator.__name__ for generator, _ in GENERATORS} - {"too_large"}))
def test_every_kind_of_damage_is_refused_by_the_parser_alone(kind: str) -> None:
    """The parser raises only FeedbackError (never RecursionError, ValueError from int(), OverflowError...)."""
    seen = 0
    for name, body, headers in bodies(SEED + 1, 600, MAX_BODY):
        if name != kind or headers:
            continue
        seen += 1
        with pytest.raises(FeedbackError):
            parse_body(body, 100_000)
    assert seen or kind == "bad_encoding"
