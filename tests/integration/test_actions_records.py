"""The checkpoint and register actions, on SQLite and PostgreSQL: one effect per request,
what they store, and what the campaign and register queries and the CSV export return."""

from __future__ import annotations

import csv
import dataclasses
import io
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.conftest import CORPUS

from factorflow.actions.audit import AuditHandler
from factorflow.actions.checkpoint import CheckpointHandler, campaign_progress, campaigns
from factorflow.actions.register import (
    RegisterHandler,
    export_register_csv,
    register_entries,
    registers,
)
from factorflow.domain.actions import ActionRequest, OutcomeStatus, idempotency_key
from factorflow.domain.facts import Fact, Person
from factorflow.errors import PermanentActionError, TransientActionError
from factorflow.okta.translate import to_fact
from factorflow.store.factory import open_store
from factorflow.store.postgres import PostgresEventStore
from factorflow.store.sql import SqlEventStore

_ACTIVATE = next(
    orjson.loads(line)
    for line in (CORPUS / "okta-events.ndjson").read_bytes().splitlines()
    if b'"user.mfa.factor.activate"' in line
)
BASE_FACT = to_fact(_ACTIVATE, org="example.okta.com", received_at="2024-05-01T12:00:00.000000Z")
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def clock() -> datetime:
    return NOW


def make_fact(number: int, user: str | None = "00u-alice", login: str = "alice@example.com",
              published_at: str = "2024-05-01T11:00:00.000000Z") -> Fact:
    person = Person(id=user, login=login, display_name=None, type="User") if user else None
    return dataclasses.replace(
        BASE_FACT, uuid=f"5f1d3c1e-0000-4000-8000-{number:012d}", user=person,
        published_at=published_at,
    )


def make_request(kind: str, fact: Fact, params: dict[str, Any], rule: str = "r1",
                 action: str = "a1") -> ActionRequest:
    return ActionRequest(rule, action, kind, params, idempotency_key(fact.uuid, rule, action))


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlEventStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'factorflow.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    opened = open_store(url)
    yield opened
    opened.close()


def checkpoints(store: SqlEventStore) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in store.read(
        "SELECT campaign, user_id, user_login, completed_at, recorded_at, event_uuid, "
        "factor_type, factor_strength, rule_id, idempotency_key FROM campaign_checkpoints "
        "ORDER BY campaign, user_id"
    )]


# -- checkpoint ----------------------------------------------------------------------------


def test_checkpoint_marks_a_user_once_per_campaign(store: SqlEventStore) -> None:
    handler = CheckpointHandler(store, clock)
    fact = make_fact(1)
    request = make_request("checkpoint", fact, {"campaign": "fido2-2024"})
    first = handler.perform(request, fact)
    again = handler.perform(request, fact)
    later = make_fact(2, published_at="2024-05-02T09:00:00.000000Z")
    other_event = handler.perform(make_request("checkpoint", later, {"campaign": "fido2-2024"}),
                                  later)
    assert first.status is OutcomeStatus.DONE
    assert first.reference == "fido2-2024/00u-alice"
    assert again.status is OutcomeStatus.ALREADY_DONE
    assert other_event.status is OutcomeStatus.ALREADY_DONE
    assert other_event.detail == (
        "user 00u-alice already completed campaign 'fido2-2024' at 2024-05-01T11:00:00.000000Z "
        f"(event {fact.uuid})"
    )
    assert checkpoints(store) == [(
        "fido2-2024", "00u-alice", "alice@example.com", "2024-05-01T11:00:00.000000Z",
        "2024-05-01T12:00:00.000000Z", fact.uuid, "email", "sms_voice_email", "r1",
        request.idempotency_key,
    )]


