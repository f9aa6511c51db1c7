"""A small, lenient client for the parts of Okta's management API that factorflow uses.

Users, a user's groups, factors and authenticator enrollments, groups and group membership, and
the System Log. Responses are returned as plain dicts and lists, exactly as Okta sent them: an
unknown ``factorType`` (``claims_provider``), a numeric ``version`` or a new key never fails a
call. See the decision record "Okta API: plain httpx, not the official SDK".

The client is synchronous and thread-safe (workflow steps run in threads): one httpx connection
pool, one access token, one rate-limit state per endpoint bucket, and a semaphore that caps the
requests in flight. Rate limits are read from every response; the client slows down before a
bucket runs dry and waits out 429s, but never longer in total than ``max_wait_seconds`` per call:
past that it raises :class:`OktaUnavailable` (a :class:`TransientActionError`) so that the
workflow retries later instead of holding a worker.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import httpx
import orjson

from factorflow import __version__
from factorflow.errors import ConfigError, PermanentActionError, TransientActionError
from factorflow.okta.api_auth import (
    CLIENT_ASSERTION_TYPE,
    AccessTokenCache,
    SigningKey,
    client_assertion,
    load_signing_key,
)
from factorflow.okta.api_settings import (
    DEFAULT_SCOPES,
    LOOPBACK_HOSTS,
    TOKEN_PATH,
    OktaApiSettings,
)
from factorflow.okta.ratelimit import RateLimiter, RateLimitSnapshot, bucket_for

__all__ = ["DEFAULT_SCOPES", "LOOPBACK_HOSTS", "TOKEN_PATH", "OktaApiSettings", "OktaClient"]

MAX_LIST_PAGES = 100
_LINK = re.compile(r"<([^>]*)>((?:\s*;\s*[^;,]*)*)")


class OktaApiError(PermanentActionError):
    """Okta refused the request (a 4xx other than 429); retrying the same call will not help.

    ``error_code`` is Okta's ``errorCode`` (``E0000007``) or OAuth ``error``
    (``invalid_client``); ``summary`` its ``errorSummary`` / ``error_description``.
    """

    def __init__(self, status: int, error_code: str | None, summary: str, *,
                 error_id: str | None = None, causes: list[Any] | None = None) -> None:
        super().__init__(f"Okta answered {status} {error_code or ''}: {summary}".replace("  ", " "))
        self.status = status
        self.error_code = error_code
        self.summary = summary
        self.error_id = error_id
        self.causes = causes or []


class OktaNotFound(OktaApiError):
    """404: no such user, group or resource."""


class OktaAuthError(OktaApiError):
    """401/403, or the token endpoint refused the client: credentials, scopes or admin role."""


class OktaUnavailable(TransientActionError):
    """Okta could not be reached, answered 5xx, or rate-limited us past the allowed wait."""


@dataclass(frozen=True, slots=True)
class LogPage:
    """One page of ``GET /api/v1/logs``; ``next_url`` is the cursor to keep (polling requests
    always have one, even when ``events`` is empty)."""

    events: list[dict[str, Any]]
    next_url: str | None
    self_url: str | None


class OktaClient:
    def __init__(
        self,
        settings: OktaApiSettings,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._sleep = sleep
        self._origin = _origin(settings.org_url)
        self._limiter = RateLimiter(slowdown_below=settings.slowdown_below, clock=clock)
        self._slots = threading.BoundedSemaphore(settings.max_concurrency)
        self._tokens = AccessTokenCache()
        self._ssws: str | None = None
        self._signing: SigningKey | None = None
        if settings.uses_oauth:
            assert settings.private_key_file is not None  # checked by the settings
            passphrase = settings.private_key_passphrase
            self._signing = load_signing_key(
                settings.private_key_file, key_id=settings.key_id,
                passphrase=passphrase.get_secret_value().encode() if passphrase else None,
            )
        else:
            self._ssws = _api_token(settings)
        self._http = httpx.Client(
            timeout=httpx.Timeout(settings.timeout_seconds,
                                  connect=settings.connect_timeout_seconds),
            limits=httpx.Limits(max_connections=settings.max_concurrency,
                                max_keepalive_connections=settings.max_concurrency),
            headers={"Accept": "application/json", "User-Agent": f"factorflow/{__version__}"},
            transport=transport,
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OktaClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- users and groups ------------------------------------------------------------------

    def get_user(self, id_or_login: str) -> dict[str, Any] | None:
        """``GET /api/v1/users/{id or login}``; None if Okta does not know the user."""
        found = self._json("GET", f"/api/v1/users/{_segment(id_or_login)}", missing_ok=True)
        return found if isinstance(found, dict) else None

    def list_user_groups(self, user_id: str) -> list[dict[str, Any]]:
        return self._list(f"/api/v1/users/{_segment(user_id)}/groups")

    def list_factors(self, user_id: str) -> list[dict[str, Any]]:
        """Enrolled factors (Classic view). ``factorType`` values outside Okta's documented
        enum come through unchanged."""
        return self._list(f"/api/v1/users/{_segment(user_id)}/factors")

    def list_authenticator_enrollments(self, user_id: str) -> list[dict[str, Any]]:
        """Authenticator enrollments (Identity Engine view)."""
        return self._list(f"/api/v1/users/{_segment(user_id)}/authenticator-enrollments")

    def get_group(self, group_id: str) -> dict[str, Any] | None:
        found = self._json("GET", f"/api/v1/groups/{_segment(group_id)}", missing_ok=True)
        return found if isinstance(found, dict) else None

    def find_groups(self, name: str) -> list[dict[str, Any]]:
        """Groups whose name is exactly ``name``: ``GET /api/v1/groups?search=profile.name eq
        "<name>"`` (scope ``okta.groups.read``)."""
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        query = urlencode({"search": f'profile.name eq "{quoted}"'})
        return self._list(f"/api/v1/groups?{query}")

    def is_member(self, group_id: str, user_id: str) -> bool:
        """Whether ``user_id`` is in ``group_id`` (by the user's group list)."""
        return any(group.get("id") == group_id for group in self.list_user_groups(user_id))

    def add_user_to_group(self, group_id: str, user_id: str) -> None:
        """``PUT /api/v1/groups/{gid}/users/{uid}`` (scope ``okta.groups.manage``); idempotent."""
        self._json("PUT", f"/api/v1/groups/{_segment(group_id)}/users/{_segment(user_id)}")

    def remove_user_from_group(self, group_id: str, user_id: str) -> None:
        """``DELETE /api/v1/groups/{gid}/users/{uid}`` (scope ``okta.groups.manage``)."""
        self._json("DELETE", f"/api/v1/groups/{_segment(group_id)}/users/{_segment(user_id)}")

    # -- System Log ------------------------------------------------------------------------

    def list_logs(
        self,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        filter: str | None = None,
        limit: int = 1000,
        after_url: str | None = None,
        q: str | None = None,
    ) -> LogPage:
        """One page of the System Log. Without ``until`` this is a polling request: keep
        ``next_url`` and pass it back as ``after_url`` (the other arguments are then ignored:
        the link carries them)."""
        if after_url is not None:
            response = self._request("GET", self._same_origin(after_url))
        else:
            if not 1 <= limit <= 1000:
                raise ValueError("limit must be between 1 and 1000")
            params: dict[str, str] = {"limit": str(limit)}
            if since is not None:
                params["since"] = _timestamp(since)
            if until is not None:
                params["until"] = _timestamp(until)
            if filter:
                params["filter"] = filter
            if q:
                params["q"] = q
            response = self._request("GET", self._origin + "/api/v1/logs", params=params)
        events = self._decode(response)
        if not isinstance(events, list):
            raise OktaApiError(response.status_code, "invalid_response",
                               "the System Log did not answer with a list")
        links = _links(response)
        return LogPage(events, links.get("next"), links.get("self"))

    def iter_logs(self, **query: Any) -> Iterator[dict[str, Any]]:
        """Every event of a query, following ``next`` links until a page comes back empty (a
        polling request never runs out of links) or has no next link."""
        page = self.list_logs(**query)
        while True:
            yield from page.events
            if not page.events or page.next_url is None:
                return
            page = self.list_logs(after_url=page.next_url)

    # -- observability ---------------------------------------------------------------------

    def rate_limits(self) -> dict[str, RateLimitSnapshot]:
        """The last rate-limit state per bucket (for metrics)."""
        return self._limiter.snapshot()

    # -- plumbing --------------------------------------------------------------------------

    def _list(self, path: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        url: str | None = self._origin + path
        for _page in range(MAX_LIST_PAGES):
            if url is None:
                return items
            response = self._request("GET", url)
            if response.status_code == 404:
                self._raise(response)
            page = self._decode(response)
            if not isinstance(page, list):
                raise OktaApiError(response.status_code, "invalid_response",
                                   f"{bucket_for(path)} did not answer with a list")
            items.extend(item for item in page if isinstance(item, dict))
            next_url = _links(response).get("next")
            url = self._same_origin(next_url) if next_url and page else None
        return items

    def _json(self, method: str, path: str, *, missing_ok: bool = False) -> Any:
        response = self._request(method, self._origin + path)
        if response.status_code == 404 and missing_ok:
            return None
        return self._decode(response)

    def _decode(self, response: httpx.Response) -> Any:
        if not response.is_success:
            self._raise(response)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise OktaApiError(response.status_code, "invalid_response",
                               "Okta's answer is not JSON") from None

    def _raise(self, response: httpx.Response) -> None:
        status = response.status_code
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = None
        body = body if isinstance(body, dict) else {}
        code = body.get("errorCode") or body.get("error")
        summary = body.get("errorSummary") or body.get("error_description") or response.text[:200]
        error_id = body.get("errorId")
        causes = body.get("errorCauses") if isinstance(body.get("errorCauses"), list) else None
        kind = OktaNotFound if status == 404 else OktaAuthError if status in (401, 403) \
            else OktaApiError
        raise kind(status, str(code) if code else None, str(summary),
                   error_id=str(error_id) if error_id else None, causes=causes)

    def _request(
        self, method: str, url: str, *, params: dict[str, str] | None = None,
        data: dict[str, str] | None = None, authenticate: bool = True,
    ) -> httpx.Response:
        """Send with pacing, the concurrency cap, 429 waits within the budget and one token
        refresh; raise OktaUnavailable for 5xx, transport errors and an exhausted budget."""
        bucket = bucket_for(url)
        waited = 0.0
        throttled = 0
        refreshed = False
        while True:
            delay = self._limiter.pace(bucket)
            if delay > 0:
                waited = self._wait(bucket, delay, waited)
            headers: dict[str, str] = {}
            token: str | None = None
            if authenticate:
                token = self._authorization()
                headers["Authorization"] = token
            with self._slots:
                try:
                    response = self._http.request(method, url, params=params, data=data,
                                                  headers=headers)
                except httpx.TimeoutException:
                    raise OktaUnavailable(f"Okta {method} {bucket} timed out") from None
                except httpx.TransportError as exc:
                    raise OktaUnavailable(
                        f"Okta {method} {bucket} failed: {type(exc).__name__}: {exc}"
                    ) from None
            self._limiter.observe(bucket, response.headers)
            if response.status_code == 429:
                delay = self._limiter.retry_delay(response.headers, throttled)
                throttled += 1
                waited = self._wait(bucket, delay, waited)
                continue
            if (response.status_code == 401 and token is not None and self._signing is not None
                    and not refreshed and _invalid_token(response)):
                self._tokens.invalidate(token.removeprefix("Bearer "))
                refreshed = True
                continue
            if response.status_code >= 500:
                raise OktaUnavailable(
                    f"Okta {method} {bucket} answered {response.status_code}",
                    retry_after=_retry_after(response),
                )
            return response

    def _wait(self, bucket: str, delay: float, waited: float) -> float:
        if waited + delay > self.settings.max_wait_seconds:
            raise OktaUnavailable(
                f"Okta rate limit on {bucket}: would wait {delay:.1f} s more after "
                f"{waited:.1f} s (max_wait_seconds={self.settings.max_wait_seconds:g})",
                retry_after=delay,
            )
        self._sleep(delay)
        return waited + delay

    def _authorization(self) -> str:
        if self._ssws is not None:
            return f"SSWS {self._ssws}"
        token = self._tokens.current(self._clock())
        if token is None:
            with self._tokens.fetching:
                token = self._tokens.current(self._clock()) or self._fetch_token()
        return f"Bearer {token}"

    def _fetch_token(self) -> str:
        assert self._signing is not None and self.settings.client_id is not None
        url = self.settings.token_url
        assertion = client_assertion(self._signing, client_id=self.settings.client_id,
                                     token_url=url, now=self._clock())
        response = self._request("POST", url, authenticate=False, data={
            "grant_type": "client_credentials",
            "scope": " ".join(self.settings.scopes),
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": assertion,
        })
        if not response.is_success:
            try:
                self._raise(response)
            except OktaApiError as exc:  # any refusal of the client is an auth problem
                raise OktaAuthError(exc.status, exc.error_code, exc.summary) from None
        body = self._decode(response)
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise OktaAuthError(response.status_code, "invalid_response",
                                "the token endpoint answered without an access_token")
        expires_in = body.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else 3600.0
        self._tokens.store(token, lifetime, self._clock())
        return token

    def _same_origin(self, url: str) -> str:
        """Only follow links to the org itself: a link elsewhere would get our credential."""
        if _origin(url) != self._origin:
            raise OktaApiError(0, "foreign_link",
                               f"refusing to follow a link outside {self._origin}: {url[:100]}")
        return url


def _api_token(settings: OktaApiSettings) -> str:
    if settings.api_token is not None:
        token = settings.api_token.get_secret_value().strip()
    else:
        assert settings.api_token_file is not None
        try:
            token = settings.api_token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"okta.api_token_file {settings.api_token_file}: cannot read: {exc.strerror}"
            ) from None
    if token.upper().startswith("SSWS "):
        token = token[5:].strip()
    if not token:
        raise ConfigError("okta API token is empty")
    return token


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{(parts.netloc or '').lower()}"


def _segment(value: str) -> str:
    if not value:
        raise ValueError("an Okta id or login must not be empty")
    return quote(value, safe="")


def _timestamp(value: datetime | str) -> str:
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError("since/until must be timezone-aware")
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _links(response: httpx.Response) -> dict[str, str]:
    """``Link: <url>; rel="next"`` headers (Okta sends one header per link) by rel."""
    found: dict[str, str] = {}
    for header in response.headers.get_list("link"):
        for match in _LINK.finditer(header):
            for param in match.group(2).split(";"):
                name, _, value = param.strip().partition("=")
                if name.strip().lower() == "rel":
                    for rel in value.strip().strip('"').split():
                        found.setdefault(rel, match.group(1).strip())
    return found


def _invalid_token(response: httpx.Response) -> bool:
    challenge = response.headers.get("www-authenticate", "")
    if "invalid_token" in challenge:
        return True
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and body.get("errorCode") == "E0000011"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
