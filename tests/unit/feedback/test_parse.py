"""Feedback bodies: the three accepted shapes, and a message naming the problem for anything else."""

from __future__ import annotations

import json
import random

import pytest

from sidecar.feedback.parse import FeedbackError, FeedbackItem, check_shape, parse_body


def parse(document: object, max_instances: int = 1000) -> list[FeedbackItem]:
    return parse_body(json.dumps(document).encode(), max_instances)


def test_one_truth_per_instance_in_order() -> None:
    [item] = parse({"prediction_id": "p1", "truth": [1, 0, "cat", [0, 1], 2.5, True]})
    assert item == FeedbackItem("p1", None, (1, 0, "cat", (0.0, 1.0), 2.5, 1))
    assert item.keys() == [("p1", i) for i in range(6)]


def test_one_instance_with_its_index() -> None:
    [item] = parse({"prediction_id": "p1", "instance": 3, "truth": [0.1, 0.9]})
    assert item == FeedbackItem("p1", 3, ((0.1, 0.9),))
    assert item.keys() == [("p1", 3)]


def test_an_array_of_feedback_objects() -> None:
    items = parse([{"prediction_id": "a", "truth": [1]}, {"prediction_id": "b", "instance": 0, "truth": 4.0}])
    assert [item.prediction_id for item in items] == ["a", "b"]
    assert sum(item.size for item in items) == 2


@pytest.mark.parametrize("body, message", [
    (b"{not json", "malformed JSON: Expecting property name"),
    (b"\xff\xfe", "malformed JSON"),
    (b"", "malformed JSON"),
    (b"42", "must be a JSON object or an array of objects, got the number 42"),
    (b"[]", "empty array"),
    (b"[1]", "item 0: expected an object"),
])
def test_malformed_bodies_are_rejected_with_the_reason(body: bytes, message: str) -> None:
    with pytest.raises(FeedbackError, match=message):
        parse_body(body, 1000)


@pytest.mark.parametrize("document, message", [
    ({"truth": [1]}, "prediction_id must be a string"),
    ({"prediction_id": "", "truth": [1]}, "prediction_id must be a string"),
    ({"prediction_id": 7, "truth": [1]}, "got 7"),
    ({"prediction_id": "x" * 129, "truth": [1]}, "1 to 128 printable"),
    ({"prediction_id": "p"}, "missing 'truth'"),
    ({"prediction_id": "p", "truth": 1}, "truth must be a list with one truth per instance"),
    ({"prediction_id": "p", "truth": []}, "truth is an empty list"),
    ({"prediction_id": "p", "truth": [None]}, r"truth\[0\] must be a class index, a class label, a one-hot/probab"),
    ({"prediction_id": "p", "truth": [1, {"a": 1}]}, r"truth\[1\] .* got an object"),
    ({"prediction_id": "p", "truth": [[1, "x"]]}, r"truth\[0\] must be a one-hot or probability vector"),
    ({"prediction_id": "p", "truth": [[]]}, "empty vector"),
    ({"prediction_id": "p", "truth": [[[1]]]}, "found an array"),
    ({"prediction_id": "p", "truth": [""]}, "class label must have 1 to 128"),
    ({"prediction_id": "p", "instance": -1, "truth": 1}, "instance must be a non-negative integer"),
    ({"prediction_id": "p", "instance": "0", "truth": 1}, "instance must be a non-negative integer"),
    ({"prediction_id": "p", "instance": True, "truth": 1}, "instance must be a non-negative integer"),
    ({"prediction_id": "p", "instance": 0, "truth": None}, "truth must be a class index"),
    ({"prediction_id": "p", "truth": [1], "extra": 1}, "unknown field 'extra'"),
])
def test_wrong_fields_and_types_name_the_field(document: object, message: str) -> None:
    with pytest.raises(FeedbackError, match=message):
        parse(document)


