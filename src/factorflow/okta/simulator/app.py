"""The simulated org's management API, as a Starlette app.

Endpoints: ``GET /api/v1/users/{id or login}`` and its ``/groups``, ``/factors`` and
``/authenticator-enrollments``; ``GET /api/v1/groups`` (``search``, ``q``),
``GET /api/v1/groups/{id}`` and ``/users``; ``PUT`` / ``DELETE
/api/v1/groups/{gid}/users/{uid}`` (logged as ``group.user_membership.add/remove``);
``GET /api/v1/logs`` with ``since``, ``until``, ``after``, ``filter``, ``q`` and ``limit`` and
``Link`` headers; ``POST /oauth2/v1/token`` (client credentials with ``private_key_jwt``, and
the authorization code exchange of the org authorization server). The OpenID Connect
authorization servers (the org's and custom ones such as ``/oauth2/default``: discovery,
``authorize``, ``token``, ``keys``, ``userinfo``) are in :mod:`factorflow.okta.simulator.oidc`.

Requests authenticate with ``SSWS <token>`` or ``Bearer <access token>``; bearer tokens carry
scopes (``okta.users.read``, ``okta.groups.read``, ``okta.groups.manage``, ``okta.logs.read``).
Every answer has Okta's rate-limit headers for its bucket; an exhausted bucket answers 429
``E0000047``. Errors use Okta's body: ``errorCode``, ``errorSummary``, ``errorLink``,
``errorId``, ``errorCauses``.

For tests, :class:`OktaSimulator` records every request (``requests``), token request
(``token_requests``) and the most requests it had in flight at once (``max_in_flight``).
"""

from __future__ import annotations

import asyncio
import math
import secrets
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import formatdate
from typing import Any, Literal
from urllib.parse import urlencode

import jwt
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from factorflow.okta.simulator.clock import Clock
from factorflow.okta.simulator.constants import ALL_SCOPES
from factorflow.okta.simulator.events import Actor, api_actor, okta_time, service_app_ref
from factorflow.okta.simulator.filters import FilterError, compile_filter
from factorflow.okta.simulator.oidc import ORG, AuthorizationServers, OidcApp, parse_form
from factorflow.okta.simulator.org import SimGroup, SimOrg, SimUser, public_copy

JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEFAULT_RATE_LIMITS = {
    "/api/v1/users/{id}": 2000,
    "/api/v1/groups/{id}": 1000,
    "/api/v1/logs": 120,
    "/oauth2/v1/token": 600,
}
DEFAULT_RATE_LIMIT = 1200
MAX_ASSERTION_SECONDS = 3600
RateLimitHints = Literal["okta", "retry_after", "none"]
Handler = Callable[[Request, "Principal | None"], Awaitable[Response]]


@dataclass(frozen=True)
class OAuthApp:
    """A registered API service app: its public key(s) by ``kid`` (None: no kid) and the
    scopes granted to it."""

    client_id: str
    public_keys: dict[str | None, Any]
    scopes: tuple[str, ...] = ALL_SCOPES
    name: str = "factorflow"


@dataclass
class SimulatorConfig:
    api_tokens: tuple[str, ...] = ()
    oauth_apps: tuple[OAuthApp, ...] = ()
    rate_limits: dict[str, int] = field(default_factory=dict)  # bucket -> requests per window
    rate_limit_window_seconds: float = 60.0
    # What a 429 tells the client: Okta's X-Rate-Limit-* headers; those plus Retry-After; nothing
    rate_limit_hints: RateLimitHints = "okta"
    latency_seconds: float = 0.0
    token_lifetime_seconds: int = 3600
    # OpenID Connect (see factorflow.okta.simulator.oidc)
    oidc_apps: tuple[OidcApp, ...] = ()
    authorization_servers: tuple[str, ...] = ("default",)  # custom ones, besides the org's
    sign_in_as: str | None = None  # login or id; None: the org's first user
    code_lifetime_seconds: int = 300
    id_token_lifetime_seconds: int = 3600
    groups_claim: str = "groups"
    groups_filter: str | None = None  # a regular expression the group names must match


