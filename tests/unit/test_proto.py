"""Our wire-compatible protobuf subset: current with its sources and byte-compatible with the official protos."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import tensorflow as tf
from google.protobuf import wrappers_pb2
from tensorflow_serving.apis import get_model_status_pb2, predict_pb2

from sidecar._proto import tf_pb2, tfs_pb2

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_matches_the_proto_sources() -> None:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    gen_proto = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_proto)
    recorded = (ROOT / "sidecar" / "_proto" / "SOURCES.sha256").read_text().strip()
    assert recorded == gen_proto.sources_digest(), "proto/ changed: run `python scripts/gen_proto.py`"


def test_official_predict_request_bytes_parse_identically_and_round_trip() -> None:
    official = predict_pb2.PredictRequest()
    official.model_spec.name = "iris"
    official.model_spec.version.value = 3
    official.model_spec.signature_name = "serving_default"
    official.inputs["x"].CopyFrom(tf.make_tensor_proto(np.arange(6, dtype=np.float32).reshape(2, 3)))
    official.output_filter.append("probabilities")
    wire = official.SerializeToString()

    ours = tfs_pb2.PredictRequest.FromString(wire)
    assert ours.model_spec.name == "iris"
    assert ours.model_spec.version.value == 3
    assert ours.inputs["x"].dtype == tf_pb2.DT_FLOAT
    assert [d.size for d in ours.inputs["x"].tensor_shape.dim] == [2, 3]
    assert ours.SerializeToString(deterministic=True) == official.SerializeToString(deterministic=True)


def test_our_status_response_is_read_by_the_official_client_classes() -> None:
    ours = tfs_pb2.GetModelStatusResponse()
    status = ours.model_version_status.add(version=2, state=tfs_pb2.ModelVersionStatus.AVAILABLE)
    status.status.error_message = ""
    official = get_model_status_pb2.GetModelStatusResponse.FromString(ours.SerializeToString())
    assert official.model_version_status[0].version == 2
    assert official.model_version_status[0].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE


def test_model_spec_version_wrapper_is_the_well_known_type() -> None:
    spec = tfs_pb2.ModelSpec(name="m", version=wrappers_pb2.Int64Value(value=7))
    assert spec.WhichOneof("version_choice") == "version"
