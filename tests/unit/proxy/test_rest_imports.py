"""The request path stays light: importing the proxy and capture modules pulls in no numerical stack."""

from __future__ import annotations

import subprocess
import sys

REQUEST_PATH_MODULES = ("sidecar.proxy.rest", "sidecar.proxy.rest_connection", "sidecar.proxy.upstream",
                        "sidecar.proxy.http", "sidecar.proxy.local", "sidecar.proxy.routes", "sidecar.proxy.ids",
                        "sidecar.capture.ring", "sidecar.capture.records")
HEAVY = ("numpy", "scipy", "tensorflow")


def test_importing_the_rest_proxy_and_capture_imports_neither_numpy_scipy_nor_tensorflow() -> None:
    script = (f"import importlib, sys\n"
              f"for name in {REQUEST_PATH_MODULES!r}:\n"
              f"    importlib.import_module(name)\n"
              f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "[]"
