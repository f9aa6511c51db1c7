"""The pipeline's steps for one stored event, without the workflow engine, on real SQLite and
PostgreSQL stores: ``evaluate`` (prepare, enrich and decide in one go), ``attempt_in_order``
(the first attempt of each action, stopping at the first failure) and the ledger's
transactions. The actions are the real handlers (audit, a signed webhook to a real local HTTP
peer, campaign checkpoint); enrichment comes from a scripted source behind the ``Enricher``
port, so a test can make the user's groups change or the lookup fail."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr
from tests.acceptance.webhook_peer import WebhookPeer
from tests.payloads.shapes import enrollment_event, user

from factorflow.actions.registry import builtin_registry
from factorflow.domain.actions import Enrichment
from factorflow.domain.facts import Person
from factorflow.errors import StoreUnavailable, TransientActionError
from factorflow.okta.payloads import format_utc, parse_delivery
from factorflow.okta.translate import to_fact
from factorflow.pipeline.deciding import RulesDecider
from factorflow.pipeline.process import Pipeline
from factorflow.pipeline.screening import ScreenPolicy
from factorflow.rules.loader import parse_rules
from factorflow.store.base import Receipt
from factorflow.store.factory import open_store
from factorflow.store.pipeline_sql import SqlPipelineLedger
from factorflow.store.sql import SqlEventStore

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"pipeline-steps-test-signing-key!").decode()
RULES = """\
version: 1
match: all
rules:
  - id: enrolled
    when: {{kind: [enrollment]}}
    actions:
      - {{id: log, kind: audit}}
      - {{id: notify, kind: webhook, params: {{url: '{url}', secret: peer}}}}
      - {{id: done, kind: checkpoint, params: {{campaign: c1}}}}
  - id: admins
    when: {{kind: [enrollment], groups: {{any: [Admins]}}}}
    actions:
      - {{id: review, kind: audit}}
