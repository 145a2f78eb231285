"""A model's signature, asked of the model server: input and output names, element types and shapes.

Runs in the analysis workers, off the request path: the first record of a model (and of each new version) makes
the worker ask the model server once, with a short timeout, over the REST upstream when there is one, else over
gRPC:
- TF Serving: `GET /v1/models/{m}[/versions/{v}]/metadata` or `PredictionService/GetModelMetadata`
  (`signature_def`; the `serving_default` signature, else the only one);
- Open Inference Protocol: `GET /v2/models/{m}[/versions/{v}]` or `GRPCInferenceService/ModelMetadata`.

Answers (and failures) are cached per (api, model, version); a failure is retried after `RETRY_SECONDS`. A server
without metadata (MLServer lists inputs and outputs only when its model settings declare them) leaves the
analysis to infer types from the data, which the model's status says.

Element types are reduced to four kinds: `float`, `int`, `bool`, `string`. Shapes are per instance (the leading
batch dimension removed); unknown sizes are -1.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from sidecar.messages.records import API_TFSERVING, API_V2

FLOAT, INT, BOOL, STRING = "float", "int", "bool", "string"
RETRY_SECONDS = 60.0
DEFAULT_TIMEOUT_SECONDS = 2.0
DEFAULT_SIGNATURE = "serving_default"
_MAX_BODY_BYTES = 4 * 1024 * 1024
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the model server, never an HTTP_PROXY
log = logging.getLogger(__name__)

_TF_DTYPES = {
    "DT_FLOAT": FLOAT, "DT_DOUBLE": FLOAT, "DT_HALF": FLOAT, "DT_BFLOAT16": FLOAT,
    "DT_INT8": INT, "DT_INT16": INT, "DT_INT32": INT, "DT_INT64": INT,
    "DT_UINT8": INT, "DT_UINT16": INT, "DT_UINT32": INT, "DT_UINT64": INT,
    "DT_BOOL": BOOL, "DT_STRING": STRING,
}
_TF_DTYPE_NUMBERS = {1: "DT_FLOAT", 2: "DT_DOUBLE", 3: "DT_INT32", 4: "DT_UINT8", 5: "DT_INT16", 6: "DT_INT8",
                     7: "DT_STRING", 9: "DT_INT64", 10: "DT_BOOL", 14: "DT_BFLOAT16", 17: "DT_UINT16",
                     19: "DT_HALF", 22: "DT_UINT32", 23: "DT_UINT64"}
_V2_DTYPES = {
    "FP16": FLOAT, "FP32": FLOAT, "FP64": FLOAT, "BF16": FLOAT,
    "INT8": INT, "INT16": INT, "INT32": INT, "INT64": INT, "UINT8": INT, "UINT16": INT, "UINT32": INT, "UINT64": INT,
    "BOOL": BOOL, "BYTES": STRING,
}


class TensorInfo(NamedTuple):
    """One input or output as the server declares it: element kind and per-instance shape (-1: unknown)."""

    name: str
    dtype: str
    shape: tuple[int, ...] | None  # None: unknown rank


class Signature(NamedTuple):
    """What the server says a model takes and returns; `source` names the call that said it."""

    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    source: str

    @property
    def empty(self) -> bool:
        return not self.inputs and not self.outputs


class Lookup(NamedTuple):
    """The outcome of asking: the signature, or None and why not (`error`)."""

    signature: Signature | None
    error: str | None


class SignatureError(Exception):
    """The server's answer could not be had or read; the message says why."""


def _per_instance(shape: list[int] | None) -> tuple[int, ...] | None:
    if shape is None:
        return None
    return tuple(int(size) for size in shape[1:]) if shape else ()


