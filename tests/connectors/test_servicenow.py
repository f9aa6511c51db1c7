"""The ServiceNow connector against a local Table API double on 127.0.0.1.

The double speaks the documented Table API shapes: ``GET /api/now/table/{table}`` with
``sysparm_query`` (``field=value`` terms joined by ``^``), ``sysparm_fields`` and
``sysparm_limit`` answering ``{"result": [...]}``, and ``POST /api/now/table/{table}`` answering
201 ``{"result": {...}}``. Like a real instance it ignores query terms and body fields naming
columns the table does not have, leaves unknown ``sysparm_fields`` out of the answer, checks
Basic or Bearer authentication, and answers errors with
``{"error": {"message": ..., "detail": ...}, "status": "failure"}``. Tests can queue one-off
answers (429 with Retry-After, 5xx, an insert whose answer is lost).
"""

from __future__ import annotations

import base64
import secrets
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from factorflow.actions.base import ActionHandler
from factorflow.connectors.registry import build_connectors
from factorflow.domain.actions import ActionRequest, Enrichment, OutcomeStatus, idempotency_key
from factorflow.errors import ConfigError, PermanentActionError, TransientActionError
from factorflow.rules import evaluate, parse_rules
from factorflow.settings import load_settings
from tests.connectors import fakes
from tests.connectors.fakes import FACT, Double, Got, Reply, json_reply, serving, unused_port

USER = "factorflow.integration"
PASSWORD = "s3cret-Password!"
READ_ONLY_USER = "factorflow.viewer"
OAUTH_TOKEN = "oauth-access-token-value"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

_TASK_COLUMNS = frozenset({
    "sys_id", "number", "short_description", "description", "correlation_id",
    "correlation_display", "assignment_group", "category", "subcategory", "urgency", "impact",
    "caller_id", "state",
})


@dataclass
class Table:
    columns: frozenset[str]
    prefix: str | None  # number prefix, None for a table without numbers
    rows: list[dict[str, str]] = field(default_factory=list)


class FakeServiceNow(Double):
    GROUPS: ClassVar[dict[str, str]] = {"Service Desk": "8a4dde73c6112278017a6a4baf547aa7"}

    def __init__(self) -> None:
        self.tables = {
            "incident": Table(_TASK_COLUMNS | {"u_factor_type", "u_source"}, "INC"),
            # a custom table with correlation fields but no number
            "u_mfa_review": Table(frozenset({"sys_id", "short_description", "description",
                                             "correlation_id", "correlation_display"}), None),
            # a custom table without correlation_id
            "u_legacy": Table(frozenset({"sys_id", "number", "short_description",
                                         "description"}), "LEG"),
        }
        self.lock = threading.Lock()

    def rows(self, table: str = "incident") -> list[dict[str, str]]:
        return self.tables[table].rows

    def posts(self) -> list[Got]:
        return [r for r in self.received if r.method == "POST"]

    def then(self, method: str, status: int, body: Any = b"", *, after_effect: bool = False,
             **headers: str) -> None:
        self.server.then(status, body, headers=headers, method=method,
                         after_effect=after_effect)

    def __call__(self, got: Got) -> Reply:
        with self.lock:
            return self._route(got.method, got.path, got.query, got.headers, got.data())

    def _user(self, headers: dict[str, str]) -> str | None:
        value = headers.get("authorization", "")
        if value == f"Bearer {OAUTH_TOKEN}":
            return USER
        for user in (USER, READ_ONLY_USER):
            if value == "Basic " + base64.b64encode(f"{user}:{PASSWORD}".encode()).decode():
                return user
        return None

    def _route(self, method: str, path: str, query: dict[str, str], headers: dict[str, str],
               body: Any) -> Reply:
        user = self._user(headers)
        if user is None:
            return _failure(401, "User Not Authenticated", "Required to provide Auth information")
        prefix = "/api/now/table/"
        if not path.startswith(prefix) or "/" in path[len(prefix):]:
            return _failure(404, "Requested URI does not represent any resource", None)
        name = path[len(prefix):]
        table = self.tables.get(name)
        if table is None:
            return _failure(400, f"Invalid table {name}", None)
        if method == "GET":
            return self._query(table, query)
        if method == "POST":
            if user == READ_ONLY_USER:
                return _failure(403, "Operation Failed",
                                "ACL Exception Insert Failed due to security constraints")
            return self._insert(table, query, body)
        return _failure(405, "Method not Supported", None)

    def _query(self, table: Table, query: dict[str, str]) -> Reply:
        rows = table.rows
        for term in filter(None, query.get("sysparm_query", "").split("^")):
            column, _, value = term.partition("=")
            if column in table.columns:  # a term on an unknown column is ignored
                rows = [row for row in rows if row.get(column) == value]
        limit = int(query.get("sysparm_limit", "10000"))
        result = [self._shape(table, row, query) for row in rows[:limit]]
        status, headers, body = _json(200, {"result": result})
        return status, {**headers, "x-total-count": str(len(rows))}, body

    def _insert(self, table: Table, query: dict[str, str], body: Any) -> Reply:
        if not isinstance(body, dict):
            return _failure(400, "Exception while reading request",
                            "The payload is not valid JSON.")
        row = {k: str(v) for k, v in body.items() if k in table.columns and k != "sys_id"}
        if query.get("sysparm_input_display_value") == "true" and "assignment_group" in row:
            row["assignment_group"] = self.GROUPS.get(row["assignment_group"], "")
        row["sys_id"] = secrets.token_hex(16)
        if table.prefix:
            row["number"] = f"{table.prefix}{10001 + len(table.rows):07d}"
        table.rows.append(row)
        return _json(201, {"result": self._shape(table, row, query)})

    @staticmethod
    def _shape(table: Table, row: dict[str, str], query: dict[str, str]) -> dict[str, str]:
        wanted = query.get("sysparm_fields")
        if not wanted:
            return {column: row.get(column, "") for column in table.columns}
        return {c: row.get(c, "") for c in wanted.split(",") if c in table.columns}


