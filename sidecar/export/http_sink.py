"""CloudEvents over HTTP in binary mode: one POST per event, attributes as `ce-*` headers, the body as is.

Each of the `senders` sender tasks owns one aiohttp session whose connector keeps a single keep-alive
connection (re-opened only when the receiver closes it), and posts the events of the batches it takes one
after the other. So each connection carries events in the order they were queued (and with one sender, all
events are in order, requests before their responses); at most `senders` connections are open.

A POST answered 2xx is sent; 408, 429, 5xx and connection errors are retried with backoff while the queue
has room and retries remain; other statuses are rejected (failed, no retry). When an event is given up after
retries the rest of its batch is failed too (the receiver is down, and trying each event in turn would only
hold memory longer) and the sender pauses, with growing backoff, before its next batch: a dead receiver costs
one refused connection per pause, while events beyond the bounded queue are dropped and counted.
"""

from __future__ import annotations

import asyncio
import enum
import re
from urllib.parse import quote

import aiohttp
from prometheus_client import Histogram

from sidecar.export.body import BodyPolicy, PreparedBody, prepare
from sidecar.export.events import EventContext, PayloadEvent, attributes
from sidecar.export.queue import SinkQueue
from sidecar.export.sink import Delivery, Sink, Slicer, backoff

# CloudEvents HTTP binding: percent-encode space, '"', '%' and anything outside printable ASCII.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "\"%")
_NEEDS_QUOTING = re.compile(r'[^\x21-\x7e]|["%]')
RETRY_STATUSES = frozenset({408, 429})


class Result(enum.Enum):
    SENT = "sent"
    REJECTED = "rejected"
    GAVE_UP = "gave up"


def header_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return quote(text, safe=_HEADER_SAFE) if _NEEDS_QUOTING.search(text) else text


def binary_headers(event: PayloadEvent, context: EventContext, prepared: PreparedBody) -> dict[str, str]:
    """`ce-*` headers (and Content-Type when there is a body) of the event in binary content mode."""
    values = attributes(event, context)
    values.update(prepared.marks())
    texts = {name: "true" if value is True else "false" if value is False else str(value)
             for name, value in values.items()}
    if _NEEDS_QUOTING.search("".join(texts.values())):
        headers = {f"ce-{name}": header_value(text) for name, text in texts.items()}
    else:  # the usual case: one scan over all values, nothing to encode
        headers = {f"ce-{name}": text for name, text in texts.items()}
    if not prepared.omitted:
        headers["Content-Type"] = event.content_type
    return headers


class HttpSink(Sink):
    def __init__(self, url: str, queue: SinkQueue, delivery: Histogram, context: EventContext,
                 policy: BodyPolicy, senders: int, timeout: float, retries: int) -> None:
        super().__init__("http", queue, delivery, senders)
        self.url = url
        self.context = context
        self.policy = policy
        self.timeout = timeout
        self.retries = retries
        self._sessions: list[aiohttp.ClientSession] = []
        self._outage = 0  # consecutive batches given up

    async def start(self) -> None:
        self._sessions = [
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1, keepalive_timeout=60.0),
                                  timeout=aiohttp.ClientTimeout(total=self.timeout),
                                  headers={"User-Agent": "tfs-sidecar"})
            for _ in range(self.senders)]
        await super().start()

    def _encode(self, event: PayloadEvent) -> tuple[dict[str, str], bytes]:
        prepared = prepare(event, self.policy)
        return binary_headers(event, self.context, prepared), prepared.data

    async def _deliver(self, delivery: Delivery, sender: int) -> None:
        session = self._sessions[sender]
        slicer = Slicer()
        for event in delivery.events():  # encoded one by one: a batch given up is never encoded
            headers, data = await slicer.run(self._encode, event)
            result = await self._post(session, headers, data)
            if result is Result.SENT:
                self._outage = 0
                delivery.sent()
            elif result is Result.REJECTED:
                delivery.failed()
            else:
                delivery.failed(delivery.remaining)
                await self._pause()
                return

    async def _pause(self) -> None:
        """After giving up, wait before the next batch (longer while the outage lasts; not while flushing)."""
        self._outage += 1
        if not self.queue.closed:
            await asyncio.sleep(backoff(self._outage))

    async def _post(self, session: aiohttp.ClientSession, headers: dict[str, str], data: bytes) -> Result:
        attempt = 0
        while True:
            try:
                async with session.post(self.url, data=data, headers=headers) as response:
                    await response.read()
                    status = response.status
                if 200 <= status < 300:
                    return Result.SENT
                problem = f"{self.url} answered {status}"
                if status < 500 and status not in RETRY_STATUSES:
                    self.warn(f"{problem}; event {headers.get('ce-id')} rejected")
                    return Result.REJECTED
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = f"cannot post to {self.url}: {exc!r}"
            attempt += 1
            if attempt > self.retries or self.queue.full:
                self.warn(f"{problem}; giving up after {attempt} attempt(s)")
                return Result.GAVE_UP
            await asyncio.sleep(backoff(attempt))

    async def _close(self) -> None:
        for session in self._sessions:
            await session.close()
        self._sessions = []
