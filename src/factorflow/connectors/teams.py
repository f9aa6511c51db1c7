"""The ``teams`` connector: an Adaptive Card posted to a Microsoft Teams channel through a
webhook URL (a Workflows "post to a channel when a webhook request is received" flow, or a
legacy Office 365 incoming webhook).

The webhook URL is the secret: whoever has it can post to the channel. It comes from the
configuration (``webhook_url`` / ``webhook_url_file``, or one of the named ``channels`` a rule
picks with ``params.channel``) and never appears in a message: errors show the host only.

Teams has no idempotency mechanism and a webhook cannot be searched. The pipeline records a
done result per idempotency key and does not repeat it, so a duplicate can only come from a crash
between the POST and that record; the card carries the idempotency key in a small footer so that
such a duplicate can be recognised.

Answers: a Workflows webhook answers 202 (the flow then runs on its own: a failure inside the
flow is only visible in the flow's run history); a legacy webhook answers 200 with the body
``1``, and reports some failures as 200 with a text such as ``Webhook message delivery failed
with error: Microsoft Teams endpoint returned HTTP error 429 ...``, which is classified by the
status it names. Other answers follow the shared split (429 and 5xx transient, other 4xx
permanent).

This module also holds the small text helpers the chat and paging connectors share (default
title, text and fields built from the fact) and :func:`post_to_secret_url`.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import httpx
from pydantic import Field, SecretStr

from factorflow.actions.base import ActionHandler
from factorflow.connectors.base import (
    KIND_TITLES,
    Clock,
    ConnectorSettings,
    call,
    param,
    secret_value,
    where,
)
from factorflow.domain.actions import ActionOutcome, ActionRequest, OutcomeStatus
from factorflow.domain.facts import EnrolledBy, EventKind, Fact
from factorflow.errors import ConfigError, PermanentActionError, TransientActionError

KIND = "teams"
CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
CARD_VERSION = "1.4"
_DELIVERY_FAILED = re.compile(
    r"delivery failed with error:.*?returned HTTP error (?P<status>\d{3})",
    re.IGNORECASE | re.DOTALL,
)
_CHANNEL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")

# -- text shared by the chat and paging connectors ------------------------------------------

_TITLES = KIND_TITLES


def user_label(fact: Fact) -> str:
    person = fact.user
    if person is None:
        return "unknown user"
    return person.login or person.display_name or person.id or "unknown user"


def actor_label(fact: Fact) -> str | None:
    person = fact.actor
    if person is None:
        return None
    return person.login or person.display_name or person.id


def factor_label(fact: Fact) -> str:
    factor = fact.factor
    if factor.authenticator and factor.authenticator.lower() != factor.type.lower():
        return f"{factor.authenticator} ({factor.type})"
    return factor.type


def enrolled_by_label(fact: Fact) -> str:
    actor = actor_label(fact)
    if fact.enrolled_by is EnrolledBy.SELF or actor is None:
        return fact.enrolled_by.value
    return f"{fact.enrolled_by.value} ({actor})"


def event_time(fact: Fact) -> str:
    return fact.published_at or fact.published


def default_title(fact: Fact) -> str:
    return _TITLES.get(fact.kind, "MFA event")


def default_text(fact: Fact) -> str:
    """One sentence about the event, used when the rule gives no ``text``."""
    user, factor = user_label(fact), factor_label(fact)
    sentence = {
        EventKind.ENROLLMENT: f"{user} enrolled {factor} ({fact.factor.strength.value})",
        EventKind.DEACTIVATION: f"{factor} was removed from {user}",
        EventKind.RESET_ALL: f"All MFA factors of {user} were reset",
        EventKind.SUSPENSION: f"{factor} of {user} was suspended",
        EventKind.UNSUSPENSION: f"{factor} of {user} was unsuspended",
        EventKind.UPDATE: f"{factor} of {user} was updated",
    }.get(fact.kind, f"{fact.event_type} for {user}")
    actor = actor_label(fact)
    if fact.enrolled_by is not EnrolledBy.SELF and actor is not None:
        sentence += f", by {fact.enrolled_by.value} {actor}"
    return sentence


def fact_fields(fact: Fact) -> list[tuple[str, str]]:
    """(label, value) pairs shown with every message: user, factor, strength, who, when."""
    return [
        ("User", user_label(fact)),
        ("Factor", factor_label(fact)),
        ("Strength", fact.factor.strength.value),
        ("Enrolled by", enrolled_by_label(fact)),
        ("Time", event_time(fact)),
    ]


def text_param(request: ActionRequest, name: str, default: str) -> str:
    """An optional text param (a rendered template); the default when absent or blank."""
    value = param(request, name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if not isinstance(value, str | int | float):
        raise PermanentActionError(f"{where(request)}: params.{name} must be text")
    return str(value)


# -- webhook URLs that are secrets ---------------------------------------------------------


def shown_url(url: str) -> str:
    """What a message may show of a secret URL: scheme and host."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "<invalid url>"
    return f"{parsed.scheme}://{parsed.host}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, key: str, *, secret: bool) -> str:
    """An https URL with a host (plain http only to a loopback address, for local tests);
    ConfigError naming ``key`` (and never a secret URL) otherwise."""
    shown = "the URL" if secret else repr(url)
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise ConfigError(f"{key}: {shown} is not a valid URL") from None
    if not parsed.host:
        raise ConfigError(f"{key}: {shown} has no host")
    if parsed.scheme != "https" and not (parsed.scheme == "http" and is_loopback(parsed.host)):
        raise ConfigError(
            f"{key}: {shown} must use https (http is accepted for a loopback address only)"
        )
    return url


