"""OktaClient against the Okta simulator served by uvicorn on 127.0.0.1 (a thread).

The simulator and the client share a manual clock: the client's waits advance it, so rate-limit
windows and token lifetimes play out in full without real waiting, and the waits are asserted
exactly (what Okta's headers said, not how long anything took).
"""

from __future__ import annotations

import json
import math
import random
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from factorflow.errors import PermanentActionError, TransientActionError
from factorflow.okta.api import (
    OktaApiError,
    OktaApiSettings,
    OktaAuthError,
    OktaClient,
    OktaNotFound,
    OktaUnavailable,
)
from factorflow.okta.ratelimit import bucket_for
from factorflow.okta.simulator import (
    PRIVILEGED_GROUP,
    ManualClock,
    OAuthApp,
    OktaSimulator,
    SimOrg,
    SimulatorConfig,
    ThreadedServer,
    generate_org,
)
from factorflow.okta.simulator.org import KIND_BY_NAME, make_enrollment, make_factor

TOKEN = "00simulatedApiToken-3f9c2a71"
CLIENT_ID = "0oaFactorflowTest01"
KID = "test-key-1"
ACTIVATE = "user.mfa.factor.activate"
USERS_BUCKET = "/api/v1/users/{id}"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def pem(key: Any) -> bytes:
    data: bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    return data


@dataclass
class Okta:
    """The simulated org served on a port, and a factory of clients for it."""

    org: SimOrg
    sim: OktaSimulator
    base_url: str
    clock: ManualClock
    tmp_path: Path
    clients: list[OktaClient] = field(default_factory=list)

    def client(self, *, key: Any = None, clock: bool = True, **settings: Any) -> OktaClient:
        if key is not None:
            key_file = self.tmp_path / f"key-{len(self.clients)}.pem"
            key_file.write_bytes(pem(key))
            settings = {"client_id": CLIENT_ID, "private_key_file": key_file, "key_id": KID,
                        **settings}
        elif "api_token_file" not in settings and "client_id" not in settings:
            settings.setdefault("api_token", TOKEN)
        settings.setdefault("org_url", self.base_url)
        extra: dict[str, Any] = {"clock": self.clock.time, "sleep": self.clock.sleep} if clock \
            else {}
        client = OktaClient(OktaApiSettings(**settings), **extra)
        self.clients.append(client)
        return client

    def user(self, index: int = 3) -> Any:
        return [u for u in self.org.users.values() if u.status == "ACTIVE"][index]

    def bucket_statuses(self, bucket: str) -> list[int]:
        return self.sim.statuses(bucket)


@pytest.fixture
def okta(tmp_path: Path, rsa_key: rsa.RSAPrivateKey,
         ec_key: ec.EllipticCurvePrivateKey) -> Iterator[Okta]:
    clock = ManualClock()
    org = generate_org(users=30, seed=11, clock=clock)
    org.generate_enrollments(30, seed=11)
    apps = (
        OAuthApp(CLIENT_ID, {KID: rsa_key.public_key()}),
        OAuthApp("0oaEllipticClient01", {None: ec_key.public_key()}),
        OAuthApp("0oaReadOnlyClient01", {KID: rsa_key.public_key()}, ("okta.users.read",)),
    )
    sim = OktaSimulator(org, SimulatorConfig(api_tokens=(TOKEN,), oauth_apps=apps), clock)
    with ThreadedServer(sim.app) as server:
        helper = Okta(org, sim, server.base_url, clock, tmp_path)
        yield helper
        for client in helper.clients:
            client.close()


# -- settings -------------------------------------------------------------------------------


