"""Settings from defaults, an optional YAML file, `SIDECAR_*` environment variables and CLI flags (in that order).

Every field of every section dataclass is one setting. Validation happens once, at start-up; a bad value raises
`ConfigError` whose message is one line naming the setting and the problem. Nothing here reads the environment
at import time: callers pass `environ` in.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from sidecar.capture.settings import CaptureSettings
from sidecar.explain.settings import ExplainSettings
from sidecar.export.settings import ExportSettings
from sidecar.feedback.settings import FeedbackSettings
from sidecar.options import format_duration, format_size, option, parse_choice, parse_str
from sidecar.proxy.settings import ProxySettings
from sidecar.shadow.settings import ShadowSettings
from sidecar.telemetry.settings import TelemetrySettings
from sidecar.worker.settings import AnalysisSettings

ENV_PREFIX = "SIDECAR_"


class ConfigError(ValueError):
    """A setting is invalid; the message names the setting and the problem in one line."""


@dataclass(frozen=True)
class GeneralSettings:
    state_dir: str = option("./sidecar-state", "directory for state that survives restarts (references, "
                            "prediction store)", parse_str)
    log_level: str = option("info", "log level", parse_choice("debug", "info", "warning", "error"))
    log_format: str = option("text", "log lines as text or as one JSON object per line", parse_choice("text", "json"))


@dataclass(frozen=True)
class Settings:
    general: GeneralSettings = field(default_factory=GeneralSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    capture: CaptureSettings = field(default_factory=CaptureSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)
    feedback: FeedbackSettings = field(default_factory=FeedbackSettings)
    export: ExportSettings = field(default_factory=ExportSettings)
    shadow: ShadowSettings = field(default_factory=ShadowSettings)
    explain: ExplainSettings = field(default_factory=ExplainSettings)

    @property
    def state_path(self) -> Path:
        return Path(self.general.state_dir)


SECTIONS: tuple[str, ...] = tuple(f.name for f in fields(Settings))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _all_options() -> dict[str, tuple[str, Any]]:
    """Setting name -> (section name, dataclass field)."""
    table: dict[str, tuple[str, Any]] = {}
    defaults = Settings()
    for section in SECTIONS:
        for item in fields(getattr(defaults, section)):
            if item.name in table:
                raise RuntimeError(f"setting {item.name} is declared twice")
            table[item.name] = (section, item)
    return table


_SECTION_TITLES = {"general": "general", "proxy": "proxying (REST and gRPC)", "capture": "capture",
                   "telemetry": "admin listener, metrics and tracing", "analysis": "analysis (drift, outliers, data "
                   "quality)", "feedback": "feedback and the prediction store", "export": "payload log and Anodot",
                   "shadow": "shadow mirroring (a new model beside the serving one)",
                   "explain": "explanations (`:explain` answered with KernelSHAP)"}
_METAVARS = {"parse_size": "SIZE", "parse_duration": "DURATION", "parse_bool": "BOOL", "parse_int": "N",
             "parse_float": "NUMBER", "parse_hostport": "HOST:PORT", "parse_http_url": "URL", "parse_choice": "CHOICE",
             "parse_mapping": "YAML", "parse_str_list": "LIST"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting, grouped by topic (all default to None so unset flags do not override other
    sources); each help line ends with the default, written as one would type it, and the environment variable."""
    parser.add_argument("--config", metavar="FILE", help="YAML file with settings (keys as the flags, without --)")
    table = _all_options()
    for section in SECTIONS:
        group = parser.add_argument_group(_SECTION_TITLES.get(section, section))
        for name, (owner, item) in sorted(table.items()):
            if owner != section:
                continue
            kind = _parser_kind(item.metadata["parse"])
            group.add_argument(_flag(name), dest=name, default=None, metavar=_METAVARS.get(kind, "TEXT"),
                               help=f"{item.metadata['help']} (default: {_describe(_default(item), kind)}; env "
                                    f"{ENV_PREFIX}{name.upper()})")


def _parser_kind(parse: Any) -> str:
    """Which `sidecar.options` parser this is (its factory's name), to name and show its values."""
    return str(getattr(parse, "__qualname__", "")).split(".")[0]


def _default(item: Any) -> Any:
    if item.default is not MISSING:
        return item.default
    return item.default_factory() if item.default_factory is not MISSING else None


