"""The monitoring page in a real headless Chromium, in front of the real sidecar and the numpy testbed: demo-like
traffic (a reference, a shifted phase, feedback) shows up as models with their status, drawn charts,
reference-versus-current distributions and a confusion matrix, with no console error; with an admin token set, the
page asks for it once and then works; when the history route answers, its buckets are drawn too."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.app import Sidecar
from sidecar.config import from_mapping
from sidecar.telemetry.admin import AdminServer, build_admin_app
from sidecar.telemetry.metrics import RequestMetrics, new_registry
from sidecar.telemetry.tracing import disabled
from tests.support.browser import console_errors, headless_chromium
from tests.support.testbed import TestbedProcess

pytestmark = pytest.mark.slow
REFERENCE = 200
WINDOW = 100
TOKEN = "page-test-token"


async def start_sidecar(testbed: TestbedProcess, state_dir: Path, token: str | None = None) -> Sidecar:
    settings = from_mapping({
        "upstream_rest": testbed.rest_url, "upstream_grpc": testbed.grpc_target, "listen_rest": "127.0.0.1:0",
        "listen_grpc": "127.0.0.1:0", "listen_admin": "127.0.0.1:0", "state_dir": str(state_dir),
        "reference_size": REFERENCE, "window_size": WINDOW, "admin_token": token,
    })
    sidecar = Sidecar(settings, tracing=disabled())
    await sidecar.start()
    return sidecar


@pytest.fixture
async def sidecar(numpy_testbed: TestbedProcess, tmp_path: Path) -> AsyncIterator[Sidecar]:
    running = await start_sidecar(numpy_testbed, tmp_path / "state")
    yield running
    await running.stop()


async def demo_traffic(sidecar: Sidecar, instances: int, shifted: bool, accuracy: float, rng: random.Random,
                       pause: float = 0.05) -> None:
    """Like `sidecar demo`: batches of 10 to the classifier (feedback right `accuracy` of the time) and the
    regressor; shifted traffic moves feature 0 by 1.5 standard deviations and holds 2% far outliers."""
    base = f"http://127.0.0.1:{sidecar.rest_port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(instances // 10):
            rows = [[rng.gauss(0.0, 1.0) + (1.5 if shifted and column == 0 else 0.0) for column in range(4)]
                    for _ in range(10)]
            if shifted:
                rows = [[value * 10 + 12 for value in row] if rng.random() < 0.02 else row for row in rows]
            async with session.post(f"{base}/v1/models/classifier:predict", json={"instances": rows}) as response:
                assert response.status == 200, await response.text()
                prediction_id = response.headers["X-Prediction-Id"]
                answers = (await response.json())["predictions"]
            predicted = [max(range(3), key=probabilities.__getitem__) for probabilities in answers]
            truth = [p if rng.random() < accuracy else (p + 1) % 3 for p in predicted]
            async with session.post(f"{base}/v1/feedback", json={"prediction_id": prediction_id,
                                                                 "truth": truth}) as response:
                assert response.status == 200, await response.text()
            async with session.post(f"{base}/v1/models/regressor:predict", json={"instances": rows}) as response:
                assert response.status == 200, await response.text()
            await asyncio.sleep(pause)


async def until(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Poll the browser (in a thread, so the sidecar's loop keeps serving) until `check()` is truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"the page never showed {what} in {timeout:g} s")
        await asyncio.sleep(0.5)


def script(driver: Any, source: str) -> Callable[[], Any]:
    return lambda: driver.execute_script(source)


POINTS = "return JSON.parse(document.getElementById('detail').dataset.points || '{}')"
MODELS = "return [...document.querySelectorAll('#models tbody tr')].map(r => [r.dataset.model, r.innerText])"


async def test_the_page_shows_models_charts_distributions_and_confusion_after_demo_traffic(
        sidecar: Sidecar, tmp_path: Path) -> None:
    admin = f"http://127.0.0.1:{sidecar.admin_port}"
    history_url = f"{admin}/v1/monitor/classifier/history"
    with headless_chromium(1440, 1700) as driver:
        await asyncio.to_thread(driver.get, f"{admin}/?interval=1")
        await until(script(driver, "return document.getElementById('connection').textContent === 'live'"),
                    "the live state")
        rng = random.Random(7)
        await demo_traffic(sidecar, REFERENCE + WINDOW, shifted=False, accuracy=0.9, rng=rng)
        await demo_traffic(sidecar, 3 * WINDOW, shifted=True, accuracy=0.4, rng=rng)

        rows = await until(lambda: (lambda r: r if len(r) == 2 and "drift" in r[0][1] else None)(
            driver.execute_script(MODELS)), "both models, the classifier drifting")
        assert [model for model, _ in rows] == ["classifier", "regressor"]
        assert "acc" in rows[0][1]  # quality from feedback in the list

        points = await until(lambda: (lambda p: p if all(p.get(k, 0) >= 2 for k in
                                                         ("traffic", "latency", "drift", "outliers", "quality"))
                                      else None)(driver.execute_script(POINTS)), "every chart with points")
        # the live series (dashed ones are history) as (points, path length): a rate over scrapes with no new
        # instances between them (the traffic has stopped) has no value, so such a series may hold one point
        drawn = driver.execute_script("return [...document.querySelectorAll('.chart path.series:not(.dashed)')]"
                                      ".map(p => [Number(p.getAttribute('data-points')), p.getAttribute('d').length])")
        lines = [length for points, length in drawn if points >= 2]
        assert len(lines) >= 6 and all(length > 10 for length in lines), drawn
        assert all(length > 5 for _, length in drawn), drawn  # every series draws at least its one point
        assert points["traffic"] >= 2 and points["drift"] >= 2

        distributions = await until(script(driver, """return [...document.querySelectorAll('.dist-card')].map(c =>
            [c.querySelector('figcaption b').textContent, c.querySelectorAll('rect').length])"""),
                                    "distribution plots")
        assert distributions[0][0] == "features[0]"  # the shifted feature is the most drifted one
        assert all(boxes >= 2 for _, boxes in distributions), distributions  # reference and current drawn
        matrix = driver.execute_script(
            "return [...document.querySelectorAll('#confusion tbody tr')].map(r => r.querySelectorAll('td').length)")
        assert matrix and all(cells == len(matrix) for cells in matrix), matrix

        async with aiohttp.ClientSession() as session, session.get(history_url) as response:
            history_answers = response.status
        status = driver.find_element("id", "history-status").text
        assert status.startswith("History unavailable" if history_answers == 404 else "History:"), status
        await asyncio.to_thread(driver.save_screenshot, str(tmp_path / "monitoring-page.png"))
        assert (tmp_path / "monitoring-page.png").stat().st_size > 10_000
        errors = console_errors(driver, expected=lambda message: "/history" in message and "404" in message
                                and history_answers == 404)
        assert errors == []


async def test_with_an_admin_token_the_page_asks_for_it_once_and_then_works(
        numpy_testbed: TestbedProcess, tmp_path: Path) -> None:
    sidecar = await start_sidecar(numpy_testbed, tmp_path / "state", token=TOKEN)
    try:
        await demo_traffic(sidecar, 20, shifted=False, accuracy=1.0, rng=random.Random(1), pause=0)
        admin = f"http://127.0.0.1:{sidecar.admin_port}"
        with headless_chromium() as driver:
            await asyncio.to_thread(driver.get, f"{admin}/?interval=1")
            await until(script(driver, "return !document.getElementById('token-form').hidden"), "the token form")
            assert driver.find_element("id", "models").find_elements("css selector", "tbody tr") == []
            refused = console_errors(driver)
            assert refused and all("401" in message for message in refused), refused

            await asyncio.to_thread(_submit_token, driver, "wrong")
            await until(script(driver, "return document.getElementById('token-message').textContent"),
                        "that the wrong token was refused")
            console_errors(driver)  # the wrong token's 401s
            await asyncio.to_thread(_submit_token, driver, TOKEN)
            rows = await until(script(driver, MODELS), "the models once the token is in")
            assert [model for model, _ in rows] == ["classifier", "regressor"]
            await until(script(driver, "return Number(document.body.dataset.polls) >= 3"), "polls with the token")
            assert driver.execute_script("return document.getElementById('token-form').hidden") is True
            assert console_errors(driver, expected=lambda message: "/history" in message and "404" in message) == []
            # the token is kept for the tab: a reload does not ask again
            await asyncio.to_thread(driver.refresh)
            await until(script(driver, MODELS), "the models after a reload")
            assert driver.execute_script("return document.getElementById('token-form').hidden") is True
    finally:
        await sidecar.stop()


def _submit_token(driver: Any, token: str) -> None:
    field = driver.find_element("id", "token")
    field.clear()
    field.send_keys(token)
    driver.find_element("css selector", "#token-form button[type=submit]").click()


def contract_history(now: float, cursor: str | None) -> dict[str, Any]:
    """Answers shaped as the history API's contract: two pages of 60 s buckets, the second after `next`."""
    def bucket(i: int) -> dict[str, Any]:
        start = now - 600 + 60 * i
        return {"start": start, "end": start + 60, "instances": 600, "requests": 60,
                "inputs": {"x[0]": {"kind": "numeric", "count": 600, "missing": 0, "mean": 0.1 * i, "std": 1.0,
                                    "min": -3.0, "p5": -1.6, "p50": 0.1, "p95": 1.7, "max": 3.3}},
                "outputs": {"task": "classification", "classes": {"0": {"count": 600, "mean_probability": 0.8}}},
                "labels": {"count": 50, "classes": {"0": 50}, "accuracy": 0.9 - 0.05 * i, "f1": 0.8},
                "drift": {"feature_drift": {"windows": 1, "drifted": int(i > 2), "min_p_value": 10.0 ** -i}},
                "outliers": {"mahalanobis": {"instances": 600, "outliers": 6 * i}}}
    if cursor is None:
        return {"model": "classifier", "bucket": {"kind": "time", "seconds": 60.0},
                "buckets": [bucket(i) for i in range(3)], "next": "page-2"}
    return {"model": "classifier", "bucket": {"kind": "time", "seconds": 60.0},
            "buckets": [bucket(i) for i in range(3, 6)], "next": None}


