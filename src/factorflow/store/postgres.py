"""PostgreSQL event store: the scale-out backend, for several receivers on one database.

Besides the receiver's writer connection (``record``), the store keeps two small pools for
everything else: write transactions (:meth:`PostgresEventStore.write`, used by the pipeline's
ledgers, the actions and the worker's bookkeeping) and reads (autocommit: one round trip per
query, no transaction to end). Steps of many workflows run on threads at once; each takes a
connection of its own for its transaction instead of queueing behind one shared connection
while it waits on the network, and concurrent commits share the server's WAL flushes. The
database's own locks keep concurrent writers correct, as they do for several processes.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg

from factorflow.errors import StoreUnavailable
from factorflow.store.sql import Cursor, SqlEventStore

# Any fixed number: every factorflow process takes the same lock while it migrates.
_MIGRATION_LOCK = 0x66616374
# Connections per pool (opened as needed, kept while idle): enough for the worker's threads
# to overlap their round trips, few enough for many processes on one server.
POOL_SIZE = 4
_IDLE = psycopg.pq.TransactionStatus.IDLE


class ConnectionPool:
    """At most ``size`` connections, each used by one thread at a time. A connection goes
    back to the pool only if it is idle (no transaction left open, not broken); any other is
    closed, and the next user opens a new one."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], size: int) -> None:
        if size < 1:
            raise ValueError("a pool needs at least one connection")
        self._connect = connect
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[psycopg.Connection[Any]] = []

    def acquire(self) -> psycopg.Connection[Any]:
        """A connection for the calling thread until :meth:`release`; waits while all are in
        use. psycopg errors from opening one propagate."""
        self._slots.acquire()
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None or conn.closed:
                conn = self._connect()
        except BaseException:
            self._slots.release()
            raise
        return conn

    def release(self, conn: psycopg.Connection[Any]) -> None:
        try:
            if not conn.closed and conn.info.transaction_status == _IDLE:
                with self._lock:
                    self._idle.append(conn)
            else:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
        finally:
            self._slots.release()

    def close(self) -> None:
        """Close the idle connections (the pool opens new ones if it is used again)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(psycopg.Error):
                conn.close()


class PostgresEventStore(SqlEventStore):
    dialect = "postgres"
    placeholder = "%s"
    errors = (psycopg.Error,)

    def __init__(self, url: str, pool_size: int = POOL_SIZE) -> None:
        self.url = url
        self._writers = ConnectionPool(self._open, pool_size)
        self._readers = ConnectionPool(self._open_reader, pool_size)
        super().__init__(self._open)

    def _open(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, connect_timeout=10)

    def _open_reader(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, connect_timeout=10, autocommit=True)

    @contextlib.contextmanager
    def write(self) -> Iterator[Cursor]:
        """One write transaction on a pooled connection: commits on exit, rolls back on
        error. Database errors become StoreUnavailable, as in the base class."""
        try:
            conn = self._writers.acquire()
        except psycopg.Error as exc:
            raise StoreUnavailable(f"postgres unavailable: {type(exc).__name__}") from exc
        try:
            try:
                yield Cursor(conn.cursor(), self._q)
                conn.commit()
            except BaseException as exc:
                # Back to idle if it can be (the pool drops the connection otherwise).
                with contextlib.suppress(psycopg.Error):
                    conn.rollback()
                if isinstance(exc, psycopg.Error):
                    raise StoreUnavailable(
                        f"postgres write failed: {type(exc).__name__}"
                    ) from exc
                raise
        finally:
            self._writers.release(conn)

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        try:
            conn = self._readers.acquire()
        except psycopg.Error as exc:
            raise StoreUnavailable(f"postgres unavailable: {type(exc).__name__}") from exc
        try:
            return conn.execute(self._q(sql), params).fetchall()
        except psycopg.Error as exc:
            raise StoreUnavailable(f"postgres read failed: {type(exc).__name__}") from exc
        finally:
            self._readers.release(conn)

    def close(self) -> None:
        self._writers.close()
        self._readers.close()
        super().close()

    def _insert_events(self, cur: Any, sql: str, rows: list[tuple[Any, ...]]) -> list[bool]:
        # One pipelined round trip for the whole batch instead of one per event (measured
        # about half the time per event); each row's RETURNING tells whether it was new.
        if not rows:
            return []
        cur.executemany(sql + " RETURNING seq", rows, returning=True)
        inserted = []
        while True:
            inserted.append(cur.fetchone() is not None)
            if not cur.nextset():
                break
        return inserted

    def _lock_for_migration(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
