"""HTTP/1.1 wire helpers: which fields are hop-by-hop, how status lines and the sidecar's own answers look."""

from __future__ import annotations

import json

import pytest

from sidecar.proxy.rest.http import (
    REQUEST_DROP,
    REQUEST_DROP_TRACED,
    RESPONSE_DROP,
    connection_nominated,
    end_to_end_lines,
    error_response,
    is_hop_by_hop,
    origin_form,
    status_line,
    status_text,
)


def triples(*pairs: tuple[bytes, bytes]) -> list[tuple[bytes, bytes, bytes]]:
    return [(name.lower(), name, value) for name, value in pairs]


@pytest.mark.parametrize("name", [b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization",
                                  b"proxy-authenticate", b"te", b"trailer", b"transfer-encoding", b"upgrade"])
def test_rfc_9110_hop_by_hop_fields_and_every_proxy_field_are_hop_by_hop(name: bytes) -> None:
    assert is_hop_by_hop(name)


@pytest.mark.parametrize("name", [b"content-type", b"content-encoding", b"authorization", b"x-request-id",
                                  b"traceparent", b"date", b"server"])
def test_end_to_end_fields_are_not_hop_by_hop(name: bytes) -> None:
    assert not is_hop_by_hop(name)


def test_connection_nominates_field_names_but_not_its_own_options() -> None:
    assert connection_nominated(b"keep-alive, X-Private ,Upgrade, close,,x-other") == {b"x-private", b"x-other"}


def test_end_to_end_lines_keep_order_spelling_and_values_and_drop_hop_by_hop_fields() -> None:
    headers = triples((b"Accept", b"*/*"), (b"Connection", b"keep-alive, X-Private"), (b"X-Private", b"secret"),
                      (b"Keep-Alive", b"timeout=5"), (b"Proxy-Authorization", b"Basic x"), (b"TE", b"trailers"),
                      (b"Content-Length", b"10"), (b"x-custom", b"A,  b"), (b"Expect", b"100-continue"),
                      (b"X-Prediction-Id", b"from-client"), (b"traceparent", b"00-abc"))
    forwarded = b"".join(end_to_end_lines(headers, REQUEST_DROP))
    assert forwarded == b"Accept: */*\r\nx-custom: A,  b\r\ntraceparent: 00-abc\r\n"
    assert b"traceparent" not in b"".join(end_to_end_lines(headers, REQUEST_DROP_TRACED))


def test_a_field_nominated_by_a_later_connection_header_is_dropped_too() -> None:
    headers = triples((b"X-Hop", b"1"), (b"Date", b"today"), (b"Connection", b"x-hop"))
    assert b"".join(end_to_end_lines(headers, RESPONSE_DROP, [b"HTTP/1.1 200 OK\r\n"])) == (
        b"HTTP/1.1 200 OK\r\nDate: today\r\n")


def test_status_line_keeps_the_peer_reason_phrase_or_uses_the_standard_one() -> None:
    assert status_line(200) == b"HTTP/1.1 200 OK\r\n"
    assert status_line(404, b"Nope") == b"HTTP/1.1 404 Nope\r\n"
    assert status_line(200, b"") == b"HTTP/1.1 200 \r\n"
    assert status_line(599) == b"HTTP/1.1 599 \r\n"
    assert status_text(504) == "504"


def test_error_response_has_the_model_server_error_shape() -> None:
    data = error_response(502, 'upstream "down"', prediction_id="abc", connection_line=b"Connection: close\r\n")
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.split(b"\r\n") == [b"HTTP/1.1 502 Bad Gateway", b"Content-Type: application/json",
                                   f"Content-Length: {len(body)}".encode(), b"X-Prediction-Id: abc",
                                   b"Connection: close"]
    assert json.loads(body) == {"error": 'upstream "down"'}


@pytest.mark.parametrize(("target", "expected"), [
    (b"/v1/models/m:predict?x=1", b"/v1/models/m:predict?x=1"),
    (b"http://example.com/v1/models/m", b"/v1/models/m"),
    (b"HTTP://example.com:8501", b"/"),
    (b"http://example.com?x=1", b"/?x=1"),
    (b"*", b"*"),
])
def test_origin_form_strips_scheme_and_authority_of_absolute_targets(target: bytes, expected: bytes) -> None:
    assert origin_form(target) == expected