def post_to_secret_url(
    http: httpx.Client, url: str, request: ActionRequest, *, shown: str, clock: Clock,
    **kwargs: Any,
) -> httpx.Response:
    """:func:`factorflow.connectors.base.call` (POST) for a URL that is itself a secret: its
    errors name ``shown`` instead of the URL, and keep no chained exception that holds it."""
    try:
        return call(http, "POST", url, request, clock=clock, **kwargs)
    except TransientActionError as exc:
        raise TransientActionError(_hide(str(exc), url, shown), exc.retry_after) from None
    except PermanentActionError as exc:
        raise PermanentActionError(_hide(str(exc), url, shown)) from None


def _hide(message: str, url: str, shown: str) -> str:
    forms = {url}
    try:
        parsed = httpx.URL(url)
        forms.add(str(parsed.copy_with(query=None, fragment=None, username=None, password=None)))
        forms.add(parsed.path)
    except httpx.InvalidURL:
        pass
    for form in sorted(forms, key=len, reverse=True):
        if len(form) > 1:
            message = message.replace(form, shown)
    return message


# -- the connector -------------------------------------------------------------------------


class TeamsSettings(ConnectorSettings):
    """``[connectors.teams]``: one webhook URL (``webhook_url`` or ``webhook_url_file``) and/or
    named ``channels`` (name -> webhook URL) that rules pick with ``params.channel``."""

    webhook_url: SecretStr | None = None
    webhook_url_file: Path | None = None
    channels: dict[str, SecretStr] = Field(default_factory=dict)


def adaptive_card(title: str, text: str, fields: list[tuple[str, str]],
                  footer: str) -> dict[str, Any]:
    return {
        "$schema": CARD_SCHEMA,
        "type": "AdaptiveCard",
        "version": CARD_VERSION,
        "body": [
            {"type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium",
             "wrap": True},
            {"type": "TextBlock", "text": text, "wrap": True},
            {"type": "FactSet", "facts": [{"title": k, "value": v} for k, v in fields]},
            {"type": "TextBlock", "text": footer, "size": "Small", "isSubtle": True,
             "wrap": True},
        ],
    }


