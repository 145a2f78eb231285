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
