"""The testbed's gRPC server (grpc.aio) under TF Serving's and KServe's real method paths.

Services are registered by their upstream names (`tensorflow.serving.PredictionService`,
`tensorflow.serving.ModelService`, `inference.GRPCInferenceService`) with our wire-compatible messages, so the
official `tensorflow_serving.apis` stubs and V2 clients call it unchanged. Errors are gRPC statuses with TF
Serving's codes and messages. Outputs use typed fields (TF Serving's default) unless `tensor_content` is set
(TF Serving's `--enable_serialization_as_tensor_content`). Test hooks: see `sidecar.testbed.faults`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2, message  # type: ignore[import-untyped]
from grpc import aio

from sidecar._proto import tfs_pb2, v2_pb2
from sidecar.testbed import examples, faults, tensors, v2
from sidecar.testbed.model import Array, ModelRegistry, Servable
from sidecar.testbed.rest_v1 import signature_def_map
from sidecar.testbed.status import ServingError, invalid_argument

log = logging.getLogger(__name__)

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
V2_SERVICE = "inference.GRPCInferenceService"
SIGNATURE_DEF_FIELD = "signature_def"
SIGNATURE_DEF_MAP_TYPE_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"
MAX_MESSAGE_BYTES = 2**31 - 1  # TF Serving accepts up to INT32_MAX
SERVER_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                  ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]

Request = TypeVar("Request", bound=message.Message)
Response = TypeVar("Response", bound=message.Message)


def resolve_spec(registry: ModelRegistry, spec: tfs_pb2.ModelSpec) -> Servable:
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return registry.resolve(spec.name, version=spec.version.value)
    if choice == "version_label":
        return registry.resolve(spec.name, label=spec.version_label)
    return registry.resolve(spec.name)


def _model_spec(servable: Servable, signature_name: str = "") -> tfs_pb2.ModelSpec:
    spec = tfs_pb2.ModelSpec(name=servable.name, signature_name=signature_name)
    spec.version.value = servable.version
    return spec


class TestbedServicer:
    """Synchronous implementations of every method; `handlers()` wraps them for grpc.aio."""

    def __init__(self, registry: ModelRegistry, tensor_content: bool = False, executor: Executor | None = None) -> None:
        self.registry = registry
        self.tensor_content = tensor_content
        self.executor = executor

    # --- tensorflow.serving.PredictionService ---
    def predict(self, request: tfs_pb2.PredictRequest) -> tfs_pb2.PredictResponse:
        servable = resolve_spec(self.registry, request.model_spec)
        inputs: dict[str, Array] = {}
        for alias, proto in request.inputs.items():
            try:
                inputs[alias] = tensors.to_numpy(proto)
            except ServingError as exc:
                raise invalid_argument(f"tensor parsing error: {alias} ({exc.message})") from None
        key, outputs = servable.predict(request.model_spec.signature_name, inputs, list(request.output_filter))
        response = tfs_pb2.PredictResponse(model_spec=_model_spec(servable, key))
        for alias, array in outputs.items():
            response.outputs[alias].CopyFrom(tensors.from_numpy(array, self.tensor_content))
        return response

    def classify(self, request: tfs_pb2.ClassificationRequest) -> tfs_pb2.ClassificationResponse:
        servable = resolve_spec(self.registry, request.model_spec)
        key, results = examples.classify(servable, request.model_spec.signature_name, request.input)
        response = tfs_pb2.ClassificationResponse(model_spec=_model_spec(servable, key))
        for row in results:
            classes = response.result.classifications.add()
            for label, score in row:
                classes.classes.add(label=label, score=score)
        return response

    def regress(self, request: tfs_pb2.RegressionRequest) -> tfs_pb2.RegressionResponse:
        servable = resolve_spec(self.registry, request.model_spec)
        key, values = examples.regress(servable, request.model_spec.signature_name, request.input)
        response = tfs_pb2.RegressionResponse(model_spec=_model_spec(servable, key))
        for value in values:
            response.result.regressions.add(value=value)
        return response

    def get_model_metadata(self, request: tfs_pb2.GetModelMetadataRequest) -> tfs_pb2.GetModelMetadataResponse:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        if not request.metadata_field:
            raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != SIGNATURE_DEF_FIELD:
                raise invalid_argument(f"Metadata field {field} is not supported")
        servable = resolve_spec(self.registry, request.model_spec)
        response = tfs_pb2.GetModelMetadataResponse(model_spec=_model_spec(servable))
        packed = any_pb2.Any(type_url=SIGNATURE_DEF_MAP_TYPE_URL,
                             value=signature_def_map(servable).SerializeToString())
        response.metadata[SIGNATURE_DEF_FIELD].CopyFrom(packed)
        return response

    # --- tensorflow.serving.ModelService ---
    def get_model_status(self, request: tfs_pb2.GetModelStatusRequest) -> tfs_pb2.GetModelStatusResponse:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        spec = request.model_spec
        version = spec.version.value if spec.WhichOneof("version_choice") == "version" else None
        response = tfs_pb2.GetModelStatusResponse()
        for servable in self.registry.status(spec.name, version):
            response.model_version_status.add(version=servable.version, state=tfs_pb2.ModelVersionStatus.AVAILABLE,
                                              status=tfs_pb2.StatusProto(error_code=0, error_message=""))
        return response

    # --- inference.GRPCInferenceService ---
    def server_live(self, request: v2_pb2.ServerLiveRequest) -> v2_pb2.ServerLiveResponse:
        return v2_pb2.ServerLiveResponse(live=True)

    def server_ready(self, request: v2_pb2.ServerReadyRequest) -> v2_pb2.ServerReadyResponse:
        return v2_pb2.ServerReadyResponse(ready=True)

    def model_ready(self, request: v2_pb2.ModelReadyRequest) -> v2_pb2.ModelReadyResponse:
        v2.resolve(self.registry, request.name, request.version)
        return v2_pb2.ModelReadyResponse(ready=True)

    def server_metadata(self, request: v2_pb2.ServerMetadataRequest) -> v2_pb2.ServerMetadataResponse:
        return v2_pb2.ServerMetadataResponse(name=v2.SERVER_NAME, version=v2.SERVER_VERSION)

    def model_metadata(self, request: v2_pb2.ModelMetadataRequest) -> v2_pb2.ModelMetadataResponse:
        return v2.model_metadata_proto(self.registry, v2.resolve(self.registry, request.name, request.version))

    def model_infer(self, request: v2_pb2.ModelInferRequest) -> v2_pb2.ModelInferResponse:
        """Raw inputs get raw outputs (as Triton answers); `contents` inputs get `contents` outputs."""
        servable = v2.resolve(self.registry, request.model_name, request.model_version)
        raw = list(request.raw_input_contents)
        if raw and len(raw) != len(request.inputs):
            raise invalid_argument(f"expected {len(request.inputs)} raw_input_contents, got {len(raw)}")
        inputs: dict[str, tuple[str, Array]] = {}
        for index, tensor in enumerate(request.inputs):
            if tensor.name in inputs:
                raise invalid_argument(f"input '{tensor.name}' is given twice")
            if raw:
                array = v2.array_from_raw(tensor.name, tensor.datatype, list(tensor.shape), raw[index])
            else:
                array = v2.array_from_contents(tensor.name, tensor.datatype, list(tensor.shape), tensor.contents)
            inputs[tensor.name] = (tensor.datatype, array)
        outputs = v2.run(servable, inputs, [output.name for output in request.outputs])
        response = v2_pb2.ModelInferResponse(model_name=servable.name, model_version=str(servable.version),
                                             id=request.id)
        for alias, array in outputs.items():
            output = response.outputs.add(name=alias, shape=list(array.shape))
            if raw:
                output.datatype, blob = v2.raw_of(array)
                response.raw_output_contents.append(blob)
            else:
                output.datatype, contents = v2.contents_of(array)
                output.contents.CopyFrom(contents)
        return response

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        def unary(method: Callable[[Request], Response], request_type: type[Request]) -> grpc.RpcMethodHandler:
            return _unary(method, request_type, self.executor)

        return [
            grpc.method_handlers_generic_handler(PREDICTION_SERVICE, {
                "Predict": unary(self.predict, tfs_pb2.PredictRequest),
                "Classify": unary(self.classify, tfs_pb2.ClassificationRequest),
                "Regress": unary(self.regress, tfs_pb2.RegressionRequest),
                "MultiInference": _unimplemented("MultiInference"),
                "GetModelMetadata": unary(self.get_model_metadata, tfs_pb2.GetModelMetadataRequest),
            }),
            grpc.method_handlers_generic_handler(MODEL_SERVICE, {
                "GetModelStatus": unary(self.get_model_status, tfs_pb2.GetModelStatusRequest),
                "HandleReloadConfigRequest": _unimplemented("HandleReloadConfigRequest"),
            }),
            grpc.method_handlers_generic_handler(V2_SERVICE, {
                "ServerLive": unary(self.server_live, v2_pb2.ServerLiveRequest),
                "ServerReady": unary(self.server_ready, v2_pb2.ServerReadyRequest),
                "ModelReady": unary(self.model_ready, v2_pb2.ModelReadyRequest),
                "ServerMetadata": unary(self.server_metadata, v2_pb2.ServerMetadataRequest),
                "ModelMetadata": unary(self.model_metadata, v2_pb2.ModelMetadataRequest),
                "ModelInfer": unary(self.model_infer, v2_pb2.ModelInferRequest),
            }),
        ]


def _metadata_value(context: aio.ServicerContext[Any, Any], key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return value if isinstance(value, str) else None
    return None


def _unary(method: Callable[[Request], Response], request_type: type[Request],
           executor: Executor | None) -> grpc.RpcMethodHandler:
    async def handle(request: Request, context: aio.ServicerContext[Any, Any]) -> Response:
        trailing: Sequence[tuple[str, str]] = ()
        traceparent = _metadata_value(context, "traceparent")
        if traceparent is not None:
            trailing = ((faults.TRACEPARENT_TRAILER, traceparent),)
            context.set_trailing_metadata(trailing)
        await faults.apply_delay(_metadata_value(context, faults.DELAY_HEADER))
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, method, request)
        except ServingError as exc:
            await context.abort(grpc.StatusCode[exc.code.name], exc.grpc_message, trailing_metadata=trailing)
            raise  # abort raises; this line only satisfies the type checker
        except Exception as exc:  # a testbed bug: answer with a status, keep serving
            log.exception("internal error in %s", getattr(method, "__name__", method))
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}", trailing_metadata=trailing)
            raise

    return grpc.unary_unary_rpc_method_handler(
        handle, request_deserializer=request_type.FromString,
        response_serializer=lambda response: response.SerializeToString())


def _unimplemented(name: str) -> grpc.RpcMethodHandler:
    async def handle(request: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented by the testbed")
        raise AssertionError("unreachable")

    return grpc.unary_unary_rpc_method_handler(handle)


async def start_grpc_server(registry: ModelRegistry, host: str, port: int, tensor_content: bool = False,
                            executor: Executor | None = None) -> tuple[aio.Server, int]:
    """Start serving; returns the server and the bound port (`port` 0 picks a free one)."""
    server = aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers(TestbedServicer(registry, tensor_content, executor).handlers())
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot bind the gRPC server to {address}")
    await server.start()
    return server, bound
