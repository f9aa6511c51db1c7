"""The Okta simulator: the generated org and its events, its API as raw HTTP sees it, its token
endpoint, and the hook sender against a real ``factorflow serve`` process and a scripted peer."""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import subprocess
import sys
import time
import uuid as uuidlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import orjson
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.acceptance.serverproc import ServerProcess, free_port
from tests.conftest import WATCHED_SECRETS

from factorflow.cli_okta import simulate
from factorflow.domain.facts import Engine, EnrolledBy
from factorflow.okta.api import OktaApiSettings, OktaClient
from factorflow.okta.payloads import IncomingEvent, check_event
from factorflow.okta.simulator import (
    HookSender,
    ManualClock,
    OAuthApp,
    OidcApp,
    OktaSimulator,
    SendFailed,
    SendOptions,
    SimOrg,
    SimulatorConfig,
    ThreadedServer,
    generate_org,
    subscribed,
)
from factorflow.okta.simulator.events import api_actor
from factorflow.okta.simulator.oidc import b64url as oidc_b64url
from factorflow.okta.simulator.oidc import s256
from factorflow.okta.translate import to_fact
from factorflow.store.factory import open_store
from factorflow.web.ui.idtoken import verify_id_token

TOKEN = "00simulatorTestToken-8b1d"
SECRET = "Bearer hookSecret-simulator-5c2e91"
ACTIVATE = "user.mfa.factor.activate"
CLIENT_ID = "0oaSimulatorTest001"
ERROR_KEYS = {"errorCode", "errorSummary", "errorLink", "errorId", "errorCauses"}
RATE_HEADERS = ("x-rate-limit-limit", "x-rate-limit-remaining", "x-rate-limit-reset")


def canonical(events: list[dict[str, Any]]) -> bytes:
    return orjson.dumps(events, option=orjson.OPT_SORT_KEYS)


# -- the generated org --------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_org_and_events() -> None:
    first = generate_org(20, seed=5, clock=ManualClock())
    second = generate_org(20, seed=5, clock=ManualClock())
    other = generate_org(20, seed=6, clock=ManualClock())
    assert [u.login for u in first.users.values()] == [u.login for u in second.users.values()]
    assert list(first.users) == list(second.users)
    assert list(first.users) != list(other.users)
    assert canonical(first.generate_enrollments(15, seed=2)) \
        == canonical(second.generate_enrollments(15, seed=2))
    # generating again continues the history: new events, never the same uuids
    more = first.generate_enrollments(15, seed=2)
    uuids = [e["uuid"] for e in first.events()]
    assert len(uuids) == len(set(uuids))
    assert {e["uuid"] for e in more}.isdisjoint(e["uuid"] for e in second.events())


def test_org_has_okta_shaped_users_and_the_expected_groups() -> None:
    org = generate_org(40, seed=3, clock=ManualClock())
    names = {g.name for g in org.groups.values()}
    assert {"Everyone", "Privileged Access", "Helpdesk", "Contractors", "Engineering"} <= names
    everyone = org.group_named("Everyone")
    assert all(everyone.id in u.group_ids for u in org.users.values())
    assert org.members(org.group_named("Privileged Access").id)
    assert len(org.admins) == 2
    for user in org.users.values():
        assert re.fullmatch(r"00u[A-Za-z0-9]{17}", user.id)
        assert user.login.endswith("@example.com")
        assert {"login", "email", "firstName", "lastName", "department", "title"} \
            <= set(user.profile)
    assert len({u.login for u in org.users.values()}) == 40


@pytest.fixture(scope="module")
def big_org() -> SimOrg:
    org = generate_org(60, seed=21, clock=ManualClock())
    org.generate_enrollments(400, seed=21)
    return org


def test_every_generated_event_is_stored_by_the_receiver_as_an_event(big_org: SimOrg) -> None:
    events = big_org.events()
    checked = [check_event(e) for e in events]
    assert all(isinstance(c, IncomingEvent) for c in checked)
    types = Counter(e["eventType"] for e in events)
    assert types[ACTIVATE] >= 400
    assert {"user.session.start", "user.authentication.auth_via_mfa",
            "user.mfa.factor.deactivate"} <= set(types)


def test_classic_and_identity_engine_activations_have_their_documented_shapes(
    big_org: SimOrg,
) -> None:
    activations = big_org.events([ACTIVATE])
    classic = [e for e in activations if len(e["target"]) == 1]
    oie = [e for e in activations if len(e["target"]) == 2]
    assert classic and oie and len(classic) + len(oie) == len(activations)
    for event in classic:
        assert event["target"][0]["type"] == "User"
        assert re.fullmatch(r"User set up [A-Z_]+ factor", event["outcome"]["reason"])
        assert event["displayMessage"] == "Activate factor for user"
        assert event["legacyEventType"] == "core.user.factor.activate"
        assert to_fact(event).engine == Engine.CLASSIC
    for event in oie:
        user, enrollment = event["target"]
        assert (user["type"], enrollment["type"]) == ("User", "AuthenticatorEnrollment")
        assert isinstance(enrollment["detailEntry"]["methodUsedVerifiedProperties"], str)
        assert to_fact(event).engine == Engine.IDENTITY_ENGINE
    known = [to_fact(e).factor.type for e in activations if "CLAIMS_PROVIDER" not in
             (e["outcome"]["reason"] or "")]
    assert "unknown" not in known
    assert {"okta_verify_push", "sms", "voice", "webauthn", "email"} <= set(known)


