"""The endpoint's answers and request checks: TF Serving's `{"error": ...}` shape, bearer tokens, bounded
(gzip) bodies."""

from __future__ import annotations

import hmac
import json
import zlib
from collections.abc import Mapping
from typing import Any

from sidecar.feedback.parse import FeedbackError
from sidecar.proxy.rest.local import LocalResponse

MAX_INFLATED_BYTES = 64 * 1024**2


def json_response(status: int, document: Mapping[str, Any], extra: Mapping[str, str] | None = None) -> LocalResponse:
    body = json.dumps(document, separators=(",", ":")).encode()
    return LocalResponse(status, {"Content-Type": "application/json", **(extra or {})}, body)


def error_response(status: int, message: str, extra: Mapping[str, str] | None = None) -> LocalResponse:
    """TF Serving's error shape: `{"error": "..."}`."""
    return json_response(status, {"error": message}, extra)


def check_bearer(token: bytes, authorization: str) -> LocalResponse | None:
    """None when no token is configured or the request carries it; else the 401 to send (RFC 6750)."""
    if not token:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), token):
        return None
    if authorization:
        return error_response(401, "invalid bearer token for /v1/feedback",
                              {"WWW-Authenticate": 'Bearer realm="sidecar", error="invalid_token"'})
    return error_response(401, "/v1/feedback needs an Authorization: Bearer token",
                          {"WWW-Authenticate": 'Bearer realm="sidecar"'})


class BodyTooLarge(FeedbackError):
    """The body, as sent or once inflated, is larger than the limit: answered 413."""


def inflate(body: bytes, encoding: str, limit: int | None = None) -> bytes:
    """The body as sent (`Content-Encoding` gzip or none), at most `limit` bytes (default MAX_INFLATED_BYTES)
    once inflated; beyond it `BodyTooLarge`."""
    limit = MAX_INFLATED_BYTES if limit is None else limit
    if len(body) > limit:
        raise BodyTooLarge(f"the body of {len(body)} bytes is larger than the limit of {limit} bytes")
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip"):
        raise FeedbackError(f"unsupported Content-Encoding {encoding!r} (use gzip or none)")
    inflater = zlib.decompressobj(wbits=31)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise FeedbackError(f"the gzip body is corrupt: {exc}") from None
    if len(data) > limit:
        raise BodyTooLarge(f"the body inflates to more than {limit} bytes")
    if not inflater.eof:
        raise FeedbackError("the gzip body is cut short")
    return data
