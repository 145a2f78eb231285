"""Start and stop the whole testbed (models, REST and gRPC servers) inside a running event loop."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from grpc import aio

from sidecar.testbed.catalog import build_registry, choose_backend
from sidecar.testbed.grpc import start_grpc_server
from sidecar.testbed.model import ModelRegistry
from sidecar.testbed.rest import create_app

SHUTDOWN_GRACE_SECONDS = 2.0
MODEL_THREADS = 4  # model work runs here, apart from the loop and from other users of its default executor


@dataclass
class Testbed:
    """A running testbed; `close()` stops both servers and removes a temporary model directory."""

    host: str
    rest_port: int
    grpc_port: int
    registry: ModelRegistry
    model_dir: Path | None
    _runner: web.AppRunner = field(repr=False)
    _grpc: aio.Server = field(repr=False)
    _executor: ThreadPoolExecutor = field(repr=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @property
    def rest_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.grpc_port}"

    async def close(self) -> None:
        await self._grpc.stop(SHUTDOWN_GRACE_SECONDS)
        await self._runner.cleanup()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


async def start_testbed(host: str = "127.0.0.1", rest_port: int = 0, grpc_port: int = 0, *,
                        model_dir: str | Path | None = None, backend: str = "auto",
                        tensor_content: bool = False) -> Testbed:
    """Build the models (in a thread: seconds with TensorFlow) and start both servers; port 0 picks a free one.

    Without `model_dir` the TensorFlow backend exports into a temporary directory removed by `close()`.
    """
    backend = choose_backend(backend)
    tmp: tempfile.TemporaryDirectory[str] | None = None
    directory = Path(model_dir) if model_dir is not None else None
    if backend == "tensorflow" and directory is None:
        tmp = tempfile.TemporaryDirectory(prefix="sidecar-testbed-")
        directory = Path(tmp.name)
    try:
        registry = await asyncio.to_thread(build_registry, backend, directory)
        executor = ThreadPoolExecutor(MODEL_THREADS, thread_name_prefix="testbed-model")
        runner = web.AppRunner(create_app(registry, executor), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, rest_port)
            await site.start()
            bound_rest = int(runner.addresses[0][1])
            grpc_server, bound_grpc = await start_grpc_server(registry, host, grpc_port, tensor_content, executor)
        except BaseException:
            await runner.cleanup()
            executor.shutdown(wait=False)
            raise
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.cleanup()
        raise
    return Testbed(host, bound_rest, bound_grpc, registry, directory, runner, grpc_server, executor, tmp)
