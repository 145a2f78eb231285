"""Both engines meet one specification: every GrpcProxy test of test_grpc.py runs here again with the grpc.aio
engine (test_grpc.py itself runs them with the default engine, the h2 relay)."""

from __future__ import annotations

import functools

import pytest

from sidecar.proxy.grpc import AioGrpcProxy
from sidecar.proxy.settings import ProxySettings
from tests.unit.proxy import test_grpc as specification
from tests.unit.proxy.test_grpc import *  # noqa: F403  (collects the same tests in this module)
from tests.unit.proxy.test_grpc import Upstream


@pytest.fixture(autouse=True)
def aio_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The specification builds its proxies from `ProxySettings`; here they all name the grpc.aio engine."""
    monkeypatch.setattr(specification, "ProxySettings", functools.partial(ProxySettings, grpc_engine="aio"))


async def test_the_specification_runs_here_with_the_grpc_aio_engine(upstream: Upstream) -> None:
    async with specification.running_proxy(upstream.port) as proxied:
        assert isinstance(proxied.proxy.engine, AioGrpcProxy)