def test_settings_require_exactly_one_way_to_authenticate(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no credentials"):
        OktaApiSettings(org_url="https://example.okta.com")
    with pytest.raises(ValidationError, match="not both"):
        OktaApiSettings(org_url="https://example.okta.com", api_token="x", client_id="0oa1",
                        private_key_file=tmp_path / "k.pem")
    with pytest.raises(ValidationError, match="needs both client_id and private_key_file"):
        OktaApiSettings(org_url="https://example.okta.com", client_id="0oa1")


def test_settings_insist_on_https_and_an_origin() -> None:
    with pytest.raises(ValidationError, match="must use https"):
        OktaApiSettings(org_url="http://example.okta.com", api_token="x")
    with pytest.raises(ValidationError, match="without a path"):
        OktaApiSettings(org_url="https://example.okta.com/api/v1", api_token="x")
    assert OktaApiSettings(org_url="http://127.0.0.1:8081", api_token="x").org_url \
        == "http://127.0.0.1:8081"
    assert OktaApiSettings(org_url="http://okta-sim:8081", api_token="x",
                           allow_http=True).org_url == "http://okta-sim:8081"
    settings = OktaApiSettings(org_url="https://Example.okta.com/", api_token="x",
                               scopes="okta.users.read, okta.logs.read")
    assert settings.org_url == "https://Example.okta.com"
    assert settings.scopes == ("okta.users.read", "okta.logs.read")


# -- reading users, groups and factors (SSWS) ------------------------------------------------


def test_users_by_id_and_by_login_with_an_api_token(okta: Okta) -> None:
    client = okta.client()
    user = okta.user()
    by_id = client.get_user(user.id)
    by_login = client.get_user(user.login.upper())
    assert by_id is not None and by_login is not None
    assert by_id["id"] == by_login["id"] == user.id
    assert by_id["profile"]["login"] == user.login
    assert by_id["profile"]["department"] == user.profile["department"]
    assert client.get_user("nobody@example.com") is None
    groups = client.list_user_groups(user.id)
    assert {g["profile"]["name"] for g in groups} == {
        okta.org.groups[g].name for g in user.group_ids}
    assert "Everyone" in {g["profile"]["name"] for g in groups}
    assert all(record.auth == "ssws" for record in okta.sim.requests)
    with pytest.raises(OktaNotFound) as missing:
        client.list_factors("00uNoSuchUser000000")
    assert missing.value.status == 404
    assert missing.value.error_code == "E0000007"
    assert "00uNoSuchUser000000" in missing.value.summary


def test_unknown_factor_types_come_through_as_plain_data(okta: Okta) -> None:
    user = okta.user(4)
    kind = KIND_BY_NAME["claims_provider"]
    rng = random.Random(1)
    user.factors.append(make_factor(rng, user, kind.factors[0], okta.clock.time()))
    user.enrollments.append(make_enrollment(rng, user, kind, okta.org.authenticator_ids,
                                            okta.clock.time()))
    client = okta.client()
    factors = client.list_factors(user.id)
    claims = [f for f in factors if f["factorType"] == "claims_provider"]
    assert len(claims) == 1
    assert claims[0]["provider"] == "CUSTOM"
    assert claims[0]["_links"]["user"]["href"].endswith(f"/api/v1/users/{user.id}")
    enrollments = client.list_authenticator_enrollments(user.id)
    assert {"federated", "password"} <= {e["type"] for e in enrollments}
    assert not any("_kind" in e for e in enrollments)


def test_a_wrong_api_token_is_refused_once_without_retrying(okta: Okta) -> None:
    client = okta.client(api_token="not-the-token")
    with pytest.raises(OktaAuthError) as refused:
        client.get_user(okta.user().id)
    assert refused.value.status == 401
    assert refused.value.error_code == "E0000011"
    assert refused.value.summary == "Invalid token provided"
    assert isinstance(refused.value, PermanentActionError)
    assert okta.bucket_statuses(USERS_BUCKET) == [401]


def test_api_token_from_a_file(okta: Okta, tmp_path: Path) -> None:
    token_file = tmp_path / "okta-token"
    token_file.write_text(f"SSWS {TOKEN}\n", encoding="utf-8")
    client = okta.client(api_token_file=token_file)
    assert client.get_user(okta.user().id) is not None


# -- OAuth service app with private_key_jwt --------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_private_key_jwt_token_is_fetched_once_and_used(
    okta: Okta, kind: str, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    if kind == "rsa":
        client = okta.client(key=rsa_key)
        client_id, alg, kid = CLIENT_ID, "RS256", KID
    else:
        client = okta.client(key=ec_key, client_id="0oaEllipticClient01", key_id=None)
        client_id, alg, kid = "0oaEllipticClient01", "ES256", None
    user = okta.user()
    assert client.get_user(user.id) is not None
    assert client.list_user_groups(user.id)
    assert client.list_logs(limit=1).events
    assert len(okta.sim.token_requests) == 1
    issued = okta.sim.token_requests[0]
    assert issued.status == 200
    assert issued.client_id == client_id
    assert issued.header["alg"] == alg
    assert issued.header.get("kid") == kid
    claims = issued.claims
    assert claims["aud"] == okta.base_url + "/oauth2/v1/token"
    assert claims["iss"] == claims["sub"] == client_id
    assert 0 < claims["exp"] - claims["iat"] <= 3600
    assert claims["jti"]
    api_calls = [r for r in okta.sim.requests if r.bucket != "/oauth2/v1/token"]
    assert [r.auth for r in api_calls] == ["bearer"] * 3
    assert [r.status for r in api_calls] == [200] * 3


def test_private_key_from_a_jwk_file_uses_its_kid(okta: Okta, rsa_key: rsa.RSAPrivateKey,
                                                  tmp_path: Path) -> None:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key))
    jwk["kid"] = KID
    key_file = tmp_path / "key.json"
    key_file.write_text(json.dumps(jwk), encoding="utf-8")
    client = okta.client(client_id=CLIENT_ID, private_key_file=key_file)
    assert client.get_user(okta.user().id) is not None
    assert okta.sim.token_requests[0].header["kid"] == KID


