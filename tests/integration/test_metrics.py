"""Every metric family factorflow exports, each moved by the behaviour it reports.

Each test scrapes /metrics before and after driving the behaviour (a delivery, a duplicate, a
refused request, a workflow, an action per connector, a dead letter, the System Log reconciler,
an Okta 429, a worker's heartbeat) and asserts the exact change, read with Prometheus' own
parser. The workflow tests run the real engine in the test process on real SQLite files, with
small HTTP servers for the webhook targets and the Okta simulator for the Okta API. The last
part runs real ``factorflow serve`` and ``factorflow worker`` processes with ``[metrics] port``.

:data:`TESTED` names, for every exported family, the tests that move it; the guard test fails
when a family is exported without one (or listed without being exported). No scrape, response
or log line may show a secret (every scrape here is checked; the suite-wide watch in conftest
checks the log lines).
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner
from dbos import DBOS, SetEnqueueOptions, SetWorkflowID
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient
from tests.acceptance.serverproc import HOST, ServerProcess, free_port
from tests.conftest import SECRET, WATCHED_SECRETS, make_settings
from tests.integration.held_peer import HeldPeer
from tests.okta.support import MFA_TYPES, SimulatedOkta, delivery_failure, simulated_okta
from tests.okta.support import delivery as okta_delivery
from tests.payloads.shapes import enrollment_event

from factorflow.bootstrap import build_app
from factorflow.cli import main
from factorflow.okta.payloads import format_utc
from factorflow.okta.reconcile import Reconciler
from factorflow.settings import Settings
from factorflow.store.factory import open_store
from factorflow.store.pipeline_sql import SqlPipelineLedger
from factorflow.store.sql import SqlEventStore
from factorflow.store.system_log import SystemLogLedger
from factorflow.web.metrics import ACK_BUCKETS
from factorflow.workflows import process
from factorflow.workflows.client import WorkflowClient
from factorflow.workflows.engine import ORG_QUEUE
from factorflow.workflows.recovery import WorkerRegistry

HOOK = "/hooks/okta"
AUTH = {"Authorization": SECRET, "Content-Type": "application/json"}
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"factorflow-metrics-tests-key-32b").decode()
WATCHED_SECRETS.add(WEBHOOK_SECRET)
DEADLINE = 90.0  # seconds any expected state may take to appear (a loaded 2-core machine)

# Every exported family -> the tests that drive it.
TESTED: dict[str, tuple[str, ...]] = {
    "factorflow_deliveries": ("test_deliveries_count_acknowledged_requests_only",),
    "factorflow_events_received": ("test_events_received_new_duplicate_and_quarantined",),
    "factorflow_requests_rejected": (
        "test_each_refusal_is_counted_under_its_reason",
        "test_a_client_that_goes_away_mid_body_is_counted",
        "test_a_store_that_cannot_commit_is_counted",
        "test_serve_answers_metrics_on_its_own_port",
    ),
    "factorflow_verifications": ("test_verifications_count_answered_challenges",),
    "factorflow_ack_latency_seconds": ("test_each_acknowledgement_is_timed",),
    "factorflow_events_last_24h": ("test_events_of_the_last_day_against_okta_cap",),
    "factorflow_okta_daily_event_cap": ("test_events_of_the_last_day_against_okta_cap",),
    "factorflow_events_awaiting_workflow": ("test_events_wait_for_a_worker_to_relay_them",),
    "factorflow_facts": ("test_events_wait_for_a_worker_to_relay_them",
                         "test_action_outcomes_per_connector_and_dead_letters"),
    "factorflow_action_results": ("test_action_outcomes_per_connector_and_dead_letters",),
    "factorflow_dead_letters": ("test_action_outcomes_per_connector_and_dead_letters",),
    "factorflow_workers": ("test_workers_alive_dead_taken_over_and_stopped",),
    "factorflow_quarantined_events": ("test_events_received_new_duplicate_and_quarantined",),
    "factorflow_hook_share_24h": ("test_reconciler_and_delivery_gap_gauges",),
    "factorflow_events_recovered_24h": ("test_reconciler_and_delivery_gap_gauges",),
    "factorflow_events_confirmed_24h": ("test_reconciler_and_delivery_gap_gauges",),
    "factorflow_hook_delivery_failures_24h": ("test_reconciler_and_delivery_gap_gauges",),
    "factorflow_hook_delay_seconds": ("test_reconciler_and_delivery_gap_gauges",),
    "factorflow_reconciler_lag_seconds": ("test_reconciler_and_delivery_gap_gauges",),
    "factorflow_events_early_24h": ("test_events_received_before_okta_published_them",),
    "factorflow_clock_behind_okta_seconds": ("test_events_received_before_okta_published_them",),
    "factorflow_okta_rate_limit_remaining": ("test_okta_rate_limit_after_a_429",),
    "factorflow_okta_rate_limit_limit": ("test_okta_rate_limit_after_a_429",),
    "factorflow_workflows": ("test_workflow_states_per_org",
                             "test_worker_answers_metrics_on_its_own_port"),
}


# -- reading the exposition -------------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample by (name, labels), but the ``_created`` timestamps of counters and
    histograms; no scrape may show a secret."""
    for secret in WATCHED_SECRETS:
        assert secret not in text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
        if not sample.name.endswith("_created")
    }


