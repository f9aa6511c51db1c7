"""Signing in through OIDC (the authorization code flow with PKCE) against a real provider
over HTTP (tests/ui/oidc_provider.py): roles from groups, refused people, refused and forged
tokens, state checks, key rotation, an unreachable provider; and RS256 itself."""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from starlette.testclient import TestClient

from factorflow.settings import Settings
from factorflow.web.ui.idtoken import InvalidToken, rs256_valid, rsa_key, verify_id_token
from tests.conftest import WATCHED_SECRETS
from tests.ui.conftest import BASE_URL, client_for, csrf_token
from tests.ui.oidc_provider import OidcProvider, b64url, jwk, new_key, sign_jws

CLIENT_ID = "0oaFactorflowDash01"
CLIENT_SECRET = "oidc-client-secret-5b7e1c"
REDIRECT = f"{BASE_URL}/ui/auth/oidc/callback"
VIEWERS, OPERATORS = "Factorflow Viewers", "Factorflow Operators"
WATCHED_SECRETS.add(CLIENT_SECRET)
COOKIE = "__Host-factorflow_session"


@pytest.fixture
def provider() -> Iterator[OidcProvider]:
    with OidcProvider(CLIENT_ID, CLIENT_SECRET, REDIRECT) as running:
        yield running


@pytest.fixture
def oidc_site(make_site: Callable[..., Settings], provider: OidcProvider) -> Settings:
    return make_site(ui={"admin_password": None, "oidc": {
        "issuer": provider.issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "allow_http_issuer": True, "viewer_groups": [VIEWERS], "operator_groups": [OPERATORS],
    }})


@pytest.fixture
def client(oidc_site: Settings) -> Iterator[TestClient]:
    with client_for(oidc_site) as test_client:
        yield test_client


def round_trip(client: TestClient, next_path: str = "/ui/events") -> httpx.Response:
    """Start at the dashboard, let the provider answer, come back: the callback's answer."""
    start = client.get(f"/ui/auth/oidc/start?next={next_path}")
    assert start.status_code == 303, start.text
    at_provider = httpx.get(start.headers["location"], follow_redirects=False, timeout=10)
    assert at_provider.status_code == 302, at_provider.text
    back = at_provider.headers["location"]
    assert back.startswith(REDIRECT + "?")
    return client.get(back.removeprefix(BASE_URL))


def session_set(answer: httpx.Response) -> bool:
    return any(c.startswith(f"{COOKIE}=") and not c.startswith(f'{COOKIE}=""')
               for c in answer.headers.get_list("set-cookie"))


# -- signing in ------------------------------------------------------------------------------


def test_a_viewer_signs_in_through_the_provider(
    client: TestClient, provider: OidcProvider
) -> None:
    provider.person.groups = ["Everyone", VIEWERS]
    page = client.get("/ui/signin")
    assert 'href="/ui/auth/oidc/start?next=%2Fui%2F">Sign in with Okta</a>' in page.text
    answer = round_trip(client)
    assert (answer.status_code, answer.headers["location"]) == (303, "/ui/events")
    assert session_set(answer)
    (asked,) = provider.authorize_requests
    assert asked["scope"] == "openid profile email groups"
    assert asked["code_challenge_method"] == "S256" and len(asked["code_challenge"]) == 43
    assert asked["state"] and asked["nonce"] and asked["state"] != asked["nonce"]
    (exchanged,) = provider.token_requests
    assert exchanged["redirect_uri"] == REDIRECT and len(exchanged["code_verifier"]) >= 43
    events = client.get("/ui/events")
    assert events.status_code == 200
    assert 'Pat Oidc <span class="role">(viewer)</span>' in events.text
    # The round trip's state cookie is gone: the same callback cannot be used twice.
    again = client.get(f"/ui/auth/oidc/callback?code=x&state={asked['state']}")
    assert again.status_code == 400
    # A viewer changes nothing.
    token = csrf_token(events.text)
    refused = client.post("/ui/dead-letters/1/discard", data={"csrf_token": token},
                          headers={"origin": BASE_URL})
    assert refused.status_code == 403


def test_operators_may_act_and_people_outside_the_groups_may_not_sign_in(
    make_site: Callable[..., Settings], provider: OidcProvider, oidc_site: Settings
) -> None:
    with client_for(oidc_site) as client:
        provider.person.groups = [OPERATORS]
        assert round_trip(client).status_code == 303
        assert "(operator)" in client.get("/ui/").text
    with client_for(oidc_site) as client:
        provider.person.groups = ["Everyone"]
        answer = round_trip(client)
        assert answer.status_code == 403
        assert ("pat.oidc@example.com is not in a group allowed to use this dashboard."
                in answer.text)
        assert not session_set(answer)
        assert client.get("/ui/").status_code == 303
    # Without viewer groups, anyone the provider signs in may view.
    open_site = make_site(ui={"admin_password": None, "oidc": {
        "issuer": provider.issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "allow_http_issuer": True}})
    with client_for(open_site) as client:
        assert round_trip(client).status_code == 303
        assert "(viewer)" in client.get("/ui/").text


