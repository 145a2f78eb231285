"""Export settings: off by default, URLs and Anodot options validated at start-up with one-line errors."""

from __future__ import annotations

import pytest

from sidecar.config import ConfigError, from_mapping
from sidecar.export.settings import ExportSettings, parse_anodot_properties, parse_bucket, parse_optional_http_url


def test_everything_is_off_by_default() -> None:
    settings = ExportSettings()
    assert not settings.payload_log_enabled
    assert not settings.anodot_enabled
    assert not settings.anodot_posting


def test_a_file_or_a_url_turns_the_payload_log_on() -> None:
    assert from_mapping({"payload_log_file": "log/payload.jsonl"}).export.payload_log_enabled
    assert from_mapping({"payload_log_url": "http://collector:8080/events"}).export.payload_log_enabled
    assert not from_mapping({"payload_log_url": "off"}).export.payload_log_enabled


def test_payload_log_url_must_be_http_or_https() -> None:
    url = "https://collector.example/v1/events?key=abc"
    assert from_mapping({"payload_log_url": url}).export.payload_log_url == url
    with pytest.raises(ConfigError, match="payload_log_url: expected an http:// or https:// URL"):
        from_mapping({"payload_log_url": "ftp://collector/"})


def test_the_anodot_url_is_a_base_url_without_query() -> None:
    assert parse_optional_http_url("https://app.anodot.com/") == "https://app.anodot.com/"
    with pytest.raises(ConfigError, match="anodot_url: expected an http:// or https:// URL"):
        from_mapping({"anodot_url": "https://app.anodot.com/?token=x"})


def test_anodot_bucket_is_off_or_at_least_one_second() -> None:
    assert parse_bucket("0") == 0.0
    assert parse_bucket("5m") == 300.0
    with pytest.raises(ValueError, match="at least 1s"):
        parse_bucket("500ms")


def test_anodot_posting_needs_both_url_and_token() -> None:
    only_url = from_mapping({"anodot_bucket": "60", "anodot_url": "https://app.anodot.com"}).export
    assert only_url.anodot_enabled and not only_url.anodot_posting
    both = from_mapping({"anodot_bucket": "60", "anodot_url": "https://app.anodot.com", "anodot_token": "t"}).export
    assert both.anodot_posting


def test_anodot_properties_accept_pairs_json_and_mappings() -> None:
    assert parse_anodot_properties("env=prod, region=eu") == (("env", "prod"), ("region", "eu"))
    assert parse_anodot_properties('{"env": "prod"}') == (("env", "prod"),)
    assert parse_anodot_properties({"cluster": "a"}) == (("cluster", "a"),)


@pytest.mark.parametrize(("value", "message"), [
    ("what=x", "'what' is set by the exporter itself"),
    ("env", "expected name=value pairs"),
    ("env=", "empty name or value"),
    ("{not json", "expected a JSON object"),
])
def test_bad_anodot_properties_are_refused(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"anodot_properties: {message}"):
        from_mapping({"anodot_properties": value})
