"""Events mirror what KServe's and Seldon's loggers send, plus our own extensions."""

from __future__ import annotations

from sidecar.export.events import (
    CE_TYPES,
    FEEDBACK,
    REQUEST,
    RESPONSE,
    EventContext,
    attributes,
    events_from_record,
    feedback_event,
    rfc3339,
)
from sidecar.messages.records import API_V2, PROTOCOL_GRPC

from .receivers import make_record


def test_a_record_gives_a_request_then_a_response_event() -> None:
    record = make_record(time=1_700_000_000.0, latency=0.25, status=200)
    request, response = events_from_record(record)
    assert (request.kind, response.kind) == (REQUEST, RESPONSE)
    assert request.body == record.request and response.body == record.response
    assert request.body is record.request  # no copy on the drain path
    assert request.time == 1_700_000_000.0 and response.time == 1_700_000_000.25
    assert request.status is None and response.status == 200


def test_modes_select_requests_or_responses() -> None:
    record = make_record()
    assert [e.kind for e in events_from_record(record, requests=True, responses=False)] == [REQUEST]
    assert [e.kind for e in events_from_record(record, requests=False, responses=True)] == [RESPONSE]


def test_attributes_use_kserve_names_seldon_names_and_ours() -> None:
    record = make_record(prediction_id="abc-1", model="iris", version="3", label="canary")
    request, response = events_from_record(record)
    attrs = attributes(request, EventContext(source="urn:test", namespace="ml"))
    assert attrs == {
        "specversion": "1.0", "id": "abc-1", "source": "urn:test", "type": "org.kubeflow.serving.inference.request",
        "time": rfc3339(record.time), "inferenceservicename": "iris", "namespace": "ml", "component": "predictor",
        "endpoint": "canary", "requestid": "abc-1", "modelid": "iris", "predictionid": "abc-1", "model": "iris",
        "modelversion": "3", "protocol": "rest", "api": "tfserving", "method": "predict",
    }
    response_attrs = attributes(response, EventContext())
    assert response_attrs["type"] == "org.kubeflow.serving.inference.response"
    assert response_attrs["status"] == 200
    assert "namespace" not in response_attrs


def test_the_endpoint_is_the_version_label_or_default() -> None:
    unlabelled, _ = events_from_record(make_record(label=""))
    assert attributes(unlabelled, EventContext())["endpoint"] == "default"


def test_extension_names_are_lowercase_alphanumeric() -> None:
    request, _ = events_from_record(make_record())
    for name in attributes(request, EventContext(namespace="n")):
        assert name.isalnum() and name == name.lower(), name


def test_the_service_name_setting_replaces_the_model_name() -> None:
    request, _ = events_from_record(make_record(model="iris"))
    assert attributes(request, EventContext(service="iris-svc"))["inferenceservicename"] == "iris-svc"


def test_content_types_name_the_protobuf_message_for_grpc() -> None:
    request, response = events_from_record(make_record(protocol=PROTOCOL_GRPC, method="predict"))
    assert request.content_type == "application/x-protobuf; messagetype=tensorflow.serving.PredictRequest"
    assert response.content_type == "application/x-protobuf; messagetype=tensorflow.serving.PredictResponse"
    infer, _ = events_from_record(make_record(protocol=PROTOCOL_GRPC, api=API_V2, method="infer"))
    assert infer.content_type.endswith("messagetype=inference.ModelInferRequest")
    rest, _ = events_from_record(make_record())
    assert rest.content_type == "application/json"


def test_feedback_events_use_the_type_seldon_consumers_know() -> None:
    event = feedback_event("abc-1", "iris", b'{"truth": 1}', now=1_700_000_000.0)
    assert event.kind == FEEDBACK
    attrs = attributes(event, EventContext())
    assert attrs["type"] == CE_TYPES[FEEDBACK] == "org.kubeflow.serving.feedback"
    assert attrs["id"] == attrs["predictionid"] == "abc-1"
    assert attrs["time"] == "2023-11-14T22:13:20.000000Z"
