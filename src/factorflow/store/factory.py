"""Chooses the store from its URL."""

from __future__ import annotations

from pathlib import Path

from factorflow.errors import ConfigError
from factorflow.store.sql import SqlEventStore


def open_store(url: str, *, migrate: bool = True) -> SqlEventStore:
    """``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` or ``postgresql://…``."""
    store: SqlEventStore
    if url.startswith("sqlite:///"):
        from factorflow.store.sqlite import SqliteEventStore

        store = SqliteEventStore(Path(url.removeprefix("sqlite:///")))
    elif url.startswith(("postgresql://", "postgres://")):
        from factorflow.store.postgres import PostgresEventStore

        store = PostgresEventStore(url)
    else:
        raise ConfigError(
            "store.url must start with sqlite:/// or postgresql:// "
            f"(got a URL with scheme {url.split(':', 1)[0]!r})"
        )
    if migrate:
        store.migrate()
    return store
