"""Okta LogEvent JSON -> :class:`~factorflow.domain.facts.Fact`.

Reads the documented places in the documented order (outcome.reason, then the
AuthenticatorEnrollment target and its detailEntry, then debugData.factor) and tolerates every
field being absent, null or of an unexpected type.
"""

from __future__ import annotations

import math
import re
from typing import Any

from factorflow.domain.factors import UNKNOWN_FACTOR_TYPE, strength_of
from factorflow.domain.facts import (
    Client,
    Engine,
    EnrolledBy,
    EventKind,
    Fact,
    Factor,
    Person,
)
from factorflow.okta.factors import from_authenticator, from_friendly_name
from factorflow.okta.payloads import normalise_timestamp, seconds_between

KINDS: dict[str, EventKind] = {
    "user.mfa.factor.activate": EventKind.ENROLLMENT,
    "user.mfa.factor.deactivate": EventKind.DEACTIVATION,
    "user.mfa.factor.reset_all": EventKind.RESET_ALL,
    "user.mfa.factor.suspend": EventKind.SUSPENSION,
    "user.mfa.factor.unsuspend": EventKind.UNSUSPENSION,
    "user.mfa.factor.update": EventKind.UPDATE,
}

_REASON = re.compile(
    r"User (?:set up|reset|suspended|unsuspended|updated|activated|deactivated) "
    r"(?P<factor>[A-Za-z0-9_:]+) factor"
)
_LIST_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# Event types the catalog tags oie-only: their presence alone names the engine.
_IDENTITY_ENGINE_ONLY = {"user.mfa.factor.suspend", "user.mfa.factor.unsuspend"}
# Actor types that are programs rather than people.
_PROGRAM_ACTORS = {"PublicClientApp", "AppInstance", "Client", "ServiceApp", "OAuth2Client"}


def to_fact(
    event: dict[str, Any], *, org: str = "default", received_at: str | None = None
) -> Fact:
    event_type = _text(event.get("eventType")) or "unknown"
    published = _text(event.get("published")) or ""
    published_at = normalise_timestamp(published) if published else None
    targets = _dicts(event.get("target"))
    user_target = next((t for t in targets if t.get("type") == "User"), None)
    enrollment = next((t for t in targets if t.get("type") == "AuthenticatorEnrollment"), None)
    actor_data = _dict(event.get("actor"))
    actor = _person(actor_data) if actor_data else None
    user = _person(user_target) if user_target else None
    if user is None and actor is not None and actor.type == "User" and enrollment is not None:
        # Identity Engine events may carry only the enrollment target; the actor enrolled
        # their own authenticator.
        user = actor
    outcome = _dict(event.get("outcome"))
    transaction = _dict(event.get("transaction"))
    detail = _dict(transaction.get("detail"))
    debug = _dict(_dict(event.get("debugContext")).get("debugData"))
    auth_context = _dict(event.get("authenticationContext"))
    api_token = _text(detail.get("requestApiTokenId"))
    return Fact(
        uuid=_text(event.get("uuid")) or "",
        event_type=event_type,
        kind=KINDS.get(event_type, EventKind.OTHER),
        org=org,
        user=user,
        actor=actor,
        enrolled_by=_enrolled_by(actor, user, api_token),
        factor=_factor(outcome, enrollment, debug),
        outcome=_text(outcome.get("result")),
        outcome_reason=_text(outcome.get("reason")),
        published=published,
        published_at=published_at,
        received_at=received_at,
        delay_seconds=seconds_between(published_at, received_at, digits=3),
        engine=_engine(event, enrollment, auth_context, debug),
        client=_client(event),
        transaction_id=_text(transaction.get("id")),
        transaction_type=_text(transaction.get("type")),
        session_id=_text(auth_context.get("externalSessionId")),
        root_session_id=_text(auth_context.get("rootSessionId")),
        request_id=_text(debug.get("requestId")),
        request_uri=_text(debug.get("requestUri")),
        api_token_id=api_token,
        display_message=_text(event.get("displayMessage")),
        severity=_text(event.get("severity")),
    )


def _person(data: dict[str, Any]) -> Person:
    return Person(
        id=_text(data.get("id")),
        login=_text(data.get("alternateId")),
        display_name=_text(data.get("displayName")),
        type=_text(data.get("type")),
    )


def _enrolled_by(actor: Person | None, user: Person | None, api_token: str | None) -> EnrolledBy:
    if actor is None:
        return EnrolledBy.UNKNOWN
    if actor.type == "SystemPrincipal":
        return EnrolledBy.SYSTEM
    if api_token or actor.type in _PROGRAM_ACTORS:
        return EnrolledBy.API
    if actor.type != "User" or user is None:
        return EnrolledBy.UNKNOWN
    # Compare ids where both have one; logins (case-insensitive in Okta) only where an id is
    # missing; with neither, who acted cannot be told.
    if actor.id is not None and user.id is not None:
        same = actor.id == user.id
    elif actor.login is not None and user.login is not None:
        same = actor.login.casefold() == user.login.casefold()
    else:
        return EnrolledBy.UNKNOWN
    return EnrolledBy.SELF if same else EnrolledBy.ADMIN