def _json(status: int, body: Any) -> Reply:
    return json_reply(status, body, content_type="application/json;charset=UTF-8")


def _failure(status: int, message: str, detail: str | None) -> Reply:
    return _json(status, {"error": {"message": message, "detail": detail},
                          "status": "failure"})


@pytest.fixture
def snow() -> Iterator[FakeServiceNow]:
    with serving(FakeServiceNow()) as fake:
        yield fake


def section(fake: FakeServiceNow, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"instance_url": fake.url, "username": USER, "password": PASSWORD}
    values.update(overrides)
    return {key: value for key, value in values.items() if value is not None}


def connector(fake: FakeServiceNow, http: httpx.Client, **overrides: Any) -> ActionHandler:
    (handler,) = build_connectors({"servicenow": section(fake, **overrides)}, http, lambda: NOW)
    return handler


def request(params: dict[str, Any] | None = None, *, action_id: str = "incident"
            ) -> ActionRequest:
    return ActionRequest(
        rule_id="admin-enroll", action_id=action_id, kind="servicenow", params=params or {},
        idempotency_key=idempotency_key(FACT.uuid, "admin-enroll", action_id),
    )


KEY = request().idempotency_key
LOOKUP = {
    "sysparm_query": f"correlation_id={KEY}",
    "sysparm_fields": "sys_id,number,correlation_id",
    "sysparm_limit": "1",
    "sysparm_exclude_reference_link": "true",
}

# --- the requests the instance receives ------------------------------------------------------

RULES = """
version: 1
match: all
rules:
  - id: admin-enroll
    when: {kind: [enrollment]}
    actions:
      - id: incident
        kind: servicenow
        params:
          short_description: "Review {{ fact.factor.type }} enrollment of {{ fact.user.login }}"
          description: |
            {{ fact.user.display_name }} enrolled {{ fact.factor.type }} from {{ fact.client.ip }}.
          urgency: 1
          fields:
            u_factor_type: "{{ fact.factor.type }}"
"""


def test_a_rule_action_becomes_one_record_with_the_documented_requests(
    snow: FakeServiceNow, http: httpx.Client
) -> None:
    decision = evaluate(parse_rules(RULES, source="rules.yaml"), FACT,
                        Enrichment(source="none", found=False))
    (action,) = decision.actions
    assert action.idempotency_key == KEY
    handler = connector(snow, http, assignment_group="8a4dde73c6112278017a6a4baf547aa7",
                        category="security", urgency=2, fields={"u_source": "okta"})
    outcome = handler.perform(action, FACT)

    assert (outcome.status, outcome.reference) == (OutcomeStatus.DONE, "INC0010001")
    assert outcome.detail == "incident INC0010001"
    lookup, insert = snow.received
    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    for sent in (lookup, insert):
        assert sent.path == "/api/now/table/incident"
        assert sent.headers["authorization"] == basic
        assert sent.headers["accept"] == "application/json"
    assert (lookup.method, lookup.query, lookup.data()) == ("GET", LOOKUP, None)
    assert insert.method == "POST"
    assert insert.headers["content-type"] == "application/json"
    assert insert.query == {
        "sysparm_fields": "sys_id,number,correlation_id",
        "sysparm_exclude_reference_link": "true",
    }
    assert insert.data() == {
        "u_source": "okta",
        "assignment_group": "8a4dde73c6112278017a6a4baf547aa7",
        "category": "security",
        "urgency": "1",  # the rule's value wins over the setting
        "u_factor_type": "email",
        "short_description": "Review email enrollment of aps@google.com",
        "description": "aps enrolled email from 1.1.1.1.\n",
        "correlation_id": KEY,
        "correlation_display": "factorflow",
    }
    (row,) = snow.rows()
    assert row["number"] == "INC0010001"
    assert (row["correlation_id"], row["correlation_display"]) == (KEY, "factorflow")
    assert row["u_factor_type"] == "email"


