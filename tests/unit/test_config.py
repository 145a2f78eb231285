"""Settings come from defaults < YAML < SIDECAR_* environment < flags; a bad value is one line naming it."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar import config


def flags(*argv: str) -> argparse.Namespace:
    return config.argv_parser("test", "test").parse_args(list(argv))


def test_defaults_match_the_documented_ports() -> None:
    settings = config.load(None, {})
    assert settings.proxy.upstream_rest == ("127.0.0.1", 9501)
    assert settings.proxy.upstream_grpc == ("127.0.0.1", 9500)
    assert settings.proxy.listen_rest == ("0.0.0.0", 8501)
    assert settings.proxy.listen_grpc == ("0.0.0.0", 8500)
    assert settings.telemetry.listen_admin == ("127.0.0.1", 8508)
    assert settings.proxy.max_body_bytes == 64 * 1024**2
    assert settings.proxy.grpc_max_message_bytes >= 64 * 1024**2
    assert settings.telemetry.model_label_cap == 100


def test_flags_override_environment_which_overrides_yaml(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text("window-size: 300\nreference_size: 200\nupstream_timeout: 2s\n")
    environ = {"SIDECAR_CONFIG": str(path), "SIDECAR_WINDOW_SIZE": "400"}
    settings = config.load(flags("--window-size", "500"), environ)
    assert settings.analysis.window_size == 500
    assert settings.analysis.reference_size == 200
    assert settings.proxy.upstream_timeout == 2.0
    assert config.load(flags(), environ).analysis.window_size == 400


def test_sizes_durations_and_addresses_parse() -> None:
    settings = config.from_mapping({"max_body_bytes": "1MiB", "upstream_timeout": "250ms",
                                    "listen_grpc": "[::1]:9000", "upstream_rest": "http://model:8501/"})
    assert settings.proxy.max_body_bytes == 1024**2
    assert settings.proxy.upstream_timeout == pytest.approx(0.25)
    assert settings.proxy.listen_grpc == ("::1", 9000)
    assert settings.proxy.upstream_rest == ("model", 8501)


def test_either_protocol_can_be_switched_off() -> None:
    settings = config.from_mapping({"listen_grpc": "off", "upstream_grpc": "off"})
    assert settings.proxy.listen_grpc is None
    assert settings.proxy.listen_rest is not None


@pytest.mark.parametrize(("environ", "expected"), [
    ({"SIDECAR_LISTEN_REST": "8501"}, "SIDECAR_LISTEN_REST: expected HOST:PORT or off, got '8501'"),
    ({"SIDECAR_UPSTREAM_REST": "127.0.0.1:9501"}, "SIDECAR_UPSTREAM_REST: expected a URL like"),
    ({"SIDECAR_WINDOW_SIZE": "ten"}, "SIDECAR_WINDOW_SIZE: expected an integer, got 'ten'"),
    ({"SIDECAR_WINDOW_SIZE": "0"}, "SIDECAR_WINDOW_SIZE: must be at least 10"),
    ({"SIDECAR_MAX_BODY_BYTES": "lots"}, "SIDECAR_MAX_BODY_BYTES: expected a size"),
    ({"SIDECAR_LISTEN_REST": "off", "SIDECAR_LISTEN_GRPC": "off"}, "both are off"),
])
def test_a_bad_value_names_the_setting_and_the_problem(environ: dict[str, str], expected: str) -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.load(None, environ)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_unknown_yaml_keys_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("widow_size: 5\n")
    with pytest.raises(config.ConfigError, match="widow_size: unknown setting"):
        config.load(flags("--config", str(path)), {})


def test_yaml_that_is_not_a_mapping_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(config.ConfigError, match="must hold a mapping"):
        config.load(flags("--config", str(path)), {})


def test_secrets_are_masked_in_the_logged_settings() -> None:
    settings = config.from_mapping({"feedback_token": "s3cret"})
    assert config.redacted(settings)["feedback_token"] == "***"


def test_sidecar_run_stops_with_one_line_on_a_bad_value() -> None:
    result = subprocess.run([sys.executable, "-m", "sidecar", "run", "--listen-admin", "nowhere"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["sidecar: configuration error: --listen-admin: expected HOST:PORT or off, got 'nowhere'"]


def test_help_groups_settings_by_topic_with_human_defaults_and_their_variables(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        config.parse_args(["--help"], {})
    text = capsys.readouterr().out
    assert "proxying (REST and gRPC):" in text and "feedback and the prediction store:" in text
    assert "--max-body-bytes SIZE" in text and "(default: 64MiB; env SIDECAR_MAX_BODY_BYTES)" in text
    assert "(default: 7d; env SIDECAR_STORE_RETENTION)" in text
    assert "_MISSING_TYPE" not in text and " VALUE" not in text


def test_a_negative_duration_is_refused_in_one_line_naming_the_setting() -> None:
    with pytest.raises(config.ConfigError, match=r"^--upstream-timeout: expected a duration like 30s"):
        config.parse_args(["--upstream-timeout", "-5s"], {})
