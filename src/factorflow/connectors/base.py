"""What every connector shares: a settings model validated at start, secrets as SecretStr,
one split of failures into transient (retried) and permanent (dead-lettered), and the checks
for the URLs connectors call (some of which are secrets themselves). The text connectors build
from a fact is in :mod:`factorflow.connectors.text`."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, SecretStr

from factorflow.actions.base import ActionHandler
from factorflow.domain.actions import ActionRequest
from factorflow.errors import ConfigError, PermanentActionError, TransientActionError
from factorflow.secrets_source import read_secret

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class ConnectorSettings(BaseModel):
    """Base of every connector's settings (``[connectors.<kind>]`` in the config file,
    ``FACTORFLOW_CONNECTORS__<KIND>__<KEY>`` in the environment). Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_seconds: float = 10.0


def secret_value(value: SecretStr | None, path: Path | None, key: str) -> str | None:
    """A secret given directly or as ``<key>_file``; never both, never empty."""
    return read_secret(value, path, key)


class ConnectorFactory(Protocol):
    """How the registry builds a connector from its settings section."""

    kind: str
    settings_model: type[ConnectorSettings]

    def create(
        self, settings: Any, http: httpx.Client, clock: Clock
    ) -> ActionHandler: ...


@dataclass(frozen=True)
class PlainFactory:
    """The factory of a connector made from its settings, the HTTP client and the clock."""

    kind: str
    settings_model: type[ConnectorSettings]
    make: Callable[[Any, httpx.Client, Clock], ActionHandler]

    def create(self, settings: Any, http: httpx.Client, clock: Clock) -> ActionHandler:
        return self.make(settings, http, clock)


def where(request: ActionRequest) -> str:
    return f"{request.kind} action {request.rule_id}/{request.action_id}"


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP-date)."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - now).total_seconds())


def call(
    http: httpx.Client, method: str, url: str, request: ActionRequest, *,
    clock: Clock = utc_now, ok: tuple[int, ...] = (), **kwargs: Any,
) -> httpx.Response:
    """One HTTP call with the shared classification: connection errors, timeouts, 408, 429
    (honouring Retry-After) and 5xx are transient; other 4xx are permanent. Statuses in
    ``ok`` are returned as they are (e.g. 404 for a lookup)."""
    label = f"{where(request)}: {method} {_display(url)}"
    try:
        response = http.request(method, url, **kwargs)
    except httpx.TimeoutException as exc:
        raise TransientActionError(f"{label}: timed out ({type(exc).__name__})") from exc
    except (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.InvalidURL) as exc:
        raise PermanentActionError(f"{label}: {type(exc).__name__}") from exc
    except httpx.HTTPError as exc:
        raise TransientActionError(f"{label}: {type(exc).__name__}") from exc
    status = response.status_code
    if status < 300 or status in ok:
        return response
    message = f"{label}: HTTP {status}: {_excerpt(response.text)}"
    if status in (408, 429) or status >= 500:
        retry_after = parse_retry_after(response.headers.get("retry-after"), clock())
        raise TransientActionError(message, retry_after)
    raise PermanentActionError(message)


def json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The response's body as a JSON object; None if it is not JSON or not an object."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def param(request: ActionRequest, name: str, default: Any = None, *,
          required: bool = False) -> Any:
    value = request.params.get(name, default)
    if required and (value is None or (isinstance(value, str) and not value.strip())):
        raise PermanentActionError(f"{where(request)}: params.{name} is required")
    return value


def text_params(request: ActionRequest) -> Mapping[str, str]:
    return {key: value for key, value in request.params.items() if isinstance(value, str)}


# -- URLs ------------------------------------------------------------------------------------


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


def https_base_url(value: str) -> str:
    """An ``https://host[/prefix]`` URL without a trailing slash; plain ``http`` only for a
    loopback host (a local test double), since the credentials travel in every request.
    Raises ValueError (for a settings validator)."""
    text = value.strip().rstrip("/")
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL:
        raise ValueError("not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("must be an https:// URL")
    if url.scheme == "http" and not is_loopback(url.host):
        raise ValueError("must use https (plain http is allowed only for a loopback host)")
    if url.query or url.fragment or url.userinfo:
        raise ValueError("must not carry a query, a fragment or credentials")
    return text


def shown_url(url: str) -> str:
    """What a message may show of a secret URL: scheme and host."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "<invalid url>"
    return f"{parsed.scheme}://{parsed.host}"


def post_to_secret_url(
    http: httpx.Client, url: str, request: ActionRequest, *, shown: str, clock: Clock,
    **kwargs: Any,
) -> httpx.Response:
    """:func:`call` (POST) for a URL that is itself a secret: its errors name ``shown`` instead
    of the URL, and keep no chained exception that holds it."""
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


def _display(url: str) -> str:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "<invalid url>"
    return str(parsed.copy_with(query=None, fragment=None, username=None, password=None))


def _excerpt(text: str, limit: int = 200) -> str:
    return " ".join(text[:limit].split())
