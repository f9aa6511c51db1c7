"""The ``okta_workflows`` connector: invoke an Okta Workflows flow through its API Endpoint.

An API Endpoint flow is secured in one of three ways (the flow's "API endpoint settings"):

* **Secure with client token**: the invoke URL carries ``?clientToken=...``, or the token goes
  in the ``x-api-client-token`` header (Okta's advice: the header, and never both). Configure
  ``security = "client_token"`` with ``invoke_url`` (the copied URL, token included) or with
  ``invoke_url`` without the token plus ``client_token``.
* **Secure with Okta org authorization server** (OAuth 2.0): an access token for the
  ``okta.workflows.invoke.manage`` scope, obtained by an API service app with the client
  credentials grant and a private-key JWT, sent as ``Authorization: Bearer``. Configure
  ``security = "oauth"`` and ``oauth_token`` or ``oauth_token_file``; the file is read again for
  every call, so a process that refreshes the (short-lived) token can rewrite it.
* **Public service**: no credentials; whoever knows the URL can run the flow. Configure
  ``security = "public"``.

The invoke URL, the client token and the access token are secrets: errors name the host only.

The body is the fact (:meth:`Fact.to_dict`) as JSON plus ``idempotencyKey``, ``ruleId``,
``actionId`` and the rule's rendered params under ``params``.

Idempotency: Okta Workflows has no de-duplication of its own. The pipeline records a done
result per idempotency key and never repeats it, but a crash between the call and that record,
or a timeout after the flow started, invokes the flow again with the same ``idempotencyKey``.
The flow should look the key up (e.g. in a Workflows table) before doing its work and store it
afterwards; when it finds the key it can answer ``{"alreadyDone": true}`` (a Return card), which
this connector reports as ``already_done``.

Answers: 200 with the flow's output (202 or another 2xx when the flow closes the connection
early) is done; 429 (Okta's limit on API endpoint invocations per flow) is transient and waits
for ``Retry-After`` or, without it, until ``X-Rate-Limit-Reset``; 408 and 5xx are transient;
401, 403 and other 4xx are permanent. The reference is the request id Okta returns in
``x-okta-request-id``, else ``HTTP <status>``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import orjson
from pydantic import SecretStr

from factorflow.connectors.base import (
    Clock,
    ConnectorSettings,
    PlainFactory,
    call,
    is_loopback,
    parse_retry_after,
    secret_value,
    where,
)
from factorflow.domain.actions import ActionOutcome, ActionRequest, OutcomeStatus
from factorflow.domain.facts import Fact
from factorflow.errors import ConfigError, PermanentActionError, TransientActionError

KIND = "okta_workflows"
CLIENT_TOKEN_HEADER = "x-api-client-token"  # noqa: S105 (a header name, not a secret)
CLIENT_TOKEN_QUERY = "clientToken"  # noqa: S105
REQUEST_ID_HEADER = "x-okta-request-id"
ALREADY_DONE_KEY = "alreadyDone"
_PREFIX = f"connectors.{KIND}"


class OktaWorkflowsSettings(ConnectorSettings):
    security: Literal["client_token", "oauth", "public"] = "client_token"
    invoke_url: SecretStr | None = None
    invoke_url_file: Path | None = None
    client_token: SecretStr | None = None
    client_token_file: Path | None = None
    oauth_token: SecretStr | None = None
    oauth_token_file: Path | None = None


class OktaWorkflowsHandler:
    """``kind: okta_workflows``: see the module docstring."""

    kind = KIND

    def __init__(self, settings: OktaWorkflowsSettings, http: httpx.Client, clock: Clock) -> None:
        self._settings = settings
        self._http = http
        self._clock = clock
        url = _secret(settings.invoke_url, settings.invoke_url_file, "invoke_url")
        if url is None:
            raise ConfigError(f"{_PREFIX}.invoke_url: required (or invoke_url_file)")
        self._url, self._shown, in_url = _check_url(url)
        client_token = _secret(settings.client_token, settings.client_token_file, "client_token")
        oauth_token = _secret(settings.oauth_token, None, "oauth_token")
        self._oauth_file: Path | None = None
        self._headers = {"content-type": "application/json", "accept": "application/json"}
        if settings.security == "client_token":
            if in_url and client_token:
                raise ConfigError(
                    f"{_PREFIX}.client_token: the invoke_url already has a clientToken; "
                    "give the token in one place only"
                )
            if not in_url and not client_token:
                raise ConfigError(
                    f"{_PREFIX}.client_token: required for security 'client_token' "
                    "(or an invoke_url with ?clientToken=...)"
                )
            if client_token:
                self._headers[CLIENT_TOKEN_HEADER] = client_token
        elif in_url or client_token:
            raise ConfigError(
                f"{_PREFIX}.client_token: a client token is only used with security "
                f"'client_token' (security is {settings.security!r})"
            )
        if settings.security == "oauth":
            if oauth_token is not None and settings.oauth_token_file is not None:
                raise ConfigError(
                    f"{_PREFIX}.oauth_token: oauth_token and oauth_token_file are both set"
                )
            if oauth_token is None and settings.oauth_token_file is None:
                raise ConfigError(
                    f"{_PREFIX}.oauth_token: required for security 'oauth' (or oauth_token_file)"
                )
            if oauth_token is not None:
                self._headers["authorization"] = f"Bearer {oauth_token}"
            else:
                self._oauth_file = settings.oauth_token_file
                _read_token(settings.oauth_token_file, ConfigError)  # readable now
        elif oauth_token is not None or settings.oauth_token_file is not None:
            raise ConfigError(
                f"{_PREFIX}.oauth_token: an access token is only used with security 'oauth' "
                f"(security is {settings.security!r})"
            )

    def perform(self, request: ActionRequest, fact: Fact) -> ActionOutcome:
        body = payload(request, fact)
        headers = dict(self._headers)
        if self._oauth_file is not None:
            token = _read_token(self._oauth_file, TransientActionError)
            headers["authorization"] = f"Bearer {token}"
        try:
            response = call(
                self._http, "POST", self._url, request, clock=self._clock, ok=(429,),
                content=body, headers=headers, timeout=self._settings.timeout_seconds,
            )
        except TransientActionError as exc:
            raise TransientActionError(self._hide(str(exc)), exc.retry_after) from None
        except PermanentActionError as exc:
            raise PermanentActionError(self._hide(str(exc))) from None
        status = response.status_code
        label = f"{where(request)}: POST {self._shown}"
        if status == 429:
            raise TransientActionError(
                f"{label}: HTTP 429 (rate limited)", rate_limit_wait(response, self._clock())
            )
        reference = response.headers.get(REQUEST_ID_HEADER) or f"HTTP {status}"
        if _already_done(response):
            return ActionOutcome(
                OutcomeStatus.ALREADY_DONE,
                f"{label}: HTTP {status}: the flow had this idempotency key already",
                reference=reference,
            )
        return ActionOutcome(OutcomeStatus.DONE, f"{label}: HTTP {status}", reference=reference)

    def _hide(self, message: str) -> str:
        """``call`` names the URL without its query; the path (the flow alias) goes too."""
        return message.replace(_without_query(self._url), self._shown)


def payload(request: ActionRequest, fact: Fact) -> bytes:
    """The JSON body: the fact's fields plus the request's identity and its params."""
    body: dict[str, Any] = fact.to_dict()
    body.update({
        "idempotencyKey": request.idempotency_key,
        "ruleId": request.rule_id,
        "actionId": request.action_id,
        "params": dict(request.params),
    })
    try:
        return orjson.dumps(body)
    except TypeError as exc:
        raise PermanentActionError(f"{where(request)}: params are not JSON data") from exc


def rate_limit_wait(response: httpx.Response, now: datetime) -> float | None:
    """Seconds to wait after a 429: Retry-After if given, else until X-Rate-Limit-Reset
    (Unix seconds)."""
    wait = parse_retry_after(response.headers.get("retry-after"), now)
    if wait is not None:
        return wait
    reset = response.headers.get("x-rate-limit-reset", "").strip()
    if reset.isdigit():
        return max(0.0, float(reset) - now.timestamp())
    return None


def _already_done(response: httpx.Response) -> bool:
    if "json" not in response.headers.get("content-type", ""):
        return False
    try:
        output = response.json()
    except ValueError:
        return False
    return isinstance(output, dict) and output.get(ALREADY_DONE_KEY) is True


def _secret(value: SecretStr | None, path: Path | None, key: str) -> str | None:
    try:
        return secret_value(value, path, key)
    except ConfigError as exc:
        raise ConfigError(f"{_PREFIX}.{key}: {exc}") from None


def _read_token(path: Path | None, error: type[Exception]) -> str:
    key = f"{_PREFIX}.oauth_token_file"
    try:
        token = path.read_text(encoding="utf-8").strip() if path is not None else ""
    except OSError as exc:
        raise error(f"{key}: cannot read {path}: {exc.strerror}") from None
    if not token:
        raise error(f"{key}: {path} is empty")
    return token


def _check_url(url: str) -> tuple[str, str, bool]:
    """(the URL, what messages may show of it, whether it carries a clientToken)."""
    key = f"{_PREFIX}.invoke_url"
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise ConfigError(f"{key}: not a valid URL") from None
    if not parsed.host:
        raise ConfigError(f"{key}: the URL has no host")
    if parsed.scheme != "https" and not (parsed.scheme == "http" and is_loopback(parsed.host)):
        raise ConfigError(f"{key}: must use https (http only for a loopback address)")
    in_url = bool(parsed.params.get(CLIENT_TOKEN_QUERY))
    port = f":{parsed.port}" if parsed.port else ""
    return url, f"{parsed.scheme}://{parsed.host}{port}", in_url


def _without_query(url: str) -> str:
    parsed = httpx.URL(url)
    return str(parsed.copy_with(query=None, fragment=None, username=None, password=None))


FACTORY = PlainFactory(KIND, OktaWorkflowsSettings, OktaWorkflowsHandler)