def families(text: str) -> set[str]:
    """The families named in the exposition (the text format lists the ``_created``
    timestamps of a counter or histogram as a family of their own: not counted here)."""
    return {family.name for family in text_string_to_metric_families(text)
            if not family.name.endswith("_created")}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def change(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much one sample moved (an absent sample counts as 0)."""
    return (value(after, name, **labels) or 0.0) - (value(before, name, **labels) or 0.0)


def changes(before: Samples, after: Samples, prefix: str) -> dict[tuple[str, frozenset[Any]],
                                                                  float]:
    """Every sample of ``prefix`` that moved, with how much."""
    keys = {k for k in (*before, *after) if k[0].startswith(prefix)}
    moved = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in keys}
    return {k: v for k, v in moved.items() if v != 0}


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE:g} s: {what}")
        time.sleep(0.1)


def okta_event(**overrides: Any) -> dict[str, Any]:
    event = enrollment_event()
    event.update(overrides)
    return event


def envelope(*events: Any, delivery_id: str | None = None) -> bytes:
    return orjson.dumps({"eventType": "com.okta.event_hook",
                         "eventId": delivery_id or str(uuidlib.uuid4()),
                         "data": {"events": list(events)}})


@contextlib.contextmanager
def running(settings: Settings, *, worker: bool = False) -> Iterator[TestClient]:
    with TestClient(build_app(settings, worker=worker)) as test_client:
        yield test_client


def store_of(client: TestClient) -> SqlEventStore:
    store: SqlEventStore = client.app.store  # type: ignore[attr-defined]
    return store


# -- the receiver -----------------------------------------------------------------------------


def test_deliveries_count_acknowledged_requests_only(client: TestClient) -> None:
    before = scrape(client)
    assert client.post(HOOK, content=envelope(okta_event(), okta_event()),
                       headers=AUTH).status_code == 204
    assert client.post(HOOK, content=b"{", headers=AUTH).status_code == 400
    assert client.post(HOOK, content=envelope(okta_event()), headers={
        **AUTH, "Authorization": "wrong"}).status_code == 401
    after = scrape(client)
    assert changes(before, after, "factorflow_deliveries") == {
        ("factorflow_deliveries_total", frozenset({("org", "default")})): 1.0}


def test_events_received_new_duplicate_and_quarantined(client: TestClient) -> None:
    first, second, third = okta_event(), okta_event(), okta_event()
    broken = okta_event(published="yesterday")
    before = scrape(client)
    assert client.post(HOOK, content=envelope(first, second), headers=AUTH).status_code == 204
    middle = scrape(client)
    answer = client.post(HOOK, content=envelope(second, third, broken), headers=AUTH)
    assert answer.headers["factorflow-result"] == "new=1 duplicate=1 quarantined=1"
    after = scrape(client)
    received = "factorflow_events_received_total"
    assert [change(before, middle, received, org="default", result=r)
            for r in ("new", "duplicate", "quarantined")] == [2.0, 0.0, 0.0]
    assert [change(middle, after, received, org="default", result=r)
            for r in ("new", "duplicate", "quarantined")] == [1.0, 1.0, 1.0]
    # The quarantine, read from the store, by reason.
    assert changes(before, after, "factorflow_quarantined_events") == {
        ("factorflow_quarantined_events", frozenset({("reason", "bad_published")})): 1.0}
    assert store_of(client).counts() == {"events": 3, "deliveries": 2, "quarantined": 1}


def _refusals(big: int) -> list[tuple[str, str, dict[str, Any], int, str]]:
    """(reason, method, request keywords, status, error code) of every refusal an HTTP client
    can cause."""
    return [
        ("method", "PUT", {"headers": AUTH, "content": envelope(okta_event())}, 405,
         "method_not_allowed"),
        ("auth", "POST", {"headers": {"Content-Type": "application/json"},
                          "content": envelope(okta_event())}, 401, "unauthorized"),
        ("auth", "GET", {"headers": {"X-Okta-Verification-Challenge": "c"}}, 401,
         "unauthorized"),
        ("no_challenge", "GET", {"headers": {"Authorization": SECRET}}, 400,
         "missing_challenge"),
        ("bad_challenge", "GET", {"headers": {"Authorization": SECRET,
                                              "X-Okta-Verification-Challenge": "c" * 1025}},
         400, "bad_challenge"),
        ("unsupported_media_type", "POST", {"headers": {**AUTH, "Content-Type": "text/plain"},
                                            "content": envelope(okta_event())}, 415,
         "unsupported_media_type"),
        ("too_large", "POST", {"headers": AUTH, "content": b"x" * big}, 413, "too_large"),
        ("invalid_json", "POST", {"headers": AUTH, "content": b'{"eventType": '}, 400,
         "invalid_json"),
        ("not_envelope", "POST", {"headers": AUTH, "content": b'{"eventType": "x"}'}, 400,
         "not_envelope"),
        ("not_envelope", "POST", {"headers": AUTH, "content": b"[]"}, 400, "not_envelope"),
    ]


def test_each_refusal_is_counted_under_its_reason(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, hook={"max_body_bytes": 4096})
    with running(settings) as client:
        stored = envelope(okta_event())
        assert client.post(HOOK, content=stored, headers=AUTH).status_code == 204
        kept = store_of(client).counts()
        for reason, method, request, status, error in _refusals(4097):
            before = scrape(client)
            answer = client.request(method, HOOK, **request)
            assert (answer.status_code, answer.json()["error"]) == (status, error), reason
            after = scrape(client)
            assert changes(before, after, "factorflow_requests_rejected") == {
                ("factorflow_requests_rejected_total",
                 frozenset({("org", "default"), ("reason", reason)})): 1.0}, reason
            assert changes(before, after, "factorflow_deliveries") == {}
            assert changes(before, after, "factorflow_ack_latency_seconds") == {}
        assert store_of(client).counts() == kept  # nothing refused was stored


def _asgi_post(client: TestClient, headers: list[tuple[bytes, bytes]],
               messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One request straight into the running ASGI app, on its event loop (what no HTTP client
    library sends: a malformed Content-Length, a disconnect mid-body); what it sent back."""
    sent: list[dict[str, Any]] = []
    incoming = iter(messages)

    async def receive() -> dict[str, Any]:
        return next(incoming)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": HOOK, "headers": headers,
             "client": ("127.0.0.1", 50000), "query_string": b""}
    client.portal.call(client.app, scope, receive, send)  # type: ignore[union-attr]
    return sent


