"""SQLite event store: the embedded default.

WAL with ``synchronous=FULL`` makes every commit durable (the WAL is fsynced) before ``record``
returns; the group committer makes one such commit serve many deliveries.
"""

from __future__ import annotations

import sqlite3
import time
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
        conn.execute("PRAGMA busy_timeout=30000")
        _switch_to_wal(conn)
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def _begin(self, cur: Any) -> None:
        cur.execute("BEGIN IMMEDIATE")


def _switch_to_wal(conn: sqlite3.Connection, attempts: int = 50) -> None:
    """Switching a new file to WAL needs a moment alone with it, and SQLite answers "database
    is locked" at once (without its busy handler) when several processes open the same new
    file together; the setting persists, so this only matters on a first start."""
    for attempt in range(attempts):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
