"""Recognise TF Serving and Open Inference Protocol REST routes (labels and capture decisions), without I/O.

Grammar (tensorflow_serving/model_servers/http_rest_api_util.cc): the `/v1/models/` prefix and `versions` /
`labels` keywords are case-insensitive; the verb after `:` is lowercase. Open Inference Protocol:
`/v2/models/{m}[/versions/{v}]/infer`.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import unquote

from sidecar.messages.records import API_TFSERVING, API_V2

CAPTURED_VERBS = frozenset({"predict", "classify", "regress", "infer"})

_TFS = re.compile(
    r"/v1/models/(?P<model>[^/:]+)"
    r"(?:/versions/(?P<version>[0-9]+)|/labels/(?P<label>[^/:]+))?"
    r"(?::(?P<verb>predict|classify|regress|explain)|(?P<metadata>/metadata))?/?",
    re.IGNORECASE,
)
_V2 = re.compile(r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<rest>/infer|/ready)?/?")


class Route(NamedTuple):
    """What a request path means. `method` is predict/classify/regress/infer, explain (KServe V1's verb, never
    captured), status, metadata, ready or other."""

    api: str
    method: str
    model: str
    version: str
    label: str

    @property
    def captured(self) -> bool:
        return self.method in CAPTURED_VERBS

    @property
    def named_version(self) -> str:
        """The version number or label the path names (`""` when none)."""
        return self.version or self.label


OTHER = Route("", "other", "", "", "")


def parse_route(http_method: str, path: str) -> Route:
    """Classify a request target (query string allowed). Unknown shapes give `OTHER`; nothing raises."""
    path = path.split("?", 1)[0]
    if path[:4].lower() == "/v1/":
        match = _TFS.fullmatch(path)
        if match is None:
            return OTHER
        verb = match.group("verb")
        if verb is not None:
            if verb != verb.lower() or http_method != "POST":
                return OTHER
            method = verb
        elif match.group("metadata"):
            method = "metadata" if http_method == "GET" else "other"
        else:
            method = "status" if http_method == "GET" else "other"
        return Route(API_TFSERVING, method, unquote(match.group("model")), match.group("version") or "",
                     unquote(match.group("label") or ""))
    if path.startswith("/v2/models/"):
        match = _V2.fullmatch(path)
        if match is None:
            return OTHER
        rest = match.group("rest")
        if rest == "/infer":
            method = "infer" if http_method == "POST" else "other"
        elif rest == "/ready":
            method = "ready"
        else:
            method = "metadata" if http_method == "GET" else "other"
        return Route(API_V2, method, unquote(match.group("model")), unquote(match.group("version") or ""), "")
    return OTHER
