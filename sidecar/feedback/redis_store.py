"""The shared prediction store: Redis, so feedback posted to any replica joins predictions analysed by another.

Keys (all expire `retention` seconds after the prediction, so Redis does the trimming):
- `{prefix}p:{id}`: a hash with `m` (model), `k` (task), `t` (time), `v` (version), `i{n}` (predicted value of
  instance n, `s<label>` for a class label or `f<number>`), `o{n}` (the outlier detectors that scored instance n,
  each as its `OUTLIER_CODES` letter, upper case when flagged, then its score: `m2.31,A19.7`; empty: none scored)
  and `q{n}` (its data-quality issues, `ISSUE_CODES` letters). A hash written before `v`, `o{n}` and `q{n}`
  existed lacks them: they read as not recorded.
- `{prefix}f:{id}`: a set of instance numbers that received feedback. `SADD` answers 1 only to the first
  replica that adds an instance, which is what dedupes feedback across replicas.
- `{prefix}t:{id}`: a hash of instance number -> the truth joined (encoded like a predicted value), written by
  the claim that added the instance to `f:{id}`.
Each operation is one Lua script call however many ids it covers (a write of every queued row, a batch of
claims, a batch of lookups): one round trip and one reply to parse, which matters because redis-py parses replies
in Python. Each analysis worker writes its predictions with its own client (`RedisRowWriter`); the main
process's writer thread claims and writes what no worker wrote; lookups run on a reader thread. Rows wait at most
`flush_interval` for their write (see threads.py); once Redis has answered, how long they last is Redis's
persistence setting (docs/durability.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis

from sidecar.feedback.store import (
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_FLUSH_ROWS,
    SCORED_DETECTORS,
    Key,
    Predicted,
    PredictionRecord,
    Row,
    StoredInstance,
    StoredPrediction,
    rows_of,
    stored_instance,
)
from sidecar.feedback.threads import StoreThread, ThreadedStore
from sidecar.messages.results import OUTLIER_CODES, StoredPredictions

SOCKET_TIMEOUT = 5.0
Claim = tuple[str, int, Predicted | None]  # (prediction id, instance, truth)
CHUNK = 2000  # ids per script call

# KEYS: prediction hashes. ARGV: per key, its field count n, its TTL, then n field names and values alternating.
WRITE_SCRIPT = """
local pos = 1
for i = 1, #KEYS do
  local n = tonumber(ARGV[pos])
  for j = pos + 2, pos + n, 2 do
    redis.call('HSET', KEYS[i], ARGV[j], ARGV[j + 1])
  end
  redis.call('EXPIRE', KEYS[i], ARGV[pos + 1])
  pos = pos + 2 + n
end
return #KEYS
"""
# KEYS: per claimed instance, its feedback set and its truth hash. ARGV: the TTL, then per claimed instance its
# number and its encoded truth ("": none). Returns 1 per instance claimed first (whose truth is then kept).
CLAIM_SCRIPT = """
local added = {}
for i = 1, #KEYS / 2 do
  local instance = ARGV[2 * i]
  local truth = ARGV[2 * i + 1]
  added[i] = redis.call('SADD', KEYS[2 * i - 1], instance)
  redis.call('EXPIRE', KEYS[2 * i - 1], ARGV[1])
  if added[i] == 1 and truth ~= '' then
    redis.call('HSET', KEYS[2 * i], instance, truth)
    redis.call('EXPIRE', KEYS[2 * i], ARGV[1])
  end
end
return added
"""
# KEYS: a prediction hash, its feedback set, its truth hash. Returns the hashes as flat lists and the set's members.
DESCRIBE_SCRIPT = """
return {redis.call('HGETALL', KEYS[1]), redis.call('SMEMBERS', KEYS[2]), redis.call('HGETALL', KEYS[3])}
"""
# KEYS: prediction hashes. Returns each hash as a flat field/value list (empty when missing).
READ_SCRIPT = """
local found = {}
for i = 1, #KEYS do
  found[i] = redis.call('HGETALL', KEYS[i])
end
return found
"""


class _Connection:
    """One thread's client and its registered scripts (EVALSHA, loaded again automatically after a restart)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.write = client.register_script(WRITE_SCRIPT)
        self.claim = client.register_script(CLAIM_SCRIPT)
        self.read = client.register_script(READ_SCRIPT)
        self.describe = client.register_script(DESCRIBE_SCRIPT)


