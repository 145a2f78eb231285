"""TF Serving's `/v1` REST API as a pure function of (method, path, body) -> (HTTP status, JSON text).

Mirrors tensorflow_serving/model_servers/http_rest_api_handler.cc and http_rest_api_util.cc: the same path
regexes (case-insensitive prefix, a verb that must be lowercase to dispatch), the same processing order (JSON
document, then model and signature, then tensors) and the same messages. No I/O here: the aiohttp glue runs it
in a worker thread because models compute.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote

from google.protobuf import json_format  # type: ignore[import-untyped]

from sidecar._proto import tfs_pb2
from sidecar.testbed import examples, rest_json
from sidecar.testbed.model import ModelRegistry, Servable
from sidecar.testbed.status import ServingError, invalid_argument

_PREDICTION_API = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.IGNORECASE)
_MODEL_STATUS_API = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.IGNORECASE)
_INT64_MAX = 2**63 - 1
_STATE_NAMES = {value: name for name, value in tfs_pb2.ModelVersionStatus.State.items()}


class TFServingRest:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def process(self, method: str, path: str, body: bytes) -> tuple[int, str]:
        """Answer one request to a `/v1/...` path (query string removed)."""
        try:
            return 200, self._dispatch(method, path, body)
        except ServingError as exc:
            return exc.http_status, rest_json.error_body(exc.message)

    def _dispatch(self, method: str, path: str, body: bytes) -> str:
        malformed = invalid_argument(f"Malformed request: {method} {path}")
        if method == "POST":
            match = _PREDICTION_API.fullmatch(path)
            if match is None:
                raise malformed
            name, version, label = _model_info(match)
            verb = match.group(4)
            if verb == "predict":
                return self.predict(name, version, label, body)
            if verb == "classify":
                return self.classify(name, version, label, body)
            if verb == "regress":
                return self.regress(name, version, label, body)
            raise malformed
        if method == "GET":
            match = _MODEL_STATUS_API.fullmatch(path)
            if match is None:
                raise malformed
            name, version, label = _model_info(match)
            if not name:
                raise invalid_argument("Missing model name in request.")
            if match.group(4) == "metadata":
                return self.metadata(name, version, label)
            return self.status(name, version)
        raise malformed

    def _servable(self, name: str, version: int | None, label: str | None) -> Servable:
        return self.registry.resolve(name, version, label)

    def predict(self, name: str, version: int | None, label: str | None, body: bytes) -> str:
        doc = rest_json.parse_document(body)
        signature = rest_json.signature_name(doc)
        servable = self._servable(name, version, label)
        request_format, tensors = rest_json.tensors_from_request(doc, servable.input_infos(signature))
        _, outputs = servable.predict(signature, tensors)
        return rest_json.predict_response(outputs, request_format)

    def classify(self, name: str, version: int | None, label: str | None, body: bytes) -> str:
        doc = rest_json.parse_document(body)
        signature = rest_json.signature_name(doc)
        source = examples.input_from_json(doc, rest_json.describe(doc))
        _, results = examples.classify(self._servable(name, version, label), signature, source)
        return rest_json.classify_response(results)

    def regress(self, name: str, version: int | None, label: str | None, body: bytes) -> str:
        doc = rest_json.parse_document(body)
        signature = rest_json.signature_name(doc)
        source = examples.input_from_json(doc, rest_json.describe(doc))
        _, values = examples.regress(self._servable(name, version, label), signature, source)
        return rest_json.regress_response(values)

    def status(self, name: str, version: int | None) -> str:
        """GetModelStatus as JSON (a label does not narrow it, as in TF Serving)."""
        versions = self.registry.status(name, version)
        return json.dumps({"model_version_status": [
            {"version": str(servable.version), "state": _STATE_NAMES[tfs_pb2.ModelVersionStatus.AVAILABLE],
             "status": {"error_code": "OK", "error_message": ""}} for servable in versions]}, indent=1)

    def metadata(self, name: str, version: int | None, label: str | None) -> str:
        servable = self._servable(name, version, label)
        spec = tfs_pb2.ModelSpec(name=servable.name)
        spec.version.value = servable.version
        return json.dumps({"model_spec": _to_dict(spec), "metadata": {"signature_def": _to_dict(
            signature_def_map(servable))}}, indent=1)


def signature_def_map(servable: Servable) -> tfs_pb2.SignatureDefMap:
    result = tfs_pb2.SignatureDefMap()
    for key, signature in servable.signature_defs.items():
        result.signature_def[key].CopyFrom(signature)
    return result


def _to_dict(message: Any) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                                       always_print_fields_with_no_presence=True)
    return result


def _model_info(match: re.Match[str]) -> tuple[str, int | None, str | None]:
    name = unquote(match.group(1) or "")
    version_text, label_text = match.group(2), match.group(3)
    version = None
    if version_text:
        version = int(version_text)
        if version > _INT64_MAX:
            raise invalid_argument(f"Failed to convert version: {version_text} to numeric.")
    label = unquote(label_text) if label_text else None
    return name, version, label
