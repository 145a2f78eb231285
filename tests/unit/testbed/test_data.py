from __future__ import annotations

import numpy as np

from sidecar.testbed import data


def test_batches_are_deterministic_per_seed() -> None:
    first, second = data.classifier_batch(50, seed=3), data.classifier_batch(50, seed=3)
    np.testing.assert_array_equal(first[0], second[0])
    assert not np.array_equal(first[0], data.classifier_batch(50, seed=4)[0])


def test_classifier_batch_shapes_and_classes() -> None:
    features, classes = data.classifier_batch(300, seed=0)
    assert features.shape == (300, 4) and features.dtype == np.float32
    assert classes.dtype == np.int64 and set(classes.tolist()) == {0, 1, 2}


def test_nearest_center_rule_is_right_about_nine_times_in_ten() -> None:
    features, classes = data.classifier_batch(5000, seed=1)
    scaled = (features[:, None, :] - data.CLASS_CENTERS[None]) / data.CLASS_SPREAD
    accuracy = ((scaled**2).sum(axis=2).argmin(axis=1) == classes).mean()
    assert 0.85 < accuracy < 0.99


def test_drift_shifts_the_inputs() -> None:
    plain, _ = data.classifier_batch(2000, seed=2)
    drifted, _ = data.classifier_batch(2000, seed=2, drift=1.0)
    np.testing.assert_allclose(drifted - plain, np.broadcast_to(data.CLASS_SPREAD, plain.shape), rtol=1e-5)
    assert data.regressor_batch(1000, seed=2, drift=2.0)[0].mean() > 1.5


def test_regressor_target_follows_the_linear_rule() -> None:
    features, target = data.regressor_batch(1000, seed=5)
    residual = target - data.regressor_target(features)
    assert abs(residual.std() - data.REGRESSION_NOISE) < 0.02


def test_multi_batch_has_tags_and_the_rule_truth() -> None:
    x, tags, truth = data.multi_batch(100, seed=1)
    assert x.shape == (100, 3) and tags.dtype == object and set(tags) <= set(data.MULTI_TAGS)
    np.testing.assert_array_equal(truth, (x[:, 0] + x[:, 1] - x[:, 2] > 0).astype(np.float32))