def encode_predicted(value: Predicted) -> str:
    return "s" + value if isinstance(value, str) else "f" + repr(float(value))


def decode_predicted(text: str) -> Predicted:
    return text[1:] if text[:1] == "s" else float(text[1:])


def encode_outliers(code: str, scores: Sequence[float | None]) -> str:
    """`code`'s detectors, each followed by its score (`scores` in `SCORED_DETECTORS` order)."""
    by_letter = {OUTLIER_CODES[detector]: score for detector, score in zip(SCORED_DETECTORS, scores, strict=True)}
    return ",".join(letter + repr(float("nan") if (score := by_letter[letter.lower()]) is None else float(score))
                    for letter in code)


def decode_outliers(text: str) -> tuple[str, list[float | None]]:
    """(code, scores in `SCORED_DETECTORS` order) of an `o{n}` field."""
    tokens = [token for token in text.split(",") if token]
    by_letter = {token[0].lower(): float(token[1:]) for token in tokens}
    return "".join(token[0] for token in tokens), [by_letter.get(OUTLIER_CODES[detector])
                                                  for detector in SCORED_DETECTORS]


def _ttl(retention: float, since: float) -> int:
    return max(1, math.ceil(since + retention - time.time()))


def _write_rows(conn: _Connection, prefix: str, retention: float, rows: Iterable[Row]) -> None:
    grouped: dict[str, tuple[float, list[str]]] = {}
    for prediction_id, instance, model, task, predicted, when, version, outliers, issues, *scores in rows:
        entry = grouped.get(prediction_id)
        if entry is None:
            entry = grouped[prediction_id] = (when, ["m", model, "k", task, "t", repr(when)])
            if version is not None:
                entry[1].extend(("v", version))
        fields = entry[1]
        fields.extend((f"i{instance}", encode_predicted(predicted)))
        if outliers is not None:
            fields.extend((f"o{instance}", encode_outliers(outliers, scores)))
        if issues is not None:
            fields.extend((f"q{instance}", issues))
    items = list(grouped.items())
    for start in range(0, len(items), CHUNK):
        keys: list[str] = []
        args: list[Any] = []
        for prediction_id, (first_time, fields) in items[start:start + CHUNK]:
            keys.append(f"{prefix}p:{prediction_id}")
            args += (len(fields), _ttl(retention, first_time), *fields)
        conn.write(keys=keys, args=args)


def _open(url: str) -> _Connection:
    client = redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT,
                                  decode_responses=True)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        raise ConnectionError(f"cannot reach {_redact(url)}: {exc}") from None
    return _Connection(client)


class RedisRowWriter:
    """The store's `row_writer`: an analysis worker's own client (connected on first use)."""

    def __init__(self, url: str, retention: float, prefix: str) -> None:
        self.url = url
        self.retention = retention
        self.prefix = prefix
        self._conn: _Connection | None = None

    def write(self, predictions: Sequence[StoredPredictions]) -> None:
        if self._conn is None:
            self._conn = _open(self.url)
        _write_rows(self._conn, self.prefix, self.retention, rows_of(predictions, time.time()))

    def close(self) -> None:
        if self._conn is not None:
            _close(self._conn)
            self._conn = None

    def __getstate__(self) -> dict[str, Any]:  # crosses to the worker without a connection
        return {**self.__dict__, "_conn": None}


