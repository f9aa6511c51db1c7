"""Every query behind the dashboard's pages is served by an index (migration 0005): lists are
keyset scans that stop after a page, figures are index-only range scans over their window.
Checked on the database's own query plans, on SQLite and on PostgreSQL (where sequential scans
are turned off, so a plan that still scans a table sequentially has no index to use).

Timing belongs to benchmarks; this checks the shape that keeps pages fast at a million events:
no full scan of a large table, and no sort of more than a bounded set (a user's events, a rare
rule's events, the latest transient attempts).

The delivery gap reads roll-ups (factorflow.store.delivery_rollup): once they are up to date,
the only events it reads one by one are those of the last hour and the settling minutes,
whatever the period."""

from __future__ import annotations

import re
import uuid as uuidlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from factorflow.okta.payloads import format_utc
from factorflow.store.delivery_gap import delivery_gap as gap_figures
from factorflow.store.delivery_rollup import HOUR, SETTLE, coverage, floor_hour
from factorflow.store.factory import open_store
from factorflow.store.sql import Cursor, SqlEventStore
from factorflow.web.ui.reads.audit import audit_page
from factorflow.web.ui.reads.dead_letters import list_dead_letters
from factorflow.web.ui.reads.delivery import delivery_gap
from factorflow.web.ui.reads.event_page import event_view
from factorflow.web.ui.reads.events import RULE_LOOKUP, EventFilter, Position, list_events
from factorflow.web.ui.reads.overview import overview
from factorflow.web.ui.reads.window import Window

LARGE = ("events", "facts", "action_results", "action_attempts", "dead_letters", "audit_log",
         "deliveries", "quarantine", "decisions", "system_log_confirmations",
         "delivery_gap_periods", "delivery_delay_buckets")
POSITION = Position("2026-03-15T10:00:00.000000Z", 1000)


class RecordingStore:
    """The store as the read models see it, noting every query they run."""

    def __init__(self, store: SqlEventStore) -> None:
        self.store = store
        self.dialect = store.dialect
        self.queries: list[tuple[str, tuple[Any, ...]]] = []

    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        self.queries.append((sql, params))
        return self.store.read(sql, params)

    def write(self) -> AbstractContextManager[Cursor]:
        return self.store.write()


# (what, read model call, may it sort a bounded set)
CASES: list[tuple[str, Callable[[Any], object], bool]] = [
    ("newest events", lambda s: list_events(s, EventFilter()), False),
    ("older events", lambda s: list_events(s, EventFilter(), older_than=POSITION), False),
    ("newer events", lambda s: list_events(s, EventFilter(), newer_than=POSITION), False),
    ("by time", lambda s: list_events(s, EventFilter(since="2026-01-01", until="2026-04-01"),
                                      older_than=POSITION), False),
    ("by org", lambda s: list_events(s, EventFilter(org="default"), older_than=POSITION), False),
    ("by factor", lambda s: list_events(s, EventFilter(factor="sms"), older_than=POSITION),
     False),
    ("by enrolled_by", lambda s: list_events(s, EventFilter(enrolled_by="admin")), False),
    ("by outcome", lambda s: list_events(s, EventFilter(outcome="FAILURE"), newer_than=POSITION),
     False),
    ("recovered", lambda s: list_events(s, EventFilter(provenance="log"), older_than=POSITION),
     False),
    ("confirmed", lambda s: list_events(s, EventFilter(provenance="both")), False),
    ("by user", lambda s: list_events(s, EventFilter(q="pat.lee@example.com")), True),
    ("by uuid", lambda s: list_events(s, EventFilter(q="5d3c9a6e-0b8f-11f1-9f3a-0b6c2e4d7a10")),
     True),
    ("by rare rule", lambda s: list_events(s, EventFilter(rule="rare")), True),
    ("by common rule", lambda s: list_events(s, EventFilter(rule="common"), older_than=POSITION),
     False),
    ("overview", lambda s: overview(s, Window.last(30)), True),
    ("overview of one org", lambda s: overview(s, Window.last(30), "default"), True),
    ("delivery gap", lambda s: delivery_gap(s, Window.last(30), ["default"]), True),
    ("delivery gap, rolled up",
     lambda s: (_rolled_up(s), delivery_gap(s, Window.last(90), ["default"])), True),
    ("event page", lambda s: event_view(s, "5d3c9a6e-0b8f-11f1-9f3a-0b6c2e4d7a10"), True),
    ("open dead letters", lambda s: list_dead_letters(s, "open", before_id=100), False),
    ("all dead letters", lambda s: list_dead_letters(s, None, after_id=100), False),
    ("audit log", lambda s: audit_page(s), False),
    ("audit log, older", lambda s: audit_page(s, before_seq=100), False),
]


def _rolled_up(store: Any) -> None:
    """The roll-up state of a store that has been rolled up for 40 days, with changes since:
    the delivery gap then reads day rows, hour rows, the changes, the events stored since the
    last seq check (late events) and the unsettled rest."""
    now = datetime.now(UTC)
    with store.write() as cur:
        cur.execute("UPDATE delivery_gap_rollup SET rolled_from = ?, rolled_until = ?, "
                    "changes_seen = ?, seq_checked = 0, seq_mark = 0, seq_mark_at = ? "
                    "WHERE id = 1",
                    (format_utc(floor_hour(now - timedelta(days=40))),
                     format_utc(floor_hour(now - SETTLE)), format_utc(now - SETTLE),
                     format_utc(now - SETTLE)))