def test_a_key_the_app_does_not_have_is_refused_by_the_token_endpoint(okta: Okta) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    client = okta.client(key=stranger)
    with pytest.raises(OktaAuthError) as refused:
        client.get_user(okta.user().id)
    assert refused.value.status == 401
    assert refused.value.error_code == "invalid_client"
    assert refused.value.summary == "The client_assertion signature is invalid."
    assert [t.status for t in okta.sim.token_requests] == [401]
    assert okta.bucket_statuses(USERS_BUCKET) == []  # no API call was made


def test_scopes_not_granted_to_the_app_are_refused(okta: Okta,
                                                   rsa_key: rsa.RSAPrivateKey) -> None:
    client = okta.client(key=rsa_key, client_id="0oaReadOnlyClient01")  # default scopes
    with pytest.raises(OktaAuthError) as refused:
        client.get_user(okta.user().id)
    assert refused.value.status == 400
    assert refused.value.error_code == "invalid_scope"
    assert "okta.groups.read" in refused.value.summary
    assert "okta.logs.read" in refused.value.summary


def test_a_token_without_the_scope_gets_403(okta: Okta, rsa_key: rsa.RSAPrivateKey) -> None:
    client = okta.client(key=rsa_key, scopes=("okta.users.read",))
    user, privileged = okta.user(), okta.org.group_named(PRIVILEGED_GROUP)
    before = list(user.group_ids)
    with pytest.raises(OktaAuthError) as refused:
        client.add_user_to_group(privileged.id, user.id)
    assert refused.value.status == 403
    assert refused.value.error_code == "E0000006"
    assert user.group_ids == before
    assert okta.org.events(["group.user_membership.add"]) == []
    with pytest.raises(OktaAuthError):
        client.list_logs()


def test_token_is_refreshed_before_it_runs_out(okta: Okta, rsa_key: rsa.RSAPrivateKey) -> None:
    client = okta.client(key=rsa_key)
    user = okta.user()
    client.get_user(user.id)
    okta.clock.advance(3200)
    client.get_user(user.id)  # still the first token
    okta.clock.advance(150)  # now within 5 minutes of the hour
    client.get_user(user.id)
    assert [t.status for t in okta.sim.token_requests] == [200, 200]
    assert okta.bucket_statuses(USERS_BUCKET) == [200, 200, 200]


def test_a_token_okta_no_longer_accepts_is_replaced_once(
    okta: Okta, rsa_key: rsa.RSAPrivateKey
) -> None:
    client = okta.client(key=rsa_key)
    user = okta.user()
    client.get_user(user.id)
    okta.sim.expire_access_tokens()
    assert client.get_user(user.id) is not None
    assert okta.bucket_statuses(USERS_BUCKET) == [200, 401, 200]
    assert len(okta.sim.token_requests) == 2
    # a fresh token that is refused too is not fetched again and again
    okta.sim.config.token_lifetime_seconds = 0
    okta.sim.expire_access_tokens()
    with pytest.raises(OktaAuthError) as refused:
        client.get_user(user.id)
    assert refused.value.error_code == "E0000011"
    assert okta.bucket_statuses(USERS_BUCKET) == [200, 401, 200, 401, 401]
    assert len(okta.sim.token_requests) == 3