@dataclass(frozen=True, slots=True)
class Principal:
    kind: Literal["ssws", "bearer"]
    scopes: frozenset[str] | None  # None: an API token, which has its admin's rights
    actor: Actor
    client_id: str | None = None


@dataclass(frozen=True, slots=True)
class RequestRecord:
    method: str
    path: str
    bucket: str
    status: int
    auth: str  # ssws, bearer or none
    at: float  # the simulator's clock when it answered


@dataclass(frozen=True, slots=True)
class TokenRequest:
    client_id: str | None
    header: dict[str, Any]
    claims: dict[str, Any]
    status: int
    error: str | None


@dataclass(slots=True)
class _Window:
    started: float
    used: int


class OktaSimulator:
    def __init__(self, org: SimOrg, config: SimulatorConfig | None = None,
                 clock: Clock | None = None) -> None:
        self.org = org
        self.config = config or SimulatorConfig()
        self.clock = clock or org.clock
        self.requests: list[RequestRecord] = []
        self.token_requests: list[TokenRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._apps = {app.client_id: app for app in self.config.oauth_apps}
        self._tokens: dict[str, tuple[str, frozenset[str], float]] = {}
        self._seen_jti: set[str] = set()
        self._windows: dict[str, _Window] = {}
        self._failures: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self.oidc = AuthorizationServers(self)
        self.app = Starlette(
            routes=self._routes(),
            exception_handlers={HTTPException: self._http_error},
        )

    # -- for tests and the CLI -------------------------------------------------------------

    def expire_access_tokens(self) -> None:
        """Make every access token issued so far invalid (as if its hour had run out)."""
        with self._lock:
            self._tokens.clear()

    def set_rate_limit(self, bucket: str, limit: int) -> None:
        with self._lock:
            self.config.rate_limits[bucket] = limit

    def inject_failures(self, bucket: str, statuses: list[int]) -> None:
        """Answer the next requests to ``bucket`` with these statuses (5xx: ``E0000009``),
        after authentication and rate limiting, before the endpoint does anything."""
        with self._lock:
            self._failures.setdefault(bucket, []).extend(statuses)

    def statuses(self, bucket: str | None = None) -> list[int]:
        with self._lock:
            return [r.status for r in self.requests if bucket is None or r.bucket == bucket]

    def reset_stats(self) -> None:
        with self._lock:
            self.requests.clear()
            self.token_requests.clear()
            self.max_in_flight = self.in_flight

    # -- routing ---------------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        def route(path: str, handler: Handler, scope: str | None,
                  methods: tuple[str, ...] = ("GET",)) -> Route:
            bucket = path.replace("{user_id}", "{id}").replace("{group_id}", "{id}")
            return Route(path, self._endpoint(bucket, scope, handler), methods=list(methods))

        users, groups = "okta.users.read", "okta.groups.read"
        return [
            route("/api/v1/users/{user_id}", self._get_user, users),
            route("/api/v1/users/{user_id}/groups", self._user_groups, users),
            route("/api/v1/users/{user_id}/factors", self._user_factors, users),
            route("/api/v1/users/{user_id}/authenticator-enrollments", self._user_enrollments,
                  users),
            route("/api/v1/groups", self._list_groups, groups),
            route("/api/v1/groups/{group_id}", self._get_group, groups),
            route("/api/v1/groups/{group_id}/users", self._group_users, groups),
            route("/api/v1/groups/{group_id}/users/{user_id}", self._membership,
                  "okta.groups.manage", ("PUT", "DELETE")),
            route("/api/v1/logs", self._logs, "okta.logs.read"),
            route("/oauth2/v1/token", self._token, None, ("POST",)),
            *(Route(path, self._endpoint(bucket, None, handler), methods=list(methods))
              for path, bucket, handler, methods in self.oidc.routes()),
        ]

    def _endpoint(self, bucket: str, scope: str | None,
                  handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            with self._lock:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                if self.config.latency_seconds > 0:
                    await asyncio.sleep(self.config.latency_seconds)
                now = self.clock.time()
                allowed, limit_headers = self._take(bucket, now)
                principal: Principal | None = None
                auth = "none"
                if not allowed:
                    response = _error(429, "E0000047",
                                      "API call exceeded rate limit due to too many requests.")
                    if self.config.rate_limit_hints == "none":
                        limit_headers = {}
                    elif self.config.rate_limit_hints == "retry_after":
                        reset = int(limit_headers["X-Rate-Limit-Reset"])
                        limit_headers["Retry-After"] = str(max(math.ceil(reset - now), 0))
                elif scope is None:
                    response = self._injected(bucket) or await handler(request, None)
                else:
                    principal, refusal = self._authenticate(request, scope, now)
                    auth = principal.kind if principal else _auth_kind(request)
                    response = (refusal or self._injected(bucket)
                                or await handler(request, principal))
                for name, value in limit_headers.items():
                    response.headers[name] = value
                response.headers["Date"] = formatdate(now, usegmt=True)
                with self._lock:
                    self.requests.append(RequestRecord(
                        request.method, request.url.path, bucket, response.status_code, auth,
                        now))
                return response
            finally:
                with self._lock:
                    self.in_flight -= 1

        return endpoint

    def _injected(self, bucket: str) -> Response | None:
        with self._lock:
            queued = self._failures.get(bucket)
            status = queued.pop(0) if queued else None
        if status is None:
            return None
        if status >= 500:
            return _error(status, "E0000009", "Internal Server Error")
        return _error(status, "E0000001", "Api validation failed: injected failure")

    def _take(self, bucket: str, now: float) -> tuple[bool, dict[str, str]]:
        window = self.config.rate_limit_window_seconds
        with self._lock:
            limit = self.config.rate_limits.get(
                bucket, DEFAULT_RATE_LIMITS.get(bucket, DEFAULT_RATE_LIMIT))
            state = self._windows.get(bucket)
            if state is None or now >= state.started + window:
                state = self._windows[bucket] = _Window(now, 0)
            allowed = state.used < limit
            if allowed:
                state.used += 1
            headers = {
                "X-Rate-Limit-Limit": str(limit),
                "X-Rate-Limit-Remaining": str(max(limit - state.used, 0)),
                "X-Rate-Limit-Reset": str(math.ceil(state.started + window)),
            }
            return allowed, headers

    def _authenticate(self, request: Request, scope: str,
                      now: float) -> tuple[Principal | None, Response | None]:
        header = request.headers.get("authorization", "")
        kind, _, credential = header.partition(" ")
        credential = credential.strip()
        if kind == "SSWS" and credential:
            if credential in self.config.api_tokens:
                actor = api_actor(self.org.api_admin.ref(), api_token_id=self.org.api_token_id)
                return Principal("ssws", None, actor), None
            return None, _error(401, "E0000011", "Invalid token provided")
        if kind == "Bearer" and credential:
            with self._lock:
                issued = self._tokens.get(credential)
            if issued is None or now >= issued[2]:
                return None, _error(401, "E0000011", "Invalid token provided", headers={
                    "WWW-Authenticate": 'Bearer error="invalid_token", '
                                        'error_description="The access token is invalid."'})
            client_id, scopes, _expires = issued
            app = self._apps[client_id]
            principal = Principal("bearer", scopes, api_actor(
                service_app_ref(client_id, app.name), client_id=client_id), client_id)
            if not _granted(scopes, scope):
                return principal, _error(
                    403, "E0000006", "You do not have permission to perform the requested action",
                    headers={"WWW-Authenticate":
                             f'Bearer error="insufficient_scope", '
                             f'error_description="The access token provided does not contain '
                             f'the required scopes.", scope="{scope}"'})
            return principal, None
        return None, _error(401, "E0000005", "Invalid session")

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status == 405:
            return _error(405, "E0000022", "The endpoint does not support the provided HTTP "
                                           "method")
        return _error(status, "E0000007", f"Not found: Resource not found: {request.url.path}")

    # -- users and groups ------------------------------------------------------------------

    def _find_user(self, request: Request) -> SimUser | None:
        return self.org.user(request.path_params["user_id"])

    async def _get_user(self, request: Request, _p: Principal | None) -> Response:
        user = self._find_user(request)
        if user is None:
            return _not_found(request.path_params["user_id"], "User")
        return _json(user_object(user, _base(request), self.org.user_type_id))

    async def _user_groups(self, request: Request, _p: Principal | None) -> Response:
        user = self._find_user(request)
        if user is None:
            return _not_found(request.path_params["user_id"], "User")
        base = _base(request)
        return _json([group_object(self.org.groups[g], base) for g in user.group_ids])

    async def _user_factors(self, request: Request, _p: Principal | None) -> Response:
        user = self._find_user(request)
        if user is None:
            return _not_found(request.path_params["user_id"], "User")
        base = _base(request)
        return _json([factor_object(f, user.id, base) for f in user.factors])

    async def _user_enrollments(self, request: Request, _p: Principal | None) -> Response:
        user = self._find_user(request)
        if user is None:
            return _not_found(request.path_params["user_id"], "User")
        base = _base(request)
        return _json([enrollment_object(e, user.id, base) for e in user.enrollments])

    async def _list_groups(self, request: Request, _p: Principal | None) -> Response:
        """``search`` (a SCIM filter over the group object, e.g. ``profile.name eq "X"``) and
        ``q`` (name prefix, ignoring case); no paging."""
        base = _base(request)
        found = [group_object(g, base) for g in self.org.groups.values()]
        search, prefix = request.query_params.get("search"), request.query_params.get("q")
        if search:
            try:
                predicate = compile_filter(search)
            except FilterError as exc:
                return _error(400, "E0000031", "Invalid search criteria.",
                              causes=[{"errorSummary": str(exc)}])
            found = [g for g in found if predicate(g)]
        if prefix:
            found = [g for g in found if g["profile"]["name"].casefold().startswith(
                prefix.casefold())]
        return _json(found)

    async def _get_group(self, request: Request, _p: Principal | None) -> Response:
        group = self.org.groups.get(request.path_params["group_id"])
        if group is None:
            return _not_found(request.path_params["group_id"], "UserGroup")
        return _json(group_object(group, _base(request)))

    async def _group_users(self, request: Request, _p: Principal | None) -> Response:
        group = self.org.groups.get(request.path_params["group_id"])
        if group is None:
            return _not_found(request.path_params["group_id"], "UserGroup")
        base = _base(request)
        return _json([user_object(u, base, self.org.user_type_id)
                      for u in self.org.members(group.id)])

    async def _membership(self, request: Request, principal: Principal | None) -> Response:
        assert principal is not None
        group = self.org.groups.get(request.path_params["group_id"])
        if group is None:
            return _not_found(request.path_params["group_id"], "UserGroup")
        user = self.org.users.get(request.path_params["user_id"])
        if user is None:
            return _not_found(request.path_params["user_id"], "User")
        self.org.set_membership(group.id, user.id, request.method == "PUT", principal.actor)
        return Response(status_code=204)

    # -- System Log ------------------------------------------------------------------------

    async def _logs(self, request: Request, _p: Principal | None) -> Response:
        query = request.query_params
        now = self.clock.time()
        try:
            page = _LogQuery.parse(query, now).run(self.org.log.snapshot())
        except _BadQuery as bad:
            return _error(400, bad.code, bad.summary, causes=bad.causes)
        base = _base(request)
        response = _json(page.events)
        response.headers.append("link", f'<{request.url}>; rel="self"')
        if page.next_params is not None:
            next_url = f"{base}/api/v1/logs?{urlencode(page.next_params)}"
            response.headers.append("link", f'<{next_url}>; rel="next"')
        return response

    # -- OAuth -----------------------------------------------------------------------------

    async def _token(self, request: Request, _p: Principal | None) -> Response:
        # application/x-www-form-urlencoded, parsed here (Starlette's form parser needs an
        # extra package for this one endpoint)
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/x-www-form-urlencoded":
            return _oauth_error(400, "invalid_request",
                                "The request must be application/x-www-form-urlencoded.")
        fields = parse_form(await request.body())
        if fields.get("grant_type") == "authorization_code":
            return await self.oidc.token(request, ORG, fields)
        record: dict[str, Any] = {"client_id": None, "header": {}, "claims": {}}
        response = self._issue(request, fields, record)
        error = None
        if response.status_code != 200:
            error = orjson.loads(response.body).get("error_description")
        with self._lock:
            self.token_requests.append(TokenRequest(
                record["client_id"], record["header"], record["claims"], response.status_code,
                error))
        return response

    def _issue(self, request: Request, fields: dict[str, str], record: dict[str, Any]) -> Response:
        if fields.get("grant_type") != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type",
                                "The authorization grant type is not supported.")
        if fields.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            return _oauth_error(401, "invalid_client", "Client authentication failed: "
                                "client_assertion_type must be jwt-bearer.")
        assertion = fields.get("client_assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            return _oauth_error(401, "invalid_client", "The client_assertion is not a valid JWT.")
        record["header"], record["claims"] = header, unverified
        app = self._apps.get(str(unverified.get("iss")))
        record["client_id"] = app.client_id if app else None
        if app is None or fields.get("client_id", app.client_id) != app.client_id:
            return _oauth_error(401, "invalid_client", "Invalid value for 'client_id' parameter.")
        if header.get("alg") not in JWT_ALGORITHMS:
            return _oauth_error(401, "invalid_client",
                                "The client_assertion token has an unsupported algorithm.")
        kid = header.get("kid")
        keys = ([app.public_keys[kid]] if kid in app.public_keys
                else list(app.public_keys.values()) if kid is None else [])
        if not keys:
            return _oauth_error(401, "invalid_client",
                                f"The client_assertion kid {kid!r} is not a key of this client.")
        token_url = f"{_base(request)}/oauth2/v1/token"
        claims: dict[str, Any] | None = None
        problem = "The client_assertion signature is invalid."
        for key in keys:
            try:
                claims = jwt.decode(
                    assertion, key, algorithms=[header["alg"]], audience=token_url,
                    options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                             "require": ["iss", "sub", "aud", "exp"]})
                break
            except jwt.InvalidAudienceError:
                problem = ("The audience claim for client_assertion must be the endpoint "
                           "invoking the client_assertion.")
                break
            except jwt.MissingRequiredClaimError as exc:
                problem = f"The client_assertion token is missing the '{exc.claim}' claim."
                break
            except jwt.PyJWTError:
                continue
        if claims is None:
            return _oauth_error(401, "invalid_client", problem)
        refusal = self._check_claims(claims, app)
        if refusal is not None:
            return refusal
        requested = fields.get("scope", "").split()
        if not requested:
            return _oauth_error(400, "invalid_scope", "The authorization server resource does "
                                "not have any configured default scopes, 'scope' must be "
                                "provided.")
        refused = sorted(set(requested) - set(app.scopes))
        if refused:
            return _oauth_error(400, "invalid_scope", "One or more scopes are not configured "
                                f"for the authorization server resource: {' '.join(refused)}")
        access_token = secrets.token_urlsafe(32)
        lifetime = self.config.token_lifetime_seconds
        with self._lock:
            self._tokens[access_token] = (app.client_id, frozenset(requested),
                                          self.clock.time() + lifetime)
        response = _json({"token_type": "Bearer", "expires_in": lifetime,
                          "access_token": access_token, "scope": " ".join(requested)})
        response.headers["Cache-Control"] = "no-cache, no-store"
        response.headers["Pragma"] = "no-cache"
        return response

    def _check_claims(self, claims: dict[str, Any], app: OAuthApp) -> Response | None:
        now = self.clock.time()
        if claims.get("sub") != app.client_id:
            return _oauth_error(401, "invalid_client",
                                "The client_assertion sub claim must equal the client_id.")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or now >= exp:
            return _oauth_error(401, "invalid_client", "The client_assertion token is expired.")
        if exp - now > MAX_ASSERTION_SECONDS:
            return _oauth_error(401, "invalid_client", "The client_assertion token has an "
                                "expiration too far in the future.")
        jti = claims.get("jti")
        if jti is not None:
            with self._lock:
                if jti in self._seen_jti:
                    return _oauth_error(401, "invalid_client",
                                        "The client_assertion token has already been used.")
                self._seen_jti.add(str(jti))
        return None