class RedisStore(ThreadedStore):
    shared = True

    def __init__(self, url: str, retention: float, key_prefix: str = "sidecar:",
                 flush_interval: float = DEFAULT_FLUSH_INTERVAL, flush_rows: int = DEFAULT_FLUSH_ROWS) -> None:
        self.url = url
        self.retention = retention
        self.prefix = key_prefix
        self._writer: StoreThread[_Connection] = StoreThread("redis-writer", self._connect, _close,
                                                             write_rows=self._write, flush_interval=flush_interval,
                                                             flush_rows=flush_rows)
        self._reader: StoreThread[_Connection] = StoreThread("redis-reader", self._connect, _close)

    def _connect(self) -> _Connection:
        return _open(self.url)

    async def lookup(self, prediction_ids: Sequence[str]) -> dict[str, StoredPrediction]:
        return await self._reader.call_batched(self._read_many, list(prediction_ids))

    async def describe(self, prediction_id: str) -> PredictionRecord | None:
        return await self._reader.call(self._describe, prediction_id)

    async def claim(self, keys: Sequence[Key], truths: Sequence[Predicted] | None = None) -> list[bool]:
        kept: Sequence[Predicted | None] = truths if truths is not None else [None] * len(keys)
        claims = [(*key, truth) for key, truth in zip(keys, kept, strict=True)]
        return await self._writer.call_batched(self._claim_many, claims)

    def _ttl(self, since: float) -> int:
        return _ttl(self.retention, since)

    def _write(self, conn: _Connection, rows: Iterable[Row], count: int) -> None:
        _write_rows(conn, self.prefix, self.retention, rows)

    def row_writer(self) -> RedisRowWriter:
        return RedisRowWriter(self.url, self.retention, self.prefix)

    def written_elsewhere(self, rows: int) -> None:
        return None  # Redis expires the keys itself

    def _claim_many(self, conn: _Connection, claim_lists: list[list[Claim]]) -> list[list[bool]]:
        """Several calls' claims in one script call; SADD answers 1 only to the first to add an instance."""
        flat = [claim for claims in claim_lists for claim in claims]
        ttl = self._ttl(time.time())
        added: list[Any] = []
        prefix = self.prefix
        for start in range(0, len(flat), CHUNK):
            chunk = flat[start:start + CHUNK]
            keys: list[str] = []
            args: list[Any] = [ttl]
            for prediction_id, instance, truth in chunk:
                keys += (f"{prefix}f:{prediction_id}", f"{prefix}t:{prediction_id}")
                args += (instance, "" if truth is None else encode_predicted(truth))
            added += conn.claim(keys=keys, args=args)
        answers = iter(added)
        return [[bool(next(answers)) for _ in claims] for claims in claim_lists]

    def _describe(self, conn: _Connection, prediction_id: str) -> PredictionRecord | None:
        prefix = self.prefix
        flat, claimed, truth_fields = conn.describe(keys=[f"{prefix}p:{prediction_id}", f"{prefix}f:{prediction_id}",
                                                          f"{prefix}t:{prediction_id}"])
        fields = dict(zip(flat[0::2], flat[1::2], strict=True))
        if "m" not in fields:
            return None
        model, task, when, version = fields["m"], fields.get("k", ""), float(fields.get("t", 0.0)), fields.get("v")
        instances: dict[int, StoredInstance] = {}
        for name, value in fields.items():
            if name[:1] != "i":
                continue
            instance = int(name[1:])
            outliers: str | None = None
            scores: list[float | None] = [None] * len(SCORED_DETECTORS)
            if (encoded := fields.get(f"o{instance}")) is not None:
                outliers, scores = decode_outliers(encoded)
            row: Row = (prediction_id, instance, model, task, decode_predicted(value), when, version, outliers,
                        fields.get(f"q{instance}"), *scores)
            instances[instance] = stored_instance(row)
        truths = dict(zip(truth_fields[0::2], truth_fields[1::2], strict=True))
        return PredictionRecord(model, version, when, dict(sorted(instances.items())),
                                {int(member): decode_predicted(truths[member]) if member in truths else None
                                 for member in claimed})

    def _read_many(self, conn: _Connection, id_lists: list[list[str]]) -> list[dict[str, StoredPrediction]]:
        """Several lookups in one script call."""
        unique = list(dict.fromkeys(prediction_id for ids in id_lists for prediction_id in ids))
        found: dict[str, StoredPrediction] = {}
        for start in range(0, len(unique), CHUNK):
            chunk = unique[start:start + CHUNK]
            replies = conn.read(keys=[f"{self.prefix}p:{prediction_id}" for prediction_id in chunk])
            for prediction_id, flat in zip(chunk, replies, strict=True):
                stored = _decode(dict(zip(flat[0::2], flat[1::2], strict=True)))
                if stored is not None:
                    found[prediction_id] = stored
        return [{prediction_id: found[prediction_id] for prediction_id in ids if prediction_id in found}
                for ids in id_lists]


def _decode(fields: dict[str, Any]) -> StoredPrediction | None:
    if not fields or "m" not in fields:
        return None
    instances = {int(name[1:]): decode_predicted(value) for name, value in fields.items() if name[:1] == "i"}
    return StoredPrediction(fields["m"], fields.get("k", ""), float(fields.get("t", 0.0)), instances)


def _close(conn: _Connection) -> None:
    conn.client.close()


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
