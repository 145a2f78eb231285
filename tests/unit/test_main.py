"""`sidecar run` tunes the interpreter for a latency-sensitive event loop beside background threads."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from sidecar.runtime import GIL_SWITCH_INTERVAL, shorten_gil_switch_interval


@pytest.fixture
def interpreter_settings() -> Iterator[None]:
    interval = sys.getswitchinterval()
    yield
    sys.setswitchinterval(interval)


@pytest.mark.usefixtures("interpreter_settings")
def test_the_loop_thread_wins_the_gil_back_within_half_a_millisecond() -> None:
    shorten_gil_switch_interval()
    assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL) == pytest.approx(0.0005)


def test_version_prints_the_packages_version(capsys: pytest.CaptureFixture[str]) -> None:
    from sidecar import __version__
    from sidecar.__main__ import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"sidecar {__version__}"
