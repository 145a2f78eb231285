"""Forward any other call as a bidirectional stream of raw messages.

On the wire a unary, server-streaming or client-streaming call is a stream with one or more messages each way, so
forwarding everything the fast path does not know as stream-stream carries every call shape unchanged (V2's
ModelStreamInfer, health checks, reflection, services we have never heard of). Messages are relayed as they
arrive; metadata, deadline and status pass through as on the unary path, except that a stream without a client
deadline gets none upstream either (streams may rightly stay open for long). Not captured; metrics count bytes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc

from sidecar.proxy.grpc.aio.forwarding import Forwarding, cancelled_code, exchange_of, grpc_status
from sidecar.proxy.grpc.aio.unary import INTERNAL_DETAILS
from sidecar.proxy.grpc.metadata import response_initial, response_trailing
from sidecar.proxy.grpc.methods import GrpcMethod
from sidecar.proxy.grpc.status import DEADLINE_EXCEEDED, INTERNAL, OK

log = logging.getLogger(__name__)


def stream_handler(forwarding: Forwarding, method: GrpcMethod) -> grpc.RpcMethodHandler:
    """A grpc.aio stream-stream handler without (de)serializers, relaying bytes both ways."""
    call_upstream = forwarding.channel.stream_stream(method.path)

    async def forward(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        exchange = exchange_of(forwarding, method, context, b"")
        sizes = [0, 0]  # request bytes, response bytes

        async def counted_requests() -> AsyncIterator[bytes]:
            async for message in requests:
                sizes[0] += len(message)
                yield message

        timeout = None if exchange.own_deadline else exchange.timeout
        call = call_upstream(counted_requests(), timeout=timeout, metadata=exchange.metadata.outgoing)
        sent = time.perf_counter()
        try:
            try:
                initial = await call.initial_metadata()
                await context.send_initial_metadata(response_initial(initial, exchange.reply_id))
                async for message in call:
                    sizes[1] += len(message)
                    await context.write(message)
                trailing = await call.trailing_metadata()
            except grpc.aio.AioRpcError as error:
                exchange.upstream_seconds = time.perf_counter() - sent
                code, details, down = forwarding.upstream_failure(error, False, exchange.timeout)
                exchange.record(code, request_bytes=sizes[0], response_bytes=sizes[1], upstream_down=down,
                                upstream_answered=not down and code is not DEADLINE_EXCEEDED)
                await context.abort(grpc_status(code), details, response_trailing(error.trailing_metadata()))
                raise  # abort raises; this only tells type checkers so
            exchange.upstream_seconds = time.perf_counter() - sent
            if trailing:
                context.set_trailing_metadata(response_trailing(trailing))
            exchange.record(OK, request_bytes=sizes[0], response_bytes=sizes[1])
        except asyncio.CancelledError:
            exchange.record(cancelled_code(context), request_bytes=sizes[0], response_bytes=sizes[1],
                            upstream_answered=False)
            raise
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("forwarding stream %s failed", method.path)
            exchange.record(INTERNAL, request_bytes=sizes[0], response_bytes=sizes[1], upstream_answered=False)
            await context.abort(grpc_status(INTERNAL), INTERNAL_DETAILS)
            raise
        finally:
            if not call.done():
                call.cancel()

    return grpc.stream_stream_rpc_method_handler(forward)
