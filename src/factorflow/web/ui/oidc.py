"""Sign-in through an OpenID Connect provider (Okta): the authorization code flow with PKCE
(S256), ``state`` and ``nonce``; the ID token is validated with the provider's published keys.

The provider's metadata comes from ``<issuer>/.well-known/openid-configuration`` and its keys
from ``jwks_uri``; both are cached, and the keys are fetched again once when a token names a key
id not seen yet (the provider rotated its keys).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

from factorflow.settings import OidcSettings
from factorflow.web.ui.idtoken import InvalidToken, split_token, verify_id_token
from factorflow.web.ui.signin import AuthorizationRequest, Identity, SignInFailed

log = logging.getLogger(__name__)

METADATA_SECONDS = 3600.0


class OidcProvider:
    """Implements :class:`factorflow.web.ui.signin.IdentityProvider`."""

    def __init__(self, settings: OidcSettings, client_secret: str | None, *,
                 clock: Callable[[], float] = time.time, timeout: float = 10.0) -> None:
        assert settings.issuer and settings.client_id
        self.issuer = settings.issuer.rstrip("/")
        self.client_id = settings.client_id
        self.label = settings.label
        self._settings = settings
        self._secret = client_secret
        self._clock = clock
        self._timeout = timeout
        self._lock = threading.Lock()
        self._metadata: tuple[float, dict[str, Any]] | None = None
        self._keys: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        return f"OidcProvider(issuer={self.issuer!r}, client_id={self.client_id!r})"

    # -- the flow ----------------------------------------------------------------------------

    def start(self, redirect_uri: str) -> AuthorizationRequest:
        endpoint = self._endpoint("authorization_endpoint")
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(
            hashlib.sha256(verifier.encode()).digest()
        ).decode().rstrip("=")
        query = urlencode({
            "response_type": "code", "client_id": self.client_id, "redirect_uri": redirect_uri,
            "scope": " ".join(self._settings.scopes), "state": state, "nonce": nonce,
            "code_challenge": challenge, "code_challenge_method": "S256",
        })
        separator = "&" if "?" in endpoint else "?"
        return AuthorizationRequest(f"{endpoint}{separator}{query}", state, nonce, verifier)

    def finish(self, code: str, redirect_uri: str, request: AuthorizationRequest) -> Identity:
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "code_verifier": request.code_verifier, "client_id": self.client_id}
        # A confidential client authenticates (client_secret_basic); a public one relies on
        # PKCE alone.
        auth: dict[str, Any] = (
            {"auth": httpx.BasicAuth(self.client_id, self._secret)} if self._secret else {}
        )
        try:
            with self._client() as http:
                answer = http.post(self._endpoint("token_endpoint"), data=form,
                                   headers={"accept": "application/json"}, **auth)
        except httpx.HTTPError as exc:
            raise SignInFailed(f"cannot reach the identity provider ({type(exc).__name__})") \
                from None
        body = _json(answer)
        if answer.status_code != 200 or not isinstance(body.get("id_token"), str):
            error = body.get("error") if isinstance(body.get("error"), str) else None
            log.warning("ui.oidc_token_refused", extra={"fields": {
                "status": answer.status_code, "error": error,
            }})
            raise SignInFailed(f"the identity provider refused the sign-in "
                               f"({error or f'HTTP {answer.status_code}'})")
        claims = self._validated(body["id_token"], request.nonce)
        username = str(claims.get("preferred_username") or claims.get("email") or claims["sub"])
        groups = claims.get(self._settings.groups_claim) or []
        return Identity(
            subject=str(claims["sub"]), username=username,
            name=str(claims.get("name") or username),
            groups=tuple(g for g in groups if isinstance(g, str)) if isinstance(groups, list)
            else (),
        )

    def _validated(self, token: str, nonce: str) -> dict[str, Any]:
        try:
            kid = split_token(token)[0].get("kid")
            keys = self._signing_keys(refresh=False)
            if kid is not None and not any(k.get("kid") == kid for k in keys):
                keys = self._signing_keys(refresh=True)
            return verify_id_token(token, keys=keys, issuer=self.issuer,
                                   client_id=self.client_id, nonce=nonce, now=self._clock())
        except InvalidToken as exc:
            log.warning("ui.oidc_token_invalid", extra={"fields": {"reason": str(exc)}})
            raise SignInFailed(f"the identity provider's token was not accepted: {exc}") \
                from None

    # -- metadata and keys -------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        return httpx.Client(timeout=self._timeout, follow_redirects=False,
                            headers={"user-agent": "factorflow"})

    def metadata(self) -> dict[str, Any]:
        with self._lock:
            if self._metadata is not None and self._metadata[0] > self._clock():
                return self._metadata[1]
        url = f"{self.issuer}/.well-known/openid-configuration"
        try:
            with self._client() as http:
                answer = http.get(url)
        except httpx.HTTPError as exc:
            raise SignInFailed(f"cannot reach the identity provider ({type(exc).__name__})") \
                from None
        found = _json(answer)
        if answer.status_code != 200 or found.get("issuer", "").rstrip("/") != self.issuer:
            raise SignInFailed("the identity provider's metadata does not describe the "
                               "configured issuer")
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not self._acceptable(found.get(name)):
                raise SignInFailed(f"the identity provider's {name} is missing or not https")
        with self._lock:
            self._metadata = (self._clock() + METADATA_SECONDS, found)
        return found

    def _endpoint(self, name: str) -> str:
        return str(self.metadata()[name])

    def _acceptable(self, url: Any) -> bool:
        if not isinstance(url, str):
            return False
        parts = urlsplit(url)
        if parts.scheme == "https":
            return True
        return (self._settings.allow_http_issuer and parts.scheme == "http"
                and parts.hostname in ("127.0.0.1", "localhost", "::1"))

    def _signing_keys(self, *, refresh: bool) -> list[dict[str, Any]]:
        with self._lock:
            if self._keys and not refresh:
                return self._keys
        try:
            with self._client() as http:
                answer = http.get(self._endpoint("jwks_uri"))
        except httpx.HTTPError as exc:
            raise SignInFailed(f"cannot reach the identity provider ({type(exc).__name__})") \
                from None
        keys = _json(answer).get("keys")
        if answer.status_code != 200 or not isinstance(keys, list):
            raise SignInFailed("the identity provider's keys could not be read")
        with self._lock:
            self._keys = [k for k in keys if isinstance(k, dict)]
            return self._keys


def _json(answer: httpx.Response) -> dict[str, Any]:
    try:
        body = answer.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
