"""Builders of Okta LogEvent dicts in the documented shapes.

Only one raw ``user.mfa.factor.activate`` has been published (Classic, ``EMAIL_FACTOR``, in the
corpus). The other shapes are built here from the LogEvent schema and the Identity Engine events
Okta has published: a ``User`` target plus an ``AuthenticatorEnrollment`` target whose
``displayName`` is the authenticator and whose ``detailEntry`` carries ``methodTypeUsed`` and
``methodUsedVerifiedProperties`` (a string that looks like a list). Every builder returns a fresh
dict that the caller may change freely.

Values are documentation values: ``example.com`` logins, 192.0.2.0/24, 198.51.100.0/24 and
203.0.113.0/24 addresses, made-up Okta-style ids.
"""

from __future__ import annotations

import copy
import json
import uuid as uuid_module
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

CORPUS = Path(__file__).parent / "corpus"
CORPUS_FILES = (
    "okta-events.ndjson",
    "okta-events.uuid-collisions.ndjson",
    "siem-reshaped/events.ndjson",
)
CLASSIC_ACTIVATE_UUID = "e766d84e-a0a8-11ed-a750-9f5fc296ce63"

USER_ID = "00u1enduser0000001"
USER_LOGIN = "pat.lee@example.com"
USER_NAME = "Pat Lee"
ADMIN_ID = "00u1helpdesk000002"
ADMIN_LOGIN = "helpdesk@example.com"
ADMIN_NAME = "Help Desk"
SERVICE_APP_ID = "0oa1serviceapp0003"
API_TOKEN_ID = "00T1apitoken000004"
ENROLLMENT_ID = "pfd1enrollment0005"
PUBLISHED = "2026-03-15T10:22:14.123Z"
CLIENT_IP = "198.51.100.7"
PROXY_IP = "203.0.113.9"

Engine = Literal["classic", "identity_engine"]
ChainPlace = Literal["client", "request", "both", "none"]


# --- the published corpus -------------------------------------------------------------------


def corpus_events(name: str) -> list[dict[str, Any]]:
    """The events of one corpus file (a name from ``CORPUS_FILES``), in file order."""
    with (CORPUS / name).open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def all_corpus_events() -> list[tuple[str, dict[str, Any]]]:
    """(file name, event) for every event of every corpus file."""
    return [(name, event) for name in CORPUS_FILES for event in corpus_events(name)]


def classic_activate() -> dict[str, Any]:
    """The one published raw user.mfa.factor.activate: Classic, EMAIL_FACTOR, self-enrolled,
    ipChain under ``request`` (System Log API shape)."""
    for event in corpus_events("okta-events.ndjson"):
        if event.get("uuid") == CLASSIC_ACTIVATE_UUID:
            return event
    raise AssertionError(f"the corpus lost event {CLASSIC_ACTIVATE_UUID}")


# --- parts ----------------------------------------------------------------------------------


def user(user_id: str | None = USER_ID, login: str | None = USER_LOGIN,
         name: str | None = USER_NAME) -> dict[str, Any]:
    """A ``User`` actor or target."""
    return {"id": user_id, "type": "User", "alternateId": login, "displayName": name,
            "detailEntry": None}


def admin() -> dict[str, Any]:
    """Another user: an admin or helpdesk account acting on the user."""
    return user(ADMIN_ID, ADMIN_LOGIN, ADMIN_NAME)


def system_principal() -> dict[str, Any]:
    """Okta itself, as it appears in the System Log."""
    return {"id": "0oa1system0000000006", "type": "SystemPrincipal",
            "alternateId": "system@okta.com", "displayName": "Okta System", "detailEntry": None}


def service_app(actor_type: str = "PublicClientApp") -> dict[str, Any]:
    """An OAuth service application acting with its own credentials."""
    return {"id": SERVICE_APP_ID, "type": actor_type, "alternateId": SERVICE_APP_ID,
            "displayName": "Provisioning Service", "detailEntry": None}


def authenticator_enrollment(
    authenticator: str | None,
    method: str | None = None,
    verified: str | list[str] | None = None,
    *,
    enrollment_id: str | None = ENROLLMENT_ID,
) -> dict[str, Any]:
    """An ``AuthenticatorEnrollment`` target as Identity Engine events carry it."""
    detail: dict[str, Any] = {}
    if method is not None:
        detail["methodTypeUsed"] = method
    if verified is not None:
        detail["methodUsedVerifiedProperties"] = verified
    return {"id": enrollment_id, "type": "AuthenticatorEnrollment", "alternateId": "unknown",
            "displayName": authenticator, "detailEntry": detail or None}


