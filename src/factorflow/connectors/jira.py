"""The ``jira`` connector: create a Jira Cloud issue (REST API v3) once per idempotency key.

Every issue carries the label ``factorflow-<idempotency key>``. Before creating, the connector
searches for that label (``POST /rest/api/3/search/jql``); an issue found there answers
``already_done`` with its key, so a retry, a replay or a crash between the create and our own
record leaves one issue. The key is also stored in an issue entity property (``factorflow`` by
default) for tools that read properties rather than labels.

Jira's search index can trail a create by a few seconds, so a repeat that arrives within that
window may not see the first issue yet; the pipeline's retry backoff keeps such repeats apart.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import orjson
from pydantic import SecretStr, field_validator

from factorflow.connectors.base import (
    Clock,
    ConnectorSettings,
    PlainFactory,
    call,
    https_base_url,
    json_object,
    secret_value,
    where,
)
from factorflow.connectors.text import clip, fact_description, fact_summary, one_line, text_param
from factorflow.domain.actions import ActionOutcome, ActionRequest, OutcomeStatus
from factorflow.domain.facts import Fact
from factorflow.errors import ConfigError, PermanentActionError, TransientActionError

KIND = "jira"
LABEL_PREFIX = "factorflow-"
SUMMARY_LIMIT = 255  # Jira refuses longer summaries
DESCRIPTION_LIMIT = 32_000  # Jira refuses rich text beyond 32,767 characters
LABEL_LIMIT = 255
_LABEL_SAFE = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
_WHITESPACE = re.compile(r"\s+")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
# Statuses whose body we read ourselves to give a clearer message; 408 and 429 stay transient.
_CLIENT_ERRORS = tuple(status for status in range(400, 500) if status not in (408, 429))

class JiraSettings(ConnectorSettings):
    """``[connectors.jira]``."""

    base_url: str  # https://your-domain.atlassian.net
    email: str  # the account the API token belongs to
    api_token: SecretStr | None = None
    api_token_file: Path | None = None
    project: str | None = None  # default project key (or id); params.project overrides
    issue_type: str = "Task"  # default issue type name (or id); params.issue_type overrides
    labels: tuple[str, ...] = ()  # added to every issue, besides the rule's labels
    issue_property: str = "factorflow"  # entity property holding the key; "" to skip it

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return https_base_url(value)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        text = value.strip()
        if "@" not in text or any(ch.isspace() for ch in text):
            raise ValueError("must be the email address of the account that owns the API token")
        return text

    @field_validator("project", "issue_type")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value.strip() if value is not None else None

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for label in value:
            if not label or _WHITESPACE.search(label) or len(label) > LABEL_LIMIT:
                raise ValueError(f"{label!r}: a Jira label is 1-255 characters without spaces")
        return value

    @field_validator("issue_property")
    @classmethod
    def _property(cls, value: str) -> str:
        if len(value) > LABEL_LIMIT:
            raise ValueError("must be at most 255 characters")
        return value.strip()


def idempotency_label(key: str) -> str:
    """The label that marks the issue of one idempotency key (labels cannot hold spaces)."""
    if _LABEL_SAFE.fullmatch(key):
        return LABEL_PREFIX + key
    return LABEL_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:40]


def jql_string(value: str) -> str:
    """A JQL string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_adf(text: str) -> dict[str, Any]:
    """Plain text as a minimal Atlassian Document Format document: blank lines separate
    paragraphs, single line breaks become ``hardBreak`` nodes."""
    normalised = text.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
    content: list[dict[str, Any]] = []
    for block in _BLANK_LINE.split(normalised):
        lines = block.strip("\n").split("\n")
        inline: list[dict[str, Any]] = []
        for index, line in enumerate(lines):
            if index:
                inline.append({"type": "hardBreak"})
            if line:
                inline.append({"type": "text", "text": line})
        if any(node["type"] == "text" for node in inline):
            content.append({"type": "paragraph", "content": inline})
    return {"type": "doc", "version": 1, "content": content}


def _reference(value: str, *, by_key: str) -> dict[str, str]:
    """``{"id": ...}`` for a numeric id, else ``{by_key: ...}`` (a project key, a type name)."""
    return {"id": value} if value.isdigit() else {by_key: value}


def _labels(request: ActionRequest, value: Any, path: str) -> list[str]:
    """Rule labels as Jira takes them: whitespace becomes ``_`` (labels cannot hold spaces)."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise PermanentActionError(
            f"{where(request)}: params.{path} must be a list of text (or comma-separated text)"
        )
    labels = []
    for item in items:
        label = _WHITESPACE.sub("_", item.strip())
        if label:
            labels.append(label[:LABEL_LIMIT])
    return labels


def error_summary(response: httpx.Response) -> str:
    """Jira's ``{"errorMessages": [...], "errors": {field: message}}`` on one short line."""
    body = json_object(response)
    parts: list[str] = []
    if body is not None:
        messages = body.get("errorMessages")
        if isinstance(messages, list):
            parts.extend(str(message) for message in messages if message)
        errors = body.get("errors")
        if isinstance(errors, dict):
            parts.extend(f"{field}: {message}" for field, message in errors.items())
    text = "; ".join(parts) if parts else " ".join(response.text.split())
    return one_line(text, 300) if text else "(no details)"