def test_campaign_progress_lists_completed_users_oldest_first(store: SqlEventStore) -> None:
    handler = CheckpointHandler(store, clock)
    people = [
        (1, "00u-carol", "carol@example.com", "2024-05-03T08:00:00.000000Z", "fido2-2024"),
        (2, "00u-alice", "alice@example.com", "2024-05-01T08:00:00.000000Z", "fido2-2024"),
        (3, "00u-bob", "bob@example.com", "2024-05-02T08:00:00.000000Z", "fido2-2024"),
        (4, "00u-alice", "alice@example.com", "2024-05-04T08:00:00.000000Z", "okta-verify"),
    ]
    for number, user, login, published_at, campaign in people:
        fact = make_fact(number, user, login, published_at)
        outcome = handler.perform(make_request("checkpoint", fact, {"campaign": campaign}), fact)
        assert outcome.status is OutcomeStatus.DONE
    progress = campaign_progress(store, "fido2-2024")
    assert progress.count == 3
    assert [(c.user_id, c.user_login, c.completed_at) for c in progress.completed] == [
        ("00u-alice", "alice@example.com", "2024-05-01T08:00:00.000000Z"),
        ("00u-bob", "bob@example.com", "2024-05-02T08:00:00.000000Z"),
        ("00u-carol", "carol@example.com", "2024-05-03T08:00:00.000000Z"),
    ]
    assert progress.user_ids() == {"00u-alice", "00u-bob", "00u-carol"}
    assert campaign_progress(store, "okta-verify").user_ids() == {"00u-alice"}
    assert campaign_progress(store, "nobody-yet").completed == ()
    assert campaigns(store) == {"fido2-2024": 3, "okta-verify": 1}


@pytest.mark.parametrize(
    ("fact", "params", "message"),
    [
        (make_fact(5), {}, "rule r1 action a1: checkpoint needs params.campaign (a non-empty "
                           "string)"),
        (make_fact(5), {"campaign": "   "}, "rule r1 action a1: checkpoint needs "
                                            "params.campaign (a non-empty string)"),
        (make_fact(5, user=None), {"campaign": "fido2-2024"},
         "rule r1 action a1: event 5f1d3c1e-0000-4000-8000-000000000005 names no user, so no "
         "campaign checkpoint"),
    ],
)
def test_checkpoint_refusals_are_permanent_and_store_nothing(
    store: SqlEventStore, fact: Fact, params: dict[str, Any], message: str
) -> None:
    handler = CheckpointHandler(store, clock)
    kept = make_fact(1, user="00u-bob", login="bob@example.com")
    handler.perform(make_request("checkpoint", kept, {"campaign": "fido2-2024"}), kept)
    before = checkpoints(store)
    with pytest.raises(PermanentActionError) as caught:
        handler.perform(make_request("checkpoint", fact, params), fact)
    assert str(caught.value) == message
    assert checkpoints(store) == before


def test_two_postgres_stores_checkpoint_one_user_once(pg_url: str) -> None:
    stores = [open_store(pg_url) for _ in range(2)]
    outcomes: list[OutcomeStatus] = []
    start = threading.Barrier(4)

    def work(worker: int) -> None:
        start.wait()
        fact = make_fact(100 + worker)  # four different events of one user
        handler = CheckpointHandler(stores[worker % 2], clock)
        outcomes.append(
            handler.perform(make_request("checkpoint", fact, {"campaign": "race"}), fact).status
        )

    workers = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    try:
        assert sorted(outcomes) == sorted([OutcomeStatus.DONE] + [OutcomeStatus.ALREADY_DONE] * 3)
        assert len(checkpoints(stores[0])) == 1
    finally:
        for opened in stores:
            opened.close()


# -- register ------------------------------------------------------------------------------


def test_register_makes_one_entry_per_idempotency_key(store: SqlEventStore) -> None:
    handler = RegisterHandler(store, clock)
    fact = make_fact(1)
    params = {"register": "sms-exceptions", "reason": "SMS enrolled", "owner": "it-security",
              "expires_in_days": 30}
    request = make_request("register", fact, params)
    first = handler.perform(request, fact)
    second = handler.perform(request, fact)
    assert first.status is OutcomeStatus.DONE
    assert second.status is OutcomeStatus.ALREADY_DONE
    assert first.reference == second.reference
    entries = register_entries(store, "sms-exceptions")
    assert len(entries) == 1
    entry = entries[0]
    assert first.reference == f"sms-exceptions#{entry.id}"
    assert (entry.created_at, entry.expires_at) == (
        "2024-05-01T12:00:00.000000Z", "2024-05-31T12:00:00.000000Z")
    assert (entry.user_id, entry.user_login, entry.factor_type, entry.event_uuid) == (
        "00u-alice", "alice@example.com", "email", fact.uuid)
    assert dict(entry.fields) == {"reason": "SMS enrolled", "owner": "it-security",
                                  "expires_in_days": 30}
    # Another rule's request for the same event is its own entry.
    other = make_request("register", fact, params, rule="r2")
    assert handler.perform(other, fact).status is OutcomeStatus.DONE
    assert len(register_entries(store, "sms-exceptions")) == 2
    assert registers(store) == {"sms-exceptions": 2}