"""
ADMIN = Enrichment(source="directory", found=True, profile={"department": "IT"},
                   groups=({"id": "g1", "name": "Admins"},))
NOBODY = Enrichment(source="directory", found=False)


class ScriptedEnricher:
    """Answers each lookup with the next item of ``script`` (an Enrichment, or an error to
    raise); the last item answers every lookup after it."""

    def __init__(self, *script: Enrichment | Exception) -> None:
        self.script = list(script)
        self.lookups: list[str | None] = []

    def lookup(self, user: Person | None) -> Enrichment:
        self.lookups.append(user.id if user else None)
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, Exception):
            raise item
        return item


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlEventStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    opened = open_store(url)
    yield opened
    opened.close()


@pytest.fixture
def peer() -> Iterator[WebhookPeer]:
    with WebhookPeer(WEBHOOK_SECRET) as started:
        yield started


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as client:
        yield client


def make_pipeline(
    store: SqlEventStore, peer: WebhookPeer, enricher: ScriptedEnricher,
    http: httpx.Client,
) -> Pipeline:
    ledger = SqlPipelineLedger(store)
    registry = builtin_registry(store, webhook_secrets={"peer": SecretStr(WEBHOOK_SECRET)},
                                http=http)
    return Pipeline(
        events=ledger, facts=ledger, actions=ledger, policy=ScreenPolicy(),
        decide=RulesDecider(parse_rules(RULES.format(url=peer.url), source="test")),
        enricher=enricher,
        handlers={kind: registry.handler(kind) for kind in registry.kinds()},
    )


def stored(store: SqlEventStore, event: dict[str, Any]) -> str:
    body = orjson.dumps({"eventType": "com.okta.event_hook", "eventId": event["uuid"],
                         "data": {"events": [event]}})
    delivery = parse_delivery(body)
    received_at = format_utc(datetime.now(UTC))
    outcomes = store.record([Receipt(delivery.delivery_id, None, received_at, "default",
                                     delivery)])
    assert outcomes[0].new == 1
    return str(event["uuid"])


def rows(store: SqlEventStore, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in store.read(sql, params)]


# -- evaluate ---------------------------------------------------------------------------------


def test_evaluate_prepares_enriches_and_decides_at_once(
    store: SqlEventStore, peer: WebhookPeer, http: httpx.Client
) -> None:
    enricher = ScriptedEnricher(ADMIN)
    pipeline = make_pipeline(store, peer, enricher, http)
    uuid = stored(store, enrollment_event())

    result = pipeline.evaluate(uuid, "run-1")

    assert (result["status"], result["decided"]) == ("ready", True)
    assert [(r["rule_id"], r["action_id"], r["kind"]) for r in result["requests"]] == [
        ("enrolled", "log", "audit"), ("enrolled", "notify", "webhook"),
        ("enrolled", "done", "checkpoint"), ("admins", "review", "audit"),
    ]
    assert enricher.lookups == [user()["id"]]
    assert rows(store, "SELECT status, status_reason FROM facts WHERE uuid = ?", uuid) == [
        ("decided", None)]
    ((run_id, status, enrichment, decision),) = rows(
        store, "SELECT run_id, status, enrichment, decision FROM decisions "
               "WHERE event_uuid = ?", uuid)
    assert (run_id, status) == ("run-1", "decided")
    assert orjson.loads(enrichment)["groups"] == [{"id": "g1", "name": "Admins"}]
    assert orjson.loads(decision)["matched_rules"] == ["enrolled", "admins"]
    assert rows(store, "SELECT COUNT(*) FROM action_results WHERE event_uuid = ?", uuid) == [
        (0,)]  # deciding does nothing yet


def test_evaluate_of_an_event_received_before_okta_published_it_warns_of_the_clock(
    store: SqlEventStore, peer: WebhookPeer, http: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pipeline = make_pipeline(store, peer, ScriptedEnricher(ADMIN), http)
    on_time = stored(store, enrollment_event())
    early_event = enrollment_event()
    early_event["published"] = format_utc(datetime.now(UTC) + timedelta(minutes=2))
    early = stored(store, early_event)
    caplog.set_level(logging.WARNING, logger="factorflow.pipeline.clock")
    pipeline.evaluate(on_time, "run-1")
    assert [r.message for r in caplog.records if r.message.startswith("clock.")] == []
    result = pipeline.evaluate(early, "run-2")
    assert result["decided"] is True  # the event is handled as any other
    (warning,) = [r for r in caplog.records if r.message == "clock.behind_okta"]
    fields = warning.fields  # type: ignore[attr-defined]
    assert fields["event_uuid"] == early and -121 < fields["delay_seconds"] < -119


def test_evaluate_run_again_keeps_the_enrichment_the_decision_was_recorded_with(
    store: SqlEventStore, peer: WebhookPeer, http: httpx.Client
) -> None:
    """The step was interrupted after its commit and runs again: meanwhile the user left the
    Admins group, but what is acted on must be what the decision record says."""
    enricher = ScriptedEnricher(ADMIN, NOBODY)
    pipeline = make_pipeline(store, peer, enricher, http)
    uuid = stored(store, enrollment_event())
    first = pipeline.evaluate(uuid, "run-1")

    again = pipeline.evaluate(uuid, "run-1")

    assert again == first
    assert len(enricher.lookups) == 1  # not looked up again
    assert rows(store, "SELECT run_id FROM decisions WHERE event_uuid = ?", uuid) == [
        ("run-1",)]
    # A new run (a replay) looks the user up afresh and decides on what it finds now.
    replay = pipeline.evaluate(uuid, "run-2")
    assert [r["rule_id"] for r in replay["requests"]] == ["enrolled"] * 3
    assert len(enricher.lookups) == 2
    assert [r[0] for r in rows(store, "SELECT run_id FROM decisions WHERE event_uuid = ? "
                                      "ORDER BY id", uuid)] == ["run-1", "run-2"]


def test_evaluate_with_enrichment_down_decides_nothing(
    store: SqlEventStore, peer: WebhookPeer, http: httpx.Client
) -> None:
    enricher = ScriptedEnricher(TransientActionError("directory: HTTP 503", retry_after=7.0),
                                ADMIN)
    pipeline = make_pipeline(store, peer, enricher, http)
    uuid = stored(store, enrollment_event())

    result = pipeline.evaluate(uuid, "run-1")

    assert result == {"status": "ready", "reason": None, "decided": False,
                      "detail": "directory: HTTP 503", "retry_after": 7.0}
    assert rows(store, "SELECT status FROM facts WHERE uuid = ?", uuid) == [("pending",)]
    assert rows(store, "SELECT COUNT(*) FROM decisions WHERE event_uuid = ?", uuid) == [(0,)]
    # The workflow's fallback: enrich again, then decide on that snapshot.
    snapshot = pipeline.enrich(uuid)
    requests = pipeline.decide(uuid, "run-1", snapshot)
    assert [r["rule_id"] for r in requests][-1] == "admins"
    assert rows(store, "SELECT status FROM facts WHERE uuid = ?", uuid) == [("decided",)]


def test_evaluate_of_a_filtered_or_missing_event(
    store: SqlEventStore, peer: WebhookPeer, http: httpx.Client
) -> None:
    enricher = ScriptedEnricher(ADMIN)
    pipeline = make_pipeline(store, peer, enricher, http)
    uuid = stored(store, enrollment_event(result="FAILURE"))

    assert pipeline.evaluate(uuid, "run-1") == {
        "status": "filtered", "reason": "outcome is FAILURE, not SUCCESS"}
    assert pipeline.evaluate("no-such-uuid", "run-1") == {
        "status": "missing", "reason": "event no-such-uuid is not stored"}

    assert enricher.lookups == []
    assert rows(store, "SELECT status, status_reason FROM facts WHERE uuid = ?", uuid) == [
        ("filtered", "outcome is FAILURE, not SUCCESS")]
    assert rows(store, "SELECT run_id, status FROM decisions WHERE event_uuid = ?", uuid) == [
        ("screen", "filtered")]


# -- actions ----------------------------------------------------------------------------------


def test_actions_run_in_order_and_stop_at_the_first_failure(
    store: SqlEventStore, peer: WebhookPeer, http: httpx.Client
) -> None:
    pipeline = make_pipeline(store, peer, ScriptedEnricher(NOBODY), http)
    uuid = stored(store, enrollment_event())
    requests = pipeline.evaluate(uuid, "run-1")["requests"]
    keys = {r["action_id"]: r["idempotency_key"] for r in requests}
    peer.then(503, body=b"busy")

    results = pipeline.attempt_in_order(uuid, requests)

    assert [(r["ok"], r["transient"], r["status"]) for r in results] == [
        (True, False, "done"), (False, True, "transient")]
    assert rows(store, "SELECT action_id, status, attempts FROM action_results "
                       "WHERE event_uuid = ? ORDER BY action_id", uuid) == [("log", "done", 1)]
    assert rows(store, "SELECT idempotency_key, attempt, result FROM action_attempts "
                       "WHERE event_uuid = ? ORDER BY id", uuid) == [
        (keys["log"], 1, "ok"), (keys["notify"], 1, "transient")]
    assert rows(store, "SELECT COUNT(*) FROM campaign_checkpoints") == [(0,)]  # not tried

    # The workflow retries the failed one on its own, then goes on with the rest.
    assert pipeline.attempt(uuid, requests[1], 2)["status"] == "done"
    rest = pipeline.attempt_in_order(uuid, requests[2:])
    assert [r["status"] for r in rest] == ["done"]
    assert rows(store, "SELECT action_id, status, attempts FROM action_results "
                       "WHERE event_uuid = ? ORDER BY action_id", uuid) == [
        ("done", "done", 1), ("log", "done", 1), ("notify", "done", 2)]

    # Run again (after a crash, or a replay): nothing is done twice, nothing re-recorded.
    sent = len(peer.snapshot())
    again = pipeline.attempt_in_order(uuid, requests)
    assert [r["status"] for r in again] == ["already_done"] * 3
    assert len(peer.snapshot()) == sent
    assert rows(store, "SELECT COUNT(*) FROM action_attempts WHERE event_uuid = ?", uuid) == [
        (4,)]
    assert rows(store, "SELECT COUNT(*) FROM audit_log WHERE event_uuid = ?", uuid) == [(1,)]


# -- the ledger's transactions ------------------------------------------------------------------


def test_ledger_writes_in_a_transaction_commit_together_or_not_at_all(
    store: SqlEventStore,
) -> None:
    ledger = SqlPipelineLedger(store)
    uuid = stored(store, enrollment_event())
    found = ledger.event_json(uuid)
    assert found is not None
    fact = to_fact(found[0], org=found[1], received_at=found[2])

    with pytest.raises(RuntimeError, match="stop"), ledger.transaction():
        ledger.save_fact(fact, "decided", None)
        with ledger.transaction():  # joins the outer one
            ledger.record_decision(uuid, "run-1", "decided", None, {}, {})
        raise RuntimeError("stop")
    assert rows(store, "SELECT COUNT(*) FROM facts") == [(0,)]
    assert rows(store, "SELECT COUNT(*) FROM decisions") == [(0,)]

    # A database error inside: StoreUnavailable, and nothing of the transaction stays.
    with pytest.raises(StoreUnavailable, match="write failed"), ledger.transaction():
        ledger.save_fact(fact, "decided", None)
        ledger.record_decision(uuid, "run-1", "decided", None, {}, {})
        ledger.suppress("rule", "key", "not a time", 1.0, uuid)
        ledger.suppress("rule", "key", "not a time", 1.0, "another")  # holder: fine
        with ledger._write() as cur:
            cur.execute("INSERT INTO no_such_table VALUES (1)")
    assert rows(store, "SELECT COUNT(*) FROM facts") == [(0,)]
    assert rows(store, "SELECT COUNT(*) FROM suppressions") == [(0,)]

    with ledger.transaction():
        ledger.save_fact(fact, "decided", None)
        ledger.record_decision(uuid, "run-1", "decided", None, {"source": "x"}, {})
    assert rows(store, "SELECT status FROM facts WHERE uuid = ?", uuid) == [("decided",)]
    assert ledger.decision_snapshot(uuid, "run-1") == {"source": "x"}
    assert ledger.decision_snapshot(uuid, "run-2") is None
