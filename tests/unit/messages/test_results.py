"""Worker-to-main messages: histogram counts made in the workers, and drift features packed until someone reads them."""

from __future__ import annotations

import pickle

import pytest

from sidecar.messages.results import FeatureStat, PackedFeatures, add_counted, bucket_counts, worst_features

BOUNDS = (0.5, 1.0, 2.0)


def feature(name: str, adjusted: float, effect: float = 0.1) -> FeatureStat:
    return FeatureStat(name, "numeric", 0.5, adjusted / 2, adjusted, effect, adjusted < 0.05, {"mean": 0.0},
                       {"mean": 1.0})


def test_values_count_into_the_first_bucket_they_do_not_exceed_and_non_finite_ones_are_left_out() -> None:
    counted = bucket_counts([0.1, 0.5, 0.7, 1.0, 2.0, 3.0, float("nan"), float("inf")], BOUNDS)
    assert counted.counts == (2, 2, 1, 1)
    assert counted.total == pytest.approx(7.3)
    assert add_counted(counted, bucket_counts([9.0], BOUNDS)).counts == (2, 2, 1, 2)


def test_ties_in_p_value_rank_the_larger_effect_first() -> None:
    ranked = worst_features([feature("small", 0.01, 0.1), feature("large", 0.01, -0.9), feature("nan", float("nan"))],
                            2)
    assert [item.name for item in ranked] == ["large", "small"]


def test_packed_features_keep_the_worst_aside_and_give_all_back_after_the_trip() -> None:
    features = [feature(f"x[{n}]", p_value) for n, p_value in enumerate([0.5, 0.001, 0.9, 0.02, 0.3])]
    packed = pickle.loads(pickle.dumps(PackedFeatures.of(features, 2)))
    assert [item.name for item in packed.worst] == ["x[1]", "x[3]"]
    assert isinstance(packed.blob, bytes) and len(packed) == 5
    assert packed.all() == features
    assert packed == PackedFeatures.of(features, 2) != PackedFeatures.of(features, 3)