def test_a_client_that_goes_away_mid_body_is_counted(client: TestClient) -> None:
    headers = [(b"authorization", SECRET.encode()), (b"content-type", b"application/json")]
    kept = store_of(client).counts()
    for reason, extra, messages in [
        ("client_disconnected", [], [{"type": "http.request", "body": b'{"eventType"',
                                      "more_body": True}, {"type": "http.disconnect"}]),
        ("bad_length", [(b"content-length", b"12abc")],
         [{"type": "http.request", "body": b"{}", "more_body": False}]),
    ]:
        before = scrape(client)
        sent = _asgi_post(client, headers + extra, messages)
        assert sent[0]["status"] == 400
        assert orjson.loads(sent[1]["body"])["error"] == reason
        after = scrape(client)
        assert changes(before, after, "factorflow_requests_rejected") == {
            ("factorflow_requests_rejected_total",
             frozenset({("org", "default"), ("reason", reason)})): 1.0}
    assert store_of(client).counts() == kept


def test_a_store_that_cannot_commit_is_counted(client: TestClient, settings: Settings) -> None:
    assert client.post(HOOK, content=envelope(okta_event()), headers=AUTH).status_code == 204
    kept = store_of(client).counts()
    operator = sqlite3.connect(settings.data_dir / "factorflow.db", isolation_level=None)
    before = scrape(client)
    try:
        operator.execute("ALTER TABLE deliveries RENAME TO deliveries_away")
        answer = client.post(HOOK, content=envelope(okta_event()), headers=AUTH)
    finally:
        operator.execute("ALTER TABLE deliveries_away RENAME TO deliveries")
        operator.close()
    assert (answer.status_code, answer.json()["error"]) == (503, "store_unavailable")
    after = scrape(client)
    assert changes(before, after, "factorflow_requests_rejected") == {
        ("factorflow_requests_rejected_total",
         frozenset({("org", "default"), ("reason", "store_unavailable")})): 1.0}
    assert changes(before, after, "factorflow_deliveries") == {}
    assert store_of(client).counts() == kept


def test_verifications_count_answered_challenges(client: TestClient) -> None:
    before = scrape(client)
    answer = client.get(HOOK, headers={"Authorization": SECRET,
                                       "X-Okta-Verification-Challenge": "c-1"})
    assert answer.json() == {"verification": "c-1"}
    refused = client.get(HOOK, headers={"Authorization": SECRET})  # no challenge: refused
    assert refused.status_code == 400
    after = scrape(client)
    assert change(before, after, "factorflow_verifications_total", org="default") == 1.0