class JiraConnector:
    """``kind: jira``. Params (all optional): ``summary``, ``description`` (plain text; becomes
    an ADF document), ``project``, ``issue_type``, ``labels`` (list or comma-separated text),
    ``fields`` (a mapping of further issue fields, in REST v3 shapes)."""

    kind = KIND

    def __init__(self, settings: JiraSettings, http: httpx.Client, clock: Clock) -> None:
        token = secret_value(
            settings.api_token, settings.api_token_file, f"connectors.{KIND}.api_token"
        )
        if not token:
            raise ConfigError(
                f"connectors.{KIND}.api_token: required (or connectors.{KIND}.api_token_file)"
            )
        credentials = base64.b64encode(f"{settings.email}:{token}".encode()).decode()
        self._settings = settings
        self._http = http
        self._clock = clock
        self._headers = {
            "authorization": f"Basic {credentials}",
            "accept": "application/json",
            "content-type": "application/json",
        }

    def perform(self, request: ActionRequest, fact: Fact) -> ActionOutcome:
        label = idempotency_label(request.idempotency_key)
        fields = self._fields(request, fact, label)
        existing = self._find(request, label)
        if existing is not None:
            return ActionOutcome(
                OutcomeStatus.ALREADY_DONE, detail=f"issue {existing} has label {label}",
                reference=existing,
            )
        body: dict[str, Any] = {"fields": fields}
        if self._settings.issue_property:
            body["properties"] = [{
                "key": self._settings.issue_property,
                "value": {
                    "idempotency_key": request.idempotency_key,
                    "event_uuid": fact.uuid,
                    "rule_id": request.rule_id,
                    "action_id": request.action_id,
                },
            }]
        response = self._post(request, "/rest/api/3/issue", body)
        key = (json_object(response) or {}).get("key")
        if not isinstance(key, str) or not key:
            # The issue may exist: a retry finds it by its label instead of creating another.
            raise TransientActionError(
                f"{where(request)}: Jira answered HTTP {response.status_code} to the create "
                "without an issue key"
            )
        return ActionOutcome(
            OutcomeStatus.DONE, detail=f"{self._settings.base_url}/browse/{key}", reference=key
        )

    def _fields(self, request: ActionRequest, fact: Fact, label: str) -> dict[str, Any]:
        settings = self._settings
        project = text_param(request, "project", "") or settings.project
        if not project:
            raise PermanentActionError(
                f"{where(request)}: params.project is required "
                f"(connectors.{KIND}.project sets no default)"
            )
        issue_type = text_param(request, "issue_type", settings.issue_type)
        summary = text_param(request, "summary", fact_summary(fact))
        description = text_param(request, "description", fact_description(fact, request))
        extra = request.params.get("fields") or {}
        if not isinstance(extra, Mapping):
            raise PermanentActionError(f"{where(request)}: params.fields must be a mapping")
        labels = list(dict.fromkeys([
            *settings.labels,
            *_labels(request, request.params.get("labels"), "labels"),
            *_labels(request, extra.get("labels"), "fields.labels"),
            label,
        ]))
        fields: dict[str, Any] = {
            "project": _reference(project.strip(), by_key="key"),
            "issuetype": _reference(issue_type.strip(), by_key="name"),
            "summary": one_line(summary, SUMMARY_LIMIT),
            "description": to_adf(clip(description, DESCRIPTION_LIMIT)),
        }
        fields.update({name: value for name, value in extra.items() if name != "labels"})
        fields["labels"] = labels
        return fields

    def _find(self, request: ActionRequest, label: str) -> str | None:
        query = {"jql": f"labels = {jql_string(label)}", "fields": ["key"], "maxResults": 1}
        response = self._post(request, "/rest/api/3/search/jql", query)
        issues = (json_object(response) or {}).get("issues")
        if not isinstance(issues, list):
            raise PermanentActionError(
                f"{where(request)}: Jira search answered without an issues list "
                f"(is connectors.{KIND}.base_url a Jira Cloud site?)"
            )
        for issue in issues:
            if isinstance(issue, dict) and isinstance(issue.get("key"), str):
                return str(issue["key"])
        return None

    def _post(self, request: ActionRequest, path: str, body: dict[str, Any]) -> httpx.Response:
        try:
            content = orjson.dumps(body)
        except TypeError as exc:
            raise PermanentActionError(f"{where(request)}: params are not JSON data") from exc
        response = call(
            self._http, "POST", self._settings.base_url + path, request,
            clock=self._clock, ok=_CLIENT_ERRORS, headers=self._headers,
            content=content, timeout=self._settings.timeout_seconds,
        )
        status = response.status_code
        if status < 400:
            return response
        hint = {
            401: f" (check connectors.{KIND}.email and the API token)",
            403: " (the account lacks a Jira permission: Browse projects and Create issues)",
        }.get(status, "")
        raise PermanentActionError(
            f"{where(request)}: POST {path}: HTTP {status}: {error_summary(response)}{hint}"
        )


FACTORY = PlainFactory(KIND, JiraSettings, JiraConnector)
