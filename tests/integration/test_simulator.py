"""The Okta simulator: the generated org and its events, its API as raw HTTP sees it, its token
endpoint, and the hook sender against a real ``factorflow serve`` process and a scripted peer."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import uuid as uuidlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.acceptance.serverproc import ServerProcess, free_port

from factorflow.cli_okta import simulate
from factorflow.domain.facts import Engine, EnrolledBy
from factorflow.okta.api import OktaApiSettings, OktaClient
from factorflow.okta.payloads import IncomingEvent, check_event
from factorflow.okta.simulator import (
    HookSender,
    ManualClock,
    OAuthApp,
    OktaSimulator,
    SendFailed,
    SendOptions,
    SimOrg,
    SimulatorConfig,
    ThreadedServer,
    generate_org,
    subscribed,
)
from factorflow.okta.translate import to_fact
from factorflow.store.factory import open_store

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
        if expected is not None and user.factors:
            # (a later deactivation may have removed it again)
            deactivated = any(d["target"][0]["id"] == user.id
                              for d in big_org.events(["user.mfa.factor.deactivate"]))
            assert expected in types or deactivated


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