def test_each_acknowledgement_is_timed(client: TestClient) -> None:
    # The buckets show the distance to Okta's 3 s timeout.
    assert {2.0, 2.5, 3.0, 5.0} <= set(ACK_BUCKETS)
    before = scrape(client)
    for _ in range(3):
        assert client.post(HOOK, content=envelope(okta_event()), headers=AUTH).status_code == 204
    assert client.post(HOOK, content=b"{", headers=AUTH).status_code == 400  # not timed
    after = scrape(client)
    latency = "factorflow_ack_latency_seconds"
    assert change(before, after, f"{latency}_count", org="default") == 3.0
    assert change(before, after, f"{latency}_bucket", org="default", le="+Inf") == 3.0
    assert change(before, after, f"{latency}_bucket", org="default", le="3.0") == 3.0
    assert change(before, after, f"{latency}_sum", org="default") > 0
    assert {le for (name, labels) in after if name == f"{latency}_bucket"
            for key, le in labels if key == "le"} == {
        *(str(float(b)) for b in ACK_BUCKETS), "+Inf"}


def test_events_of_the_last_day_against_okta_cap(client: TestClient) -> None:
    before = scrape(client)
    events = [okta_event() for _ in range(3)]
    assert client.post(HOOK, content=envelope(*events), headers=AUTH).status_code == 204
    assert client.post(HOOK, content=envelope(events[0]), headers=AUTH).status_code == 204
    after = scrape(client)
    assert change(before, after, "factorflow_events_last_24h", org="default") == 3.0
    assert value(after, "factorflow_okta_daily_event_cap", level="cap") == 400_000
    assert value(after, "factorflow_okta_daily_event_cap", level="warning") == 280_000
    # An event received more than a day ago no longer counts.
    with store_of(client).write() as cur:
        cur.execute("UPDATE events SET received_at = ? WHERE uuid = ?",
                    (format_utc(datetime.now(UTC) - timedelta(hours=25)), events[0]["uuid"]))
    assert change(after, scrape(client), "factorflow_events_last_24h", org="default") == -1.0


# -- the store's reconciler gauges ------------------------------------------------------------


@pytest.fixture
def okta() -> Iterator[SimulatedOkta]:
    with simulated_okta(users=25, seed=21, enrollments=30, start=time.time()) as simulated:
        yield simulated


def test_reconciler_and_delivery_gap_gauges(okta: SimulatedOkta, tmp_path: Path) -> None:
    """The hook delivers some events, the System Log reconciler reads all of them (plus a
    failed delivery): the shares, recoveries, confirmations, failures, delays and lag."""
    events = okta.org.events(MFA_TYPES)
    hooked, late, never = events[:10], events[10:16], events[16:]
    delivery_failure(okta.org, never[:2])
    settings = make_settings(tmp_path, workflows={"enabled": False})
    with running(settings) as client:
        store = store_of(client)
        before = scrape(client)
        assert client.post(HOOK, content=okta_delivery(hooked), headers=AUTH).status_code == 204
        run = Reconciler("default", okta.client(), SystemLogLedger(store, clock=okta.now),
                         event_types=MFA_TYPES, clock=okta.now).run()
        assert (run.confirmed, run.recovered) == (len(hooked), len(late) + len(never) + 1)
        assert client.post(HOOK, content=okta_delivery(late), headers=AUTH).status_code == 204
        earliest = time.time()
        after = scrape(client)
        latest = time.time()
    state = SystemLogLedger(store).state("default")
    assert state is not None and state.cursor_published is not None
    newest = datetime.fromisoformat(state.cursor_published.replace("Z", "+00:00")).timestamp()

    assert change(before, after, "factorflow_hook_share_24h", org="default") == pytest.approx(
        (len(hooked) + len(late)) / len(events))
    assert change(before, after, "factorflow_events_recovered_24h", org="default",
                  hook="later") == len(late)
    assert change(before, after, "factorflow_events_recovered_24h", org="default",
                  hook="never") == len(never)
    assert change(before, after, "factorflow_events_confirmed_24h", org="default") == len(events)
    assert change(before, after, "factorflow_hook_delivery_failures_24h", org="default") == 1
    delays = {labels: v for (name, labels), v in after.items()
              if name == "factorflow_hook_delay_seconds"}
    assert {dict(labels)["quantile"] for labels in delays} == {"0.50", "0.90", "0.99"}
    assert all(v > 0 for v in delays.values())
    lag = value(after, "factorflow_reconciler_lag_seconds", org="default")
    assert lag is not None and earliest - newest - 1 <= lag <= latest - newest + 1
    # The cap counts what the hook delivered, not what the reconciler brought in.
    assert change(before, after, "factorflow_events_last_24h", org="default") == \
        len(hooked) + len(late)


