"""The fast path: forward one unary call as raw bytes over the shared upstream channel.

The request message goes upstream exactly as it arrived (no decoding, no re-encoding), with the client's metadata
and remaining deadline; the response bytes, the upstream's initial and trailing metadata and its status come back
the same way. The sidecar adds `x-prediction-id` to the initial metadata. A client that goes away cancels the
upstream call (the awaited call is cancelled with the handler).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import NoReturn

import grpc

from sidecar.proxy.grpc.aio.forwarding import Forwarding, cancelled_code, exchange_of, grpc_status
from sidecar.proxy.grpc.exchange import Exchange
from sidecar.proxy.grpc.metadata import response_initial, response_trailing
from sidecar.proxy.grpc.methods import GrpcMethod
from sidecar.proxy.grpc.status import DEADLINE_EXCEEDED, INTERNAL, OK

log = logging.getLogger(__name__)
INTERNAL_DETAILS = "sidecar: internal error while forwarding the call"


def unary_handler(forwarding: Forwarding, method: GrpcMethod) -> grpc.RpcMethodHandler:
    """A grpc.aio handler without (de)serializers, so messages stay bytes."""
    call_upstream = forwarding.channel.unary_unary(method.path)

    async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        exchange = exchange_of(forwarding, method, context, request)
        try:
            call = call_upstream(request, timeout=exchange.timeout, metadata=exchange.metadata.outgoing)
            sent = time.perf_counter()
            try:
                response: bytes = await call
            except grpc.aio.AioRpcError as error:
                exchange.upstream_seconds = time.perf_counter() - sent
                await _fail(forwarding, exchange, error, context)
            exchange.upstream_seconds = time.perf_counter() - sent
            initial = await call.initial_metadata()
            trailing = await call.trailing_metadata()
            await context.send_initial_metadata(response_initial(initial, exchange.reply_id))
            if trailing:
                context.set_trailing_metadata(response_trailing(trailing))
            exchange.record(OK, response)
            return response
        except asyncio.CancelledError:
            exchange.record(cancelled_code(context), upstream_answered=False)
            raise
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("forwarding %s failed", method.path)
            exchange.record(INTERNAL, upstream_answered=False)
            await context.abort(grpc_status(INTERNAL), INTERNAL_DETAILS)
            raise  # abort raises; this only tells type checkers so

    return grpc.unary_unary_rpc_method_handler(forward)


async def _fail(forwarding: Forwarding, exchange: Exchange, error: grpc.aio.AioRpcError,
                context: grpc.aio.ServicerContext) -> NoReturn:
    """Answer with the upstream's status (or the sidecar's own when the upstream was unreachable)."""
    code, details, down = forwarding.upstream_failure(error, exchange.own_deadline, exchange.timeout)
    await context.send_initial_metadata(response_initial(error.initial_metadata(), exchange.reply_id))
    exchange.record(code, upstream_down=down, upstream_answered=not down and code is not DEADLINE_EXCEEDED)
    await context.abort(grpc_status(code), details, response_trailing(error.trailing_metadata()))
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises
