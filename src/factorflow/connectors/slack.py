"""The ``slack`` connector: a Block Kit message in a Slack channel.

Two modes, chosen by which secret is configured:

* **Bot token** (``bot_token`` / ``bot_token_file``): the Web API through the official
  ``slack-sdk`` ``WebClient``. ``chat.postMessage`` posts the message with message metadata
  ``{"event_type": "factorflow_action", "event_payload": {"idempotency_key": ...,
  "event_uuid": ...}}``. Before posting, ``conversations.history`` (with
  ``include_all_metadata``) is searched over the last ``dedup_window_hours`` (at most
  ``dedup_history_limit`` messages) for a message carrying the same idempotency key; if one is
  found the action is ALREADY_DONE with that message's ``ts``. This covers a crash between the
  post and the pipeline's own record. History takes channel IDs only, so a channel given by name
  is resolved once with ``conversations.list`` (and remembered).
* **Incoming webhook** (``webhook_url`` / ``webhook_url_file``): a POST of ``{text, blocks}``
  to the webhook, which posts to the channel chosen when the webhook was created
  (``params.channel`` cannot change it and is ignored). A webhook cannot be searched, so
  de-duplication is best effort: the pipeline does not repeat a recorded send, and a crash
  between the POST and that record can post once more. The message's footer carries the
  idempotency key so that such a duplicate can be recognised.

Failures: Slack answers most errors with HTTP 200 and ``{"ok": false, "error": "..."}``.
``ratelimited`` (HTTP 429 with ``Retry-After``), ``internal_error``, ``fatal_error``,
``service_unavailable``, ``request_timeout`` and any HTTP 5xx are transient; every other error
code (``invalid_auth``, ``channel_not_found``, ``not_in_channel``, ``invalid_blocks``,
``missing_scope``, ...) is permanent. The SDK's own retry handlers are turned off: the
pipeline's retries (with backoff, honouring ``Retry-After``) are the only ones, so a 429 is never
waited out inside a step.
"""

from __future__ import annotations

import functools
import http.client
import math
import re
import threading
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from pydantic import Field, SecretStr, field_validator
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError, SlackRequestError
from slack_sdk.web import SlackResponse

from factorflow.actions.base import ActionHandler
from factorflow.connectors.base import (
    Clock,
    ConnectorSettings,
    check_url,
    param,
    parse_retry_after,
    post_to_secret_url,
    secret_value,
    shown_url,
    where,
)
from factorflow.connectors.text import clip, event_sentence, event_title, fact_fields, text_param
from factorflow.domain.actions import ActionOutcome, ActionRequest, OutcomeStatus
from factorflow.domain.facts import Fact
from factorflow.errors import ConfigError, PermanentActionError, TransientActionError

KIND = "slack"
METADATA_EVENT_TYPE = "factorflow_action"
DEFAULT_BASE_URL = "https://slack.com/api/"
TRANSIENT_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
_CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]{6,}")
_HISTORY_PAGE = 200  # Slack recommends no more than 200 results a page
_LIST_PAGE = 1000
_LIST_PAGES = 50
_HEADER_MAX = 150  # Block Kit limits
_SECTION_MAX = 3000
_FIELD_MAX = 2000


class SlackSettings(ConnectorSettings):
    """``[connectors.slack]``: ``bot_token`` (Web API) or ``webhook_url`` (incoming webhook)."""

    bot_token: SecretStr | None = None
    bot_token_file: Path | None = None
    webhook_url: SecretStr | None = None
    webhook_url_file: Path | None = None
    base_url: str = DEFAULT_BASE_URL
    channel: str | None = None  # when a rule names none (bot token mode)
    dedup_lookup: bool = True
    dedup_window_hours: float = Field(default=24.0, gt=0, le=24 * 90)
    dedup_history_limit: int = Field(default=200, ge=1, le=5000)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        try:
            check_url(value, "base_url", secret=False)
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("base_url: ")) from None
        return value if value.endswith("/") else value + "/"

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value.strip() if value is not None else None


# -- the message ---------------------------------------------------------------------------