def test_events_received_before_okta_published_them(tmp_path: Path) -> None:
    """Okta publishes an event before it delivers it: one that arrives 90 s before its
    ``published`` time says this host's clock is behind Okta's by at least that. Counted, with
    the bound, per org; events within a second of their time are not."""
    settings = make_settings(tmp_path, workflows={"enabled": False})
    now = datetime.now(UTC)
    on_time = okta_event(uuid=str(uuidlib.uuid4()),
                         published=format_utc(now - timedelta(seconds=3)))
    nearly = okta_event(uuid=str(uuidlib.uuid4()),  # half a second ahead: clocks a bit apart
                        published=format_utc(now + timedelta(seconds=0.5)))
    early = okta_event(uuid=str(uuidlib.uuid4()),
                       published=format_utc(now + timedelta(seconds=90)))
    with running(settings) as client:
        assert client.post(HOOK, content=envelope(on_time, nearly), headers=AUTH
                           ).status_code == 204
        before = scrape(client)
        assert client.post(HOOK, content=envelope(early), headers=AUTH).status_code == 204
        after = scrape(client)
    assert value(before, "factorflow_events_early_24h", org="default") == 0
    assert value(before, "factorflow_clock_behind_okta_seconds", org="default") == 0
    assert value(after, "factorflow_events_early_24h", org="default") == 1
    behind = value(after, "factorflow_clock_behind_okta_seconds", org="default")
    assert behind is not None and 85 < behind < 90  # received within seconds of `now`


# -- the workflow worker ----------------------------------------------------------------------

RULES = """
version: 1
match: all
rules:
  - id: enrolled
    when: {{kind: [enrollment]}}
    actions:
      - {{id: log, kind: audit}}
      - {{id: entry, kind: register, params: {{register: enrolled}}}}
      - {{id: notify, kind: webhook, params: {{url: "{ok}", secret: peer, type: mfa.enrolled}}}}
      - {{id: broken, kind: webhook, params: {{url: "{bad}", secret: peer, type: mfa.enrolled}}}}
"""


def worker_settings(tmp_path: Path, rules: str | None = None, **sections: Any) -> Settings:
    extra: dict[str, Any] = {}
    if rules is not None:
        (tmp_path / "rules.yaml").write_text(rules)
        extra["pipeline"] = {"rules_file": tmp_path / "rules.yaml", **sections.pop(
            "pipeline", {})}
    workflows = {"relay_interval_seconds": 0.1, "queue_polling_seconds": 0.1,
                 **sections.pop("workflows", {})}
    return make_settings(tmp_path, actions={"webhook_secrets": {"peer": WEBHOOK_SECRET}},
                         workflows=workflows, **extra, **sections)


def results(store: SqlEventStore, uuids: list[str]) -> list[tuple[str, str, str]]:
    marks = ", ".join("?" for _ in uuids)
    rows = store.read(f"SELECT event_uuid, action_id, status FROM action_results "  # noqa: S608
                      f"WHERE event_uuid IN ({marks}) ORDER BY event_uuid, action_id",
                      tuple(uuids))
    return [(str(a), str(b), str(c)) for a, b, c in rows]


def test_events_wait_for_a_worker_to_relay_them(tmp_path: Path) -> None:
    settings = worker_settings(tmp_path)
    events = [okta_event() for _ in range(3)]
    screened_out = okta_event(eventType="user.session.start")
    with running(settings) as receiver:  # a receiver only: nobody relays
        before = scrape(receiver)
        assert receiver.post(HOOK, content=envelope(*events, screened_out),
                             headers=AUTH).status_code == 204
        waiting = scrape(receiver)
    assert change(before, waiting, "factorflow_events_awaiting_workflow") == 4.0
    with running(settings, worker=True) as worker:
        wait_for(lambda: value(scrape(worker), "factorflow_events_awaiting_workflow") == 0.0,
                 "the relay hands every event over")
        wait_for(lambda: value(scrape(worker), "factorflow_facts", status="decided") == 3.0,
                 "three facts decided")
        after = scrape(worker)
    assert change(before, after, "factorflow_events_awaiting_workflow") == 0.0
    assert changes(before, after, "factorflow_facts") == {
        ("factorflow_facts", frozenset({("status", "decided")})): 3.0,
        ("factorflow_facts", frozenset({("status", "filtered")})): 1.0,
    }


