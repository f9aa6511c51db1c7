"""The audit action and the hash-chained audit log, on SQLite and PostgreSQL.

Tampering is done the way an intruder with database access would: plain SQL on the tables.
The export is checked with a verifier written here from the documented row format, so a copy
of the log can be verified without factorflow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.conftest import CORPUS

from factorflow.actions.audit import (
    GENESIS_HASH,
    AuditHandler,
    export_audit_jsonl,
    record_audit,
    verify_audit,
)
from factorflow.domain.actions import ActionRequest, OutcomeStatus, idempotency_key
from factorflow.domain.facts import Fact, Person
from factorflow.errors import PermanentActionError
from factorflow.okta.translate import to_fact
from factorflow.store.factory import open_store
from factorflow.store.sql import SqlEventStore

_ACTIVATE = next(
    orjson.loads(line)
    for line in (CORPUS / "okta-events.ndjson").read_bytes().splitlines()
    if b'"user.mfa.factor.activate"' in line
)
BASE_FACT = to_fact(_ACTIVATE, org="example.okta.com", received_at="2024-05-01T12:00:00.000000Z")


def make_fact(number: int, user: str = "00u-alice", login: str = "alice@example.com") -> Fact:
    return dataclasses.replace(
        BASE_FACT,
        uuid=f"5f1d3c1e-0000-4000-8000-{number:012d}",
        user=Person(id=user, login=login, display_name=login.split("@")[0], type="User"),
    )


def make_request(fact: Fact, params: dict[str, Any] | None = None,
                 rule: str = "audit-all", action: str = "log") -> ActionRequest:
    return ActionRequest(rule, action, "audit", params or {}, idempotency_key(fact.uuid, rule,
                                                                                action))


class TickingClock:
    """An aware clock that moves one second per reading."""

    def __init__(self) -> None:
        self._now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=1)
            return self._now


def open_backend(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'factorflow.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return open_backend(request.param, tmp_path, request)


@pytest.fixture
def store(store_url: str) -> Iterator[SqlEventStore]:
    opened = open_store(store_url)
    yield opened
    opened.close()


def rows(store: SqlEventStore) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in store.read(
        "SELECT seq, at, kind, summary, actor, event_uuid, idempotency_key, details, prev_hash, "
        "hash FROM audit_log ORDER BY seq"
    )]


def fill(store: SqlEventStore, count: int) -> list[tuple[Any, ...]]:
    handler = AuditHandler(store, TickingClock())
    for number in range(1, count + 1):
        fact = make_fact(number)
        assert handler.perform(make_request(fact), fact).status is OutcomeStatus.DONE
    return rows(store)


def test_audit_action_appends_once_per_idempotency_key(store: SqlEventStore) -> None:
    handler = AuditHandler(store, TickingClock())
    fact = make_fact(1)
    request = make_request(fact)
    first = handler.perform(request, fact)
    second = handler.perform(request, fact)
    assert first.status is OutcomeStatus.DONE
    assert first.reference == "audit:1"
    assert second.status is OutcomeStatus.ALREADY_DONE
    assert second.reference == "audit:1"
    assert second.detail == "already in the audit log as row 1"
    stored = rows(store)
    assert len(stored) == 1
    seq, at, kind, summary, actor, event_uuid, key, details, prev_hash, digest = stored[0]
    assert (seq, at, kind, actor, event_uuid, key) == (
        1, "2024-05-01T12:00:01.000000Z", "user.mfa.factor.activate", "rule:audit-all",
        fact.uuid, request.idempotency_key,
    )
    assert summary == "user.mfa.factor.activate alice@example.com email"
    assert json.loads(details) == {
        "rule_id": "audit-all", "action_id": "log", "fact": fact.to_dict(),
    }
    assert prev_hash == GENESIS_HASH
    result = verify_audit(store)
    assert result.ok
    assert result.head_hash == digest


def test_chosen_fields_and_summary(store: SqlEventStore) -> None:
    fact = make_fact(2)
    request = make_request(
        fact, {"summary": "Alice enrolled a factor", "fields": ["user.login", "factor.type"]}
    )
    AuditHandler(store, TickingClock()).perform(request, fact)
    (row,) = rows(store)
    assert row[3] == "Alice enrolled a factor"
    assert json.loads(row[7])["fact"] == {"user.login": "alice@example.com",
                                           "factor.type": "email"}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"fields": ["user.shoe_size"]},
         "rule audit-all action log: params.fields: 'user.shoe_size' is not a field of the fact"),
        ({"fields": "user.login"}, "rule audit-all action log: params.fields must be a list of "
                                   "paths"),
        ({"summary": 12}, "rule audit-all action log: params.summary must be text"),
    ],
)
def test_bad_params_are_permanent_and_append_nothing(
    store: SqlEventStore, params: dict[str, Any], message: str
) -> None:
    before = fill(store, 1)
    fact = make_fact(3)
    with pytest.raises(PermanentActionError) as caught:
        AuditHandler(store, TickingClock()).perform(make_request(fact, params), fact)
    assert str(caught.value) == message
    assert rows(store) == before


def test_record_audit_without_a_key_appends_every_time(store: SqlEventStore) -> None:
    clock = TickingClock()
    first = record_audit(store, "dead_letter.retried", "dead letter 4 retried by alice",
                         {"dead_letter": 4}, "alice", clock=clock)
    second = record_audit(store, "dead_letter.retried", "dead letter 4 retried by alice",
                          {"dead_letter": 4}, "alice", clock=clock)
    keyed = [record_audit(store, "rules.reloaded", "rules reloaded", {"rules": 3}, "bob",
                          idempotency_key="reload-1", clock=clock) for _ in range(2)]
    assert (first.seq, second.seq, keyed[0].seq, keyed[1].seq) == (1, 2, 3, 3)
    assert [first.appended, second.appended, keyed[0].appended, keyed[1].appended] == [
        True, True, True, False]
    stored = rows(store)
    assert [(row[2], row[4], row[5], row[6]) for row in stored] == [
        ("dead_letter.retried", "alice", None, None),
        ("dead_letter.retried", "alice", None, None),
        ("rules.reloaded", "bob", None, "reload-1"),
    ]
    assert stored[1][8] == stored[0][9]  # each row names the hash of the one before it
    result = verify_audit(store)
    assert (result.ok, result.rows_checked, result.head_seq, result.head_hash) == (
        True, 3, 3, stored[2][9])


def test_an_empty_log_verifies(store: SqlEventStore) -> None:
    result = verify_audit(store)
    assert (result.ok, result.rows_checked, result.first_bad_seq, result.head_seq) == (
        True, 0, None, 0)


def test_a_changed_row_is_found(store: SqlEventStore) -> None:
    before = fill(store, 5)
    with store.write() as cur:
        cur.execute("UPDATE audit_log SET summary = 'nothing happened' WHERE seq = 3")
    result = verify_audit(store)
    assert (result.ok, result.first_bad_seq, result.rows_checked) == (False, 3, 3)
    assert result.reason == "row 3: its content does not match its hash (changed)"
    after = rows(store)
    assert after[:2] == before[:2] and after[3:] == before[3:]  # verifying changes nothing


def test_a_changed_row_with_a_recomputed_hash_breaks_the_next_link(store: SqlEventStore) -> None:
    before = fill(store, 4)
    seq, at, kind, _, actor, event_uuid, key, details, prev_hash, _ = before[1]
    forged = _independent_hash(prev_hash, {
        "seq": seq, "at": at, "kind": kind, "summary": "forged", "actor": actor,
        "event_uuid": event_uuid, "idempotency_key": key, "details": details,
    })
    with store.write() as cur:
        cur.execute("UPDATE audit_log SET summary = 'forged', hash = ? WHERE seq = 2", (forged,))
    result = verify_audit(store)
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert result.reason == "row 3: prev_hash does not match the hash of the row before it"


def test_a_deleted_row_is_found(store: SqlEventStore) -> None:
    fill(store, 5)
    with store.write() as cur:
        cur.execute("DELETE FROM audit_log WHERE seq = 2")
    result = verify_audit(store)
    assert (result.ok, result.first_bad_seq) == (False, 2)
    assert result.reason == "row 2 is missing (the next row is 3)"


def test_deleted_last_rows_are_found_by_the_chain_head(store: SqlEventStore) -> None:
    fill(store, 5)
    with store.write() as cur:
        cur.execute("DELETE FROM audit_log WHERE seq >= 4")
    result = verify_audit(store)
    assert (result.ok, result.first_bad_seq, result.rows_checked) == (False, 4, 3)
    assert result.reason == (
        "rows 4 to 5 are missing (the chain head says the log ends at row 5)"
    )


def test_a_row_added_behind_the_chain_head_is_found(store: SqlEventStore) -> None:
    stored = fill(store, 2)
    last = stored[-1]
    with store.write() as cur:
        cur.execute(
            "INSERT INTO audit_log (seq, at, kind, summary, actor, event_uuid, "
            "idempotency_key, details, prev_hash, hash) VALUES (3, ?, 'x', 'x', 'x', NULL, "
            "NULL, '{}', ?, ?)",
            (last[1], last[9], "f" * 64),
        )
    result = verify_audit(store)
    assert (result.ok, result.first_bad_seq) == (False, 3)


def test_concurrent_appends_from_threads_keep_one_chain(store: SqlEventStore) -> None:
    threads, per_thread = 4, 15
    handler = AuditHandler(store, TickingClock())
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            for i in range(per_thread):
                fact = make_fact(thread * 1000 + i)
                handler.perform(make_request(fact), fact)
                record_audit(store, "note", f"thread {thread} note {i}", {"i": i}, "t")
        except BaseException as exc:  # reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    stored = rows(store)
    assert [row[0] for row in stored] == list(range(1, threads * per_thread * 2 + 1))
    result = verify_audit(store)
    assert (result.ok, result.rows_checked) == (True, threads * per_thread * 2)


def test_verifying_while_others_append_reports_no_false_break(store_url: str) -> None:
    appender, verifier = open_store(store_url), open_store(store_url)
    done = threading.Event()
    errors: list[BaseException] = []

    def append() -> None:
        try:
            for i in range(40):
                record_audit(appender, "note", f"note {i}", {"i": i}, "t")
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            done.set()

    worker = threading.Thread(target=append)
    worker.start()
    results = []
    while not done.is_set():
        results.append(verify_audit(verifier))
    worker.join()
    results.append(verify_audit(verifier))
    try:
        assert errors == []
        assert [r for r in results if not r.ok] == []
        assert results[-1].rows_checked == 40
    finally:
        appender.close()
        verifier.close()


def test_two_postgres_stores_appending_at_once_keep_one_chain(pg_url: str) -> None:
    """Two store instances stand for two factorflow processes on one database."""
    stores = [open_store(pg_url) for _ in range(2)]
    per_thread, threads_per_store = 12, 2
    errors: list[BaseException] = []
    start = threading.Barrier(len(stores) * threads_per_store)

    def work(store: SqlEventStore, worker: int) -> None:
        try:
            start.wait()
            handler = AuditHandler(store, TickingClock())
            for i in range(per_thread):
                fact = make_fact(worker * 1000 + i)
                handler.perform(make_request(fact), fact)
                # The same request from the other process as well: still one row.
                twin = stores[(worker + 1) % len(stores)]
                AuditHandler(twin, TickingClock()).perform(make_request(fact), fact)
        except BaseException as exc:  # reported below
            errors.append(exc)

    workers = [
        threading.Thread(target=work, args=(stores[n % len(stores)], n))
        for n in range(len(stores) * threads_per_store)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    try:
        assert errors == []
        total = len(workers) * per_thread
        stored = rows(stores[0])
        assert [row[0] for row in stored] == list(range(1, total + 1))
        assert len({row[6] for row in stored}) == total
        result = verify_audit(stores[1])
        assert (result.ok, result.rows_checked) == (True, total)
    finally:
        for opened in stores:
            opened.close()


def _independent_hash(prev_hash: str, row: dict[str, Any]) -> str:
    canonical = json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def test_jsonl_export_verifies_without_factorflow(store: SqlEventStore) -> None:
    fill(store, 3)
    record_audit(store, "note", "Zoë's réview ✓", {"text": "line\nbreak \"quoted\""}, "zoë")
    out = io.BytesIO()
    assert export_audit_jsonl(store, out) == 4
    lines = out.getvalue().decode().splitlines()
    assert len(lines) == 4
    prev = GENESIS_HASH
    for number, line in enumerate(lines, start=1):
        entry = json.loads(line)
        assert entry["seq"] == number
        assert entry["prev_hash"] == prev
        hashed = {key: entry[key] for key in (
            "seq", "at", "kind", "summary", "actor", "event_uuid", "idempotency_key")}
        hashed["details"] = json.dumps(entry["details"], sort_keys=True, separators=(",", ":"),
                                       ensure_ascii=False)
        assert _independent_hash(prev, hashed) == entry["hash"]
        prev = entry["hash"]
    assert json.loads(lines[-1])["details"] == {"text": "line\nbreak \"quoted\""}
    assert verify_audit(store).head_hash == prev