def test_errors_in_a_batch_name_the_item() -> None:
    with pytest.raises(FeedbackError, match=r"item 1: truth\[0\]") as caught:
        parse([{"prediction_id": "a", "truth": [1]}, {"prediction_id": "b", "truth": [None]}])
    assert caught.value.item == 1


def test_non_finite_truths_are_rejected() -> None:
    with pytest.raises(FeedbackError, match="finite number"):
        parse_body(b'{"prediction_id": "p", "truth": [NaN]}', 10)
    with pytest.raises(FeedbackError, match="finite numbers"):
        parse_body(b'{"prediction_id": "p", "truth": [[0, Infinity]]}', 10)


def test_too_many_instances_in_one_request_are_refused() -> None:
    with pytest.raises(FeedbackError, match="5 truth instances in one request; at most 4"):
        parse({"prediction_id": "p", "truth": [0] * 5}, max_instances=4)


def envelope(truth: bytes) -> bytes:
    return b'{"prediction_id": "p", "truth": [' + truth + b"]}"


def test_nesting_up_to_the_limit_reaches_validation_and_deeper_is_refused_before_parsing() -> None:
    with pytest.raises(FeedbackError, match="found an array"):  # depth 4: parsed, then refused by validation
        parse_body(envelope(b"[[1]]"), 10, max_depth=4)
    with pytest.raises(FeedbackError, match="nest more than 3 levels deep"):
        parse_body(envelope(b"[[1]]"), 10, max_depth=3)
    for body in (b"[" * 100_000, b'{"a":' * 5000, b"[" * 9 + b"]" * 9, b"[[[[[[[[[" + b"]" * 3):
        with pytest.raises(FeedbackError, match="nest more than 8 levels deep"):
            parse_body(body, 10)


def test_brackets_and_digits_inside_strings_do_not_count() -> None:
    label = "[" * 50 + "{" * 50 + "9" * 20
    [item] = parse_body(json.dumps({"prediction_id": "9" * 128, "truth": [label[:128]]}).encode(), 10,
                        max_depth=4, max_number_length=24)
    assert item.truths == (label[:128],)
    body = b'{"prediction_id": "a\\\\", "truth": ["\\"]]]]]]]]]]]]", "x\\\\\\"[[[[[[[[[[[["]}'
    [item] = parse_body(body, 10, max_depth=4)
    assert item.prediction_id == "a\\" and item.truths == ('"]]]]]]]]]]]]', 'x\\"[[[[[[[[[[[[')


def test_an_escaped_quote_cannot_hide_deep_nesting() -> None:
    with pytest.raises(FeedbackError, match="nest more than 8 levels deep"):
        parse_body(b'["\\\\"' + b"[" * 20 + b'"' + b"]" * 20 + b"]", 10)


def test_numbers_longer_than_the_limit_are_refused_before_int_conversion() -> None:
    [item] = parse_body(envelope(b"1" * 100), 10)
    assert item.truths == (int("1" * 100),)
    for number in (b"1" * 101, b"1" * 4301, b"-" + b"9" * 200, b"0." + b"5" * 200, b"1e" + b"9" * 200):
        with pytest.raises(FeedbackError, match="a number in the body is longer than 100 characters"):
            parse_body(envelope(number), 10)
    with pytest.raises(FeedbackError, match="longer than 30 characters"):
        parse_body(envelope(b"0.123456789012345678901234567890"), 10, max_number_length=30)


def test_numbers_beyond_a_float_are_refused_where_they_would_overflow() -> None:
    for truth in (b"1" * 400, b"[0.5, " + b"1" * 400 + b"]", b"1e400", b"[1e999, 0]"):
        with pytest.raises(FeedbackError, match="finite number"):
            parse_body(envelope(truth), 10, max_number_length=1000)


def test_a_key_given_twice_is_refused() -> None:
    with pytest.raises(FeedbackError, match="the key 'prediction_id' appears twice"):
        parse_body(b'{"prediction_id": "a", "truth": [1], "prediction_id": "b"}', 10)


