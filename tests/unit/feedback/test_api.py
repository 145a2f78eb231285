"""POST /v1/feedback through the service's handler: every answer, held feedback, duplicates, restarts, metrics."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Sequence
from pathlib import Path

from sidecar.feedback.sqlite_store import SqliteStore
from sidecar.feedback.store import PredictionRow, StoredPrediction
from sidecar.messages.results import PredictedInstance, Predictions
from sidecar.proxy.ids import new_prediction_id
from sidecar.proxy.rest.local import LocalRequest
from sidecar.telemetry.metrics import new_registry
from tests.support.helpers import metric

from .builders import answer, classified, post, regressed
from .conftest import StartService
from .redis_server import running_redis
from .test_arrival import uuid7_at


async def test_feedback_for_an_analysed_prediction_joins_every_instance(start_service: StartService) -> None:
    registry = new_registry()
    service = await start_service(registry=registry)
    pid = new_prediction_id()
    service.add_predictions(classified("iris", pid, [0, 1, 2]))
    response = await service.handle(post({"prediction_id": pid, "truth": [0, 1, 1]}))
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json"
    assert answer(response) == {"joined": 3, "duplicate": 0, "pending": 0}
    assert metric(registry, "sidecar_feedback_total", model="iris", outcome="joined") == 3
    assert metric(registry, "sidecar_quality_accuracy", model="iris") == 2 / 3
    assert metric(registry, "sidecar_confusion_total", model="iris", truth="1", predicted="2") == 1
    assert metric(registry, "sidecar_quality_correct_total", model="iris") == 2
    assert metric(registry, "sidecar_quality_joined_total", model="iris") == 3
    assert metric(registry, "sidecar_quality_recall", model="iris", **{"class": "1"}) == 0.5
    assert metric(registry, "sidecar_quality_precision", model="iris", **{"class": "macro"}) == (1 + 1 + 0) / 3


async def test_the_same_instance_posted_twice_counts_once(start_service: StartService) -> None:
    registry = new_registry()
    service = await start_service(registry=registry)
    pid = new_prediction_id()
    service.add_predictions(classified("iris", pid, [0, 1]))
    first = await service.handle(post({"prediction_id": pid, "instance": 1, "truth": 1}))
    again = await service.handle(post([{"prediction_id": pid, "truth": [0, 0]}]))
    assert answer(first) == {"joined": 1, "duplicate": 0, "pending": 0}
    assert answer(again) == {"joined": 1, "duplicate": 1, "pending": 0}
    assert metric(registry, "sidecar_quality_joined_total", model="iris") == 2
    assert metric(registry, "sidecar_feedback_total", model="iris", outcome="duplicate") == 1


async def test_a_batch_can_mix_ids_and_single_instances(start_service: StartService) -> None:
    service = await start_service()
    ids = [new_prediction_id() for _ in range(3)]
    for pid in ids:
        service.add_predictions(regressed("house", pid, [100.0, 200.0]))
    body = [{"prediction_id": ids[0], "truth": [110.0, 190.0]}, {"prediction_id": ids[1], "instance": 1, "truth": 230},
            {"prediction_id": ids[2], "instance": 0, "truth": [100.0]}]
    assert answer(await service.handle(post(body))) == {"joined": 4, "duplicate": 0, "pending": 0}
    snapshot = service.quality_snapshot("house")
    assert snapshot is not None
    assert snapshot["task"] == "regression"
    assert snapshot["mae"] == (10 + 10 + 30 + 0) / 4
    assert snapshot["rmse"] == ((100 + 100 + 900 + 0) / 4) ** 0.5


async def test_feedback_before_its_prediction_is_held_then_joined(start_service: StartService) -> None:
    registry = new_registry()
    service = await start_service(registry=registry, pending_timeout=30.0)
    pid = new_prediction_id()
    response = await service.handle(post({"prediction_id": pid, "truth": [2]}))
    assert answer(response) == {"joined": 0, "duplicate": 0, "pending": 1}
    assert metric(registry, "sidecar_feedback_pending_instances") == 1
    service.add_predictions(classified("iris", pid, [2]))
    await service.flush()
    assert metric(registry, "sidecar_feedback_total", model="", outcome="pending") == 1
    assert metric(registry, "sidecar_feedback_total", model="iris", outcome="joined") == 1
    assert metric(registry, "sidecar_quality_accuracy", model="iris") == 1.0
    assert metric(registry, "sidecar_feedback_pending_instances") == 0


async def test_held_feedback_that_never_meets_its_prediction_expires_and_is_counted(
        start_service: StartService) -> None:
    registry = new_registry()
    service = await start_service(registry=registry, pending_timeout=0.2)
    response = await service.handle(post({"prediction_id": "client-order-17", "truth": [1, 0]}))
    assert answer(response)["pending"] == 2
    for _ in range(100):
        if metric(registry, "sidecar_feedback_total", model="", outcome="expired") == 2:
            break
        await asyncio.sleep(0.05)
    assert metric(registry, "sidecar_feedback_total", model="", outcome="expired") == 2
    service.add_predictions(classified("iris", "client-order-17", [1, 0]))
    await service.flush()
    assert metric(registry, "sidecar_feedback_total", model="iris", outcome="joined") == 0


async def test_feedback_joined_before_the_shadows_prediction_scores_the_shadow_when_it_arrives(
        start_service: StartService) -> None:
    registry = new_registry()
    service = await start_service(registry=registry, pending_timeout=0.3, shadows=("next",))
    scored, never = new_prediction_id(), new_prediction_id()
    for pid in (scored, never):
        service.add_predictions(classified("iris", pid, [0, 1]))
    response = await service.handle(post([{"prediction_id": scored, "truth": [0, 1]},
                                          {"prediction_id": never, "truth": [0, 1]}]))
    assert answer(response) == {"joined": 4, "duplicate": 0, "pending": 0}  # the primary's instances only
    service.add_predictions(classified("iris~next", f"{scored}~next", [0, 0]))  # the shadow's, after the feedback
    await service.flush()
    assert metric(registry, "sidecar_feedback_total", model="iris~next", outcome="joined") == 2
    assert metric(registry, "sidecar_quality_accuracy", model="iris~next") == 0.5
    for _ in range(100):  # the other call's shadow prediction never comes: counted unscored at pending_timeout
        if metric(registry, "sidecar_feedback_total", model="iris~next", outcome="unscored") == 2:
            break
        await asyncio.sleep(0.05)
    assert metric(registry, "sidecar_feedback_total", model="iris~next", outcome="unscored") == 2
    assert metric(registry, "sidecar_feedback_total", model="iris", outcome="joined") == 4


async def test_held_feedback_beyond_the_bound_expires_the_oldest(start_service: StartService) -> None:
    registry = new_registry()
    service = await start_service(registry=registry, pending_max=3)
    for index in range(4):
        await service.handle(post({"prediction_id": f"order-{index}", "truth": [1]}))
    assert metric(registry, "sidecar_feedback_total", model="", outcome="expired") == 1
    assert metric(registry, "sidecar_feedback_pending_instances") == 3


async def test_held_feedback_that_does_not_fit_its_prediction_is_counted_invalid(start_service: StartService) -> None:
    registry = new_registry()
    service = await start_service(registry=registry)
    await service.handle(post({"prediction_id": "order-1", "truth": [1, 2, 3]}))
    service.add_predictions(classified("iris", "order-1", [1]))
    await service.flush()
    assert metric(registry, "sidecar_feedback_total", model="iris", outcome="invalid") == 3


async def test_an_old_sidecar_id_that_was_never_analysed_is_unknown(start_service: StartService) -> None:
    registry = new_registry()
    service = await start_service(registry=registry, pending_timeout=60.0)
    pid = uuid7_at(time.time() - 600)
    response = await service.handle(post({"prediction_id": pid, "truth": [1]}))
    assert response.status == 404
    assert answer(response)["error"].startswith(f"unknown prediction id '{pid}'")
    assert metric(registry, "sidecar_feedback_total", model="", outcome="unknown") == 1


async def test_an_id_older_than_the_retention_has_expired(start_service: StartService) -> None:
    registry = new_registry()
    service = await start_service(registry=registry, store_retention=3600.0)
    pid = uuid7_at(time.time() - 7200)
    service.store.put([PredictionRow(pid, 0, "iris", "multiclass", "1", time.time() - 7200)])
    await service.store.flush()
    response = await service.handle(post({"prediction_id": pid, "truth": [1]}))
    assert response.status == 404
    assert "has expired" in answer(response)["error"]
    assert metric(registry, "sidecar_feedback_total", model="iris", outcome="expired") + metric(
        registry, "sidecar_feedback_total", model="", outcome="expired") == 1


async def test_without_holding_any_unseen_id_is_unknown_at_once(start_service: StartService) -> None:
    service = await start_service(pending_timeout=0.0)
    response = await service.handle(post({"prediction_id": "order-1", "truth": [1]}))
    assert response.status == 404
    assert answer(response) == {"error": "unknown prediction id 'order-1': not in the prediction store"}


async def test_malformed_json_is_a_400_in_tf_serving_shape(start_service: StartService) -> None:
    registry = new_registry()
    service = await start_service(registry=registry)
    response = await service.handle(post(None, raw=b'{"prediction_id": '))
    assert response.status == 400
    assert answer(response)["error"].startswith("malformed JSON: Expecting value")
    assert metric(registry, "sidecar_feedback_total", model="", outcome="invalid") == 1


async def test_a_wrong_truth_count_is_a_400_and_nothing_joins(start_service: StartService) -> None:
    registry = new_registry()
    service = await start_service(registry=registry)
    good, bad = new_prediction_id(), new_prediction_id()
    service.add_predictions(classified("iris", good, [0]))
    service.add_predictions(classified("iris", bad, [0, 1, 2]))
    response = await service.handle(post([{"prediction_id": good, "truth": [0]},
                                          {"prediction_id": bad, "truth": [0, 1]}]))
    assert response.status == 400
    assert answer(response)["error"] == f"item 1: prediction '{bad}' has 3 instance(s) but 2 truth(s) were sent"
    assert metric(registry, "sidecar_feedback_total", model="iris", outcome="joined") == 0
    assert metric(registry, "sidecar_feedback_total", model="iris", outcome="invalid") == 2
    retry = await service.handle(post({"prediction_id": good, "truth": [0]}))
    assert answer(retry)["joined"] == 1  # the rejected request claimed nothing


async def test_a_truth_of_the_wrong_type_is_a_400_naming_the_instance(start_service: StartService) -> None:
    service = await start_service()
    pid = new_prediction_id()
    service.add_predictions(regressed("house", pid, [1.0, 2.0]))
    response = await service.handle(post({"prediction_id": pid, "truth": [1.5, "cheap"]}))
    assert response.status == 400
    assert answer(response)["error"] == (f"wrong truth type for instance 1 of '{pid}': truth 'cheap' is not a "
                                         "number (the model is a regressor)")
    response = await service.handle(post({"prediction_id": pid, "truth": [1.5, {"a": 1}]}))
    assert answer(response)["error"].startswith("truth[1] must be a class index")


async def test_a_bearer_token_guards_the_endpoint_when_set(start_service: StartService) -> None:
    service = await start_service(feedback_token="s3cret", pending_timeout=30.0)
    body = {"prediction_id": "order-1", "truth": [1]}
    missing = await service.handle(post(body))
    wrong = await service.handle(post(body, {"authorization": "Bearer nope"}))
    basic = await service.handle(post(body, {"authorization": "Basic czNjcmV0"}))
    right = await service.handle(post(body, {"authorization": "bearer s3cret"}))
    for denied in (missing, wrong, basic):
        assert denied.status == 401
        assert denied.headers["WWW-Authenticate"].startswith("Bearer")
        assert "error" in answer(denied)
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    assert right.status == 200


async def test_only_post_is_allowed(start_service: StartService) -> None:
    service = await start_service()
    response = await service.handle(LocalRequest("GET", "/v1/feedback", {}, b""))
    assert response.status == 405
    assert response.headers["Allow"] == "POST"
    assert "use POST" in answer(response)["error"]


async def test_a_gzip_body_is_accepted_and_other_encodings_are_refused(start_service: StartService) -> None:
    service = await start_service()
    pid = new_prediction_id()
    service.add_predictions(classified("iris", pid, [1]))
    body = gzip.compress(json.dumps({"prediction_id": pid, "truth": [1]}).encode())
    response = await service.handle(post(None, {"content-encoding": "gzip"}, raw=body))
    assert answer(response)["joined"] == 1
    refused = await service.handle(post(None, {"content-encoding": "br"}, raw=b"x"))
    assert refused.status == 400 and "unsupported Content-Encoding 'br'" in answer(refused)["error"]


async def test_feedback_joins_predictions_stored_before_a_restart(start_service: StartService, tmp_path: Path) -> None:
    state = tmp_path / "restart"
    first = await start_service(state_dir=state)
    pid = new_prediction_id()
    first.add_predictions(classified("iris", pid, [0, 1]))
    assert answer(await first.handle(post({"prediction_id": pid, "instance": 0, "truth": 0})))["joined"] == 1
    await first.stop()

    registry = new_registry()
    second = await start_service(state_dir=state, registry=registry)
    response = await second.handle(post({"prediction_id": pid, "truth": [0, 1]}))
    assert answer(response) == {"joined": 1, "duplicate": 1, "pending": 0}
    assert metric(registry, "sidecar_quality_accuracy", model="iris") == 1.0


async def test_the_task_override_turns_bare_scores_into_a_regressor(start_service: StartService) -> None:
    registry = new_registry()
    service = await start_service(registry=registry, task_overrides={"score": "regression"})
    pid = new_prediction_id()
    service.add_predictions(Predictions("score", "auto", [PredictedInstance(pid, 0, "score", {"value": 0.25})]))
    await service.handle(post({"prediction_id": pid, "truth": [1]}))
    assert metric(registry, "sidecar_quality_mae", model="score") == 0.75
    assert metric(registry, "sidecar_quality_abs_error_sum_total", model="score") == 0.75
    assert metric(registry, "sidecar_quality_squared_error_sum_total", model="score") == 0.5625


async def test_binary_probabilities_use_the_configured_threshold(start_service: StartService) -> None:
    registry = new_registry()
    service = await start_service(registry=registry, binary_threshold=0.8)
    pid = new_prediction_id()
    instances = [PredictedInstance(pid, i, "churn", {"class": 1, "probabilities": [1 - p, p]})
                 for i, p in enumerate([0.7, 0.9])]
    service.add_predictions(Predictions("churn", "classification", instances))
    await service.handle(post({"prediction_id": pid, "truth": [1, 1]}))
    assert metric(registry, "sidecar_confusion_total", model="churn", truth="1", predicted="0") == 1
    assert metric(registry, "sidecar_confusion_total", model="churn", truth="1", predicted="1") == 1


async def test_the_quality_window_keeps_the_last_instances(start_service: StartService) -> None:
    registry = new_registry()
    service = await start_service(registry=registry, quality_window=2)
    for truth in (1, 0, 0):
        pid = new_prediction_id()
        service.add_predictions(classified("iris", pid, [0]))
        await service.handle(post({"prediction_id": pid, "truth": [truth]}))
    assert metric(registry, "sidecar_quality_window_instances", model="iris") == 2
    assert metric(registry, "sidecar_quality_accuracy", model="iris") == 1.0
    assert metric(registry, "sidecar_quality_correct_total", model="iris") == 2


async def test_the_monitor_snapshot_shows_the_confusion_matrix(start_service: StartService) -> None:
    service = await start_service()
    assert service.quality_snapshot("iris") is None
    pid = new_prediction_id()
    service.add_predictions(classified("iris", pid, [0, 1, 2, 2]))
    await service.handle(post({"prediction_id": pid, "truth": [0, 2, 2, 2]}))
    snapshot = service.quality_snapshot("iris")
    assert snapshot is not None
    assert snapshot["confusion"] == {"labels": ["0", "1", "2"], "matrix": [[1, 0, 0], [0, 0, 0], [0, 1, 2]]}
    assert snapshot["accuracy"] == 0.75
    assert snapshot["feedback"] == {"joined": 4}
    json.dumps(snapshot, allow_nan=False)


async def test_accepted_feedback_goes_to_the_event_sink(start_service: StartService) -> None:
    service = await start_service()
    events: list[tuple[str, str, dict[str, object]]] = []
    service.set_event_sink(lambda pid, model, body: events.append((pid, model, json.loads(body))))
    pid = new_prediction_id()
    service.add_predictions(classified("iris", pid, [0]))
    await service.handle(post({"prediction_id": pid, "truth": [0]}))
    await service.handle(post({"prediction_id": pid, "truth": "bad"}))
    assert events == [(pid, "iris", {"prediction_id": pid, "truth": [0]})]


async def test_models_beyond_the_label_cap_share_one_label(tmp_path: Path) -> None:
    from sidecar.feedback.api import FeedbackService
    from sidecar.feedback.settings import FeedbackSettings

    registry = new_registry()
    service = FeedbackService(FeedbackSettings(), tmp_path, registry, {}, model_label_cap=1)
    await service.start()
    try:
        for model in ("a", "b", "c"):
            pid = new_prediction_id()
            service.add_predictions(classified(model, pid, [0]))
            await service.handle(post({"prediction_id": pid, "truth": [0]}))
        assert metric(registry, "sidecar_quality_joined_total", model="a") == 1
        assert metric(registry, "sidecar_quality_joined_total", model="__other__") == 2
    finally:
        await service.stop()


class LateAnswers(SqliteStore):
    """A real SQLite store whose lookups read at once but answer only when `release` is set (a slow reader)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, retention=3600, max_rows=1000)
        self.release = asyncio.Event()
        self.reading = asyncio.Event()

    async def lookup(self, prediction_ids: Sequence[str]) -> dict[str, StoredPrediction]:
        found = await super().lookup(prediction_ids)
        self.reading.set()
        await self.release.wait()
        return found