def ip_hop(ip: str | None, city: str = "Toronto") -> dict[str, Any]:
    return {"ip": ip, "version": "V4", "source": None,
            "geographicalContext": {"city": city, "state": "Ontario", "country": "Canada",
                                    "postalCode": "M4M",
                                    "geolocation": {"lat": 43.6567, "lon": -79.34}}}


# --- whole events ---------------------------------------------------------------------------


def factor_event(
    event_type: str,
    *,
    engine: Engine = "classic",
    reason: str | None = None,
    result: str | None = "SUCCESS",
    actor: dict[str, Any] | None = None,
    target_user: dict[str, Any] | None = None,
    enrollment: dict[str, Any] | None = None,
    api_token: str | None = None,
    client_id: str | None = None,
    zone: str | None = "null",
    ip_chain: ChainPlace = "request",
    chain: list[str] | None = None,
    published: str = PUBLISHED,
    uuid: str | None = None,
    display_message: str = "Activate factor or authenticator enrollment method for user",
) -> dict[str, Any]:
    """A ``user.mfa.factor.*`` event; the keywords pick the documented variants.

    ``engine="classic"``: one ``User`` target, the factor only in ``outcome.reason``, a
    ``core.user.factor.*`` legacy type. ``engine="identity_engine"``: the ``User`` target plus the
    ``enrollment`` target (if given), an ``idx`` session and an ``/idp/idx`` request.
    ``ip_chain`` says where the chain goes: under ``client`` (hook payloads), under ``request``
    (System Log API), both (the client one then holds ``PROXY_IP`` first) or nowhere.
    """
    acting = actor if actor is not None else user()
    subject = target_user if target_user is not None else user()
    targets = [subject] if enrollment is None else [subject, enrollment]
    hops = [ip_hop(ip) for ip in (chain if chain is not None else [CLIENT_IP])]
    event: dict[str, Any] = {
        "actor": acting,
        "client": {
            "userAgent": {"rawUserAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)",
                          "os": "Mac OS X", "browser": "CHROME"},
            "zone": zone,
            "device": "Computer",
            "id": client_id,
            "ipAddress": CLIENT_IP,
            "geographicalContext": {"city": "Toronto", "state": "Ontario", "country": "Canada",
                                    "postalCode": "M4M",
                                    "geolocation": {"lat": 43.6567, "lon": -79.34}},
        },
        "device": None,
        "authenticationContext": {
            "authenticationProvider": None, "credentialProvider": None, "credentialType": None,
            "issuer": None, "interface": None, "authenticationStep": 0,
            "externalSessionId": "idxQ0cMW2uMVK2TwUvp_sample" if engine == "identity_engine"
            else "102SVz3tGtUS9iOMunoGfsHOw",
            "rootSessionId": "idxRootSession0001" if engine == "identity_engine" else None,
        },
        "displayMessage": display_message,
        "eventType": event_type,
        "outcome": {"result": result, "reason": reason},
        "published": published,
        "securityContext": {"asNumber": 64496, "asOrg": "example networks",
                            "isp": "example isp", "domain": "example.net", "isProxy": False},
        "severity": "INFO",
        "debugContext": {"debugData": {
            "requestId": "ZfRq2hYgJ0sample0001",
            "requestUri": "/idp/idx/challenge/answer" if engine == "identity_engine"
            else f"/api/v1/users/{USER_ID}/factors/sms1/lifecycle/activate",
        }},
        "legacyEventType": None,
        "transaction": {"type": "WEB", "id": "ZfRq2hYgJ0sample0001",
                        "detail": {"requestApiTokenId": api_token} if api_token else {}},
        "uuid": uuid or str(uuid_module.uuid4()),
        "version": "0",
        "target": targets,
    }
    if engine == "classic" and event_type.startswith("user.mfa.factor."):
        # core.user.factor.activate, core.user.factor.reset_all, ...
        event["legacyEventType"] = event_type.replace("user.mfa.factor.", "core.user.factor.")
    if ip_chain in ("request", "both"):
        event["request"] = {"ipChain": hops}
    if ip_chain in ("client", "both"):
        client_hops = hops if ip_chain == "client" else [ip_hop(PROXY_IP), *hops]
        event["client"]["ipChain"] = client_hops
    return event


