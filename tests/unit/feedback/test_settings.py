"""Feedback settings: the store is sqlite or a Redis URL; bad values stop start-up naming the key."""

from __future__ import annotations

import pytest

from sidecar import config
from sidecar.feedback.settings import FeedbackSettings, parse_store


def test_defaults() -> None:
    settings = FeedbackSettings()
    assert settings.store == "sqlite"
    assert settings.quality_window == 1000
    assert settings.pending_timeout == 60.0
    assert settings.feedback_token is None


@pytest.mark.parametrize("value", ["redis://127.0.0.1:6379/0", "redis://cache", "rediss://:pw@cache:6380/2"])
def test_redis_urls_are_accepted(value: str) -> None:
    assert parse_store(value) == value


@pytest.mark.parametrize("value, reason", [("http://cache:6379", "scheme"), ("redis:///0", "no host"),
                                           ("redis://cache:1/x", "database number"), ("mysql", "scheme")])
def test_other_stores_are_refused_with_the_reason(value: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_store(value)


def test_settings_load_from_a_mapping_and_name_the_bad_key() -> None:
    settings = config.from_mapping({"store": "SQLITE", "pending_timeout": "2s", "feedback_token": "t"})
    assert settings.feedback.store == "sqlite"
    assert settings.feedback.pending_timeout == 2.0
    assert config.redacted(settings)["feedback_token"] == "***"
    with pytest.raises(config.ConfigError, match=r"^store: expected sqlite or redis://"):
        config.from_mapping({"store": "postgres://x"})


def test_limits_of_bodies_and_of_the_store_window_have_defaults_and_bounds() -> None:
    settings = FeedbackSettings()
    assert settings.feedback_max_body_bytes == 64 * 1024**2
    assert settings.feedback_max_depth == 8
    assert settings.feedback_max_number_length == 100
    assert settings.store_flush_interval == 0.1
    assert settings.store_flush_rows == 1000
    assert settings.store_stop_timeout == 10.0
    loaded = config.from_mapping({"feedback_max_body_bytes": "1MiB", "store_flush_interval": "250ms",
                                  "store_flush_rows": 10, "store_stop_timeout": "30s"}).feedback
    assert (loaded.feedback_max_body_bytes, loaded.store_flush_interval) == (1024**2, 0.25)
    assert (loaded.store_flush_rows, loaded.store_stop_timeout) == (10, 30.0)
    for key, value in (("feedback_max_depth", 3), ("feedback_max_depth", 500), ("feedback_max_number_length", 5000),
                       ("store_flush_rows", 0)):
        with pytest.raises(config.ConfigError, match=f"^{key}: must be"):
            config.from_mapping({key: value})
