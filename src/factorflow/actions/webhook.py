"""The ``webhook`` action: POST the fact as JSON, signed per the Standard Webhooks spec.

Headers: ``webhook-id`` (the request's idempotency key, the same on every retry, so the receiver
can drop repeats), ``webhook-timestamp`` (Unix seconds of this attempt) and ``webhook-signature``
(``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` keyed with the base64 part of a
``whsec_...`` secret). The rule names the secret (``params.secret``); the values come from the
configuration and never appear in a rules file, a log line or a stored row.

A successful send is recorded in ``webhook_sends``; a request found there is not sent again.
A crash between the send and its record can repeat the send once, with the same ``webhook-id``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
import orjson
from pydantic import SecretStr

from factorflow.actions.base import (
    ActionStore,
    Clock,
    required_text,
    store_errors_are_transient,
    utc_now,
    where,
)
from factorflow.domain.actions import ActionOutcome, ActionRequest, OutcomeStatus
from factorflow.domain.facts import Fact
from factorflow.errors import ConfigError, PermanentActionError, TransientActionError
from factorflow.okta.payloads import format_utc

SECRET_PREFIX = "whsec_"  # noqa: S105 (the spec's prefix, not a secret)
_REPLY_EXCERPT = 200
_ENVELOPE_PARAMS = frozenset({"url", "secret", "type"})


def signing_key(name: str, secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; ConfigError (naming only ``name``) if the
    secret is malformed."""
    if not secret.startswith(SECRET_PREFIX):
        raise ConfigError(f"webhook secret {name!r} must start with {SECRET_PREFIX}")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            f"webhook secret {name!r}: the part after {SECRET_PREFIX} is not base64"
        ) from None
    if not 24 <= len(key) <= 64:
        raise ConfigError(f"webhook secret {name!r} must hold 24 to 64 bytes (base64-encoded)")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP-date."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def display_url(url: httpx.URL) -> str:
    """The URL without credentials or query string, for messages and the ledger."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{host}{port}{url.path}"


def payload(request: ActionRequest, fact: Fact) -> bytes:
    """The JSON body: the Standard Webhooks envelope around the fact, plus the rule's own
    params (all but ``url``, ``secret`` and ``type``) as ``params``."""
    kind = request.params.get("type")
    if kind is not None and not isinstance(kind, str):
        raise PermanentActionError(f"{where(request)}: params.type must be text")
    extra = {k: v for k, v in request.params.items() if k not in _ENVELOPE_PARAMS}
    try:
        return orjson.dumps(
            {
                "type": kind or f"factorflow.{fact.kind.value}",
                "timestamp": fact.published_at or fact.published,
                "rule_id": request.rule_id,
                "action_id": request.action_id,
                "params": extra,
                "data": fact.to_dict(),
            },
            option=orjson.OPT_SORT_KEYS,
        )
    except TypeError as exc:
        raise PermanentActionError(f"{where(request)}: params are not JSON data") from exc


class WebhookHandler:
    """``kind: webhook``. Params: ``url`` (http or https), ``secret`` (the name of a configured
    ``whsec_`` secret), ``type`` (optional event type, default ``factorflow.<fact kind>``);
    any others are sent along as ``params``."""

    kind = "webhook"

    def __init__(
        self, store: ActionStore, http: httpx.Client, secrets: Mapping[str, SecretStr],
        clock: Clock = utc_now,
    ) -> None:
        self._store = store
        self._http = http
        self._keys = {name: signing_key(name, s.get_secret_value()) for name, s in secrets.items()}
        self._clock = clock

    def perform(self, request: ActionRequest, fact: Fact) -> ActionOutcome:
        url = self._url(request)
        key = self._key(request)
        with store_errors_are_transient(request):
            sent = self._store.read(
                "SELECT status_code, sent_at FROM webhook_sends WHERE idempotency_key = ?",
                (request.idempotency_key,),
            )
        if sent:
            return ActionOutcome(
                OutcomeStatus.ALREADY_DONE,
                f"already sent at {sent[0][1]} (HTTP {sent[0][0]})",
                reference=f"HTTP {sent[0][0]}",
            )
        body = payload(request, fact)
        now = self._clock()
        timestamp = int(now.timestamp())
        headers = {
            "content-type": "application/json",
            "webhook-id": request.idempotency_key,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(key, request.idempotency_key, timestamp, body),
        }
        target = display_url(url)
        status, retry_header, excerpt = self._post(request, url, target, body, headers)
        if 200 <= status < 300:
            with store_errors_are_transient(request), self._store.write() as cur:
                cur.execute(
                    "INSERT INTO webhook_sends (idempotency_key, url, event_uuid, rule_id, "
                    "action_id, status_code, sent_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (idempotency_key) DO NOTHING",
                    (request.idempotency_key, target, fact.uuid, request.rule_id,
                     request.action_id, status, format_utc(now)),
                )
            return ActionOutcome(
                OutcomeStatus.DONE, f"POST {target}: HTTP {status}", reference=f"HTTP {status}"
            )
        message = f"{where(request)}: POST {target}: HTTP {status}"
        if excerpt:
            message += f": {excerpt}"
        if status in (408, 429) or status >= 500:
            raise TransientActionError(message, parse_retry_after(retry_header, now))
        raise PermanentActionError(message)

    def _post(
        self, request: ActionRequest, url: httpx.URL, target: str, body: bytes,
        headers: dict[str, str],
    ) -> tuple[int, str | None, str]:
        """(status, Retry-After header, start of the reply) of one POST."""
        try:
            with self._http.stream("POST", url, content=body, headers=headers) as response:
                excerpt = b""
                for chunk in response.iter_bytes():
                    excerpt += chunk
                    if len(excerpt) >= _REPLY_EXCERPT:
                        break
                return response.status_code, response.headers.get("retry-after"), _excerpt(excerpt)
        except httpx.TimeoutException as exc:
            raise TransientActionError(
                f"{where(request)}: POST {target}: timed out ({type(exc).__name__})"
            ) from exc
        except (httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
            raise PermanentActionError(
                f"{where(request)}: POST {target}: {type(exc).__name__}"
            ) from exc
        except httpx.HTTPError as exc:
            raise TransientActionError(
                f"{where(request)}: POST {target}: {type(exc).__name__}: {exc}"
            ) from exc

    def _url(self, request: ActionRequest) -> httpx.URL:
        text = required_text(request, "url", max_length=2048)
        try:
            url = httpx.URL(text)
        except httpx.InvalidURL:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            raise PermanentActionError(f"{where(request)}: params.url must be an http(s) URL")
        return url

    def _key(self, request: ActionRequest) -> bytes:
        name = required_text(request, "secret")
        key = self._keys.get(name)
        if key is None:
            known = ", ".join(sorted(self._keys)) or "none"
            raise PermanentActionError(
                f"{where(request)}: params.secret {name!r} is not a configured webhook secret "
                f"(configured: {known})"
            )
        return key


def _excerpt(data: bytes) -> str:
    return " ".join(data[:_REPLY_EXCERPT].decode("utf-8", "replace").split())
