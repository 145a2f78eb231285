"""The feedback service: `POST /v1/feedback` on the REST listener, the prediction hook, and quality metrics.

Flow of a POST: check the method and the bearer token, parse the body (413 past `feedback_max_body_bytes`, as sent
or inflated; 400 at the first problem, never an exception: see parse.py), look the ids up
(recent predictions still on their way to the store are answered from memory, the rest by the store's reader
thread), match every item with its prediction (400 for a wrong count or type, 404 for an unknown or expired id),
then claim the (id, instance) pairs in the store (the first claim joins, later ones are duplicates) and update
the quality metrics. A request is all or nothing: when any item is rejected, none is counted as joined.
Feedback for an id not seen yet is held (see `arrival.py` for when) and joined when its prediction is analysed.

Shadows: the analysis stores a shadow's predictions under `id~shadow` and the model name `model~shadow`
(`sidecar.messages.names`). Feedback for an id also scores the predictions of every shadow stored for it, so both
models' quality is measured on the same instances. A shadow's predictions come later than the primary's (the
mirrored call, then its own analysis pass): feedback joined before them is held for the shadow (`shadow_pending`,
the same bounds as held feedback) and scored when they arrive; what is still unscored at `pending_timeout` (the
call was not sampled, or the shadow did not answer it) is counted `unscored` under the shadow's model. The answer
to the POST counts only the primary's instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from sidecar.feedback import arrival, lookup
from sidecar.feedback.backends import open_store
from sidecar.feedback.board import QualityBoard
from sidecar.feedback.join import Join, match
from sidecar.feedback.metrics import NO_MODEL, FeedbackCollector, FeedbackCounts
from sidecar.feedback.monitor import quality_snapshot
from sidecar.feedback.parse import FeedbackError, FeedbackItem, parse_body
from sidecar.feedback.pending import PendingFeedback
from sidecar.feedback.recent import RecentPredictions
from sidecar.feedback.responses import BodyTooLarge, check_bearer, error_response, inflate, json_response
from sidecar.feedback.settings import FeedbackSettings
from sidecar.feedback.store import Drained, PredictionColumns, PredictionStore, StoredPrediction, StoreError
from sidecar.feedback.tasks import REGRESSION, PredictionRules
from sidecar.messages.names import shadow_name, split_shadow
from sidecar.messages.results import JoinedTruth, Predictions, StoredPredictions
from sidecar.proxy.rest.local import LocalRequest, LocalResponse

log = logging.getLogger(__name__)

FEEDBACK_PATH = "/v1/feedback"
SWEEP_INTERVAL = 0.5
POLL_CHUNK = 1000  # held ids looked up in a shared store per sweep
MAX_SHADOWS = 16  # shadow names whose predictions feedback looks for
UNSCORED = "unscored"  # a shadow's outcome: feedback joined for the primary, the shadow's prediction never came
EventSink = Callable[[str, str, bytes], object]  # (prediction id, model, feedback body): the payload log
TruthSink = Callable[[list[JoinedTruth]], object]  # the truths a request (or held feedback) joined: the history
LabelSink = Callable[[str, list[tuple[str, int, bool]]], object]  # (model, [(id, instance, right)]): the analysis


class _Rejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class FeedbackService:
    def __init__(self, settings: FeedbackSettings, state_dir: Path, registry: CollectorRegistry,
                 task_overrides: Mapping[str, str], *, model_label_cap: int = 100,
                 store: PredictionStore | None = None, shadows: Sequence[str] = ()) -> None:
        self.settings = settings
        self.task_overrides = dict(task_overrides)
        self.rules = PredictionRules(settings.binary_threshold, self.task_overrides)  # applied by the analysis
        self.store = store or open_store(settings.store, state_dir, settings.store_retention, settings.store_max_rows,
                                         settings.store_key_prefix, settings.store_flush_interval,
                                         settings.store_flush_rows)
        self.pending = PendingFeedback(settings.pending_max, settings.pending_timeout)
        self.shadow_pending = PendingFeedback(settings.pending_max, settings.pending_timeout)  # ids `id~shadow`
        self._shadows_left_out: set[str] = set()  # shadows beyond MAX_SHADOWS, said once each
        self._shadow_labels: dict[str, str] = {}  # held `id~shadow` -> the shadow's model label, for `unscored`
        self.counts = FeedbackCounts()
        self.board = QualityBoard(settings.quality_window, settings.max_class_labels, model_label_cap)
        self.models = self.board.models
        self.registry = registry
        self.collector = FeedbackCollector(self.counts, self.board.qualities, self._gauges)
        registry.register(self.collector)
        self.recent = RecentPredictions()  # on their way to the store
        self.shadows: set[str] = set(list(dict.fromkeys(shadows))[:MAX_SHADOWS])  # configured or seen stored
        self._sweep_cursor = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._event_sink: EventSink | None = None
        self._truth_sink: TruthSink | None = None
        self._label_sink: LabelSink | None = None
        self._token = (settings.feedback_token or "").encode()
        self._stopping = False

    # lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        try:
            await self.store.start(self._on_written)
        except StoreError:
            self.registry.unregister(self.collector)
            raise
        self._sweeper = self._loop.create_task(self._sweep(), name="feedback-sweeper")

    async def stop(self) -> None:
        """Write every prediction still queued for the store, within `store_stop_timeout` seconds, and say so in one
        line (INFO; WARNING when rows were lost). The app calls this on SIGTERM and SIGINT, after the analysis
        has stopped, so the last predictions it handed over are among them."""
        started = time.monotonic()
        timeout = self.settings.store_stop_timeout
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._tasks:  # held feedback joining now: at most half the time, the store's writes need the rest
            await asyncio.wait(list(self._tasks), timeout=min(5.0, timeout / 2))
        if self.pending.instances:
            log.info("stopping with %d feedback instances still waiting for their predictions (dropped)",
                     self.pending.instances)
        self._stopping = True  # predictions arriving from now on are dropped and counted
        drained = await self.store.stop(max(0.1, timeout - (time.monotonic() - started)))
        self._log_stop(drained, time.monotonic() - started)
        with contextlib.suppress(KeyError):
            self.registry.unregister(self.collector)

    def _log_stop(self, drained: Drained, seconds: float) -> None:
        if drained.complete:
            log.info("feedback stopped: flushed %d queued prediction rows to the store in %.3f s", drained.written,
                     seconds)
            return
        log.warning("feedback stopped: flushed %d of %d queued prediction rows to the store in %.3f s; %d failed to "
                    "write and %d were not written within store_stop_timeout (%g s): they are lost", drained.written,
                    drained.queued, seconds, drained.failed, drained.left, self.settings.store_stop_timeout)

    async def flush(self) -> None:
        """Wait until held feedback that can join has joined and every queued prediction is stored."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))
        await self.store.flush()

    def set_event_sink(self, sink: EventSink) -> None:
        """Hand every accepted feedback item to `sink(prediction_id, model, body)` (the payload log)."""
        self._event_sink = sink

    def set_truth_sink(self, sink: TruthSink) -> None:
        """Hand every joined truth, with its prediction, to `sink` (the history's labels)."""
        self._truth_sink = sink

    # predictions from the analysis

    def set_label_sink(self, sink: LabelSink) -> None:
        """Hand `sink(model, [(prediction_id, instance, right)])` every classification instance joined (the
        analysis calibrates its quality estimate on them)."""
        self._label_sink = sink

    def add_predictions(self, predictions: Predictions) -> None:
        """Store one model's analysed predictions, reducing them here; the analysis workers reduce theirs with
        `rules` and hand them to `add_stored`."""
        self.add_stored(self.rules.reduce(predictions))

    def add_stored(self, stored: StoredPredictions) -> None:
        """Store one model's reduced predictions and join feedback that was waiting for them. Never blocks.

        Safe from any thread (the analysis pool calls it on the event loop); from another thread only the short
        bookkeeping hops onto the loop.
        """
        if not stored.ids:
            return
        shadow = split_shadow(stored.model)[1]
        if shadow and shadow not in self.shadows:
            if len(self.shadows) < MAX_SHADOWS:
                self.shadows.add(shadow)
            elif shadow not in self._shadows_left_out:
                self._shadows_left_out.add(shadow)
                log.warning("feedback scores at most %d shadows; shadow %s (model %s) is not scored", MAX_SHADOWS,
                            shadow, stored.model)
        put = PredictionColumns(stored.model, stored.ids, stored.instances, stored.tasks, stored.values, time.time(),
                                stored.details)
        if self._loop is not None and threading.get_ident() != self._loop_thread:
            self._loop.call_soon_threadsafe(self._accept, put, stored.written)
        else:
            self._accept(put, stored.written)

    def _accept(self, put: PredictionColumns, written: bool = False) -> None:
        """On the loop: queue the put for the store writer (unless a worker `written` it already) and join held
        feedback for its ids."""
        if written:
            self.recent.arrived_written(put)
            self.store.written_elsewhere(len(put))
            self.counts.stored["worker"] += len(put)
        elif self._stopping or self.recent.queued_rows + len(put) > self.settings.store_queue_max:
            self.counts.store_dropped += len(put)
        else:
            self.recent.added(put)
            self.store.put(put)
        pending = self.shadow_pending if split_shadow(put.model)[1] else self.pending
        if not len(pending):
            return
        waiting = pending.take([pid for pid in dict.fromkeys(put.ids) if pid in pending])
        if waiting:
            found = {item.prediction_id: record for item in waiting if (record := put.record(item.prediction_id))}
            if pending is self.shadow_pending:
                for item in waiting:
                    self._shadow_labels.pop(item.prediction_id, None)
                self._spawn(self._join_held_shadows(waiting, found))
            else:
                self._spawn(self._join_held(waiting, found))

    def _on_written(self, rows: int, ok: bool) -> None:
        """Called on the loop once the writer stored (or failed to store) `rows` rows."""
        if not ok:
            self.counts.store_error("write")
        else:
            self.counts.stored["main"] += rows
        self.recent.written(rows)

    # HTTP

    async def handle(self, request: LocalRequest) -> LocalResponse:
        """Answer one request to `/v1/feedback` (the REST proxy calls this for that path)."""
        if request.path.split("?", 1)[0].rstrip("/") != FEEDBACK_PATH:
            return error_response(404, f"no such endpoint: {request.path.split('?', 1)[0]}")
        if request.method != "POST":
            return error_response(405, f"{request.method} is not allowed on {FEEDBACK_PATH}; use POST",
                                  {"Allow": "POST"})
        denied = check_bearer(self._token, request.headers.get("authorization", ""))
        if denied is not None:
            return denied
        settings = self.settings
        try:
            body = inflate(request.body, request.headers.get("content-encoding", ""), settings.feedback_max_body_bytes)
            items = parse_body(body, settings.feedback_max_instances, settings.feedback_max_depth,
                               settings.feedback_max_number_length)
        except BodyTooLarge as exc:
            self.counts.outcome(NO_MODEL, "invalid")
            return error_response(413, f"{exc} (feedback_max_body_bytes)")
        except FeedbackError as exc:
            self.counts.outcome(NO_MODEL, "invalid")
            return error_response(400, str(exc))
        try:
            counts = await self.submit(items)
        except _Rejected as exc:
            return error_response(exc.status, str(exc))
        except StoreError as exc:
            return error_response(503, f"the prediction store is unavailable: {exc}")
        return json_response(200, counts)

    # joining

    async def submit(self, items: Sequence[FeedbackItem]) -> dict[str, int]:
        """Join, hold or reject parsed feedback; returns instance counts by outcome. Raises `_Rejected` (400/404)."""
        found = await self._lookup([item.prediction_id for item in items])
        now = time.time()
        settings = self.settings
        can_hold = settings.pending_timeout > 0 and settings.pending_max > 0
        latch = dict(self.board.auto_tasks)
        joins: list[Join] = []
        held: list[FeedbackItem] = []
        for position, item in enumerate(items):
            where = None if len(items) == 1 else position
            stored = found.get(item.prediction_id)
            if stored is None:
                verdict = arrival.judge_unknown(item.prediction_id, now, settings.pending_timeout,
                                                settings.store_retention, can_hold)
                if verdict is not None:
                    self.counts.outcome(NO_MODEL, verdict.outcome, item.size)
                    raise _Rejected(404, _prefixed(where, verdict.message))
                held.append(item)
                continue
            if now - stored.time > settings.store_retention:
                self.counts.outcome(self.models(stored.model), arrival.EXPIRED, item.size)
                raise _Rejected(404, _prefixed(where, f"prediction id {item.prediction_id!r} has expired (older "
                                                      "than store_retention)"))
            try:
                joins.extend(match(item, stored, where, settings.binary_threshold, latch))
            except FeedbackError as exc:
                self.counts.outcome(self.models(stored.model), "invalid", item.size)
                raise _Rejected(400, str(exc)) from None
        for item in held:  # before any await: a prediction arriving meanwhile must find them
            self._hold(item)
        joined, duplicate = await self._apply(joins)
        await self._join_shadows([item for item in items if item.prediction_id in found], found)
        self._emit(items, found)
        return {"joined": joined, "duplicate": duplicate, "pending": sum(item.size for item in held)}

    async def _lookup(self, prediction_ids: Sequence[str]) -> dict[str, StoredPrediction]:
        """Stored predictions of these ids, from memory (not written yet) or from the store."""
        ticket = self.recent.begin_lookup()
        try:
            found: dict[str, StoredPrediction] = {}
            missing: list[str] = []
            for prediction_id in dict.fromkeys(prediction_ids):
                recent = self.recent.get(prediction_id)
                if recent is not None:
                    found[prediction_id] = recent
                else:
                    missing.append(prediction_id)
            if missing:
                try:
                    found.update(await self.store.lookup(missing))
                except StoreError:
                    self.counts.store_error("read")
                    raise
                for prediction_id in missing:  # arrived while the store was read
                    recent = self.recent.get(prediction_id)
                    if prediction_id not in found and recent is not None:
                        found[prediction_id] = recent
            return found
        finally:
            self.recent.end_lookup(ticket)

    async def _apply(self, joins: Sequence[Join]) -> tuple[int, int]:
        """Claim the joins' keys and count them: (joined, duplicate)."""
        if not joins:
            return 0, 0
        try:
            claimed = await self.store.claim([join.key for join in joins], [join.truth for join in joins])
        except StoreError:
            self.counts.store_error("claim")
            raise
        joined = duplicate = 0
        truths: list[JoinedTruth] = []
        now = time.time()
        labels: dict[str, list[tuple[str, int, bool]]] = {}
        for join, first in zip(joins, claimed, strict=True):
            model = self.models(join.model)
            if not first:
                duplicate += 1
                self.counts.outcome(model, "duplicate")
                continue
            joined += 1
            self.counts.outcome(model, "joined")
            self.board.record(join)
            truths.append(JoinedTruth(join.model, join.task, join.truth, join.predicted, now))
            if join.task != REGRESSION:
                labels.setdefault(join.model, []).append((join.key[0], join.key[1], join.truth == join.predicted))
        if truths and self._truth_sink is not None:
            try:
                self._truth_sink(truths)
            except Exception:  # the history must never break feedback
                log.exception("handing joined truths to the history failed")
        if self._label_sink is not None:
            for name, items in labels.items():
                try:
                    self._label_sink(name, items)
                except Exception:  # the estimate's calibration never fails a feedback request
                    log.exception("handing joined labels of model %s to the analysis failed", name)
        return joined, duplicate

    async def _join_shadows(self, items: Sequence[FeedbackItem], primaries: Mapping[str, StoredPrediction]) -> None:
        """Score the shadows' predictions for these items' ids with the same truths (`id~shadow`); hold the truths
        for shadow predictions not stored yet."""
        if not self.shadows or not items:
            return
        shadowed = [(item._replace(prediction_id=shadow_name(item.prediction_id, shadow)), shadow)
                    for item in items for shadow in sorted(self.shadows)]
        try:
            found = await self._lookup([item.prediction_id for item, _ in shadowed])
        except StoreError:
            return
        now = time.monotonic()
        holding = self.settings.pending_timeout > 0 and self.settings.pending_max > 0
        found_items: list[FeedbackItem] = []
        for item, shadow in shadowed:
            if item.prediction_id in found:
                found_items.append(item)
                continue
            primary = primaries.get(split_shadow(item.prediction_id)[0])
            label = self.models(shadow_name(primary.model, shadow)) if primary is not None else NO_MODEL
            if not holding:
                self.counts.outcome(label, UNSCORED, item.size)
                continue
            self._shadow_labels[item.prediction_id] = label
            for evicted in self.shadow_pending.add(item, now):
                self.counts.outcome(self._shadow_labels.pop(evicted.prediction_id, NO_MODEL), UNSCORED,
                                    evicted.size)
        await self._join_held_shadows(found_items, found)

    async def _join_held_shadows(self, items: Sequence[FeedbackItem], found: Mapping[str, StoredPrediction]) -> None:
        joins: list[Join] = []
        for item in items:
            stored = found.get(item.prediction_id)
            if stored is None:
                continue
            try:
                joins.extend(match(item, stored, None, self.settings.binary_threshold, self.board.auto_tasks))
            except FeedbackError:
                self.counts.outcome(self.models(stored.model), "invalid", item.size)
        with contextlib.suppress(StoreError):
            await self._apply(joins)

    def _hold(self, item: FeedbackItem) -> None:
        self.counts.outcome(NO_MODEL, "pending", item.size)
        for evicted in self.pending.add(item, time.monotonic()):
            self.counts.outcome(NO_MODEL, arrival.EXPIRED, evicted.size)

    async def _join_held(self, items: Sequence[FeedbackItem], found: Mapping[str, StoredPrediction]) -> None:
        """Join feedback that waited for these predictions; items that do not fit are counted invalid."""
        joins: list[Join] = []
        for item in items:
            stored = found[item.prediction_id]
            try:
                joins.extend(match(item, stored, None, self.settings.binary_threshold, self.board.auto_tasks))
            except FeedbackError as exc:
                log.info("held feedback could not join: %s", exc)
                self.counts.outcome(self.models(stored.model), "invalid", item.size)
        try:
            await self._apply(joins)
            await self._join_shadows(items, found)
        except StoreError as exc:
            log.warning("held feedback lost: %s", exc)

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sweep(self) -> None:
        """Expire held feedback; with a shared store, look for predictions other replicas analysed."""
        interval = min(SWEEP_INTERVAL, max(self.settings.pending_timeout / 4, 0.05))
        while True:
            await asyncio.sleep(interval)
            try:
                now = time.monotonic()
                for item in self.pending.expire(now):
                    self.counts.outcome(NO_MODEL, arrival.EXPIRED, item.size)
                for item in self.shadow_pending.expire(now):
                    self.counts.outcome(self._shadow_labels.pop(item.prediction_id, NO_MODEL), UNSCORED, item.size)
                if self.store.shared and len(self.pending):
                    await self._poll_shared_store()
            except Exception:  # the sweeper must outlive any one failure
                log.exception("feedback sweep failed")

    async def _poll_shared_store(self) -> None:
        """Look for held ids in the shared store (another replica may have analysed them), a slice per sweep."""
        ids = self.pending.ids()
        if self._sweep_cursor >= len(ids):
            self._sweep_cursor = 0
        chunk = ids[self._sweep_cursor:self._sweep_cursor + POLL_CHUNK]
        self._sweep_cursor += len(chunk)
        try:
            found = await self.store.lookup(chunk)
        except StoreError:
            self.counts.store_error("read")
            return
        waiting = self.pending.take(list(found))
        if waiting:
            await self._join_held(waiting, found)

    def _emit(self, items: Sequence[FeedbackItem], found: Mapping[str, StoredPrediction]) -> None:
        sink = self._event_sink
        if sink is None:
            return
        for item in items:
            stored = found.get(item.prediction_id)
            document: dict[str, Any] = {"prediction_id": item.prediction_id}
            if item.instance is not None:
                document["instance"] = item.instance
                document["truth"] = item.truths[0]
            else:
                document["truth"] = list(item.truths)
            try:
                sink(item.prediction_id, stored.model if stored else "", json.dumps(document).encode())
            except Exception:  # the payload log must never break feedback
                log.debug("feedback event sink failed", exc_info=True)

    # read side

    async def describe(self, prediction_id: str) -> tuple[int, dict[str, Any]]:
        """`GET /v1/predictions/{id}` (see lookup.py): 200 with what is stored, 404 with the reason, 503 when the
        store cannot be read. A prediction still on its way to the store is answered from memory."""
        retention = self.settings.store_retention
        ticket = self.recent.begin_lookup()
        try:
            try:
                record = await self.store.describe(prediction_id)
            except StoreError as exc:
                self.counts.store_error("read")
                return 503, {"error": f"the prediction store is unavailable: {exc}"}
            if record is None and (recent := self.recent.columns(prediction_id)) is not None:
                record = recent.describe(prediction_id)
        finally:
            self.recent.end_lookup(ticket)
        if record is None:
            return lookup.not_found(prediction_id, retention)
        return lookup.found(prediction_id, record, retention)

    def quality_snapshot(self, model: str) -> dict[str, Any] | None:
        """The model's quality for the monitor drill-down, or None before any of its feedback joined."""
        quality = self.board.get(model)
        if quality is None:
            return None
        outcomes = {outcome: value for (name, outcome), value in self.counts.outcomes.items() if name == model}
        return quality_snapshot(quality, outcomes)

    def _gauges(self) -> dict[str, float]:
        return {"sidecar_feedback_pending_instances": self.pending.instances,
                "sidecar_feedback_store_queue_rows": self.recent.queued_rows}


def _prefixed(position: int | None, message: str) -> str:
    return message if position is None else f"item {position}: {message}"


__all__ = ["FeedbackService"]