def test_bodies_must_be_utf8_and_a_byte_order_mark_is_allowed() -> None:
    document = {"prediction_id": "p", "truth": ["chat é"]}
    assert parse_body(b"\xef\xbb\xbf" + json.dumps(document).encode(), 10)[0].truths == ("chat é",)
    for body in (json.dumps(document).encode("utf-16"), b'{"prediction_id": "p\xed\xa0\x80", "truth": [1]}'):
        with pytest.raises(FeedbackError, match="not UTF-8"):
            parse_body(body, 10)


def test_a_label_with_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(FeedbackError, match="valid Unicode text"):
        parse_body(envelope(b'"cat\\ud800"'), 10)


def test_a_million_truths_are_refused_by_count_and_a_million_containers_before_parsing() -> None:
    with pytest.raises(FeedbackError, match="1000000 truth instances in one request; at most 10"):
        parse_body(envelope(b",".join([b"0"] * 1_000_000)), 10)
    with pytest.raises(FeedbackError, match="1000 feedback objects in one request"):
        parse_body(b"[" + b",".join([b'"x"'] * 1000) + b"]", 10)
    with pytest.raises(FeedbackError, match=r"the body holds 1001 arrays and objects; .* at most 31"):
        parse_body(b"[" + b",".join([b"{}"] * 1000) + b"]", 10)


def test_messages_quote_only_a_short_piece_of_what_was_sent() -> None:
    for body in (b'{"prediction_id": "' + b"x" * 1_000_000 + b'", "truth": [1]}',
                 b'{"prediction_id": [' + b"1," * 100_000 + b'1], "truth": [1]}',
                 b'{"prediction_id": "p", "' + b"k" * 1_000_000 + b'": 1, "truth": [1]}'):
        with pytest.raises(FeedbackError) as caught:
            parse_body(body, 10)
        assert len(str(caught.value)) < 200


def reference_depth(body: bytes) -> int:
    """The deepest nesting a JSON reader would reach, byte by byte (strings and escapes skipped)."""
    depth = deepest = 0
    inside = escaped = False
    for byte in body:
        if inside:
            if escaped:
                escaped = False
            elif byte == ord("\\"):
                escaped = True
            elif byte == ord('"'):
                inside = False
        elif byte == ord('"'):
            inside = True
        elif byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
    return deepest


def random_json(rng: random.Random, depth: int) -> object:
    if depth == 0 or rng.random() < 0.2:
        return rng.choice([1, -2.5, True, None, "".join(rng.choice('ab[]{}"\\9 é') for _ in range(rng.randrange(6)))])
    if rng.random() < 0.5:
        return [random_json(rng, depth - 1) for _ in range(rng.randint(1, 3))]
    return {f"k{index}[\"": random_json(rng, depth - 1) for index in range(rng.randint(1, 3))}


def test_the_depth_scan_agrees_with_a_reader_on_valid_json_and_bounds_it_on_damaged_json() -> None:
    rng = random.Random(7)
    for _ in range(1000):
        body = json.dumps(random_json(rng, rng.randint(1, 12)), ensure_ascii=rng.random() < 0.5).encode()
        if rng.random() < 0.5:  # damaged: cut short, or brackets and quotes dropped in
            body = body[:rng.randrange(1, len(body) + 1)]
            for _ in range(rng.randrange(4)):
                position = rng.randrange(len(body) + 1)
                body = body[:position] + rng.choice([b"[", b"]", b"{", b"}", b'"', b"\\"]) + body[position:]
            try:
                body.decode("utf-8")
            except UnicodeDecodeError:
                continue
        depth = reference_depth(body)
        try:
            check_shape(body, 6, 100)
        except FeedbackError:
            accepted = False
        else:
            accepted = True
        if accepted:
            assert depth <= 6, body
        try:
            json.loads(body)
        except ValueError:
            continue
        assert accepted == (depth <= 6), body  # valid JSON: exactly the reader's depth
