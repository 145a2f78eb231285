"""Reconstruction outliers from real TensorFlow SavedModels (a linear autoencoder and a VAE-shaped model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sidecar.detectors.autoencoder import ReconstructionOutlier

tf: Any = pytest.importorskip("tensorflow")

FEATURES, LATENT = 6, 2


def low_rank_data(rng: np.random.Generator, rows: int, basis: np.ndarray) -> np.ndarray:
    """Points near a 2-D subspace of 6-D space: the autoencoder reconstructs them well."""
    return np.asarray(rng.normal(size=(rows, LATENT)) @ basis + 0.05 * rng.normal(size=(rows, FEATURES)) + 1.0)


def pca(reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = reference.mean(axis=0)
    _, _, vt = np.linalg.svd(reference - mean, full_matrices=False)
    return mean, vt[:LATENT].T  # (FEATURES,), (FEATURES, LATENT)


class LinearAutoencoder(tf.Module):  # type: ignore[misc]
    def __init__(self, mean: np.ndarray, components: np.ndarray, vae_outputs: bool) -> None:
        super().__init__()
        self.mean = tf.Variable(mean, dtype=tf.float32)
        self.components = tf.Variable(components, dtype=tf.float32)
        self.vae_outputs = vae_outputs

    @tf.function(input_signature=[tf.TensorSpec([None, FEATURES], tf.float32, name="features")])  # type: ignore[untyped-decorator]
    def reconstruct(self, x: Any) -> Any:
        latent = tf.matmul(x - self.mean, self.components)
        reconstruction = tf.matmul(latent, self.components, transpose_b=True) + self.mean
        if self.vae_outputs:
            return {"z_mean": latent, "z_log_var": tf.zeros_like(latent), "reconstruction": reconstruction}
        return reconstruction


def save_model(path: Path, reference: np.ndarray, vae_outputs: bool = False) -> str:
    module = LinearAutoencoder(*pca(reference), vae_outputs=vae_outputs)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.reconstruct})
    return str(path)


@pytest.fixture
def data() -> tuple[np.random.Generator, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(LATENT, FEATURES))
    return rng, basis, low_rank_data(rng, 2000, basis)


def expected_scores(reference: np.ndarray, x: np.ndarray) -> np.ndarray:
    mean, components = pca(reference)
    reconstruction = (x - mean) @ components @ components.T + mean
    return ((reconstruction - x) ** 2).mean(axis=1)  # type: ignore[no-any-return]


@pytest.mark.parametrize("vae_outputs", [False, True])
def test_score_is_the_mean_squared_reconstruction_error(tmp_path: Path, data: Any, vae_outputs: bool) -> None:
    rng, basis, reference = data
    detector = ReconstructionOutlier(save_model(tmp_path / "ae", reference, vae_outputs), reference, fpr=0.01)
    x = low_rank_data(rng, 50, basis)
    np.testing.assert_allclose(detector.score(x), expected_scores(reference, x), rtol=1e-3, atol=1e-6)


def test_points_off_the_learned_subspace_are_outliers_and_fresh_data_mostly_not(tmp_path: Path, data: Any) -> None:
    rng, basis, reference = data
    fit, calibration = reference[:1000], reference[1000:]
    detector = ReconstructionOutlier(save_model(tmp_path / "ae", fit), calibration, fpr=0.05)
    fresh = low_rank_data(rng, 20000, basis)
    assert 0.03 < detector.predict(fresh).mean() < 0.07
    span, _ = np.linalg.qr(basis.T)
    direction = rng.normal(size=FEATURES)
    direction -= span @ (span.T @ direction)  # orthogonal to the data's plane
    off = fresh[:10] + direction / np.linalg.norm(direction)
    assert detector.predict(off).all()


def test_rows_with_non_finite_values_score_nan_and_batches_cover_every_row(tmp_path: Path, data: Any) -> None:
    rng, basis, reference = data
    detector = ReconstructionOutlier(save_model(tmp_path / "ae", reference), reference)
    x = low_rank_data(rng, 5000, basis)  # more rows than one batch
    x[3, 2] = np.nan
    scores = detector.score(x)
    assert np.isnan(scores[3]) and np.isfinite(np.delete(scores, 3)).all()
    assert not detector.predict(x[3:4])[0]


def test_a_missing_model_or_a_mismatched_width_is_a_clear_error(tmp_path: Path, data: Any) -> None:
    _, _, reference = data
    with pytest.raises(ValueError, match="cannot load the SavedModel"):
        ReconstructionOutlier(str(tmp_path / "nowhere"), reference)
    detector = ReconstructionOutlier(save_model(tmp_path / "ae", reference), reference)
    with pytest.raises(ValueError, match="features"):
        detector.score(np.zeros((2, FEATURES + 1)))
