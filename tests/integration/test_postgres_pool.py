"""The PostgreSQL store's pools: write transactions and reads of many threads run on
connections of their own (at most the pool's size at once), a broken or failed connection is
not handed out again, and errors keep their StoreUnavailable messages."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from tests.conftest import PG_URL

from factorflow.errors import StoreUnavailable
from factorflow.store.postgres import POOL_SIZE, PostgresEventStore
from factorflow.store.sql import Cursor

pytestmark = pytest.mark.postgres


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresEventStore]:
    opened = PostgresEventStore(pg_url)
    opened.migrate()
    with opened.write() as cur:
        cur.execute("CREATE TABLE pool_probe (id INTEGER PRIMARY KEY, who TEXT NOT NULL)")
    yield opened
    opened.close()


def backends(database: str) -> set[int]:
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        found = admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s",
                              (database,)).fetchall()
    return {row[0] for row in found}


def gone(database: str) -> None:
    """Until the server has no connection to ``database`` left (bounded)."""
    deadline = time.monotonic() + 30
    while backends(database) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backends(database) == set()


def test_concurrent_transactions_each_get_a_connection(store: PostgresEventStore) -> None:
    inside = threading.Barrier(POOL_SIZE, timeout=30)
    pids: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def write(n: int) -> None:
        try:
            with store.write() as cur:
                cur.execute("INSERT INTO pool_probe (id, who) VALUES (?, ?)", (n, f"t{n}"))
                pid = cur.execute("SELECT pg_backend_pid()").fetchone()[0]
                inside.wait()  # every thread is inside its transaction at once
                with lock:
                    pids.append(pid)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(POOL_SIZE)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(set(pids)) == POOL_SIZE
    assert store.read("SELECT COUNT(*) FROM pool_probe") == [(POOL_SIZE,)]


def test_no_more_than_the_pool_size_at_once(pg_url: str) -> None:
    store = PostgresEventStore(pg_url, pool_size=2)
    database = pg_url.rsplit("/", 1)[1]
    holding = threading.Barrier(3, timeout=30)
    release = threading.Event()
    third_inside = threading.Event()

    def hold() -> None:
        with store.write() as cur:
            cur.execute("SELECT 1")
            holding.wait()
            release.wait(30)

    def third() -> None:
        with store.write() as cur:
            cur.execute("SELECT 1")
            third_inside.set()

    try:
        holders = [threading.Thread(target=hold) for _ in range(2)]
        for thread in holders:
            thread.start()
        holding.wait()  # both pool connections are in use
        waiter = threading.Thread(target=third)
        waiter.start()
        assert not third_inside.wait(0.5)  # it waits for a free connection...
        assert len(backends(database)) == 2
        release.set()
        assert third_inside.wait(30)  # ...and gets one when a holder is done
        for thread in [*holders, waiter]:
            thread.join(30)
        assert len(backends(database)) == 2  # the third reused a pooled connection
    finally:
        release.set()
        store.close()
    gone(database)  # closed on our side at once; the server notices within moments
    with pytest.raises(ValueError, match="at least one"):
        PostgresEventStore(pg_url, pool_size=0)


def test_a_failed_transaction_leaves_nothing_and_the_connection_is_reused(
    store: PostgresEventStore,
) -> None:
    def pid_of(cur: Cursor) -> int:
        return int(cur.execute("SELECT pg_backend_pid()").fetchone()[0])

    with store.write() as cur:
        first = pid_of(cur)
    with pytest.raises(StoreUnavailable) as failed, store.write() as cur:
        cur.execute("INSERT INTO pool_probe (id, who) VALUES (1, 'a')")
        cur.execute("INSERT INTO pool_probe (id, who) VALUES (1, 'b')")
    assert str(failed.value) == "postgres write failed: UniqueViolation"
    with pytest.raises(RuntimeError, match="not a database error"), store.write() as cur:
        cur.execute("INSERT INTO pool_probe (id, who) VALUES (2, 'c')")
        raise RuntimeError("not a database error")
    assert store.read("SELECT COUNT(*) FROM pool_probe") == [(0,)]
    with store.write() as cur:
        assert pid_of(cur) == first  # rolled back to idle, and handed out again
        cur.execute("INSERT INTO pool_probe (id, who) VALUES (3, 'd')")
    assert store.read("SELECT id, who FROM pool_probe") == [(3, "d")]


def test_a_broken_connection_is_dropped_and_replaced(store: PostgresEventStore,
                                                     pg_url: str) -> None:
    database = pg_url.rsplit("/", 1)[1]
    with store.write() as cur:
        cur.execute("INSERT INTO pool_probe (id, who) VALUES (1, 'kept')")
    assert store.read("SELECT who FROM pool_probe") == [("kept",)]
    # The server ends every connection of this database (a restart, an operator).
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = %s", (database,))
    gone(database)

    with pytest.raises(StoreUnavailable) as failed_read:
        store.read("SELECT who FROM pool_probe")
    assert str(failed_read.value).startswith("postgres read failed: ")
    assert store.read("SELECT who FROM pool_probe") == [("kept",)]  # a new connection
    with pytest.raises(StoreUnavailable) as failed_write, store.write() as cur:
        cur.execute("INSERT INTO pool_probe (id, who) VALUES (2, 'lost')")
    assert str(failed_write.value).startswith("postgres write failed: ")
    with store.write() as cur:
        cur.execute("INSERT INTO pool_probe (id, who) VALUES (3, 'new')")
    assert store.read("SELECT id, who FROM pool_probe ORDER BY id") == [(1, "kept"), (3, "new")]


def test_an_unreachable_server_is_unavailable() -> None:
    store = PostgresEventStore("postgresql://postgres@127.0.0.1:1/none?connect_timeout=2")
    try:
        with pytest.raises(StoreUnavailable) as reading:
            store.read("SELECT 1")
        with pytest.raises(StoreUnavailable) as writing, store.write():
            pass
        assert str(reading.value) == str(writing.value) == (
            "postgres unavailable: OperationalError")
    finally:
        store.close()
