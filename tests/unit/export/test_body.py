"""Sender-side body work: inflate, redact, truncate, and omit what cannot be redacted."""

from __future__ import annotations

import gzip
import json
import zlib

from sidecar.export.body import BodyPolicy, PreparedBody, prepare
from sidecar.export.events import events_from_record
from sidecar.messages.records import PROTOCOL_GRPC

from .receivers import make_record


def test_small_bodies_pass_through_untouched() -> None:
    request, _ = events_from_record(make_record())
    prepared = prepare(request, BodyPolicy(max_body=1024))
    assert prepared == PreparedBody(request.body, len(request.body))
    assert prepared.marks() == {}


def test_large_bodies_are_truncated_and_marked() -> None:
    request, _ = events_from_record(make_record(request=b"x" * 100))
    prepared = prepare(request, BodyPolicy(max_body=16))
    assert prepared.data == b"x" * 16
    assert prepared.marks() == {"truncated": True, "bodysize": 100}


def test_gzip_requests_are_inflated_for_the_log() -> None:
    body = b'{"instances": [[1.0, 2.0]]}'
    request, _ = events_from_record(make_record(request=gzip.compress(body), encoding="gzip"))
    assert prepare(request, BodyPolicy(max_body=1024)).data == body


def test_inflation_stops_at_the_size_limit() -> None:
    request, _ = events_from_record(make_record(request=gzip.compress(b"y" * 1_000_000), encoding="gzip"))
    prepared = prepare(request, BodyPolicy(max_body=100))
    assert prepared.data == b"y" * 100
    assert prepared.marks() == {"truncated": True}  # the full size is unknown: inflation stopped early


def test_deflate_and_identity_encodings_are_understood() -> None:
    deflated, _ = events_from_record(make_record(request=zlib.compress(b"abc"), encoding="deflate"))
    assert prepare(deflated, BodyPolicy(max_body=64)).data == b"abc"
    identity, _ = events_from_record(make_record(request=b"abc", encoding="identity"))
    assert prepare(identity, BodyPolicy(max_body=64)).data == b"abc"


def test_corrupt_or_unknown_encodings_leave_the_body_out() -> None:
    corrupt, _ = events_from_record(make_record(request=b"not gzip", encoding="gzip"))
    assert prepare(corrupt, BodyPolicy(max_body=64)).omitted.startswith("content-encoding: corrupt gzip")
    brotli, _ = events_from_record(make_record(request=b"...", encoding="br"))
    prepared = prepare(brotli, BodyPolicy(max_body=64))
    assert prepared.data == b"" and prepared.marks() == {"bodyomitted": "content-encoding: unsupported 'br'"}


def test_redaction_applies_to_requests_then_truncation() -> None:
    body = json.dumps({"instances": [{"ssn": "123-45-6789", "age": 40}]}).encode()
    request, response = events_from_record(make_record(request=body, response=b'{"predictions": [{"ssn": 1}]}'))
    policy = BodyPolicy(max_body=1024, redact=frozenset({"ssn"}))
    prepared = prepare(request, policy)
    assert json.loads(prepared.data) == {"instances": [{"ssn": "[REDACTED]", "age": 40}]}
    assert prepared.marks() == {"redacted": True}
    assert prepare(response, policy).data == response.body  # responses are not redacted


def test_gzip_bodies_are_redacted_after_inflating() -> None:
    body = json.dumps({"inputs": {"ssn": ["1"]}}).encode()
    request, _ = events_from_record(make_record(request=gzip.compress(body), encoding="gzip"))
    prepared = prepare(request, BodyPolicy(max_body=1024, redact=frozenset({"ssn"})))
    assert json.loads(prepared.data) == {"inputs": {"ssn": "[REDACTED]"}}


def test_a_body_that_cannot_be_redacted_is_omitted_never_logged_raw() -> None:
    request, _ = events_from_record(make_record(request=b"<xml>ssn</xml>"))
    prepared = prepare(request, BodyPolicy(max_body=1024, redact=frozenset({"ssn"})))
    assert prepared.data == b""
    assert prepared.omitted.startswith("not redactable: body is not JSON")
    grpc, _ = events_from_record(make_record(request=b"\x0a\x01", protocol=PROTOCOL_GRPC, method="multiinference"))
    assert prepare(grpc, BodyPolicy(max_body=1024, redact=frozenset({"ssn"}))).omitted.startswith("not redactable")
