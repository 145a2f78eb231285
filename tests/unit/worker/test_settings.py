"""Analysis settings: per-model overrides resolved over the global values; unknown keys rejected by name."""

from __future__ import annotations

import pytest

from sidecar import config
from sidecar.worker.settings import AnalysisSettings, parse_models


def test_per_model_values_override_the_global_ones() -> None:
    settings = AnalysisSettings(window_size=200, reference_size=300, models={
        "iris": {"window_size": 50, "task": "classification", "reference": "ref/iris.npz"}})
    iris = settings.model_config("iris")
    assert (iris.window_size, iris.reference_size, iris.task, iris.reference) == (50, 300, "classification",
                                                                                  "ref/iris.npz")
    other = settings.model_config("other")
    assert (other.window_size, other.task, other.reference) == (200, "auto", None)


def test_models_from_yaml_style_text_are_parsed_and_normalised() -> None:
    models = parse_models('{"iris": {"window-mode": "time", "window_seconds": "2m", "reference_size": "100"}, '
                          '"empty": null}')
    assert models == {"iris": {"window_mode": "time", "window_seconds": 120.0, "reference_size": 100}, "empty": {}}


@pytest.mark.parametrize(("models", "message"), [
    ({"iris": {"windw_size": 10}}, "model 'iris': unknown key 'windw_size'"),
    ({"iris": {"window_size": "ten"}}, "model 'iris': window_size: expected an integer"),
    ({"iris": {"reference": "data.parquet"}}, "model 'iris': reference: reference file must end in"),
    ({"iris": {"task": "ranking"}},
     "model 'iris': task: expected one of auto, classification, binary, multiclass, regression"),
    ({"iris": ["window_size"]}, "model 'iris': expected a mapping"),
])
def test_bad_model_entries_name_the_model_and_the_key(models: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_models(models)


def test_a_bad_model_entry_stops_configuration_with_one_line() -> None:
    with pytest.raises(config.ConfigError, match=r"^models: model 'iris': unknown key 'colour'"):
        config.from_mapping({"models": {"iris": {"colour": "red"}}})


def test_a_sliding_step_larger_than_the_window_is_refused() -> None:
    with pytest.raises(ValueError, match="model 'iris': window_step"):
        AnalysisSettings(models={"iris": {"window_mode": "sliding", "window_size": 10, "window_step": 20}}).check()
    with pytest.raises(ValueError, match="window_step"):
        AnalysisSettings(window_mode="sliding", window_size=10, window_step=20).check()
    AnalysisSettings(window_mode="sliding", window_size=10, window_step=0).check()


def test_binary_and_multiclass_tasks_mean_classification_to_the_analysis() -> None:
    settings = AnalysisSettings(models={"a": {"task": "binary"}, "b": {"task": "multiclass"}})
    assert settings.model_config("a").task == "classification"
    assert settings.model_config("b").task == "classification"


def test_analysis_names_split_versions_only_for_models_configured_so() -> None:
    settings = AnalysisSettings(models={"canaried": {"by_version": True, "window_size": 50}, "plain": {}})
    assert settings.analysis_name("canaried", "2") == "canaried@2"
    assert settings.analysis_name("canaried", "canary") == "canaried@canary"
    assert settings.analysis_name("canaried", "") == "canaried"
    assert settings.analysis_name("plain", "2") == "plain"
    assert settings.analysis_name("unlisted", "2") == "unlisted"
    assert settings.model_config("canaried@2").window_size == 50  # a version has its model's settings
    assert settings.model_config("canaried@2").model == "canaried"
    assert settings.served_name("canaried@2") == "canaried"
    assert settings.served_name("plain@2") == "plain@2"  # a model that is not split may have an @ in its name


def test_analysis_by_version_applies_to_every_model_unless_one_says_otherwise() -> None:
    settings = AnalysisSettings(analysis_by_version=True, models={"whole": {"by_version": False}})
    assert settings.analysis_name("any", "3") == "any@3"
    assert settings.analysis_name("whole", "3") == "whole"
    assert settings.served_name("any@3") == "any"