# -- the System Log ------------------------------------------------------------------------


def test_polling_follows_next_links_until_an_empty_page_and_resumes(okta: Okta) -> None:
    client = okta.client()
    query = f'eventType eq "{ACTIVATE}"'
    expected = [e["uuid"] for e in okta.org.events([ACTIVATE])]
    assert len(expected) > 14
    seen: list[str] = []
    pages = 0
    page = client.list_logs(filter=query, limit=7)
    assert page.self_url is not None and page.self_url.startswith(okta.base_url + "/api/v1/logs?")
    while page.events:
        pages += 1
        assert len(page.events) <= 7
        seen.extend(e["uuid"] for e in page.events)
        assert page.next_url is not None
        page = client.list_logs(after_url=page.next_url)
    assert seen == expected
    assert pages == math.ceil(len(expected) / 7)
    cursor = page.next_url  # a polling request always has a next link, even when empty
    assert cursor is not None
    added = okta.org.generate_enrollments(3, seed=99)
    new = [e["uuid"] for e in added if e["eventType"] == ACTIVATE]
    resumed = client.list_logs(after_url=cursor)
    assert [e["uuid"] for e in resumed.events] == new


def test_filter_with_or_and_a_bounded_window(okta: Okta) -> None:
    client = okta.client()
    wanted = {ACTIVATE, "user.session.start"}
    query = " or ".join(f'eventType eq "{t}"' for t in sorted(wanted))
    since = datetime.fromtimestamp(okta.clock.time() - 86_400, UTC)
    until = datetime.fromtimestamp(okta.clock.time() + 1, UTC)
    found = list(client.iter_logs(filter=query, since=since, until=until, limit=5))
    expected = okta.org.events(wanted)
    assert sorted(e["uuid"] for e in found) == sorted(e["uuid"] for e in expected)
    assert {e["eventType"] for e in found} == wanted
    published = [e["published"] for e in found]
    assert published == sorted(published)  # bounded requests are ordered by published
    last = client.list_logs(filter=query, since=since, until=until, limit=1000)
    assert last.next_url is None  # a bounded query that fits one page has no next link


def test_an_invalid_filter_is_a_permanent_error(okta: Okta) -> None:
    client = okta.client()
    with pytest.raises(OktaApiError) as refused:
        client.list_logs(filter="eventType eq")
    assert refused.value.status == 400
    assert refused.value.error_code == "E0000031"
    assert refused.value.summary == "Invalid search criteria."
    assert refused.value.causes and "ends too early" in refused.value.causes[0]["errorSummary"]


def test_links_to_another_host_are_not_followed(okta: Okta) -> None:
    client = okta.client()
    with pytest.raises(OktaApiError) as refused:
        client.list_logs(after_url="https://attacker.example/api/v1/logs?after=1_1")
    assert refused.value.error_code == "foreign_link"
    assert okta.sim.requests == []


# -- rate limits ---------------------------------------------------------------------------


def exhaust(okta: Okta, bucket_path: str, count: int) -> None:
    """Another integration with the same org uses up the bucket."""
    with httpx.Client(headers={"Authorization": f"SSWS {TOKEN}"}) as other:
        for _ in range(count):
            assert other.get(okta.base_url + bucket_path).status_code == 200


@pytest.mark.parametrize(("hints", "expected_sleeps"), [
    ("okta", [61.0]),  # X-Rate-Limit-Reset - Date + 1 s
    ("retry_after", [60.0]),  # Retry-After
    ("none", [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]),  # nothing to go by: exponential
])
def test_429_is_waited_out_and_then_succeeds(
    okta: Okta, hints: Any, expected_sleeps: list[float]
) -> None:
    okta.sim.config.rate_limit_hints = hints
    okta.sim.set_rate_limit(USERS_BUCKET, 3)
    user = okta.user()
    exhaust(okta, f"/api/v1/users/{user.id}", 3)
    client = okta.client(max_wait_seconds=120)
    assert client.get_user(user.id) is not None
    assert okta.clock.sleeps == expected_sleeps
    statuses = okta.bucket_statuses(USERS_BUCKET)
    assert statuses == [200] * 3 + [429] * len(expected_sleeps) + [200]