def _common_rule(store: SqlEventStore) -> None:
    """More than RULE_LOOKUP results of one rule, so its filter takes the scanning path."""
    with store.write() as cur:
        cur.execute(
            f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "  # noqa: S608
            f"WHERE i <= {RULE_LOOKUP}) "
            "INSERT INTO action_results (idempotency_key, event_uuid, rule_id, action_id, kind, "
            "status, detail, attempts, updated_at) SELECT 'k' || i, 'e' || i, 'common', 'a', "
            "'report', 'done', '', 1, '2026-03-15T10:00:00.000000Z' FROM n"
        )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[SqlEventStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'factorflow.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    opened = open_store(url)
    _common_rule(opened)
    yield opened
    opened.close()


def sqlite_plan(store: SqlEventStore, sql: str, params: tuple[Any, ...]) -> list[str]:
    return [str(row[3]) for row in store.read("EXPLAIN QUERY PLAN " + sql, params)]


def postgres_plan(url: str, sql: str, params: tuple[Any, ...]) -> list[str]:
    with psycopg.connect(url) as conn:
        conn.execute("SET enable_seqscan = off")
        rows = conn.execute("EXPLAIN " + sql.replace("?", "%s"), params).fetchall()
    return [str(row[0]) for row in rows]


@pytest.mark.parametrize(("what", "call", "bounded_sort"), CASES, ids=[c[0] for c in CASES])
def test_every_dashboard_query_is_served_by_an_index(
    store: SqlEventStore, what: str, call: Callable[[Any], object], bounded_sort: bool
) -> None:
    recording = RecordingStore(store)
    call(recording)
    assert recording.queries, what
    for sql, params in recording.queries:
        if store.dialect == "sqlite":
            plan = sqlite_plan(store, sql, params)
            full_scans = [line for line in plan
                          if re.fullmatch(r"SCAN (\w+)", line)
                          and line.split()[1] in (*LARGE, "e", "f", "r")  # tables, aliases
                          and not _rowid_order(sql, line)]
            assert full_scans == [], (what, sql, plan)
            if not bounded_sort:
                assert "USE TEMP B-TREE FOR ORDER BY" not in plan, (what, sql, plan)
        else:
            plan = postgres_plan(store.url, sql, params)  # type: ignore[attr-defined]
            scanned = [re.search(r"Seq Scan on (\w+)", line) for line in plan]
            scans = [m.group(0) for m in scanned if m is not None and m.group(1) in LARGE]
            assert scans == [], (what, sql, plan)


def _rowid_order(sql: str, line: str) -> bool:
    """SQLite reads a table in its key order (newest first) when the query orders by that key
    with a LIMIT: the audit log by seq."""
    return line == "SCAN audit_log" and "ORDER BY seq DESC LIMIT" in sql


def _events_over(store: SqlEventStore, days: int, per_day: int) -> None:
    """``per_day`` hook events a day over the last ``days`` days, each received a second after
    it was published."""
    now = datetime.now(UTC)
    rows = []
    for n in range(days * per_day):
        received = now - timedelta(days=days) + timedelta(seconds=n * 86_400 / per_day)
        published = received - timedelta(seconds=1 + n % 7)
        rows.append((str(uuidlib.uuid4()), "user.mfa.factor.activate", format_utc(published),
                     format_utc(published), format_utc(received), "default", "{}"))
    with store.write() as cur:
        for at in range(0, len(rows), 200):
            chunk = rows[at:at + 200]
            cur.execute(
                "INSERT INTO events (uuid, event_type, published, published_at, "  # noqa: S608
                "received_at, org, provenance, content_hash, raw) VALUES "
                + ", ".join(["(?, ?, ?, ?, ?, ?, 'hook', '', ?)"] * len(chunk)),
                tuple(value for row in chunk for value in row),
            )


@pytest.mark.parametrize("days", [7, 30, 365])
def test_the_delivery_gap_reads_a_bounded_span_of_events_once_rolled_up(
    store: SqlEventStore, days: int
) -> None:
    _events_over(store, 40, 24 * 12)
    first = delivery_gap(store, Window.last(days), ["default"])  # rolls up
    state = coverage(store)
    assert state.rolled_until is not None and state.rolled_until >= floor_hour(
        datetime.now(UTC) - SETTLE) - HOUR
    recording = RecordingStore(store)
    again = delivery_gap(recording, Window.last(days), ["default"])
    assert again.orgs == first.orgs
    (gap,) = again.orgs
    expected = gap_figures(store, since=datetime.fromisoformat(
        again.window.since.replace("Z", "+00:00")), orgs=["default"], rolled=False)
    assert [g.to_dict() | {"lag_seconds": None} for g in expected] == [
        gap.to_dict() | {"lag_seconds": None}]
    assert gap.events > 0 and gap.delays == gap.events
    # The events read one by one: only those of the last, unsettled hour.
    read = sum(len(store.read(sql, params)) for sql, params in recording.queries
               if "FROM events e LEFT JOIN" in sql)
    recent = store.read("SELECT COUNT(*) FROM events WHERE received_at >= ?",
                        (format_utc(datetime.now(UTC) - HOUR - SETTLE - timedelta(minutes=1)),))
    assert read <= recent[0][0] <= 20 < gap.events
    assert any("FROM delivery_gap_periods" in sql for sql, _ in recording.queries)
