"""The request path stays light: every module of the packages on it (the proxies, capture, messages, and the shadow
sender, a capture target on the same event loop) imports without pulling in the numerical stack."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import sidecar.capture
import sidecar.messages
import sidecar.proxy
import sidecar.shadow

REQUEST_PATH_PACKAGES = (sidecar.proxy, sidecar.capture, sidecar.messages, sidecar.shadow)
HEAVY = ("numpy", "scipy", "tensorflow")


def request_path_modules() -> list[str]:
    names = []
    for package in REQUEST_PATH_PACKAGES:
        names.append(package.__name__)
        names.extend(info.name for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."))
    return names


def test_the_request_path_packages_have_the_modules_this_test_expects() -> None:
    modules = request_path_modules()
    assert {"sidecar.proxy.rest.proxy", "sidecar.proxy.grpc.h2.relay", "sidecar.proxy.grpc.aio.proxy",
            "sidecar.capture.shared_ring", "sidecar.messages.records"} <= set(modules)


def test_importing_every_request_path_module_imports_neither_numpy_scipy_nor_tensorflow() -> None:
    script = (f"import importlib, sys\n"
              f"for name in {request_path_modules()!r}:\n"
              f"    importlib.import_module(name)\n"
              f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "[]"
