"""Open Inference Protocol (V2) REST as a pure function of (method, path, body) -> (HTTP status, JSON text).

GET /v2, /v2/health/live, /v2/health/ready, /v2/models/{m}[/versions/{v}][/ready];
POST /v2/models/{m}[/versions/{v}]/infer. Errors are `{"error": "..."}`.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote

from sidecar.testbed import v2
from sidecar.testbed.model import Array, ModelRegistry
from sidecar.testbed.rest_json import format_float
from sidecar.testbed.status import Code, ServingError, invalid_argument, not_found

_MODEL_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready|/infer)?")


class V2Rest:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def process(self, method: str, path: str, body: bytes) -> tuple[int, str]:
        try:
            return 200, self._dispatch(method, path, body)
        except ServingError as exc:
            return exc.http_status, json.dumps({"error": exc.message})

    def _dispatch(self, method: str, path: str, body: bytes) -> str:
        if path in ("/v2", "/v2/"):
            _require(method, "GET")
            return json.dumps({"name": v2.SERVER_NAME, "version": v2.SERVER_VERSION, "extensions": []})
        if path == "/v2/health/live":
            _require(method, "GET")
            return json.dumps({"live": True})
        if path == "/v2/health/ready":
            _require(method, "GET")
            return json.dumps({"ready": True})
        match = _MODEL_PATH.fullmatch(path)
        if match is None:
            raise not_found("Not Found")
        name, version = unquote(match.group(1)), unquote(match.group(2) or "")
        action = match.group(3)
        if action == "/infer":
            _require(method, "POST")
            return self.infer(name, version, body)
        _require(method, "GET")
        servable = v2.resolve(self.registry, name, version)
        if action == "/ready":
            return json.dumps({"name": servable.name, "ready": True})
        return json.dumps(v2.model_metadata(self.registry, servable))

    def infer(self, name: str, version: str, body: bytes) -> str:
        servable = v2.resolve(self.registry, name, version)
        try:
            doc = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise invalid_argument(f"failed to parse the request JSON buffer: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
            raise invalid_argument("inference request must be a JSON object with an 'inputs' array")
        inputs: dict[str, tuple[str, Array]] = {}
        for item in doc["inputs"]:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise invalid_argument("every input must be an object with 'name', 'shape', 'datatype' and 'data'")
            tensor_name = item["name"]
            shape, datatype = item.get("shape"), item.get("datatype")
            if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
                raise invalid_argument(f"input '{tensor_name}' must have a 'shape' list of integers")
            if not isinstance(datatype, str) or "data" not in item:
                raise invalid_argument(f"input '{tensor_name}' must have a 'datatype' and 'data'")
            if tensor_name in inputs:
                raise invalid_argument(f"input '{tensor_name}' is given twice")
            inputs[tensor_name] = (datatype, v2.array_from_json(tensor_name, datatype, shape, item["data"]))
        requested = _requested_outputs(doc.get("outputs"))
        outputs = v2.run(servable, inputs, requested)
        parts = [f'"model_name": {json.dumps(servable.name)}', f'"model_version": "{servable.version}"']
        if "id" in doc:
            parts.append(f'"id": {json.dumps(doc["id"])}')
        parts.append('"outputs": [' + ", ".join(_output_json(alias, array) for alias, array in outputs.items()) + "]")
        return "{" + ", ".join(parts) + "}"


def _require(method: str, wanted: str) -> None:
    if method != wanted:
        raise ServingError(Code.INVALID_ARGUMENT, f"method {method} is not allowed here, use {wanted}")


def _requested_outputs(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in value):
        raise invalid_argument("'outputs' must be a list of objects with a 'name'")
    return [o["name"] for o in value]


def _output_json(alias: str, array: Array) -> str:
    datatype = v2.datatype_of(array)
    if array.dtype.kind == "f":
        data = "[" + ", ".join(format_float(float(v), array.dtype.itemsize <= 4) for v in array.reshape(-1)) + "]"
    else:
        data = json.dumps(v2.json_data(array), ensure_ascii=False)
    return (f'{{"name": {json.dumps(alias)}, "datatype": "{datatype}", "shape": {json.dumps(list(array.shape))}, '
            f'"data": {data}}}')