async def test_a_prediction_written_while_feedback_reads_the_store_still_joins(tmp_path: Path) -> None:
    from sidecar.feedback.api import FeedbackService
    from sidecar.feedback.settings import FeedbackSettings

    store = LateAnswers(tmp_path / "p.sqlite3")
    service = FeedbackService(FeedbackSettings(), tmp_path, new_registry(), {}, store=store)
    await service.start()
    try:
        pid = new_prediction_id()
        posting = asyncio.create_task(service.handle(post({"prediction_id": pid, "truth": [1]})))
        await store.reading.wait()  # the read missed: the prediction has not arrived yet
        service.add_predictions(classified("iris", pid, [1]))
        await store.flush()  # ...and is written before the read's answer comes back
        store.release.set()
        assert answer(await posting) == {"joined": 1, "duplicate": 0, "pending": 0}
    finally:
        await service.stop()


async def test_two_services_sharing_redis_join_feedback_posted_to_either(start_service: StartService,
                                                                        redis_url: str, tmp_path: Path) -> None:
    registry_one, registry_two = new_registry(), new_registry()
    one = await start_service(state_dir=tmp_path / "one", registry=registry_one, store=redis_url)
    two = await start_service(state_dir=tmp_path / "two", registry=registry_two, store=redis_url)
    analysed, early = new_prediction_id(), new_prediction_id()

    one.add_predictions(classified("iris", analysed, [0, 1]))
    await one.flush()
    assert answer(await two.handle(post({"prediction_id": analysed, "truth": [0, 0]}))) == {
        "joined": 2, "duplicate": 0, "pending": 0}
    assert answer(await one.handle(post({"prediction_id": analysed, "instance": 1, "truth": 0}))) == {
        "joined": 0, "duplicate": 1, "pending": 0}

    # feedback reaches replica two before replica one has analysed the prediction: held, then found in Redis
    assert answer(await two.handle(post({"prediction_id": early, "truth": [2]})))["pending"] == 1
    one.add_predictions(classified("iris", early, [2]))
    await one.flush()
    for _ in range(100):
        if metric(registry_two, "sidecar_quality_joined_total", model="iris") == 3:
            break
        await asyncio.sleep(0.05)
    assert metric(registry_two, "sidecar_quality_joined_total", model="iris") == 3
    assert metric(registry_two, "sidecar_quality_accuracy", model="iris") == 2 / 3
    assert metric(registry_one, "sidecar_quality_joined_total", model="iris") == 0


