"""The projection of wide inputs: principal components of the standardised reference, residual, row mean and std."""

from __future__ import annotations

import numpy as np
import pytest

from sidecar.detectors.projection import SUMMARIES, Projection
from sidecar.detectors.robust import CentreSpread, centre_spread


def subspace_rows(rng: np.random.Generator, rows: int, basis: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Rows lying exactly in the affine subspace `origin + span(basis)`."""
    return np.asarray(origin + rng.normal(size=(rows, basis.shape[0])) @ basis)


def fitted(reference: np.ndarray, components: int) -> Projection:
    return Projection.fit(reference, components, centre_spread(reference))


def test_components_are_orthonormal() -> None:
    rng = np.random.default_rng(0)
    projection = fitted(rng.normal(size=(300, 40)) @ rng.normal(size=(40, 40)), 10)
    k = projection.components.shape[0]
    assert projection.components.shape == (10, 40)
    np.testing.assert_allclose(projection.components @ projection.components.T, np.eye(k), atol=1e-10)


def test_fewer_components_than_reference_rows() -> None:
    projection = fitted(np.random.default_rng(1).normal(size=(5, 30)), 8)
    assert projection.components.shape == (4, 30)
    assert projection.width == 4 + len(SUMMARIES)


def test_rows_of_the_reference_subspace_have_no_residual() -> None:
    rng = np.random.default_rng(2)
    basis = rng.normal(size=(3, 25))
    origin = rng.uniform(-5, 5, size=25)
    projection = fitted(subspace_rows(rng, 200, basis, origin), 3)
    residual = projection.transform(subspace_rows(rng, 50, basis, origin))[:, 3]
    np.testing.assert_allclose(residual, 0.0, atol=1e-6)


def test_a_row_off_the_subspace_has_its_standardised_distance_from_it_as_residual() -> None:
    rng = np.random.default_rng(3)
    basis = rng.normal(size=(4, 30))
    origin = rng.uniform(-5, 5, size=30)
    reference = subspace_rows(rng, 300, basis, origin)
    scale = centre_spread(reference)
    projection = Projection.fit(reference, 4, scale)
    # The subspace in standardised units is spanned by the basis divided column-wise by the spread.
    q, _ = np.linalg.qr((basis / scale.spread).T)
    away = rng.normal(size=30)
    away -= q @ (q.T @ away)
    away *= 2.5 / np.linalg.norm(away)  # 2.5 standardised units from the subspace
    on = subspace_rows(rng, 1, basis, origin)[0]
    row = on + away * scale.spread
    assert projection.transform(row[None, :])[0, 4] == pytest.approx(2.5, rel=1e-8)


def test_component_scores_are_the_centred_standardised_row_projected_on_the_components() -> None:
    rng = np.random.default_rng(4)
    reference = rng.normal(size=(200, 12)) @ rng.normal(size=(12, 12))
    scale = centre_spread(reference)
    projection = Projection.fit(reference, 5, scale)
    x = rng.normal(size=(7, 12)) @ rng.normal(size=(12, 12))
    z = (x - scale.centre) / scale.spread - ((reference - scale.centre) / scale.spread).mean(axis=0)
    np.testing.assert_allclose(projection.transform(x)[:, :5], z @ projection.components.T, rtol=1e-10, atol=1e-12)


def test_residual_and_scores_together_keep_the_whole_centred_standardised_row() -> None:
    rng = np.random.default_rng(5)
    reference = rng.normal(size=(200, 12)) @ rng.normal(size=(12, 12))
    scale = centre_spread(reference)
    projection = Projection.fit(reference, 5, scale)
    x = rng.normal(size=(7, 12)) * 3
    z = (x - scale.centre) / scale.spread - projection.offset
    out = projection.transform(x)
    np.testing.assert_allclose((out[:, :5] ** 2).sum(axis=1) + out[:, 5] ** 2, (z * z).sum(axis=1), rtol=1e-10)


def test_mean_and_std_summaries_are_numpys_of_the_row_standardised_and_centred_on_the_reference() -> None:
    rng = np.random.default_rng(6)
    reference = rng.exponential(size=(400, 30))
    scale = centre_spread(reference)
    projection = Projection.fit(reference, 5, scale)
    x = rng.exponential(size=(6, 30))
    z = (x - scale.centre) / scale.spread - ((reference - scale.centre) / scale.spread).mean(axis=0)
    out = projection.transform(x)
    np.testing.assert_allclose(out[:, 6], z.mean(axis=1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out[:, 7], z.std(axis=1), rtol=1e-10)


def test_a_row_with_a_nan_gives_nan_everywhere_and_leaves_other_rows_alone() -> None:
    rng = np.random.default_rng(7)
    reference = rng.normal(size=(100, 10))
    projection = fitted(reference, 3)
    x = rng.normal(size=(3, 10))
    clean = projection.transform(x)
    x[1, 4] = np.nan
    out = projection.transform(x)
    assert np.isnan(out[1]).all()
    np.testing.assert_array_equal(out[[0, 2]], clean[[0, 2]])


def test_transform_gives_components_then_residual_mean_and_std() -> None:
    rng = np.random.default_rng(8)
    projection = fitted(rng.normal(size=(100, 10)), 3)
    assert projection.transform(rng.normal(size=(9, 10))).shape == (9, 3 + 3)


def test_names_are_one_per_component_then_one_per_summary() -> None:
    projection = fitted(np.random.default_rng(9).normal(size=(100, 10)), 3)
    assert projection.names("projection") == [
        "projection[pc0]", "projection[pc1]", "projection[pc2]",
        "projection#residual", "projection#mean", "projection#std"]
    assert len(projection.names("x")) == projection.width


def test_standardisation_uses_the_given_scale() -> None:
    rng = np.random.default_rng(10)
    reference = rng.normal(size=(100, 6))
    projection = Projection.fit(reference, 2, CentreSpread(np.full(6, 3.0), np.full(6, 2.0)))
    x = rng.normal(size=(4, 6))
    z = (x - 3.0) / 2.0 - ((reference - 3.0) / 2.0).mean(axis=0)
    np.testing.assert_allclose(projection.transform(x)[:, 3], z.mean(axis=1), rtol=1e-10, atol=1e-12)