# -- the System Log query ------------------------------------------------------------------


class _BadQuery(Exception):
    def __init__(self, code: str, summary: str, cause: str | None = None) -> None:
        super().__init__(summary)
        self.code = code
        self.summary = summary
        self.causes = [{"errorSummary": cause}] if cause else []


@dataclass(frozen=True, slots=True)
class _LogPage:
    events: list[dict[str, Any]]
    next_params: dict[str, str] | None


@dataclass(frozen=True, slots=True)
class _LogQuery:
    since: float | None
    until: float | None
    after: tuple[int, int] | None  # (published ms, position in the log)
    predicate: Callable[[dict[str, Any]], bool] | None
    keywords: tuple[str, ...]
    limit: int
    echo: dict[str, str]  # the parameters the next link repeats
    now: float

    @classmethod
    def parse(cls, query: Any, now: float) -> _LogQuery:
        limit_text = query.get("limit", "100")
        try:
            limit = int(limit_text)
        except ValueError:
            limit = -1
        if not 0 <= limit <= 1000:
            raise _BadQuery("E0000001", "Api validation failed: limit",
                            "limit: must be between 0 and 1000")
        if query.get("sortOrder", "ASCENDING") != "ASCENDING":
            raise _BadQuery("E0000001", "Api validation failed: sortOrder",
                            "sortOrder: the simulator serves ASCENDING only")
        if "after" in query and "since" in query:
            raise _BadQuery("E0000001", "Api validation failed: after",
                            "after and since cannot be used together")
        since, until = _instant(query, "since"), _instant(query, "until")
        if since is not None and since < now - 180 * 86_400:
            raise _BadQuery("E0000053", "The since parameter is over 180 days prior to the "
                            "current day")
        after = _cursor(query["after"]) if "after" in query else None
        predicate = None
        if query.get("filter"):
            try:
                predicate = compile_filter(query["filter"])
            except FilterError as exc:
                raise _BadQuery("E0000031", "Invalid search criteria.", str(exc)) from None
        keywords = tuple(query.get("q", "").lower().split())
        echo = {k: query[k] for k in ("limit", "filter", "q", "until") if k in query}
        return cls(since, until, after, predicate, keywords, limit, echo, now)

    def run(self, log: list[dict[str, Any]]) -> _LogPage:
        bounded = self.until is not None
        everything = ((_published_ms(event), position, event)
                      for position, event in enumerate(log, start=1))
        rows: Iterable[tuple[int, int, dict[str, Any]]]
        first: tuple[int, int, dict[str, Any]] | None = None
        if bounded:
            assert self.until is not None
            since = self.since if self.since is not None else self.until - 7 * 86_400
            listed = sorted(r for r in everything if since * 1000 <= r[0] < self.until * 1000)
            if self.after is not None:
                listed = [r for r in listed if (r[0], r[1]) > self.after]
            rows, first = listed, (listed[0] if listed else None)
        elif self.after is not None:
            # Only what was stored after the cursor (positions are 1-based), read lazily: a
            # page costs its own events, not the whole log.
            skip = self.after[1]
            rows = ((_published_ms(event), position, event)
                    for position, event in enumerate(log[skip:], start=skip + 1))
        else:
            since = self.since if self.since is not None else self.now - 7 * 86_400
            listed = [r for r in everything if r[0] >= since * 1000]
            rows, first = listed, (listed[0] if listed else None)
        found: list[dict[str, Any]] = []
        cursor = self.after or ((first[0], first[1] - 1) if first else (0, len(log)))
        full = False
        for published, position, event in rows:
            if len(found) >= self.limit:
                full = True
                break
            cursor = (published, position)
            if self._matches(event):
                found.append(event)
        if not bounded and not full:
            cursor = (cursor[0], max(cursor[1], len(log)))
        next_params = None
        if not bounded or full:
            next_params = {**self.echo, "after": f"{cursor[0]}_{cursor[1]}"}
        return _LogPage(found, next_params)

    def _matches(self, event: dict[str, Any]) -> bool:
        if self.predicate is not None and not self.predicate(event):
            return False
        if self.keywords:
            text = orjson.dumps(event).decode().lower()
            return all(word in text for word in self.keywords)
        return True


