"""The Jira Cloud connector against a local Jira double on 127.0.0.1.

The double speaks the documented REST v3 shapes: ``POST /rest/api/3/search/jql`` (``jql``,
``fields``, ``maxResults`` in; ``issues[].key``, ``isLast`` out) and ``POST /rest/api/3/issue``
(``fields`` and ``properties`` in; ``id``, ``key``, ``self`` out, 201). It checks Basic auth,
validates the issue as Jira does (project, issue type, a one-line summary of at most 255
characters, labels without spaces, an Atlassian Document Format description) and answers errors
with Jira's ``{"errorMessages": [...], "errors": {field: message}}`` body. Tests can queue
one-off answers (429 with Retry-After, 5xx, a create whose answer is lost).
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from factorflow.actions.base import ActionHandler
from factorflow.connectors.jira import JiraConnector, to_adf
from factorflow.connectors.registry import build_connectors
from factorflow.domain.actions import ActionRequest, Enrichment, OutcomeStatus, idempotency_key
from factorflow.errors import ConfigError, PermanentActionError, TransientActionError
from factorflow.rules import evaluate, parse_rules
from tests.connectors import fakes
from tests.connectors.fakes import FACT, Double, Got, Reply, json_reply, serving, unused_port

EMAIL = "factorflow-bot@example.com"
TOKEN = "ATATT3xFfGF0-test-token-value"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class FakeJira(Double):
    """Issues in memory; projects OPS (id 10000) and SEC (id 10001) with Task and Bug types."""

    PROJECTS: ClassVar[dict[str, str]] = {"OPS": "10000", "SEC": "10001"}
    ISSUE_TYPES: ClassVar[dict[str, str]] = {"Task": "10002", "Bug": "10004"}

    def __init__(self) -> None:
        self.issues: dict[str, dict[str, Any]] = {}
        self.no_create: set[str] = set()  # projects where the account lacks Create issues
        self.lock = threading.Lock()

    # --- what tests read -------------------------------------------------------------------
    def creates(self) -> list[Got]:
        return [r for r in self.received if r.path == "/rest/api/3/issue"]

    def searches(self) -> list[Got]:
        return [r for r in self.received if r.path == "/rest/api/3/search/jql"]

    def then(self, path: str, status: int, body: Any = b"", *, after_effect: bool = False,
             **headers: str) -> None:
        self.server.then(status, body, headers=headers, path=path, after_effect=after_effect)

    # --- the API ---------------------------------------------------------------------------
    def __call__(self, got: Got) -> Reply:
        with self.lock:
            return self._route(got.method, got.path, got.headers, got.data())

    def _route(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        expected = "Basic " + base64.b64encode(f"{EMAIL}:{TOKEN}".encode()).decode()
        if headers.get("authorization") != expected:
            return _json(401, {"errorMessages": [
                "You are not authenticated. Authentication required to perform this operation."
            ], "errors": {}})
        if method == "POST" and path == "/rest/api/3/search/jql":
            return self._search(body)
        if method == "POST" and path == "/rest/api/3/issue":
            return self._create(body)
        return 404, {"content-type": "text/html"}, b"<html><body>Oops, you've found a dead link."

    def _search(self, body: Any) -> Reply:
        if not isinstance(body, dict) or not isinstance(body.get("jql"), str):
            return _json(400, {"errorMessages": [
                "Invalid request payload. Refer to the REST API documentation and try again."]})
        found = re.fullmatch(r'labels\s*=\s*"((?:[^"\\]|\\.)*)"', body["jql"])
        if found is None:
            return _json(400, {"errorMessages": [f"Error in the JQL Query: {body['jql']}"],
                               "errors": {}, "warningMessages": []})
        label = re.sub(r"\\(.)", r"\1", found.group(1))
        hits = [issue for issue in self.issues.values() if label in issue["fields"]["labels"]]
        limit = int(body.get("maxResults", 50))
        return _json(200, {
            "issues": [{"id": i["id"], "key": i["key"], "self": i["self"]} for i in hits[:limit]],
            "isLast": len(hits) <= limit,
        })

    def _create(self, body: Any) -> Reply:
        fields = body.get("fields") if isinstance(body, dict) else None
        if not isinstance(fields, dict):
            return _json(400, {"errorMessages": ["Issue must have fields"], "errors": {}})
        errors: dict[str, str] = {}
        project = fields.get("project") or {}
        project_key = project.get("key") or next(
            (k for k, v in self.PROJECTS.items() if v == project.get("id")), None)
        if project_key not in self.PROJECTS:
            errors["project"] = "valid project is required"
        issue_type = fields.get("issuetype") or {}
        if issue_type.get("name") not in self.ISSUE_TYPES and issue_type.get(
                "id") not in self.ISSUE_TYPES.values():
            errors["issuetype"] = "The issue type selected is invalid."
        summary = fields.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            errors["summary"] = "You must specify a summary of the issue."
        elif "\n" in summary or "\r" in summary:
            errors["summary"] = "The summary is invalid because it contains newline characters."
        elif len(summary) > 255:
            errors["summary"] = "Summary must be less than 255 characters."
        for label in fields.get("labels", []):
            if re.search(r"\s", label):
                errors["labels"] = f"The label '{label}' contains spaces which is invalid."
        if "description" in fields and not _is_adf(fields["description"]):
            errors["description"] = (
                "Operation value must be an Atlassian Document (see the Atlassian Document "
                "Format)")
        if errors:
            return _json(400, {"errorMessages": [], "errors": errors})
        if project_key in self.no_create:
            return _json(403, {"errorMessages": [
                "You do not have permission to create issues in this project."], "errors": {}})
        number = len(self.issues) + 1
        issue_id = str(10000 + number)
        key = f"{project_key}-{number}"
        self.issues[key] = {
            "id": issue_id, "key": key, "self": f"{self.url}/rest/api/3/issue/{issue_id}",
            "fields": fields, "properties": {
                p["key"]: p["value"] for p in body.get("properties", [])},
        }
        return _json(201, {"id": issue_id, "key": key,
                           "self": f"{self.url}/rest/api/3/issue/{issue_id}"})


def _json(status: int, body: Any) -> Reply:
    return json_reply(status, body, content_type="application/json;charset=UTF-8")


def _is_adf(node: Any) -> bool:
    if not isinstance(node, dict) or node.get("type") != "doc" or node.get("version") != 1:
        return False
    for paragraph in node.get("content", []):
        if paragraph.get("type") != "paragraph":
            return False
        for inline in paragraph.get("content", []):
            if inline.get("type") == "text" and isinstance(inline.get("text"), str):
                if not inline["text"]:
                    return False  # ADF text nodes must not be empty
            elif inline.get("type") != "hardBreak":
                return False
    return True


@pytest.fixture
def jira() -> Iterator[FakeJira]:
    with serving(FakeJira()) as fake:
        yield fake


def section(fake: FakeJira, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "base_url": fake.url, "email": EMAIL, "api_token": TOKEN, "project": "OPS",
        "labels": ["mfa", "okta"],
    }
    values.update(overrides)
    return {key: value for key, value in values.items() if value is not None}


def connector(fake: FakeJira, http: httpx.Client, **overrides: Any) -> ActionHandler:
    (handler,) = build_connectors({"jira": section(fake, **overrides)}, http, lambda: NOW)
    return handler


def request(params: dict[str, Any] | None = None, *, action_id: str = "ticket") -> ActionRequest:
    return ActionRequest(
        rule_id="admin-enroll", action_id=action_id, kind="jira", params=params or {},
        idempotency_key=idempotency_key(FACT.uuid, "admin-enroll", action_id),
    )


def label_of(req: ActionRequest) -> str:
    return f"factorflow-{req.idempotency_key}"


# --- the request Jira receives ---------------------------------------------------------------

RULES = """
version: 1
match: all
rules:
  - id: admin-enroll
    when: {kind: [enrollment]}
    actions:
      - id: ticket
        kind: jira
        params:
          summary: "Review {{ fact.factor.type }} enrollment of {{ fact.user.login }}"
          description: |
            {{ fact.user.display_name }} enrolled {{ fact.factor.type }}.
            Client IP: {{ fact.client.ip }}

            Please confirm with the user.
          labels: ["factor-{{ fact.factor.type }}", "needs review"]
          fields:
            priority: {name: High}
            labels: ["from fields"]
