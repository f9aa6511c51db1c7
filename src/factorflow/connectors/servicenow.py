"""The ``servicenow`` connector: insert a record (an incident by default) through the Table API,
once per idempotency key.

Every record carries ``correlation_id`` = the idempotency key and ``correlation_display`` =
``factorflow``. Before inserting, the connector asks for a record of that ``correlation_id``
(``GET /api/now/table/{table}?sysparm_query=correlation_id=<key>``); a record found there answers
``already_done`` with its number, so a retry, a replay or a crash between the insert and our own
record leaves one record.

ServiceNow ignores a query on a field the table does not have and returns every row, so the
lookup also asks for ``correlation_id`` and only trusts a record that echoes the key back; a
table without that field is refused as a configuration error rather than mistaken for a match.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import orjson
from pydantic import Field, SecretStr, field_validator

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
from factorflow.connectors.text import fact_description, fact_summary, one_line, text_param
from factorflow.domain.actions import ActionOutcome, ActionRequest, OutcomeStatus
from factorflow.domain.facts import Fact
from factorflow.errors import ConfigError, PermanentActionError, TransientActionError

KIND = "servicenow"
CORRELATION_DISPLAY = "factorflow"
SHORT_DESCRIPTION_LIMIT = 160  # the incident table's column length
_NAME = re.compile(r"[a-z][a-z0-9_]{0,79}")  # table and column names
_QUERY_SAFE = re.compile(r"[A-Za-z0-9_.:-]{1,100}")  # no encoded-query operators (^, =, ...)
_CLIENT_ERRORS = tuple(status for status in range(400, 500) if status not in (408, 429))
_RETURNED = "sys_id,number,correlation_id"
# Common fields a rule may set directly as params (and the settings may default).
FIELD_PARAMS = ("assignment_group", "category", "subcategory", "urgency", "impact", "caller_id")
_OWN_FIELDS = frozenset({"correlation_id", "correlation_display"})

Scalar = str | int | float | bool


class ServiceNowSettings(ConnectorSettings):
    """``[connectors.servicenow]``."""

    instance_url: str  # https://<instance>.service-now.com
    username: str | None = None  # Basic authentication, with password / password_file
    password: SecretStr | None = None
    password_file: Path | None = None
    oauth_token: SecretStr | None = None  # or an OAuth access token (Bearer)
    oauth_token_file: Path | None = None
    table: str = "incident"
    # default field values; a rule's params of the same name win
    assignment_group: str | None = None
    category: str | None = None
    subcategory: str | None = None
    urgency: str | int | None = None
    impact: str | int | None = None
    caller_id: str | None = None
    fields: dict[str, Scalar] = Field(default_factory=dict)  # any other columns
    # send reference fields by display value (assignment_group = "Service Desk")
    input_display_value: bool = False

    @field_validator("instance_url")
    @classmethod
    def _instance_url(cls, value: str) -> str:
        return https_base_url(value)

    @field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("must be a table name (lower-case letters, digits, underscores)")
        return value

    @field_validator("fields")
    @classmethod
    def _fields(cls, value: dict[str, Scalar]) -> dict[str, Scalar]:
        for name in value:
            if not _NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a column name")
            if name in _OWN_FIELDS:
                raise ValueError(f"{name} is set by factorflow itself")
        return value

    @field_validator("username")
    @classmethod
    def _username(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or ":" in value):
            raise ValueError("must be a user name (not empty, no colon)")
        return value


def error_summary(response: httpx.Response) -> str:
    """ServiceNow's ``{"error": {"message", "detail"}, "status": "failure"}`` on one line."""
    text = ""
    error = (json_object(response) or {}).get("error")
    if isinstance(error, dict):
        text = ": ".join(str(error[part]) for part in ("message", "detail") if error.get(part))
    if not text:
        text = response.text
    return one_line(text, 300) or "(no details)"


