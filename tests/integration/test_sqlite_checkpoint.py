"""SQLite: once a store takes deliveries, a background thread checkpoints the WAL (so commits
on the hook's path do not), and closing the store stops it."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from tests.unit.test_group_commit import receipt

from factorflow.store import sqlite as sqlite_store
from factorflow.store.sqlite import SqliteEventStore

# Guards against a hang only: the checkpointer runs every half second.
WAIT_SECONDS = 30


def events_in_database_file(path: Path) -> int:
    """Events in the database file itself, ignoring the WAL (``immutable`` reads the file as
    it is): what a checkpoint has copied back."""
    conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    except sqlite3.OperationalError as exc:  # the schema itself is still only in the WAL
        assert "no such table" in str(exc)
        return 0
    finally:
        conn.close()


def checkpointer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "factorflow-checkpoint"]


def test_deliveries_reach_the_database_file_without_a_checkpoint_in_the_commit(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    store = SqliteEventStore(path)
    store.migrate()
    before = len(checkpointer_threads())
    try:
        # Far below the automatic checkpoint's threshold: only the background thread copies
        # these pages into the database file.
        outcomes = store.record([receipt(f"d-{i}", i) for i in range(40)])
        assert [o.new for o in outcomes] == [1] * 40
        assert len(checkpointer_threads()) == before + 1
        writer = store._writer  # the commit path's connection
        assert writer is not None
        assert writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == (
            sqlite_store.SAFETY_AUTOCHECKPOINT_PAGES
        )
        deadline = time.monotonic() + WAIT_SECONDS
        while events_in_database_file(path) < 40 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert events_in_database_file(path) == 40
        assert store.counts() == {"events": 40, "deliveries": 40, "quarantined": 0}
    finally:
        store.close()
    assert len(checkpointer_threads()) == before  # close() stopped it


def test_a_store_that_takes_no_deliveries_runs_no_checkpointer(tmp_path: Path) -> None:
    before = len(checkpointer_threads())
    store = SqliteEventStore(tmp_path / "store.db")
    store.migrate()
    try:
        with store.write() as cur:  # the pipeline's and the CLI's writes
            cur.execute("SELECT 1")
        assert store.counts()["events"] == 0
        assert len(checkpointer_threads()) == before
    finally:
        store.close()


def page_size(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA page_size").fetchone()[0])
    finally:
        conn.close()


def test_a_new_database_gets_the_larger_page_size(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SqliteEventStore(path)
    try:
        store.migrate()
        store.record([receipt("d-1", 1)])
    finally:
        store.close()
    assert page_size(path) == sqlite_store.PAGE_SIZE == 8192


def test_a_database_made_with_another_page_size_keeps_it_and_its_events(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA page_size=4096")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    store = SqliteEventStore(path)
    try:
        store.migrate()
        store.record([receipt(f"d-{i}", i) for i in range(3)])
    finally:
        store.close()
    assert page_size(path) == 4096
    store = SqliteEventStore(path)  # opened again: nothing lost, the page size unchanged
    try:
        outcomes = store.record([receipt("d-0", 0), receipt("d-9", 9)])
        assert [(o.new, o.duplicate) for o in outcomes] == [(0, 1), (1, 0)]
        assert store.counts() == {"events": 4, "deliveries": 5, "quarantined": 0}
    finally:
        store.close()
    assert page_size(path) == 4096


def test_statement_journals_stay_in_memory(tmp_path: Path) -> None:
    """A batch's multi-row INSERT keeps a statement journal; on disk it cost a temporary file
    created, written and deleted in every commit (decision 16)."""
    store = SqliteEventStore(tmp_path / "store.db")
    try:
        store.migrate()
        store.record([receipt("d-1", *range(40))])
        writer = store._writer_connection()
        assert writer.execute("PRAGMA temp_store").fetchone()[0] == 2  # MEMORY
    finally:
        store.close()


def wal_pages(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return wal.stat().st_size // (24 + sqlite_store.PAGE_SIZE) if wal.exists() else 0


@pytest.fixture
def quick_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpointer that runs every 20 ms and starts the WAL over past 40 pages."""
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_INTERVAL_SECONDS", 0.02)
    monkeypatch.setattr(sqlite_store, "WAL_RESTART_PAGES", 40)


@pytest.mark.usefixtures("quick_restarts")
def test_the_checkpointer_starts_a_long_wal_over_between_commits(tmp_path: Path) -> None:
    """Commits that never pause would let a PASSIVE checkpoint copy everything and still never
    start the WAL over; the RESTART taken between two commits does, and loses nothing."""
    path = tmp_path / "store.db"
    store = SqliteEventStore(path)
    store.migrate()
    try:
        batches = 0
        deadline = time.monotonic() + WAIT_SECONDS
        checkpointer = None
        while time.monotonic() < deadline:
            store.record([receipt(f"d-{batches}-{i}", batches * 100 + i) for i in range(20)])
            batches += 1
            checkpointer = store._checkpointer
            if batches >= 100 and checkpointer is not None and checkpointer.restarts >= 3:
                break
        assert checkpointer is not None and checkpointer.restarts >= 3
        # Each commit adds a few dozen pages; without restarts the WAL would hold them all.
        assert wal_pages(path) < batches * 5
        assert store.counts()["events"] == batches * 20
    finally:
        store.close()
    # The last connection to close checkpoints what is left: every event is in the file.
    assert events_in_database_file(path) == batches * 20


@pytest.mark.usefixtures("quick_restarts")
def test_a_reader_in_the_way_makes_the_restart_give_up_without_blocking_commits(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    store = SqliteEventStore(path)
    store.migrate()
    store.record([receipt("d-first", 0)])
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        reader.execute("BEGIN")  # a read transaction on the WAL as it is now
        assert reader.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1
        slowest = 0.0
        for batch in range(60):
            started = time.monotonic()
            store.record([receipt(f"d-{batch}-{i}", 1 + batch * 100 + i) for i in range(20)])
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.005)  # let the checkpointer try between commits
        checkpointer = store._checkpointer
        assert checkpointer is not None and checkpointer.restarts == 0
        # A RESTART that waited for the reader would hold the write lock for its busy timeout.
        assert slowest < 0.5
        assert reader.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1  # its snapshot
        reader.execute("COMMIT")
        assert store.counts()["events"] == 1 + 60 * 20
    finally:
        reader.close()
        store.close()
