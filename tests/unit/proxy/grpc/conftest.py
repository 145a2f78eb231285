"""The scripted gRPC upstream every gRPC proxy test talks to (see `test_proxy.Upstream`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.unit.proxy.grpc.test_proxy import Upstream


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = Upstream()
    await server.start()
    yield server
    await server.stop()
