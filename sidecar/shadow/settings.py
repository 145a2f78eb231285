"""Settings of shadow mirroring: where the shadows are, which models they shadow, how much traffic they get.

Globally, `shadow_rest` / `shadow_grpc` mirror every model's inference calls to one shadow model server (under the
name `shadow_name`, with `shadow_model_map` renaming models there); per model, `shadow_models` names the model's own
shadow (or turns the global one off for it). `ShadowSettings.target(model)` resolves what applies to one model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

from sidecar.options import (
    OFF_WORDS,
    option,
    parse_bool,
    parse_duration,
    parse_float,
    parse_hostport,
    parse_http_url,
    parse_int,
    parse_mapping,
    parse_size,
    parse_str,
)

Address = tuple[str, int]


class ShadowTarget(NamedTuple):
    """One model's shadow: its name (the `shadow` label), where it answers, the model (and version) asked there."""

    name: str
    rest: Address | None
    grpc: Address | None
    model: str | None  # the model's name at the shadow (None: the primary's name)
    version: str  # the version number or label asked at the shadow ("": the request's own, when not renamed)
    sample: float  # share of the model's inference calls mirrored


def _parse_name(value: Any) -> str:
    text = parse_str(value).strip()
    if not text or any(char in text for char in "~@/ "):
        raise ValueError(f"expected a short name without '~', '@', '/' or spaces, got {value!r}")
    return text


def _parse_sample(value: Any) -> float:
    return float(parse_float(0.0, 1.0)(value))


def _parse_model_map(value: Any) -> dict[str, str]:
    """`{primary model: model name at the shadow}`; a flag or variable may also say `a=b,c=d`."""
    if isinstance(value, str) and value.strip() and not value.strip().startswith("{"):
        pairs = [part.split("=", 1) for part in value.split(",") if part.strip()]
        if any(len(pair) != 2 or not pair[0].strip() or not pair[1].strip() for pair in pairs):
            raise ValueError(f"expected model=shadow_model pairs separated by commas, got {value!r}")
        return {pair[0].strip(): pair[1].strip() for pair in pairs}
    return {str(key): parse_str(item).strip() for key, item in parse_mapping(value).items()}


ENTRY_KEYS: dict[str, Callable[[Any], Any]] = {
    "rest": parse_http_url(allow_off=True),
    "grpc": parse_hostport(allow_off=True),
    "model": lambda value: parse_str(value).strip() or None,
    "version": lambda value: parse_str(value).strip(),
    "sample": _parse_sample,
    "name": _parse_name,
    "enabled": parse_bool,
}


def parse_shadow_models(value: Any) -> dict[str, dict[str, Any]]:
    """`{model: {rest, grpc, model, version, sample, name, enabled}}` (or `{model: off}`), each value parsed;
    unknown keys raise naming the model and the key."""
    models: dict[str, dict[str, Any]] = {}
    for name, raw in parse_mapping(value).items():
        if raw is None or raw is False or (isinstance(raw, str) and raw.strip().lower() in OFF_WORDS):
            models[str(name)] = {"enabled": False}
            continue
        if not isinstance(raw, Mapping):
            raise ValueError(f"model {name!r}: expected a mapping of shadow settings or off")
        entry: dict[str, Any] = {}
        for key, item in raw.items():
            parser = ENTRY_KEYS.get(str(key))
            if parser is None:
                raise ValueError(f"model {name!r}: unknown key {key!r} (known: {', '.join(ENTRY_KEYS)})")
            try:
                entry[str(key)] = parser(item)
            except ValueError as exc:
                raise ValueError(f"model {name!r}: {key}: {exc}") from None
        models[str(name)] = entry
    return models