def parse_tfserving_metadata(document: Mapping[str, Any], source: str) -> Signature:
    """`{"metadata": {"signature_def": {"signature_def": {name: SignatureDef}}}}`, TF Serving's REST answer (the
    JSON form of the gRPC answer's SignatureDefMap)."""
    metadata = document.get("metadata")
    defs = metadata.get("signature_def") if isinstance(metadata, Mapping) else None
    defs = defs.get("signature_def") if isinstance(defs, Mapping) else None
    if not isinstance(defs, Mapping) or not defs:
        raise SignatureError("the metadata holds no signature_def")
    chosen = defs.get(DEFAULT_SIGNATURE)
    if chosen is None:
        predict = [item for item in defs.values() if isinstance(item, Mapping)
                   and str(item.get("method_name", "")).endswith("/predict")]
        chosen = predict[0] if len(predict) == 1 else next(iter(defs.values())) if len(defs) == 1 else None
    if not isinstance(chosen, Mapping):
        raise SignatureError(f"no {DEFAULT_SIGNATURE} signature among {sorted(defs)[:5]}")
    return Signature(_tf_tensors(chosen.get("inputs")), _tf_tensors(chosen.get("outputs")), source)


def _tf_tensors(tensors: Any) -> dict[str, TensorInfo]:
    found: dict[str, TensorInfo] = {}
    if not isinstance(tensors, Mapping):
        return found
    for alias, info in tensors.items():
        if not isinstance(info, Mapping):
            continue
        dtype = info.get("dtype")
        if isinstance(dtype, int):
            dtype = _TF_DTYPE_NUMBERS.get(dtype, str(dtype))
        shape_info = info.get("tensor_shape") or {}
        shape: list[int] | None = None
        if not shape_info.get("unknown_rank"):
            shape = [int(dim.get("size", -1)) for dim in shape_info.get("dim", []) if isinstance(dim, Mapping)]
        found[str(alias)] = TensorInfo(str(alias), _TF_DTYPES.get(str(dtype), str(dtype).lower()),
                                       _per_instance(shape))
    return found


def parse_v2_metadata(document: Mapping[str, Any], source: str) -> Signature:
    """Open Inference Protocol model metadata: `{"inputs": [{"name", "datatype", "shape"}], "outputs": [...]}`."""
    def tensors(key: str) -> dict[str, TensorInfo]:
        found: dict[str, TensorInfo] = {}
        for item in document.get(key) or []:
            if isinstance(item, Mapping) and "name" in item:
                datatype = str(item.get("datatype", "")).upper()
                shape = item.get("shape")
                found[str(item["name"])] = TensorInfo(
                    str(item["name"]), _V2_DTYPES.get(datatype, datatype.lower()),
                    _per_instance([int(size) for size in shape]) if isinstance(shape, list) else None)
        return found

    return Signature(tensors("inputs"), tensors("outputs"), source)


Fetch = Callable[[str, str, str], Signature]
"""(api, model, version) -> Signature; raises SignatureError."""


