"""The request path stays light: every module of the packages on it (the proxies, capture, messages, and the shadow
sender, a capture target on the same event loop) imports without pulling in the numerical stack."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

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


def test_a_sidecar_with_the_default_grpc_engine_never_loads_grpcio(tmp_path: Path) -> None:
    """grpcio costs the main process about 20 MB of resident memory: the h2 relay, its readiness probe and the
    app with default settings run without it (only the grpc.aio engine loads it)."""
    script = ("import asyncio, sys\n"
              "from sidecar.app import Sidecar\n"
              "from sidecar.config import from_mapping\n"
              "async def main():\n"
              "    settings = from_mapping({'listen_rest': '127.0.0.1:0', 'listen_grpc': '127.0.0.1:0',\n"
              "                             'listen_admin': '127.0.0.1:0', 'upstream_rest': 'http://127.0.0.1:9',\n"
              f"                             'upstream_grpc': '127.0.0.1:9', 'state_dir': {str(tmp_path)!r},\n"
              "                             'readiness_interval': '0.1s'})\n"
              "    sidecar = Sidecar(settings)\n"
              "    await sidecar.start()\n"
              "    await asyncio.sleep(0.5)\n"
              "    await sidecar.stop()\n"
              "asyncio.run(main())\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'grpc'))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "[]"
