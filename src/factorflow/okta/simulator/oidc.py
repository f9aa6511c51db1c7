"""The simulated org's OpenID Connect authorization servers: the org authorization server
(issuer ``<org>``, endpoints under ``/oauth2/v1``) and custom ones such as ``default`` (issuer
``<org>/oauth2/default``, endpoints under ``/oauth2/default/v1``), as Okta serves them.

Each has a discovery document (``/.well-known/openid-configuration``), ``authorize`` (the
authorization code flow; PKCE with S256 required; ``state`` required and echoed, ``nonce`` put
in the ID token), ``token`` (the code exchange, client authentication ``client_secret_basic`` or
``client_secret_post``, or none for a public client; codes are single-use and live
``code_lifetime_seconds``), ``keys`` (its JWKS: an RS256 key generated when first needed) and
``userinfo``. There is no sign-in page: ``authorize`` signs in the user named by ``login_hint``,
else the simulator's current user (:meth:`AuthorizationServers.sign_in_as`; at first the
org's first user, its Okta administrator), if that user is active and assigned to the app.

ID tokens carry ``iss``, ``aud``, ``exp``, ``iat``, ``auth_time``, ``nonce``, ``sub`` (the user
id), ``amr``, ``at_hash``; with scope ``profile`` ``name``, ``preferred_username`` (the login),
``given_name``, ``family_name``; with ``email`` ``email`` and ``email_verified``; with
``groups`` the claim ``groups_claim`` listing the names of the user's groups in the org
(those matching ``groups_filter``, a regular expression, if set).

Errors answer as Okta's do: ``{"error", "error_description"}`` with 400 or 401 from ``token``
and ``userinfo`` (the latter with ``WWW-Authenticate``); from ``authorize``, a redirect to the
app with ``error``, ``error_description`` and ``state`` once the client and its redirect URI
are known, else a 400 page.

For tests of clients: :meth:`AuthorizationServers.override_id_tokens` changes the claims or the
header of the ID tokens issued next, or signs them with another key, and
:meth:`AuthorizationServers.rotate_keys` starts signing with a new key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import re
import secrets
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlencode

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from factorflow.okta.simulator.org import SimUser

if TYPE_CHECKING:
    from factorflow.okta.simulator.app import OktaSimulator

ORG = "org"  # the org authorization server's name in records
SCOPES = ("openid", "profile", "email", "groups")
PKCE_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
CLAIMS = ("iss", "aud", "exp", "iat", "auth_time", "nonce", "sub", "amr", "at_hash", "name",
          "preferred_username", "given_name", "family_name", "email", "email_verified")
Handler = Callable[[Request, Any], Awaitable[Response]]


@dataclass(frozen=True)
class OidcApp:
    """A registered OIDC web app: its redirect URIs, its secret (None: a public client, which
    authenticates by PKCE alone) and who is assigned to it (members of ``assigned_groups``;
    empty: every user)."""

    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    redirect_uris: tuple[str, ...] = ()
    assigned_groups: tuple[str, ...] = ()
    name: str = "factorflow dashboard"


@dataclass(frozen=True, slots=True)
class OidcRequest:
    """One request to an authorization server, for tests (a client secret is never kept)."""

    server: str  # ORG or the custom server's id
    endpoint: str  # discovery, authorize, token, keys, userinfo
    params: dict[str, str]
    status: int
    error: str | None


@dataclass(frozen=True, slots=True)
class _Grant:
    server: str
    client_id: str
    redirect_uri: str
    user_id: str
    scopes: tuple[str, ...]
    nonce: str | None
    challenge: str
    issued: float


@dataclass(frozen=True, slots=True)
class _AccessToken:
    server: str
    user_id: str
    scopes: tuple[str, ...]
    expires: float


@dataclass
class _Overrides:
    claims: dict[str, Any] = field(default_factory=dict)
    header: dict[str, Any] = field(default_factory=dict)
    signing_key: rsa.RSAPrivateKey | None = None


class _Keys:
    """One authorization server's signing keys, newest first (made when first needed)."""

    def __init__(self) -> None:
        self._keys: list[tuple[str, rsa.RSAPrivateKey]] = []

    def current(self) -> tuple[str, rsa.RSAPrivateKey]:
        if not self._keys:
            self.rotate()
        return self._keys[0]

    def rotate(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._keys.insert(0, (secrets.token_urlsafe(32), key))
        del self._keys[2:]  # the previous key stays published for tokens already issued

    def jwks(self) -> list[dict[str, str]]:
        self.current()
        return [public_jwk(key, kid) for kid, key in self._keys]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def public_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {"kty": "RSA", "alg": "RS256", "kid": kid, "use": "sig",
            "e": b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
            "n": b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big"))}


def sign_jws(key: rsa.RSAPrivateKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A compact JWS over the header as given (RS256 signature whatever it says)."""
    signed = f"{b64url(orjson.dumps(header))}.{b64url(orjson.dumps(claims))}"
    signature = key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signed}.{b64url(signature)}"


def s256(verifier: str) -> str:
    return b64url(hashlib.sha256(verifier.encode()).digest())


def parse_form(body: bytes) -> dict[str, str]:
    text = body.decode("utf-8", errors="replace")
    return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}


class AuthorizationServers:
    """The org authorization server and the custom ones of a simulator."""

    def __init__(self, simulator: OktaSimulator) -> None:
        self.simulator = simulator
        config = simulator.config
        self.apps = {app.client_id: app for app in config.oidc_apps}
        self.custom = tuple(config.authorization_servers)
        self.requests: list[OidcRequest] = []
        self._keys: dict[str, _Keys] = {}
        self._codes: dict[str, _Grant | None] = {}  # None: used
        self._tokens: dict[str, _AccessToken] = {}
        self._overrides = _Overrides()
        self._user_id: str | None = None
        self._lock = threading.Lock()
        if config.sign_in_as is not None:
            self.sign_in_as(config.sign_in_as)

    # -- for tests and the CLI -------------------------------------------------------------

    def sign_in_as(self, login_or_id: str) -> SimUser:
        """The user ``authorize`` signs in when the request names none (``login_hint``)."""
        user = self.simulator.org.user(login_or_id)
        if user is None:
            raise KeyError(f"no user {login_or_id!r} in the simulated org")
        with self._lock:
            self._user_id = user.id
        return user

    @property
    def signed_in(self) -> SimUser:
        with self._lock:
            user_id = self._user_id
        if user_id is not None:
            return self.simulator.org.users[user_id]
        return self.simulator.org.api_admin

    def override_id_tokens(self, *, claims: dict[str, Any] | None = None,
                           header: dict[str, Any] | None = None,
                           signing_key: rsa.RSAPrivateKey | None = None) -> None:
        """Issue the next ID tokens with these claims or header values, or signed with a key
        that is not published; no arguments: issue them normally again."""
        with self._lock:
            self._overrides = _Overrides(dict(claims or {}), dict(header or {}), signing_key)

    def rotate_keys(self, server: str = "default") -> None:
        """Sign with a new key from now on (the previous one stays in the JWKS)."""
        with self._lock:
            self._keyring(server).rotate()

    def issuer(self, base: str, server: str) -> str:
        return base if server == ORG else f"{base}/oauth2/{server}"

    def _keyring(self, server: str) -> _Keys:
        return self._keys.setdefault(server, _Keys())

    # -- routing ---------------------------------------------------------------------------

    def routes(self) -> list[tuple[str, str, Handler, tuple[str, ...]]]:
        """(path, bucket, handler, methods) of every endpoint; the org server's token
        endpoint is the simulator's own ``/oauth2/v1/token`` (see :meth:`token`)."""
        found: list[tuple[str, str, Handler, tuple[str, ...]]] = []
        well_known = "/.well-known/openid-configuration"
        for prefix, bucket in (("/oauth2", "/oauth2"), ("/oauth2/{server}", "/oauth2/{id}")):
            custom = prefix != "/oauth2"
            found += [
                ((prefix if custom else "") + well_known, (bucket if custom else "") + well_known,
                 self.discovery, ("GET",)),
                (f"{prefix}/v1/authorize", f"{bucket}/v1/authorize", self.authorize, ("GET",)),
                (f"{prefix}/v1/keys", f"{bucket}/v1/keys", self.keys, ("GET",)),
                (f"{prefix}/v1/userinfo", f"{bucket}/v1/userinfo", self.userinfo,
                 ("GET", "POST")),
            ]
            if custom:
                found.append((f"{prefix}/v1/token", f"{bucket}/v1/token", self.custom_token,
                              ("POST",)))
        return found

    def _server(self, request: Request) -> str | None:
        server = request.path_params.get("server")
        if server is None:
            return ORG
        return str(server) if server in self.custom else None

    def _record(self, server: str, endpoint: str, params: dict[str, str],
                response: Response) -> Response:
        error = None
        if response.status_code >= 400 and response.media_type == "application/json":
            error = orjson.loads(bytes(response.body)).get("error")
        elif response.status_code in (302, 303):
            location = response.headers.get("location", "")
            error = parse_qs(location.partition("?")[2]).get("error", [None])[0]
        kept = {k: ("<hidden>" if k == "client_secret" else v) for k, v in params.items()}
        with self._lock:
            self.requests.append(OidcRequest(server, endpoint, kept, response.status_code,
                                             error))
        return response

    # -- discovery and keys ----------------------------------------------------------------

    async def discovery(self, request: Request, _principal: Any) -> Response:
        server = self._server(request)
        if server is None:
            return _unknown_server(request)
        issuer = self.issuer(_base(request), server)
        endpoints = f"{_base(request)}/oauth2/v1" if server == ORG else f"{issuer}/v1"
        grants = ["authorization_code"] + (["client_credentials"] if server == ORG else [])
        methods = ["client_secret_basic", "client_secret_post", "none"]
        if server == ORG:
            methods.append("private_key_jwt")
        document = {
            "issuer": issuer,
            "authorization_endpoint": f"{endpoints}/authorize",
            "token_endpoint": f"{endpoints}/token",
            "userinfo_endpoint": f"{endpoints}/userinfo",
            "jwks_uri": f"{endpoints}/keys",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": grants,
            "subject_types_supported": ["public"],
            "scopes_supported": list(SCOPES),
            "token_endpoint_auth_methods_supported": methods,
            "claims_supported": [*CLAIMS, self.simulator.config.groups_claim],
            "code_challenge_methods_supported": ["S256"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "request_parameter_supported": False,
        }
        return self._record(server, "discovery", {}, _json(document))

    async def keys(self, request: Request, _principal: Any) -> Response:
        server = self._server(request)
        if server is None:
            return _unknown_server(request)
        with self._lock:
            keys = self._keyring(server).jwks()
        response = _json({"keys": keys})
        response.headers["Cache-Control"] = "max-age=3600, must-revalidate"
        return self._record(server, "keys", {}, response)

    # -- authorize -------------------------------------------------------------------------

    async def authorize(self, request: Request, _principal: Any) -> Response:
        server = self._server(request)
        if server is None:
            return _unknown_server(request)
        params = {k: request.query_params[k] for k in request.query_params}
        return self._record(server, "authorize", params, self._authorize(server, params))

    def _authorize(self, server: str, params: dict[str, str]) -> Response:
        app = self.apps.get(params.get("client_id", ""))
        if app is None:
            return _error_page("invalid_client", "Invalid value for 'client_id' parameter.")
        redirect_uri = params.get("redirect_uri", "")
        if redirect_uri not in app.redirect_uris:
            return _error_page("invalid_request", "The 'redirect_uri' parameter must be a "
                               "Login redirect URI in the client app settings.")
        state = params.get("state")

        def back(error: str, description: str) -> Response:
            reply = {"error": error, "error_description": description}
            if state is not None:
                reply["state"] = state
            return _redirect(redirect_uri, reply)

        if params.get("response_type") != "code":
            return back("unsupported_response_type", "The response type is not supported by "
                        "the authorization server. Configured response types: [code].")
        if params.get("response_mode", "query") != "query":
            return back("unsupported_response_mode", "The response mode is not supported by "
                        "the authorization server. Configured response modes: [query].")
        if not state:
            return back("invalid_request", "The authentication request has an invalid "
                        "'state' parameter.")
        scopes = tuple(params.get("scope", "").split())
        if not scopes:
            return back("invalid_scope", "The authorization server resource does not have "
                        "any configured default scopes, 'scope' must be provided.")
        unknown = [s for s in scopes if s not in SCOPES]
        if unknown:
            return back("invalid_scope", "One or more scopes are not configured for the "
                        f"authorization server resource: {' '.join(unknown)}")
        challenge = params.get("code_challenge")
        if not challenge:
            return back("invalid_request", "PKCE code challenge is required by the "
                        "application.")
        if params.get("code_challenge_method") != "S256":
            return back("invalid_request", "PKCE code challenge method is not supported. "
                        "Supported methods: S256.")
        if not PKCE_CHALLENGE.fullmatch(challenge):
            return back("invalid_request", "PKCE code challenge must be the 43 characters of "
                        "a base64url SHA-256 digest.")
        hint = params.get("login_hint")
        user = self.simulator.org.user(hint) if hint else self.signed_in
        if user is None or user.status != "ACTIVE":
            return back("access_denied", "The user could not be signed in.")
        if not self._assigned(app, user):
            return back("access_denied", "User is not assigned to the client application.")
        code = secrets.token_urlsafe(32)
        grant = _Grant(server, app.client_id, redirect_uri, user.id, scopes,
                       params.get("nonce"), challenge, self.simulator.clock.time())
        with self._lock:
            self._codes[code] = grant
        return _redirect(redirect_uri, {"code": code, "state": state})

    def _assigned(self, app: OidcApp, user: SimUser) -> bool:
        if not app.assigned_groups:
            return True
        names = {self.simulator.org.groups[g].name for g in user.group_ids}
        return any(group in names for group in app.assigned_groups)

    # -- token -----------------------------------------------------------------------------

    async def custom_token(self, request: Request, _principal: Any) -> Response:
        server = self._server(request)
        if server is None:
            return _unknown_server(request)
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/x-www-form-urlencoded":
            return self._record(server, "token", {}, _oauth_error(
                400, "invalid_request",
                "The request must be application/x-www-form-urlencoded."))
        return await self.token(request, server, parse_form(await request.body()))

    async def token(self, request: Request, server: str, fields: dict[str, str]) -> Response:
        """The code exchange (the org server's token endpoint hands its authorization_code
        requests here)."""
        return self._record(server, "token", fields, self._exchange(request, server, fields))

    def _exchange(self, request: Request, server: str, fields: dict[str, str]) -> Response:
        if fields.get("grant_type") != "authorization_code":
            return _oauth_error(400, "unsupported_grant_type",
                                "The authorization grant type is not supported.")
        app, refusal = self._client(request, server, fields)
        if refusal is not None:
            return refusal
        assert app is not None
        now = self.simulator.clock.time()
        code = fields.get("code", "")
        with self._lock:
            grant = self._codes.get(code)
            if code in self._codes:
                self._codes[code] = None  # one exchange per code, whatever its outcome
        lifetime = self.simulator.config.code_lifetime_seconds
        if (grant is None or grant.server != server or grant.client_id != app.client_id
                or now >= grant.issued + lifetime):
            return _oauth_error(400, "invalid_grant",
                                "The authorization code is invalid or has expired.")
        if fields.get("redirect_uri") != grant.redirect_uri:
            return _oauth_error(400, "invalid_grant", "The 'redirect_uri' does not match the "
                                "redirection URI used in the authorization request.")
        verifier = fields.get("code_verifier", "")
        if not hmac.compare_digest(s256(verifier), grant.challenge):
            return _oauth_error(400, "invalid_grant", "PKCE verification failed.")
        user = self.simulator.org.users.get(grant.user_id)
        if user is None or user.status != "ACTIVE":
            return _oauth_error(400, "invalid_grant", "The user is no longer active.")
        return self._tokens_for(_base(request), server, app, user, grant, now)

    def _client(self, request: Request, server: str,
                fields: dict[str, str]) -> tuple[OidcApp | None, Response | None]:
        """The app, authenticated by its secret (Basic or in the body), or public."""
        try:
            basic = _basic_credentials(request.headers.get("authorization", ""))
        except ValueError:
            return None, _oauth_error(401, "invalid_client",
                                      "The client credentials are not valid Basic credentials.")
        if basic is not None and ("client_secret" in fields or "client_assertion" in fields):
            return None, _oauth_error(400, "invalid_request", "Cannot supply multiple client "
                                      "credentials. Use one of the following: credentials in "
                                      "the Authorization header, credentials in the post "
                                      "body, or a client_assertion in the post body.")
        client_id, secret = basic if basic is not None else (
            fields.get("client_id", ""), fields.get("client_secret"))
        if basic is not None and fields.get("client_id", client_id) != client_id:
            return None, _oauth_error(400, "invalid_request", "The client_id in the body does "
                                      "not match the client authentication.")
        app = self.apps.get(client_id)
        challenge = {"WWW-Authenticate": f'Basic realm="{self.issuer(_base(request), server)}"'}
        if app is None:
            return None, _oauth_error(401, "invalid_client",
                                      "Invalid value for 'client_id' parameter.",
                                      challenge if basic is not None else None)
        if app.client_secret is None:
            if secret is not None:
                return None, _oauth_error(401, "invalid_client", "Client authentication is "
                                          "not allowed for a public client.")
            return app, None
        if secret is None:
            return None, _oauth_error(401, "invalid_client", "No client credentials found.")
        if not hmac.compare_digest(secret.encode(), app.client_secret.encode()):
            return None, _oauth_error(401, "invalid_client", "The client secret supplied for "
                                      "a confidential client is invalid.",
                                      challenge if basic is not None else None)
        return app, None

    def _tokens_for(self, base: str, server: str, app: OidcApp, user: SimUser, grant: _Grant,
                    now: float) -> Response:
        config = self.simulator.config
        issuer = self.issuer(base, server)
        lifetime = config.id_token_lifetime_seconds
        issued = int(now)
        with self._lock:
            kid, key = self._keyring(server).current()
            overrides = self._overrides
        access_claims = {
            "ver": 1, "jti": "AT." + secrets.token_urlsafe(24), "iss": issuer,
            "aud": base if server == ORG else f"api://{server}", "iat": issued,
            "exp": issued + lifetime, "cid": app.client_id, "uid": user.id,
            "scp": list(grant.scopes), "auth_time": int(grant.issued), "sub": user.login,
        }
        access_token = sign_jws(key, {"kid": kid, "alg": "RS256"}, access_claims)
        with self._lock:
            self._tokens[access_token] = _AccessToken(server, user.id, grant.scopes,
                                                      now + lifetime)
        body: dict[str, Any] = {"token_type": "Bearer", "expires_in": lifetime,
                                "access_token": access_token, "scope": " ".join(grant.scopes)}
        if "openid" in grant.scopes:
            claims: dict[str, Any] = {
                "sub": user.id, "ver": 1, "iss": issuer, "aud": app.client_id,
                "iat": issued, "exp": issued + lifetime, "jti": "ID." + secrets.token_urlsafe(24),
                "amr": ["pwd"], "idp": self.simulator.org.user_type_id,
                "auth_time": int(grant.issued),
                "at_hash": b64url(hashlib.sha256(access_token.encode()).digest()[:16]),
            }
            if grant.nonce is not None:
                claims["nonce"] = grant.nonce
            claims.update(self.profile_claims(user, grant.scopes))
            claims.update(overrides.claims)
            header = {"kid": kid, "alg": "RS256", **overrides.header}
            body["id_token"] = sign_jws(overrides.signing_key or key, header, claims)
        response = _json(body)
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"
        return response

    def profile_claims(self, user: SimUser, scopes: tuple[str, ...]) -> dict[str, Any]:
        config = self.simulator.config
        claims: dict[str, Any] = {}
        if "profile" in scopes:
            claims.update({
                "name": user.display_name, "preferred_username": user.login,
                "given_name": user.profile.get("firstName"),
                "family_name": user.profile.get("lastName"),
                "zoneinfo": "America/Los_Angeles", "locale": "en_US",
                "updated_at": int(user.created),
            })
        if "email" in scopes:
            claims.update({"email": user.profile.get("email"), "email_verified": True})
        if "groups" in scopes:
            names = [self.simulator.org.groups[g].name for g in user.group_ids]
            if config.groups_filter:
                names = [n for n in names if re.search(config.groups_filter, n)]
            claims[config.groups_claim] = names
        return claims

    # -- userinfo --------------------------------------------------------------------------

    async def userinfo(self, request: Request, _principal: Any) -> Response:
        server = self._server(request)
        if server is None:
            return _unknown_server(request)
        kind, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if kind != "Bearer" or not token:
            return self._record(server, "userinfo", {}, _bearer_error(
                401, "invalid_request", "The access token is missing."))
        with self._lock:
            issued = self._tokens.get(token)
        if (issued is None or issued.server != server
                or self.simulator.clock.time() >= issued.expires):
            return self._record(server, "userinfo", {}, _bearer_error(
                401, "invalid_token", "The access token is invalid."))
        if "openid" not in issued.scopes:
            return self._record(server, "userinfo", {}, _bearer_error(
                403, "insufficient_scope", "The access token must provide access to at least "
                "one of these scopes - profile, email, address or phone"))
        user = self.simulator.org.users.get(issued.user_id)
        if user is None:
            return self._record(server, "userinfo", {}, _bearer_error(
                401, "invalid_token", "The access token is invalid."))
        return self._record(server, "userinfo", {}, _json(
            {"sub": user.id, **self.profile_claims(user, issued.scopes)}))


# -- helpers ---------------------------------------------------------------------------------


def _base(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _oauth_error(status: int, error: str, description: str,
                 headers: dict[str, str] | None = None) -> Response:
    response = _json({"error": error, "error_description": description}, status)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _bearer_error(status: int, error: str, description: str) -> Response:
    response = _oauth_error(status, error, description)
    response.headers["WWW-Authenticate"] = (
        f'Bearer error="{error}", error_description="{description}"')
    return response


def _error_page(error: str, description: str) -> Response:
    """What Okta shows the browser when it cannot send it back to the app."""
    page = (f"<!doctype html><html><head><title>400 Bad Request</title></head><body>"
            f"<h1>400 Bad Request</h1><p id=\"error\">{html.escape(error)}</p>"
            f"<p id=\"error_description\">{html.escape(description)}</p></body></html>")
    return Response(page, status_code=400, media_type="text/html")


def _redirect(uri: str, params: dict[str, str]) -> Response:
    separator = "&" if "?" in uri else "?"
    return RedirectResponse(f"{uri}{separator}{urlencode(params)}", status_code=302)


def _unknown_server(request: Request) -> Response:
    server = request.path_params.get("server", "")
    return _json({"errorCode": "E0000007",
                  "errorSummary": f"Not found: Resource not found: {server} "
                                  "(AuthorizationServer)",
                  "errorLink": "E0000007", "errorId": "oae" + secrets.token_urlsafe(16),
                  "errorCauses": []}, 404)


def _basic_credentials(header: str) -> tuple[str, str] | None:
    """(client id, secret) from ``Basic`` credentials (each form-urlencoded, RFC 6749 2.3.1);
    None without them; ValueError if they cannot be read."""
    kind, _, value = header.partition(" ")
    if kind.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("not base64 text") from None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise ValueError("no colon")
    return unquote(client_id.replace("+", " ")), unquote(secret.replace("+", " "))