def _text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class ServiceNowConnector:
    """``kind: servicenow``. Params (all optional): ``short_description``, ``description``,
    the common fields ``assignment_group``, ``category``, ``subcategory``, ``urgency``,
    ``impact``, ``caller_id``, and ``fields`` (a mapping of any other columns)."""

    kind = KIND

    def __init__(self, settings: ServiceNowSettings, http: httpx.Client, clock: Clock) -> None:
        prefix = f"connectors.{KIND}"
        password = secret_value(settings.password, settings.password_file, f"{prefix}.password")
        token = secret_value(
            settings.oauth_token, settings.oauth_token_file, f"{prefix}.oauth_token"
        )
        if token and (settings.username or password):
            raise ConfigError(
                f"{prefix}.oauth_token: set either oauth_token or username and password, not both"
            )
        if token:
            authorization = f"Bearer {token}"
        elif settings.username and password:
            pair = f"{settings.username}:{password}".encode()
            authorization = "Basic " + base64.b64encode(pair).decode()
        elif settings.username:
            raise ConfigError(f"{prefix}.password: required with username (or password_file)")
        elif password:
            raise ConfigError(f"{prefix}.username: required with password")
        else:
            raise ConfigError(
                f"{prefix}.username: set username and password, or oauth_token, to authenticate"
            )
        self._settings = settings
        self._http = http
        self._clock = clock
        self._url = f"{settings.instance_url}/api/now/table/{settings.table}"
        self._headers = {
            "authorization": authorization,
            "accept": "application/json",
            "content-type": "application/json",
        }

    def perform(self, request: ActionRequest, fact: Fact) -> ActionOutcome:
        key = request.idempotency_key
        if not _QUERY_SAFE.fullmatch(key):
            raise PermanentActionError(
                f"{where(request)}: the idempotency key cannot be used in a ServiceNow query"
            )
        record = self._record(request, fact)
        existing = self._find(request, key)
        if existing is not None:
            return ActionOutcome(
                OutcomeStatus.ALREADY_DONE,
                detail=f"{self._settings.table} record with correlation_id {key}",
                reference=existing,
            )
        params = {"sysparm_fields": _RETURNED, "sysparm_exclude_reference_link": "true"}
        if self._settings.input_display_value:
            params["sysparm_input_display_value"] = "true"
        response = self._request(request, "POST", params, content=orjson.dumps(record))
        result = _result(response)
        reference = _reference(result) if isinstance(result, dict) else None
        if reference is None:
            # The record may exist: a retry finds it by correlation_id instead of inserting again.
            raise TransientActionError(
                f"{where(request)}: ServiceNow answered HTTP {response.status_code} to the insert "
                "without a record"
            )
        detail = f"{self._settings.table} {reference}"
        if isinstance(result, dict) and result.get("correlation_id") != key:
            detail += " (the table did not keep correlation_id: repeats cannot be detected)"
        return ActionOutcome(OutcomeStatus.DONE, detail=detail, reference=reference)

    def _record(self, request: ActionRequest, fact: Fact) -> dict[str, str]:
        settings = self._settings
        record: dict[str, str] = {name: _text(value) for name, value in settings.fields.items()}
        for name in FIELD_PARAMS:
            default = getattr(settings, name)
            if default is not None:
                record[name] = _text(default)
        extra = request.params.get("fields") or {}
        if not isinstance(extra, Mapping):
            raise PermanentActionError(f"{where(request)}: params.fields must be a mapping")
        for name, value in extra.items():
            record[self._column(request, f"fields.{name}", name)] = self._scalar(
                request, f"fields.{name}", value
            )
        for name in FIELD_PARAMS:
            if request.params.get(name) not in (None, ""):
                record[name] = self._scalar(request, name, request.params[name])
        short = text_param(request, "short_description", fact_summary(fact), numbers=False)
        record["short_description"] = one_line(short, SHORT_DESCRIPTION_LIMIT)
        record["description"] = text_param(
            request, "description", fact_description(fact, request), numbers=False)
        record["correlation_id"] = request.idempotency_key
        record["correlation_display"] = CORRELATION_DISPLAY
        return record

    @staticmethod
    def _column(request: ActionRequest, path: str, name: Any) -> str:
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name in _OWN_FIELDS:
            raise PermanentActionError(
                f"{where(request)}: params.{path}: not a column a rule may set"
            )
        return name

    @staticmethod
    def _scalar(request: ActionRequest, path: str, value: Any) -> str:
        if not isinstance(value, str | int | float | bool):
            raise PermanentActionError(
                f"{where(request)}: params.{path} must be text, a number or true/false"
            )
        return _text(value)

    def _find(self, request: ActionRequest, key: str) -> str | None:
        params = {
            "sysparm_query": f"correlation_id={key}",
            "sysparm_fields": _RETURNED,
            "sysparm_limit": "1",
            "sysparm_exclude_reference_link": "true",
        }
        response = self._request(request, "GET", params)
        result = _result(response)
        if not isinstance(result, list):
            raise PermanentActionError(
                f"{where(request)}: ServiceNow answered the lookup without a result list "
                f"(is connectors.{KIND}.instance_url a ServiceNow instance?)"
            )
        for record in result:
            if not isinstance(record, dict):
                continue
            if "correlation_id" not in record:
                raise PermanentActionError(
                    f"{where(request)}: table {self._settings.table} has no correlation_id "
                    f"field, so repeats cannot be detected (connectors.{KIND}.table)"
                )
            if record["correlation_id"] == key:
                return _reference(record)
        return None

    def _request(
        self, request: ActionRequest, method: str, params: dict[str, str], **kwargs: Any
    ) -> httpx.Response:
        response = call(
            self._http, method, self._url, request, clock=self._clock, ok=_CLIENT_ERRORS,
            headers=self._headers, params=params, timeout=self._settings.timeout_seconds,
            **kwargs,
        )
        status = response.status_code
        if status < 400:
            return response
        hint = {
            401: f" (check the credentials in connectors.{KIND})",
            403: f" (the account may not {'create' if method == 'POST' else 'read'} "
                 f"{self._settings.table} records: it needs the itil role or table ACLs)",
        }.get(status, "")
        raise PermanentActionError(
            f"{where(request)}: {method} /api/now/table/{self._settings.table}: HTTP {status}: "
            f"{error_summary(response)}{hint}"
        )


def _result(response: httpx.Response) -> Any:
    return (json_object(response) or {}).get("result")


def _reference(record: dict[str, Any]) -> str | None:
    """The record's number (INC0010001), or its sys_id on a table without numbers."""
    for name in ("number", "sys_id"):
        value = record.get(name)
        if isinstance(value, str) and value:
            return value
    return None


FACTORY = PlainFactory(KIND, ServiceNowSettings, ServiceNowConnector)
