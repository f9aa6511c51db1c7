"""System Log events in Okta's shapes, for the simulated org.

Only one raw ``user.mfa.factor.activate`` has been published (Classic, ``EMAIL_FACTOR``); the
shapes here follow it and the documented LogEvent schema:

* Classic: one ``User`` target, the factor only in ``outcome.reason`` ("User set up SMS_FACTOR
  factor"), ``displayMessage`` "Activate factor for user", ``legacyEventType``
  ``core.user.factor.activate``.
* Identity Engine: the ``User`` target plus an ``AuthenticatorEnrollment`` target whose
  ``displayName`` is the authenticator ("Phone", "Okta Verify") and whose ``detailEntry`` has
  ``methodTypeUsed`` and ``methodUsedVerifiedProperties`` (a string that looks like a list). A
  Phone enrollment is two events, SMS and voice, with the same ``published``. The exact Identity
  Engine wording has not been published; these are modelled, not captured.

Actors: the user (self-enrollment), an admin, an admin's API token
(``transaction.detail.requestApiTokenId``) or an OAuth service app (``PublicClientApp``, with
``client.id``). Values are documentation values: ``example.com``, 192.0.2.0/24, 198.51.100.0/24,
203.0.113.0/24.
"""

from __future__ import annotations

import random
import string
import uuid as uuidlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

ActorKind = Literal["self", "admin", "api_token", "service_app"]
Engine = Literal["classic", "identity_engine"]

_ALNUM = string.ascii_letters + string.digits
_BROWSER_AGENT = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36",
    "Mac OS X", "CHROME",
)
_WINDOWS_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36 Edg/126.0.0.0",
    "Windows 10", "EDGE_CHROMIUM",
)
_API_AGENT = ("okta-sdk-python/2.9.8 python/3.11.9 Linux/6.1.0", "Linux", "UNKNOWN")
_PLACES = (
    ("Toronto", "Ontario", "Canada", "M4M", 43.6567, -79.34, "192.0.2"),
    ("New York", "New York", "United States", "10013", 40.7209, -74.0007, "198.51.100"),
    ("Berlin", "Land Berlin", "Germany", "10115", 52.5321, 13.3849, "203.0.113"),
)


def okta_id(rng: random.Random, prefix: str) -> str:
    """An Okta-style object id: a 3-letter type prefix and 17 letters or digits."""
    return prefix + "".join(rng.choice(_ALNUM) for _ in range(20 - len(prefix)))


def event_uuid(rng: random.Random) -> str:
    return str(uuidlib.UUID(int=rng.getrandbits(128), version=1))


def okta_time(epoch: float) -> str:
    """``2024-08-13T15:58:20.353Z``: Okta's timestamp form."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def user_ref(user_id: str, login: str, name: str) -> dict[str, Any]:
    return {"id": user_id, "type": "User", "alternateId": login, "displayName": name,
            "detailEntry": None}


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acted, and from where: everything of an event that depends on the actor."""

    kind: ActorKind
    ref: dict[str, Any]
    client_id: str | None = None
    api_token_id: str | None = None
    agent: tuple[str, str, str] = _BROWSER_AGENT
    place: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def actor_for(kind: ActorKind, rng: random.Random, *, user: dict[str, Any],
              admin: dict[str, Any], api_admin: dict[str, Any], api_token_id: str,
              service_app: dict[str, Any]) -> Actor:
    place = rng.randrange(len(_PLACES))
    if kind == "self":
        return Actor("self", user, agent=rng.choice((_BROWSER_AGENT, _WINDOWS_AGENT)),
                     place=place)
    if kind == "admin":
        return Actor("admin", admin, agent=_BROWSER_AGENT, place=place)
    if kind == "api_token":
        return Actor("api_token", api_admin, api_token_id=api_token_id, agent=_API_AGENT,
                     place=place)
    return Actor("service_app", service_app, client_id=service_app["id"], agent=_API_AGENT,
                 place=place)


