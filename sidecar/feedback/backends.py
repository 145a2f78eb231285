"""Which prediction store the `store` setting names: SQLite in the state directory, or Redis."""

from __future__ import annotations

from pathlib import Path

from sidecar.feedback.store import DEFAULT_FLUSH_INTERVAL, DEFAULT_FLUSH_ROWS, PredictionStore


def open_store(store: str, state_dir: Path, retention: float, max_rows: int, key_prefix: str,
               flush_interval: float = DEFAULT_FLUSH_INTERVAL, flush_rows: int = DEFAULT_FLUSH_ROWS) -> PredictionStore:
    """The store named by the `store` setting: `sqlite` or a Redis URL; rows wait at most `flush_interval` seconds,
    or until `flush_rows` are queued, for their write."""
    if store == "sqlite":
        from sidecar.feedback.sqlite_store import SqliteStore  # each backend loads its library only when chosen

        return SqliteStore(state_dir / "predictions.sqlite3", retention, max_rows, flush_interval, flush_rows)
    from sidecar.feedback.redis_store import RedisStore

    return RedisStore(store, retention, key_prefix, flush_interval, flush_rows)
