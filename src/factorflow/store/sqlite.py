"""SQLite event store: the embedded default.

WAL with ``synchronous=FULL`` makes every commit durable (the WAL is fsynced) before ``record``
returns; the group committer makes one such commit serve many deliveries.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from factorflow.store.sql import SqlEventStore


class SqliteEventStore(SqlEventStore):
    dialect = "sqlite"
    placeholder = "?"
    errors = (sqlite3.Error,)

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(self._open)

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _begin(self, cur: Any) -> None:
        cur.execute("BEGIN IMMEDIATE")
