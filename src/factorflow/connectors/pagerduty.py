"""The ``pagerduty`` connector: an alert event through the PagerDuty Events API v2.

``POST {api_url}`` (``https://events.pagerduty.com/v2/enqueue`` by default) with the
integration's ``routing_key``, ``event_action`` (``trigger``, ``acknowledge`` or ``resolve``)
and a ``dedup_key``. PagerDuty de-duplicates by itself: a trigger with the ``dedup_key`` of an
open alert is added to that alert instead of opening another, so the same step performed twice
(a retry, a crash before our own record, a replay) leaves one alert. The ``dedup_key`` is the
action's idempotency key unless the rule names one: ``params.dedup_key`` (a literal key, e.g.
``mfa-{{ fact.user.id }}``) or ``params.dedup_action`` (``<rule id>/<action id>`` of another
action for the same event, whose idempotency key is used: how a ``resolve`` finds the alert a
``trigger`` opened). Once an alert is resolved, a new trigger with its key opens a new alert.

Answers: 202 ``{"status": "success", "message": "Event processed", "dedup_key": ...}``; 400
``{"status": "invalid event", "message": ..., "errors": [...]}`` (permanent); 429 and 5xx
(transient). The reference of a done action is the ``dedup_key``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import httpx
import orjson
from pydantic import SecretStr, field_validator

from factorflow.actions.base import ActionHandler
from factorflow.connectors.base import (
    Clock,
    ConnectorSettings,
    call,
    check_url,
    param,
    secret_value,
    where,
)
from factorflow.connectors.text import (
    actor_label,
    clip,
    event_sentence,
    event_time,
    factor_label,
    text_param,
    user_label,
)
from factorflow.domain.actions import ActionOutcome, ActionRequest, OutcomeStatus, idempotency_key
from factorflow.domain.facts import Fact
from factorflow.errors import ConfigError, PermanentActionError

KIND = "pagerduty"
DEFAULT_API_URL = "https://events.pagerduty.com/v2/enqueue"
ROUTING_KEY_LENGTH = 32
SEVERITIES = ("critical", "error", "warning", "info")
EVENT_ACTIONS = ("trigger", "acknowledge", "resolve")
_SUMMARY_MAX = 1024
_DEDUP_KEY_MAX = 255
_FIELD_MAX = 255

Severity = Literal["critical", "error", "warning", "info"]


class PagerDutySettings(ConnectorSettings):
    """``[connectors.pagerduty]``: the Events API v2 integration key and event defaults."""

    routing_key: SecretStr | None = None
    routing_key_file: Path | None = None
    api_url: str = DEFAULT_API_URL
    severity: Severity = "warning"
    source: str | None = None  # default: the Okta org the event came from
    component: str | None = None  # default: the factor type
    group: str | None = None
    client: str = "factorflow"
    client_url: str | None = None

    @field_validator("api_url", "client_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            check_url(value, "url", secret=False)
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("url: ")) from None
        return value


def custom_details(request: ActionRequest, fact: Fact) -> dict[str, Any]:
    """What the alert shows under "custom details": the fact's essentials, then the rule's own
    ``params.details`` (a mapping) on top."""
    details: dict[str, Any] = {
        "user": user_label(fact),
        "user_id": fact.user.id if fact.user else None,
        "user_name": fact.user.display_name if fact.user else None,
        "factor": factor_label(fact),
        "strength": fact.factor.strength.value,
        "enrolled_by": fact.enrolled_by.value,
        "actor": actor_label(fact),
        "event_type": fact.event_type,
        "event_uuid": fact.uuid,
        "published": event_time(fact),
        "okta_org": fact.org or None,
        "client_ip": fact.client.ip,
        "client_country": fact.client.country,
        "idempotency_key": request.idempotency_key,
    }
    details = {key: value for key, value in details.items() if value is not None}
    extra = param(request, "details")
    if extra is not None:
        if not isinstance(extra, Mapping):
            raise PermanentActionError(f"{where(request)}: params.details must be a mapping")
        details.update({str(key): value for key, value in extra.items()})
    return details


class PagerDutyHandler:
    """``kind: pagerduty``. Params (all optional): ``event_action`` (trigger, acknowledge,
    resolve; default trigger), ``dedup_key`` or ``dedup_action`` (see the module docstring),
    ``summary`` (default: built from the fact), ``severity`` (default from the settings),
    ``source``, ``component``, ``group``, ``class``, ``details`` (a mapping)."""

    kind = KIND

    def __init__(self, http: httpx.Client, routing_key: str, settings: PagerDutySettings,
                 clock: Clock) -> None:
        self._http = http
        self._routing_key = routing_key
        self._settings = settings
        self._clock = clock

    def perform(self, request: ActionRequest, fact: Fact) -> ActionOutcome:
        action = self._choice(request, "event_action", "trigger", EVENT_ACTIONS)
        dedup_key = self._dedup_key(request, fact)
        event: dict[str, Any] = {
            "routing_key": self._routing_key,
            "event_action": action,
            "dedup_key": dedup_key,
        }
        if action == "trigger":
            event["payload"] = self._payload(request, fact)
            event["client"] = self._settings.client
            if self._settings.client_url:
                event["client_url"] = self._settings.client_url
        try:
            body = orjson.dumps(event)
        except TypeError as exc:
            raise PermanentActionError(f"{where(request)}: params are not JSON data") from exc
        response = call(
            self._http, "POST", self._settings.api_url, request, clock=self._clock,
            content=body, headers={"content-type": "application/json"},
            timeout=self._settings.timeout_seconds,
        )
        answer = _json(response)
        reference = str(answer.get("dedup_key") or dedup_key)
        said = answer.get("message") or answer.get("status") or f"HTTP {response.status_code}"
        return ActionOutcome(OutcomeStatus.DONE, f"PagerDuty {action}: {said}",
                             reference=reference)

    def _payload(self, request: ActionRequest, fact: Fact) -> dict[str, Any]:
        settings = self._settings
        summary = clip(text_param(request, "summary", event_sentence(fact)), _SUMMARY_MAX)
        payload: dict[str, Any] = {
            "summary": summary,
            "source": self._short(request, "source", settings.source or fact.org or "okta"),
            "severity": self._choice(request, "severity", settings.severity, SEVERITIES),
            "timestamp": event_time(fact),
            "component": self._short(request, "component", settings.component
                                     or fact.factor.type),
            "class": self._short(request, "class", fact.event_type),
            "custom_details": custom_details(request, fact),
        }
        group = param(request, "group", settings.group)
        if group is not None:
            payload["group"] = self._short(request, "group", str(group))
        return payload

    def _short(self, request: ActionRequest, name: str, default: str) -> str:
        value = text_param(request, name, default)
        if len(value) > _FIELD_MAX:
            raise PermanentActionError(
                f"{where(request)}: params.{name} is longer than {_FIELD_MAX} characters"
            )
        return value

    def _choice(self, request: ActionRequest, name: str, default: str,
                allowed: tuple[str, ...]) -> str:
        value = text_param(request, name, default).strip().lower()
        if value not in allowed:
            raise PermanentActionError(
                f"{where(request)}: params.{name} must be one of {', '.join(allowed)}, "
                f"not {value[:40]!r}"
            )
        return value

    def _dedup_key(self, request: ActionRequest, fact: Fact) -> str:
        literal = param(request, "dedup_key")
        other = param(request, "dedup_action")
        if literal is not None and other is not None:
            raise PermanentActionError(
                f"{where(request)}: set params.dedup_key or params.dedup_action, not both"
            )
        if other is not None:
            rule_id, slash, action_id = str(other).strip().partition("/")
            if not slash or not rule_id or not action_id:
                raise PermanentActionError(
                    f"{where(request)}: params.dedup_action must be '<rule id>/<action id>'"
                )
            return idempotency_key(fact.uuid, rule_id, action_id)
        if literal is None or (isinstance(literal, str) and not literal.strip()):
            return request.idempotency_key
        key = str(literal).strip()
        if len(key) > _DEDUP_KEY_MAX:
            raise PermanentActionError(
                f"{where(request)}: params.dedup_key is longer than {_DEDUP_KEY_MAX} characters"
            )
        return key


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class PagerDutyFactory:
    kind = KIND
    settings_model = PagerDutySettings

    def create(self, settings: PagerDutySettings, http: httpx.Client,
               clock: Clock) -> ActionHandler:
        key = f"connectors.{KIND}.routing_key"
        routing_key = secret_value(settings.routing_key, settings.routing_key_file, key)
        if routing_key is None:
            raise ConfigError(f"{key}: required (or routing_key_file)")
        if len(routing_key) != ROUTING_KEY_LENGTH or not routing_key.isalnum():
            raise ConfigError(
                f"{key}: must be the {ROUTING_KEY_LENGTH}-character Integration Key of an "
                f"Events API v2 integration (letters and digits)"
            )
        return PagerDutyHandler(http, routing_key, settings, clock)


FACTORY = PagerDutyFactory()