def test_without_params_the_record_is_described_from_the_fact(
    snow: FakeServiceNow, http: httpx.Client
) -> None:
    connector(snow, http).perform(request(), FACT)

    (row,) = snow.rows()
    assert row["short_description"] == "MFA factor enrolled: email for aps@google.com"
    lines = row["description"].splitlines()
    assert lines[0] == f"Event: user.mfa.factor.activate ({FACT.uuid})"
    assert "User: aps <aps@google.com>" in lines
    assert "Client: 1.1.1.1 (India)" in lines
    assert set(snow.posts()[0].data()) == {
        "short_description", "description", "correlation_id", "correlation_display"}


def test_an_oauth_token_is_sent_as_bearer(snow: FakeServiceNow, http: httpx.Client) -> None:
    outcome = connector(snow, http, username=None, password=None,
                        oauth_token=OAUTH_TOKEN).perform(request(), FACT)

    assert outcome.reference == "INC0010001"
    assert {r.headers["authorization"] for r in snow.received} == {f"Bearer {OAUTH_TOKEN}"}


def test_reference_fields_may_be_given_by_display_value(
    snow: FakeServiceNow, http: httpx.Client
) -> None:
    connector(snow, http, assignment_group="Service Desk",
              input_display_value=True).perform(request(), FACT)

    assert snow.posts()[0].query["sysparm_input_display_value"] == "true"
    assert snow.rows()[0]["assignment_group"] == FakeServiceNow.GROUPS["Service Desk"]


def test_a_long_short_description_is_one_line_of_160_characters(
    snow: FakeServiceNow, http: httpx.Client
) -> None:
    connector(snow, http).perform(request({"short_description": "a\nb " + "x" * 300}), FACT)

    stored = snow.rows()[0]["short_description"]
    assert len(stored) == 160
    assert stored.startswith("a b xxx")
    assert stored.endswith("\u2026")


def test_a_table_without_numbers_answers_with_the_sys_id(
    snow: FakeServiceNow, http: httpx.Client
) -> None:
    first = connector(snow, http, table="u_mfa_review").perform(request(), FACT)
    second = connector(snow, http, table="u_mfa_review").perform(request(), FACT)

    (row,) = snow.rows("u_mfa_review")
    assert (first.status, first.reference) == (OutcomeStatus.DONE, row["sys_id"])
    assert (second.status, second.reference) == (OutcomeStatus.ALREADY_DONE, row["sys_id"])
    assert snow.received[0].path == "/api/now/table/u_mfa_review"


# --- one record per idempotency key ----------------------------------------------------------
# (the step run twice, a crash, a lost answer: test_find_before_create.py)

def test_records_of_other_keys_are_not_mistaken_for_this_one(
    snow: FakeServiceNow, http: httpx.Client
) -> None:
    handler = connector(snow, http)
    other = handler.perform(request(action_id="other"), FACT)
    mine = handler.perform(request(), FACT)

    assert (other.reference, mine.reference) == ("INC0010001", "INC0010002")
    assert mine.status is OutcomeStatus.DONE
    assert [row["correlation_id"] for row in snow.rows()] == [
        request(action_id="other").idempotency_key, KEY]


