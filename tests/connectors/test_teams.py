"""The Microsoft Teams connector against a local double of Teams webhooks on 127.0.0.1.

Two kinds of webhook are served, with the shapes they are documented and observed to have:

* a Workflows webhook (``/workflows/<id>/triggers/manual/paths/invoke?api-version=...&sig=...``):
  the ``sig`` query parameter is the credential (401 ``DirectApiAuthorizationRequired`` /
  ``DirectApiInvalidAuthorizationSignature`` otherwise); the body must be a ``message`` with
  Adaptive Card attachments (400 ``TriggerInputSchemaMismatch`` otherwise); success is 202 with
  no body; throttling is 429 ``WorkflowRequestsThrottled`` with ``Retry-After``.
* a legacy Office 365 incoming webhook (``/webhookb2/.../IncomingWebhook/...``): success is
  200 with the body ``1``; a failed delivery is also 200, with the text ``Webhook message
  delivery failed with error: Microsoft Teams endpoint returned HTTP error <status> ...``.

Posted cards are kept per channel. Tests queue one-off answers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
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
from factorflow.rules import evaluate, parse_rules
from tests.conftest import WATCHED_SECRETS
from tests.connectors.fakes import FACT, Double, Got, Reply, json_reply, serving, unused_port

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
FLOW_ID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
FLOW_PATH = f"/workflows/{FLOW_ID}/triggers/manual/paths/invoke"
SIG = "SigSecretPart-3uYw9n2Kq8LxZp4RtVb7"
FLOW_QUERY = f"api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={SIG}"
LEGACY_PATH = ("/webhookb2/6f0c2c4e-1111-2222-3333-444455556666@0a1b2c3d-7777-8888-9999-"
               "aaaabbbbcccc/IncomingWebhook/LegacySecretPart42/9d8c7b6a-0000-1111-2222-333344445555")
WATCHED_SECRETS.update({SIG, "LegacySecretPart42"})  # never in a log line


def _error(status: int, code: str, message: str, **headers: str) -> Reply:
    return json_reply(status, {"error": {"code": code, "message": message}},
                      content_type="application/json; charset=utf-8", **headers)


class FakeTeams(Double):
    def __init__(self) -> None:
        self.cards: dict[str, list[dict[str, Any]]] = {"flow": [], "legacy": []}
        self.lock = threading.Lock()

    @property
    def flow_url(self) -> str:
        return f"{self.url}{FLOW_PATH}?{FLOW_QUERY}"

    @property
    def legacy_url(self) -> str:
        return f"{self.url}{LEGACY_PATH}"

    def then(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.server.then(status, body, headers=headers)

    def __call__(self, got: Got) -> Reply:
        if got.method == "POST" and got.path == FLOW_PATH:
            return self._flow(got)
        if got.method == "POST" and got.path == LEGACY_PATH:
            return self._legacy(got)
        return _error(404, "WorkflowNotFound", "The workflow could not be found.")

    def _flow(self, got: Got) -> Reply:
        sig = got.query.get("sig")
        if sig is None:
            return _error(401, "DirectApiAuthorizationRequired",
                          "The request must be authenticated only by Shared Access scheme.")
        if sig != SIG:
            return _error(401, "DirectApiInvalidAuthorizationSignature",
                          "The provided authorization signature is invalid.")
        problem = _card_problem(got)
        if problem is not None:
            return _error(400, "TriggerInputSchemaMismatch",
                          "The input body for trigger 'manual' of type 'Request' did not match "
                          f"its schema definition. Error details: '{problem}'.")
        with self.lock:
            self.cards["flow"].append(got.json()["attachments"][0]["content"])
        return 202, {}, b""

    def _legacy(self, got: Got) -> Reply:
        if _card_problem(got) is not None:
            return 400, {"content-type": "text/plain"}, (
                b"Bad payload received by generic incoming webhook.")
        with self.lock:
            self.cards["legacy"].append(got.json()["attachments"][0]["content"])
        return 200, {"content-type": "text/plain; charset=utf-8"}, b"1"


def _card_problem(got: Got) -> str | None:
    try:
        data = got.json()
    except orjson.JSONDecodeError:
        return "Invalid JSON"
    if not isinstance(data, dict) or data.get("type") != "message":
        return "Invalid type. Expected 'message'."
    attachments = data.get("attachments")
    if not isinstance(attachments, list) or not attachments:
        return "Required property 'attachments' not found."
    for attachment in attachments:
        if attachment.get("contentType") != "application/vnd.microsoft.card.adaptive":
            return "Invalid contentType."
        content = attachment.get("content") or {}
        if content.get("type") != "AdaptiveCard" or not content.get("version"):
            return "Invalid card."
    return None


@pytest.fixture
def teams() -> Iterator[FakeTeams]:
    with serving(FakeTeams()) as fake:
        yield fake


def connector(http: httpx.Client, **values: Any) -> ActionHandler:
    (handler,) = build_connectors({"teams": values}, http, lambda: NOW)
    return handler


def request(params: dict[str, Any] | None = None, *, action_id: str = "notify") -> ActionRequest:
    return ActionRequest(
        rule_id="privileged", action_id=action_id, kind="teams", params=params or {},
        idempotency_key=idempotency_key(FACT.uuid, "privileged", action_id),
    )


def footer(req: ActionRequest) -> str:
    return f"factorflow · Okta event {FACT.uuid} · key {req.idempotency_key}"


def no_secret(text: str) -> bool:
    return SIG not in text and "LegacySecretPart" not in text and FLOW_ID not in text


RULES = """
version: 1
match: all
rules:
  - id: privileged
    when: {kind: [enrollment]}
    actions:
      - id: notify
        kind: teams
        params:
          title: "{{ fact.factor.type | upper }} enrolled"
          text: "**{{ fact.user.login }}** enrolled {{ fact.factor.type }} from {{ fact.client.country }}"
