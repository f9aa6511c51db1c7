"""SQLite event store: the embedded default.

WAL with ``synchronous=FULL`` makes every commit durable (the WAL is fsynced) before ``record``
returns; the group committer makes one such commit serve many deliveries.

Checkpoints (copying the WAL back into the database file) are left to a background thread
once the store takes deliveries: SQLite's automatic checkpoint runs inside the commit that
crosses its threshold, and so delays every delivery waiting on that commit. The automatic
checkpoint stays on, at a much higher threshold, as a safety net should the background one fall
behind.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from factorflow.store.base import DeliveryOutcome, Receipt
from factorflow.store.sql import LEDGER_INSERT, SqlEventStore, multi_row_sql

log = logging.getLogger(__name__)

# With the background checkpointer running: how often it checkpoints, and the WAL size (in
# pages) at which a commit checkpoints by itself anyway (SQLite's default is 1,000).
CHECKPOINT_INTERVAL_SECONDS = 0.5
SAFETY_AUTOCHECKPOINT_PAGES = 20_000
# The WAL length (in pages) at which the background checkpointer starts it over (see
# _Checkpointer): 32 MiB with 8 KiB pages.
WAL_RESTART_PAGES = 4_096
# The page size of a new database. An event row (its raw JSON, ~2 KB for an enrollment) does
# not share a 4 KiB page with another, so every event wrote a whole page to the WAL and again
# to the database; 8 KiB pages hold three (see bench/README.md). A database created with
# another page size keeps it: SQLite cannot change it in WAL mode.
PAGE_SIZE = 8192


class SqliteEventStore(SqlEventStore):
    dialect = "sqlite"
    placeholder = "?"
    errors = (sqlite3.Error,)

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._checkpointer: _Checkpointer | None = None
        super().__init__(self._open)

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0,
            cached_statements=STATEMENT_CACHE,
        )
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # no effect once the file has content
        _switch_to_wal(conn)
        conn.execute("PRAGMA synchronous=FULL")
        # A multi-row INSERT inside a transaction keeps a statement journal (to undo just that
        # statement); past 64 KiB SQLite spills it to a temporary file, and a batch's events
        # pass that, so every commit created, wrote and deleted a file. In memory instead.
        conn.execute("PRAGMA temp_store=MEMORY")
        if self._checkpointer is not None:
            conn.execute(f"PRAGMA wal_autocheckpoint={SAFETY_AUTOCHECKPOINT_PAGES}")
        return conn

    def record(self, receipts: Sequence[Receipt]) -> list[DeliveryOutcome]:
        if self._checkpointer is None:  # a store that takes deliveries (not a CLI command)
            self._start_checkpointer()
        return super().record(receipts)

    def close(self) -> None:
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            checkpointer.stop()
        super().close()

    def _start_checkpointer(self) -> None:
        with self._write_lock:
            self._checkpointer = _Checkpointer(
                self.path, CHECKPOINT_INTERVAL_SECONDS, WAL_RESTART_PAGES, self._write_lock
            )
            if self._writer is not None:
                self._writer.execute(f"PRAGMA wal_autocheckpoint={SAFETY_AUTOCHECKPOINT_PAGES}")
        self._checkpointer.start()

    def _begin(self, cur: Any) -> None:
        cur.execute("BEGIN IMMEDIATE")

    def _record_batch(self, cur: Any, receipts: Sequence[Receipt]) -> list[DeliveryOutcome]:
        """The shared ``_record_batch`` (same order of statements, same outcomes), written
        for this hot path: one statement of the exact size for each of the lookup, the
        events and the ledger (SQLite's statement cache keeps one text per size), parameters
        built flat, and a delivery whose events are all new skips the per-event bookkeeping.

        Which uuids are stored already is read first, then only the new rows are inserted.
        That is safe here: ``BEGIN IMMEDIATE`` holds SQLite's write lock, so nobody can store
        one of these uuids between the read and the insert (and if somebody did, the plain
        INSERT would fail the whole commit rather than miscount). Fewer, larger statements
        matter beyond their own cost: each one lets go of the interpreter lock while SQLite
        works (see the thread intake).
        """
        order = sorted(
            (event.uuid, r, e)
            for r, receipt in enumerate(receipts)
            for e, event in enumerate(receipt.delivery.events)
        )
        existing = self._stored_uuids(cur, [uuid for uuid, _, _ in order])
        params: list[Any] = []
        again: list[tuple[str, int, int]] = []  # copies of a uuid stored already
        for uuid, r, e in order:
            if uuid in existing:
                again.append((uuid, r, e))
                continue
            existing.add(uuid)  # a second copy in this batch is a duplicate of the first
            receipt = receipts[r]
            event = receipt.delivery.events[e]
            params += (
                uuid, event.event_type, event.published, event.published_at,
                receipt.received_at, receipt.delivery_id, receipt.hook_id, receipt.org,
                event.raw.decode(),
            )
        _insert_flat(cur, _EVENT_INSERT, _EVENT_VALUES, _EVENT_WIDTH, params)
        taken: dict[tuple[int, int], tuple[Any, ...] | None] = {}
        for uuid, r, e in again:
            cur.execute(_SELECT_COPY, (uuid,))
            taken[r, e] = tuple(cur.fetchone())
        with_copies = {r for _, r, _ in again}
        outcomes: list[DeliveryOutcome] = []
        ledger: list[Any] = []
        for r, receipt in enumerate(receipts):
            delivery = receipt.delivery
            if delivery.quarantined or r in with_copies:
                outcome = self._record_one(cur, receipt, r, taken)
            else:
                count = len(delivery.events)
                outcome = DeliveryOutcome(total=count, new=count, duplicate=0, quarantined=0)
            outcomes.append(outcome)
            ledger += (
                receipt.delivery_id, receipt.hook_id, receipt.org, receipt.received_at,
                delivery.event_time, outcome.total, outcome.new, outcome.duplicate,
                outcome.quarantined,
            )
        _insert_flat(cur, LEDGER_INSERT, _LEDGER_VALUES, _LEDGER_WIDTH, ledger)
        return outcomes

    def _stored_uuids(self, cur: Any, uuids: list[str]) -> set[str]:
        """Which of ``uuids`` (sorted) are stored already."""
        found: set[str] = set()
        for start in range(0, len(uuids), _MAX_ROWS_PER_STATEMENT):
            chunk = uuids[start:start + _MAX_ROWS_PER_STATEMENT]
            cur.execute(_select_stored(len(chunk)), chunk)
            found.update(uuid for (uuid,) in cur.fetchall())
        return found


def _insert_flat(cur: Any, insert: str, group: str, width: int, params: list[Any]) -> None:
    """``insert`` (``INSERT INTO t (...) VALUES``) for rows given as one flat list of
    ``width`` values each: one statement of the exact size per _MAX_ROWS_PER_STATEMENT rows."""
    rows = len(params) // width
    if rows <= _MAX_ROWS_PER_STATEMENT:
        if rows:
            cur.execute(_multi_row(insert, group, rows), params)
        return
    for start in range(0, rows, _MAX_ROWS_PER_STATEMENT):
        chunk = params[start * width:(start + _MAX_ROWS_PER_STATEMENT) * width]
        cur.execute(_multi_row(insert, group, len(chunk) // width), chunk)


class _Checkpointer:
    """Runs ``wal_checkpoint(PASSIVE)`` on a connection of its own every ``interval`` seconds,
    and starts the WAL over once it holds ``restart_pages`` frames.

    PASSIVE never waits for readers or the writer: it copies what it can and leaves the rest for
    the next round. But it never starts the WAL over while commits keep coming (SQLite does that
    only at the start of a write once every frame is copied), so the WAL grew to the automatic
    checkpoint's threshold, and the commit that crossed it copied everything since the last
    round and synced the database file: a stall of a tenth of a second for every request
    waiting on it. So when the WAL is long, right after the PASSIVE pass (which left little to
    copy), a RESTART between two of this process's commits (it takes the store's write lock):
    it copies the last frames, syncs the database file, and starts the WAL over if no reader is
    still using it. It never waits for another process: a writer or reader elsewhere makes it
    give up until the next round.

    Failures are logged once (the automatic checkpoint still bounds the WAL) and retried next
    round.
    """

    def __init__(
        self, path: Path, interval: float, restart_pages: int, write_lock: threading.Lock
    ) -> None:
        self._path = path
        self._interval = interval
        self._restart_pages = restart_pages
        self._write_lock = write_lock
        self.restarts = 0  # WALs started over (for tests and curiosity)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="factorflow-checkpoint", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        failing = False
        while not self._stop.wait(self._interval):
            try:
                if conn is None:
                    # No busy wait: a RESTART must never hold the write lock while it waits.
                    conn = sqlite3.connect(
                        self._path, isolation_level=None, check_same_thread=False,
                        timeout=0.0,
                    )
                frames, took = _passive(conn)
                if frames >= self._restart_pages:
                    # Catch up first, while commits go on: each pass copies what came during
                    # the one before, so the RESTART below (which holds the write lock) has
                    # only the last few commits left to copy.
                    for _ in range(_CATCH_UP_PASSES):
                        if took <= _QUICK_PASS_SECONDS:
                            break
                        frames, took = _passive(conn)
                    # Between this process's commits: tried while one is under way, it
                    # would find the write lock taken nearly every time.
                    with self._write_lock:
                        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                    self.restarts += busy == 0
                failing = False
            except sqlite3.Error as exc:
                if not failing:
                    log.warning("store.checkpoint_failed", extra={"fields": {
                        "error": type(exc).__name__}})
                failing = True
                if conn is not None:
                    conn.close()
                    conn = None
        if conn is not None:
            conn.close()


# Before a RESTART: at most this many more PASSIVE passes, until one takes no longer than this.
_CATCH_UP_PASSES = 4
_QUICK_PASS_SECONDS = 0.005


def _passive(conn: sqlite3.Connection) -> tuple[int, float]:
    """A PASSIVE checkpoint: the frames in the WAL, and how long the pass took."""
    started = time.monotonic()
    _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(frames), time.monotonic() - started


# Rows per statement at most. Each size up to this has a statement text of its own, and
# sqlite3 keeps STATEMENT_CACHE prepared statements per connection (its default, 128, is
# less than three kinds of statement times this many sizes).
_MAX_ROWS_PER_STATEMENT = 64
STATEMENT_CACHE = 512
_EVENT_INSERT = (
    "INSERT INTO events (uuid, event_type, published, published_at, received_at, delivery_id, "
    "hook_id, org, provenance, content_hash, raw) VALUES"
)
# One row of _EVENT_INSERT: the hook's rows, whose provenance and (empty) content hash are fixed.
_EVENT_VALUES = "(?, ?, ?, ?, ?, ?, ?, ?, 'hook', '', ?)"
_EVENT_WIDTH = 9
_LEDGER_VALUES = "(?, ?, ?, ?, ?, ?, ?, ?, ?)"
_LEDGER_WIDTH = 9
_SELECT_COPY = (
    "SELECT raw, received_at, provenance, event_type, published_at FROM events WHERE uuid = ?"
)


@functools.lru_cache(maxsize=2 * _MAX_ROWS_PER_STATEMENT)
def _select_stored(size: int) -> str:
    return "SELECT uuid FROM events WHERE uuid IN (" + ", ".join("?" * size) + ")"


@functools.lru_cache(maxsize=4 * _MAX_ROWS_PER_STATEMENT)
def _multi_row(insert: str, group: str, rows: int) -> str:
    return multi_row_sql(insert, group, rows)


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