def test_action_outcomes_per_connector_and_dead_letters(tmp_path: Path) -> None:
    with HeldPeer(status=204) as ok, HeldPeer(status=400) as bad:
        settings = worker_settings(tmp_path, RULES.format(ok=ok.url("/ok"), bad=bad.url("/bad")))
        events = [okta_event(), okta_event()]
        uuids = [e["uuid"] for e in events]
        with running(settings, worker=True) as client:
            store = store_of(client)
            before = scrape(client)
            assert client.post(HOOK, content=envelope(*events), headers=AUTH).status_code == 204
            wait_for(lambda: len(results(store, uuids)) == 8, "every action has a result")
            after = scrape(client)
            assert changes(before, after, "factorflow_action_results") == {
                ("factorflow_action_results", frozenset({("kind", k), ("status", s)})): n
                for k, s, n in [("audit", "done", 2), ("register", "done", 2),
                                ("webhook", "done", 2), ("webhook", "dead", 2)]}
            assert changes(before, after, "factorflow_dead_letters") == {
                ("factorflow_dead_letters", frozenset({("status", "open")})): 2.0}
            assert change(before, after, "factorflow_facts", status="decided") == 2.0

            # The target is fixed and one dead letter retried: it is resolved, the action done.
            bad.status = 204
            letter = SqlPipelineLedger(store).dead_letters("open", 10)[0]
            workflows = WorkflowClient(settings, SqlPipelineLedger(store))
            try:
                assert workflows.retry_dead_letter(letter.id, "test") is not None
                retrying = scrape(client)
                wait_for(lambda: value(scrape(client), "factorflow_dead_letters",
                                       status="resolved") == 1.0,
                         "the retried dead letter is resolved")
            finally:
                workflows.close()
            resolved = scrape(client)
    assert change(after, retrying, "factorflow_dead_letters", status="open") == -1.0
    assert changes(after, resolved, "factorflow_dead_letters") == {
        ("factorflow_dead_letters", frozenset({("status", "open")})): -1.0,
        ("factorflow_dead_letters", frozenset({("status", "resolved")})): 1.0}
    assert changes(after, resolved, "factorflow_action_results") == {
        ("factorflow_action_results", frozenset({("kind", "webhook"), ("status", "dead")})): -1,
        ("factorflow_action_results", frozenset({("kind", "webhook"), ("status", "done")})): 1}


def test_workflow_states_per_org(tmp_path: Path) -> None:
    """Two workflow slots and a webhook target that hangs: two running, the rest enqueued; one
    of those cancelled; a workflow that fails; all finished once the target answers."""
    with HeldPeer() as peer:
        rules = ("version: 1\nmatch: all\nrules:\n  - id: notify\n"
                 "    when: {kind: [enrollment]}\n    actions:\n"
                 f'      - {{id: hook, kind: webhook, params: {{url: "{peer.url()}", '
                 "secret: peer, type: mfa.enrolled}}\n")
        settings = worker_settings(
            tmp_path, rules, workflows={"worker_concurrency": 2},
            pipeline={"retry": {"webhook": {"max_attempts": 100, "initial_seconds": 0.2,
                                            "max_seconds": 1.0}}})
        events = [okta_event() for _ in range(5)]
        uuids = [e["uuid"] for e in events]
        peer.close_gate()
        with running(settings, worker=True) as client:
            before = scrape(client)
            assert client.post(HOOK, content=envelope(*events), headers=AUTH).status_code == 204
            assert peer.wait_for_in_flight(2, DEADLINE)
            wait_for(lambda: value(scrape(client), "factorflow_workflows", org="default",
                                   state="enqueued") == 3.0, "three wait their turn")
            stuck = scrape(client)
            # One that waits is cancelled (as with `dbos workflow cancel`).
            waiting = [u for u in uuids
                       if DBOS.get_workflow_status(u).status == "ENQUEUED"]  # type: ignore[union-attr]
            DBOS.cancel_workflow(waiting[0])
            cancelled = scrape(client)
            # A workflow that fails: a dead-letter retry of a request it cannot read.
            with SetWorkflowID(f"broken-{uuidlib.uuid4()}"), \
                    SetEnqueueOptions(queue_partition_key="default"):
                DBOS.enqueue_workflow(ORG_QUEUE, process.retry_dead_letter, 0, uuids[0], {},
                                      "test")
            peer.open_gate()
            wait_for(lambda: len(results(store_of(client), uuids)) == 4,
                     "the other four events are carried out")
            wait_for(lambda: value(scrape(client), "factorflow_workflows", org="default",
                                   state="failed") == 1.0, "the broken workflow fails")
            wait_for(lambda: not {k for k, v in scrape(client).items()
                                  if k[0] == "factorflow_workflows" and v
                                  and ("state", "running") in k[1]}, "nothing runs")
            after = scrape(client)
    assert changes(before, stuck, "factorflow_workflows") == {
        ("factorflow_workflows", frozenset({("org", "default"), ("state", s)})): n
        for s, n in [("running", 2.0), ("enqueued", 3.0)]}
    assert changes(stuck, cancelled, "factorflow_workflows") == {
        ("factorflow_workflows", frozenset({("org", "default"), ("state", s)})): n
        for s, n in [("enqueued", -1.0), ("cancelled", 1.0)]}
    assert changes(before, after, "factorflow_workflows") == {
        ("factorflow_workflows", frozenset({("org", "default"), ("state", s)})): 1.0
        for s in ("cancelled", "failed")}
    store = open_store(settings.store_url())
    try:
        assert {status for _uuid, _action, status in results(store, uuids)} == {"done"}
    finally:
        store.close()