def enrollment_event(
    *,
    engine: Engine = "classic",
    factor: str | None = "OKTA_VERIFY_PUSH",
    authenticator: str | None = "Okta Verify",
    method: str | None = "PUSH",
    verified: str | list[str] | None = None,
    user_target: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """A ``user.mfa.factor.activate``.

    Classic: ``factor`` is the friendly name in "User set up <factor> factor" (``reason=``
    overrides the whole text). Identity Engine: ``authenticator`` / ``method`` / ``verified`` fill
    the ``AuthenticatorEnrollment`` target and ``factor`` is not used (Okta's reason wording there
    is unpublished; pass ``reason=`` to set one); ``user_target=False`` drops the ``User`` target,
    leaving only the enrollment. Other keywords as for :func:`factor_event`.
    """
    if engine == "classic":
        options.setdefault("reason", f"User set up {factor} factor" if factor else None)
        event = factor_event("user.mfa.factor.activate", engine="classic", **options)
    else:
        enrollment = authenticator_enrollment(authenticator, method, verified)
        event = factor_event("user.mfa.factor.activate", engine="identity_engine",
                             enrollment=enrollment, **options)
        if not user_target:
            event["target"] = [enrollment]
    return event


def phone_twins(**options: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """One Identity Engine Phone enrollment as Okta reports it: two activate events, SMS and
    voice, for the same user with the exact same timestamp."""
    sms = enrollment_event(engine="identity_engine", authenticator="Phone", method="SMS",
                           **options)
    voice = enrollment_event(engine="identity_engine", authenticator="Phone", method="VOICE",
                             **options)
    return sms, voice


def panther_deactivate() -> dict[str, Any]:
    """The only published user.mfa.factor.deactivate (a self-reset of WebAuthn), with Panther's
    lower-cased top-level keys restored to Okta's camelCase and Panther's own key dropped. It has
    neither uuid nor published; the ones here are added."""
    return {
        "eventType": "user.mfa.factor.deactivate",
        "version": "0",
        "severity": "INFO",
        "displayMessage": "Reset factor for user",
        "actor": {"alternateId": "homer@springfield.gov", "displayName": "Homer Simpson",
                  "id": "11111111111", "type": "User"},
        "client": {"device": "Computer", "ipAddress": "1.1.1.1",
                   "userAgent": {"browser": "CHROME", "os": "Mac OS X",
                                 "rawUserAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X "
                                 "10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
                                 "Chrome/96.0.4664.55 Safari/537.36"},
                   "zone": "null"},
        "outcome": {"reason": "User reset FIDO_WEBAUTHN factor", "result": "SUCCESS"},
        "target": [{"alternateId": "homer@springfield.gov", "displayName": "Homer Simpson",
                    "id": "1111111", "type": "User"}],
        "authenticationContext": {"authenticationStep": 0, "externalSessionId": "1111111"},
        "uuid": "0b8e3c52-2d4a-11f1-8f3e-5b1d2c3a4e5f",
        "published": "2021-12-06T19:09:59.123Z",
    }


def sparse_event(event_type: str = "user.mfa.factor.activate", **fields: Any) -> dict[str, Any]:
    """Only what the receiver insists on (uuid, eventType, published), plus ``fields``."""
    event: dict[str, Any] = {"uuid": str(uuid_module.uuid4()), "eventType": event_type,
                             "published": PUBLISHED}
    event.update(fields)
    return event


# --- breaking shapes on purpose -------------------------------------------------------------

NodePath = tuple[str | int, ...]


def container_paths(event: Any, prefix: NodePath = ()) -> Iterator[NodePath]:
    """The path of every object and array inside ``event`` (not the event itself)."""
    children: Any = (
        event.items() if isinstance(event, dict)
        else enumerate(event) if isinstance(event, list) else ()
    )
    for key, value in children:
        if isinstance(value, dict | list):
            yield (*prefix, key)
            yield from container_paths(value, (*prefix, key))


def node_paths(event: Any, prefix: NodePath = ()) -> Iterator[NodePath]:
    """The path of every value inside ``event``: objects, arrays and scalars."""
    children: Any = (
        event.items() if isinstance(event, dict)
        else enumerate(event) if isinstance(event, list) else ()
    )
    for key, value in children:
        yield (*prefix, key)
        yield from node_paths(value, (*prefix, key))


def replaced(event: dict[str, Any], path: NodePath, value: Any) -> dict[str, Any]:
    """A deep copy of ``event`` with the node at ``path`` replaced by ``value``."""
    copied = copy.deepcopy(event)
    node: Any = copied
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = copy.deepcopy(value)
    return copied
