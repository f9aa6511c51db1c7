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
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
from pydantic import Field, SecretStr

from factorflow.actions.base import ActionHandler
from factorflow.connectors.base import (
    Clock,
    ConnectorSettings,
    check_url,
    param,
    post_to_secret_url,
    secret_value,
    shown_url,
    where,
)
from factorflow.connectors.text import event_sentence, event_title, fact_fields, text_param
from factorflow.domain.actions import ActionOutcome, ActionRequest, OutcomeStatus
from factorflow.domain.facts import Fact
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
    title = text_param(request, "title", event_title(fact))
    text = text_param(request, "text", event_sentence(fact))
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