def test_identity_engine_phone_enrollments_are_sms_and_voice_twins(big_org: SimOrg) -> None:
    phone = [e for e in big_org.events([ACTIVATE])
             if len(e["target"]) == 2 and e["target"][1]["displayName"] == "Phone"]
    pairs: dict[tuple[str, str], list[str]] = {}
    for event in phone:
        key = (event["published"], event["target"][1]["id"])
        pairs.setdefault(key, []).append(event["target"][1]["detailEntry"]["methodTypeUsed"])
    assert pairs
    assert all(sorted(methods) == ["SMS", "VOICE"] for methods in pairs.values())
    assert {to_fact(e).factor.type for e in phone} == {"sms", "voice"}


def test_activations_come_from_users_admins_api_tokens_and_service_apps(
    big_org: SimOrg,
) -> None:
    facts = [to_fact(e) for e in big_org.events([ACTIVATE])]
    by = Counter(f.enrolled_by for f in facts)
    assert by[EnrolledBy.SELF] > by[EnrolledBy.ADMIN] > 0
    assert by[EnrolledBy.API] > 0
    assert set(by) == {EnrolledBy.SELF, EnrolledBy.ADMIN, EnrolledBy.API}
    events = big_org.events([ACTIVATE])
    assert any(e["transaction"]["detail"].get("requestApiTokenId") == big_org.api_token_id
               for e in events)
    assert any(e["actor"]["type"] == "PublicClientApp" and e["client"]["id"] == e["actor"]["id"]
               for e in events)


def test_the_factors_api_agrees_with_the_log(big_org: SimOrg) -> None:
    for event in big_org.events([ACTIVATE])[-40:]:
        user = big_org.user(event["target"][0]["id"])
        assert user is not None
        fact = to_fact(event)
        if len(event["target"]) == 2:
            enrollment_ids = {e["id"] for e in user.enrollments}
            assert event["target"][1]["id"] in enrollment_ids
        types = {f["factorType"] for f in user.factors}
        expected = {"sms": "sms", "voice": "call", "email": "email", "webauthn": "webauthn",
                    "okta_verify_push": "push"}.get(fact.factor.type)
        if expected is not None:
            # (a deactivation of this user's factors published later may have removed it)
            deactivated_later = any(
                d["target"][0]["id"] == user.id and d["published"] > event["published"]
                for d in big_org.events(["user.mfa.factor.deactivate"]))
            assert expected in types or deactivated_later, (event["uuid"], expected, types)


# -- the API as raw HTTP sees it -----------------------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[OktaSimulator, str, rsa.RSAPrivateKey]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    clock = ManualClock()
    org = generate_org(20, seed=8, clock=clock)
    org.generate_enrollments(12, seed=8)
    sim = OktaSimulator(org, SimulatorConfig(
        api_tokens=(TOKEN,), oauth_apps=(OAuthApp(CLIENT_ID, {"k1": key.public_key()}),)))
    with ThreadedServer(sim.app) as server:
        yield sim, server.base_url, key


def ssws() -> dict[str, str]:
    return {"Authorization": f"SSWS {TOKEN}"}


def assert_okta_error(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status
    body: dict[str, Any] = answer.json()
    assert set(body) == ERROR_KEYS
    assert body["errorCode"] == body["errorLink"] == code
    return body


def test_errors_have_okta_shape_and_every_answer_has_rate_limit_headers(
    served: tuple[OktaSimulator, str, Any],
) -> None:
    sim, base, _key = served
    user = next(iter(sim.org.users.values()))
    with httpx.Client(base_url=base) as http:
        missing = http.get(f"/api/v1/users/{user.id}")
        body = assert_okta_error(missing, 401, "E0000005")
        assert body["errorSummary"] == "Invalid session"
        wrong = http.get(f"/api/v1/users/{user.id}", headers={"Authorization": "SSWS nope"})
        assert_okta_error(wrong, 401, "E0000011")
        unknown = http.get("/api/v1/users/00uMissing", headers=ssws())
        body = assert_okta_error(unknown, 404, "E0000007")
        assert "00uMissing" in body["errorSummary"]
        for answer in (missing, wrong, unknown):
            assert all(answer.headers.get(h, "").isdigit() for h in RATE_HEADERS)
            assert answer.headers["date"].endswith("GMT")
        assert_okta_error(http.post(f"/api/v1/users/{user.id}", headers=ssws()), 405,
                          "E0000022")
        assert_okta_error(http.get("/api/v1/apps", headers=ssws()), 404, "E0000007")
        ok = http.get(f"/api/v1/users/{user.login}", headers=ssws())
        assert ok.status_code == 200
        assert ok.json()["_links"]["self"]["href"] == f"{base}/api/v1/users/{user.id}"


@pytest.mark.parametrize(("query", "code", "cause"), [
    ({"limit": "1001"}, "E0000001", "between 0 and 1000"),
    ({"limit": "many"}, "E0000001", "between 0 and 1000"),
    ({"since": "2026-01-01T00:00:00Z", "after": "1_1"}, "E0000001", "cannot be used together"),
    ({"after": "not-a-cursor"}, "E0000001", "not a cursor"),
    ({"until": "yesterday"}, "E0000001", "not an ISO 8601 timestamp"),
    ({"filter": 'published gt "2026-01-01"'}, "E0000031", "published cannot be used"),
    ({"filter": 'debugContext.debugData.url co "/api"'}, "E0000031", "'co' is not supported"),
    ({"filter": 'eventType is "x"'}, "E0000031", "unknown operator"),
])
def test_bad_log_queries_are_refused_with_a_reason(
    served: tuple[OktaSimulator, str, Any], query: dict[str, str], code: str, cause: str,
) -> None:
    sim, base, _key = served
    before = sim.org.events()
    answer = httpx.get(f"{base}/api/v1/logs", params=query, headers=ssws())
    body = assert_okta_error(answer, 400, code)
    assert cause in orjson.dumps(body).decode()
    assert sim.org.events() == before


def test_since_more_than_180_days_ago_is_refused(
    served: tuple[OktaSimulator, str, Any],
) -> None:
    sim, base, _key = served
    long_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sim.clock.time() - 200 * 86_400))
    answer = httpx.get(f"{base}/api/v1/logs", params={"since": long_ago}, headers=ssws())
    assert_okta_error(answer, 400, "E0000053")