def test_register_exports_as_csv(store: SqlEventStore) -> None:
    handler = RegisterHandler(store, clock)
    alice, bob = make_fact(1), make_fact(2, "00u-bob", "=HYPERLINK(\"x\")")
    handler.perform(make_request("register", alice, {
        "register": "access-review", "reason": "admin enrolled SMS", "owner": "iam-team",
        "expires_in_days": "7"}), alice)
    handler.perform(make_request("register", bob, {
        "register": "access-review", "reason": "-1 factors", "ticket": None,
        "approved": True, "tags": ["a", "b"]}), bob)
    handler.perform(make_request("register", bob, {"register": "other", "reason": "x"},
                                 rule="r9"), bob)
    out = io.StringIO()
    assert export_register_csv(store, "access-review", out) == 2
    text = out.getvalue()
    assert text.endswith("\r\n")
    table = list(csv.reader(io.StringIO(text)))
    header = ["id", "register", "created_at", "expires_at", "user_id", "user_login",
              "factor_type", "event_uuid", "rule_id", "idempotency_key",
              "reason", "owner", "expires_in_days", "ticket", "approved", "tags"]
    assert table[0] == header
    first, second = (dict(zip(header, row, strict=True)) for row in table[1:])
    assert first["register"] == "access-review"
    assert first["expires_at"] == "2024-05-08T12:00:00.000000Z"
    assert (first["user_login"], first["reason"], first["owner"], first["expires_in_days"],
            first["ticket"], first["approved"]) == (
        "alice@example.com", "admin enrolled SMS", "iam-team", "7", "", "")
    assert first["event_uuid"] == alice.uuid
    assert first["idempotency_key"] == idempotency_key(alice.uuid, "r1", "a1")
    # Text that a spreadsheet would run as a formula is neutralised with a leading quote.
    assert second["user_login"] == "'=HYPERLINK(\"x\")"
    assert second["reason"] == "'-1 factors"
    assert (second["expires_at"], second["ticket"], second["approved"], second["tags"]) == (
        "", "", "true", '["a","b"]')
    assert len(table) == 3


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"reason": "x"}, "rule r1 action a1: register needs params.register (a non-empty "
                          "string)"),
        ({"register": "r", "user_id": "spoofed"},
         "rule r1 action a1: params user_id are reserved register columns"),
        ({"register": "r", "expires_in_days": "soon"},
         "rule r1 action a1: params.expires_in_days must be a number of days from 0 to 36600"),
        ({"register": "r", "expires_in_days": -1},
         "rule r1 action a1: params.expires_in_days must be a number of days from 0 to 36600"),
        ({"register": "r", "expires_in_days": True},
         "rule r1 action a1: params.expires_in_days must be a number of days from 0 to 36600"),
    ],
)
def test_register_refusals_are_permanent_and_store_nothing(
    store: SqlEventStore, params: dict[str, Any], message: str
) -> None:
    handler = RegisterHandler(store, clock)
    kept = make_fact(1)
    handler.perform(make_request("register", kept, {"register": "r", "reason": "kept"},
                                 rule="r0"), kept)
    fact = make_fact(2)
    with pytest.raises(PermanentActionError) as caught:
        handler.perform(make_request("register", fact, params), fact)
    assert str(caught.value) == message
    entries = register_entries(store, "r")
    assert [(e.event_uuid, dict(e.fields)) for e in entries] == [(kept.uuid, {"reason": "kept"})]


# -- an unreachable store ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "params"),
    [("audit", {}), ("checkpoint", {"campaign": "c"}), ("register", {"register": "r"})],
)
def test_an_unreachable_database_is_a_transient_error(kind: str, params: dict[str, Any]) -> None:
    store = PostgresEventStore("postgresql://postgres@127.0.0.1:1/none?connect_timeout=2")
    handlers = {"audit": AuditHandler, "checkpoint": CheckpointHandler,
                "register": RegisterHandler}
    handler = handlers[kind](store, clock)
    fact = make_fact(1)
    with pytest.raises(TransientActionError) as caught:
        handler.perform(make_request(kind, fact, params), fact)
    assert str(caught.value) == "rule r1 action a1: postgres unavailable: OperationalError"
    store.close()
