"""The shared prediction store: Redis, so feedback posted to any replica joins predictions analysed by another.

Keys (all expire `retention` seconds after the prediction, so Redis does the trimming):
- `{prefix}p:{id}`: a hash with `m` (model), `k` (task), `t` (time) and `i{n}` (predicted value of instance n,
  `s<label>` for a class label or `f<number>`).
- `{prefix}f:{id}`: a set of instance numbers that received feedback. `SADD` answers 1 only to the first
  replica that adds an instance, which is what dedupes feedback across replicas.
Each operation is one Lua script call however many ids it covers (a write of every queued row, a batch of
claims, a batch of lookups): one round trip and one reply to parse, which matters because redis-py parses replies
in Python. The writer thread writes and claims; lookups run on a reader thread. Rows wait at most `flush_interval`
for their write (see threads.py); once Redis has answered, how long they last is Redis's persistence setting
(docs/durability.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis

from sidecar.feedback.store import DEFAULT_FLUSH_INTERVAL, DEFAULT_FLUSH_ROWS, Key, Predicted, Row, StoredPrediction
from sidecar.feedback.threads import StoreThread, ThreadedStore

SOCKET_TIMEOUT = 5.0
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
# KEYS: feedback sets (one per claimed instance). ARGV: the TTL, then the instance numbers. Returns 1 per new one.
CLAIM_SCRIPT = """
local added = {}
for i = 1, #KEYS do
  added[i] = redis.call('SADD', KEYS[i], ARGV[i + 1])
  redis.call('EXPIRE', KEYS[i], ARGV[1])
end
return added
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


def encode_predicted(value: Predicted) -> str:
    return "s" + value if isinstance(value, str) else "f" + repr(float(value))


def decode_predicted(text: str) -> Predicted:
    return text[1:] if text[:1] == "s" else float(text[1:])


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
        client = redis.Redis.from_url(self.url, socket_timeout=SOCKET_TIMEOUT,
                                      socket_connect_timeout=SOCKET_TIMEOUT, decode_responses=True)
        try:
            client.ping()
        except redis.RedisError as exc:
            client.close()
            raise ConnectionError(f"cannot reach {_redact(self.url)}: {exc}") from None
        return _Connection(client)

    async def lookup(self, prediction_ids: Sequence[str]) -> dict[str, StoredPrediction]:
        return await self._reader.call_batched(self._read_many, list(prediction_ids))

    async def claim(self, keys: Sequence[Key]) -> list[bool]:
        return await self._writer.call_batched(self._claim_many, list(keys))

    def _ttl(self, since: float) -> int:
        return max(1, math.ceil(since + self.retention - time.time()))

    def _write(self, conn: _Connection, rows: Iterable[Row], count: int) -> None:
        grouped: dict[str, tuple[float, list[str]]] = {}
        for prediction_id, instance, model, task, predicted, when in rows:
            entry = grouped.get(prediction_id)
            if entry is None:
                entry = grouped[prediction_id] = (when, ["m", model, "k", task, "t", repr(when)])
            entry[1].extend((f"i{instance}", encode_predicted(predicted)))
        items = list(grouped.items())
        for start in range(0, len(items), CHUNK):
            keys: list[str] = []
            args: list[Any] = []
            for prediction_id, (first_time, fields) in items[start:start + CHUNK]:
                keys.append(f"{self.prefix}p:{prediction_id}")
                args += (len(fields), self._ttl(first_time), *fields)
            conn.write(keys=keys, args=args)

    def _claim_many(self, conn: _Connection, key_lists: list[list[Key]]) -> list[list[bool]]:
        """Several calls' claims in one script call; SADD answers 1 only to the first to add an instance."""
        flat = [key for keys in key_lists for key in keys]
        ttl = self._ttl(time.time())
        added: list[Any] = []
        for start in range(0, len(flat), CHUNK):
            chunk = flat[start:start + CHUNK]
            added += conn.claim(keys=[f"{self.prefix}f:{prediction_id}" for prediction_id, _ in chunk],
                                args=[ttl, *(instance for _, instance in chunk)])
        answers = iter(added)
        return [[bool(next(answers)) for _ in keys] for keys in key_lists]

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
