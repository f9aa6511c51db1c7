"""One behaviour suite for the event store, run against both real backends.

Every test gets a fresh store: SQLite in a temporary directory, PostgreSQL on a fresh database.
Deliveries are built from the published Okta corpus and parsed with ``parse_delivery`` exactly as
the hook endpoint does, so what is stored is what a receiver would store.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from tests.conftest import CORPUS

from factorflow.errors import StoreUnavailable
from factorflow.okta.payloads import format_utc, parse_delivery
from factorflow.store.base import UUID_CONFLICT, Receipt
from factorflow.store.factory import open_store
from factorflow.store.migrations import available, latest_version
from factorflow.store.sql import SqlEventStore

ORG = "example.okta.com"
HOOK_SOURCE = "https://example.okta.com/api/v1/eventHooks/whoStoreContract0g3"
MAIN_EVENTS = CORPUS / "okta-events.ndjson"
COLLISIONS = CORPUS / "okta-events.uuid-collisions.ndjson"
SIEM_EVENTS = CORPUS / "siem-reshaped" / "events.ndjson"
DELIVERY_2019 = CORPUS / "okta-deliveries" / "2019-03-27_user.session.start_b5a188b9.json"
DELIVERY_2023 = CORPUS / "okta-deliveries" / "2023-03-28_user.session.start_85b60edb.json"
# The uuid the 2017 system-log sample and the 2019 hook delivery sample both use.
REUSED_UUID = "f790999f-fe87-467a-9880-6982a583986c"
_START = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def load_events(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def envelope(events: list[Any], delivery_id: str) -> bytes:
    """An Okta event hook delivery around ``events``, as Okta would POST it."""
    return orjson.dumps({
        "eventType": "com.okta.event_hook",
        "eventTypeVersion": "1.0",
        "cloudEventsVersion": "0.1",
        "source": HOOK_SOURCE,
        "eventId": delivery_id,
        "eventTime": "2024-05-01T12:00:00.000Z",
        "contentType": "application/json",
        "data": {"events": events},
    })


def receipt(body: bytes, received_at: str | None = None, org: str = ORG) -> Receipt:
    delivery = parse_delivery(body)
    return Receipt(
        delivery_id=delivery.delivery_id,
        hook_id=delivery.hook_id,
        received_at=received_at or format_utc(datetime.now(UTC)),
        org=org,
        delivery=delivery,
    )


def received(step: int) -> str:
    return format_utc(_START + timedelta(seconds=step))


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'events.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[SqlEventStore]:
    opened = open_store(store_url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def main_events() -> list[dict[str, Any]]:
    events = load_events(MAIN_EVENTS)
    assert len(events) == 18
    return events


# -- schema ---------------------------------------------------------------------------------


def test_migrate_applies_every_version_once(store_url: str) -> None:
    fresh = open_store(store_url, migrate=False)
    try:
        latest = latest_version(fresh.dialect)
        assert latest >= 1
        assert fresh.migrate() == [m.version for m in available(fresh.dialect)]
        assert fresh.schema_version() == latest
        assert fresh.migrate() == []
        assert fresh.schema_version() == latest
        assert fresh.counts() == {"events": 0, "deliveries": 0, "quarantined": 0}
    finally:
        fresh.close()
    # A second process opening the same store finds nothing left to do.
    again = open_store(store_url, migrate=False)
    try:
        assert again.migrate() == []
        assert again.schema_version() == latest
    finally:
        again.close()


def test_a_commit_maintains_only_the_indexes_something_reads(store_url: str) -> None:
    """Every index on the hook's tables is rewritten by every commit: the ledger is read by id
    only, so it has none besides its key (migrations 0011 and 0012)."""
    store = open_store(store_url)
    try:
        if store.dialect == "sqlite":
            rows = store.read(
                "SELECT tbl_name, name FROM sqlite_master WHERE type = 'index' "
                "AND tbl_name IN ('events', 'deliveries') AND sql IS NOT NULL", ())
        else:
            rows = store.read(
                "SELECT tablename, indexname FROM pg_indexes WHERE tablename IN "
                "('events', 'deliveries') AND indexname NOT LIKE ? AND indexname NOT LIKE ?",
                ("%pkey", "%uuid_key"))  # the keys: the primary key and the uuid's UNIQUE
        assert sorted(tuple(row) for row in rows) == [
            ("events", "events_dash_log"), ("events", "events_received_at"),
            ("events", "events_undispatched"),
        ]
    finally:
        store.close()


def test_migrate_keeps_stored_data(store: SqlEventStore, main_events: list[dict[str, Any]]) -> None:
    store.record([receipt(envelope(main_events[:3], "d-1"))])
    assert store.migrate() == []
    assert store.counts() == {"events": 3, "deliveries": 1, "quarantined": 0}


# -- recording --------------------------------------------------------------------------------


def test_corpus_deliveries_are_counted_and_stored(
    store: SqlEventStore, main_events: list[dict[str, Any]]
) -> None:
    first = receipt(envelope(main_events[:10], "d-first"), received(1))
    second = receipt(envelope(main_events[10:], "d-second"), received(2))

    outcomes = store.record([first, second])

    assert [(o.total, o.new, o.duplicate, o.quarantined) for o in outcomes] == [
        (10, 10, 0, 0),
        (8, 8, 0, 0),
    ]
    assert store.counts() == {"events": 18, "deliveries": 2, "quarantined": 0}
    for source in main_events:
        stored = store.get_event(source["uuid"])
        assert stored is not None
        assert stored.event_type == source["eventType"]
        assert stored.published == source["published"]
        assert orjson.loads(stored.raw) == source


def test_real_okta_delivery_is_stored_with_its_envelope_ids(store: SqlEventStore) -> None:
    body = DELIVERY_2023.read_bytes()
    document = orjson.loads(body)
    [event] = document["data"]["events"]
    parsed = receipt(body, received(1))

    [outcome] = store.record([parsed])

    assert (outcome.total, outcome.new, outcome.duplicate, outcome.quarantined) == (1, 1, 0, 0)
    stored = store.get_event(event["uuid"])
    assert stored is not None
    assert stored.delivery_id == "85b60edb-4263-4e13-993b-818e26201052"
    assert stored.hook_id == "who7hphp39JoHLni81d7"
    assert stored.org == ORG
    assert stored.received_at == received(1)
    assert stored.provenance == "hook"
    assert stored.event_type == "user.session.start"
    # The event is kept exactly as it arrived, key order and unknown keys included.
    assert stored.raw == parsed.delivery.events[0].raw
    assert orjson.loads(stored.raw) == event
    assert list(orjson.loads(stored.raw)) == list(event)
    assert "insertionTimestamp" in orjson.loads(stored.raw)


def test_redelivery_across_batches_is_a_duplicate(
    store: SqlEventStore, main_events: list[dict[str, Any]]
) -> None:
    body = envelope(main_events[:5], "d-retry")
    [first] = store.record([receipt(body, received(1))])
    stored_before = {e["uuid"]: store.get_event(e["uuid"]) for e in main_events[:5]}

    [again] = store.record([receipt(body, received(2))])
    # A delivery that overlaps the first one: 2 known events, 3 unknown.
    [overlap] = store.record([receipt(envelope(main_events[3:8], "d-overlap"), received(3))])

    assert (first.new, first.duplicate) == (5, 0)
    assert (again.total, again.new, again.duplicate, again.quarantined) == (5, 0, 5, 0)
    assert (overlap.total, overlap.new, overlap.duplicate, overlap.quarantined) == (5, 3, 2, 0)
    assert store.counts() == {"events": 8, "deliveries": 3, "quarantined": 0}
    for uuid, before in stored_before.items():
        # The first copy is kept, with its own receipt time and delivery id.
        assert store.get_event(uuid) == before
        assert before is not None
        assert before.delivery_id == "d-retry"
        assert before.received_at == received(1)


def test_same_event_twice_in_one_batch_is_stored_once(
    store: SqlEventStore, main_events: list[dict[str, Any]]
) -> None:
    event = main_events[9]  # the published user.mfa.factor.activate
    assert event["eventType"] == "user.mfa.factor.activate"
    first = receipt(envelope([event], "d-a"), received(1))
    second = receipt(envelope([event], "d-b"), received(2))

    outcomes = store.record([first, second])

    assert [(o.total, o.new, o.duplicate, o.quarantined) for o in outcomes] == [
        (1, 1, 0, 0),
        (1, 0, 1, 0),
    ]
    assert store.counts() == {"events": 1, "deliveries": 2, "quarantined": 0}
    stored = store.get_event(event["uuid"])
    assert stored is not None
    assert stored.delivery_id == "d-a"


def test_same_event_twice_in_one_delivery_is_stored_once(
    store: SqlEventStore, main_events: list[dict[str, Any]]
) -> None:
    event = main_events[0]
    [outcome] = store.record([receipt(envelope([event, main_events[1], event], "d-dup"))])

    assert (outcome.total, outcome.new, outcome.duplicate, outcome.quarantined) == (3, 2, 1, 0)
    assert store.counts() == {"events": 2, "deliveries": 1, "quarantined": 0}


def test_a_batch_larger_than_one_statement_is_counted_exactly(
    store: SqlEventStore, main_events: list[dict[str, Any]]
) -> None:
    """More events in one commit than one statement takes (SQLite: 64 rows): the lookup, the
    inserts and the ledger are split, and each event still lands once, in uuid order."""
    template = main_events[9]
    events = [{**template, "uuid": f"big-batch-{n:04d}"} for n in range(150)]
    [early] = store.record([receipt(envelope(events[70:72], "d-early"), received(1))])
    batch = [
        receipt(envelope(events[:60], "d-a"), received(2)),
        receipt(envelope(events[50:120], "d-b"), received(3)),  # 50-59 repeat d-a's
        receipt(envelope([*events[119:150], events[0]], "d-c"), received(4)),  # 119, 0 repeat
    ]

    outcomes = store.record(batch)

    assert (early.new, early.duplicate) == (2, 0)
    # d-b: 70 events, of which 50-59 are d-a's and 70-71 were stored by d-early.
    assert [(o.total, o.new, o.duplicate, o.quarantined) for o in outcomes] == [
        (60, 60, 0, 0), (70, 58, 12, 0), (32, 30, 2, 0),
    ]
    assert store.counts() == {"events": 150, "deliveries": 4, "quarantined": 0}
    assert [r.events_new for r in store.ledger()] == [30, 58, 60, 2]
    for n in (0, 55, 71, 119, 149):
        stored = store.get_event(f"big-batch-{n:04d}")
        assert stored is not None
        expected = "d-a" if n < 60 else "d-early" if n in (70, 71) else "d-b" if n < 120 else "d-c"
        assert stored.delivery_id == expected
    committed = [e for e in store.recent_events(limit=200) if e.delivery_id != "d-early"]
    seqs = {e.uuid: e.seq for e in committed}
    assert len(seqs) == 148
    assert sorted(seqs, key=seqs.__getitem__) == sorted(seqs)  # one commit: seq in uuid order


@pytest.mark.parametrize("same_batch", [False, True], ids=["later-batch", "same-batch"])
def test_different_event_under_a_taken_uuid_is_quarantined(
    store: SqlEventStore, main_events: list[dict[str, Any]], same_batch: bool
) -> None:
    [original] = [e for e in main_events if e["uuid"] == REUSED_UUID]
    [collision] = load_events(COLLISIONS)
    assert collision["uuid"] == REUSED_UUID and collision != original
    first = receipt(envelope([original, main_events[0]], "d-original"), received(1))
    # The 2019 delivery sample from Okta's docs reuses that uuid for another event.
    conflicting = receipt(DELIVERY_2019.read_bytes(), received(2))
    assert orjson.loads(conflicting.delivery.events[0].raw) == collision

    if same_batch:
        outcomes = store.record([first, conflicting])
    else:
        outcomes = store.record([first]) + store.record([conflicting])

    assert [(o.total, o.new, o.duplicate, o.quarantined) for o in outcomes] == [
        (2, 2, 0, 0),
        (1, 0, 0, 1),
    ]
    assert store.counts() == {"events": 2, "deliveries": 2, "quarantined": 1}
    kept = store.get_event(REUSED_UUID)
    assert kept is not None
    assert kept.raw == first.delivery.events[0].raw
    assert orjson.loads(kept.raw) == original
    assert kept.delivery_id == "d-original"

    [entry] = store.quarantine()
    assert entry.reason_code == UUID_CONFLICT == "uuid_conflict"
    assert entry.uuid == REUSED_UUID
    assert REUSED_UUID in entry.reason
    assert received(1) in entry.reason  # names when the kept copy arrived
    assert entry.raw == conflicting.delivery.events[0].raw
    assert orjson.loads(entry.raw) == collision
    assert entry.delivery_id == "b5a188b9-5ece-4636-b041-482ffda96311"
    assert entry.hook_id == "whoql0HfiLGPWc8Jx0g3"
    assert entry.org == ORG
    assert entry.received_at == received(2)

    ledger = store.ledger()
    assert [(row.delivery_id, row.events_new, row.events_quarantined) for row in ledger] == [
        ("b5a188b9-5ece-4636-b041-482ffda96311", 0, 1),
        ("d-original", 2, 0),
    ]


def test_events_the_parser_quarantined_are_kept_with_their_reason(
    store: SqlEventStore, main_events: list[dict[str, Any]]
) -> None:
    siem = load_events(SIEM_EVENTS)[:3]
    no_uuid = {k: v for k, v in main_events[2].items() if k != "uuid"}
    events: list[Any] = [main_events[0], *siem, no_uuid, "not an event", main_events[1]]
    parsed = receipt(envelope(events, "d-mixed"), received(1))
    assert len(parsed.delivery.quarantined) == 5

    [outcome] = store.record([parsed])

    assert (outcome.total, outcome.new, outcome.duplicate, outcome.quarantined) == (7, 2, 0, 5)
    assert store.counts() == {"events": 2, "deliveries": 1, "quarantined": 5}
    entries = store.quarantine()
    # Newest first: the reverse of the order in the delivery.
    assert [(e.uuid, e.reason_code, e.reason, e.raw) for e in reversed(entries)] == [
        (q.uuid, q.reason_code, q.reason, q.raw) for q in parsed.delivery.quarantined
    ]
    codes = [e.reason_code for e in reversed(entries)]
    assert codes == ["bad_published"] * 3 + ["missing_uuid", "not_object"]
    assert [orjson.loads(e.raw) for e in reversed(entries)] == [*siem, no_uuid, "not an event"]
    assert "2020-11-25 21:27:03.496000000" in entries[-1].reason
    for entry in entries:
        assert (entry.delivery_id, entry.hook_id, entry.org, entry.received_at) == (
            "d-mixed", "whoStoreContract0g3", ORG, received(1),
        )
    assert store.get_event(siem[0]["uuid"]) is None


def test_ledger_rows_describe_each_delivery(
    store: SqlEventStore, main_events: list[dict[str, Any]]
) -> None:
    siem = load_events(SIEM_EVENTS)
    store.record([
        receipt(envelope(main_events[:4], "d-1"), received(1), org="one.okta.com"),
        receipt(envelope([*main_events[2:6], siem[0]], "d-2"), received(2), org="two.okta.com"),
    ])
    store.record([receipt(DELIVERY_2023.read_bytes(), received(3))])
    store.record([receipt(envelope([], "d-empty"), received(4))])

    rows = store.ledger()

    assert [
        (
            r.delivery_id, r.hook_id, r.org, r.received_at,
            r.events_total, r.events_new, r.events_duplicate, r.events_quarantined,
        )
        for r in rows
    ] == [
        ("d-empty", "whoStoreContract0g3", ORG, received(4), 0, 0, 0, 0),
        ("85b60edb-4263-4e13-993b-818e26201052", "who7hphp39JoHLni81d7", ORG, received(3),
         1, 1, 0, 0),
        ("d-2", "whoStoreContract0g3", "two.okta.com", received(2), 5, 2, 2, 1),
        ("d-1", "whoStoreContract0g3", "one.okta.com", received(1), 4, 4, 0, 0),
    ]
    assert rows[0].id > rows[1].id > rows[2].id > rows[3].id
    assert [r.delivery_id for r in store.ledger(limit=2)] == ["d-empty", rows[1].delivery_id]
    assert sum(r.events_new for r in rows) == store.counts()["events"]


# -- reading ----------------------------------------------------------------------------------


def test_recent_events_are_newest_first(
    store: SqlEventStore, main_events: list[dict[str, Any]]
) -> None:
    store.record([receipt(envelope(main_events[:6], "d-1"), received(1))])
    store.record([receipt(envelope(main_events[6:12], "d-2"), received(2))])
    store.record([receipt(envelope(main_events[12:], "d-3"), received(3))])

    recent = store.recent_events()
    # Newest commit first; within one commit the store inserts in uuid order.
    seqs = [e.seq for e in recent]
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == 18
    assert [e.delivery_id for e in recent] == ["d-3"] * 6 + ["d-2"] * 6 + ["d-1"] * 6
    assert [e.received_at for e in recent] == [received(3)] * 6 + [received(2)] * 6 + [
        received(1)
    ] * 6
    for group in (recent[:6], recent[6:12], recent[12:]):
        assert [e.uuid for e in group] == sorted((e.uuid for e in group), reverse=True)
    by_delivery = [main_events[12:], main_events[6:12], main_events[:6]]
    for group, sent in zip((recent[:6], recent[6:12], recent[12:]), by_delivery, strict=True):
        assert sorted(orjson.loads(e.raw)["uuid"] for e in group) == sorted(
            e["uuid"] for e in sent
        )
        for stored in group:
            assert orjson.loads(stored.raw) == next(e for e in sent if e["uuid"] == stored.uuid)
    assert store.recent_events(limit=4) == recent[:4]
    assert all(e.org == ORG and e.hook_id == "whoStoreContract0g3" for e in recent)


def test_get_event_of_unknown_uuid_is_none(store: SqlEventStore) -> None:
    assert store.get_event("00000000-0000-0000-0000-000000000000") is None
    assert store.recent_events() == []
    assert store.quarantine() == []
    assert store.ledger() == []


def test_raw_bytes_round_trip_exactly(store: SqlEventStore) -> None:
    # Non-ASCII text, escapes and an empty object survive storage byte for byte.
    event = {
        "uuid": "7b0f1d2e-1111-4a4a-9b9b-000000000001",
        "published": "2024-05-01T12:00:00.000Z",
        "eventType": "user.mfa.factor.activate",
        "displayMessage": "Activate factor for user \u00e9l\u00e8ve \u2013 \U0001f510",
        "outcome": {"result": "SUCCESS", "reason": "tab\there \"quoted\" \\ back\u0000slash"},
        "debugContext": {"debugData": {}},
        "version": "0",
    }
    parsed = receipt(envelope([event], "d-raw"))
    store.record([parsed])

    stored = store.get_event(event["uuid"])
    assert stored is not None
    assert stored.raw == parsed.delivery.events[0].raw
    assert orjson.loads(stored.raw) == event
    [recent] = store.recent_events()
    assert recent.raw == stored.raw


def test_check_writable_passes_and_writes_nothing(
    store: SqlEventStore, main_events: list[dict[str, Any]]
) -> None:
    store.record([receipt(envelope(main_events[:2], "d-1"))])
    store.check_writable()
    store.check_writable()
    assert store.counts() == {"events": 2, "deliveries": 1, "quarantined": 0}
    # The writer is still usable after the checks.
    [outcome] = store.record([receipt(envelope(main_events[2:3], "d-2"))])
    assert outcome.new == 1


# -- failures -----------------------------------------------------------------------------------


def _admin(store_url: str) -> Any:
    """A separate connection to the same database, as an operator would open it."""
    if store_url.startswith("sqlite:///"):
        return sqlite3.connect(store_url.removeprefix("sqlite:///"), isolation_level=None)
    return psycopg.connect(store_url, autocommit=True)


def _assert_no_lock_left(admin: Any, store_url: str) -> None:
    """The failed transaction was rolled back: another writer can lock the events table."""
    if store_url.startswith("sqlite:///"):
        admin.execute("BEGIN IMMEDIATE")
        admin.execute("ROLLBACK")
    else:
        with admin.transaction():
            admin.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE NOWAIT")


def test_failed_record_rolls_back_and_the_store_recovers(
    store: SqlEventStore, store_url: str, main_events: list[dict[str, Any]]
) -> None:
    store.record([receipt(envelope(main_events[:4], "d-before"), received(1))])
    failing = receipt(envelope(main_events[4:9], "d-failing"), received(2))

    admin = _admin(store_url)
    try:
        # The ledger table disappears under the store: the events of the batch are inserted
        # first, then the ledger insert fails, so the whole transaction must roll back.
        admin.execute("ALTER TABLE deliveries RENAME TO deliveries_away")
        with pytest.raises(StoreUnavailable, match="commit failed"):
            store.record([failing])
        for event in main_events[4:9]:
            assert store.get_event(event["uuid"]) is None
        _assert_no_lock_left(admin, store_url)
        admin.execute("ALTER TABLE deliveries_away RENAME TO deliveries")
    finally:
        admin.close()
    assert store.counts() == {"events": 4, "deliveries": 1, "quarantined": 0}

    [outcome] = store.record([failing])

    assert (outcome.new, outcome.duplicate) == (5, 0)
    assert store.counts() == {"events": 9, "deliveries": 2, "quarantined": 0}
    assert [r.delivery_id for r in store.ledger()] == ["d-failing", "d-before"]


def test_check_writable_fails_when_the_schema_is_gone(store: SqlEventStore, store_url: str) -> None:
    admin = _admin(store_url)
    try:
        admin.execute("ALTER TABLE schema_migrations RENAME TO schema_migrations_away")
        with pytest.raises(StoreUnavailable, match="not writable"):
            store.check_writable()
        admin.execute("ALTER TABLE schema_migrations_away RENAME TO schema_migrations")
    finally:
        admin.close()
    store.check_writable()


def test_record_after_postgres_drops_the_connection(
    pg_url: str, main_events: list[dict[str, Any]]
) -> None:
    store = open_store(pg_url)
    try:
        store.record([receipt(envelope(main_events[:4], "d-before"), received(1))])
        with psycopg.connect(pg_url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend'"
            ).fetchall()
        assert killed == [(True,)]  # the store's writer connection
        failing = receipt(envelope(main_events[4:9], "d-failing"), received(2))

        with pytest.raises(StoreUnavailable, match="postgres commit failed"):
            store.record([failing])

        assert store.counts() == {"events": 4, "deliveries": 1, "quarantined": 0}
        # The next call opens a new connection and succeeds.
        [outcome] = store.record([failing])
        assert (outcome.new, outcome.duplicate) == (5, 0)
        assert store.counts() == {"events": 9, "deliveries": 2, "quarantined": 0}
        store.check_writable()
    finally:
        store.close()


def test_reads_recover_after_postgres_drops_the_connection(
    pg_url: str, main_events: list[dict[str, Any]]
) -> None:
    store = open_store(pg_url)
    try:
        store.record([receipt(envelope(main_events[:3], "d-1"))])
        assert store.counts()["events"] == 3  # opens the reader connection
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend'"
            )
        with pytest.raises(StoreUnavailable, match="postgres read failed"):
            store.counts()
        assert store.counts() == {"events": 3, "deliveries": 1, "quarantined": 0}
        with pytest.raises(StoreUnavailable, match="postgres not writable"):
            store.check_writable()
        store.check_writable()
    finally:
        store.close()


# -- durability -------------------------------------------------------------------------------


def test_data_survives_closing_and_reopening(
    store_url: str, main_events: list[dict[str, Any]]
) -> None:
    siem = load_events(SIEM_EVENTS)[:2]
    first = open_store(store_url)
    first.record([
        receipt(envelope([*main_events[:5], *siem], "d-1"), received(1)),
        receipt(envelope(main_events[3:7], "d-2"), received(2)),
    ])
    before = (
        first.recent_events(), first.quarantine(), first.ledger(), first.counts(),
    )
    first.close()

    reopened = open_store(store_url)
    try:
        assert reopened.migrate() == []
        after = (
            reopened.recent_events(), reopened.quarantine(), reopened.ledger(),
            reopened.counts(),
        )
        assert after == before
        assert after[3] == {"events": 7, "deliveries": 2, "quarantined": 2}
        stored = reopened.get_event(main_events[0]["uuid"])
        assert stored is not None
        assert orjson.loads(stored.raw) == main_events[0]
        # It keeps deduplicating against what was stored before the restart.
        [outcome] = reopened.record([receipt(envelope(main_events[:7], "d-3"), received(3))])
        assert (outcome.new, outcome.duplicate) == (0, 7)
    finally:
        reopened.close()