def test_a_table_without_correlation_id_is_refused_instead_of_matching_any_row(
    snow: FakeServiceNow, http: httpx.Client
) -> None:
    # ServiceNow ignores a query term on an unknown column, so the lookup answers any row.
    snow.rows("u_legacy").append({"sys_id": "0" * 32, "number": "LEG0000001",
                                  "short_description": "unrelated"})
    with pytest.raises(PermanentActionError) as failed:
        connector(snow, http, table="u_legacy").perform(request(), FACT)

    assert str(failed.value) == (
        "servicenow action admin-enroll/incident: table u_legacy has no correlation_id field, "
        "so repeats cannot be detected (connectors.servicenow.table)"
    )
    assert snow.rows("u_legacy") == [{"sys_id": "0" * 32, "number": "LEG0000001",
                                      "short_description": "unrelated"}]
    assert snow.posts() == []


def test_an_empty_table_without_correlation_id_says_repeats_cannot_be_detected(
    snow: FakeServiceNow, http: httpx.Client
) -> None:
    outcome = connector(snow, http, table="u_legacy").perform(request(), FACT)

    assert (outcome.status, outcome.reference) == (OutcomeStatus.DONE, "LEG0010001")
    assert "repeats cannot be detected" in outcome.detail


# --- transient failures ----------------------------------------------------------------------

@pytest.mark.parametrize(("method", "status", "headers", "retry_after"), [
    ("GET", 500, {}, None),
    ("GET", 503, {"retry_after": "45"}, 45.0),
    ("POST", 429, {"retry_after": "12"}, 12.0),
    ("POST", 429, {"retry_after": format_datetime(NOW + timedelta(minutes=2), usegmt=True)},
     120.0),
    ("POST", 500, {}, None),
])
def test_overload_and_server_errors_are_transient_with_retry_after(
    snow: FakeServiceNow, http: httpx.Client, method: str, status: int,
    headers: dict[str, str], retry_after: float | None,
) -> None:
    body = {"error": {"message": "Rate limit exceeded" if status == 429 else "Server error",
                      "detail": None}, "status": "failure"}
    snow.then(method, status, body, **headers)
    with pytest.raises(TransientActionError) as failed:
        connector(snow, http).perform(request(), FACT)

    assert failed.value.retry_after == retry_after
    assert f"{method} {snow.url}/api/now/table/incident: HTTP {status}" in str(failed.value)
    assert snow.rows() == []
    retry = connector(snow, http).perform(request(), FACT)
    assert (retry.status, retry.reference) == (OutcomeStatus.DONE, "INC0010001")


def test_an_instance_that_is_down_is_transient(http: httpx.Client) -> None:
    values = {"instance_url": f"http://127.0.0.1:{unused_port()}", "username": USER,
              "password": PASSWORD}
    (handler,) = build_connectors({"servicenow": values}, http, lambda: NOW)
    with pytest.raises(TransientActionError, match="ConnectError"):
        handler.perform(request(), FACT)


# --- permanent failures ----------------------------------------------------------------------

def test_wrong_credentials_are_permanent_and_the_password_stays_secret(
    snow: FakeServiceNow, http: httpx.Client
) -> None:
    with pytest.raises(PermanentActionError) as failed:
        connector(snow, http, password="wrong-password").perform(request(), FACT)

    assert str(failed.value) == (
        "servicenow action admin-enroll/incident: GET /api/now/table/incident: HTTP 401: "
        "User Not Authenticated: Required to provide Auth information "
        "(check the credentials in connectors.servicenow)"
    )
    assert snow.posts() == []


def test_a_user_without_create_rights_is_permanent(
    snow: FakeServiceNow, http: httpx.Client
) -> None:
    connector(snow, http).perform(request(action_id="earlier"), FACT)
    with pytest.raises(PermanentActionError) as failed:
        connector(snow, http, username=READ_ONLY_USER).perform(request(), FACT)

    message = str(failed.value)
    assert message == (
        "servicenow action admin-enroll/incident: POST /api/now/table/incident: HTTP 403: "
        "Operation Failed: ACL Exception Insert Failed due to security constraints "
        "(the account may not create incident records: it needs the itil role or table ACLs)"
    )
    assert PASSWORD not in message
    assert [row["number"] for row in snow.rows()] == ["INC0010001"]  # the earlier one, intact


def test_an_unknown_table_is_permanent(snow: FakeServiceNow, http: httpx.Client) -> None:
    with pytest.raises(PermanentActionError) as failed:
        connector(snow, http, table="u_nope").perform(request(), FACT)

    assert str(failed.value) == (
        "servicenow action admin-enroll/incident: GET /api/now/table/u_nope: HTTP 400: "
        "Invalid table u_nope"
    )
    assert snow.posts() == []


