"""SQLite event store: the embedded default.

WAL with ``synchronous=FULL`` makes every commit durable (the WAL is fsynced) before ``record``
returns; the group committer makes one such commit serve many deliveries.
"""

from __future__ import annotations

import functools
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

    def _insert_events(self, cur: Any, sql: str, rows: list[tuple[Any, ...]]) -> list[bool]:
        """Which uuids are stored already (one query), then the new rows in a few multi-row
        INSERTs: a handful of statements per batch instead of one per event.

        That matters beyond the statements' own cost: each statement lets go of the GIL while
        SQLite works, and getting it back can mean waiting for the event loop's thread to
        reach its switch interval; a commit with one statement per event spent most of its
        time waiting so. Reading first is safe here: ``BEGIN IMMEDIATE`` holds SQLite's write
        lock, so nobody can store one of these uuids between the read and the insert (and if
        somebody did, the plain INSERT would fail the whole commit rather than miscount).
        """
        existing: set[str] = set()
        uuids = sorted({row[0] for row in rows})
        start = 0
        while start < len(uuids):
            size = min(_MAX_IN_LIST, 1 << ((len(uuids) - start).bit_length() - 1))
            chunk = uuids[start:start + size]
            cur.execute(_select_stored(size), chunk)
            existing.update(found for (found,) in cur.fetchall())
            start += size
        fresh: list[tuple[Any, ...]] = []
        inserted: list[bool] = []
        for row in rows:
            uuid = row[0]
            if uuid in existing:
                inserted.append(False)
            else:
                existing.add(uuid)  # a second copy in this batch is a duplicate of the first
                fresh.append((*row[:8], "hook", "", row[8]))
                inserted.append(True)
        self._insert_rows(cur, _EVENT_INSERT, fresh)
        return inserted


_EVENT_INSERT = (
    "INSERT INTO events (uuid, event_type, published, published_at, received_at, delivery_id, "
    "hook_id, org, provenance, content_hash, raw) VALUES"
)
_MAX_IN_LIST = 512


@functools.lru_cache(maxsize=16)
def _select_stored(size: int) -> str:
    return "SELECT uuid FROM events WHERE uuid IN (" + ", ".join("?" * size) + ")"


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
