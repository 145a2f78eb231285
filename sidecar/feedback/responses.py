"""The endpoint's answers and request checks: TF Serving's `{"error": ...}` shape, bearer tokens, gzip bodies."""

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


def inflate(body: bytes, encoding: str) -> bytes:
    """The body as sent (`Content-Encoding` gzip or none), at most MAX_INFLATED_BYTES once inflated."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip"):
        raise FeedbackError(f"unsupported Content-Encoding {encoding!r} (use gzip or none)")
    inflater = zlib.decompressobj(wbits=31)
    try:
        data = inflater.decompress(body, MAX_INFLATED_BYTES)
    except zlib.error as exc:
        raise FeedbackError(f"the gzip body is corrupt: {exc}") from None
    if inflater.unconsumed_tail:
        raise FeedbackError(f"the body inflates to more than {MAX_INFLATED_BYTES} bytes")
    return data