async def test_a_store_that_goes_away_answers_503_and_is_counted(start_service: StartService, tmp_path: Path) -> None:
    registry = new_registry()
    with running_redis(tmp_path) as url:
        service = await start_service(registry=registry, store=url)
    response = await service.handle(post({"prediction_id": "order-1", "truth": [1]}))
    assert response.status == 503
    assert answer(response)["error"].startswith("the prediction store is unavailable: redis-reader:")
    assert metric(registry, "sidecar_feedback_store_errors_total", operation="read") == 1


async def test_predictions_a_worker_already_wrote_are_not_queued_again_and_join_feedback(
        start_service: StartService) -> None:
    registry = new_registry()
    service = await start_service(registry=registry, pending_timeout=30.0)
    early, late = new_prediction_id(), new_prediction_id()
    held = await service.handle(post({"prediction_id": early, "truth": [2]}))
    assert answer(held)["pending"] == 1
    writer = service.store.row_writer()  # what an analysis worker holds
    stored = [service.rules.reduce(classified("iris", early, [2])), service.rules.reduce(classified("iris", late, [0]))]
    writer.write(stored)
    writer.close()
    for one in stored:
        service.add_stored(one._replace(written=True))
    assert service.recent.queued_rows == 0  # nothing for the main process's writer
    await service.flush()
    assert metric(registry, "sidecar_feedback_total", model="iris", outcome="joined") == 1  # the held one
    assert answer(await service.handle(post({"prediction_id": late, "truth": [1]}))) == {
        "joined": 1, "duplicate": 0, "pending": 0}
    assert metric(registry, "sidecar_quality_accuracy", model="iris") == 0.5
