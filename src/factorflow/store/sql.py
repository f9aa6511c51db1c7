"""The event store over a DB-API connection, shared by SQLite and PostgreSQL.

Exactly-once rests on the database: ``uuid`` is UNIQUE and every insert is
``ON CONFLICT (uuid) DO NOTHING``, so concurrent writers (several receivers on one PostgreSQL,
or two requests in one batch) can race and still store each event once.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from factorflow.errors import StoreUnavailable
from factorflow.okta.payloads import content_hash, format_utc
from factorflow.store.base import (
    UUID_CONFLICT,
    DeliveryOutcome,
    LedgerEntry,
    QuarantineEntry,
    Receipt,
    StoredEvent,
)
from factorflow.store.log_copies import HOOK, note_hook_copy
from factorflow.store.migrations import available

_EVENT_COLUMNS = (
    "seq, uuid, event_type, published, received_at, delivery_id, hook_id, org, provenance, raw"
)
_QUARANTINE_COLUMNS = "id, received_at, delivery_id, hook_id, org, uuid, reason_code, reason, raw"
_LEDGER_COLUMNS = (
    "id, delivery_id, hook_id, org, received_at, events_total, events_new, events_duplicate, "
    "events_quarantined"
)


LEDGER_INSERT = (
    "INSERT INTO deliveries (delivery_id, hook_id, org, received_at, event_time, events_total, "
    "events_new, events_duplicate, events_quarantined) VALUES"
)
# Rows per multi-row INSERT at most: 9 to 11 parameters a row stay far below SQLite's limit of
# parameters in one statement (32,766) and PostgreSQL's (65,535).
_MAX_ROWS_PER_STATEMENT = 256


class SqlEventStore:
    """Subclasses open connections and set ``dialect``, ``placeholder`` and ``errors``."""

    dialect: str
    url: str  # what ``open_store`` opens this store again with
    placeholder = "?"
    errors: tuple[type[BaseException], ...] = ()

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._writer: Any = None
        self._reader: Any = None

    # -- schema ---------------------------------------------------------------------------

    def migrate(self) -> list[int]:
        """Apply the pending migrations; returns the versions applied."""
        with self._write_lock:
            conn = self._writer_connection()
            cur = conn.cursor()
            try:
                self._begin(cur)
                self._lock_for_migration(cur)
                cur.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
                )
                cur.execute("SELECT version FROM schema_migrations")
                done = {row[0] for row in cur.fetchall()}
                applied = []
                for migration in available(self.dialect):
                    if migration.version in done:
                        continue
                    self._run_script(cur, migration.sql)
                    cur.execute(
                        self._q(
                            "INSERT INTO schema_migrations (version, name, applied_at) "
                            "VALUES (?, ?, ?)"
                        ),
                        (migration.version, migration.name, _now()),
                    )
                    applied.append(migration.version)
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            return applied

    def schema_version(self) -> int:
        rows = self._read("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", ())
        return int(rows[0][0])

    # -- writes ---------------------------------------------------------------------------

    def record(self, receipts: Sequence[Receipt]) -> list[DeliveryOutcome]:
        with self._write_lock:
            try:
                conn = self._writer_connection()
                cur = conn.cursor()
                self._begin(cur)
                outcomes = self._record_batch(cur, receipts)
                conn.commit()
            except self.errors as exc:
                self._discard_writer()
                raise StoreUnavailable(
                    f"{self.dialect} commit failed: {type(exc).__name__}"
                ) from exc
            return outcomes

    def _record_batch(self, cur: Any, receipts: Sequence[Receipt]) -> list[DeliveryOutcome]:
        """Insert the events of every receipt, then its quarantine entries and ledger row.

        The events of the whole batch are inserted in uuid order. Two writers inserting
        overlapping uuids (two receivers on one PostgreSQL) then wait for each other in one
        direction only: in arrival order they could each hold a uuid the other needs next and
        deadlock. Within a batch each uuid still goes to its first copy in arrival order;
        the events of one commit take their ``seq`` in uuid order.

        ``content_hash`` is left empty: it only matters when a uuid arrives a second time, and
        is then computed from the stored copy's raw JSON (a hash per event on the hot path
        cost more than the rest of the event's parsing).
        """
        insert_event = self._q(
            "INSERT INTO events (uuid, event_type, published, published_at, received_at, "
            "delivery_id, hook_id, org, provenance, content_hash, raw) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'hook', '', ?) ON CONFLICT (uuid) DO NOTHING"
        )
        order = sorted(
            (event.uuid, r, e)
            for r, receipt in enumerate(receipts)
            for e, event in enumerate(receipt.delivery.events)
        )
        rows = []
        for _, r, e in order:
            receipt = receipts[r]
            event = receipt.delivery.events[e]
            rows.append((
                event.uuid, event.event_type, event.published, event.published_at,
                receipt.received_at, receipt.delivery_id, receipt.hook_id, receipt.org,
                event.raw.decode(),
            ))
        inserted = self._insert_events(cur, insert_event, rows)
        # (receipt, event) -> None if new, else the stored copy's (raw, received_at,
        # provenance, event_type, published_at)
        taken: dict[tuple[int, int], tuple[Any, ...] | None] = {}
        for (uuid, r, e), new in zip(order, inserted, strict=True):
            if new:
                taken[r, e] = None
                continue
            cur.execute(
                self._q("SELECT raw, received_at, provenance, event_type, published_at "
                        "FROM events WHERE uuid = ?"),
                (uuid,),
            )
            taken[r, e] = tuple(cur.fetchone())
        outcomes = [self._record_one(cur, receipt, r, taken) for r, receipt in enumerate(receipts)]
        self._insert_rows(cur, LEDGER_INSERT, [
            (
                receipt.delivery_id, receipt.hook_id, receipt.org, receipt.received_at,
                receipt.delivery.event_time, outcome.total, outcome.new, outcome.duplicate,
                outcome.quarantined,
            )
            for receipt, outcome in zip(receipts, outcomes, strict=True)
        ])
        return outcomes

    def _insert_rows(
        self, cur: Any, insert: str, rows: Sequence[tuple[Any, ...]], group: str | None = None
    ) -> None:
        """``insert`` (``INSERT INTO t (...) VALUES``) for every row, several rows per
        statement: in chunks of a power of two rows, so that a handful of statement texts
        serve every batch size and stay in the driver's statement cache. ``group`` is one
        row's values (default: a ``?`` for each value of a row)."""
        start = 0
        while start < len(rows):
            size = min(_MAX_ROWS_PER_STATEMENT, 1 << ((len(rows) - start).bit_length() - 1))
            chunk = rows[start:start + size]
            cur.execute(
                self._q(multi_row_sql(insert, group or _placeholders(len(chunk[0])), size)),
                tuple(itertools.chain.from_iterable(chunk)),
            )
            start += size

    def _insert_events(self, cur: Any, sql: str, rows: list[tuple[Any, ...]]) -> list[bool]:
        """Insert each row (``ON CONFLICT DO NOTHING``); whether each one was new."""
        inserted = []
        for row in rows:
            cur.execute(sql, row)
            inserted.append(cur.rowcount == 1)
        return inserted

    def _record_one(
        self,
        cur: Any,
        receipt: Receipt,
        index: int,
        taken: dict[tuple[int, int], tuple[Any, ...] | None],
    ) -> DeliveryOutcome:
        delivery = receipt.delivery
        new = duplicate = 0
        quarantined = len(delivery.quarantined)
        for e, event in enumerate(delivery.events):
            stored = taken.get((index, e))  # None: stored by this commit
            if stored is None:
                new += 1
                continue
            stored_raw, first_received, provenance, stored_type, stored_published = stored
            same = content_hash(stored_raw) == event.content_hash
            if provenance != HOOK:  # stored from the System Log first, or confirmed by it
                same = note_hook_copy(
                    Cursor(cur, self._q), event, receipt.received_at, provenance=provenance,
                    stored_type=stored_type, stored_published=stored_published,
                    same_content=same,
                )
            if same:
                duplicate += 1
                continue
            quarantined += 1
            self._insert_quarantine(
                cur, receipt, event.uuid, UUID_CONFLICT,
                f"uuid {event.uuid} is already stored with different content "
                f"(first received {first_received}); the stored event is kept",
                event.raw,
            )
        for entry in delivery.quarantined:
            self._insert_quarantine(
                cur, receipt, entry.uuid, entry.reason_code, entry.reason, entry.raw
            )
        return DeliveryOutcome(
            total=len(delivery.events) + len(delivery.quarantined),
            new=new, duplicate=duplicate, quarantined=quarantined,
        )

    def _insert_quarantine(
        self, cur: Any, receipt: Receipt, uuid: str | None, code: str, reason: str, raw: bytes
    ) -> None:
        cur.execute(
            self._q(
                "INSERT INTO quarantine (received_at, delivery_id, hook_id, org, uuid, "
                "reason_code, reason, raw) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            (
                receipt.received_at, receipt.delivery_id, receipt.hook_id, receipt.org, uuid,
                code, reason, raw.decode(),
            ),
        )

    def check_writable(self) -> None:
        """Raise StoreUnavailable unless a write transaction can be opened now."""
        with self._write_lock:
            try:
                conn = self._writer_connection()
                cur = conn.cursor()
                self._begin(cur)
                cur.execute("SELECT 1 FROM schema_migrations LIMIT 1")
                conn.rollback()
            except self.errors as exc:
                self._discard_writer()
                raise StoreUnavailable(
                    f"{self.dialect} not writable: {type(exc).__name__}"
                ) from exc

    # -- reads ----------------------------------------------------------------------------

    def recent_events(self, limit: int = 50) -> list[StoredEvent]:
        rows = self._read(
            f"SELECT {_EVENT_COLUMNS} FROM events ORDER BY seq DESC LIMIT ?", (limit,)
        )
        return [_event(row) for row in rows]

    def get_event(self, uuid: str) -> StoredEvent | None:
        rows = self._read(f"SELECT {_EVENT_COLUMNS} FROM events WHERE uuid = ?", (uuid,))
        return _event(rows[0]) if rows else None

    def quarantine(self, limit: int = 50) -> list[QuarantineEntry]:
        rows = self._read(
            f"SELECT {_QUARANTINE_COLUMNS} FROM quarantine ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [
            QuarantineEntry(
                id=row[0], received_at=row[1], delivery_id=row[2], hook_id=row[3], org=row[4],
                uuid=row[5], reason_code=row[6], reason=row[7], raw=row[8].encode(),
            )
            for row in rows
        ]

    def ledger(self, limit: int = 50) -> list[LedgerEntry]:
        rows = self._read(
            f"SELECT {_LEDGER_COLUMNS} FROM deliveries ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [LedgerEntry(*row) for row in rows]

    def counts(self) -> dict[str, int]:
        rows = self._read(
            "SELECT (SELECT COUNT(*) FROM events), (SELECT COUNT(*) FROM deliveries), "
            "(SELECT COUNT(*) FROM quarantine)",
            (),
        )
        events, deliveries, quarantined = rows[0]
        return {"events": events, "deliveries": deliveries, "quarantined": quarantined}

    def close(self) -> None:
        with self._write_lock:
            self._discard_writer()
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    # -- for the other ledgers (pipeline, actions) sharing this database -----------------

    @contextlib.contextmanager
    def write(self) -> Iterator[Cursor]:
        """One write transaction: commits on exit, rolls back on error.

        Database errors become StoreUnavailable, so callers handle one exception type.
        """
        with self._write_lock:
            try:
                conn = self._writer_connection()
                cur = conn.cursor()
                self._begin(cur)
            except self.errors as exc:
                self._discard_writer()
                raise StoreUnavailable(f"{self.dialect} unavailable: {type(exc).__name__}") from exc
            try:
                yield Cursor(cur, self._q)
                conn.commit()
            except self.errors as exc:
                self._discard_writer()
                raise StoreUnavailable(
                    f"{self.dialect} write failed: {type(exc).__name__}"
                ) from exc
            except BaseException:
                with contextlib.suppress(*self.errors):
                    conn.rollback()
                raise

    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Rows of one query (``?`` placeholders in either dialect)."""
        return self._read(sql, params)

    # -- plumbing -------------------------------------------------------------------------

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        with self._read_lock:
            if self._reader is None:
                try:
                    self._reader = self._connect()
                except self.errors as exc:
                    raise StoreUnavailable(
                        f"{self.dialect} unavailable: {type(exc).__name__}"
                    ) from exc
            conn = self._reader
            try:
                cur = conn.cursor()
                cur.execute(self._q(sql), params)
                rows = cur.fetchall()
                conn.rollback()
                return list(rows)
            except self.errors as exc:
                conn.close()
                self._reader = None
                raise StoreUnavailable(
                    f"{self.dialect} read failed: {type(exc).__name__}"
                ) from exc

    def _writer_connection(self) -> Any:
        if self._writer is None:
            self._writer = self._connect()
        return self._writer

    def _discard_writer(self) -> None:
        if self._writer is not None:
            # Roll back first: closing alone leaves a failed transaction (and SQLite's write
            # lock) open for as long as a traceback still references one of its cursors.
            with contextlib.suppress(*self.errors):
                self._writer.rollback()
            with contextlib.suppress(*self.errors):
                self._writer.close()
            self._writer = None

    def _q(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def _begin(self, cur: Any) -> None:
        """Open a write transaction (subclasses choose how)."""

    def _lock_for_migration(self, cur: Any) -> None:
        """Serialise migrations across processes (subclasses choose how)."""

    def _run_script(self, cur: Any, script: str) -> None:
        for statement in script.split(";"):
            if statement.strip():
                cur.execute(statement)


@functools.lru_cache(maxsize=64)
def multi_row_sql(insert: str, group: str, rows: int) -> str:
    """``insert`` followed by ``rows`` copies of ``group`` (one row's values)."""
    return insert + " " + ", ".join([group] * rows)


@functools.lru_cache(maxsize=16)
def _placeholders(width: int) -> str:
    return "(" + ", ".join("?" * width) + ")"


def _event(row: Any) -> StoredEvent:
    return StoredEvent(
        seq=row[0], uuid=row[1], event_type=row[2], published=row[3], received_at=row[4],
        delivery_id=row[5], hook_id=row[6], org=row[7], provenance=row[8], raw=row[9].encode(),
    )


def _now() -> str:
    return format_utc(datetime.now(UTC))


class Cursor:
    """A DB-API cursor that takes ``?`` placeholders in both dialects."""

    def __init__(self, cursor: Any, translate: Callable[[str], str]) -> None:
        self._cursor = cursor
        self._translate = translate

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Cursor:
        self._cursor.execute(self._translate(sql), params)
        return self

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._cursor.fetchall())

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)
