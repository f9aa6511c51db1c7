"""Enrichment from the Okta API: the user's profile, groups, factors and authenticator
enrollments at decision time.

One lookup is four calls (``GET /api/v1/users/{id}``, ``/groups``, ``/factors``,
``/authenticator-enrollments``). Lookups are cached per user for ``enrichment_ttl_seconds`` and
shared by every thread of the worker: a burst of enrollments by one user costs one lookup per
TTL, and concurrent lookups of the same user wait for the one request in flight (single flight)
instead of each asking Okta.

When Okta cannot answer (unreachable, 5xx, rate-limited past the client's wait budget, or
refusing our credentials), ``enrichment_fallback`` decides:

* ``wait`` (default): raise :class:`TransientActionError`; the workflow waits and retries, and
  never decides on missing data;
* ``directory``: use the directory file alone (``source: directory-fallback``);
* ``none``: decide without enrichment (``source: okta-unavailable``, ``found: false``).

With a directory file as well, Okta comes first and the directory fills in: profile attributes
Okta has win, attributes only the directory has are added, and the groups of both are kept
(``source: okta+directory``). A user Okta does not know but the directory does gives the
directory's entry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from factorflow.domain.actions import Enrichment
from factorflow.domain.facts import Person
from factorflow.errors import ConfigError, PermanentActionError, TransientActionError
from factorflow.okta.payloads import format_utc

log = logging.getLogger(__name__)

SOURCE = "okta"
Fallback = Literal["wait", "directory", "none"]
_FACTOR_KEYS = ("id", "factorType", "provider", "vendorName", "status", "created")
_ENROLLMENT_KEYS = ("id", "type", "key", "name", "status", "created")


class OktaUsers(Protocol):
    """The part of :class:`factorflow.okta.api.OktaClient` enrichment uses."""

    def get_user(self, id_or_login: str) -> dict[str, Any] | None: ...

    def list_user_groups(self, user_id: str) -> list[dict[str, Any]]: ...

    def list_factors(self, user_id: str) -> list[dict[str, Any]]: ...

    def list_authenticator_enrollments(self, user_id: str) -> list[dict[str, Any]]: ...


class Directory(Protocol):
    def lookup(self, user: Person | None) -> Enrichment: ...


@dataclass(slots=True)
class _Flight:
    """One lookup of one user: in flight until ``done`` is set, then a result or an error."""

    done: threading.Event = field(default_factory=threading.Event)
    value: Enrichment | None = None
    error: BaseException | None = None
    expires: float = 0.0


class OktaEnrichment:
    """Implements the pipeline's ``Enricher`` port (``lookup(user) -> Enrichment``)."""

    def __init__(
        self,
        client: OktaUsers,
        *,
        ttl_seconds: float = 300.0,
        cache_size: int = 10_000,
        fallback: Fallback = "wait",
        directory: Directory | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if fallback == "directory" and directory is None:
            raise ConfigError(
                "okta.enrichment_fallback = \"directory\" needs a directory file "
                "(pipeline.directory_file or orgs.<name>.directory_file)"
            )
        self._client = client
        self._ttl = ttl_seconds
        self._size = cache_size
        self._fallback = fallback
        self._directory = directory
        self._clock = clock
        self._wall = wall_clock
        self._flights: OrderedDict[str, _Flight] = OrderedDict()
        self._lock = threading.Lock()
        self.lookups = 0  # lookups that went to Okta (for metrics and tests)

    def lookup(self, user: Person | None) -> Enrichment:
        key = _key(user)
        if user is None or key is None:
            return Enrichment(source=SOURCE, found=False)
        try:
            found = self._cached(key, user)
        except TransientActionError as exc:
            return self._fall_back(user, exc)
        if self._directory is None:
            return found
        return _combine(found, self._directory.lookup(user))

    # -- the cache -------------------------------------------------------------------------

    def _cached(self, key: str, user: Person) -> Enrichment:
        with self._lock:
            flight = self._flights.get(key)
            now = self._clock()
            if flight is not None and flight.done.is_set() and (
                flight.error is not None or now >= flight.expires
            ):
                flight = None  # expired, or failed: a later lookup asks again
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
                while len(self._flights) > self._size:
                    self._flights.popitem(last=False)
            else:
                self._flights.move_to_end(key)
        if leader:
            try:
                flight.value = self._fetch(user)
                flight.expires = self._clock() + self._ttl
            except BaseException as exc:
                flight.error = exc
                with self._lock:
                    if self._flights.get(key) is flight:
                        del self._flights[key]
                raise
            finally:
                flight.done.set()
        else:
            flight.done.wait()
            if flight.error is not None:
                raise _again(flight.error)
        assert flight.value is not None
        return flight.value

    def _fetch(self, user: Person) -> Enrichment:
        """Four calls to Okta; any failure is transient for the workflow (see the module
        docstring): a permission or configuration problem is fixed by an operator, after which
        the retried workflow succeeds, and deciding on missing data is never right."""
        with self._lock:
            self.lookups += 1
        from factorflow.okta.api import OktaNotFound

        ident = user.id or user.login
        assert ident is not None
        fetched_at = format_utc(self._wall())
        try:
            profile = self._client.get_user(ident)
            if profile is None:
                return Enrichment(source=SOURCE, found=False, fetched_at=fetched_at)
            user_id = str(profile.get("id") or ident)
            groups = self._client.list_user_groups(user_id)
            factors = self._client.list_factors(user_id)
            enrollments = self._client.list_authenticator_enrollments(user_id)
        except OktaNotFound:  # the user was deleted between the calls
            return Enrichment(source=SOURCE, found=False, fetched_at=fetched_at)
        except TransientActionError:
            raise
        except PermanentActionError as exc:
            raise TransientActionError(f"Okta enrichment refused: {exc}") from exc
        attributes = profile.get("profile")
        return Enrichment(
            source=SOURCE,
            found=True,
            profile=dict(attributes) if isinstance(attributes, Mapping) else {},
            groups=tuple(_group(group) for group in groups),
            factors=(
                *(_pick(factor, "factor", _FACTOR_KEYS) for factor in factors),
                *(_pick(enrollment, "authenticator", _ENROLLMENT_KEYS)
                  for enrollment in enrollments),
            ),
            fetched_at=fetched_at,
        )

    def _fall_back(self, user: Person, error: TransientActionError) -> Enrichment:
        if self._fallback == "wait":
            raise error
        log.warning("enrichment.okta_unavailable", extra={"fields": {
            "fallback": self._fallback, "error": str(error)[:300],
        }})
        if self._fallback == "directory":
            assert self._directory is not None
            found = self._directory.lookup(user)
            return Enrichment(
                source="directory-fallback", found=found.found, profile=found.profile,
                groups=found.groups, factors=found.factors, fetched_at=found.fetched_at,
            )
        return Enrichment(source="okta-unavailable", found=False)


def _key(user: Person | None) -> str | None:
    if user is None:
        return None
    if user.id:
        return f"id:{user.id}"
    if user.login:
        return f"login:{user.login.casefold()}"
    return None


def _again(error: BaseException) -> BaseException:
    """The error of the lookup this thread waited for, as its own exception."""
    if isinstance(error, TransientActionError):
        return TransientActionError(str(error), error.retry_after)
    return error


def _group(group: Mapping[str, Any]) -> dict[str, str]:
    profile = group.get("profile")
    name = profile.get("name") if isinstance(profile, Mapping) else None
    found = {"id": group.get("id"), "name": name}
    return {key: str(value) for key, value in found.items() if value}


def _pick(item: Mapping[str, Any], kind: str, keys: tuple[str, ...]) -> dict[str, Any]:
    return {"kind": kind, **{key: item[key] for key in keys if item.get(key) is not None}}


def _combine(okta: Enrichment, directory: Enrichment) -> Enrichment:
    """Okta first, the directory fills in (see the module docstring)."""
    if not directory.found:
        return okta
    if not okta.found:
        return directory
    groups = list(okta.groups)
    seen = {(g.get("id"), (g.get("name") or "").casefold()) for g in groups}
    ids = {g.get("id") for g in groups if g.get("id")}
    names = {(g.get("name") or "").casefold() for g in groups if g.get("name")}
    for group in directory.groups:
        marker = (group.get("id"), (group.get("name") or "").casefold())
        if marker in seen or group.get("id") in ids or marker[1] in names:
            continue
        groups.append(dict(group))
        seen.add(marker)
    return Enrichment(
        source=f"{SOURCE}+directory",
        found=True,
        profile={**directory.profile, **okta.profile},
        groups=tuple(groups),
        factors=okta.factors,
        fetched_at=okta.fetched_at,
    )