def _factor(
    outcome: dict[str, Any], enrollment: dict[str, Any] | None, debug: dict[str, Any]
) -> Factor:
    reason = _text(outcome.get("reason"))
    match = _REASON.search(reason) if reason else None
    reason_name = match.group("factor") if match else None
    authenticator = method = enrollment_id = None
    verified: tuple[str, ...] = ()
    if enrollment is not None:
        authenticator = _text(enrollment.get("displayName"))
        enrollment_id = _text(enrollment.get("id"))
        entry = _dict(enrollment.get("detailEntry"))
        method = _text(entry.get("methodTypeUsed")) or _text(entry.get("method_type_used"))
        verified = _verified_properties(
            entry.get("methodUsedVerifiedProperties", entry.get("method_used_verified_properties"))
        )
    debug_factor = _text(debug.get("factor"))
    factor_type = (
        from_friendly_name(reason_name)
        or from_authenticator(authenticator, method)
        or from_friendly_name(debug_factor)
        or UNKNOWN_FACTOR_TYPE
    )
    return Factor(
        type=factor_type,
        strength=strength_of(factor_type, verified),
        reason_name=reason_name,
        authenticator=authenticator,
        method=method,
        debug_factor=debug_factor,
        verified_properties=verified,
        enrollment_id=enrollment_id,
    )


def _verified_properties(value: Any) -> tuple[str, ...]:
    # Okta sends a string that looks like a list: "[DEVICE_BOUND, PHISHING_RESISTANT]".
    if isinstance(value, str):
        return tuple(item.upper() for item in _LIST_TEXT.findall(value))
    if isinstance(value, list):
        return tuple(
            item.strip().upper() for item in value if isinstance(item, str) and item.strip()
        )
    return ()


def _engine(
    event: dict[str, Any],
    enrollment: dict[str, Any] | None,
    auth_context: dict[str, Any],
    debug: dict[str, Any],
) -> Engine:
    session = _text(auth_context.get("externalSessionId")) or ""
    uri = _text(debug.get("requestUri")) or ""
    if (
        enrollment is not None
        or session.startswith("idx")
        or uri.startswith("/idp/idx")
        or _text(event.get("eventType")) in _IDENTITY_ENGINE_ONLY
    ):
        return Engine.IDENTITY_ENGINE
    legacy = _text(event.get("legacyEventType")) or ""
    reason = _text(_dict(event.get("outcome")).get("reason")) or ""
    if legacy.startswith("core.user.factor") or _REASON.search(reason):
        return Engine.CLASSIC
    return Engine.UNKNOWN


def _client(event: dict[str, Any]) -> Client:
    client = _dict(event.get("client"))
    geo = _dict(client.get("geographicalContext"))
    location = _dict(geo.get("geolocation"))
    agent = _dict(client.get("userAgent"))
    security = _dict(event.get("securityContext"))
    # Hook payloads put ipChain under client; the System Log API under request.
    ips = _chain_ips(client.get("ipChain")) or _chain_ips(
        _dict(event.get("request")).get("ipChain")
    )
    zone = _text(client.get("zone"))
    return Client(
        ip=_text(client.get("ipAddress")),
        ip_chain=ips,
        city=_text(geo.get("city")),
        state=_text(geo.get("state")),
        country=_text(geo.get("country")),
        postal_code=_text(geo.get("postalCode")),
        latitude=_number(location.get("lat")),
        longitude=_number(location.get("lon")),
        user_agent=_text(agent.get("rawUserAgent")),
        os=_text(agent.get("os")),
        browser=_text(agent.get("browser")),
        device=_text(client.get("device")),
        zone=None if zone == "null" else zone,
        client_id=_text(client.get("id")),
        asn=_integer(security.get("asNumber")),
        as_org=_text(security.get("asOrg")),
        isp=_text(security.get("isp")),
        domain=_text(security.get("domain")),
        is_proxy=security.get("isProxy") if isinstance(security.get("isProxy"), bool) else None,
    )


def _chain_ips(chain: Any) -> tuple[str, ...]:
    return tuple(ip for ip in (_text(hop.get("ip")) for hop in _dicts(chain)) if ip)



def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):  # "east", or an integer beyond any float
        return None
    return number if math.isfinite(number) else None  # "nan", "inf" are no coordinates


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():  # not "²"
        return int(value)
    return None