def _describe(value: Any, kind: str = "") -> str:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):
        return f"http://{value[0]}:{value[1]}" if kind == "parse_http_url" else f"{value[0]}:{value[1]}"
    if value is None or value == {}:
        return "off" if value is None else "none"
    if isinstance(value, bool):
        return str(value).lower()
    if kind == "parse_size" and isinstance(value, int):
        return format_size(value)
    if kind == "parse_duration" and isinstance(value, (int, float)):
        return format_duration(float(value))
    return str(value)


def load(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build validated settings; raises ConfigError with a one-line message on the first bad value."""
    environ = environ or {}
    raw: dict[str, tuple[str, Any]] = {}
    config_file = getattr(args, "config", None) if args is not None else None
    config_file = config_file or environ.get(ENV_PREFIX + "CONFIG")
    options = _all_options()
    if config_file:
        for key, value in _read_yaml(config_file).items():
            name = str(key).replace("-", "_")
            if name not in options:
                raise ConfigError(f"{key}: unknown setting in {config_file}")
            raw[name] = (f"{key} (in {config_file})", value)
    for name in options:
        env_key = ENV_PREFIX + name.upper()
        if env_key in environ:
            raw[name] = (env_key, environ[env_key])
    if args is not None:
        for name in options:
            value = getattr(args, name, None)
            if value is not None:
                raw[name] = (_flag(name), value)
    return build(raw, options)


def build(raw: Mapping[str, tuple[str, Any]], options: Mapping[str, tuple[str, Any]] | None = None) -> Settings:
    options = options or _all_options()
    updates: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for name, (source, value) in raw.items():
        section, item = options[name]
        try:
            updates[section][name] = item.metadata["parse"](value)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    settings = Settings()
    for section, values in updates.items():
        if values:
            settings = replace(settings, **{section: replace(getattr(settings, section), **values)})
    _cross_check(settings)
    return settings


def from_mapping(values: Mapping[str, Any]) -> Settings:
    """Settings from plain `name: value` pairs, validated like a YAML file (used by tests and the demo)."""
    options = _all_options()
    for key in values:
        if key not in options:
            raise ConfigError(f"{key}: unknown setting")
    return build({name: (name, value) for name, value in values.items()}, options)


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config: {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path} must hold a mapping of settings")
    return data


def _cross_check(settings: Settings) -> None:
    try:
        settings.analysis.check()
    except ValueError as exc:
        raise ConfigError(f"models/window settings: {exc}") from None
    try:
        settings.shadow.check()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    proxy = settings.proxy
    if proxy.listen_rest is None and proxy.listen_grpc is None:
        raise ConfigError("listen_rest/listen_grpc: both are off; nothing would be proxied")
    if proxy.listen_rest is not None and proxy.upstream_rest is None:
        raise ConfigError("upstream_rest: off while listen_rest is on; set listen_rest to off too")
    if proxy.listen_grpc is not None and proxy.upstream_grpc is None:
        raise ConfigError("upstream_grpc: off while listen_grpc is on; set listen_grpc to off too")
    if proxy.proxy_processes > 1 and proxy.listen_grpc is not None and proxy.grpc_engine != "h2":
        raise ConfigError("proxy_processes: more than one needs grpc_engine h2 (grpc.aio cannot share its port)")


def redacted(settings: Settings) -> dict[str, Any]:
    """Settings as a flat dict for logs, with secrets masked."""
    out: dict[str, Any] = {}
    for section in SECTIONS:
        part = getattr(settings, section)
        for item in fields(part):
            value = getattr(part, item.name)
            out[item.name] = "***" if item.metadata.get("secret") and value else value
    return out


def argv_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description, usage=f"{prog} [options]")
    add_arguments(parser)
    return parser


def parse_args(argv: Sequence[str] | None, environ: Mapping[str, str]) -> Settings:
    parser = argv_parser("sidecar run", "Run the monitoring sidecar. Every setting is also an environment "
                                        "variable and a key of the --config file; flags win over the environment, "
                                        "which wins over the file.")
    return load(parser.parse_args(_attach_negative_values(list(argv or []))), environ)


def _attach_negative_values(argv: list[str]) -> list[str]:
    """`--flag -5s` as `--flag=-5s`: argparse would take `-5s` for an option and say a value is missing; this way
    the setting's own parser refuses it with one line naming the setting."""
    out: list[str] = []
    for item in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and item[:1] == "-" and item[1:2].isdigit():
            out[-1] = f"{out[-1]}={item}"
        else:
            out.append(item)
    return out
