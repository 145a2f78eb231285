"""Routes the sidecar answers itself on the REST listener (for example `POST /v1/feedback`).

A local route is keyed by its exact path (query string excluded) and never reaches the upstream. The handler gets
the whole buffered request and returns a whole response; the proxy adds framing (Content-Length, Connection).
An exception from a handler becomes `500 {"error": "internal error"}` and is logged.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class LocalRequest:
    method: str
    path: str
    headers: Mapping[str, str]  # lower-case names; repeated fields joined with ", "
    body: bytes
    query: str = ""


@dataclass(frozen=True, slots=True)
class LocalResponse:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def json(cls, status: int, payload: Any) -> LocalResponse:
        return cls(status, {"Content-Type": "application/json"}, json.dumps(payload).encode("utf-8"))


LocalHandler = Callable[[LocalRequest], Awaitable[LocalResponse]]
LocalRoutes = Mapping[str, LocalHandler]
