"""Signing in through OIDC (the authorization code flow with PKCE) against the local Okta
simulator's authorization servers over HTTP (factorflow.okta.simulator.oidc): roles from the
simulated org's groups, people Okta does not sign in, refused and forged tokens, state checks,
key rotation, an unreachable provider, the org authorization server; and RS256 itself."""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.testclient import TestClient

from factorflow.okta.simulator import (
    OidcApp,
    OktaSimulator,
    SimulatorConfig,
    SimUser,
    ThreadedServer,
    generate_org,
)
from factorflow.okta.simulator.events import api_actor
from factorflow.okta.simulator.oidc import b64url, public_jwk, sign_jws
from factorflow.settings import Settings
from factorflow.web.ui.idtoken import InvalidToken, rs256_valid, rsa_key, verify_id_token
from tests.conftest import WATCHED_SECRETS
from tests.ui.conftest import BASE_URL, client_for, csrf_token

CLIENT_ID = "0oaFactorflowDash01"
CLIENT_SECRET = "oidc-client-secret-5b7e1c"
REDIRECT = f"{BASE_URL}/ui/auth/oidc/callback"
VIEWERS, OPERATORS = "Factorflow Viewers", "Factorflow Operators"
WATCHED_SECRETS.add(CLIENT_SECRET)
COOKIE = "__Host-factorflow_session"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Okta:
    """The simulated org, its simulator and where it listens."""

    sim: OktaSimulator
    server: ThreadedServer
    person: SimUser  # whom Okta signs in

    @property
    def issuer(self) -> str:
        return f"{self.server.base_url}/oauth2/default"

    def join(self, *groups: str) -> None:
        org = self.sim.org
        for name in groups:
            org.set_membership(org.add_group(name).id, self.person.id, True,
                               api_actor(org.api_admin.ref()))

    def requests(self, endpoint: str) -> list[dict[str, str]]:
        return [r.params for r in self.sim.oidc.requests if r.endpoint == endpoint]

    def key_fetches(self) -> int:
        return sum(r.path == "/oauth2/default/v1/keys" for r in self.sim.requests)


@pytest.fixture
def okta() -> Iterator[Okta]:
    org = generate_org(12, seed=4)
    person = list(org.users.values())[5]
    person.status = "ACTIVE"
    sim = OktaSimulator(org, SimulatorConfig(
        oidc_apps=(OidcApp(CLIENT_ID, CLIENT_SECRET, (REDIRECT,),
                           assigned_groups=("Everyone",)),),
        sign_in_as=person.id))
    server = ThreadedServer(sim.app).start()
    try:
        yield Okta(sim, server, person)
    finally:
        server.stop()


def oidc_section(issuer: str, **overrides: Any) -> dict[str, Any]:
    return {"issuer": issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "allow_http_issuer": True, "viewer_groups": [VIEWERS],
            "operator_groups": [OPERATORS], **overrides}


@pytest.fixture
def oidc_site(make_site: Callable[..., Settings], okta: Okta) -> Settings:
    return make_site(ui={"admin_password": None, "oidc": oidc_section(okta.issuer)})


@pytest.fixture
def client(oidc_site: Settings) -> Iterator[TestClient]:
    with client_for(oidc_site) as test_client:
        yield test_client


def round_trip(client: TestClient, next_path: str = "/ui/events") -> httpx.Response:
    """Start at the dashboard, let Okta answer, come back: the callback's answer."""
    start = client.get(f"/ui/auth/oidc/start?next={next_path}")
    assert start.status_code == 303, start.text
    at_okta = httpx.get(start.headers["location"], follow_redirects=False, timeout=10)
    assert at_okta.status_code == 302, at_okta.text
    back = at_okta.headers["location"]
    assert back.startswith(REDIRECT + "?")
    return client.get(back.removeprefix(BASE_URL))


def session_set(answer: httpx.Response) -> bool:
    return any(c.startswith(f"{COOKIE}=") and not c.startswith(f'{COOKIE}=""')
               for c in answer.headers.get_list("set-cookie"))


# -- signing in ------------------------------------------------------------------------------