def api_actor(ref: dict[str, Any], *, api_token_id: str | None = None,
              client_id: str | None = None) -> Actor:
    """The actor of a management API call: a token's owner or a service app."""
    return Actor("api_token" if api_token_id else "service_app", ref, client_id=client_id,
                 api_token_id=api_token_id, agent=_API_AGENT)


def service_app_ref(client_id: str, name: str) -> dict[str, Any]:
    return {"id": client_id, "type": "PublicClientApp", "alternateId": client_id,
            "displayName": name, "detailEntry": None}


def log_event(
    rng: random.Random,
    *,
    event_type: str,
    display_message: str,
    legacy: str | None,
    published: float,
    actor: Actor,
    targets: list[dict[str, Any]],
    result: str = "SUCCESS",
    reason: str | None = None,
    engine: Engine = "classic",
    request_uri: str = "/",
    debug: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One LogEvent in the System Log API's shape (``request.ipChain``, camelCase keys)."""
    city, state, country, postal, lat, lon, net = _PLACES[actor.place]
    ip = f"{net}.{rng.randrange(1, 255)}"
    geo = {"city": city, "state": state, "country": country, "postalCode": postal,
           "geolocation": {"lat": lat, "lon": lon}}
    request_id = "".join(rng.choice(_ALNUM) for _ in range(27))
    debug_data: dict[str, Any] = {"requestId": request_id, "requestUri": request_uri,
                                  "url": request_uri + ("?" if engine == "identity_engine" else "")}
    if actor.kind in ("self", "admin"):
        debug_data["dtHash"] = f"{rng.getrandbits(256):064x}"
    debug_data.update(debug or {})
    session = ("idx" if engine == "identity_engine" else "102") + "".join(
        rng.choice(_ALNUM) for _ in range(22)
    )
    return {
        "actor": dict(actor.ref),
        "client": {
            "userAgent": {"rawUserAgent": actor.agent[0], "os": actor.agent[1],
                          "browser": actor.agent[2]},
            "zone": "null",
            "device": "Computer" if actor.kind in ("self", "admin") else "Unknown",
            "id": actor.client_id,
            "ipAddress": ip,
            "geographicalContext": geo,
        },
        "device": None,
        "authenticationContext": {
            "authenticationProvider": None, "credentialProvider": None,
            "credentialType": None, "issuer": None, "interface": None,
            "authenticationStep": 0,
            "rootSessionId": session if engine == "identity_engine" else None,
            "externalSessionId": session if actor.kind in ("self", "admin") else "unknown",
        },
        "displayMessage": display_message,
        "eventType": event_type,
        "outcome": {"result": result, "reason": reason},
        "published": okta_time(published),
        "securityContext": {"asNumber": 64496 + actor.place, "asOrg": "example networks",
                            "isp": "example isp", "domain": "example.net", "isProxy": False},
        "severity": "INFO",
        "debugContext": {"debugData": debug_data},
        "legacyEventType": legacy,
        "transaction": {
            "type": "WEB", "id": request_id,
            "detail": {"requestApiTokenId": actor.api_token_id} if actor.api_token_id else {},
        },
        "uuid": event_uuid(rng),
        "version": "0",
        "request": {"ipChain": [{"ip": ip, "geographicalContext": geo, "version": "V4",
                                 "source": None}]},
        "target": targets,
    }


def enrollment_target(enrollment_id: str, authenticator: str, method: str,
                      verified: str) -> dict[str, Any]:
    return {"id": enrollment_id, "type": "AuthenticatorEnrollment", "alternateId": "unknown",
            "displayName": authenticator,
            "detailEntry": {"methodTypeUsed": method, "methodUsedVerifiedProperties": verified}}


def group_target(group_id: str, name: str) -> dict[str, Any]:
    return {"id": group_id, "type": "UserGroup", "alternateId": "unknown", "displayName": name,
            "detailEntry": None}
