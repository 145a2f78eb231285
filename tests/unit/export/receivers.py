"""Helpers of the exporter tests: a recording HTTP receiver (healthy, slow, failing or rejecting, as CloudEvents
sink or Anodot API) run on loopback, and capture records."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from sidecar.messages.records import API_TFSERVING, PROTOCOL_REST, CaptureRecord


@dataclass
class Received:
    headers: dict[str, str]  # lower-case names
    body: bytes
    connection: int  # the client's source port: one value per TCP connection
    query: dict[str, str]


@dataclass
class Receiver:
    """Records every POST; answers `status` after `delay` seconds (or `statuses` in turn, then `status`)."""

    status: int = 200
    delay: float = 0.0
    statuses: list[int] = field(default_factory=list)
    reply: Any = None
    received: list[Received] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        headers = {name.lower(): value for name, value in request.headers.items()}
        self.received.append(Received(headers, await request.read(), peer[1] if peer else 0, dict(request.query)))
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.statuses.pop(0) if self.statuses else self.status
        if self.reply is not None:
            return web.json_response(self.reply, status=status)
        return web.Response(status=status)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def by_type(self, suffix: str) -> list[Received]:
        return [item for item in self.received if item.headers.get("ce-type", "").endswith(suffix)]


def make_record(prediction_id: str = "p-1", model: str = "iris", request: bytes = b'{"instances": [[1.0, 2.0]]}',
                response: bytes = b'{"predictions": [0.5]}', protocol: str = PROTOCOL_REST, api: str = API_TFSERVING,
                method: str = "predict", version: str = "3", label: str = "", status: int = 200,
                time: float = 1_700_000_000.25, latency: float = 0.5, encoding: str = "") -> CaptureRecord:
    return CaptureRecord(prediction_id, time, model, version, label, protocol, api, method, request, response,
                         status, latency, encoding)

