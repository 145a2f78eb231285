"""The TensorFlow backend: export, method-name patch and loading (slow: imports TensorFlow and trains)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sidecar.testbed import data, keras_models
from sidecar.testbed.model import REGRESS_METHOD
from sidecar.testbed.status import Code, ServingError

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.slow


def test_export_writes_tf_serving_layout_with_patched_methods_and_serves_it(tmp_path: Path) -> None:
    path = tmp_path / "regressor" / "1"
    path.parent.mkdir()
    keras_models.export_model("regressor", 1, path)
    assert (path / keras_models.MODEL_SIGNATURES_FILE).exists()
    assert list(path.parent.iterdir()) == [path]  # no temporary directory left behind
    signatures = keras_models.read_signature_defs(path)
    assert signatures["regression"].method_name == REGRESS_METHOD
    assert signatures["serving_default"].inputs["features"].name == "serving_default_features:0"

    servable = keras_models.load_servable("regressor", 1, path)
    features, _ = data.regressor_batch(100, seed=8)
    _, outputs = servable.predict("", {"features": features})
    assert np.abs(outputs["value"] - data.regressor_target(features)).mean() < 0.5
    with pytest.raises(ServingError) as caught:
        servable.run("regression", {"inputs": np.array([b"\xff"], dtype=object)})
    assert caught.value.code == Code.INVALID_ARGUMENT
