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
