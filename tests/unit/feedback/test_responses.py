"""Answers in TF Serving's error shape, RFC 6750 bearer checks and bounded gzip bodies."""

from __future__ import annotations

import gzip
import json

import pytest

from sidecar.feedback import responses
from sidecar.feedback.parse import FeedbackError
from sidecar.feedback.responses import check_bearer, error_response, inflate


def test_errors_are_json_objects_with_one_error_field() -> None:
    response = error_response(404, "nope", {"X-Extra": "1"})
    assert response.status == 404
    assert json.loads(response.body) == {"error": "nope"}
    assert response.headers == {"Content-Type": "application/json", "X-Extra": "1"}


def test_without_a_configured_token_everything_passes() -> None:
    assert check_bearer(b"", "") is None
    assert check_bearer(b"", "Bearer anything") is None


def test_the_token_must_come_as_a_bearer_credential() -> None:
    assert check_bearer(b"t0k", "Bearer t0k") is None
    assert check_bearer(b"t0k", "BEARER   t0k ") is None
    missing = check_bearer(b"t0k", "")
    assert missing is not None and missing.status == 401
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="sidecar"'
    for header in ("Bearer t0k2", "Basic dDBrOg==", "t0k"):
        wrong = check_bearer(b"t0k", header)
        assert wrong is not None and wrong.status == 401
        assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]


def test_plain_and_gzip_bodies_are_read() -> None:
    assert inflate(b"abc", "") == b"abc"
    assert inflate(b"abc", "identity") == b"abc"
    assert inflate(gzip.compress(b"abc"), "gzip") == b"abc"


def test_a_body_that_inflates_past_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(responses, "MAX_INFLATED_BYTES", 1000)
    with pytest.raises(FeedbackError, match="inflates to more than 1000 bytes"):
        inflate(gzip.compress(b"0" * 5000), "gzip")


def test_corrupt_gzip_and_unknown_encodings_are_refused() -> None:
    with pytest.raises(FeedbackError, match="gzip body is corrupt"):
        inflate(b"not gzip", "gzip")
    with pytest.raises(FeedbackError, match="unsupported Content-Encoding 'deflate'"):
        inflate(b"x", "deflate")


def test_a_body_larger_than_the_limit_is_too_large_as_sent_or_inflated() -> None:
    assert inflate(b"x" * 100, "", 100) == b"x" * 100
    with pytest.raises(responses.BodyTooLarge, match="the body of 101 bytes is larger than the limit of 100"):
        inflate(b"x" * 101, "", 100)
    assert inflate(gzip.compress(b"y" * 100), "gzip", 100) == b"y" * 100
    with pytest.raises(responses.BodyTooLarge, match="inflates to more than 100 bytes"):
        inflate(gzip.compress(b"y" * 101), "gzip", 100)


def test_a_gzip_body_cut_short_is_refused() -> None:
    compressed = gzip.compress(b'{"prediction_id": "p", "truth": [1]}')
    with pytest.raises(FeedbackError, match="cut short"):
        inflate(compressed[:-4], "gzip")
