"""Prediction ids: a sane client id is honoured, anything else gets a fresh, unique, time-ordered id."""

from __future__ import annotations

import re
import time
import uuid

import pytest

from sidecar.proxy.ids import MAX_CLIENT_ID_LENGTH, choose_prediction_id, new_prediction_id, valid_client_id


def test_minted_ids_are_uuid7_with_the_current_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid.UUID(new_prediction_id())
    after = time.time_ns() // 1_000_000
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert before <= value.int >> 80 <= after


def test_minted_ids_are_unique_and_sort_by_time_of_minting() -> None:
    ids = [new_prediction_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


def test_x_prediction_id_wins_over_x_request_id() -> None:
    assert choose_prediction_id("pred-1", "req-1") == "pred-1"
    assert choose_prediction_id(None, "req-1") == "req-1"


@pytest.mark.parametrize("bad", ["", " padded", "tab\tinside", "new\nline", "caf\u00e9", "x" * 129, "\x7f"])
def test_unusable_client_ids_fall_through(bad: str) -> None:
    assert not valid_client_id(bad)
    assert choose_prediction_id(bad, "req-1") == "req-1"
    minted = choose_prediction_id(bad, bad)
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", minted)


def test_the_longest_accepted_client_id_is_128_printable_characters() -> None:
    longest = "a-Z_0.9:" * (MAX_CLIENT_ID_LENGTH // 8)
    assert len(longest) == MAX_CLIENT_ID_LENGTH
    assert choose_prediction_id(longest, None) == longest
    assert choose_prediction_id("with inner space", None) == "with inner space"
