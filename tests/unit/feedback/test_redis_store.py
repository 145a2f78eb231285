"""The Redis store: keys expire with the retention, and replicas sharing one Redis see each other's writes."""

from __future__ import annotations

import math
import time

import redis

from sidecar.feedback.redis_store import (
    RedisStore,
    decode_outliers,
    decode_predicted,
    encode_outliers,
    encode_predicted,
)
from sidecar.feedback.store import PredictionRow


def test_predicted_values_keep_their_type_through_redis_strings() -> None:
    for value in ("cat", "3", "", 0.1, 2.0, -1e300):
        decoded = decode_predicted(encode_predicted(value))
        assert decoded == value and type(decoded) is type(value)


async def test_keys_expire_after_the_retention(redis_url: str) -> None:
    store = RedisStore(redis_url, retention=600, key_prefix="x:")
    await store.start()
    try:
        store.put([PredictionRow("a", 0, "m", "binary", 0.7, time.time())])
        await store.claim([("a", 0)])
    finally:
        await store.stop()
    client = redis.Redis.from_url(redis_url)
    try:
        assert 590 <= client.ttl("x:p:a") <= 600
        assert 590 <= client.ttl("x:f:a") <= 600
        assert client.hgetall("x:p:a") == {b"m": b"m", b"k": b"binary", b"t": client.hget("x:p:a", "t"),
                                           b"i0": b"f0.7"}
    finally:
        client.close()


async def test_an_old_prediction_gets_only_the_rest_of_its_retention(redis_url: str) -> None:
    store = RedisStore(redis_url, retention=600, key_prefix="x:")
    await store.start()
    try:
        store.put([PredictionRow("a", 0, "m", "binary", 0.7, time.time() - 500)])
        await store.flush()
    finally:
        await store.stop()
    client = redis.Redis.from_url(redis_url)
    try:
        assert 90 <= client.ttl("x:p:a") <= 100
    finally:
        client.close()


async def test_two_replicas_share_predictions_and_claims(redis_url: str) -> None:
    one = RedisStore(redis_url, retention=600)
    two = RedisStore(redis_url, retention=600)
    await one.start()
    await two.start()
    try:
        one.put([PredictionRow("shared", 0, "m", "multiclass", "4", time.time())])
        await one.flush()
        assert (await two.lookup(["shared"]))["shared"].instances == {0: "4"}
        assert await two.claim([("shared", 0)]) == [True]
        assert await one.claim([("shared", 0)]) == [False]
    finally:
        await one.stop()
        await two.stop()


async def test_key_prefixes_keep_deployments_apart(redis_url: str) -> None:
    one = RedisStore(redis_url, retention=600, key_prefix="blue:")
    two = RedisStore(redis_url, retention=600, key_prefix="green:")
    await one.start()
    await two.start()
    try:
        one.put([PredictionRow("a", 0, "m", "multiclass", "4", time.time())])
        await one.flush()
        assert await two.lookup(["a"]) == {}
    finally:
        await one.stop()
        await two.stop()


def test_outlier_codes_and_scores_share_one_field() -> None:
    assert encode_outliers("Ma", [41.5, 0.25]) == "M41.5,a0.25"
    assert decode_outliers("M41.5,a0.25") == ("Ma", [41.5, 0.25])
    assert decode_outliers("") == ("", [None, None])
    code, scores = decode_outliers(encode_outliers("m", [None, None]))
    assert code == "m" and scores[0] is not None and math.isnan(scores[0]) and scores[1] is None


async def test_a_hash_written_before_the_details_existed_reads_them_as_not_recorded(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:  # as the previous version wrote them
        client.hset("x:p:old", mapping={"m": "m", "k": "binary", "t": repr(time.time()), "i0": "f0.7", "i1": "s1"})
        client.sadd("x:f:old", 1)
    finally:
        client.close()
    store = RedisStore(redis_url, retention=600, key_prefix="x:")
    await store.start()
    try:
        record = await store.describe("old")
        assert record is not None and record.version is None and record.truths == {1: None}
        assert [(item.predicted, item.outliers, item.issues) for item in record.instances.values()] == [
            (0.7, None, None), ("1", None, None)]
        assert await store.claim([("old", 0)], ["1"]) == [True]
        assert (await store.describe("old")).truths == {0: "1", 1: None}  # type: ignore[union-attr]
    finally:
        await store.stop()
    client = redis.Redis.from_url(redis_url)
    try:
        assert 590 <= client.ttl("x:t:old") <= 600
    finally:
        client.close()
