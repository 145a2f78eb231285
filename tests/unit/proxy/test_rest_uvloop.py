"""Production runs the proxy under uvloop (the rest of the suite uses asyncio's default loop): the same
behaviour tests, run again on a uvloop loop."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from . import test_deadlines, test_rest, test_rest_errors, test_rest_local, test_rest_telemetry, test_upstream

Scenario = Callable[[], Awaitable[None]]


def scenarios() -> list[tuple[str, Scenario]]:
    """Every parameterless async test of the REST proxy modules."""
    found = []
    for module in (test_rest, test_rest_errors, test_rest_telemetry, test_rest_local, test_upstream, test_deadlines):
        for name, function in vars(module).items():
            if (name.startswith("test_") and inspect.iscoroutinefunction(function)
                    and not inspect.signature(function).parameters and not hasattr(function, "pytestmark")):
                found.append((f"{module.__name__.rsplit('.', 1)[-1]}::{name}", function))
    return found


SCENARIOS = scenarios()


def test_there_are_scenarios_to_run() -> None:
    assert len(SCENARIOS) > 40


@pytest.mark.parametrize("scenario", [s for _, s in SCENARIOS], ids=[n for n, _ in SCENARIOS])
def test_behaviour_holds_under_uvloop(scenario: Scenario) -> None:
    uvloop.run(scenario())  # type: ignore[arg-type]
