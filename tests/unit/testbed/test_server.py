from __future__ import annotations

import socket

import pytest
from aiohttp import ClientSession
from grpc import aio

from sidecar._proto import v2_pb2
from sidecar.testbed.server import start_testbed


async def test_start_serves_rest_and_grpc_on_free_ports_and_close_stops_both() -> None:
    testbed = await start_testbed("127.0.0.1", 0, 0, backend="numpy")
    try:
        assert testbed.rest_port > 0 and testbed.grpc_port > 0 and testbed.model_dir is None
        async with ClientSession() as session, session.get(testbed.rest_url + "/v1/models/multi") as response:
            assert response.status == 200
        async with aio.insecure_channel(testbed.grpc_target) as channel:
            live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive",
                                       request_serializer=v2_pb2.ServerLiveRequest.SerializeToString,
                                       response_deserializer=v2_pb2.ServerLiveResponse.FromString)
            assert (await live(v2_pb2.ServerLiveRequest(), timeout=10)).live
    finally:
        await testbed.close()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", testbed.rest_port)) != 0


async def test_a_taken_port_fails_start_up_cleanly() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            await start_testbed("127.0.0.1", taken.getsockname()[1], 0, backend="numpy")
