"""Which models the testbed serves, and building them with the TensorFlow or the numpy backend.

Every model is served as versions 1 and 2 (2 is trained longer with another seed, so it is the latest), with
labels `stable` -> 1 and `canary` -> 2.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from sidecar.testbed import numpy_models
from sidecar.testbed.model import ModelRegistry, Servable

log = logging.getLogger(__name__)

MODELS = ("classifier", "regressor", "multi", "pair")
VERSIONS = (1, 2)
LABELS = {"stable": 1, "canary": 2}
BACKENDS = ("auto", "tensorflow", "numpy")


def tensorflow_available() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def choose_backend(backend: str) -> str:
    """`auto` means TensorFlow when it is installed, else numpy."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "tensorflow" if tensorflow_available() else "numpy"
    return backend


def build_registry(backend: str, model_dir: Path | None = None) -> ModelRegistry:
    """Build every model version. The TensorFlow backend exports missing SavedModels into `model_dir` (TF
    Serving's layout) and loads them; blocking, seconds."""
    backend = choose_backend(backend)
    servables: list[Servable] = []
    if backend == "tensorflow":
        if model_dir is None:
            raise ValueError("the tensorflow backend needs a model directory")
        from sidecar.testbed import keras_models

        for name in MODELS:
            for version in VERSIONS:
                path = model_dir / name / str(version)
                if not (path / keras_models.MODEL_SIGNATURES_FILE).exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    log.info("training and exporting %s version %d into %s", name, version, path)
                    keras_models.export_model(name, version, path)
                servables.append(keras_models.load_servable(name, version, path))
    else:
        servables = [numpy_models.build(name, version) for name in MODELS for version in VERSIONS]
    labels = {name: dict(LABELS) for name in MODELS}
    return ModelRegistry(servables, labels, backend=backend)