async def test_history_buckets_are_drawn_when_the_history_route_answers(tmp_path: Path) -> None:
    """The history route (another part of the admin listener) is stood in for by its contract's answers; the page,
    the thing under test, follows `next` and draws every bucket."""
    asked: list[dict[str, str]] = []

    @web.middleware
    async def history(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path != "/v1/monitor/classifier/history":
            return await handler(request)
        asked.append(dict(request.query))
        return web.json_response(contract_history(time.time(), request.query.get("cursor")))

    app = build_admin_app(new_registry(), None, lambda model, extremes: {"model": model}, lambda: ["classifier"])
    app.middlewares.append(history)
    server = AdminServer(app, "127.0.0.1", 0)
    await server.start()
    try:
        with headless_chromium() as driver:
            await asyncio.to_thread(driver.get, f"http://127.0.0.1:{server.port}/?interval=1")
            status = await until(lambda: (lambda text: text if text.startswith("History:") else None)(
                driver.find_element("id", "history-status").text), "the history status")
            assert status.startswith("History: 6 buckets of 60 s"), status
            dashed = driver.execute_script("""return Object.fromEntries([...document.querySelectorAll('.chart')].map(
                c => [c.id, [...c.querySelectorAll('path.series.dashed')].map(p => Number(p.dataset.points))]))""")
            assert dashed["chart-traffic"] == [6] and dashed["chart-drift"] == [6], dashed
            assert dashed["chart-outliers"] == [6] and dashed["chart-quality"] == [6], dashed
            assert console_errors(driver) == []
        assert "from" in asked[0] and "to" in asked[0] and asked[1]["cursor"] == "page-2"
    finally:
        await server.stop()


HOSTILE = '<img src=x onerror="document.title=1">'


async def test_a_hostile_model_name_is_shown_as_text_and_a_malformed_fragment_does_not_stop_the_page() -> None:
    registry = new_registry()
    metrics = RequestMetrics()
    registry.register(metrics)
    metrics.record(HOSTILE, "", "rest", "predict", "200", 0.01, 0.005, 100, 50)
    app = build_admin_app(registry, None, lambda model, extremes: {"model": model}, lambda: [HOSTILE])
    server = AdminServer(app, "127.0.0.1", 0)
    await server.start()
    try:
        with headless_chromium() as driver:
            await asyncio.to_thread(driver.get, f"http://127.0.0.1:{server.port}/?interval=1#%E0")
            rows = await until(script(driver, MODELS), "the model list")
            assert rows[0][0] == HOSTILE and HOSTILE in rows[0][1]
            assert driver.execute_script("return document.querySelectorAll('#models img').length") == 0
            assert driver.title != "1"
            errors = console_errors(driver)  # the history route is off here (404); nothing else may fail
            assert [line for line in errors if "/history?" not in line] == [], errors
    finally:
        await server.stop()
