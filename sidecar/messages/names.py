"""The name the analysis keeps a model's results under: the model's own name, or `model@version` when its versions
(or labels) are analysed apart, so that a canary and its stable version each get their own reference, windows,
detectors and quality metrics. Requests that name no version stay under the model's own name."""

from __future__ import annotations

VERSION_SEPARATOR = "@"


def versioned_name(model: str, version: str) -> str:
    return f"{model}{VERSION_SEPARATOR}{version}" if version else model


def served_model(name: str) -> str:
    """The model-server name inside an analysis name (`name` itself when it holds no version)."""
    base, separator, version = name.rpartition(VERSION_SEPARATOR)
    return base if separator and base and version else name


SHADOW_SEPARATOR = "~"
"""Between a model's name and its shadow's in the name a shadow's predictions are stored and scored under
(`classifier~next`), and between a prediction id and the shadow's name in the id its predictions are stored under."""


def shadow_name(model: str, shadow: str) -> str:
    return f"{model}{SHADOW_SEPARATOR}{shadow}"


def split_shadow(name: str) -> tuple[str, str]:
    """(model, shadow) of a shadow's name; (`name`, "") for any other name."""
    base, separator, shadow = name.rpartition(SHADOW_SEPARATOR)
    return (base, shadow) if separator and base and shadow else (name, "")