def escape(text: str) -> str:
    """Slack's three control characters in text that comes from the event."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def blocks(request: ActionRequest, fact: Fact) -> tuple[str, list[dict[str, Any]]]:
    """(fallback text, Block Kit blocks). The rule's ``text`` is Slack mrkdwn as written (it may
    mention people or link); everything taken from the event is escaped."""
    title = text_param(request, "title", event_title(fact))
    text = text_param(request, "text", escape(event_sentence(fact)))
    fields = [
        {"type": "mrkdwn", "text": clip(f"*{label}*\n{escape(value)}", _FIELD_MAX)}
        for label, value in fact_fields(fact)
    ]
    footer = (f"factorflow · Okta event `{escape(fact.uuid)}` · "
              f"key `{request.idempotency_key}`")
    return text, [
        {"type": "header",
         "text": {"type": "plain_text", "text": clip(title, _HEADER_MAX), "emoji": True}},
        {"type": "section", "text": {"type": "mrkdwn", "text": clip(text, _SECTION_MAX)}},
        {"type": "section", "fields": fields},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": footer}]},
    ]


def metadata(request: ActionRequest, fact: Fact) -> dict[str, Any]:
    return {
        "event_type": METADATA_EVENT_TYPE,
        "event_payload": {"idempotency_key": request.idempotency_key, "event_uuid": fact.uuid},
    }


def carries(message: Mapping[str, Any], key: str) -> bool:
    """Whether a history message is ours for this idempotency key."""
    meta = message.get("metadata")
    if not isinstance(meta, Mapping) or meta.get("event_type") != METADATA_EVENT_TYPE:
        return False
    payload = meta.get("event_payload")
    return isinstance(payload, Mapping) and payload.get("idempotency_key") == key


# -- errors --------------------------------------------------------------------------------


def _header(response: SlackResponse, name: str) -> str | None:
    for key, value in (response.headers or {}).items():
        if key.lower() == name:
            return value[0] if isinstance(value, list) and value else str(value)
    return None


def api_error(request: ActionRequest, method: str, response: SlackResponse,
              clock: Clock) -> TransientActionError | PermanentActionError:
    """The exception for a Slack API answer that is not ``ok``."""
    status = response.status_code
    data = response.data if isinstance(response.data, dict) else {}
    error = str(data.get("error") or "no error code")
    message = f"{where(request)}: Slack {method}: HTTP {status}: {error[:200]}"
    needed = data.get("needed")
    if isinstance(needed, str) and needed:
        message += f" (the token lacks scope {needed})"
    if status in (408, 429) or status >= 500 or error in TRANSIENT_ERRORS:
        retry_after = parse_retry_after(_header(response, "retry-after"), clock())
        return TransientActionError(message, retry_after)
    return PermanentActionError(message)


# -- bot token mode ------------------------------------------------------------------------


class SlackHandler:
    """``kind: slack`` with a bot token. Params: ``channel`` (ID such as ``C0123ABCD`` or name
    such as ``#security``; required unless ``connectors.slack.channel`` is set), ``text``
    (mrkdwn) and ``title`` (optional: built from the fact when absent)."""

    kind = KIND

    def __init__(self, client: WebClient, settings: SlackSettings, clock: Clock) -> None:
        self._client = client
        self._settings = settings
        self._clock = clock
        self._ids: dict[str, str] = {}
        self._ids_lock = threading.Lock()

    def perform(self, request: ActionRequest, fact: Fact) -> ActionOutcome:
        channel = self._channel(request)
        text, content = blocks(request, fact)
        target = channel
        if self._settings.dedup_lookup:
            target = self._channel_id(request, channel)
            ts = self._find(request, target)
            if ts is not None:
                return ActionOutcome(
                    OutcomeStatus.ALREADY_DONE,
                    f"already posted to {channel} (message ts {ts})", reference=ts,
                )
        response = self._api(request, "chat.postMessage", lambda: self._client.chat_postMessage(
            channel=target, text=text, blocks=content, metadata=metadata(request, fact),
            unfurl_links=False, unfurl_media=False,
        ))
        ts = response.get("ts")
        posted_in = response.get("channel") or target
        return ActionOutcome(
            OutcomeStatus.DONE, f"posted to {channel} ({posted_in}) as message ts {ts}",
            reference=str(ts) if ts is not None else None,
        )

    def _channel(self, request: ActionRequest) -> str:
        value = param(request, "channel", self._settings.channel)
        if value is None or not isinstance(value, str) or not value.strip():
            raise PermanentActionError(
                f"{where(request)}: params.channel is required (no connectors.slack.channel "
                f"is configured)"
            )
        return value.strip()

    def _channel_id(self, request: ActionRequest, channel: str) -> str:
        """The conversation ID of a channel given by ID or by name (looked up once)."""
        if _CHANNEL_ID.fullmatch(channel):
            return channel
        name = channel.removeprefix("#")
        with self._ids_lock:
            known = self._ids.get(name)
        if known is not None:
            return known
        cursor: str | None = None
        for _ in range(_LIST_PAGES):
            page = self._api(request, "conversations.list", functools.partial(
                self._client.conversations_list,
                types="public_channel,private_channel", exclude_archived=True,
                limit=_LIST_PAGE, cursor=cursor,
            ))
            for item in page.get("channels") or []:
                if isinstance(item, Mapping) and item.get("name") == name and item.get("id"):
                    with self._ids_lock:
                        self._ids[name] = str(item["id"])
                    return str(item["id"])
            cursor = _next_cursor(page)
            if not cursor:
                break
        raise PermanentActionError(
            f"{where(request)}: Slack channel {channel} not found (a private channel is "
            f"visible only once the app is invited; or give the channel ID)"
        )

    def _find(self, request: ActionRequest, channel_id: str) -> str | None:
        """The ts of a recent message in the channel that carries this idempotency key."""
        oldest = self._clock() - timedelta(hours=self._settings.dedup_window_hours)
        remaining = self._settings.dedup_history_limit
        cursor: str | None = None
        while remaining > 0:
            page = self._api(request, "conversations.history", functools.partial(
                self._client.conversations_history,
                channel=channel_id, oldest=f"{oldest.timestamp():.6f}",
                limit=min(remaining, _HISTORY_PAGE), include_all_metadata=True, cursor=cursor,
            ))
            messages = [m for m in page.get("messages") or [] if isinstance(m, Mapping)]
            for found in messages:
                if carries(found, request.idempotency_key) and found.get("ts"):
                    return str(found["ts"])
            remaining -= max(len(messages), 1)
            cursor = _next_cursor(page)
            if not page.get("has_more") or not cursor:
                break
        return None

    def _api(self, request: ActionRequest, method: str,
             send: Callable[[], SlackResponse]) -> SlackResponse:
        label = f"{where(request)}: Slack {method}"
        try:
            return send()
        except SlackApiError as exc:
            raise api_error(request, method, exc.response, self._clock) from None
        except SlackRequestError as exc:
            raise PermanentActionError(f"{label}: {type(exc).__name__}") from None
        except SlackClientError as exc:
            raise TransientActionError(f"{label}: {type(exc).__name__}") from None
        except TimeoutError as exc:
            raise TransientActionError(f"{label}: timed out") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise TransientActionError(f"{label}: {type(exc).__name__}: {exc}") from exc
        except ValueError as exc:  # a body that is not JSON, from something that is not Slack
            raise TransientActionError(
                f"{label}: unreadable answer ({type(exc).__name__})"
            ) from exc


def _next_cursor(page: SlackResponse) -> str | None:
    meta = page.get("response_metadata")
    cursor = meta.get("next_cursor") if isinstance(meta, Mapping) else None
    return cursor if isinstance(cursor, str) and cursor else None


# -- incoming webhook mode -----------------------------------------------------------------


class SlackWebhookHandler:
    """``kind: slack`` with an incoming webhook: params ``text`` and ``title`` as above;
    ``channel`` is ignored (the webhook decides)."""

    kind = KIND

    def __init__(self, http: httpx.Client, url: str, clock: Clock, timeout: float) -> None:
        self._http = http
        self._url = url
        self._clock = clock
        self._timeout = timeout

    def perform(self, request: ActionRequest, fact: Fact) -> ActionOutcome:
        text, content = blocks(request, fact)
        shown = f"Slack incoming webhook ({shown_url(self._url)})"
        response = post_to_secret_url(
            self._http, self._url, request, shown=shown, clock=self._clock,
            json={"text": text, "blocks": content}, timeout=self._timeout,
        )
        detail = f"posted to {shown}: HTTP {response.status_code}"
        if param(request, "channel") is not None:
            detail += " (params.channel ignored: the webhook decides the channel)"
        return ActionOutcome(OutcomeStatus.DONE, detail,
                             reference=f"HTTP {response.status_code}")


# -- factory -------------------------------------------------------------------------------


class SlackFactory:
    kind = KIND
    settings_model = SlackSettings

    def create(self, settings: SlackSettings, http: httpx.Client, clock: Clock) -> ActionHandler:
        key = f"connectors.{KIND}"
        token = secret_value(settings.bot_token, settings.bot_token_file, f"{key}.bot_token")
        webhook = secret_value(settings.webhook_url, settings.webhook_url_file,
                               f"{key}.webhook_url")
        if token is not None and webhook is not None:
            raise ConfigError(
                f"{key}.bot_token and {key}.webhook_url are both set; set one of them"
            )
        if webhook is not None:
            check_url(webhook, f"{key}.webhook_url", secret=True)
            return SlackWebhookHandler(http, webhook, clock, settings.timeout_seconds)
        if token is None:
            raise ConfigError(
                f"{key}.bot_token: required (or bot_token_file; or webhook_url for an "
                f"incoming webhook)"
            )
        if any(ch.isspace() for ch in token):
            raise ConfigError(f"{key}.bot_token: must not contain whitespace")
        client = WebClient(
            token=token, base_url=settings.base_url,
            timeout=max(1, math.ceil(settings.timeout_seconds)),
            retry_handlers=[],  # the pipeline retries, honouring Retry-After
        )
        return SlackHandler(client, settings, clock)


FACTORY = SlackFactory()
