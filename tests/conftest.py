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