"""  # noqa: E501


# -- the request Teams receives ------------------------------------------------------------


def test_a_rule_action_becomes_one_adaptive_card_on_the_workflow(
    teams: FakeTeams, http: httpx.Client
) -> None:
    decision = evaluate(parse_rules(RULES, source="rules.yaml"), FACT,
                        Enrichment(source="none", found=False))
    (action,) = decision.actions
    outcome = connector(http, webhook_url=teams.flow_url).perform(action, FACT)

    assert outcome.status is OutcomeStatus.DONE
    assert outcome.reference == "HTTP 202"
    assert outcome.detail == "posted to Teams webhook 'default' (http://127.0.0.1): HTTP 202"
    (got,) = teams.received
    assert (got.method, got.path, got.raw_query) == ("POST", FLOW_PATH, FLOW_QUERY)
    assert got.headers["content-type"] == "application/json"
    assert "authorization" not in got.headers  # the URL's signature is the credential
    assert got.json() == {
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": None,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    {"type": "TextBlock", "text": "EMAIL enrolled", "weight": "Bolder",
                     "size": "Medium", "wrap": True},
                    {"type": "TextBlock", "text": "**aps@google.com** enrolled email from India",
                     "wrap": True},
                    {"type": "FactSet", "facts": [
                        {"title": "User", "value": "aps@google.com"},
                        {"title": "Factor", "value": "email"},
                        {"title": "Strength", "value": "sms_voice_email"},
                        {"title": "Enrolled by", "value": "self"},
                        {"title": "Time", "value": "2023-01-30T14:18:01.558000Z"},
                    ]},
                    {"type": "TextBlock", "text": footer(action), "size": "Small",
                     "isSubtle": True, "wrap": True},
                ],
            },
        }],
    }
    assert len(teams.cards["flow"]) == 1


def test_without_params_the_card_is_built_from_the_fact(
    teams: FakeTeams, http: httpx.Client
) -> None:
    outcome = connector(http, webhook_url=teams.legacy_url).perform(request(), FACT)

    assert outcome.status is OutcomeStatus.DONE
    assert outcome.reference == "HTTP 200"
    (card,) = teams.cards["legacy"]
    assert card["body"][0]["text"] == "MFA factor enrolled"
    assert card["body"][1]["text"] == "aps@google.com enrolled email (sms_voice_email)"
    assert card["body"][3]["text"] == footer(request())


def test_a_rule_picks_a_named_channel(teams: FakeTeams, http: httpx.Client) -> None:
    handler = connector(http, webhook_url=teams.legacy_url,
                        channels={"secops": teams.flow_url})
    named = handler.perform(request({"channel": "secops"}), FACT)
    default = handler.perform(request(action_id="other"), FACT)

    assert named.detail == "posted to Teams webhook 'secops' (http://127.0.0.1): HTTP 202"
    assert default.detail == "posted to Teams webhook 'default' (http://127.0.0.1): HTTP 200"
    assert [got.path for got in teams.received] == [FLOW_PATH, LEGACY_PATH]
    assert len(teams.cards["flow"]) == len(teams.cards["legacy"]) == 1


def test_an_unknown_or_missing_channel_is_permanent_and_nothing_is_sent(
    teams: FakeTeams, http: httpx.Client
) -> None:
    only_named = connector(http, channels={"secops": teams.flow_url, "helpdesk": teams.flow_url})
    with pytest.raises(PermanentActionError) as unknown:
        only_named.perform(request({"channel": "finance"}), FACT)
    with pytest.raises(PermanentActionError) as missing:
        only_named.perform(request(), FACT)

    assert str(unknown.value) == (
        "teams action privileged/notify: params.channel 'finance' is not a configured Teams "
        "channel (configured: helpdesk, secops)")
    assert str(missing.value) == (
        "teams action privileged/notify: params.channel is required (connectors.teams has no "
        "webhook_url; configured channels: helpdesk, secops)")
    assert teams.received == []


def test_a_repeat_posts_again_and_carries_the_same_key(
    teams: FakeTeams, http: httpx.Client
) -> None:
    # Teams has no idempotency mechanism and a webhook cannot be searched: the pipeline's ledger
    # prevents repeats, and only a crash between the POST and that record repeats a card. The
    # footer's key lets a reader recognise the duplicate.
    req = request({"text": "once"})
    first = connector(http, webhook_url=teams.flow_url).perform(req, FACT)
    again = connector(http, webhook_url=teams.flow_url).perform(req, FACT)
    other = connector(http, webhook_url=teams.flow_url).perform(request(action_id="x"), FACT)

    assert [o.status for o in (first, again, other)] == [OutcomeStatus.DONE] * 3
    footers = [card["body"][3]["text"] for card in teams.cards["flow"]]
    assert footers == [footer(req), footer(req), footer(request(action_id="x"))]


# -- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "headers", "body", "retry_after"), [
    (429, {"Retry-After": "17"}, orjson.dumps({"error": {
        "code": "WorkflowRequestsThrottled",
        "message": "Number of requests exceeded the limit of 100 over time window of "
                   "'00:00:05'."}}), 17.0),
    (500, {}, b"", None),
    (502, {}, b"<html>Bad Gateway</html>", None),
    (503, {"Retry-After": "60"}, b"", 60.0),
    (504, {}, b"", None),
])
def test_throttling_and_server_errors_are_transient(
    teams: FakeTeams, http: httpx.Client, status: int, headers: dict[str, str], body: bytes,
    retry_after: float | None,
) -> None:
    teams.then(status, body, **headers)
    with pytest.raises(TransientActionError) as caught:
        connector(http, webhook_url=teams.flow_url).perform(request(), FACT)

    assert str(caught.value).startswith(
        f"teams action privileged/notify: POST Teams webhook 'default' (http://127.0.0.1): "
        f"HTTP {status}")
    assert caught.value.retry_after == retry_after
    assert caught.value.__cause__ is None
    assert no_secret(str(caught.value))
    assert teams.cards["flow"] == []


@pytest.mark.parametrize(("status", "retry"), [(429, True), (502, True), (413, False),
                                               (400, False)])
def test_a_legacy_delivery_failure_reported_as_200_is_classified_by_its_status(
    teams: FakeTeams, http: httpx.Client, status: int, retry: bool
) -> None:
    text = (f"Webhook message delivery failed with error: Microsoft Teams endpoint returned "
            f"HTTP error {status} with ContextId tcid=0,server=msgapi-production-eus-azsc2-4-170,"
            f"cv=wUmM9kBhpkiOZnT3ZEwhdg.0..")
    teams.then(200, text.encode(), content_type="text/plain; charset=utf-8")
    with pytest.raises(TransientActionError if retry else PermanentActionError) as caught:
        connector(http, webhook_url=teams.legacy_url).perform(request(), FACT)

    assert str(caught.value) == (
        f"teams action privileged/notify: POST Teams webhook 'default' (http://127.0.0.1): "
        f"HTTP 200, but Teams reports HTTP {status}: {text[:200]}")
    assert no_secret(str(caught.value))
    assert teams.cards["legacy"] == []


def test_a_card_the_workflow_rejects_is_permanent(teams: FakeTeams, http: httpx.Client) -> None:
    teams.then(400, orjson.dumps({"error": {
        "code": "TriggerInputSchemaMismatch",
        "message": "The input body for trigger 'manual' of type 'Request' did not match its "
                   "schema definition."}}), content_type="application/json")
    with pytest.raises(PermanentActionError) as caught:
        connector(http, webhook_url=teams.flow_url).perform(request(), FACT)

    assert str(caught.value) == (
        "teams action privileged/notify: POST Teams webhook 'default' (http://127.0.0.1): "
        'HTTP 400: {"error":{"code":"TriggerInputSchemaMismatch","message":"The input body for '
        "trigger 'manual' of type 'Request' did not match its schema definition.\"}}")
    assert teams.cards["flow"] == []


@pytest.mark.parametrize(("url_of", "expected"), [
    (lambda t: t.flow_url.replace(SIG, "WrongSignature"),
     'HTTP 401: {"error":{"code":"DirectApiInvalidAuthorizationSignature",'),
    (lambda t: t.flow_url.split("?")[0],
     'HTTP 401: {"error":{"code":"DirectApiAuthorizationRequired",'),
    (lambda t: t.url + "/workflows/deleted/triggers/manual/paths/invoke?sig=" + SIG,
     'HTTP 404: {"error":{"code":"WorkflowNotFound",'),
])
def test_a_wrong_or_deleted_webhook_is_permanent_and_its_url_stays_secret(
    teams: FakeTeams, http: httpx.Client, url_of: Any, expected: str
) -> None:
    with pytest.raises(PermanentActionError) as caught:
        connector(http, webhook_url=url_of(teams)).perform(request(), FACT)

    assert str(caught.value).startswith(
        "teams action privileged/notify: POST Teams webhook 'default' (http://127.0.0.1): "
        + expected)
    assert no_secret(str(caught.value))
    assert "WrongSignature" not in str(caught.value)
    assert teams.cards["flow"] == []


def test_a_webhook_that_does_not_answer_in_time_is_transient(
    teams: FakeTeams, http: httpx.Client
) -> None:
    teams.stall()
    with pytest.raises(TransientActionError) as caught:
        connector(http, webhook_url=teams.flow_url, timeout_seconds=0.5).perform(request(), FACT)

    assert str(caught.value) == (
        "teams action privileged/notify: POST Teams webhook 'default' (http://127.0.0.1): "
        "timed out (ReadTimeout)")


def test_a_webhook_that_is_down_is_transient(http: httpx.Client) -> None:
    port = unused_port()
    handler = connector(http, webhook_url=f"http://127.0.0.1:{port}{FLOW_PATH}?{FLOW_QUERY}")
    with pytest.raises(TransientActionError) as caught:
        handler.perform(request(), FACT)

    assert str(caught.value) == (
        "teams action privileged/notify: POST Teams webhook 'default' (http://127.0.0.1): "
        "ConnectError")


# -- settings ------------------------------------------------------------------------------


def test_the_url_may_come_from_a_file(teams: FakeTeams, http: httpx.Client,
                                      tmp_path: Path) -> None:
    url_file = tmp_path / "teams-url"
    url_file.write_text(teams.flow_url + "\n", encoding="utf-8")
    outcome = connector(http, webhook_url_file=str(url_file)).perform(request(), FACT)

    assert outcome.status is OutcomeStatus.DONE
    assert teams.received[0].query["sig"] == SIG


@pytest.mark.parametrize(("values", "expected"), [
    ({}, "connectors.teams.webhook_url: required (or webhook_url_file, or at least one "
         "connectors.teams.channels entry)"),
    ({"webhook_url": "http://prod-01.westus.logic.azure.com/workflows/x?sig=SECRETPART"},
     "connectors.teams.webhook_url: the URL must use https (http is accepted for a loopback "
     "address only)"),
    ({"webhook_url": "https://x.example/SECRETPART", "webhook_url_file": "url.txt"},
     "connectors.teams.webhook_url and connectors.teams.webhook_url_file are both set; "
     "set one of them"),
    ({"channels": {"sec ops": "https://x.example/SECRETPART"}},
     "connectors.teams.channels.sec ops: a channel name is 1 to 64 letters, digits, '_', '.' "
     "or '-'"),
    ({"channels": {"secops": "SECRETPART"}},
     "connectors.teams.channels.secops: the URL has no host"),
])
def test_invalid_settings_name_the_key(http: httpx.Client, values: dict[str, Any],
                                       expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_connectors({"teams": values}, http)

    assert str(caught.value) == expected
    assert "SECRETPART" not in str(caught.value)


def test_unknown_keys_are_reported_by_the_registry(http: httpx.Client) -> None:
    with pytest.raises(ConfigError) as caught:
        build_connectors({"teams": {"webhook_url": "https://x.example/SECRETPART",
                                    "channel": "general"}}, http)

    assert str(caught.value) == (
        "invalid connector settings:\n  connectors.teams.channel: Extra inputs are not permitted")
    assert "SECRETPART" not in str(caught.value)