def _instant(query: Any, name: str) -> float | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _BadQuery("E0000001", f"Api validation failed: {name}",
                        f"{name}: not an ISO 8601 timestamp") from None
    if moment.tzinfo is None:
        raise _BadQuery("E0000001", f"Api validation failed: {name}",
                        f"{name}: needs a time zone")
    return moment.timestamp()


def _cursor(value: str) -> tuple[int, int]:
    published, _, position = value.partition("_")
    try:
        return int(published), int(position)
    except ValueError:
        raise _BadQuery("E0000001", "Api validation failed: after",
                        "after: not a cursor from a next link") from None


def _published_ms(event: dict[str, Any]) -> int:
    try:
        moment = datetime.fromisoformat(str(event.get("published")).replace("Z", "+00:00"))
    except ValueError:
        return 0
    return int(moment.timestamp() * 1000)


# -- API objects -----------------------------------------------------------------------------


def user_object(user: SimUser, base: str, user_type_id: str) -> dict[str, Any]:
    created = okta_time(user.created)
    return {
        "id": user.id, "status": user.status, "created": created,
        "activated": created if user.status != "PROVISIONED" else None,
        "statusChanged": created,
        "lastLogin": okta_time(user.last_login) if user.last_login else None,
        "lastUpdated": created, "passwordChanged": created,
        "type": {"id": user_type_id},
        "profile": dict(user.profile),
        "credentials": {
            "password": {},
            "emails": [{"value": user.profile["email"], "status": "VERIFIED",
                        "type": "PRIMARY"}],
            "provider": {"type": "OKTA", "name": "OKTA"},
        },
        "_links": {"self": {"href": f"{base}/api/v1/users/{user.id}"}},
    }


