"""The ``okta_workflows`` connector against a local stand-in for an Okta Workflows API Endpoint
flow (a real HTTP server on 127.0.0.1).

The stand-in answers like the documented invoke route ``POST /api/flo/<alias>/invoke``: it
checks the flow's security level (client token as ``?clientToken=`` or ``x-api-client-token``,
an OAuth bearer token, or none), answers 401/403 in the Okta API error shape, 429 with the
``X-Rate-Limit-*`` headers, and runs a "flow" that keeps the idempotency keys it has seen in a
table, the pattern the connector's documentation asks flows to follow.
"""

from __future__ import annotations

import textwrap
import threading
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from factorflow.connectors.registry import build_connectors
from factorflow.domain.actions import ActionRequest, Enrichment, OutcomeStatus
from factorflow.errors import ConfigError, PermanentActionError, TransientActionError
from factorflow.rules import evaluate, parse_rules
from tests.conftest import WATCHED_SECRETS
from tests.connectors.fakes import FACT, Double, Got, Reply, serving, unused_port

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
ALIAS = "6a1b2c3d4e5f60718293a4b5c6d7e8f9"
CLIENT_TOKEN = "ct-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
ACCESS_TOKEN = "eyJraWQiOiJ0ZXN0In0.eyJzY3AiOlsib2t0YS53b3JrZmxvd3MuaW52b2tlLm1hbmFnZSJdfQ.sig"
WATCHED_SECRETS.update({CLIENT_TOKEN, ACCESS_TOKEN})  # never in a log line

RULES = """
version: 1
match: all
rules:
  - id: notify-helpdesk
    when: {kind: [enrollment]}
    actions:
      - id: flow
        kind: okta_workflows
        params:
          summary: "{{ fact.user.login }} enrolled {{ fact.factor.type }}"
          table: mfa-enrollments
"""


def request_for_rule() -> ActionRequest:
    """The action the real rules engine makes of RULES for FACT (templates rendered)."""
    decision = evaluate(
        parse_rules(textwrap.dedent(RULES), source="rules.yaml"), FACT,
        Enrichment(source="none", found=False),
    )
    (request,) = decision.actions
    return request


def okta_error(code: str, summary: str) -> bytes:
    """The Okta API error body."""
    return orjson.dumps({
        "errorCode": code, "errorSummary": summary, "errorLink": code,
        "errorId": "oaeTestErrorId0000", "errorCauses": [],
    })