def message(request: ActionRequest, fact: Fact) -> dict[str, Any]:
    """The webhook body: a message with one Adaptive Card attachment."""
    title = text_param(request, "title", default_title(fact))
    text = text_param(request, "text", default_text(fact))
    footer = f"factorflow · Okta event {fact.uuid} · key {request.idempotency_key}"
    return {
        "type": "message",
        "attachments": [{
            "contentType": CARD_CONTENT_TYPE,
            "contentUrl": None,
            "content": adaptive_card(title, text, fact_fields(fact), footer),
        }],
    }


class TeamsHandler:
    """``kind: teams``. Params (all optional): ``title``, ``text`` (default: built from the
    fact), ``channel`` (the name of a configured channel webhook; default ``webhook_url``)."""

    kind = KIND

    def __init__(self, http: httpx.Client, default_url: str | None, channels: dict[str, str],
                 clock: Clock, timeout: float) -> None:
        self._http = http
        self._default = default_url
        self._channels = channels
        self._clock = clock
        self._timeout = timeout

    def perform(self, request: ActionRequest, fact: Fact) -> ActionOutcome:
        name, url = self._target(request)
        shown = f"Teams webhook {name!r} ({shown_url(url)})"
        response = post_to_secret_url(
            self._http, url, request, shown=shown, clock=self._clock,
            json=message(request, fact), timeout=self._timeout,
        )
        failed = _DELIVERY_FAILED.search(response.text[:500])
        if failed is not None:
            status = int(failed.group("status"))
            text = " ".join(response.text[:200].split())
            problem = (f"{where(request)}: POST {shown}: HTTP {response.status_code}, "
                       f"but Teams reports HTTP {status}: {text}")
            if status in (408, 429) or status >= 500:
                raise TransientActionError(problem)
            raise PermanentActionError(problem)
        return ActionOutcome(
            OutcomeStatus.DONE, f"posted to {shown}: HTTP {response.status_code}",
            reference=f"HTTP {response.status_code}",
        )

    def _target(self, request: ActionRequest) -> tuple[str, str]:
        name = param(request, "channel")
        if name is None or (isinstance(name, str) and not name.strip()):
            if self._default is None:
                raise PermanentActionError(
                    f"{where(request)}: params.channel is required (connectors.teams has no "
                    f"webhook_url; configured channels: {', '.join(sorted(self._channels))})"
                )
            return "default", self._default
        url = self._channels.get(str(name).strip())
        if url is None:
            known = ", ".join(sorted(self._channels)) or "none"
            raise PermanentActionError(
                f"{where(request)}: params.channel {str(name)!r} is not a configured Teams "
                f"channel (configured: {known})"
            )
        return str(name).strip(), url


class TeamsFactory:
    kind = KIND
    settings_model = TeamsSettings

    def create(self, settings: TeamsSettings, http: httpx.Client, clock: Clock) -> ActionHandler:
        key = f"connectors.{KIND}"
        default = secret_value(settings.webhook_url, settings.webhook_url_file,
                               f"{key}.webhook_url")
        if default is not None:
            check_url(default, f"{key}.webhook_url", secret=True)
        channels: dict[str, str] = {}
        for name, value in settings.channels.items():
            if not _CHANNEL_NAME.fullmatch(name):
                raise ConfigError(
                    f"{key}.channels.{name}: a channel name is 1 to 64 letters, digits, "
                    f"'_', '.' or '-'"
                )
            channels[name] = check_url(
                value.get_secret_value().strip(), f"{key}.channels.{name}", secret=True
            )
        if default is None and not channels:
            raise ConfigError(
                f"{key}.webhook_url: required (or webhook_url_file, or at least one "
                f"{key}.channels entry)"
            )
        return TeamsHandler(http, default, channels, clock, settings.timeout_seconds)


FACTORY = TeamsFactory()