def test_a_viewer_signs_in_through_okta(client: TestClient, okta: Okta) -> None:
    okta.join(VIEWERS)
    page = client.get("/ui/signin")
    assert 'href="/ui/auth/oidc/start?next=%2Fui%2F">Sign in with Okta</a>' in page.text
    answer = round_trip(client)
    assert (answer.status_code, answer.headers["location"]) == (303, "/ui/events")
    assert session_set(answer)
    (asked,) = okta.requests("authorize")
    assert asked["scope"] == "openid profile email groups"
    assert asked["code_challenge_method"] == "S256" and len(asked["code_challenge"]) == 43
    assert asked["state"] and asked["nonce"] and asked["state"] != asked["nonce"]
    assert asked["redirect_uri"] == REDIRECT and "login_hint" not in asked
    (exchanged,) = okta.requests("token")
    assert exchanged["redirect_uri"] == REDIRECT and len(exchanged["code_verifier"]) >= 43
    assert "client_secret" not in exchanged  # client_secret_basic
    assert [r.status for r in okta.sim.oidc.requests] == [200, 302, 200, 200]
    events = client.get("/ui/events")
    assert events.status_code == 200
    name = html.escape(okta.person.display_name)
    assert f'{name} <span class="role">(viewer)</span>' in events.text
    # The round trip's state cookie is gone: the same callback cannot be used twice.
    again = client.get(f"/ui/auth/oidc/callback?code=x&state={asked['state']}")
    assert again.status_code == 400
    # A viewer changes nothing.
    token = csrf_token(events.text)
    refused = client.post("/ui/dead-letters/1/discard", data={"csrf_token": token},
                          headers={"origin": BASE_URL})
    assert refused.status_code == 403


def test_operators_may_act_and_people_outside_the_groups_may_not_sign_in(
    make_site: Callable[..., Settings], okta: Okta, oidc_site: Settings
) -> None:
    with client_for(oidc_site) as client:
        okta.join(OPERATORS)
        assert round_trip(client).status_code == 303
        assert "(operator)" in client.get("/ui/").text
    # Another person of the org, in neither group.
    outsider = next(u for u in okta.sim.org.users.values()
                    if u.status == "ACTIVE" and u.id != okta.person.id)
    okta.sim.oidc.sign_in_as(outsider.login)
    with client_for(oidc_site) as client:
        answer = round_trip(client)
        assert answer.status_code == 403
        assert (f"{outsider.login} is not in a group allowed to use this dashboard."
                in answer.text)
        assert not session_set(answer)
        assert client.get("/ui/").status_code == 303
    # Without viewer groups, anyone Okta signs in may view.
    open_site = make_site(ui={"admin_password": None, "oidc": oidc_section(
        okta.issuer, viewer_groups=[], operator_groups=[])})
    with client_for(open_site) as client:
        assert round_trip(client).status_code == 303
        assert "(viewer)" in client.get("/ui/").text


def test_okta_saying_no_signs_nobody_in(
    make_site: Callable[..., Settings], okta: Okta
) -> None:
    # The app is assigned to the operators only, and the person is not one.
    okta.sim.oidc.apps[CLIENT_ID] = OidcApp(CLIENT_ID, CLIENT_SECRET, (REDIRECT,),
                                            assigned_groups=(OPERATORS,))
    site = make_site(ui={"admin_password": None, "oidc": oidc_section(okta.issuer)})
    with client_for(site) as client:
        answer = round_trip(client)
        assert answer.status_code == 401
        assert "The identity provider did not sign you in: access_denied" in answer.text
        assert not session_set(answer)
    assert okta.requests("token") == []


def test_a_callback_that_was_not_started_here_is_refused(
    client: TestClient, okta: Okta
) -> None:
    no_cookie = client.get("/ui/auth/oidc/callback?code=abc&state=abc")
    assert no_cookie.status_code == 400
    assert "This sign-in was not started here or has expired." in no_cookie.text
    start = client.get("/ui/auth/oidc/start")
    state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
    wrong_state = client.get(f"/ui/auth/oidc/callback?code=abc&state={state}x")
    assert wrong_state.status_code == 400
    assert okta.requests("token") == []
    assert client.get("/ui/").status_code == 303