def test_okta_rate_limit_after_a_429(tmp_path: Path) -> None:
    """The org's users bucket allows one call per window and someone else used it: the
    worker's enrichment gets Okta's 429 with the rate-limit headers, and /metrics shows
    them; once the window has passed the event is decided."""
    with simulated_okta(users=5, seed=8, start=time.time(),
                        rate_limits={"/api/v1/users/{id}": 1},
                        rate_limit_window_seconds=1.0) as okta:
        user = okta.active_users()[0]
        settings = worker_settings(tmp_path, okta=okta.settings(
            max_wait_seconds=0, reconcile_interval_seconds=0))
        okta.client().get_user(user.id)  # the bucket is used up
        event = enrollment_event(actor=user.ref(), target_user=user.ref())
        bucket = "/api/v1/users/{id}"
        with running(settings, worker=True) as client:
            before = scrape(client)
            assert client.post(HOOK, content=envelope(event), headers=AUTH).status_code == 204
            wait_for(lambda: 429 in okta.sim.statuses(bucket), "Okta answers 429")
            wait_for(lambda: value(scrape(client), "factorflow_okta_rate_limit_remaining",
                                   org="default", bucket=bucket) is not None,
                     "the worker records Okta's answer")
            throttled = scrape(client)
            okta.clock.advance(5.0)  # a new window
            wait_for(lambda: value(scrape(client), "factorflow_facts", status="decided") == 1.0,
                     "the event is decided once Okta answers")
    assert okta.sim.statuses(bucket)[:2] == [200, 429]
    assert value(before, "factorflow_okta_rate_limit_remaining", org="default",
                 bucket=bucket) is None
    assert value(throttled, "factorflow_okta_rate_limit_remaining", org="default",
                 bucket=bucket) == 0.0
    assert value(throttled, "factorflow_okta_rate_limit_limit", org="default",
                 bucket=bucket) == 1.0


def test_workers_alive_dead_taken_over_and_stopped(tmp_path: Path) -> None:
    settings = worker_settings(tmp_path, workflows={"heartbeat_seconds": 0.2,
                                                    "dead_after_seconds": 1.0})
    with running(settings) as receiver:
        before = scrape(receiver)
        # A worker that last beat ten minutes ago and left nothing running.
        long_ago = format_utc(datetime.now(UTC) - timedelta(minutes=10))
        ghost = WorkerRegistry(store_of(receiver), "ghost",
                               settings.workflows.application_version, clock=lambda: long_ago)
        assert ghost.register(long_ago) is None
        dead = scrape(receiver)
    assert changes(before, dead, "factorflow_workers") == {
        ("factorflow_workers", frozenset({("state", "dead")})): 1.0}
    with running(settings, worker=True) as worker:
        wait_for(lambda: value(scrape(worker), "factorflow_workers", state="taken_over") == 1.0,
                 "the live worker takes the dead one over")
        live = scrape(worker)
    assert changes(dead, live, "factorflow_workers") == {
        ("factorflow_workers", frozenset({("state", s)})): n
        for s, n in [("alive", 1.0), ("dead", -1.0), ("taken_over", 1.0)]}
    with running(settings) as receiver:
        after = scrape(receiver)
    assert changes(live, after, "factorflow_workers") == {
        ("factorflow_workers", frozenset({("state", s)})): n
        for s, n in [("alive", -1.0), ("stopped", 1.0)]}


# -- every family has a test ------------------------------------------------------------------


def test_every_exported_family_has_a_test(tmp_path: Path) -> None:
    """The families of a receiver with a worker and an Okta org (everything there is); the
    list above must name exactly these, and only tests that exist."""
    with simulated_okta(users=5) as okta:
        settings = make_settings(tmp_path, okta=okta.settings(reconcile_interval_seconds=0))
        app = build_app(settings, worker=True)  # assembled, not started
        try:
            exported = families(generate_latest(app.metrics.registry).decode())
        finally:
            app.background.resources.close()  # type: ignore[union-attr]
            for close in app._on_close:
                close()
            app.store.close()
    assert exported == set(TESTED)
    tests = {name for name, item in globals().items() if name.startswith("test_")
             and callable(item)}
    assert {name for names in TESTED.values() for name in names} <= tests


# -- [metrics] port, in real processes --------------------------------------------------------


def _get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=10.0)


