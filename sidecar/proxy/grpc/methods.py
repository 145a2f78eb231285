"""What the gRPC proxy knows about each method path: its metric label, whether it is captured, how to read its model.

Known unary methods take the fast unary path. Every other path (streaming methods, services we do not know) is
forwarded as a bidirectional stream, which carries any call shape unchanged on the wire, under the metric label
`other` (or the method's lower-cased name for a known streaming method) so label cardinality stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from sidecar.messages.records import API_TFSERVING, API_V2
from sidecar.proxy.grpc.peek import ModelRef, peek_model_spec, peek_multi_inference, peek_v2_model

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
V2_SERVICE = "inference.GRPCInferenceService"
OTHER = "other"

Peek = Callable[[bytes], ModelRef]


class GrpcMethod(NamedTuple):
    path: str  # "/tensorflow.serving.PredictionService/Predict"
    service: str  # "tensorflow.serving.PredictionService" (rpc.service)
    name: str  # "Predict" (rpc.method)
    api: str  # "tfserving", "v2" or "" for other services
    label: str  # the `method` metric label
    captured: bool  # exchanges are teed into the capture ring
    unary: bool  # False: forwarded as a bidirectional stream
    peek: Peek | None  # reads the model from the request bytes

    @property
    def span_name(self) -> str:
        """OpenTelemetry's RPC span name: `$package.$service/$method`."""
        return self.path[1:]


def _method(service: str, name: str, label: str, peek: Peek | None = None, captured: bool = False,
            unary: bool = True) -> GrpcMethod:
    api = API_V2 if service == V2_SERVICE else API_TFSERVING
    return GrpcMethod(f"/{service}/{name}", service, name, api, label, captured, unary, peek)


# Triton's unary extensions of the V2 service (repository, shared memory, statistics, trace and log settings).
_TRITON_UNARY = ("ModelConfig", "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
                 "SystemSharedMemoryStatus", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister",
                 "CudaSharedMemoryStatus", "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister", "TraceSetting",
                 "LogSettings")

KNOWN_METHODS: dict[str, GrpcMethod] = {method.path: method for method in (
    _method(PREDICTION_SERVICE, "Predict", "predict", peek_model_spec, captured=True),
    _method(PREDICTION_SERVICE, "Classify", "classify", peek_model_spec, captured=True),
    _method(PREDICTION_SERVICE, "Regress", "regress", peek_model_spec, captured=True),
    _method(PREDICTION_SERVICE, "MultiInference", "multiinference", peek_multi_inference),
    _method(PREDICTION_SERVICE, "GetModelMetadata", "metadata", peek_model_spec),
    _method(MODEL_SERVICE, "GetModelStatus", "status", peek_model_spec),
    _method(MODEL_SERVICE, "HandleReloadConfigRequest", "reload"),
    _method(V2_SERVICE, "ModelInfer", "infer", peek_v2_model, captured=True),
    _method(V2_SERVICE, "ModelMetadata", "metadata", peek_v2_model),
    _method(V2_SERVICE, "ModelReady", "ready", peek_v2_model),
    _method(V2_SERVICE, "ServerLive", "serverlive"),
    _method(V2_SERVICE, "ServerReady", "serverready"),
    _method(V2_SERVICE, "ServerMetadata", "servermetadata"),
    _method(V2_SERVICE, "ModelStreamInfer", "modelstreaminfer", unary=False),
    *(_method(V2_SERVICE, name, name.lower(), peek_v2_model if name.startswith("Model") else None)
      for name in _TRITON_UNARY),
)}


def describe(path: str) -> GrpcMethod:
    """The method behind a request path; unknown paths become a streamed `other` method."""
    known = KNOWN_METHODS.get(path)
    if known is not None:
        return known
    service, _, name = path[1:].rpartition("/")
    return GrpcMethod(path, service, name, "", OTHER, False, False, None)