@pytest.mark.parametrize(("hints", "expected_sleeps", "throttled"), [
    ("okta", [], 1),
    ("none", [1.0, 2.0, 4.0, 8.0], 5),
])
def test_429_past_the_allowed_wait_is_a_transient_error(
    okta: Okta, hints: Any, expected_sleeps: list[float], throttled: int
) -> None:
    okta.sim.config.rate_limit_hints = hints
    okta.sim.set_rate_limit(USERS_BUCKET, 3)
    user = okta.user()
    exhaust(okta, f"/api/v1/users/{user.id}", 3)
    client = okta.client(max_wait_seconds=30)
    with pytest.raises(OktaUnavailable) as unavailable:
        client.get_user(user.id)
    assert isinstance(unavailable.value, TransientActionError)
    assert unavailable.value.retry_after is not None and unavailable.value.retry_after > 0
    assert "rate limit on /api/v1/users/{id}" in str(unavailable.value)
    assert okta.clock.sleeps == expected_sleeps
    assert okta.bucket_statuses(USERS_BUCKET) == [200] * 3 + [429] * throttled


def test_slows_down_before_the_limit_instead_of_hitting_it(okta: Okta) -> None:
    okta.sim.set_rate_limit(USERS_BUCKET, 10)
    client = okta.client(slowdown_below=0.5, max_wait_seconds=300)
    user = okta.user()
    start = okta.clock.time()
    for _ in range(15):
        assert client.get_user(user.id) is not None
    records = [r for r in okta.sim.requests if r.bucket == USERS_BUCKET]
    assert [r.status for r in records] == [200] * 15  # never a 429
    offsets = [r.at - start for r in records]
    # six go at once; with half the bucket left the remaining four are spread over the window
    # (one every time-left/remaining seconds); the eleventh waits for the reset (+1 s).
    assert offsets == pytest.approx([0] * 6 + [12, 27, 43, 59.5] + [61] * 5)
    assert okta.clock.sleeps == pytest.approx([12, 15, 16, 16.5, 1.5])
    snapshot = client.rate_limits()[USERS_BUCKET]
    assert (snapshot.limit, snapshot.remaining) == (10, 5)


def test_rate_limits_are_kept_per_bucket_with_okta_bucket_names(okta: Okta) -> None:
    client = okta.client()
    user = okta.user()
    client.get_user(user.id)
    client.list_user_groups(user.id)
    client.list_factors(user.id)
    client.list_authenticator_enrollments(user.id)
    client.list_logs(limit=1)
    client.get_group(user.group_ids[0])
    seen_by_simulator = {r.bucket for r in okta.sim.requests}
    assert set(client.rate_limits()) == seen_by_simulator == {
        "/api/v1/users/{id}", "/api/v1/users/{id}/groups", "/api/v1/users/{id}/factors",
        "/api/v1/users/{id}/authenticator-enrollments", "/api/v1/logs", "/api/v1/groups/{id}",
    }
    assert client.rate_limits()["/api/v1/logs"].limit == 120


@pytest.mark.parametrize(("url", "bucket"), [
    ("/api/v1/users/00u1abcDEF/groups", "/api/v1/users/{id}/groups"),
    ("/api/v1/users/pat.lee%40example.com", "/api/v1/users/{id}"),
    ("https://example.okta.com/api/v1/logs?after=1_2&limit=5", "/api/v1/logs"),
    ("/api/v1/groups/00g1/users/00u2", "/api/v1/groups/{id}/users/{id}"),
    ("/api/v1/users/00u1/factors/ufs1", "/api/v1/users/{id}/factors/{id}"),
    ("/oauth2/v1/token", "/oauth2/v1/token"),
])
def test_bucket_names(url: str, bucket: str) -> None:
    assert bucket_for(url) == bucket


# -- group membership ----------------------------------------------------------------------


