"""Which prediction store the `store` setting names: SQLite in the state directory, or Redis."""

from __future__ import annotations

from pathlib import Path

from sidecar.feedback.store import PredictionStore


def open_store(store: str, state_dir: Path, retention: float, max_rows: int, key_prefix: str) -> PredictionStore:
    """The store named by the `store` setting: `sqlite` or a Redis URL."""
    if store == "sqlite":
        from sidecar.feedback.sqlite_store import SqliteStore  # each backend loads its library only when chosen

        return SqliteStore(state_dir / "predictions.sqlite3", retention, max_rows)
    from sidecar.feedback.redis_store import RedisStore

    return RedisStore(store, retention, key_prefix)
