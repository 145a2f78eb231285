"""Header rules of the HTTP/2 relay: what goes upstream from a request, what goes back from an answer."""

from __future__ import annotations

from sidecar.proxy.grpc.h2.headers import (
    PID,
    RelayFields,
    RequestHead,
    answer,
    request_head,
    status_fields,
    with_message,
)
from sidecar.proxy.grpc.h2.hpack import Header, HeaderBlock
from sidecar.proxy.grpc.methods import describe
from sidecar.proxy.grpc.status import StatusCode

RELAY = RelayFields(b"model-server:8500", b"tfs-sidecar/test", b"30000m")
REQUEST = ((b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/tensorflow.serving.PredictionService/Predict"),
           (b":authority", b"sidecar:8500"), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
           (b"grpc-timeout", b"5S"), (b"grpc-encoding", b"gzip"), (b"user-agent", b"client/1"),
           (b"x-tenant", b"blue"), (b"x-blob-bin", b"AAE"), (b"connection", b"close"),
           (b"x-prediction-id", b"p-1"), (b"x-request-id", b"r-1"),
           (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"), (b"tracestate", b"v=1"))


def head_of(fields: tuple[Header, ...], tracing: bool = False) -> RequestHead:
    return request_head(HeaderBlock(fields), RELAY, tracing, describe)


def test_requests_go_upstream_unchanged_but_for_authority_user_agent_and_hop_by_hop_headers() -> None:
    head = head_of(REQUEST)
    assert head.method is not None and head.method.label == "predict"
    assert head.upstream == (
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/tensorflow.serving.PredictionService/Predict"),
        (b":authority", b"model-server:8500"), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
        (b"grpc-timeout", b"5S"), (b"grpc-encoding", b"gzip"), (b"x-tenant", b"blue"), (b"x-blob-bin", b"AAE"),
        (b"x-prediction-id", b"p-1"), (b"x-request-id", b"r-1"),
        (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"), (b"tracestate", b"v=1"),
        (b"user-agent", b"tfs-sidecar/test"))
    assert head.upstream_timed == (*head.upstream, (b"grpc-timeout", b"30000m"))
    assert (head.timeout, head.encoding, head.prediction_id, head.request_id) == (5.0, b"gzip", "p-1", "r-1")
    assert head.carrier == {}


def test_with_tracing_the_trace_context_is_taken_out_for_the_sidecars_spans() -> None:
    head = head_of(REQUEST, tracing=True)
    assert head.carrier == {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                            "tracestate": "v=1"}
    assert not {b"traceparent", b"tracestate"} & {name for name, _ in head.upstream}


def test_a_block_is_read_once_per_relay() -> None:
    block = HeaderBlock(REQUEST)
    first = request_head(block, RELAY, False, describe)
    assert request_head(block, RELAY, False, describe) is first
    assert request_head(block, RelayFields(b"other:1", b"ua", b"1S"), False, describe) is not first


def test_requests_that_are_not_grpc_calls_are_rejected_with_a_reason() -> None:
    get = head_of(tuple((b":method", b"GET") if name == b":method" else (name, value) for name, value in REQUEST))
    assert get.method is None and get.rejection == (b"405", "sidecar: gRPC calls use POST, not GET")
    json = head_of(tuple((name, b"application/json" if name == b"content-type" else value)
                         for name, value in REQUEST))
    assert json.rejection is not None and json.rejection[0] == b"415"
    pathless = head_of(tuple(field for field in REQUEST if field[0] != b":path"))
    assert pathless.rejection is not None and pathless.rejection[0] == b"400"


def test_response_headers_lose_any_upstream_prediction_id() -> None:
    reply = answer(HeaderBlock(((b":status", b"200"), (b"content-type", b"application/grpc"), (PID, b"upstream"),
                                (b"x-upstream", b"yes"))))
    assert reply.head() == ((b":status", b"200"), (b"content-type", b"application/grpc"), (b"x-upstream", b"yes"))


def test_trailers_give_the_status_and_pass_unchanged() -> None:
    block = HeaderBlock(((b"grpc-status", b"5"), (b"grpc-message", b"Servable not found"), (b"x-trailer", b"t")))
    assert answer(block).code() is StatusCode.NOT_FOUND
    assert answer(block) is answer(block)


def test_a_trailers_only_answer_is_split_into_headers_and_trailers() -> None:
    block = HeaderBlock(((b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"12"),
                         (b"grpc-message", b"Method not found"), (b"x-error-bin", b"AQ")))
    head, trailers, code = answer(block).split()
    assert head == ((b":status", b"200"), (b"content-type", b"application/grpc"))
    assert trailers == ((b"grpc-status", b"12"), (b"grpc-message", b"Method not found"), (b"x-error-bin", b"AQ"))
    assert code is StatusCode.UNIMPLEMENTED
    assert with_message(block.fields, "mine", split=True) == [(b"grpc-status", b"12"), (b"x-error-bin", b"AQ"),
                                                              (b"grpc-message", b"mine")]


def test_an_http_error_without_grpc_status_maps_like_grpc_clients_do() -> None:
    block = HeaderBlock(((b":status", b"503"), (b"content-type", b"text/plain")))
    assert answer(block).code(b"503") is StatusCode.UNAVAILABLE


def test_the_sidecars_own_status_is_percent_encoded() -> None:
    assert status_fields(StatusCode.UNAVAILABLE, "down 100%") == ((b"grpc-status", b"14"),
                                                                       (b"grpc-message", b"down 100%25"))
