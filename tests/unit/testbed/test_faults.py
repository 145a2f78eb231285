from __future__ import annotations

import json

import pytest

from sidecar.testbed import faults


@pytest.mark.parametrize(("value", "seconds"), [
    (None, 0.0), ("", 0.0), ("abc", 0.0), ("-5", 0.0), ("nan", 0.0), ("250", 0.25), (" 1500 ", 1.5),
    ("999999999", faults.MAX_DELAY_SECONDS),
])
def test_delay_header_is_milliseconds_and_ignores_garbage(value: str | None, seconds: float) -> None:
    assert faults.delay_seconds(value) == seconds


def test_echo_is_opt_in() -> None:
    assert faults.wants_echo("1") and faults.wants_echo("true")
    assert not faults.wants_echo(None) and not faults.wants_echo("0")


def test_echo_value_is_json_with_lower_case_names_and_joined_repeats() -> None:
    value = faults.echo_value([("Traceparent", "00-a"), ("X-A", "1"), ("x-a", "2")])
    assert json.loads(value) == {"traceparent": "00-a", "x-a": "1, 2"}
    assert value.isascii()
