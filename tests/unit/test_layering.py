"""The packages' import rules: data flows one way (proxy -> capture -> workers -> telemetry), the statistics
know nothing of the sidecar, and no two packages import each other."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import sidecar

ROOT = Path(sidecar.__file__).parent
# package -> the sidecar packages it may import (besides itself); modules at the top level are named like packages
ALLOWED: dict[str, set[str]] = {
    "messages": set(),
    "detectors": set(),
    "options": set(),
    "capture": {"messages", "options"},
    "codec": {"messages", "_proto"},
    "proxy": {"messages", "capture", "options", "telemetry"},
    "worker": {"messages", "capture", "codec", "detectors", "options", "_proto", "telemetry"},  # logs only
    "analysis": {"messages", "capture", "worker", "telemetry", "options"},
    "feedback": {"messages", "proxy", "telemetry", "options"},
    "telemetry": {"options"},
    "shadow": {"messages", "options", "telemetry"},
    "history": {"messages", "telemetry", "options"},
    # worker: the saved reference and input schema; codec: predict bodies read as the analysis reads them
    "explain": {"messages", "options", "proxy", "telemetry", "worker", "codec"},
}


def imports_of(package: str) -> Iterator[tuple[str, str]]:
    """(module file, imported sidecar package) for every `sidecar.*` import in the package, lazy ones included."""
    path = ROOT / package
    files = [path.with_suffix(".py")] if path.with_suffix(".py").exists() else sorted(path.rglob("*.py"))
    for file in files:
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "sidecar" and len(parts) > 1:
                    yield str(file.relative_to(ROOT)), parts[1]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_what_lies_upstream_of_it(package: str) -> None:
    wrong = sorted({(file, imported) for file, imported in imports_of(package)
                    if imported != package and imported not in ALLOWED[package]
                    and (ROOT / imported).exists() | (ROOT / f"{imported}.py").exists()})
    assert wrong == []


def test_no_two_packages_import_each_other() -> None:
    packages = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    edges = {package: {imported for _, imported in imports_of(package) if imported != package}
             for package in packages}
    mutual = sorted((a, b) for a in packages for b in edges[a] if b in edges and a in edges[b] and a < b)
    assert mutual == []
