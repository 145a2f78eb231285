"""Python cost of one proxied REST request, without sockets: `python bench/rest_hotpath.py [--requests 200000]`.

Feeds a request into the proxy's client connection and the upstream's answer into its pooled upstream connection
through in-memory transports, so the time per request is the proxy's own work (parsing, routing, ids, header
blocks, capture, metrics), free of kernel and event-loop costs and of the noise of a busy machine. Compare runs
before and after a change; the wrk benchmark (bench_rest.py) measures the whole path.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rest_servers import discard_all, shared_ring

from sidecar.messages.records import CaptureRecord
from sidecar.proxy.rest.connection import RestClientConnection
from sidecar.proxy.rest.proxy import RestProxy
from sidecar.proxy.rest.upstream import RestUpstreamConnection
from sidecar.proxy.settings import ProxySettings
from sidecar.telemetry.metrics import RequestMetrics
from sidecar.telemetry.tracing import disabled

BODY = b'{"instances": [[' + b", ".join(b"0.%06d" % i for i in range(120)) + b"]]}"
REQUEST = (b"POST /v1/models/m:predict HTTP/1.1\r\nHost: 127.0.0.1:8501\r\nContent-Type: application/json\r\n"
           b"User-Agent: bench\r\nContent-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
ANSWER = b'{"predictions": [[0.12, 0.34, 0.54]]}'
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
            b"Content-Length: " + str(len(ANSWER)).encode() + b"\r\n\r\n" + ANSWER)


class MemoryTransport:
    """Just enough of asyncio.Transport: remembers the size of what was written."""

    def __init__(self) -> None:
        self.written = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, parts: Any) -> None:
        for part in parts:
            self.write(part)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    abort = close


async def measure(requests: int) -> float:
    ring = shared_ring()

    def capture(record: CaptureRecord) -> None:
        ring.append(record)

    proxy = RestProxy(ProxySettings(upstream_rest=("127.0.0.1", 9), listen_rest=("127.0.0.1", 0)),
                      capture=capture, metrics=RequestMetrics(), tracing=disabled())
    await proxy.start()
    upstream = RestUpstreamConnection(proxy.pool)
    upstream.connection_made(MemoryTransport())  # type: ignore[arg-type]
    proxy.pool.release(upstream)
    client = RestClientConnection(proxy, proxy.settings.max_body_bytes, asyncio.get_running_loop())
    client_transport = MemoryTransport()
    client.connection_made(client_transport)  # type: ignore[arg-type]
    started = time.process_time()  # CPU time: a busy machine stretches wall time, not this
    for _ in range(requests):
        client.data_received(REQUEST)
        upstream.data_received(RESPONSE)
        if ring.records > 5000:
            discard_all(ring)
    elapsed = time.process_time() - started
    assert client_transport.written > requests * len(ANSWER) and not client_transport.closed
    await proxy.stop()
    return elapsed / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200_000)
    args = parser.parse_args()
    import uvloop

    micros = uvloop.run(measure(args.requests))
    print(f"proxy Python work per request (no sockets, uvloop): {micros:.2f} us")


if __name__ == "__main__":
    main()
