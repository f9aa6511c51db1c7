"""The normalised facts a stored Okta event becomes.

A fact is what the rules and the dashboard read; the raw event stays in the store for audit.
Unknown shapes degrade to ``unknown`` / ``None`` fields, never to an exception.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class EventKind(StrEnum):
    ENROLLMENT = "enrollment"  # user.mfa.factor.activate
    DEACTIVATION = "deactivation"  # user.mfa.factor.deactivate
    RESET_ALL = "reset_all"  # user.mfa.factor.reset_all
    SUSPENSION = "suspension"
    UNSUSPENSION = "unsuspension"
    UPDATE = "update"
    OTHER = "other"


class EnrolledBy(StrEnum):
    SELF = "self"  # the actor is the target user
    ADMIN = "admin"  # another user (an admin or helpdesk) acted
    API = "api"  # an API token or a service application acted
    SYSTEM = "system"  # Okta itself (SystemPrincipal)
    UNKNOWN = "unknown"


class Strength(StrEnum):
    PHISHING_RESISTANT = "phishing_resistant"  # WebAuthn/FIDO2, FastPass, smart card
    DEVICE_BOUND_PUSH = "device_bound_push"  # Okta Verify push, custom push authenticators
    OTP = "otp"  # TOTP apps, hardware OTP tokens
    TELEPHONY_EMAIL = "sms_voice_email"  # codes sent by SMS, voice call or email
    KNOWLEDGE = "password_question"  # password, security question
    UNKNOWN = "unknown"


class Engine(StrEnum):
    CLASSIC = "classic"
    IDENTITY_ENGINE = "identity_engine"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Person:
    id: str | None
    login: str | None
    display_name: str | None
    type: str | None


@dataclass(frozen=True, slots=True)
class Factor:
    type: str  # normalised, e.g. "webauthn", "okta_verify_push", "sms"; "unknown" if unread
    strength: Strength
    reason_name: str | None  # from outcome.reason, "User set up EMAIL_FACTOR factor"
    authenticator: str | None  # AuthenticatorEnrollment target displayName
    method: str | None  # its detailEntry.methodTypeUsed
    debug_factor: str | None  # debugContext.debugData.factor
    verified_properties: tuple[str, ...] = ()
    enrollment_id: str | None = None

    @property
    def label(self) -> str | None:
        """The factor as Okta named it, for people: "Okta Verify (PUSH)", "EMAIL_FACTOR"."""
        if self.authenticator:
            return f"{self.authenticator} ({self.method})" if self.method else self.authenticator
        return self.reason_name or self.debug_factor


@dataclass(frozen=True, slots=True)
class Client:
    ip: str | None = None
    ip_chain: tuple[str, ...] = ()
    city: str | None = None
    state: str | None = None
    country: str | None = None
    postal_code: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    user_agent: str | None = None
    os: str | None = None
    browser: str | None = None
    device: str | None = None
    zone: str | None = None
    client_id: str | None = None
    asn: int | None = None
    as_org: str | None = None
    isp: str | None = None
    domain: str | None = None
    is_proxy: bool | None = None


@dataclass(frozen=True, slots=True)
class Fact:
    """One factor event, normalised. ``uuid`` is the Okta System Log id."""

    uuid: str
    event_type: str
    kind: EventKind
    org: str
    user: Person | None
    actor: Person | None
    enrolled_by: EnrolledBy
    factor: Factor
    outcome: str | None
    outcome_reason: str | None
    published: str
    published_at: str | None
    received_at: str | None
    delay_seconds: float | None
    engine: Engine
    client: Client = field(default_factory=Client)
    transaction_id: str | None = None
    transaction_type: str | None = None
    session_id: str | None = None
    root_session_id: str | None = None
    request_id: str | None = None
    request_uri: str | None = None
    api_token_id: str | None = None
    display_message: str | None = None
    severity: str | None = None

    @property
    def user_label(self) -> str | None:
        return (self.user.login or self.user.id) if self.user else None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (enums as their values, tuples as lists)."""
        plain: dict[str, Any] = _plain(dataclasses.asdict(self))
        return plain


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, StrEnum):
        return value.value
    return value