"""


def test_a_rule_action_becomes_one_issue_with_the_documented_requests(
    jira: FakeJira, http: httpx.Client
) -> None:
    decision = evaluate(parse_rules(RULES, source="rules.yaml"), FACT,
                        Enrichment(source="none", found=False))
    (action,) = decision.actions
    outcome = connector(jira, http).perform(action, FACT)

    assert outcome.status is OutcomeStatus.DONE
    assert outcome.reference == "OPS-1"
    assert outcome.detail == f"{jira.url}/browse/OPS-1"
    search, create = jira.received
    basic = "Basic " + base64.b64encode(f"{EMAIL}:{TOKEN}".encode()).decode()
    for sent in (search, create):
        assert sent.method == "POST"
        assert sent.headers["authorization"] == basic
        assert sent.headers["content-type"] == "application/json"
        assert sent.headers["accept"] == "application/json"
    assert search.path == "/rest/api/3/search/jql"
    assert search.data() == {
        "jql": f'labels = "{label_of(action)}"', "fields": ["key"], "maxResults": 1}
    assert create.path == "/rest/api/3/issue"
    assert create.data() == {
        "fields": {
            "project": {"key": "OPS"},
            "issuetype": {"name": "Task"},
            "summary": "Review email enrollment of aps@google.com",
            "description": {"type": "doc", "version": 1, "content": [
                {"type": "paragraph", "content": [
                    {"type": "text", "text": "aps enrolled email."},
                    {"type": "hardBreak"},
                    {"type": "text", "text": "Client IP: 1.1.1.1"},
                ]},
                {"type": "paragraph", "content": [
                    {"type": "text", "text": "Please confirm with the user."}]},
            ]},
            "priority": {"name": "High"},
            # settings labels, rule labels (a space becomes "_"), then the idempotency label
            "labels": ["mfa", "okta", "factor-email", "needs_review", "from_fields",
                       label_of(action)],
        },
        "properties": [{"key": "factorflow", "value": {
            "idempotency_key": action.idempotency_key, "event_uuid": FACT.uuid,
            "rule_id": "admin-enroll", "action_id": "ticket"}}],
    }
    assert list(jira.issues) == ["OPS-1"]
    assert jira.issues["OPS-1"]["properties"]["factorflow"]["idempotency_key"] == (
        action.idempotency_key)


def test_without_params_the_issue_is_described_from_the_fact(
    jira: FakeJira, http: httpx.Client
) -> None:
    outcome = connector(jira, http, labels=None).perform(request(), FACT)

    assert (outcome.status, outcome.reference) == (OutcomeStatus.DONE, "OPS-1")
    fields = jira.issues["OPS-1"]["fields"]
    assert fields["summary"] == "MFA factor enrolled: email for aps@google.com"
    assert fields["issuetype"] == {"name": "Task"}
    assert fields["labels"] == [label_of(request())]
    lines = [node["text"] for paragraph in fields["description"]["content"]
             for node in paragraph["content"] if node["type"] == "text"]
    assert lines[0] == f"Event: user.mfa.factor.activate ({FACT.uuid})"
    assert "User: aps <aps@google.com>" in lines
    assert "Changed by: aps <aps@google.com> (self)" in lines
    assert "Factor: email (sms_voice_email)" in lines
    assert "Rule: admin-enroll / action ticket" in lines


def test_params_choose_project_and_type_by_key_name_or_id(
    jira: FakeJira, http: httpx.Client
) -> None:
    handler = connector(jira, http)
    by_name = handler.perform(request({"project": "SEC", "issue_type": "Bug"}, action_id="a"),
                              FACT)
    by_id = handler.perform(request({"project": 10001, "issue_type": "10004"}, action_id="b"),
                            FACT)

    assert (by_name.reference, by_id.reference) == ("SEC-1", "SEC-2")
    first, second = (c.data()["fields"] for c in jira.creates())
    assert (first["project"], first["issuetype"]) == ({"key": "SEC"}, {"name": "Bug"})
    assert (second["project"], second["issuetype"]) == ({"id": "10001"}, {"id": "10004"})


def test_long_texts_are_cut_to_what_jira_takes(jira: FakeJira, http: httpx.Client) -> None:
    summary = "First line\nsecond line " + "x" * 400
    outcome = connector(jira, http).perform(
        request({"summary": summary, "description": "y" * 40_000}), FACT)

    assert outcome.status is OutcomeStatus.DONE
    fields = jira.issues["OPS-1"]["fields"]
    assert len(fields["summary"]) == 255
    assert fields["summary"].startswith("First line second line xxx")
    assert fields["summary"].endswith("\u2026")
    (paragraph,) = fields["description"]["content"]
    (text,) = paragraph["content"]
    assert text["text"] == "y" * 31_999 + "\u2026"


def test_issue_property_can_be_turned_off(jira: FakeJira, http: httpx.Client) -> None:
    connector(jira, http, issue_property="").perform(request(), FACT)

    (create,) = jira.creates()
    assert "properties" not in create.data()
    assert jira.issues["OPS-1"]["properties"] == {}


@pytest.mark.parametrize(("text", "paragraphs"), [
    ("one", [[{"type": "text", "text": "one"}]]),
    ("a\r\nb\n\n\n  \nc\n", [
        [{"type": "text", "text": "a"}, {"type": "hardBreak"}, {"type": "text", "text": "b"}],
        [{"type": "text", "text": "c"}]]),
    ("\n\n", []),
])
def test_plain_text_becomes_minimal_adf(text: str, paragraphs: list[Any]) -> None:
    assert to_adf(text) == {"type": "doc", "version": 1, "content": [
        {"type": "paragraph", "content": inline} for inline in paragraphs]}
    assert _is_adf(to_adf(text))


# --- one issue per idempotency key -----------------------------------------------------------
# (the step run twice, a crash, a lost answer: test_find_before_create.py)

def test_other_actions_of_the_same_event_get_their_own_issues(
    jira: FakeJira, http: httpx.Client
) -> None:
    handler = connector(jira, http)
    outcomes = [handler.perform(request(action_id=a), FACT) for a in ("ticket", "follow-up")]

    assert [o.reference for o in outcomes] == ["OPS-1", "OPS-2"]
    assert [o.status for o in outcomes] == [OutcomeStatus.DONE, OutcomeStatus.DONE]
    assert jira.issues["OPS-2"]["fields"]["labels"][-1] == label_of(request(action_id="follow-up"))


# --- transient failures ----------------------------------------------------------------------

@pytest.mark.parametrize(("path", "status", "headers", "retry_after"), [
    ("/rest/api/3/search/jql", 500, {}, None),
    ("/rest/api/3/search/jql", 503, {"retry_after": "30"}, 30.0),
    ("/rest/api/3/issue", 429, {"retry_after": "7", "x_ratelimit_reason": "jira-burst-based"},
     7.0),
    ("/rest/api/3/issue", 429,
     {"retry_after": format_datetime(NOW + timedelta(seconds=90), usegmt=True)}, 90.0),
    ("/rest/api/3/issue", 503, {}, None),
])
def test_overload_and_server_errors_are_transient_with_retry_after(
    jira: FakeJira, http: httpx.Client, path: str, status: int, headers: dict[str, str],
    retry_after: float | None,
) -> None:
    jira.then(path, status, {"errorMessages": ["Rate limit exceeded."]}
              if status == 429 else b"Service Unavailable", **headers)
    with pytest.raises(TransientActionError) as failed:
        connector(jira, http).perform(request(), FACT)

    assert failed.value.retry_after == retry_after
    assert f"POST {jira.url}{path}: HTTP {status}" in str(failed.value)
    assert jira.issues == {}
    # the next attempt goes through and files exactly one issue
    retry = connector(jira, http).perform(request(), FACT)
    assert (retry.status, retry.reference) == (OutcomeStatus.DONE, "OPS-1")


def test_a_server_that_does_not_answer_in_time_is_transient(
    jira: FakeJira, http: httpx.Client
) -> None:
    jira.stall()
    with pytest.raises(TransientActionError, match="timed out"):
        connector(jira, http, timeout_seconds=0.3).perform(request(), FACT)
    assert jira.issues == {}


def test_a_server_that_is_down_is_transient(http: httpx.Client) -> None:
    values = {"base_url": f"http://127.0.0.1:{unused_port()}", "email": EMAIL,
              "api_token": TOKEN, "project": "OPS"}
    (handler,) = build_connectors({"jira": values}, http, lambda: NOW)
    with pytest.raises(TransientActionError, match="ConnectError"):
        handler.perform(request(), FACT)


# --- permanent failures ----------------------------------------------------------------------

def test_a_rejected_issue_is_permanent_with_jiras_field_errors(
    jira: FakeJira, http: httpx.Client
) -> None:
    handler = connector(jira, http)
    handler.perform(request(action_id="earlier"), FACT)

    with pytest.raises(PermanentActionError) as failed:
        handler.perform(request({"issue_type": "Epicc"}), FACT)

    assert str(failed.value) == (
        "jira action admin-enroll/ticket: POST /rest/api/3/issue: HTTP 400: "
        "issuetype: The issue type selected is invalid."
    )
    assert list(jira.issues) == ["OPS-1"]  # the earlier issue is untouched


def test_a_bad_jql_answer_is_permanent_with_the_error_messages(
    jira: FakeJira, http: httpx.Client
) -> None:
    jira.then("/rest/api/3/search/jql", 400, {
        "errorMessages": ["The value 'x' does not exist for the field 'labels'."],
        "errors": {}, "warningMessages": []})
    with pytest.raises(PermanentActionError) as failed:
        connector(jira, http).perform(request(), FACT)

    assert str(failed.value) == (
        "jira action admin-enroll/ticket: POST /rest/api/3/search/jql: HTTP 400: "
        "The value 'x' does not exist for the field 'labels'."
    )
    assert jira.creates() == []


def test_wrong_credentials_are_permanent_and_the_token_stays_secret(
    jira: FakeJira, http: httpx.Client
) -> None:
    with pytest.raises(PermanentActionError) as failed:
        connector(jira, http, api_token="not-the-token").perform(request(), FACT)

    message = str(failed.value)
    assert "HTTP 401: You are not authenticated." in message
    assert "check connectors.jira.email and the API token" in message
    assert "not-the-token" not in message
    assert jira.creates() == []
    assert jira.issues == {}


def test_missing_create_permission_is_permanent(jira: FakeJira, http: httpx.Client) -> None:
    jira.no_create.add("SEC")
    with pytest.raises(PermanentActionError) as failed:
        connector(jira, http, project="SEC").perform(request(), FACT)

    message = str(failed.value)
    assert "POST /rest/api/3/issue: HTTP 403: You do not have permission to create issues" in (
        message)
    assert "Browse projects and Create issues" in message
    assert TOKEN not in message
    assert jira.issues == {}


def test_a_base_url_that_is_not_jira_is_permanent(jira: FakeJira, http: httpx.Client) -> None:
    with pytest.raises(PermanentActionError) as failed:
        connector(jira, http, base_url=jira.url + "/wiki").perform(request(), FACT)

    assert "POST /rest/api/3/search/jql: HTTP 404: <html><body>Oops" in str(failed.value)
    assert jira.issues == {}


@pytest.mark.parametrize(("params", "settings", "message"), [
    ({}, {"project": None}, "params.project is required (connectors.jira.project sets no default)"),
    ({"fields": ["priority"]}, {}, "params.fields must be a mapping"),
    ({"labels": [1, 2]}, {}, "params.labels must be a list of text (or comma-separated text)"),
    ({"summary": ["a"]}, {}, "params.summary must be text"),
])
def test_unusable_params_are_permanent_and_nothing_is_sent(
    jira: FakeJira, http: httpx.Client, params: dict[str, Any], settings: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(PermanentActionError) as failed:
        connector(jira, http, **settings).perform(request(params), FACT)

    assert str(failed.value) == f"jira action admin-enroll/ticket: {message}"
    assert jira.received == []


# --- settings --------------------------------------------------------------------------------

def test_the_token_may_come_from_a_file(
    jira: FakeJira, http: httpx.Client, tmp_path: Path
) -> None:
    token_file = tmp_path / "jira-token"
    token_file.write_text(TOKEN + "\n")
    handler = connector(jira, http, api_token=None, api_token_file=str(token_file))

    assert isinstance(handler, JiraConnector)
    assert handler.perform(request(), FACT).reference == "OPS-1"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"email": None}, "connectors.jira.email: Field required"),
    ({"email": "not an address"}, "connectors.jira.email: Value error, must be the email"),
    ({"base_url": "http://example.atlassian.net"},
     "connectors.jira.base_url: Value error, must use https"),
    ({"base_url": "ftp://example.atlassian.net"},
     "connectors.jira.base_url: Value error, must be an https:// URL"),
    ({"base_url": "https://bot:pw@example.atlassian.net"},
     "connectors.jira.base_url: Value error, must not carry"),
    ({"labels": ["needs review"]}, "connectors.jira.labels: Value error, 'needs review'"),
    ({"project": " "}, "connectors.jira.project: Value error, must not be empty"),
    ({"projcet": "OPS"}, "connectors.jira.projcet: Extra inputs are not permitted"),
    ({"api_token": None},
     "connectors.jira.api_token: required (or connectors.jira.api_token_file)"),
    ({"api_token_file": "{tmp}/token.txt"},
     "connectors.jira.api_token and connectors.jira.api_token_file are both set"),
    ({"api_token": None, "api_token_file": "{tmp}/missing.txt"},
     "connectors.jira.api_token_file {tmp}/missing.txt: cannot read"),
])
def test_invalid_settings_name_the_key(
    jira: FakeJira, http: httpx.Client, overrides: dict[str, Any], message: str, tmp_path: Path,
) -> None:
    (tmp_path / "token.txt").write_text(TOKEN)
    overrides = fakes.in_tmp(overrides, tmp_path)
    with pytest.raises(ConfigError) as failed:
        build_connectors({"jira": section(jira, **overrides)}, http)

    assert message.replace("{tmp}", str(tmp_path)) in str(failed.value)
    assert TOKEN not in str(failed.value)
    assert jira.received == []


def test_a_trailing_slash_on_the_base_url_is_ignored(jira: FakeJira, http: httpx.Client) -> None:
    connector(jira, http, base_url=jira.url + "/").perform(request(), FACT)

    assert [r.path for r in jira.received] == ["/rest/api/3/search/jql", "/rest/api/3/issue"]