@pytest.mark.parametrize(("knobs", "reason"), [
    ({"claims": {"nonce": "another-sign-in"}}, "the token's nonce does not match this sign-in"),
    ({"claims": {"aud": "some-other-client"}}, "the token is for another client"),
    ({"claims": {"iss": "https://idp.example.com"}}, "the token was issued by another issuer"),
    ({"claims": {"exp": int(time.time()) - 600}}, "the token has expired"),
    ({"claims": {"iat": int(time.time()) + 3600}}, "the token was issued in the future"),
    ({"header": {"alg": "none"}}, "algorithm 'none' is not accepted (RS256 only)"),
    ({"header": {"alg": "HS256"}}, "algorithm 'HS256' is not accepted (RS256 only)"),
    ({"signing_key": "new"}, "the signature is not valid"),
])
def test_tokens_that_do_not_check_out_sign_nobody_in(
    client: TestClient, okta: Okta, knobs: dict[str, Any], reason: str
) -> None:
    okta.join(OPERATORS)
    if knobs.get("signing_key"):
        knobs = {"signing_key": new_key()}  # the published key id, a key never published
    okta.sim.oidc.override_id_tokens(**knobs)
    answer = round_trip(client)
    assert answer.status_code == 401
    assert f"the identity provider's token was not accepted: {reason}" in html.unescape(
        answer.text)
    assert not session_set(answer)
    assert client.get("/ui/").status_code == 303


def test_a_wrong_client_secret_is_refused_by_okta(
    make_site: Callable[..., Settings], okta: Okta
) -> None:
    site = make_site(ui={"admin_password": None, "oidc": oidc_section(
        okta.issuer, client_secret="not-the-secret")})
    with client_for(site) as client:
        answer = round_trip(client)
        assert answer.status_code == 401
        assert "the identity provider refused the sign-in (invalid_client)" in answer.text
    assert okta.sim.oidc.requests[-1].status == 401


def test_a_rotated_key_is_fetched_once(client: TestClient, okta: Okta) -> None:
    okta.join(VIEWERS)
    assert round_trip(client).status_code == 303
    assert okta.key_fetches() == 1
    assert round_trip(client).status_code == 303
    assert okta.key_fetches() == 1  # the keys are cached
    okta.sim.oidc.rotate_keys("default")
    assert round_trip(client).status_code == 303
    assert okta.key_fetches() == 2


def test_the_org_authorization_server_works_too(
    make_site: Callable[..., Settings], okta: Okta
) -> None:
    okta.join(VIEWERS)
    site = make_site(ui={"admin_password": None, "oidc": oidc_section(
        okta.server.base_url)})
    with client_for(site) as client:
        start = client.get("/ui/auth/oidc/start")
        assert start.headers["location"].startswith(
            f"{okta.server.base_url}/oauth2/v1/authorize?")
        answer = round_trip(client)
        assert answer.status_code == 303, answer.text
    assert {r.server for r in okta.sim.oidc.requests} == {"org"}


def test_an_unreachable_provider_is_reported(
    make_site: Callable[..., Settings], okta: Okta
) -> None:
    site = make_site(ui={"oidc": {"issuer": okta.issuer, "client_id": CLIENT_ID,
                                  "allow_http_issuer": True}})
    okta.server.stop()
    with client_for(site) as client:
        answer = client.get("/ui/auth/oidc/start")
        assert answer.status_code == 502
        assert "cannot reach the identity provider (ConnectError)" in answer.text
        # The local admin still signs in (a password is configured here).
        assert 'name="password"' in answer.text


# -- RS256 -----------------------------------------------------------------------------------


def test_rs256_verification_agrees_with_a_reference_implementation() -> None:
    key = new_key()
    public = rsa_key(public_jwk(key, "k"))
    token = sign_jws(key, {"alg": "RS256", "kid": "k"}, {"sub": "x"})
    header, claims, signature = token.split(".")
    signed = f"{header}.{claims}".encode()
    raw = base64.urlsafe_b64decode(signature + "==")
    assert rs256_valid(*public, signed, raw)
    assert not rs256_valid(*public, signed + b"x", raw)
    assert not rs256_valid(*public, signed, raw[:-1] + bytes([raw[-1] ^ 1]))
    assert not rs256_valid(*public, signed, raw[1:])
    assert not rs256_valid(*rsa_key(public_jwk(new_key(), "k")), signed, raw)


def test_weak_or_foreign_keys_and_malformed_tokens_are_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    with pytest.raises(InvalidToken, match="the signing key is too weak"):
        rsa_key(public_jwk(small, "k"))
    with pytest.raises(InvalidToken, match="the signing key is not an RSA key"):
        rsa_key({"kty": "EC", "crv": "P-256"})
    for token in ("not-a-token", "a.b", f"{b64url(b'[]')}.{b64url(b'{}')}.x"):
        with pytest.raises(InvalidToken):
            verify_id_token(token, keys=[], issuer="i", client_id="c", nonce="n",
                            now=time.time())
