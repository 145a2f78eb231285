"""Declarative settings: each subsystem declares a frozen dataclass whose fields carry parse and help metadata.

`sidecar.config` turns every field into a CLI flag (`--window-size`), an environment variable
(`SIDECAR_WINDOW_SIZE`) and a YAML key (`window_size` or `window-size`). Parsers accept either a string
(CLI, environment) or a native YAML value and raise `ValueError` with a short reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import field
from typing import Any

Parser = Callable[[Any], Any]

_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
               "g": 1000**3, "gb": 1000**3, "gib": 1024**3}
_DURATION_UNITS = {"": 1.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "m": 60.0, "h": 3600.0, "d": 86400.0}
OFF_WORDS = frozenset({"off", "none", "disabled", "false", "no", ""})


def option(default: Any, help: str, parse: Parser | None = None, secret: bool = False) -> Any:
    """A settings field: its default, its help text and the parser for raw values."""
    return field(default=default, metadata={"help": help, "parse": parse or _infer_parser(default), "secret": secret})


def _infer_parser(default: Any) -> Parser:
    if isinstance(default, bool):
        return parse_bool
    if isinstance(default, int):
        return parse_int()
    if isinstance(default, float):
        return parse_float()
    return parse_str


def format_size(size: int) -> str:
    """`67108864` -> `64MiB`: the largest binary unit that divides it, else plain bytes."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def format_duration(seconds: float) -> str:
    """`604800.0` -> `7d`, `0.25` -> `250ms`: the largest unit that gives a whole number, else seconds."""
    for unit, factor in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 0.001), ("us", 1e-6)):
        count = seconds / factor
        if seconds >= factor and abs(count - round(count)) < 1e-9:
            return f"{round(count)}{unit}"
    return f"{seconds:g}s"


def parse_str(value: Any) -> str:
    if isinstance(value, (dict, list)):
        raise ValueError("expected a string")
    return str(value)


def parse_optional_str(value: Any) -> str | None:
    text = parse_str(value).strip()
    return None if text.lower() in OFF_WORDS else text


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def parse_int(minimum: int | None = None, maximum: int | None = None) -> Parser:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        try:
            number = int(str(value).strip().replace("_", ""))
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
        _check_range(number, minimum, maximum)
        return number
    return parse


def parse_float(minimum: float | None = None, maximum: float | None = None) -> Parser:
    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            number = float(str(value).strip())
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
        if number != number:
            raise ValueError("expected a number, got NaN")
        _check_range(number, minimum, maximum)
        return number
    return parse


def _check_range(number: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and number < minimum:
        raise ValueError(f"must be at least {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ValueError(f"must be at most {maximum}, got {number}")


def parse_size(minimum: int = 1) -> Parser:
    """Byte sizes such as `65536`, `64MiB`, `1.5GB`."""
    def parse(value: Any) -> int:
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
        if not match or match.group(2).lower() not in _SIZE_UNITS:
            raise ValueError(f"expected a size like 65536 or 64MiB, got {value!r}")
        number = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
        _check_range(number, minimum, None)
        return number
    return parse


def parse_duration(minimum: float = 0.0) -> Parser:
    """Durations in seconds, with optional unit: `30`, `2.5s`, `250ms`, `7d`."""
    def parse(value: Any) -> float:
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)\s*", str(value).lower())
        if not match or match.group(2) not in _DURATION_UNITS:
            raise ValueError(f"expected a duration like 30s or 250ms, got {value!r}")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        _check_range(seconds, minimum, None)
        return seconds
    return parse


def parse_hostport(allow_off: bool = False) -> Parser:
    """`HOST:PORT` (IPv6 as `[::1]:8500`); `off` disables the listener or upstream when allowed."""
    def parse(value: Any) -> tuple[str, int] | None:
        text = str(value).strip()
        if allow_off and text.lower() in OFF_WORDS:
            return None
        match = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]*):([0-9]{1,5})", text)
        if not match or not 0 <= int(match.group(2)) <= 65535:
            hint = " or off" if allow_off else ""
            raise ValueError(f"expected HOST:PORT{hint}, got {value!r}")
        host = match.group(1).strip("[]") or "0.0.0.0"
        return host, int(match.group(2))
    return parse


def parse_http_url(allow_off: bool = False) -> Parser:
    """An `http://host:port` base URL (no path), returned as (host, port)."""
    def parse(value: Any) -> tuple[str, int] | None:
        text = str(value).strip()
        if allow_off and text.lower() in OFF_WORDS:
            return None
        match = re.fullmatch(r"http://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+)(?::([0-9]{1,5}))?/?", text)
        if not match:
            raise ValueError(f"expected a URL like http://127.0.0.1:9501, got {value!r}")
        port = int(match.group(2) or 80)
        if port > 65535:
            raise ValueError(f"port out of range in {value!r}")
        return match.group(1).strip("[]"), port
    return parse


def parse_choice(*choices: str) -> Parser:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return text
    return parse


def parse_str_list(value: Any) -> tuple[str, ...]:
    """A comma-separated string or a YAML list."""
    if isinstance(value, (list, tuple)):
        return tuple(str(item) for item in value)
    return tuple(part.strip() for part in str(value).split(",") if part.strip())


def parse_mapping(value: Any) -> dict[str, Any]:
    """A YAML mapping, or JSON text when it comes from a flag or the environment."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"expected a JSON object: {exc.msg}") from None
    if not isinstance(value, dict):
        raise ValueError("expected a mapping")
    return value
