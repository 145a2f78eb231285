"""What only the grpc.aio engine needs around `Exchange`: the upstream channel, exchanges made from a grpc.aio
context, and the conversion between grpcio's status codes and the sidecar's own (`sidecar.proxy.grpc.status`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from sidecar.proxy.grpc.exchange import Exchange, Recording
from sidecar.proxy.grpc.metadata import split_request
from sidecar.proxy.grpc.methods import GrpcMethod
from sidecar.proxy.grpc.status import CANCELLED, DEADLINE_EXCEEDED, UNAVAILABLE, StatusCode


def status_of(code: grpc.StatusCode) -> StatusCode:
    return StatusCode[code.name]


def grpc_status(code: StatusCode) -> grpc.StatusCode:
    return grpc.StatusCode[code.name]


@dataclass
class Forwarding(Recording):
    """Dependencies shared by all calls of the grpc.aio engine: recording plus the upstream channel."""

    channel: grpc.aio.Channel = field(kw_only=True)

    def upstream_failure(self, error: grpc.aio.AioRpcError, own_deadline: bool,
                         timeout: float) -> tuple[StatusCode, str, bool]:
        """(code, details, upstream down) for a failed upstream call.

        UNAVAILABLE while the channel is not connected means the sidecar could not reach the model server: the
        details say so. UNAVAILABLE over a live connection is the model server's own answer and passes through.
        """
        code = status_of(error.code())
        details = error.details() or ""
        if code is UNAVAILABLE and self.channel.get_state() is not grpc.ChannelConnectivity.READY:
            return code, f"sidecar: upstream model server {self.target} is unavailable: {details}", True
        if code is DEADLINE_EXCEEDED and own_deadline:
            details = f"sidecar: upstream model server {self.target} did not answer within {timeout:g} s"
        return code, details, False


def exchange_of(forwarding: Forwarding, method: GrpcMethod, context: grpc.aio.ServicerContext,
                request: bytes) -> Exchange:
    return Exchange.begin(forwarding, method, split_request(context.invocation_metadata(), forwarding.tracing.enabled),
                          context.time_remaining(), request)


def cancelled_code(context: grpc.aio.ServicerContext) -> StatusCode:
    """Why the call ended early: the client's deadline passed, or the client went away."""
    try:
        remaining = context.time_remaining()
    except Exception:
        remaining = None
    return DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else CANCELLED