def _slow_body(port: int) -> socket.socket:
    """A delivery whose body never finishes arriving (the server cuts it off with 408)."""
    sock = socket.create_connection((HOST, port), timeout=30)
    sock.sendall(f"POST {HOOK} HTTP/1.1\r\nHost: x\r\nAuthorization: {SECRET}\r\n"
                 "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode())
    return sock


@pytest.mark.slow
@pytest.mark.parametrize("on_main_port", [False, True])
def test_serve_answers_metrics_on_its_own_port(tmp_path: Path, on_main_port: bool) -> None:
    port = free_port()
    env = {"FACTORFLOW_METRICS__PORT": str(port),
           "FACTORFLOW_METRICS__ON_MAIN_PORT": str(on_main_port).lower()}
    with ServerProcess(tmp_path, secret=SECRET, env=env,
                       args=() if on_main_port else ("--no-worker",)) as server:
        server.start()
        metrics_url = f"http://{HOST}:{port}/metrics"
        before = parse(_get(metrics_url).text)
        main_answer = _get(server.base_url + "/metrics")
        assert main_answer.status_code == (200 if on_main_port else 404)
        assert _get(f"http://{HOST}:{port}/healthz").status_code == 404  # only /metrics
        slow = _slow_body(server.port)
        assert server.post(envelope(okta_event())).status_code == 204
        try:
            assert slow.recv(100).startswith(b"HTTP/1.1 408")
        finally:
            slow.close()
        after = parse(_get(metrics_url).text)
        assert change(before, after, "factorflow_deliveries_total", org="default") == 1.0
        assert change(before, after, "factorflow_requests_rejected_total", org="default",
                      reason="body_timeout") == 1.0
        if on_main_port:  # the same registry on both ports
            assert families(main_answer.text) == families(_get(metrics_url).text)
        assert server.terminate() == 0
        with pytest.raises(httpx.ConnectError):
            _get(metrics_url)  # stopped with the process
        log = server.log_text()
    assert f"factorflow metrics on http://{HOST}:{port}/metrics" in log
    assert SECRET not in log


@pytest.mark.slow
def test_worker_answers_metrics_on_its_own_port(tmp_path: Path) -> None:
    port = free_port()
    settings = worker_settings(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACTORFLOW_")}
    env.update({"FACTORFLOW_DATA_DIR": str(tmp_path), "FACTORFLOW_HOOK__SECRET": SECRET,
                "FACTORFLOW_METRICS__PORT": str(port),
                "FACTORFLOW_WORKFLOWS__RELAY_INTERVAL_SECONDS": "0.1",
                "FACTORFLOW_WORKFLOWS__QUEUE_POLLING_SECONDS": "0.1"})
    event = okta_event()
    with running(settings) as receiver:  # stores the event; the worker process relays it
        assert receiver.post(HOOK, content=envelope(event), headers=AUTH).status_code == 204
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "factorflow.cli", "worker"],
                                  cwd=tmp_path, env=env, stdout=log, stderr=log)
        try:
            metrics_url = f"http://{HOST}:{port}/metrics"

            def decided() -> bool:
                with contextlib.suppress(httpx.TransportError):
                    samples = parse(_get(metrics_url).text)
                    return value(samples, "factorflow_facts", status="decided") == 1.0
                return False

            wait_for(decided, "the worker decides the event and says so on its port")
            text = _get(metrics_url).text
            assert value(parse(text), "factorflow_workers", state="alive") == 1.0
            # What a worker knows: the store, its workflows; no receiver counters.
            assert "factorflow_workflows" in families(text)
            assert "factorflow_deliveries" not in families(text)
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(60) == 0
            with pytest.raises(httpx.ConnectError):
                _get(metrics_url)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
    assert SECRET not in log_path.read_text()


@pytest.mark.parametrize(("variables", "message"), [
    ({"FACTORFLOW_METRICS__PORT": "70000"},
     "metrics.port: Input should be less than or equal to 65535 (from environment variable "
     "FACTORFLOW_METRICS__PORT)"),
    ({"FACTORFLOW_METRICS__PORT": "nine"}, "metrics.port: Input should be a valid integer"),
    ({"FACTORFLOW_METRICS__PORT": "8080"},
     "metrics.port 8080 is server.port: give the metrics a port of their own"),
    ({"FACTORFLOW_METRICS__ON_MAIN_PORT": "false"},
     "metrics: Value error, on_main_port = false needs a port"),
])
def test_a_bad_metrics_port_is_a_config_error(
    tmp_path: Path, variables: dict[str, str], message: str
) -> None:
    env = {"FACTORFLOW_DATA_DIR": str(tmp_path), **variables}
    result = CliRunner().invoke(main, ["config", "check"], env=env)
    assert result.exit_code == 1
    assert message in result.output
    assert not (tmp_path / "factorflow.db").exists()


@pytest.mark.slow
def test_a_metrics_port_in_use_stops_serve_with_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FACTORFLOW_")}
        env.update({"FACTORFLOW_DATA_DIR": str(tmp_path / "data"),
                    "FACTORFLOW_HOOK__SECRET": SECRET, "FACTORFLOW_METRICS__PORT": str(port)})
        done = subprocess.run(
            [sys.executable, "-m", "factorflow.cli", "serve", "--no-worker", "--port",
             str(free_port())], cwd=tmp_path, env=env, capture_output=True, timeout=120)
    assert done.returncode == 1
    assert f"metrics: cannot listen on {HOST}:{port}: Address already in use" in \
        done.stderr.decode()
