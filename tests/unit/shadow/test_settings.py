"""Which shadow a model gets: the global one, its own, or none; bad entries stop start-up with one line."""

from __future__ import annotations

import pytest

from sidecar.config import ConfigError, from_mapping
from sidecar.shadow.sender import sampled
from sidecar.shadow.settings import ShadowTarget


def test_the_global_shadow_applies_to_every_model_with_the_name_mapping() -> None:
    settings = from_mapping({"shadow_rest": "http://10.0.0.2:8501", "shadow_model_map": "iris=iris_next",
                             "shadow_sample": "0.25"}).shadow
    assert settings.enabled
    assert settings.target("iris") == ShadowTarget("shadow", ("10.0.0.2", 8501), None, "iris_next", "", 0.25)
    assert settings.target("other") == ShadowTarget("shadow", ("10.0.0.2", 8501), None, None, "", 0.25)


def test_a_model_entry_overrides_the_global_shadow_or_turns_it_off() -> None:
    settings = from_mapping({"shadow_grpc": "10.0.0.2:8500", "shadow_models": {
        "iris": {"rest": "http://127.0.0.1:9601", "version": "canary", "name": "next", "sample": 0.5},
        "quiet": "off"}}).shadow
    assert settings.target("iris") == ShadowTarget("next", ("127.0.0.1", 9601), ("10.0.0.2", 8500), None, "canary",
                                                   0.5)
    assert settings.target("quiet") is None
    assert not from_mapping({}).shadow.enabled


@pytest.mark.parametrize(("values", "message"), [
    ({"shadow_models": {"iris": {"rest": "http://h:1", "colour": "red"}}}, "unknown key 'colour'"),
    ({"shadow_models": {"iris": {"sample": 2}}}, "sample"),
    ({"shadow_models": {"iris": {"name": "a~b"}}}, "name"),
    ({"shadow_models": {"iris": {"model": "x"}}}, "neither rest nor grpc"),
    ({"shadow_model_map": "iris"}, "model=shadow_model"),
    ({"shadow_models": {"iris": {"rest": "http://h:1"}, "digits": {"rest": "http://h:2"}}},
     "'digits': shadow name 'shadow' is already used by a shadow at another address"),
    ({"shadow_rest": "http://h:1", "shadow_models": {"iris": {"grpc": "h:2", "rest": "off"}}},
     "'iris': shadow name 'shadow' is already used"),
])
def test_bad_shadow_settings_stop_start_up_naming_the_problem(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_mapping(values)


def test_shadows_at_one_address_may_share_a_name() -> None:
    settings = from_mapping({"shadow_rest": "http://h:1", "shadow_models": {
        "iris": {"version": "2"}, "digits": {"rest": "http://h:2", "name": "other"}}}).shadow
    assert settings.names() == ["shadow", "other"]


def test_sampling_by_prediction_id_keeps_about_the_share_asked_and_is_the_same_for_an_id() -> None:
    ids = [f"id-{number}" for number in range(20_000)]
    kept = sum(sampled(prediction_id, 0.3) for prediction_id in ids)
    assert 0.28 * len(ids) < kept < 0.32 * len(ids)
    assert [sampled(prediction_id, 0.3) for prediction_id in ids[:100]] == [
        sampled(prediction_id, 0.3) for prediction_id in ids[:100]]
    assert all(sampled(prediction_id, 1.0) for prediction_id in ids[:100])
    assert not any(sampled(prediction_id, 0.0) for prediction_id in ids[:100])
