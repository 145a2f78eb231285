"""Shared fixtures: see tests/support for the servers the tests start on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.testbed import TestbedProcess, running_testbed


@pytest.fixture(scope="session")
def testbed() -> Iterator[TestbedProcess]:
    """One testbed process (real Keras models behind TF Serving's REST and gRPC APIs) for the whole session."""
    with running_testbed() as process:
        yield process


@pytest.fixture(scope="session")
def numpy_testbed() -> Iterator[TestbedProcess]:
    """The testbed's numpy backend (no TensorFlow: starts in about a second), for the whole session."""
    with running_testbed("--backend", "numpy") as process:
        yield process
