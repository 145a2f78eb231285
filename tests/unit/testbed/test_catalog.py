from __future__ import annotations

import pytest

from sidecar.testbed import catalog
from sidecar.testbed.model import ModelRegistry


def test_auto_backend_prefers_tensorflow_when_installed() -> None:
    expected = "tensorflow" if catalog.tensorflow_available() else "numpy"
    assert catalog.choose_backend("auto") == expected
    assert catalog.choose_backend("numpy") == "numpy"
    with pytest.raises(ValueError, match="backend must be one of"):
        catalog.choose_backend("torch")


def test_every_model_has_two_versions_and_labels(registry: ModelRegistry) -> None:
    assert registry.backend == "numpy"
    for name in catalog.MODELS:
        assert [s.version for s in registry.versions(name)] == [2, 1]
        assert registry.labels[name] == {"stable": 1, "canary": 2}


def test_tensorflow_backend_needs_a_directory() -> None:
    with pytest.raises(ValueError, match="needs a model directory"):
        catalog.build_registry("tensorflow", None)