@dataclass(frozen=True)
class ShadowSettings:
    shadow_rest: tuple[str, int] | None = option(
        None, "shadow model server's REST base URL: every model's REST inference calls are copied to it, off the "
        "request path (per model: shadow_models)", parse_http_url(allow_off=True))
    shadow_grpc: tuple[str, int] | None = option(
        None, "shadow model server's gRPC HOST:PORT: every model's gRPC inference calls are copied to it",
        parse_hostport(allow_off=True))
    shadow_name: str = option("shadow", "the global shadow's name in metrics and /v1/monitor (the `shadow` label)",
                              _parse_name)
    shadow_sample: float = option(1.0, "share of inference calls mirrored, chosen by prediction id (0 to 1)",
                                  _parse_sample)
    shadow_model_map: dict[str, str] = field(default_factory=dict, metadata={
        "help": "model names at the shadow: YAML mapping or `model=shadow_model,...` (unnamed models keep their "
                "name; a renamed model is asked without the request's version)",
        "parse": _parse_model_map, "secret": False})
    shadow_models: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={
        "help": "per-model shadows (YAML mapping model -> {rest, grpc, model, version, sample, name} or off); "
                "keys not given take the global shadow_* values",
        "parse": parse_shadow_models, "secret": False})
    shadow_queue_max: int = option(1000, "calls waiting to be mirrored, per shadow; beyond, the oldest is dropped "
                                   "and counted", parse_int(1, 1_000_000))
    shadow_queue_max_bytes: int = option(256 * 1024**2, "bytes of requests and answers waiting to be mirrored, "
                                         "per shadow; beyond, the oldest is dropped and counted", parse_size())
    shadow_concurrency: int = option(16, "calls in flight to each shadow (its connection pool)", parse_int(1, 1024))
    shadow_timeout: float = option(10.0, "longest a shadow may take to answer; then the call counts as a timeout",
                                   parse_duration(0.001))
    shadow_min_agreement: float = option(0.9, "agreement with the primary below which the dashboard and the alert "
                                         "flag a shadow (exported as sidecar_shadow_agreement_threshold)",
                                         parse_float(0.0, 1.0))

    @property
    def enabled(self) -> bool:
        return bool(self.shadow_rest or self.shadow_grpc or any(
            entry.get("enabled", True) for entry in self.shadow_models.values()))

    @cached_property
    def _targets(self) -> dict[str, ShadowTarget | None]:
        return {model: self._resolve(model) for model in self.shadow_models}

    def target(self, model: str) -> ShadowTarget | None:
        """The shadow of `model`, or None when it has none."""
        if model in self.shadow_models:
            return self._targets[model]
        return self._resolve(model)

    def _resolve(self, model: str) -> ShadowTarget | None:
        entry = self.shadow_models.get(model, {})
        if not entry.get("enabled", True):
            return None
        rest = entry.get("rest", self.shadow_rest)
        grpc = entry.get("grpc", self.shadow_grpc)
        if rest is None and grpc is None:
            return None
        renamed = entry.get("model") or self.shadow_model_map.get(model)
        return ShadowTarget(entry.get("name", self.shadow_name), rest, grpc,
                            renamed if renamed and renamed != model else None, entry.get("version", ""),
                            entry.get("sample", self.shadow_sample))

    def global_target(self) -> ShadowTarget | None:
        """The shadow every model not configured apart is mirrored to (`shadow_rest`/`shadow_grpc`), or None."""
        if self.shadow_rest is None and self.shadow_grpc is None:
            return None
        return ShadowTarget(self.shadow_name, self.shadow_rest, self.shadow_grpc, None, "", self.shadow_sample)

    def names(self) -> list[str]:
        """The configured shadows' names (the `shadow` label), the global one first."""
        names = [self.shadow_name] if self.shadow_rest or self.shadow_grpc else []
        names += [target.name for target in self._targets.values() if target is not None]
        return list(dict.fromkeys(names))

    def check(self) -> None:
        """Cross-field checks: a per-model shadow needs an address (its own or the global one), and shadows at
        different addresses need different names (the name is the `shadow` label their metrics share)."""
        where: dict[str, tuple[Address | None, Address | None]] = {}
        global_target = self.global_target()
        if global_target is not None:
            where[global_target.name] = (global_target.rest, global_target.grpc)
        for model, entry in self.shadow_models.items():
            target = self.target(model)
            if entry.get("enabled", True) and target is None:
                raise ValueError(f"shadow_models: model {model!r} has neither rest nor grpc (and no global "
                                 "shadow_rest/shadow_grpc)")
            if target is None:
                continue
            seen = where.setdefault(target.name, (target.rest, target.grpc))
            if seen != (target.rest, target.grpc):
                raise ValueError(f"shadow_models: model {model!r}: shadow name {target.name!r} is already used by a "
                                 "shadow at another address; give each shadow its own name")