def test_the_provider_saying_no_signs_nobody_in(
    client: TestClient, provider: OidcProvider
) -> None:
    provider.deny = True
    answer = round_trip(client)
    assert answer.status_code == 401
    assert "The identity provider did not sign you in: access_denied" in answer.text
    assert not session_set(answer)
    assert provider.token_requests == []


def test_a_callback_that_was_not_started_here_is_refused(
    client: TestClient, provider: OidcProvider
) -> None:
    no_cookie = client.get("/ui/auth/oidc/callback?code=abc&state=abc")
    assert no_cookie.status_code == 400
    assert "This sign-in was not started here or has expired." in no_cookie.text
    start = client.get("/ui/auth/oidc/start")
    state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
    wrong_state = client.get(f"/ui/auth/oidc/callback?code=abc&state={state}x")
    assert wrong_state.status_code == 400
    assert provider.token_requests == []
    assert client.get("/ui/").status_code == 303


@pytest.mark.parametrize(("knobs", "reason"), [
    ({"claims": {"nonce": "another-sign-in"}}, "the token's nonce does not match this sign-in"),
    ({"claims": {"aud": "some-other-client"}}, "the token is for another client"),
    ({"claims": {"iss": "https://idp.example.com"}}, "the token was issued by another issuer"),
    ({"claims": {"exp": int(time.time()) - 600}}, "the token has expired"),
    ({"claims": {"iat": int(time.time()) + 3600}}, "the token was issued in the future"),
    ({"header": {"alg": "none"}}, "algorithm 'none' is not accepted (RS256 only)"),
    ({"header": {"alg": "HS256"}}, "algorithm 'HS256' is not accepted (RS256 only)"),
    ({"forge": True}, "the signature is not valid"),
])
def test_tokens_that_do_not_check_out_sign_nobody_in(
    client: TestClient, provider: OidcProvider, knobs: dict[str, Any], reason: str
) -> None:
    provider.person.groups = [OPERATORS]
    provider.claims = knobs.get("claims", {})
    provider.header = knobs.get("header", {})
    if knobs.get("forge"):
        provider.sign_with = new_key()  # same key id, a key the provider never published
    answer = round_trip(client)
    assert answer.status_code == 401
    assert f"the identity provider's token was not accepted: {reason}" in html.unescape(
        answer.text)
    assert not session_set(answer)
    assert client.get("/ui/").status_code == 303


def test_a_wrong_client_secret_is_refused_by_the_provider(
    make_site: Callable[..., Settings], provider: OidcProvider
) -> None:
    site = make_site(ui={"admin_password": None, "oidc": {
        "issuer": provider.issuer, "client_id": CLIENT_ID, "client_secret": "not-the-secret",
        "allow_http_issuer": True}})
    with client_for(site) as client:
        answer = round_trip(client)
        assert answer.status_code == 401
        assert "the identity provider refused the sign-in (invalid_client)" in answer.text


def test_a_rotated_key_is_fetched_once(client: TestClient, provider: OidcProvider) -> None:
    provider.person.groups = [VIEWERS]
    assert round_trip(client).status_code == 303
    assert provider.jwks_requests == 1
    assert round_trip(client).status_code == 303
    assert provider.jwks_requests == 1  # the keys are cached
    provider.rotate()
    assert round_trip(client).status_code == 303
    assert provider.jwks_requests == 2


def test_an_unreachable_provider_is_reported(
    make_site: Callable[..., Settings], provider: OidcProvider
) -> None:
    site = make_site(ui={"oidc": {"issuer": provider.issuer, "client_id": CLIENT_ID,
                                  "allow_http_issuer": True}})
    provider.close()
    with client_for(site) as client:
        answer = client.get("/ui/auth/oidc/start")
        assert answer.status_code == 502
        assert "cannot reach the identity provider (ConnectError)" in answer.text
        # The local admin still signs in (a password is configured here).
        assert 'name="password"' in answer.text


# -- RS256 -----------------------------------------------------------------------------------


def test_rs256_verification_agrees_with_a_reference_implementation() -> None:
    key = new_key()
    public = rsa_key(jwk(key, "k"))
    token = sign_jws(key, {"alg": "RS256", "kid": "k"}, {"sub": "x"})
    header, claims, signature = token.split(".")
    signed = f"{header}.{claims}".encode()
    raw = __import__("base64").urlsafe_b64decode(signature + "==")
    assert rs256_valid(*public, signed, raw)
    assert not rs256_valid(*public, signed + b"x", raw)
    assert not rs256_valid(*public, signed, raw[:-1] + bytes([raw[-1] ^ 1]))
    assert not rs256_valid(*public, signed, raw[1:])
    assert not rs256_valid(*rsa_key(jwk(new_key(), "k")), signed, raw)


def test_weak_or_foreign_keys_and_malformed_tokens_are_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    with pytest.raises(InvalidToken, match="the signing key is too weak"):
        rsa_key(jwk(small, "k"))
    with pytest.raises(InvalidToken, match="the signing key is not an RSA key"):
        rsa_key({"kty": "EC", "crv": "P-256"})
    for token in ("not-a-token", "a.b", f"{b64url(b'[]')}.{b64url(b'{}')}.x"):
        with pytest.raises(InvalidToken):
            verify_id_token(token, keys=[], issuer="i", client_id="c", nonce="n",
                            now=time.time())