def test_logs_answer_with_separate_self_and_next_link_headers(
    served: tuple[OktaSimulator, str, Any],
) -> None:
    _sim, base, _key = served
    answer = httpx.get(f"{base}/api/v1/logs", headers=ssws(),
                       params={"limit": "2", "filter": 'eventType sw "user.mfa"'})
    assert answer.status_code == 200
    links = answer.headers.get_list("link")
    assert len(links) == 2
    assert links[0].endswith('>; rel="self"') and links[1].endswith('>; rel="next"')
    assert "after=" in links[1] and "limit=2" in links[1] and "filter=" in links[1]
    events = answer.json()
    assert len(events) == 2
    assert all(e["eventType"].startswith("user.mfa") for e in events)
    keyword = events[0]["target"][0]["alternateId"]
    found = httpx.get(f"{base}/api/v1/logs", headers=ssws(), params={"q": keyword}).json()
    assert found and all(keyword in orjson.dumps(e).decode() for e in found)


def assertion(key: Any, base: str, **changes: Any) -> str:
    now = int(time.time())
    claims = {"iss": CLIENT_ID, "sub": CLIENT_ID, "aud": f"{base}/oauth2/v1/token",
              "iat": now, "exp": now + 300, "jti": uuidlib.uuid4().hex}
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})


@pytest.mark.parametrize(("changes", "status", "error", "description"), [
    ({"aud": "https://example.okta.com/oauth2/v1/token"}, 401, "invalid_client",
     "The audience claim for client_assertion must be the endpoint"),
    ({"exp": "expired"}, 401, "invalid_client", "expired"),
    ({"exp": "far"}, 401, "invalid_client", "too far in the future"),
    ({"iss": "0oaSomebodyElse0001"}, 401, "invalid_client", "Invalid value for 'client_id'"),
    ({"sub": "0oaSomebodyElse0001"}, 401, "invalid_client", "sub claim"),
    ({"exp": None}, 401, "invalid_client", "missing the 'exp' claim"),
    ({"scope": "okta.apps.manage"}, 400, "invalid_scope", "okta.apps.manage"),
    ({"scope": ""}, 400, "invalid_scope", "'scope' must be provided"),
    ({"grant_type": "password"}, 400, "unsupported_grant_type", "not supported"),
])
def test_the_token_endpoint_refuses_bad_client_assertions(
    served: tuple[OktaSimulator, str, Any], changes: dict[str, Any], status: int, error: str,
    description: str,
) -> None:
    sim, base, key = served
    now = sim.clock.time()
    claim_changes = {k: v for k, v in changes.items() if k not in ("scope", "grant_type")}
    if claim_changes.get("exp") == "expired":
        claim_changes["exp"] = int(now) - 1
    elif claim_changes.get("exp") == "far":
        claim_changes["exp"] = int(now) + 7200
    elif "exp" not in claim_changes:
        claim_changes["exp"] = int(now) + 300
    form = {"grant_type": changes.get("grant_type", "client_credentials"),
            "scope": changes.get("scope", "okta.users.read"),
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion(key, base, **claim_changes)}
    answer = httpx.post(f"{base}/oauth2/v1/token", data=form)
    assert answer.status_code == status
    assert answer.json()["error"] == error
    assert description in answer.json()["error_description"]
    assert [t.status for t in sim.token_requests] == [status]


def test_a_client_assertion_cannot_be_used_twice(
    served: tuple[OktaSimulator, str, Any],
) -> None:
    sim, base, key = served
    form = {"grant_type": "client_credentials", "scope": "okta.users.read okta.logs.read",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion(key, base, exp=int(sim.clock.time()) + 300)}
    first = httpx.post(f"{base}/oauth2/v1/token", data=form)
    assert first.status_code == 200
    body = first.json()
    assert (body["token_type"], body["expires_in"], body["scope"]) \
        == ("Bearer", 3600, "okta.users.read okta.logs.read")
    replay = httpx.post(f"{base}/oauth2/v1/token", data=form)
    assert replay.status_code == 401
    assert "already been used" in replay.json()["error_description"]
    user = next(iter(sim.org.users.values()))
    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    assert httpx.get(f"{base}/api/v1/users/{user.id}", headers=bearer).status_code == 200
    refused = httpx.get(f"{base}/api/v1/groups/{user.group_ids[0]}", headers=bearer)
    assert_okta_error(refused, 403, "E0000006")
    assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]


# -- the hook sender against a real receiver ----------------------------------------------------


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("receiver")
    with ServerProcess(workdir, secret=SECRET,
                       env={"FACTORFLOW_WORKFLOWS__ENABLED": "false"}) as server:
        server.start()
        yield server


def stored(server: ServerProcess, uuids: list[str]) -> dict[str, bytes]:
    store = open_store(server.store_url, migrate=False)
    try:
        found = {u: store.get_event(u) for u in uuids}
    finally:
        store.close()
    return {u: e.raw for u, e in found.items() if e is not None}


