"""metadata: what passes upstream and back, which ids the sidecar reads, and the prediction id it adds."""

from __future__ import annotations

from sidecar.proxy.grpc.metadata import Metadatum, passes_through, response_initial, response_trailing, split_request

CLIENT: list[Metadatum] = [
    ("user-agent", "grpc-python/1.0"),
    ("x-tenant", "blue"),
    ("x-blob-bin", b"\x00\xff"),
    ("x-prediction-id", "pred-1"),
    ("x-request-id", "req-1"),
    ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ("tracestate", "k=v"),
]


def test_custom_and_binary_metadata_pass_and_grpc_managed_keys_do_not() -> None:
    managed: list[Metadatum] = [(":authority", "x"), ("grpc-timeout", "1S"), ("content-type", "application/grpc"),
                                ("te", "trailers")]
    incoming = CLIENT + managed
    outgoing = dict(split_request(incoming, take_trace=False).outgoing)
    assert outgoing["x-tenant"] == "blue"
    assert outgoing["x-blob-bin"] == b"\x00\xff"
    assert not {":authority", "grpc-timeout", "content-type", "te", "user-agent"} & set(outgoing)


def test_ids_are_read_and_still_forwarded() -> None:
    split = split_request(CLIENT, take_trace=False)
    assert (split.prediction_id, split.request_id) == ("pred-1", "req-1")
    assert ("x-prediction-id", "pred-1") in split.outgoing and ("x-request-id", "req-1") in split.outgoing


def test_trace_headers_pass_untouched_when_tracing_is_off() -> None:
    split = split_request(CLIENT, take_trace=False)
    assert split.trace_carrier == {}
    assert ("traceparent", CLIENT[5][1]) in split.outgoing and ("tracestate", "k=v") in split.outgoing


def test_tracing_takes_the_trace_headers_out_to_replace_them() -> None:
    split = split_request(CLIENT, take_trace=True)
    assert split.trace_carrier == {"traceparent": CLIENT[5][1], "tracestate": "k=v"}
    assert not {"traceparent", "tracestate"} & {key for key, _ in split.outgoing}


def test_absent_metadata_is_empty() -> None:
    split = split_request(None, take_trace=True)
    assert (split.outgoing, split.prediction_id, split.request_id, split.trace_carrier) == ([], None, None, {})


def test_response_initial_metadata_keeps_the_upstreams_and_adds_the_prediction_id() -> None:
    upstream: list[Metadatum] = [("x-served-by", "tfs"), ("x-bin", b"\x01"), ("x-prediction-id", "upstream-own")]
    assert response_initial(upstream, "pid") == (("x-served-by", "tfs"), ("x-bin", b"\x01"), ("x-prediction-id", "pid"))
    assert response_initial(None, "pid") == (("x-prediction-id", "pid"),)


def test_trailing_metadata_passes_back_with_binary_values() -> None:
    assert response_trailing([("x-t", "1"), ("x-t-bin", b"\x02"), ("grpc-status", "0")]) == (
        ("x-t", "1"), ("x-t-bin", b"\x02"))


def test_passes_through_rules() -> None:
    assert passes_through("x-anything") and passes_through("authorization")
    assert not passes_through("grpc-encoding") and not passes_through(":path") and not passes_through("te")