def group_object(group: SimGroup, base: str) -> dict[str, Any]:
    return {
        "id": group.id, "created": okta_time(group.created),
        "lastUpdated": okta_time(group.created),
        "lastMembershipUpdated": okta_time(group.last_membership_updated),
        "objectClass": ["okta:user_group"], "type": group.type,
        "profile": {"name": group.name, "description": group.description},
        "_links": {
            "logo": [{"name": "medium", "href": f"{base}/img/logos/groups/okta-medium.png",
                      "type": "image/png"}],
            "users": {"href": f"{base}/api/v1/groups/{group.id}/users"},
            "apps": {"href": f"{base}/api/v1/groups/{group.id}/apps"},
        },
    }


def factor_object(factor: dict[str, Any], user_id: str, base: str) -> dict[str, Any]:
    served = public_copy(factor)
    user_href = f"{base}/api/v1/users/{user_id}"
    served["_links"] = {
        "self": {"href": f"{user_href}/factors/{factor['id']}",
                 "hints": {"allow": ["GET", "DELETE"]}},
        "user": {"href": user_href, "hints": {"allow": ["GET"]}},
    }
    return served


def enrollment_object(enrollment: dict[str, Any], user_id: str, base: str) -> dict[str, Any]:
    served = public_copy(enrollment)
    user_href = f"{base}/api/v1/users/{user_id}"
    served["_links"] = {
        "self": {"href": f"{user_href}/authenticator-enrollments/{enrollment['id']}",
                 "hints": {"allow": ["GET", "DELETE"]}},
        "user": {"href": user_href, "hints": {"allow": ["GET"]}},
        "authenticator": {"href": f"{base}/api/v1/authenticators/"
                                  f"{enrollment.get('_authenticator', '')}",
                          "hints": {"allow": ["GET"]}},
    }
    return served


# -- helpers -----------------------------------------------------------------------------------


def _base(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def _auth_kind(request: Request) -> str:
    kind = request.headers.get("authorization", "").partition(" ")[0]
    return {"SSWS": "ssws", "Bearer": "bearer"}.get(kind, "none")


def _granted(scopes: frozenset[str], needed: str) -> bool:
    return needed in scopes or needed.replace(".read", ".manage") in scopes


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _error(status: int, code: str, summary: str, *, causes: list[dict[str, str]] | None = None,
           headers: dict[str, str] | None = None) -> Response:
    response = _json({"errorCode": code, "errorSummary": summary, "errorLink": code,
                      "errorId": "oae" + secrets.token_urlsafe(16), "errorCauses": causes or []},
                     status)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _not_found(what: str, kind: str) -> Response:
    return _error(404, "E0000007", f"Not found: Resource not found: {what} ({kind})")


def _oauth_error(status: int, error: str, description: str) -> Response:
    return _json({"error": error, "error_description": description}, status)