def test_sender_verifies_and_every_delivered_event_is_stored(receiver: ServerProcess) -> None:
    org = generate_org(25, seed=31)
    events = subscribed(org.generate_enrollments(20, seed=31))
    sender = HookSender(receiver.hook_url, secret=SECRET, org_url="https://example.okta.com")
    sender.verify()
    summary = sender.send(events, SendOptions(batch_size=4))
    assert summary.events == len(events)
    assert summary.deliveries == -(-len(events) // 4)
    assert (summary.sent, summary.acknowledged, summary.failed, summary.retried) == (
        summary.deliveries, summary.deliveries, 0, 0)
    assert summary.receiver_counts() == {"new": len(events), "duplicate": 0, "quarantined": 0}
    uuids = [e["uuid"] for e in events]
    kept = stored(receiver, uuids)
    assert set(kept) == set(uuids)
    copy = orjson.loads(kept[uuids[0]])
    assert "insertionTimestamp" in copy and "ipChain" in copy["client"]  # hook quirks


def test_dropped_deliveries_are_missing_from_the_store_but_in_the_system_log(
    receiver: ServerProcess,
) -> None:
    org = generate_org(25, seed=32)
    events = subscribed(org.generate_enrollments(40, seed=32))
    sender = HookSender(receiver.hook_url, secret=SECRET)
    summary = sender.send(events, SendOptions(batch_size=3, drop=0.3, duplicate=0.3,
                                              reorder=True, seed=5))
    assert summary.dropped > 0 and summary.duplicated > 0
    assert summary.sent == summary.deliveries - summary.dropped + summary.duplicated
    assert summary.acknowledged == summary.sent and summary.failed == 0
    delivered = summary.acknowledged_uuids
    dropped = set(summary.dropped_uuids)
    assert delivered.isdisjoint(dropped)
    assert delivered | dropped == {e["uuid"] for e in events}
    kept = stored(receiver, [e["uuid"] for e in events])
    assert set(kept) == delivered
    duplicated_events = sum(len(o.uuids) for o in summary.outcomes if o.copy == 2)
    assert summary.receiver_counts()["duplicate"] == duplicated_events
    assert summary.receiver_counts()["new"] == len(delivered)
    # what reconciliation will find: the System Log still has every dropped event
    sim = OktaSimulator(org, SimulatorConfig(api_tokens=(TOKEN,)))
    with ThreadedServer(sim.app) as api, OktaClient(OktaApiSettings(
            org_url=api.base_url, api_token=TOKEN)) as client:
        in_log = {e["uuid"] for e in client.iter_logs(filter=f'eventType eq "{ACTIVATE}" or '
                                                      'eventType eq "user.mfa.factor.deactivate"')}
    assert dropped <= in_log
    assert not dropped & set(kept)


# -- the hook sender's retry rules, against a scripted peer ------------------------------------


class ScriptedReceiver:
    """Answers deliveries from a script: a status, or "hang" (longer than the timeout)."""

    def __init__(self, script: list[int | str], challenge: str | None = None,
                 verify_status: int = 200) -> None:
        self.script = list(script)
        self.bodies: list[bytes] = []
        self.verify_status = verify_status
        self.challenge = challenge

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = dict(scope["headers"])
        if scope["method"] == "GET":
            echoed = self.challenge or headers.get(b"x-okta-verification-challenge", b"").decode()
            await self._answer(send, self.verify_status, orjson.dumps({"verification": echoed}))
            return
        self.bodies.append(body)
        step = self.script.pop(0) if self.script else 204
        if step == "hang":
            await asyncio.sleep(3.0)
            step = 204
        await self._answer(send, int(step), b"")

    @staticmethod
    async def _answer(send: Any, status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize(("script", "posts", "acknowledged", "retried"), [
    ([500, 204], 2, True, 1),  # a 5xx is retried once
    ([503, 502], 2, False, 1),  # ... and only once
    ([400], 1, False, 0),  # a 4xx never
    ([429], 1, False, 0),
    (["hang", 204], 2, True, 1),  # a timeout is retried once
])
def test_one_retry_after_a_5xx_or_a_timeout_never_after_a_4xx(
    script: list[int | str], posts: int, acknowledged: bool, retried: int,
) -> None:
    peer = ScriptedReceiver(script)
    with ThreadedServer(peer) as server:
        sender = HookSender(server.base_url + "/hook", secret=SECRET, timeout_seconds=1.0)
        sender.verify()
        event = generate_org(5, seed=1).generate_enrollments(1, seed=1)
        summary = sender.send(subscribed(event)[:1])
    assert len(peer.bodies) == posts
    assert len(set(peer.bodies)) == 1  # the retry is the same delivery
    assert summary.retried == retried
    assert (summary.acknowledged, summary.failed) == ((1, 0) if acknowledged else (0, 1))


def test_delays_pause_before_each_delivery() -> None:
    peer = ScriptedReceiver([])
    pauses: list[float] = []
    events = subscribed(generate_org(10, seed=2).generate_enrollments(6, seed=2))
    with ThreadedServer(peer) as server:
        sender = HookSender(server.base_url + "/hook", secret=SECRET, sleep=pauses.append)
        summary = sender.send(events, SendOptions(batch_size=2, max_delay_seconds=5.0))
    assert summary.acknowledged == summary.sent == len(peer.bodies) == len(pauses) > 0
    assert all(0 <= pause <= 5.0 for pause in pauses)
    delivered = [orjson.loads(body) for body in peer.bodies]
    assert [len(d["data"]["events"]) for d in delivered][:-1] == [2] * (len(delivered) - 1)
    assert {d["eventType"] for d in delivered} == {"com.okta.event_hook"}
    assert len({d["eventId"] for d in delivered}) == len(delivered)
    assert all(d["source"].endswith("/api/v1/eventHooks/whoSimulatedHook0001")
               for d in delivered)


@pytest.mark.parametrize(("peer", "message"), [
    (ScriptedReceiver([], challenge="something else"), "did not echo the challenge"),
    (ScriptedReceiver([], verify_status=401), "verification answered 401"),
])
def test_a_receiver_that_fails_verification_gets_nothing(peer: ScriptedReceiver,
                                                         message: str) -> None:
    with ThreadedServer(peer) as server:
        sender = HookSender(server.base_url + "/hook", secret=SECRET)
        with pytest.raises(SendFailed, match=message):
            sender.verify()
    assert peer.bodies == []


# -- the command line ---------------------------------------------------------------------------


def test_simulate_send_command(receiver: ServerProcess) -> None:
    result = CliRunner().invoke(simulate, [
        "send", receiver.hook_url, "--secret", SECRET, "--users", "10", "--seed", "41",
        "--enrollments", "6", "--batch", "2",
    ])
    assert result.exit_code == 0, result.output
    assert "verification: OK" in result.output
    assert re.search(r"acknowledged: \d+\s+failed: 0", result.output)
    plain = CliRunner().invoke(simulate, [
        "send", receiver.hook_url, "--secret", SECRET, "--users", "10", "--seed", "43",
        "--enrollments", "3", "--no-hook-quirks",
    ])
    assert plain.exit_code == 0, plain.output
    uuids = [e["uuid"] for e in subscribed(generate_org(10, seed=43).generate_enrollments(
        3, seed=43))]
    kept = stored(receiver, uuids)
    assert set(kept) == set(uuids)
    assert all(b"insertionTimestamp" not in raw for raw in kept.values())
    wrong = CliRunner().invoke(simulate, ["send", receiver.hook_url, "--secret", "wrong"])
    assert wrong.exit_code == 1
    assert "verification answered 401" in wrong.output


def test_simulate_serve_command_serves_the_api_and_feeds_the_hook(
    receiver: ServerProcess, tmp_path: Path,
) -> None:
    port = free_port()
    log_path = tmp_path / "simulator.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "factorflow.cli_okta", "serve", "--port", str(port),
             "--users", "15", "--seed", "42", "--enrollments", "8", "--api-token", TOKEN,
             "--hook-url", receiver.hook_url, "--hook-secret", SECRET, "--batch", "3"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )
        try:
            settings = OktaApiSettings(org_url=f"http://127.0.0.1:{port}", api_token=TOKEN)
            with OktaClient(settings) as client:
                activations = wait_for(lambda: list(client.iter_logs(
                    filter=f'eventType eq "{ACTIVATE}"')))
                uuids = [e["uuid"] for e in activations]
                assert len(uuids) >= 8
                kept = wait_for(lambda: stored(receiver, uuids) if len(
                    stored(receiver, uuids)) == len(uuids) else None)
                assert set(kept) == set(uuids)
        finally:
            process.terminate()
            process.wait(10)
    output = log_path.read_text(encoding="utf-8")
    assert f"API token: {TOKEN}" in output
    assert "hook: events:" in output


def wait_for(probe: Any, timeout: float = 30.0) -> Any:
    """Poll ``probe`` until it returns something truthy (a process is starting up)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except Exception:
            value = None
            if time.monotonic() > deadline:
                raise
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("the simulator did not get there in time")
        time.sleep(0.1)


# -- OpenID Connect: the authorization servers --------------------------------------------------

OIDC_CLIENT = "0oaDashboardSim0001"
OIDC_SECRET = "oidc-simulator-secret-7d41a9"
PUBLIC_CLIENT = "0oaPublicSpa000001"
REDIRECT = "https://factorflow.example.com/ui/auth/oidc/callback"
OPERATORS = "Factorflow Operators"
WATCHED_SECRETS.add(OIDC_SECRET)


@dataclass
class Oidc:
    sim: OktaSimulator
    base: str
    clock: ManualClock
    http: httpx.Client

    def authorize(self, server: str = "/oauth2/default", **params: str) -> tuple[
            httpx.Response, str]:
        """An authorization request as the dashboard makes it; (answer, code verifier)."""
        verifier = secrets.token_urlsafe(48)
        query = {"client_id": OIDC_CLIENT, "redirect_uri": REDIRECT, "response_type": "code",
                 "scope": "openid profile email groups", "state": "st-123", "nonce": "nn-456",
                 "code_challenge": s256(verifier), "code_challenge_method": "S256", **params}
        query = {k: v for k, v in query.items() if v != "-"}  # "-": leave the parameter out
        return self.http.get(f"{server}/v1/authorize", params=query), verifier

    def code(self, server: str = "/oauth2/default", **params: str) -> tuple[str, str]:
        answer, verifier = self.authorize(server, **params)
        assert answer.status_code == 302, answer.text
        back = parse_qs(urlsplit(answer.headers["location"]).query)
        assert back["state"] == ["st-123"]
        return back["code"][0], verifier

    def exchange(self, code: str, verifier: str, server: str = "/oauth2/default", *,
                 auth: Any = None, **fields: str) -> httpx.Response:
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
                "code_verifier": verifier, **fields}
        form = {k: v for k, v in form.items() if v != "-"}
        basic = httpx.BasicAuth(OIDC_CLIENT, OIDC_SECRET) if auth is None else auth
        return self.http.post(f"{server}/v1/token", data=form,
                              **({"auth": basic} if basic else {}))


@pytest.fixture
def oidc() -> Iterator[Oidc]:
    clock = ManualClock(start=time.time())
    org = generate_org(20, seed=9, clock=clock)
    operators = org.add_group(OPERATORS)
    admin = org.api_admin
    org.set_membership(operators.id, admin.id, True, api_actor(admin.ref()))
    sim = OktaSimulator(org, SimulatorConfig(oidc_apps=(
        OidcApp(OIDC_CLIENT, OIDC_SECRET, (REDIRECT,), assigned_groups=("Everyone",)),
        OidcApp(PUBLIC_CLIENT, None, (REDIRECT,), assigned_groups=(OPERATORS,)),
    )), clock=clock)
    with ThreadedServer(sim.app) as server, httpx.Client(base_url=server.base_url,
                                                          timeout=10) as http:
        yield Oidc(sim, server.base_url, clock, http)


def verified(oidc: Oidc, token: str, issuer: str, audience: str) -> dict[str, Any]:
    """The token's claims, checked with PyJWT against the issuer's published keys."""
    keys = oidc.http.get(oidc.http.get(f"{issuer.removeprefix(oidc.base)}"
                                       "/.well-known/openid-configuration")
                         .json()["jwks_uri"]).json()["keys"]
    kid = jwt.get_unverified_header(token)["kid"]
    (jwk,) = [k for k in keys if k["kid"] == kid]
    assert (jwk["kty"], jwk["alg"], jwk["use"]) == ("RSA", "RS256", "sig")
    claims: dict[str, Any] = jwt.decode(
        token, jwt.PyJWK(jwk).key, algorithms=["RS256"], audience=audience, issuer=issuer,
        options={"verify_iat": False}, leeway=120)
    return claims


def test_discovery_documents_of_the_org_and_custom_authorization_servers(oidc: Oidc) -> None:
    org = oidc.http.get("/.well-known/openid-configuration").json()
    default = oidc.http.get("/oauth2/default/.well-known/openid-configuration").json()
    assert org["issuer"] == oidc.base
    assert default["issuer"] == f"{oidc.base}/oauth2/default"
    for document, endpoints in ((org, f"{oidc.base}/oauth2/v1"),
                                (default, f"{oidc.base}/oauth2/default/v1")):
        assert document["authorization_endpoint"] == f"{endpoints}/authorize"
        assert document["token_endpoint"] == f"{endpoints}/token"
        assert document["jwks_uri"] == f"{endpoints}/keys"
        assert document["userinfo_endpoint"] == f"{endpoints}/userinfo"
        assert document["code_challenge_methods_supported"] == ["S256"]
        assert document["id_token_signing_alg_values_supported"] == ["RS256"]
        assert {"client_secret_basic", "client_secret_post"} <= set(
            document["token_endpoint_auth_methods_supported"])
        assert "groups" in document["scopes_supported"]
    assert "private_key_jwt" in org["token_endpoint_auth_methods_supported"]
    # The two servers sign with keys of their own.
    org_keys = oidc.http.get("/oauth2/v1/keys").json()["keys"]
    default_keys = oidc.http.get("/oauth2/default/v1/keys").json()["keys"]
    assert {k["kid"] for k in org_keys}.isdisjoint(k["kid"] for k in default_keys)
    unknown = oidc.http.get("/oauth2/aus-nope/.well-known/openid-configuration")
    assert_okta_error(unknown, 404, "E0000007")
    assert "aus-nope (AuthorizationServer)" in unknown.json()["errorSummary"]


@pytest.mark.parametrize("server", ["/oauth2/default", "/oauth2"])
def test_the_code_flow_signs_in_a_user_of_the_org_with_their_groups(
    oidc: Oidc, server: str
) -> None:
    admin = oidc.sim.org.api_admin
    code, verifier = oidc.code(server)
    assert oidc.sim.oidc.requests[-1].params["code_challenge_method"] == "S256"
    answer = oidc.exchange(code, verifier, server)
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    tokens = answer.json()
    assert (tokens["token_type"], tokens["expires_in"]) == ("Bearer", 3600)
    assert tokens["scope"] == "openid profile email groups"
    issuer = oidc.base + ("/oauth2/default" if server != "/oauth2" else "")
    claims = verified(oidc, tokens["id_token"], issuer, OIDC_CLIENT)
    assert claims["sub"] == admin.id and claims["nonce"] == "nn-456"
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["iat"] == int(oidc.clock.time())
    assert (claims["email"], claims["preferred_username"]) == (admin.login, admin.login)
    assert claims["name"] == admin.display_name
    groups = {oidc.sim.org.groups[g].name for g in admin.group_ids}
    assert set(claims["groups"]) == groups and OPERATORS in groups
    assert claims["at_hash"] == oidc_b64url(
        hashlib.sha256(tokens["access_token"].encode()).digest()[:16])
    # The dashboard's own validation accepts it too.
    keys = oidc.http.get(f"{server}/v1/keys").json()["keys"]
    assert verify_id_token(tokens["id_token"], keys=keys, issuer=issuer, client_id=OIDC_CLIENT,
                           nonce="nn-456", now=oidc.clock.time())["sub"] == admin.id
    access = verified(oidc, tokens["access_token"], issuer,
                      oidc.base if server == "/oauth2" else "api://default")
    assert (access["cid"], access["uid"]) == (OIDC_CLIENT, admin.id)
    info = oidc.http.get(f"{server}/v1/userinfo",
                         headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert info.status_code == 200
    assert info.json()["sub"] == admin.id and set(info.json()["groups"]) == groups
    bad = oidc.http.get(f"{server}/v1/userinfo", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_token"
    assert bad.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    oidc.clock.advance(3601)
    late = oidc.http.get(f"{server}/v1/userinfo",
                         headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert late.status_code == 401


def test_who_is_signed_in_login_hint_scopes_and_the_post_body_secret(oidc: Oidc) -> None:
    users = [u for u in oidc.sim.org.users.values() if u.status == "ACTIVE"]
    other = users[5]
    oidc.sim.oidc.sign_in_as(other.login)
    code, verifier = oidc.code(scope="openid email")
    answer = oidc.exchange(code, verifier, auth=False, client_id=OIDC_CLIENT,
                           client_secret=OIDC_SECRET)  # client_secret_post
    assert answer.status_code == 200, answer.text
    claims = jwt.decode(answer.json()["id_token"], options={"verify_signature": False})
    assert (claims["sub"], claims["email"]) == (other.id, other.login)
    assert "groups" not in claims and "preferred_username" not in claims  # not asked for
    hinted = users[7]
    code, verifier = oidc.code(login_hint=hinted.login)
    claims = jwt.decode(oidc.exchange(code, verifier).json()["id_token"],
                        options={"verify_signature": False})
    assert claims["sub"] == hinted.id
    # Without a nonce, the ID token has none.
    code, verifier = oidc.code(nonce="-")
    claims = jwt.decode(oidc.exchange(code, verifier).json()["id_token"],
                        options={"verify_signature": False})
    assert "nonce" not in claims
    # The recorded requests never hold a client secret.
    token_requests = [r for r in oidc.sim.oidc.requests if r.endpoint == "token"]
    assert token_requests[0].params["client_secret"] == "<hidden>"
    assert all(OIDC_SECRET not in str(r) for r in oidc.sim.oidc.requests)


@pytest.mark.parametrize(("change", "status", "error", "description"), [
    ({"auth": httpx.BasicAuth(OIDC_CLIENT, "wrong")}, 401, "invalid_client",
     "The client secret supplied for a confidential client is invalid."),
    ({"auth": False, "client_id": OIDC_CLIENT, "client_secret": "wrong"}, 401,
     "invalid_client", "The client secret supplied for a confidential client is invalid."),
    ({"auth": False, "client_id": OIDC_CLIENT}, 401, "invalid_client",
     "No client credentials found."),
    ({"auth": httpx.BasicAuth("0oaNobody", "x")}, 401, "invalid_client",
     "Invalid value for 'client_id' parameter."),
    ({"client_secret": OIDC_SECRET}, 400, "invalid_request",
     "Cannot supply multiple client credentials."),
    ({"verifier": "x" * 64}, 400, "invalid_grant", "PKCE verification failed."),
    ({"code_verifier": "-"}, 400, "invalid_grant", "PKCE verification failed."),
    ({"redirect_uri": "https://factorflow.example.com/elsewhere"}, 400, "invalid_grant",
     "The 'redirect_uri' does not match the redirection URI used in the authorization "
     "request."),
    ({"grant_type": "password"}, 400, "unsupported_grant_type",
     "The authorization grant type is not supported."),
    ({"code": "not-a-code"}, 400, "invalid_grant",
     "The authorization code is invalid or has expired."),
    ({"server": "/oauth2"}, 400, "invalid_grant",  # a code of one server at another
     "The authorization code is invalid or has expired."),
])
def test_bad_token_requests_are_refused_like_okta(
    oidc: Oidc, change: dict[str, Any], status: int, error: str, description: str
) -> None:
    code, verifier = oidc.code()
    fields = {k: v for k, v in change.items() if k not in ("auth", "verifier", "server")}
    answer = oidc.exchange(fields.pop("code", code), change.get("verifier", verifier),
                           change.get("server", "/oauth2/default"), auth=change.get("auth"),
                           **fields)
    assert answer.status_code == status
    body = answer.json()
    assert body["error"] == error and body["error_description"].startswith(description)
    assert "id_token" not in body and "access_token" not in body
    if isinstance(change.get("auth"), httpx.BasicAuth):
        assert answer.headers["www-authenticate"].startswith("Basic realm=")
    if status == 400 and error == "invalid_grant" and "code" not in change:
        # The code was spent by the failed exchange: the right one cannot follow.
        again = oidc.exchange(code, verifier)
        assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_a_code_is_single_use_and_short_lived(oidc: Oidc) -> None:
    code, verifier = oidc.code()
    assert oidc.exchange(code, verifier).status_code == 200
    reused = oidc.exchange(code, verifier)
    assert (reused.status_code, reused.json()["error"]) == (400, "invalid_grant")
    code, verifier = oidc.code()
    oidc.clock.advance(299)
    assert oidc.exchange(code, verifier).status_code == 200
    code, verifier = oidc.code()
    oidc.clock.advance(300)
    expired = oidc.exchange(code, verifier)
    assert (expired.status_code, expired.json()["error_description"]) == (
        400, "The authorization code is invalid or has expired.")


@pytest.mark.parametrize(("params", "error", "description"), [
    ({"code_challenge": "-"}, "invalid_request",
     "PKCE code challenge is required by the application."),
    ({"code_challenge_method": "plain"}, "invalid_request",
     "PKCE code challenge method is not supported. Supported methods: S256."),
    ({"code_challenge": "too-short"}, "invalid_request", "PKCE code challenge must be"),
    ({"state": "-"}, "invalid_request",
     "The authentication request has an invalid 'state' parameter."),
    ({"scope": "openid okta.users.manage"}, "invalid_scope",
     "One or more scopes are not configured for the authorization server resource: "
     "okta.users.manage"),
    ({"response_type": "token"}, "unsupported_response_type",
     "The response type is not supported by the authorization server."),
    ({"login_hint": "nobody@example.com"}, "access_denied", "The user could not be signed in."),
])
def test_bad_authorization_requests_go_back_to_the_app_with_the_error(
    oidc: Oidc, params: dict[str, str], error: str, description: str
) -> None:
    answer, _ = oidc.authorize(**params)
    assert answer.status_code == 302
    location = answer.headers["location"]
    assert location.startswith(REDIRECT + "?")
    back = parse_qs(urlsplit(location).query)
    assert back["error"] == [error] and back["error_description"][0].startswith(description)
    assert "code" not in back
    assert back.get("state") == (None if params.get("state") == "-" else ["st-123"])


def test_who_may_not_sign_in_and_requests_that_cannot_go_back(oidc: Oidc) -> None:
    suspended = list(oidc.sim.org.users.values())[4]
    suspended.status = "SUSPENDED"
    answer, _ = oidc.authorize(login_hint=suspended.login)
    assert parse_qs(urlsplit(answer.headers["location"]).query)["error"] == ["access_denied"]
    # The public app is assigned to the operators only.
    outsider = next(u for u in oidc.sim.org.users.values()
                    if u.status == "ACTIVE" and u.id != oidc.sim.org.api_admin.id)
    answer, _ = oidc.authorize(client_id=PUBLIC_CLIENT, login_hint=outsider.login)
    back = parse_qs(urlsplit(answer.headers["location"]).query)
    assert back["error_description"] == ["User is not assigned to the client application."]
    # An unknown client or redirect URI: an error page, no redirect.
    for params, error in (({"client_id": "0oaNobody"}, "invalid_client"),
                          ({"redirect_uri": "https://evil.example.com/cb"}, "invalid_request")):
        page, _ = oidc.authorize(**params)
        assert page.status_code == 400 and "location" not in page.headers
        assert f'<p id="error">{error}</p>' in page.text
    assert "must be a Login redirect URI" in page.text


def test_a_public_client_relies_on_pkce_alone(oidc: Oidc) -> None:
    code, verifier = oidc.code(client_id=PUBLIC_CLIENT)
    answer = oidc.exchange(code, verifier, auth=False, client_id=PUBLIC_CLIENT)
    assert answer.status_code == 200, answer.text
    code, verifier = oidc.code(client_id=PUBLIC_CLIENT)
    refused = oidc.exchange(code, verifier, auth=False, client_id=PUBLIC_CLIENT,
                            client_secret="anything")
    assert (refused.status_code, refused.json()["error"]) == (401, "invalid_client")


def test_rotated_keys_and_overridden_id_tokens(oidc: Oidc) -> None:
    code, verifier = oidc.code()
    first = jwt.get_unverified_header(oidc.exchange(code, verifier).json()["id_token"])["kid"]
    oidc.sim.oidc.rotate_keys("default")
    keys = [k["kid"] for k in oidc.http.get("/oauth2/default/v1/keys").json()["keys"]]
    assert len(keys) == 2 and keys[1] == first
    code, verifier = oidc.code()
    token = oidc.exchange(code, verifier).json()["id_token"]
    assert jwt.get_unverified_header(token)["kid"] == keys[0]
    oidc.sim.oidc.override_id_tokens(claims={"aud": "someone-else"}, header={"alg": "none"})
    code, verifier = oidc.code()
    token = oidc.exchange(code, verifier).json()["id_token"]
    assert jwt.get_unverified_header(token)["alg"] == "none"
    assert jwt.decode(token, options={"verify_signature": False})["aud"] == "someone-else"
    oidc.sim.oidc.override_id_tokens()
    code, verifier = oidc.code()
    verified(oidc, oidc.exchange(code, verifier).json()["id_token"],
             f"{oidc.base}/oauth2/default", OIDC_CLIENT)


def test_simulate_serve_registers_an_oidc_app(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "simulator.log"
    secret_file = tmp_path / "oidc-secret"
    secret_file.write_text(OIDC_SECRET + "\n", encoding="utf-8")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "factorflow.cli_okta", "serve", "--port", str(port),
             "--users", "12", "--seed", "3", "--enrollments", "0", "--api-token", TOKEN,
             "--oidc-client-id", OIDC_CLIENT, "--oidc-client-secret-file", str(secret_file),
             "--oidc-redirect-uri", REDIRECT, "--member", f"{OPERATORS}=2",
             "--sign-in-as", "2"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(lambda: httpx.get(f"{base}/oauth2/default/.well-known/"
                                       "openid-configuration").status_code == 200)
            with httpx.Client(base_url=base, timeout=10) as http:
                served = Oidc(None, base, ManualClock(), http)  # type: ignore[arg-type]
                code, verifier = served.code()
                answer = served.exchange(code, verifier)
                assert answer.status_code == 200, answer.text
                claims = jwt.decode(answer.json()["id_token"],
                                    options={"verify_signature": False})
                assert OPERATORS in claims["groups"]
                user = httpx.get(f"{base}/api/v1/users/{claims['sub']}", headers=ssws()).json()
                assert user["profile"]["login"] == claims["preferred_username"]
                assert user["profile"]["employeeNumber"] == "1002"  # the org's third user
        finally:
            process.terminate()
            process.wait(10)
    output = log_path.read_text(encoding="utf-8")
    assert f"issuer {base}/oauth2/default" in output and OIDC_CLIENT in output
    assert OIDC_SECRET not in output


@pytest.mark.parametrize(("args", "message"), [
    (["--oidc-client-id", "0oaX"], "--oidc-client-id needs at least one --oidc-redirect-uri"),
    (["--oidc-redirect-uri", REDIRECT], "the --oidc-* options need --oidc-client-id"),
    (["--oidc-client-id", "0oaX", "--oidc-redirect-uri", REDIRECT, "--oidc-public",
      "--oidc-client-secret", "s"], "a public client (--oidc-public) has no secret"),
    (["--member", "Factorflow Operators=nobody@example.com"],
     "no user 'nobody@example.com' in the simulated org"),
    (["--member", "no-equals-sign"], "expected GROUP=USER"),
    (["--sign-in-as", "99"], "no user '99' in the simulated org"),
])
def test_simulate_serve_refuses_incomplete_oidc_options(args: list[str], message: str) -> None:
    result = CliRunner().invoke(simulate, ["serve", "--users", "5", "--enrollments", "0",
                                           "--api-token", TOKEN, *args])
    assert result.exit_code == 2
    assert message in result.output
