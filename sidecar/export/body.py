"""Sender-side body work: inflate gzip/deflate request bodies, redact named fields, truncate to the size limit.

Runs in the sinks' senders, never on the request path. When redaction is configured and a request body cannot
be redacted (not JSON, an unknown message, an unknown content encoding, larger than `INFLATE_LIMIT` once
inflated) the body is omitted and the event says why: the log never holds data it could not redact. Each sink
prepares its own copy (with a file and an HTTP sink both configured, redaction runs twice).
"""

from __future__ import annotations

import zlib
from collections.abc import Collection
from typing import NamedTuple

from sidecar.export.events import REQUEST, PayloadEvent
from sidecar.export.redact import RedactionError, redact_json, redact_protobuf
from sidecar.messages.records import PROTOCOL_GRPC

INFLATE_LIMIT = 64 * 1024**2


class PreparedBody(NamedTuple):
    data: bytes
    size: int | None  # body size before truncation; None when not known (inflation stopped early)
    truncated: bool = False
    redacted: int = 0  # values replaced
    omitted: str = ""  # why the body was left out ("" when present)

    def marks(self) -> dict[str, object]:
        """CloudEvents extensions describing what was done to the body."""
        out: dict[str, object] = {}
        if self.truncated:
            out["truncated"] = True
            if self.size is not None:
                out["bodysize"] = self.size
        if self.redacted:
            out["redacted"] = True
        if self.omitted:
            out["bodyomitted"] = self.omitted
        return out


class BodyPolicy(NamedTuple):
    max_body: int
    redact: frozenset[str] = frozenset()


def prepare(event: PayloadEvent, policy: BodyPolicy) -> PreparedBody:
    """The body as it goes to a sink."""
    redacting = bool(policy.redact) and event.kind == REQUEST
    body = event.body
    size: int | None = len(body)
    if event.encoding:
        limit = INFLATE_LIMIT if redacting else policy.max_body + 1
        try:
            body, complete = _inflate(body, event.encoding, limit)
        except ValueError as exc:
            return PreparedBody(b"", None, omitted=f"content-encoding: {exc}")
        size = len(body) if complete else None
        if not complete and redacting:
            return PreparedBody(b"", None, omitted="too large to redact")
    replaced = 0
    if redacting:
        try:
            if event.protocol == PROTOCOL_GRPC:
                body, replaced = redact_protobuf(body, event.api, event.method, policy.redact)
            else:
                body, replaced = redact_json(body, policy.redact)
        except RedactionError as exc:
            return PreparedBody(b"", size, omitted=f"not redactable: {exc}"[:200])
        if replaced:
            size = len(body)
    if len(body) > policy.max_body or size is None:
        return PreparedBody(body[:policy.max_body], size, truncated=True, redacted=replaced)
    return PreparedBody(body, size, redacted=replaced)


def _inflate(body: bytes, encoding: str, limit: int) -> tuple[bytes, bool]:
    """Decompress at most `limit` bytes; returns (data, complete)."""
    name = encoding.strip().lower()
    if name in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif name == "deflate":
        wbits = zlib.MAX_WBITS
    elif name == "identity":
        return body, True
    else:
        raise ValueError(f"unsupported {encoding!r}")
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit)
    except zlib.error as exc:
        raise ValueError(f"corrupt {name} body ({exc})") from None
    complete = not inflater.unconsumed_tail and len(data) < limit
    if complete and not inflater.eof:
        raise ValueError(f"truncated {name} body")
    return data, complete


def redaction_fields(names: Collection[str]) -> frozenset[str]:
    return frozenset(name for name in names if name)
