"""The numpy backend gives the unit tests real models without TensorFlow's start-up cost."""

from __future__ import annotations

import pytest

from sidecar.testbed.catalog import build_registry
from sidecar.testbed.model import ModelRegistry


@pytest.fixture(scope="session")
def registry() -> ModelRegistry:
    return build_registry("numpy")