def test_an_instance_url_with_a_wrong_path_is_permanent(
    snow: FakeServiceNow, http: httpx.Client
) -> None:
    with pytest.raises(PermanentActionError) as failed:
        connector(snow, http, instance_url=snow.url + "/now").perform(request(), FACT)

    assert "HTTP 404: Requested URI does not represent any resource" in str(failed.value)
    assert snow.rows() == []


@pytest.mark.parametrize(("params", "message"), [
    ({"fields": "u_x"}, "params.fields must be a mapping"),
    ({"fields": {"correlation_id": "mine"}},
     "params.fields.correlation_id: not a column a rule may set"),
    ({"fields": {"Bad Column": "x"}}, "params.fields.Bad Column: not a column a rule may set"),
    ({"fields": {"u_factor_type": ["a"]}},
     "params.fields.u_factor_type must be text, a number or true/false"),
    ({"urgency": {"level": 1}}, "params.urgency must be text, a number or true/false"),
    ({"short_description": 5}, "params.short_description must be text"),
])
def test_unusable_params_are_permanent_and_nothing_is_sent(
    snow: FakeServiceNow, http: httpx.Client, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(PermanentActionError) as failed:
        connector(snow, http).perform(request(params), FACT)

    assert str(failed.value) == f"servicenow action admin-enroll/incident: {message}"
    assert snow.received == []


# --- settings --------------------------------------------------------------------------------

def test_the_password_may_come_from_a_file(
    snow: FakeServiceNow, http: httpx.Client, tmp_path: Path
) -> None:
    (tmp_path / "snow-password").write_text(PASSWORD + "\n")
    handler = connector(snow, http, password=None,
                        password_file=str(tmp_path / "snow-password"))

    assert handler.perform(request(), FACT).reference == "INC0010001"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"instance_url": None}, "connectors.servicenow.instance_url: Field required"),
    ({"instance_url": "http://acme.service-now.com"},
     "connectors.servicenow.instance_url: Value error, must use https"),
    ({"table": "incident/../sys_user"},
     "connectors.servicenow.table: Value error, must be a table name"),
    ({"fields": {"correlation_id": "x"}},
     "connectors.servicenow.fields: Value error, correlation_id is set by factorflow itself"),
    ({"urgency": [1]}, "connectors.servicenow.urgency"),
    ({"tabel": "incident"}, "connectors.servicenow.tabel: Extra inputs are not permitted"),
    ({"password": None}, "connectors.servicenow.password: required with username"),
    ({"username": None}, "connectors.servicenow.username: required with password"),
    ({"username": None, "password": None},
     "connectors.servicenow.username: set username and password, or oauth_token"),
    ({"oauth_token": OAUTH_TOKEN},
     "connectors.servicenow.oauth_token: set either oauth_token or username and password"),
    ({"password_file": "{tmp}/pw"},
     "connectors.servicenow.password and connectors.servicenow.password_file are both set"),
    ({"username": None, "password": None, "oauth_token_file": "{tmp}/missing"},
     "connectors.servicenow.oauth_token_file {tmp}/missing: cannot read"),
])
def test_invalid_settings_name_the_key(
    snow: FakeServiceNow, http: httpx.Client, overrides: dict[str, Any], message: str,
    tmp_path: Path,
) -> None:
    (tmp_path / "pw").write_text(PASSWORD)
    overrides = fakes.in_tmp(overrides, tmp_path)
    with pytest.raises(ConfigError) as failed:
        build_connectors({"servicenow": section(snow, **overrides)}, http)

    assert message.replace("{tmp}", str(tmp_path)) in str(failed.value)
    assert PASSWORD not in str(failed.value)
    assert OAUTH_TOKEN not in str(failed.value)
    assert snow.received == []


def test_a_config_file_section_with_the_secret_from_the_environment_builds_the_connector(
    snow: FakeServiceNow, http: httpx.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "factorflow.toml"
    config.write_text(textwrap.dedent(f"""
        [connectors.servicenow]
        instance_url = "{snow.url}"
        username = "{USER}"
        table = "incident"
        assignment_group = "Service Desk"
        category = "security"
        urgency = 2
        input_display_value = true
        fields = {{ u_source = "okta" }}
    """))
    monkeypatch.setenv("FACTORFLOW_CONNECTORS__SERVICENOW__PASSWORD", PASSWORD)
    (handler,) = build_connectors(load_settings(config).connectors, http, lambda: NOW)

    assert handler.perform(request(), FACT).reference == "INC0010001"
    (row,) = snow.rows()
    assert (row["assignment_group"], row["category"], row["urgency"], row["u_source"]) == (
        FakeServiceNow.GROUPS["Service Desk"], "security", "2", "okta")