def test_group_membership_changes_are_made_and_logged(okta: Okta,
                                                      rsa_key: rsa.RSAPrivateKey) -> None:
    client = okta.client(key=rsa_key, scopes=("okta.users.read", "okta.groups.manage"))
    user = next(u for u in okta.org.users.values() if u.status == "ACTIVE"
                and okta.org.group_named(PRIVILEGED_GROUP).id not in u.group_ids)
    privileged = okta.org.group_named(PRIVILEGED_GROUP)
    assert client.is_member(privileged.id, user.id) is False
    client.add_user_to_group(privileged.id, user.id)
    client.add_user_to_group(privileged.id, user.id)  # idempotent, logged once
    assert privileged.id in user.group_ids
    assert client.is_member(privileged.id, user.id) is True
    group = client.get_group(privileged.id)
    assert group is not None and group["profile"]["name"] == PRIVILEGED_GROUP
    added = okta.org.events(["group.user_membership.add"])
    assert len(added) == 1
    assert added[0]["actor"]["id"] == CLIENT_ID
    assert added[0]["actor"]["type"] == "PublicClientApp"
    assert {(t["type"], t["id"]) for t in added[0]["target"]} == {
        ("User", user.id), ("UserGroup", privileged.id)}
    client.remove_user_from_group(privileged.id, user.id)
    assert privileged.id not in user.group_ids
    assert len(okta.org.events(["group.user_membership.remove"])) == 1
    with pytest.raises(OktaNotFound):
        client.add_user_to_group("00gNoSuchGroup00000", user.id)
    assert privileged.id not in user.group_ids
    assert client.get_group("00gNoSuchGroup00000") is None


# -- failures ------------------------------------------------------------------------------


def test_server_errors_are_transient_and_not_retried_in_the_call(okta: Okta) -> None:
    okta.sim.inject_failures(USERS_BUCKET, [503])
    client = okta.client()
    with pytest.raises(OktaUnavailable, match="answered 503"):
        client.get_user(okta.user().id)
    assert okta.bucket_statuses(USERS_BUCKET) == [503]
    assert client.get_user(okta.user().id) is not None


def test_timeouts_and_refused_connections_are_transient(okta: Okta) -> None:
    okta.sim.config.latency_seconds = 0.5
    client = okta.client(timeout_seconds=0.1)
    with pytest.raises(OktaUnavailable, match="timed out"):
        client.get_user(okta.user().id)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    nowhere = okta.client(org_url=f"http://127.0.0.1:{closed_port}")
    with pytest.raises(OktaUnavailable, match="ConnectError"):
        nowhere.get_user("00u1")


def run_concurrently(call: Callable[[], object], count: int) -> None:
    with ThreadPoolExecutor(max_workers=count) as pool:
        for future in [pool.submit(call) for _ in range(count)]:
            future.result()


def test_concurrent_requests_are_capped(okta: Okta) -> None:
    okta.sim.config.latency_seconds = 0.2
    user = okta.user()
    capped = okta.client(max_concurrency=3, clock=False)
    run_concurrently(lambda: capped.get_user(user.id), 12)
    assert 1 <= okta.sim.max_in_flight <= 3
    assert okta.bucket_statuses(USERS_BUCKET) == [200] * 12
    okta.sim.reset_stats()
    uncapped = okta.client(max_concurrency=12, clock=False)
    run_concurrently(lambda: uncapped.get_user(user.id), 12)
    assert okta.sim.max_in_flight > 3  # the simulator does see overlap when it happens


def test_rate_limit_metrics_show_what_okta_last_said(okta: Okta) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from factorflow.web.store_metrics import OktaRateLimitCollector

    client = okta.client()
    registry = CollectorRegistry()
    registry.register(OktaRateLimitCollector({"acme": client}))
    assert "factorflow_okta_rate_limit_remaining{" not in generate_latest(registry).decode()
    client.get_user(okta.user().id)
    snapshot = client.rate_limits()["/api/v1/users/{id}"]
    text = generate_latest(registry).decode()
    assert (f'factorflow_okta_rate_limit_remaining{{bucket="/api/v1/users/{{id}}",org="acme"}} '
            f"{float(snapshot.remaining)}") in text
    assert (f'factorflow_okta_rate_limit_limit{{bucket="/api/v1/users/{{id}}",org="acme"}} '
            f"{float(snapshot.limit)}") in text
    assert snapshot.remaining < snapshot.limit