class SignatureFetcher:
    """Asks the model server for signatures, caching answers and failures; blocking, for worker processes."""

    def __init__(self, rest: tuple[str, int] | None, grpc: tuple[str, int] | None,
                 timeout: float = DEFAULT_TIMEOUT_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.rest = rest
        self.grpc = grpc
        self.timeout = timeout
        self._clock = clock
        self._cache: dict[tuple[str, str, str], tuple[Lookup, float]] = {}

    @property
    def enabled(self) -> bool:
        return self.rest is not None or self.grpc is not None

    def lookup(self, api: str, model: str, version: str) -> Lookup:
        key = (api, model, version)
        cached = self._cache.get(key)
        now = self._clock()
        if cached is not None and (cached[0].signature is not None or now - cached[1] < RETRY_SECONDS):
            return cached[0]
        try:
            found = Lookup(self._fetch(api, model, version), None)
        except SignatureError as exc:
            found = Lookup(None, str(exc)[:300])
        except Exception as exc:  # an unexpected answer must not stop the analysis
            found = Lookup(None, f"{type(exc).__name__}: {exc}"[:300])
        self._cache[key] = (found, now)
        return found

    def _fetch(self, api: str, model: str, version: str) -> Signature:
        if self.rest is not None:
            return self._fetch_rest(api, model, version)
        if self.grpc is not None:
            return self._fetch_grpc(api, model, version)
        raise SignatureError("no upstream to ask")

    def _fetch_rest(self, api: str, model: str, version: str) -> Signature:
        assert self.rest is not None
        host, port = self.rest
        name = urllib.parse.quote(model, safe="")
        suffix = f"/versions/{urllib.parse.quote(version, safe='')}" if version else ""
        if api == API_V2:
            path, parse, source = f"/v2/models/{name}{suffix}", parse_v2_metadata, "v2 rest"
        else:
            path, parse, source = f"/v1/models/{name}{suffix}/metadata", parse_tfserving_metadata, "tfserving rest"
        host_text = f"[{host}]" if ":" in host else host
        try:
            with _DIRECT.open(f"http://{host_text}:{port}{path}", timeout=self.timeout) as response:
                body = response.read(_MAX_BODY_BYTES)
        except urllib.error.HTTPError as exc:
            raise SignatureError(f"GET {path}: HTTP {exc.code}") from None
        except (OSError, ValueError) as exc:
            raise SignatureError(f"GET {path}: {exc}") from None
        try:
            document = json.loads(body)
        except ValueError:
            raise SignatureError(f"GET {path}: not JSON") from None
        if not isinstance(document, Mapping):
            raise SignatureError(f"GET {path}: not a JSON object")
        return parse(document, source)

    def _fetch_grpc(self, api: str, model: str, version: str) -> Signature:
        import grpc

        from sidecar._proto import tfs_pb2, v2_pb2

        assert self.grpc is not None
        host, port = self.grpc
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        with grpc.insecure_channel(target) as channel:
            try:
                if api == API_V2:
                    call = channel.unary_unary("/inference.GRPCInferenceService/ModelMetadata",
                                               request_serializer=v2_pb2.ModelMetadataRequest.SerializeToString,
                                               response_deserializer=v2_pb2.ModelMetadataResponse.FromString)
                    answer = call(v2_pb2.ModelMetadataRequest(name=model, version=version), timeout=self.timeout)
                    return parse_v2_metadata(
                        {key: [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                               for t in getattr(answer, key)] for key in ("inputs", "outputs")}, "v2 grpc")
                call = channel.unary_unary("/tensorflow.serving.PredictionService/GetModelMetadata",
                                           request_serializer=tfs_pb2.GetModelMetadataRequest.SerializeToString,
                                           response_deserializer=tfs_pb2.GetModelMetadataResponse.FromString)
                request = tfs_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
                request.model_spec.name = model
                if version.isdigit():
                    request.model_spec.version.value = int(version)
                answer = call(request, timeout=self.timeout)
            except grpc.RpcError as exc:
                raise SignatureError(f"gRPC metadata: {exc.code().name}: {exc.details()}"[:300]) from None
        packed = answer.metadata.get("signature_def")
        if packed is None:
            raise SignatureError("gRPC metadata: no signature_def")
        defs = tfs_pb2.SignatureDefMap.FromString(packed.value)
        return parse_tfserving_metadata({"metadata": {"signature_def": {"signature_def": {
            name: {"method_name": sig.method_name,
                   "inputs": {k: _tensor_info_dict(v) for k, v in sig.inputs.items()},
                   "outputs": {k: _tensor_info_dict(v) for k, v in sig.outputs.items()}}
            for name, sig in defs.signature_def.items()}}}}, "tfserving grpc")


def _tensor_info_dict(info: Any) -> dict[str, Any]:
    shape = info.tensor_shape
    return {"dtype": int(info.dtype), "tensor_shape": {"unknown_rank": bool(shape.unknown_rank),
                                                       "dim": [{"size": int(dim.size)} for dim in shape.dim]}}


__all__ = ["API_TFSERVING", "API_V2", "BOOL", "FLOAT", "INT", "STRING", "Lookup", "Signature", "SignatureError",
           "SignatureFetcher", "TensorInfo", "parse_tfserving_metadata", "parse_v2_metadata"]
