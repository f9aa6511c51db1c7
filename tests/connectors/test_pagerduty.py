"""The PagerDuty connector against a local double of the Events API v2 on 127.0.0.1.

The double serves ``POST /v2/enqueue`` as documented: it validates the event (a 32-character
``routing_key``; ``event_action`` trigger/acknowledge/resolve; for a trigger a ``payload`` with
``summary`` of at most 1024 characters, ``source`` and a ``severity`` of critical, error, warning
or info; a ``dedup_key`` of at most 255 characters) and answers 202 ``{"status": "success",
"message": "Event processed", "dedup_key": ...}`` or 400 ``{"status": "invalid event",
"message": "Event object is invalid", "errors": [...]}``. Alerts are de-duplicated as PagerDuty
does: a trigger with the ``dedup_key`` of an open alert is added to that alert; once resolved, a
new trigger opens a new alert; acknowledge/resolve for no open alert are dropped. Tests queue
one-off answers (429, 5xx).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from factorflow.actions.base import ActionHandler
from factorflow.connectors.registry import build_connectors
from factorflow.domain.actions import ActionRequest, Enrichment, OutcomeStatus, idempotency_key
from factorflow.errors import ConfigError, PermanentActionError, TransientActionError
from factorflow.okta.translate import to_fact
from factorflow.rules import evaluate, parse_rules
from tests.conftest import WATCHED_SECRETS
from tests.connectors.fakes import (
    ACTIVATION,
    FACT,
    Double,
    Got,
    Reply,
    json_reply,
    serving,
    unused_port,
)

ROUTING_KEY = "R0ut1ngK3yF0rTh3Ev3ntsAp1V2xx01a"
assert len(ROUTING_KEY) == 32
WATCHED_SECRETS.add(ROUTING_KEY)  # never in a log line
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

# the same user enrolling again, as a second event
FACT_AGAIN = to_fact({**ACTIVATION, "uuid": "f0000000-a0a8-11ed-a750-9f5fc296ce63"},
                     org="example.okta.com", received_at="2024-05-01T12:05:00.000000Z")


@dataclass
class Alert:
    dedup_key: str
    routing_key: str
    status: str  # triggered, acknowledged, resolved
    summary: str
    log: list[str] = field(default_factory=list)  # event actions applied to it


def _answer(status: int, data: dict[str, Any], **headers: str) -> Reply:
    return json_reply(status, data, **headers)


def _invalid(*errors: str) -> Reply:
    return _answer(400, {"status": "invalid event", "message": "Event object is invalid",
                         "errors": list(errors)})


class FakePagerDuty(Double):
    def __init__(self) -> None:
        self.alerts: list[Alert] = []
        self.dropped: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.counter = 0

    @property
    def api_url(self) -> str:
        return f"{self.url}/v2/enqueue"

    def then(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.server.then(status, body, headers=headers)

    def open_alert(self, dedup_key: str) -> Alert | None:
        return next((a for a in self.alerts
                     if a.dedup_key == dedup_key and a.status != "resolved"), None)

    def __call__(self, got: Got) -> Reply:
        if got.method != "POST" or got.path != "/v2/enqueue":
            return 404, {"content-type": "text/html"}, b"Not Found"
        try:
            event = got.json()
        except orjson.JSONDecodeError:
            return _invalid("Malformed JSON")
        with self.lock:
            return self._enqueue(event)

    def _enqueue(self, event: dict[str, Any]) -> Reply:
        errors = []
        routing_key = event.get("routing_key")
        if not isinstance(routing_key, str) or len(routing_key) != 32:
            errors.append("Length of 'routing_key' is incorrect (should be 32 characters)")
        action = event.get("event_action")
        if action not in ("trigger", "acknowledge", "resolve"):
            errors.append("'event_action' is invalid (must be one of the following: 'trigger', "
                          "'acknowledge' or 'resolve')")
        dedup_key = event.get("dedup_key")
        if dedup_key is not None and len(str(dedup_key)) > 255:
            errors.append("'dedup_key' is too long (maximum is 255 characters)")
        if action == "trigger":
            payload = event.get("payload") or {}
            if not payload.get("summary"):
                errors.append("'payload.summary' is missing or blank")
            elif len(payload["summary"]) > 1024:
                errors.append("'payload.summary' is too long (maximum is 1024 characters)")
            if not payload.get("source"):
                errors.append("'payload.source' is missing or blank")
            if payload.get("severity") not in ("critical", "error", "warning", "info"):
                errors.append("'payload.severity' is invalid (must be one of the following: "
                              "'critical', 'warning', 'error' or 'info')")
        elif not dedup_key:
            errors.append("'dedup_key' is missing or blank")
        if errors:
            return _invalid(*errors)
        if dedup_key is None:
            self.counter += 1
            dedup_key = f"generated-{self.counter:032x}"
        alert = self.open_alert(dedup_key)
        if alert is not None and alert.routing_key != routing_key:
            alert = None
        if action == "trigger":
            if alert is None:
                alert = Alert(dedup_key, routing_key, "triggered", event["payload"]["summary"])
                self.alerts.append(alert)
            alert.log.append("trigger")
        elif alert is None:
            self.dropped.append(event)
        else:
            alert.status = "acknowledged" if action == "acknowledge" else "resolved"
            alert.log.append(action)
        return _answer(202, {"status": "success", "message": "Event processed",
                             "dedup_key": dedup_key})


@pytest.fixture
def pagerduty() -> Iterator[FakePagerDuty]:
    with serving(FakePagerDuty()) as fake:
        yield fake


def connector(fake: FakePagerDuty, http: httpx.Client, **overrides: Any) -> ActionHandler:
    values: dict[str, Any] = {"routing_key": ROUTING_KEY, "api_url": fake.api_url}
    values.update(overrides)
    section = {key: value for key, value in values.items() if value is not None}
    (handler,) = build_connectors({"pagerduty": section}, http, lambda: NOW)
    return handler


def request(params: dict[str, Any] | None = None, *, rule_id: str = "page-admin",
            action_id: str = "page", fact_uuid: str = FACT.uuid) -> ActionRequest:
    return ActionRequest(
        rule_id=rule_id, action_id=action_id, kind="pagerduty", params=params or {},
        idempotency_key=idempotency_key(fact_uuid, rule_id, action_id),
    )


RULES = """
version: 1
match: all
rules:
  - id: page-admin
    when: {kind: [enrollment]}
    actions:
      - id: page
        kind: pagerduty
        params:
          summary: "{{ fact.factor.type }} enrolled for {{ fact.user.login }} from {{ fact.client.ip }}"
          severity: critical
          group: identity
          details:
            runbook: "https://wiki.example.com/runbooks/mfa"
            country: "{{ fact.client.country }}"