class Flow(Double):
    """An API Endpoint flow: its security level, the keys in its table, and scripted answers
    that replace the flow's own once a request is authorized (consumed in order)."""

    def __init__(self) -> None:
        self.security = "client_token"
        self.access_tokens = {ACCESS_TOKEN}
        self.table: dict[str, str] = {}  # idempotencyKey -> the flow's result
        self.work_done = 0
        self.scripted: deque[Reply] = deque()
        self.lock = threading.Lock()

    @property
    def base(self) -> str:
        return self.url

    @property
    def invocations(self) -> list[Got]:
        return self.received

    @property
    def invoke_url(self) -> str:
        return f"{self.base}/api/flo/{ALIAS}/invoke"

    def script(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.scripted.append((status, {k.replace("_", "-"): v for k, v in headers.items()}, body))

    def __call__(self, got: Got) -> Reply:
        status, headers, body = self.answer(got)
        request_id = f"reqId{len(self.received):04d}"
        return status, {"content-type": "application/json", "x-okta-request-id": request_id,
                        **headers}, body

    def answer(self, invocation: Got) -> Reply:
        if invocation.method != "POST" or invocation.path != f"/api/flo/{ALIAS}/invoke":
            return 404, {}, okta_error("E0000007", "Not found: Resource not found")
        denied = self._denied(invocation)
        if denied is not None:
            return denied
        with self.lock:
            if self.scripted:
                return self.scripted.popleft()
            key = (invocation.data() or {}).get("idempotencyKey")
            if not isinstance(key, str):
                return 400, {}, orjson.dumps({"error": "idempotencyKey is required"})
            if key in self.table:  # the table lookup the flow does first
                return 200, {}, orjson.dumps({"alreadyDone": True, "result": self.table[key]})
            self.work_done += 1
            result = f"case-{self.work_done}"
            self.table[key] = result
        return 200, {}, orjson.dumps({"alreadyDone": False, "result": result})

    def _denied(self, invocation: Got) -> Reply | None:
        unauthorized = (401, {"www-authenticate": 'Bearer realm="workflows"'},
                        okta_error("E0000011", "Invalid token provided"))
        if self.security == "client_token":
            given = invocation.query_lists.get("clientToken", [])
            header = invocation.headers.get("x-api-client-token")
            if [*given, *([header] if header else [])] != [CLIENT_TOKEN]:
                return unauthorized
        elif self.security == "oauth":
            auth = invocation.headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme != "Bearer" or not token:
                return unauthorized
            if token not in self.access_tokens:
                return 403, {}, okta_error(
                    "E0000006", "You do not have permission to perform the requested action"
                )
        return None


@pytest.fixture
def flow() -> Iterator[Flow]:
    with serving(Flow()) as fake:
        yield fake


def connector(http: httpx.Client, **settings: Any) -> Any:
    (handler,) = build_connectors({"okta_workflows": settings}, http, clock=lambda: NOW)
    return handler


# -- what the flow receives --------------------------------------------------------------------


def test_client_token_in_the_invoke_url_posts_the_fact_with_key_rule_and_rendered_params(
    flow: Flow, http: httpx.Client
) -> None:
    request = request_for_rule()
    handler = connector(http, invoke_url=f"{flow.invoke_url}?clientToken={CLIENT_TOKEN}")

    outcome = handler.perform(request, FACT)

    assert (outcome.status, outcome.reference) == (OutcomeStatus.DONE, "reqId0001")
    (got,) = flow.invocations
    assert (got.method, got.path) == ("POST", f"/api/flo/{ALIAS}/invoke")
    assert got.query_lists == {"clientToken": [CLIENT_TOKEN]}
    assert got.headers["content-type"] == "application/json"
    assert "x-api-client-token" not in got.headers and "authorization" not in got.headers
    body = got.json()
    assert body["idempotencyKey"] == request.idempotency_key
    assert (body["ruleId"], body["actionId"]) == ("notify-helpdesk", "flow")
    assert body["params"] == {
        "summary": "aps@google.com enrolled email", "table": "mfa-enrollments",
    }
    # the fact, as the rules and the dashboard see it
    assert body["uuid"] == FACT.uuid
    assert body["event_type"] == "user.mfa.factor.activate"
    assert body["kind"] == "enrollment"
    assert body["user"]["login"] == "aps@google.com"
    assert body["factor"]["type"] == "email"
    assert body["client"]["ip"] == "1.1.1.1"
    assert flow.table == {request.idempotency_key: "case-1"}


def test_client_token_setting_goes_in_the_x_api_client_token_header(
    flow: Flow, http: httpx.Client
) -> None:
    handler = connector(http, invoke_url=flow.invoke_url, client_token=CLIENT_TOKEN)

    outcome = handler.perform(request_for_rule(), FACT)

    assert outcome.status is OutcomeStatus.DONE
    (got,) = flow.invocations
    assert got.headers["x-api-client-token"] == CLIENT_TOKEN
    assert got.query_lists == {}


def test_invoke_url_and_client_token_can_come_from_files(
    flow: Flow, http: httpx.Client, tmp_path: Path
) -> None:
    (tmp_path / "url").write_text(flow.invoke_url + "\n")
    (tmp_path / "token").write_text(CLIENT_TOKEN + "\n")
    handler = connector(
        http, invoke_url_file=str(tmp_path / "url"), client_token_file=str(tmp_path / "token")
    )

    assert handler.perform(request_for_rule(), FACT).status is OutcomeStatus.DONE
    assert flow.invocations[0].headers["x-api-client-token"] == CLIENT_TOKEN


def test_oauth_sends_the_bearer_token_and_rereads_a_token_file_for_each_call(
    flow: Flow, http: httpx.Client, tmp_path: Path
) -> None:
    flow.security = "oauth"
    renewed = ACCESS_TOKEN + "-renewed"
    flow.access_tokens.add(renewed)
    token_file = tmp_path / "access-token"
    token_file.write_text(ACCESS_TOKEN)
    handler = connector(
        http, security="oauth", invoke_url=flow.invoke_url, oauth_token_file=str(token_file)
    )
    first = request_for_rule()

    assert handler.perform(first, FACT).status is OutcomeStatus.DONE
    token_file.write_text(renewed)  # a token refresher rewrote the file
    second = ActionRequest(first.rule_id, "second", first.kind, first.params, "ff-second-key")
    assert handler.perform(second, FACT).status is OutcomeStatus.DONE

    assert [i.headers["authorization"] for i in flow.invocations] == [
        f"Bearer {ACCESS_TOKEN}", f"Bearer {renewed}"]
    assert all("x-api-client-token" not in i.headers for i in flow.invocations)
    assert sorted(flow.table) == sorted([first.idempotency_key, "ff-second-key"])


def test_public_service_flow_is_invoked_without_credentials(
    flow: Flow, http: httpx.Client
) -> None:
    flow.security = "public"
    handler = connector(http, security="public", invoke_url=flow.invoke_url)

    assert handler.perform(request_for_rule(), FACT).status is OutcomeStatus.DONE
    (got,) = flow.invocations
    assert "authorization" not in got.headers and "x-api-client-token" not in got.headers
    assert got.query_lists == {}


def test_an_async_flow_answering_202_without_output_is_done_with_its_request_id(
    flow: Flow, http: httpx.Client
) -> None:
    flow.script(202)
    handler = connector(http, invoke_url=flow.invoke_url, client_token=CLIENT_TOKEN)

    outcome = handler.perform(request_for_rule(), FACT)

    assert (outcome.status, outcome.reference) == (OutcomeStatus.DONE, "reqId0001")
    assert "HTTP 202" in outcome.detail


# -- the same step twice -----------------------------------------------------------------------


def test_the_same_step_twice_does_the_flows_work_once(flow: Flow, http: httpx.Client) -> None:
    request = request_for_rule()
    handler = connector(http, invoke_url=flow.invoke_url, client_token=CLIENT_TOKEN)

    first = handler.perform(request, FACT)
    # a crash after the flow ran but before the pipeline recorded it: a new process, a new
    # handler, the same request
    second = connector(http, invoke_url=flow.invoke_url, client_token=CLIENT_TOKEN).perform(
        request, FACT)

    assert first.status is OutcomeStatus.DONE
    assert second.status is OutcomeStatus.ALREADY_DONE
    assert "already" in second.detail
    assert len(flow.invocations) == 2
    assert {i.json()["idempotencyKey"] for i in flow.invocations} == {
        request.idempotency_key}
    assert flow.work_done == 1
    assert flow.table == {request.idempotency_key: "case-1"}


# -- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_transient(flow: Flow, http: httpx.Client, status: int) -> None:
    flow.script(status, orjson.dumps({"error": "service unavailable"}))
    handler = connector(http, invoke_url=flow.invoke_url, client_token=CLIENT_TOKEN)

    with pytest.raises(TransientActionError) as caught:
        handler.perform(request_for_rule(), FACT)

    assert f"HTTP {status}" in str(caught.value)
    assert flow.table == {}


def test_429_waits_for_retry_after(flow: Flow, http: httpx.Client) -> None:
    flow.script(429, okta_error("E0000047", "API call exceeded rate limit due to too many "
                                "requests."), retry_after="7", x_rate_limit_limit="10",
                x_rate_limit_remaining="0", x_rate_limit_reset=str(int(NOW.timestamp()) + 60))
    handler = connector(http, invoke_url=flow.invoke_url, client_token=CLIENT_TOKEN)

    with pytest.raises(TransientActionError) as caught:
        handler.perform(request_for_rule(), FACT)

    assert caught.value.retry_after == 7.0
    assert "HTTP 429" in str(caught.value)


def test_429_without_retry_after_waits_until_the_rate_limit_resets(
    flow: Flow, http: httpx.Client
) -> None:
    flow.script(429, okta_error("E0000047", "API call exceeded rate limit due to too many "
                                "requests."), x_rate_limit_limit="10",
                x_rate_limit_remaining="0", x_rate_limit_reset=str(int(NOW.timestamp()) + 30))
    handler = connector(http, invoke_url=flow.invoke_url, client_token=CLIENT_TOKEN)

    with pytest.raises(TransientActionError) as caught:
        handler.perform(request_for_rule(), FACT)

    assert caught.value.retry_after == 30.0
    assert flow.table == {}


def test_a_wrong_client_token_is_permanent_and_no_secret_is_in_the_message(
    flow: Flow, http: httpx.Client
) -> None:
    wrong = "ct-wrong-0000000000000000000000000"
    handler = connector(http, invoke_url=f"{flow.invoke_url}?clientToken={wrong}")

    with pytest.raises(PermanentActionError) as caught:
        handler.perform(request_for_rule(), FACT)

    message = str(caught.value)
    assert "HTTP 401" in message and "Invalid token provided" in message
    assert wrong not in message and ALIAS not in message
    assert flow.base in message  # the host is named, the flow's path is not
    assert flow.table == {}


def test_a_token_without_the_invoke_scope_is_permanent(
    flow: Flow, http: httpx.Client
) -> None:
    flow.security = "oauth"
    other = "eyJraWQiOiJ0ZXN0In0.eyJzY3AiOlsib2t0YS51c2Vycy5yZWFkIl19.sig"
    handler = connector(http, security="oauth", invoke_url=flow.invoke_url, oauth_token=other)

    with pytest.raises(PermanentActionError) as caught:
        handler.perform(request_for_rule(), FACT)

    assert "HTTP 403" in str(caught.value) and other not in str(caught.value)
    assert flow.table == {}


def test_a_missing_flow_is_permanent(flow: Flow, http: httpx.Client) -> None:
    handler = connector(http, invoke_url=f"{flow.base}/api/flo/unknownalias/invoke",
                        client_token=CLIENT_TOKEN)

    with pytest.raises(PermanentActionError) as caught:
        handler.perform(request_for_rule(), FACT)

    assert "HTTP 404" in str(caught.value) and "unknownalias" not in str(caught.value)


def test_a_flow_that_rejects_the_input_is_permanent(flow: Flow, http: httpx.Client) -> None:
    flow.script(400, orjson.dumps({"error": "Invalid input: summary"}))
    handler = connector(http, invoke_url=flow.invoke_url, client_token=CLIENT_TOKEN)

    with pytest.raises(PermanentActionError) as caught:
        handler.perform(request_for_rule(), FACT)

    assert "HTTP 400" in str(caught.value) and "Invalid input: summary" in str(caught.value)


def test_nobody_listening_is_transient(http: httpx.Client) -> None:
    port = unused_port()
    handler = connector(http, invoke_url=f"http://127.0.0.1:{port}/api/flo/{ALIAS}/invoke",
                        client_token=CLIENT_TOKEN)

    with pytest.raises(TransientActionError) as caught:
        handler.perform(request_for_rule(), FACT)

    assert "ConnectError" in str(caught.value)


def test_a_flow_slower_than_the_timeout_is_transient(flow: Flow, http: httpx.Client) -> None:
    flow.stall()
    handler = connector(http, invoke_url=flow.invoke_url, client_token=CLIENT_TOKEN,
                        timeout_seconds=0.2)

    with pytest.raises(TransientActionError) as caught:
        handler.perform(request_for_rule(), FACT)

    assert "timed out" in str(caught.value)


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, "connectors.okta_workflows.invoke_url: required"),
        ({"invoke_url": "https://example.workflows.okta.com/api/flo/x/invoke"},
         "connectors.okta_workflows.client_token: required for security 'client_token'"),
        ({"invoke_url": f"https://example.workflows.okta.com/api/flo/x/invoke?clientToken="
                        f"{CLIENT_TOKEN}", "client_token": CLIENT_TOKEN},
         "connectors.okta_workflows.client_token: the invoke_url already has a clientToken"),
        ({"invoke_url": f"http://example.workflows.okta.com/api/flo/x/invoke?clientToken="
                        f"{CLIENT_TOKEN}"},
         "connectors.okta_workflows.invoke_url: must use https"),
        ({"security": "oauth", "invoke_url": "https://example.workflows.okta.com/api/flo/x/invoke"},
         "connectors.okta_workflows.oauth_token: required for security 'oauth'"),
        ({"security": "oauth", "invoke_url": "https://example.workflows.okta.com/api/flo/x/invoke",
          "oauth_token": ACCESS_TOKEN, "client_token": CLIENT_TOKEN},
         "connectors.okta_workflows.client_token: a client token is only used with security "
         "'client_token'"),
        ({"security": "public", "invoke_url": "https://example.workflows.okta.com/api/flo/x/invoke",
          "oauth_token": ACCESS_TOKEN},
         "connectors.okta_workflows.oauth_token: an access token is only used with security "
         "'oauth'"),
        ({"security": "token", "invoke_url": "https://example.workflows.okta.com/api/flo/x/invoke"},
         "connectors.okta_workflows.security: Input should be 'client_token', 'oauth' or "
         "'public'"),
        ({"invoke_url": "https://example.workflows.okta.com/api/flo/x/invoke",
          "client_tokn": CLIENT_TOKEN},
         "connectors.okta_workflows.client_tokn: Extra inputs are not permitted"),
        ({"invoke_url": "https://example.workflows.okta.com/api/flo/x/invoke",
          "client_token": CLIENT_TOKEN, "timeout_seconds": "soon"},
         "connectors.okta_workflows.timeout_seconds: Input should be a valid number"),
    ],
)
def test_invalid_settings_name_the_key_and_never_a_secret(
    http: httpx.Client, settings: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        build_connectors({"okta_workflows": settings}, http)

    message = str(caught.value)
    assert expected in message
    assert CLIENT_TOKEN not in message and ACCESS_TOKEN not in message


def test_unreadable_secret_files_are_config_errors(http: httpx.Client, tmp_path: Path) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n")

    with pytest.raises(ConfigError) as missing:
        build_connectors({"okta_workflows": {
            "invoke_url_file": str(tmp_path / "nope"), "client_token": CLIENT_TOKEN}}, http)
    with pytest.raises(ConfigError) as blank:
        build_connectors({"okta_workflows": {
            "security": "oauth", "invoke_url": "https://example.workflows.okta.com/api/flo/x/"
            "invoke", "oauth_token_file": str(empty)}}, http)

    assert "connectors.okta_workflows.invoke_url: invoke_url_file" in str(missing.value)
    assert "cannot read" in str(missing.value)
    assert "connectors.okta_workflows.oauth_token_file:" in str(blank.value)
    assert "is empty" in str(blank.value)