"""  # noqa: E501


# -- the event PagerDuty receives ----------------------------------------------------------


def test_a_rule_action_triggers_one_alert_with_the_documented_event(
    pagerduty: FakePagerDuty, http: httpx.Client
) -> None:
    decision = evaluate(parse_rules(RULES, source="rules.yaml"), FACT,
                        Enrichment(source="none", found=False))
    (action,) = decision.actions
    outcome = connector(pagerduty, http).perform(action, FACT)

    assert outcome.status is OutcomeStatus.DONE
    assert outcome.reference == action.idempotency_key
    assert outcome.detail == "PagerDuty trigger: Event processed"
    (got,) = pagerduty.received
    assert (got.method, got.path) == ("POST", "/v2/enqueue")
    assert got.headers["content-type"] == "application/json"
    assert "authorization" not in got.headers  # the routing key in the body routes the event
    assert got.json() == {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": action.idempotency_key,
        "payload": {
            "summary": "email enrolled for aps@google.com from 1.1.1.1",
            "source": "example.okta.com",
            "severity": "critical",
            "timestamp": "2023-01-30T14:18:01.558000Z",
            "component": "email",
            "group": "identity",
            "class": "user.mfa.factor.activate",
            "custom_details": {
                "user": "aps@google.com",
                "user_id": "00u85ek33bjW0rqu75d7",
                "user_name": "aps",
                "factor": "email",
                "strength": "sms_voice_email",
                "enrolled_by": "self",
                "actor": "aps@google.com",
                "event_type": "user.mfa.factor.activate",
                "event_uuid": FACT.uuid,
                "published": "2023-01-30T14:18:01.558000Z",
                "okta_org": "example.okta.com",
                "client_ip": "1.1.1.1",
                "client_country": "India",
                "idempotency_key": action.idempotency_key,
                "runbook": "https://wiki.example.com/runbooks/mfa",
                "country": "India",
            },
        },
        "client": "factorflow",
    }
    (alert,) = pagerduty.alerts
    assert (alert.dedup_key, alert.status, alert.log) == (
        action.idempotency_key, "triggered", ["trigger"])


def test_without_params_the_settings_and_the_fact_fill_the_event(
    pagerduty: FakePagerDuty, http: httpx.Client
) -> None:
    handler = connector(pagerduty, http, severity="info", source="okta-prod", component="mfa",
                        group="iam", client="factorflow-prod",
                        client_url="https://factorflow.example.com/")
    handler.perform(request(), FACT)

    event = pagerduty.received[0].json()
    assert event["payload"]["summary"] == "aps@google.com enrolled email (sms_voice_email)"
    assert {k: event["payload"][k] for k in ("source", "severity", "component", "group")} == {
        "source": "okta-prod", "severity": "info", "component": "mfa", "group": "iam"}
    assert (event["client"], event["client_url"]) == (
        "factorflow-prod", "https://factorflow.example.com/")


def test_a_long_summary_is_cut_to_1024_characters(
    pagerduty: FakePagerDuty, http: httpx.Client
) -> None:
    outcome = connector(pagerduty, http).perform(request({"summary": "s" * 3000}), FACT)

    assert outcome.status is OutcomeStatus.DONE
    assert pagerduty.alerts[0].summary == "s" * 1023 + "…"


# -- one alert per step --------------------------------------------------------------------


def test_the_same_step_twice_and_after_a_crash_gives_one_alert(
    pagerduty: FakePagerDuty, http: httpx.Client
) -> None:
    req = request()
    first = connector(pagerduty, http).perform(req, FACT)
    second = connector(pagerduty, http).perform(req, FACT)  # a fresh instance: after a crash

    assert first.status is second.status is OutcomeStatus.DONE
    assert first.reference == second.reference == req.idempotency_key
    (alert,) = pagerduty.alerts
    assert alert.log == ["trigger", "trigger"]  # PagerDuty added the repeat to the same alert
    assert [g.json()["dedup_key"] for g in pagerduty.received] == [req.idempotency_key] * 2


def test_a_resolve_names_the_trigger_action_and_closes_its_alert(
    pagerduty: FakePagerDuty, http: httpx.Client
) -> None:
    handler = connector(pagerduty, http)
    trigger = request()
    handler.perform(trigger, FACT)
    resolve = request({"event_action": "resolve", "dedup_action": "page-admin/page"},
                      action_id="close")
    outcome = handler.perform(resolve, FACT)

    assert outcome.status is OutcomeStatus.DONE
    assert outcome.reference == trigger.idempotency_key
    assert outcome.detail == "PagerDuty resolve: Event processed"
    assert pagerduty.received[1].json() == {
        "routing_key": ROUTING_KEY, "event_action": "resolve",
        "dedup_key": trigger.idempotency_key,
    }
    (alert,) = pagerduty.alerts
    assert (alert.status, alert.log) == ("resolved", ["trigger", "resolve"])


def test_a_literal_dedup_key_groups_events_and_a_later_trigger_opens_a_new_alert(
    pagerduty: FakePagerDuty, http: httpx.Client
) -> None:
    handler = connector(pagerduty, http)
    per_user = {"dedup_key": "mfa-00u85ek33bjW0rqu75d7"}
    handler.perform(request(per_user), FACT)
    handler.perform(request(per_user, fact_uuid=FACT_AGAIN.uuid), FACT_AGAIN)
    handler.perform(request({**per_user, "event_action": "acknowledge"}, action_id="ack"), FACT)
    handler.perform(request({**per_user, "event_action": "resolve"}, action_id="done"), FACT)
    # after the resolve, the same key opens a new alert (PagerDuty's documented behaviour)
    handler.perform(request(per_user, action_id="again"), FACT)

    assert [(a.dedup_key, a.status, a.log) for a in pagerduty.alerts] == [
        ("mfa-00u85ek33bjW0rqu75d7", "resolved",
         ["trigger", "trigger", "acknowledge", "resolve"]),
        ("mfa-00u85ek33bjW0rqu75d7", "triggered", ["trigger"]),
    ]


def test_a_resolve_for_no_open_alert_is_accepted_and_dropped(
    pagerduty: FakePagerDuty, http: httpx.Client
) -> None:
    outcome = connector(pagerduty, http).perform(
        request({"event_action": "resolve", "dedup_key": "never-triggered"}), FACT)

    assert outcome.status is OutcomeStatus.DONE
    assert outcome.reference == "never-triggered"
    assert pagerduty.alerts == []
    assert [e["dedup_key"] for e in pagerduty.dropped] == ["never-triggered"]


# -- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize(("params", "expected"), [
    ({"severity": "sev1"},
     "params.severity must be one of critical, error, warning, info, not 'sev1'"),
    ({"event_action": "snooze"},
     "params.event_action must be one of trigger, acknowledge, resolve, not 'snooze'"),
    ({"dedup_key": "k", "dedup_action": "r/a"},
     "set params.dedup_key or params.dedup_action, not both"),
    ({"dedup_action": "just-a-rule"},
     "params.dedup_action must be '<rule id>/<action id>'"),
    ({"dedup_key": "k" * 256}, "params.dedup_key is longer than 255 characters"),
    ({"source": "s" * 300}, "params.source is longer than 255 characters"),
    ({"details": ["not", "a", "mapping"]}, "params.details must be a mapping"),
])
def test_unusable_params_are_permanent_and_nothing_is_sent(
    pagerduty: FakePagerDuty, http: httpx.Client, params: dict[str, Any], expected: str
) -> None:
    handler = connector(pagerduty, http)
    handler.perform(request(action_id="earlier"), FACT)
    with pytest.raises(PermanentActionError) as caught:
        handler.perform(request(params), FACT)

    assert str(caught.value) == f"pagerduty action page-admin/page: {expected}"
    assert len(pagerduty.received) == 1
    (alert,) = pagerduty.alerts
    assert alert.log == ["trigger"]


def test_an_event_pagerduty_rejects_is_permanent_with_its_errors(
    pagerduty: FakePagerDuty, http: httpx.Client
) -> None:
    # PagerDuty checks more than factorflow does (the 512 KB limit, its own field rules)
    pagerduty.then(400, orjson.dumps({
        "status": "invalid event", "message": "Event object is invalid",
        "errors": ["'payload.severity' is invalid (must be one of the following: 'critical', "
                   "'warning', 'error' or 'info')"]}), content_type="application/json")
    with pytest.raises(PermanentActionError) as caught:
        connector(pagerduty, http).perform(request(), FACT)

    assert str(caught.value) == (
        f"pagerduty action page-admin/page: POST {pagerduty.api_url}: HTTP 400: "
        '{"status":"invalid event","message":"Event object is invalid","errors":["\'payload.'
        "severity' is invalid (must be one of the following: 'critical', 'warning', 'error' or "
        "'info')\"]}")
    assert ROUTING_KEY not in str(caught.value)
    assert pagerduty.alerts == []


@pytest.mark.parametrize(("status", "headers", "body", "retry_after"), [
    (429, {}, b'{"status":"throttle event","message":"Requests for this service are arriving '
              b'too quickly. Please retry later."}', None),
    (429, {"Retry-After": "30"}, b"", 30.0),
    (500, {}, b"", None),
    (502, {}, b"<html>502 Bad Gateway</html>", None),
    (503, {"Retry-After": "Wed, 01 May 2024 12:01:00 GMT"}, b"", 60.0),
])
def test_throttling_and_server_errors_are_transient(
    pagerduty: FakePagerDuty, http: httpx.Client, status: int, headers: dict[str, str],
    body: bytes, retry_after: float | None,
) -> None:
    pagerduty.then(status, body, **headers)
    handler = connector(pagerduty, http)
    with pytest.raises(TransientActionError) as caught:
        handler.perform(request(), FACT)

    assert str(caught.value).startswith(
        f"pagerduty action page-admin/page: POST {pagerduty.api_url}: HTTP {status}")
    assert caught.value.retry_after == retry_after
    assert ROUTING_KEY not in str(caught.value)
    assert pagerduty.alerts == []
    # the retry lands, once
    assert handler.perform(request(), FACT).status is OutcomeStatus.DONE
    assert len(pagerduty.alerts) == 1


def test_a_server_that_does_not_answer_in_time_is_transient(
    pagerduty: FakePagerDuty, http: httpx.Client
) -> None:
    pagerduty.stall()
    with pytest.raises(TransientActionError) as caught:
        connector(pagerduty, http, timeout_seconds=0.5).perform(request(), FACT)

    assert str(caught.value) == (
        f"pagerduty action page-admin/page: POST {pagerduty.api_url}: timed out (ReadTimeout)")


def test_a_server_that_is_down_is_transient(http: httpx.Client) -> None:
    port = unused_port()
    (handler,) = build_connectors({"pagerduty": {
        "routing_key": ROUTING_KEY, "api_url": f"http://127.0.0.1:{port}/v2/enqueue"}}, http)
    with pytest.raises(TransientActionError) as caught:
        handler.perform(request(), FACT)

    assert str(caught.value) == (
        f"pagerduty action page-admin/page: POST http://127.0.0.1:{port}/v2/enqueue: "
        "ConnectError")


# -- settings ------------------------------------------------------------------------------


def test_the_routing_key_may_come_from_a_file(
    pagerduty: FakePagerDuty, http: httpx.Client, tmp_path: Path
) -> None:
    key_file = tmp_path / "pd-key"
    key_file.write_text(ROUTING_KEY + "\n", encoding="utf-8")
    connector(pagerduty, http, routing_key=None, routing_key_file=str(key_file)).perform(
        request(), FACT)

    assert pagerduty.received[0].json()["routing_key"] == ROUTING_KEY
    assert len(pagerduty.alerts) == 1


@pytest.mark.parametrize(("values", "expected"), [
    ({}, "connectors.pagerduty.routing_key: required (or routing_key_file)"),
    ({"routing_key": "SECRETPART-too-short"},
     "connectors.pagerduty.routing_key: must be the 32-character Integration Key of an "
     "Events API v2 integration (letters and digits)"),
    ({"routing_key": "SECRETPART" + "x" * 21 + " "},
     "connectors.pagerduty.routing_key: must be the 32-character Integration Key of an "
     "Events API v2 integration (letters and digits)"),
    ({"routing_key": ROUTING_KEY, "routing_key_file": "key.txt"},
     "connectors.pagerduty.routing_key and connectors.pagerduty.routing_key_file are both "
     "set; set one of them"),
])
def test_invalid_secrets_name_the_key(http: httpx.Client, values: dict[str, Any],
                                      expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_connectors({"pagerduty": values}, http)

    assert str(caught.value) == expected
    assert "SECRETPART" not in str(caught.value)
    assert ROUTING_KEY not in str(caught.value)


@pytest.mark.parametrize(("values", "expected"), [
    ({"severity": "sev1"},
     "connectors.pagerduty.severity: Input should be 'critical', 'error', 'warning' or 'info'"),
    ({"api_url": "http://events.pagerduty.com/v2/enqueue"},
     "connectors.pagerduty.api_url: Value error, 'http://events.pagerduty.com/v2/enqueue' must "
     "use https (http is accepted for a loopback address only)"),
    ({"client_url": "factorflow.example.com"},
     "connectors.pagerduty.client_url: Value error, 'factorflow.example.com' has no host"),
    ({"service_key": "legacy"}, "connectors.pagerduty.service_key: Extra inputs are not permitted"),
])
def test_invalid_values_are_reported_by_the_registry(
    http: httpx.Client, values: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        build_connectors({"pagerduty": {"routing_key": ROUTING_KEY, **values}}, http)

    assert str(caught.value) == "invalid connector settings:\n  " + expected
    assert ROUTING_KEY not in str(caught.value)
