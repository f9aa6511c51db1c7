"""The Slack connector against a local Slack double on 127.0.0.1.

The double speaks the documented Web API shapes the connector uses: ``chat.postMessage`` (JSON
body: ``channel``, ``text``, ``blocks``, ``metadata``; answer ``{"ok": true, "channel", "ts",
"message"}``), ``conversations.history`` (form body: ``channel`` ID, ``oldest``, ``limit``,
``cursor``, ``include_all_metadata``; answer ``messages`` newest first, ``has_more``,
``response_metadata.next_cursor``; message ``metadata`` only with ``include_all_metadata``) and
``conversations.list``. It checks the bearer token and answers errors as Slack does: HTTP 200
with ``{"ok": false, "error": ...}`` (``invalid_auth``, ``channel_not_found``, ``not_in_channel``,
``invalid_blocks``, ``missing_scope`` with ``needed``), and 429 ``ratelimited`` with
``Retry-After``. It also serves an incoming webhook (``/services/T.../B.../secret``) that
answers ``ok`` or Slack's plain-text webhook errors. Tests queue one-off answers per API method.
"""

from __future__ import annotations

import base64
import dataclasses
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from factorflow.actions.base import ActionHandler
from factorflow.connectors.registry import build_connectors
from factorflow.domain.actions import ActionRequest, Enrichment, OutcomeStatus, idempotency_key
from factorflow.domain.facts import Fact, Person
from factorflow.errors import ConfigError, PermanentActionError, TransientActionError
from factorflow.rules import evaluate, parse_rules
from tests.conftest import WATCHED_SECRETS
from tests.connectors.fakes import (
    FACT,
    STALL,
    Double,
    Got,
    Reply,
    header_names,
    json_reply,
    serving,
    unused_port,
)

BOT_TOKEN = "xoxb-1111111111-2222222222-SlackDoubleBotTokenValue"
WEBHOOK_PATH = "/services/T0ORG0001/B0HOOK0001/WebhookSecretPart0123456789"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SECOPS = "C0SECOPS01"  # the bot is a member
ALERTS = "C0ALERTS01"  # the bot is a member
LOUNGE = "C0LOUNGE01"  # the bot was never invited
WATCHED_SECRETS.update({BOT_TOKEN, WEBHOOK_PATH.rsplit("/", 1)[1]})  # never in a log line


def _json_reply(status: int, data: dict[str, Any], **headers: str) -> Reply:
    return json_reply(status, data, content_type="application/json; charset=utf-8", **headers)


def _cursor(offset: int) -> str:
    return base64.b64encode(f"offset:{offset}".encode()).decode()


def _offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    return int(base64.b64decode(cursor).decode().split(":")[1])


class FakeSlack(Double):
    """Channels with their messages (newest last), the bot's memberships, and what came in."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.channels: dict[str, dict[str, Any]] = {
            SECOPS: {"name": "security-operations", "private": False, "member": True},
            ALERTS: {"name": "identity-alerts", "private": True, "member": True},
            LOUNGE: {"name": "lounge", "private": False, "member": False},
        }
        self.messages: dict[str, list[dict[str, Any]]] = {cid: [] for cid in self.channels}
        self.webhook_posts: list[dict[str, Any]] = []
        self.scopes = {"chat:write", "channels:history", "groups:history", "channels:read",
                       "groups:read"}
        self.clock = NOW.timestamp()

    # -- test controls

    def then(self, method: str, status: int, body: dict[str, Any] | bytes,
             **headers: str) -> None:
        """A one-off answer to the next call of an API ``method`` (or of the ``webhook``);
        status STALL: no answer."""
        path = WEBHOOK_PATH if method == "webhook" else f"/api/{method}"
        if status == STALL:
            self.server.stall(path=path)
            return
        named = header_names(headers)
        if method == "webhook":
            named = {"content-type": "text/html", **named}
        elif not isinstance(body, bytes):
            named = {"content-type": "application/json; charset=utf-8", **named}
        self.server.then(status, body, headers=named, path=path)

    def add_message(self, channel: str, ts: float, *, text: str = "hello",
                    meta: dict[str, Any] | None = None) -> None:
        message: dict[str, Any] = {"type": "message", "user": "U0HUMAN001", "text": text,
                                   "ts": f"{ts:.6f}"}
        if meta is not None:
            message["metadata"] = meta
        self.messages[channel].append(message)

    def calls(self, method: str) -> list[dict[str, Any]]:
        return [got.params() for got in self.received if got.path == f"/api/{method}"]

    def ours(self, channel: str) -> list[dict[str, Any]]:
        return [m for m in self.messages[channel] if m.get("bot_id") == "B0FACTOR01"]

    # -- the API

    def __call__(self, got: Got) -> Reply:
        if got.path == WEBHOOK_PATH:
            return self._webhook(got)
        if not got.path.startswith("/api/"):
            return 404, {"content-type": "text/plain"}, b"Not Found"
        method = got.path.removeprefix("/api/")
        authorization = got.headers.get("authorization")
        if authorization is None:
            return _json_reply(200, {"ok": False, "error": "not_authed"})
        if authorization != f"Bearer {BOT_TOKEN}":
            return _json_reply(200, {"ok": False, "error": "invalid_auth"})
        handler: Callable[[dict[str, Any]], Reply] | None = {
            "chat.postMessage": self._post,
            "conversations.history": self._history,
            "conversations.list": self._list,
        }.get(method)
        if handler is None:
            return _json_reply(404, {"ok": False, "error": "unknown_method"})
        with self.lock:
            return handler(got.params())

    def _need(self, scope: str) -> Reply | None:
        if scope in self.scopes:
            return None
        return _json_reply(200, {"ok": False, "error": "missing_scope", "needed": scope,
                                 "provided": ",".join(sorted(self.scopes))})

    def _by_name_or_id(self, channel: str) -> str | None:
        if channel in self.channels:
            return channel
        name = channel.removeprefix("#")
        return next((cid for cid, c in self.channels.items() if c["name"] == name), None)

    def _post(self, args: dict[str, Any]) -> Reply:
        if (missing := self._need("chat:write")) is not None:
            return missing
        cid = self._by_name_or_id(str(args.get("channel", "")))
        if cid is None:
            return _json_reply(200, {"ok": False, "error": "channel_not_found"})
        if not self.channels[cid]["member"]:
            return _json_reply(200, {"ok": False, "error": "not_in_channel"})
        problems = _block_problems(args.get("blocks"))
        if problems:
            return _json_reply(200, {"ok": False, "error": "invalid_blocks",
                                     "errors": problems})
        if not args.get("text") and not args.get("blocks"):
            return _json_reply(200, {"ok": False, "error": "no_text"})
        self.clock += 1.0
        message: dict[str, Any] = {
            "type": "message", "subtype": "bot_message", "bot_id": "B0FACTOR01",
            "app_id": "A0FACTOR01", "text": args.get("text", ""), "blocks": args.get("blocks"),
            "ts": f"{self.clock:.6f}",
        }
        meta = args.get("metadata")
        if isinstance(meta, dict) and meta.get("event_type"):
            message["metadata"] = meta
        self.messages[cid].append(message)
        return _json_reply(200, {"ok": True, "channel": cid, "ts": message["ts"],
                                 "message": message})

    def _history(self, args: dict[str, Any]) -> Reply:
        cid = str(args.get("channel", ""))
        if cid not in self.channels:  # history takes IDs only
            return _json_reply(200, {"ok": False, "error": "channel_not_found"})
        scope = "groups:history" if self.channels[cid]["private"] else "channels:history"
        if (missing := self._need(scope)) is not None:
            return missing
        if not self.channels[cid]["member"]:
            return _json_reply(200, {"ok": False, "error": "not_in_channel"})
        oldest = float(args.get("oldest") or 0)
        limit = min(int(args.get("limit") or 100), 999)
        with_meta = str(args.get("include_all_metadata", "")).lower() in ("1", "true")
        newest_first = [m for m in reversed(self.messages[cid]) if float(m["ts"]) > oldest]
        start = _offset(args.get("cursor"))
        page = newest_first[start:start + limit]
        if not with_meta:
            page = [{k: v for k, v in m.items() if k != "metadata"} for m in page]
        more = start + limit < len(newest_first)
        return _json_reply(200, {
            "ok": True, "messages": page, "has_more": more, "pin_count": 0,
            "channel_actions_ts": None, "channel_actions_count": 0,
            "response_metadata": {"next_cursor": _cursor(start + limit) if more else ""},
        })

    def _list(self, args: dict[str, Any]) -> Reply:
        if (missing := self._need("channels:read")) is not None:
            return missing
        limit = int(args.get("limit") or 100)
        start = _offset(args.get("cursor"))
        items = [
            {"id": cid, "name": c["name"], "is_channel": True, "is_private": c["private"],
             "is_member": c["member"], "is_archived": False}
            for cid, c in self.channels.items()
            if not c["private"] or c["member"]  # private channels show to members only
        ]
        page = items[start:start + limit]
        more = start + limit < len(items)
        return _json_reply(200, {
            "ok": True, "channels": page,
            "response_metadata": {"next_cursor": _cursor(start + limit) if more else ""},
        })

    def _webhook(self, got: Got) -> Reply:
        try:
            data = orjson.loads(got.body)
        except orjson.JSONDecodeError:
            return 400, {"content-type": "text/html"}, b"invalid_payload"
        if not isinstance(data, dict) or not (data.get("text") or data.get("blocks")):
            return 400, {"content-type": "text/html"}, b"no_text"
        with self.lock:
            self.webhook_posts.append(data)
        return 200, {"content-type": "text/html"}, b"ok"


def _block_problems(blocks: Any) -> list[str]:
    """Block Kit checks for the blocks the connector sends (types and documented limits)."""
    if blocks is None:
        return []
    if not isinstance(blocks, list) or len(blocks) > 50:
        return ["must be an array of at most 50 blocks [json-pointer:/blocks]"]
    problems = []
    for i, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "header":
            text = block.get("text", {})
            if text.get("type") != "plain_text" or not 0 < len(text.get("text", "")) <= 150:
                problems.append(f"invalid header text [json-pointer:/blocks/{i}/text]")
        elif kind == "section":
            text, fields = block.get("text"), block.get("fields")
            if text is None and not fields:
                problems.append(f"must provide text or fields [json-pointer:/blocks/{i}]")
            if text is not None and not 0 < len(text.get("text", "")) <= 3000:
                problems.append(f"must be 1-3000 characters [json-pointer:/blocks/{i}/text]")
            if fields is not None and (len(fields) > 10 or any(
                    not 0 < len(f.get("text", "")) <= 2000 for f in fields)):
                problems.append(f"invalid fields [json-pointer:/blocks/{i}/fields]")
        elif kind == "context":
            if not 0 < len(block.get("elements", [])) <= 10:
                problems.append(f"invalid elements [json-pointer:/blocks/{i}/elements]")
        else:
            problems.append(f"unsupported type [json-pointer:/blocks/{i}/type]")
    return problems


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with serving(FakeSlack()) as fake:
        yield fake


# -- helpers -------------------------------------------------------------------------------

LATER = NOW + timedelta(minutes=5)


def section(fake: FakeSlack, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"bot_token": BOT_TOKEN, "base_url": f"{fake.url}/api/"}
    values.update(overrides)
    return {key: value for key, value in values.items() if value is not None}


def connector(fake: FakeSlack, http: httpx.Client, *, clock: datetime = LATER,
              **overrides: Any) -> ActionHandler:
    (handler,) = build_connectors({"slack": section(fake, **overrides)}, http, lambda: clock)
    return handler


def webhook_connector(fake: FakeSlack, http: httpx.Client) -> ActionHandler:
    (handler,) = build_connectors({"slack": {"webhook_url": fake.url + WEBHOOK_PATH}}, http,
                                  lambda: LATER)
    return handler


def request(params: dict[str, Any] | None = None, *, action_id: str = "notify") -> ActionRequest:
    return ActionRequest(
        rule_id="admin-enrolled", action_id=action_id, kind="slack", params=params or {},
        idempotency_key=idempotency_key(FACT.uuid, "admin-enrolled", action_id),
    )


def meta_of(req: ActionRequest, fact: Fact = FACT) -> dict[str, Any]:
    return {"event_type": "factorflow_action",
            "event_payload": {"idempotency_key": req.idempotency_key, "event_uuid": fact.uuid}}


# -- the request Slack receives ------------------------------------------------------------

RULES = """
version: 1
match: all
rules:
  - id: admin-enrolled
    when: {kind: [enrollment]}
    actions:
      - id: notify
        kind: slack
        params:
          channel: "C0SECOPS01"
          title: "Factor enrolled: {{ fact.factor.type }}"
          text: ":key: <mailto:{{ fact.user.login }}|{{ fact.user.login }}> enrolled {{ fact.factor.type }}"
"""  # noqa: E501


def test_a_rule_action_becomes_one_block_kit_message_with_metadata(
    slack: FakeSlack, http: httpx.Client
) -> None:
    decision = evaluate(parse_rules(RULES, source="rules.yaml"), FACT,
                        Enrichment(source="none", found=False))
    (action,) = decision.actions
    outcome = connector(slack, http).perform(action, FACT)

    (posted,) = slack.ours(SECOPS)
    assert outcome.status is OutcomeStatus.DONE
    assert outcome.reference == posted["ts"]
    assert outcome.detail == f"posted to {SECOPS} ({SECOPS}) as message ts {posted['ts']}"
    history, post = slack.received
    for sent in (history, post):
        assert sent.method == "POST"
        assert sent.headers["authorization"] == f"Bearer {BOT_TOKEN}"
    # first the de-duplication lookup, over the window before the clock
    assert history.path == "/api/conversations.history"
    assert history.params() == {
        "channel": SECOPS, "oldest": f"{(LATER - timedelta(hours=24)).timestamp():.6f}",
        "limit": "200", "include_all_metadata": "1",
    }
    # then the message
    assert post.path == "/api/chat.postMessage"
    assert post.headers["content-type"].startswith("application/json")
    text = ":key: <mailto:aps@google.com|aps@google.com> enrolled email"
    assert post.params() == {
        "channel": SECOPS,
        "text": text,
        "blocks": [
            {"type": "header",
             "text": {"type": "plain_text", "text": "Factor enrolled: email", "emoji": True}},
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "section", "fields": [
                {"type": "mrkdwn", "text": "*User*\naps@google.com"},
                {"type": "mrkdwn", "text": "*Factor*\nemail"},
                {"type": "mrkdwn", "text": "*Strength*\nsms_voice_email"},
                {"type": "mrkdwn", "text": "*Enrolled by*\nself"},
                {"type": "mrkdwn", "text": "*Time*\n2023-01-30T14:18:01.558000Z"},
            ]},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": (
                f"factorflow · Okta event `{FACT.uuid}` · key `{action.idempotency_key}`")}]},
        ],
        "metadata": meta_of(action),
        "unfurl_links": False,
        "unfurl_media": False,
    }
    assert posted["metadata"] == meta_of(action)


def test_without_text_the_message_is_built_from_the_fact_and_escaped(
    slack: FakeSlack, http: httpx.Client
) -> None:
    odd = dataclasses.replace(
        FACT, user=Person("00u1", "r&d<lead>@example.com", "R&D lead", "User"),
        actor=Person("00uADMIN", "helpdesk@example.com", "Helpdesk", "User"),
        enrolled_by=FACT.enrolled_by.__class__("admin"),
    )
    req = request({"channel": SECOPS})
    connector(slack, http).perform(req, odd)

    (post,) = slack.calls("chat.postMessage")
    expected = ("r&amp;d&lt;lead&gt;@example.com enrolled email (sms_voice_email), "
                "by admin helpdesk@example.com")
    assert post["text"] == expected
    assert post["blocks"][0]["text"]["text"] == "MFA factor enrolled"
    assert post["blocks"][1]["text"]["text"] == expected
    assert post["blocks"][2]["fields"][0]["text"] == "*User*\nr&amp;d&lt;lead&gt;@example.com"
    assert post["blocks"][2]["fields"][3]["text"] == "*Enrolled by*\nadmin (helpdesk@example.com)"


def test_a_long_title_and_text_are_cut_to_the_block_kit_limits(
    slack: FakeSlack, http: httpx.Client
) -> None:
    outcome = connector(slack, http).perform(
        request({"channel": SECOPS, "title": "T" * 400, "text": "x" * 5000}), FACT)

    assert outcome.status is OutcomeStatus.DONE
    (post,) = slack.calls("chat.postMessage")
    assert post["blocks"][0]["text"]["text"] == "T" * 149 + "…"
    assert post["blocks"][1]["text"]["text"] == "x" * 2999 + "…"
    assert post["text"] == "x" * 5000  # the notification text has no block limit


def test_the_default_channel_of_the_settings_is_used_when_the_rule_names_none(
    slack: FakeSlack, http: httpx.Client
) -> None:
    outcome = connector(slack, http, channel=ALERTS).perform(request(), FACT)

    assert outcome.status is OutcomeStatus.DONE
    assert len(slack.ours(ALERTS)) == 1
    assert slack.calls("conversations.history")[0]["channel"] == ALERTS


# -- one message per step ------------------------------------------------------------------


def test_the_same_step_twice_posts_one_message(slack: FakeSlack, http: httpx.Client) -> None:
    handler = connector(slack, http)
    req = request({"channel": SECOPS, "text": "once"})
    first = handler.perform(req, FACT)
    second = handler.perform(req, FACT)

    (posted,) = slack.ours(SECOPS)
    assert first.status is OutcomeStatus.DONE
    assert second.status is OutcomeStatus.ALREADY_DONE
    assert first.reference == second.reference == posted["ts"]
    assert second.detail == f"already posted to {SECOPS} (message ts {posted['ts']})"
    assert len(slack.calls("chat.postMessage")) == 1


def test_a_crash_after_the_post_is_answered_by_a_fresh_instance_finding_the_message(
    slack: FakeSlack, http: httpx.Client
) -> None:
    req = request({"channel": "#security-operations", "text": "once"})
    first = connector(slack, http).perform(req, FACT)
    # the process died before the pipeline recorded the result; a new process runs the step
    again = connector(slack, http, clock=LATER + timedelta(hours=2)).perform(req, FACT)

    (posted,) = slack.ours(SECOPS)
    assert first.status is OutcomeStatus.DONE
    assert again.status is OutcomeStatus.ALREADY_DONE
    assert again.reference == posted["ts"]
    assert again.detail == f"already posted to #security-operations (message ts {posted['ts']})"
    # each instance resolved the name to the ID once (history takes IDs only)
    assert len(slack.calls("conversations.list")) == 2
    assert [c["channel"] for c in slack.calls("conversations.history")] == [SECOPS, SECOPS]


def test_a_post_whose_answer_is_lost_is_found_on_the_retry(
    slack: FakeSlack, http: httpx.Client
) -> None:
    handler = connector(slack, http)
    req = request({"channel": SECOPS})
    # Slack posted the message, but the answer never arrived: a 502 from a proxy on the way
    original = slack._post

    def post_then_fail(args: dict[str, Any]) -> Reply:
        original(args)
        return 502, {"content-type": "text/html"}, b"<html>502 Bad Gateway</html>"

    slack._post = post_then_fail  # type: ignore[method-assign]
    with pytest.raises(TransientActionError):
        handler.perform(req, FACT)
    slack._post = original  # type: ignore[method-assign]
    retried = handler.perform(req, FACT)

    (posted,) = slack.ours(SECOPS)
    assert retried.status is OutcomeStatus.ALREADY_DONE
    assert retried.reference == posted["ts"]


def test_other_actions_and_other_apps_metadata_do_not_count_as_ours(
    slack: FakeSlack, http: httpx.Client
) -> None:
    handler = connector(slack, http)
    first, other = request({"channel": SECOPS}), request({"channel": SECOPS}, action_id="page")
    slack.add_message(SECOPS, NOW.timestamp() - 10, meta={
        "event_type": "deploy_finished", "event_payload": {"idempotency_key":
                                                           other.idempotency_key}})
    slack.add_message(SECOPS, NOW.timestamp() - 5, text=f"about {other.idempotency_key}")
    outcomes = [handler.perform(first, FACT), handler.perform(other, FACT),
                handler.perform(first, FACT)]

    assert [o.status for o in outcomes] == [
        OutcomeStatus.DONE, OutcomeStatus.DONE, OutcomeStatus.ALREADY_DONE]
    assert [m["metadata"] for m in slack.ours(SECOPS)] == [meta_of(first), meta_of(other)]


def test_the_lookup_pages_through_a_busy_channel(slack: FakeSlack, http: httpx.Client) -> None:
    req = request({"channel": SECOPS})
    connector(slack, http).perform(req, FACT)
    for n in range(450):  # a busy channel buries our message
        slack.add_message(SECOPS, NOW.timestamp() + 100 + n)
    slack.received.clear()

    again = connector(slack, http, dedup_history_limit=1000).perform(req, FACT)

    assert again.status is OutcomeStatus.ALREADY_DONE
    pages = slack.calls("conversations.history")
    assert [p["limit"] for p in pages] == ["200", "200", "200"]
    assert [p.get("cursor") for p in pages] == [None, _cursor(200), _cursor(400)]
    assert len(slack.ours(SECOPS)) == 1


def test_the_lookup_is_bounded_by_its_window_and_its_limit(
    slack: FakeSlack, http: httpx.Client
) -> None:
    req = request({"channel": SECOPS})
    connector(slack, http).perform(req, FACT)
    for n in range(30):
        slack.add_message(SECOPS, NOW.timestamp() + 100 + n)
    slack.received.clear()

    # beyond the history limit: the message is not looked at, and a second one is posted
    beyond_limit = connector(slack, http, dedup_history_limit=25).perform(req, FACT)
    # beyond the window: the same
    beyond_window = connector(slack, http, clock=LATER + timedelta(hours=30),
                              dedup_window_hours=24).perform(req, FACT)

    assert beyond_limit.status is OutcomeStatus.DONE
    assert beyond_window.status is OutcomeStatus.DONE
    first_lookup, second_lookup = slack.calls("conversations.history")
    assert first_lookup["limit"] == "25"
    assert second_lookup["oldest"] == f"{(LATER + timedelta(hours=6)).timestamp():.6f}"
    assert len(slack.ours(SECOPS)) == 3


def test_without_the_lookup_only_the_message_is_sent(slack: FakeSlack, http: httpx.Client) -> None:
    outcome = connector(slack, http, dedup_lookup=False).perform(
        request({"channel": "#identity-alerts"}), FACT)

    assert outcome.status is OutcomeStatus.DONE
    assert [got.path for got in slack.received] == ["/api/chat.postMessage"]
    assert slack.calls("chat.postMessage")[0]["channel"] == "#identity-alerts"
    assert len(slack.ours(ALERTS)) == 1


# -- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "status", "body", "headers", "retry_after", "shown"), [
    ("chat.postMessage", 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "30"},
     30.0, "HTTP 429: ratelimited"),
    ("conversations.history", 429, {"ok": False, "error": "ratelimited"},
     {"Retry-After": "7"}, 7.0, "HTTP 429: ratelimited"),
    ("chat.postMessage", 200, {"ok": False, "error": "internal_error"}, {}, None,
     "HTTP 200: internal_error"),
    ("chat.postMessage", 200, {"ok": False, "error": "fatal_error"}, {}, None,
     "HTTP 200: fatal_error"),
    ("chat.postMessage", 200, {"ok": False, "error": "service_unavailable"}, {}, None,
     "HTTP 200: service_unavailable"),
    ("chat.postMessage", 500, {"ok": False, "error": "internal_error"}, {}, None,
     "HTTP 500: internal_error"),
    ("conversations.history", 503, b"<html><body>Service Unavailable</body></html>",
     {"Content-Type": "text/html", "Retry-After": "120"}, 120.0, "HTTP 503"),
])
def test_overload_and_server_errors_are_transient_with_retry_after(
    slack: FakeSlack, http: httpx.Client, method: str, status: int,
    body: dict[str, Any] | bytes, headers: dict[str, str], retry_after: float | None,
    shown: str,
) -> None:
    slack.then(method, status, body, **headers)
    with pytest.raises(TransientActionError) as caught:
        connector(slack, http).perform(request({"channel": SECOPS}), FACT)

    assert caught.value.retry_after == retry_after
    assert str(caught.value).startswith(
        f"slack action admin-enrolled/notify: Slack {method}: {shown}")
    assert BOT_TOKEN not in str(caught.value)
    assert slack.ours(SECOPS) == []
    # the retry goes through and posts once
    assert connector(slack, http).perform(request({"channel": SECOPS}), FACT).status is (
        OutcomeStatus.DONE)
    assert len(slack.ours(SECOPS)) == 1


def test_a_server_that_does_not_answer_in_time_is_transient(
    slack: FakeSlack, http: httpx.Client
) -> None:
    slack.then("conversations.history", STALL, {})
    with pytest.raises(TransientActionError) as caught:
        connector(slack, http, timeout_seconds=1).perform(request({"channel": SECOPS}), FACT)

    assert str(caught.value) == (
        "slack action admin-enrolled/notify: Slack conversations.history: timed out")
    assert slack.ours(SECOPS) == []


def test_a_server_that_is_down_is_transient(http: httpx.Client) -> None:
    port = unused_port()
    (handler,) = build_connectors({"slack": {
        "bot_token": BOT_TOKEN, "base_url": f"http://127.0.0.1:{port}/api/"}}, http,
        lambda: LATER)
    with pytest.raises(TransientActionError) as caught:
        handler.perform(request({"channel": SECOPS}), FACT)

    assert str(caught.value).startswith(
        "slack action admin-enrolled/notify: Slack conversations.history: URLError:")
    assert caught.value.retry_after is None


def test_a_wrong_token_is_permanent_and_stays_secret(slack: FakeSlack, http: httpx.Client) -> None:
    wrong = "xoxb-9999999999-8888888888-WrongTokenValue"
    with pytest.raises(PermanentActionError) as caught:
        connector(slack, http, bot_token=wrong).perform(request({"channel": SECOPS}), FACT)

    assert str(caught.value) == (
        "slack action admin-enrolled/notify: Slack conversations.history: HTTP 200: invalid_auth")
    assert wrong not in str(caught.value)
    assert slack.received[0].headers["authorization"] == f"Bearer {wrong}"
    assert slack.ours(SECOPS) == []


@pytest.mark.parametrize(("channel", "lookup", "method", "error"), [
    ("C0UNKNOWN9", True, "conversations.history", "channel_not_found"),
    ("C0UNKNOWN9", False, "chat.postMessage", "channel_not_found"),
    (LOUNGE, True, "conversations.history", "not_in_channel"),
    (LOUNGE, False, "chat.postMessage", "not_in_channel"),
])
def test_a_channel_the_bot_cannot_use_is_permanent(
    slack: FakeSlack, http: httpx.Client, channel: str, lookup: bool, method: str, error: str
) -> None:
    with pytest.raises(PermanentActionError) as caught:
        connector(slack, http, dedup_lookup=lookup).perform(request({"channel": channel}), FACT)

    assert str(caught.value) == (
        f"slack action admin-enrolled/notify: Slack {method}: HTTP 200: {error}")
    assert all(slack.messages[cid] == [] for cid in slack.channels)


def test_a_channel_name_that_cannot_be_found_is_permanent(
    slack: FakeSlack, http: httpx.Client
) -> None:
    with pytest.raises(PermanentActionError) as caught:
        connector(slack, http).perform(request({"channel": "#no-such-channel"}), FACT)

    assert str(caught.value) == (
        "slack action admin-enrolled/notify: Slack channel #no-such-channel not found "
        "(a private channel is visible only once the app is invited; or give the channel ID)")
    assert slack.calls("chat.postMessage") == []


def test_a_missing_scope_is_permanent_and_names_the_scope(
    slack: FakeSlack, http: httpx.Client
) -> None:
    slack.scopes.discard("groups:history")
    with pytest.raises(PermanentActionError) as caught:
        connector(slack, http).perform(request({"channel": ALERTS}), FACT)

    assert str(caught.value) == (
        "slack action admin-enrolled/notify: Slack conversations.history: HTTP 200: "
        "missing_scope (the token lacks scope groups:history)")
    assert slack.ours(ALERTS) == []


def test_blocks_slack_rejects_are_permanent(slack: FakeSlack, http: httpx.Client) -> None:
    slack.then("chat.postMessage", 200, {
        "ok": False, "error": "invalid_blocks",
        "errors": ["must be more than 0 characters [json-pointer:/blocks/1/text/text]"],
        "response_metadata": {"messages": [
            "[ERROR] must be more than 0 characters [json-pointer:/blocks/1/text/text]"]},
    })
    with pytest.raises(PermanentActionError) as caught:
        connector(slack, http).perform(request({"channel": SECOPS}), FACT)

    assert str(caught.value) == (
        "slack action admin-enrolled/notify: Slack chat.postMessage: HTTP 200: invalid_blocks")
    assert slack.ours(SECOPS) == []


def test_a_rule_without_a_channel_is_permanent_and_nothing_is_sent(
    slack: FakeSlack, http: httpx.Client
) -> None:
    with pytest.raises(PermanentActionError) as caught:
        connector(slack, http).perform(request({"text": "hi"}), FACT)

    assert str(caught.value) == (
        "slack action admin-enrolled/notify: params.channel is required "
        "(no connectors.slack.channel is configured)")
    assert slack.received == []


# -- incoming webhook mode -----------------------------------------------------------------


def test_an_incoming_webhook_gets_text_and_blocks(slack: FakeSlack, http: httpx.Client) -> None:
    req = request({"channel": "#ignored", "text": "hello *world*", "title": "Heads up"})
    outcome = webhook_connector(slack, http).perform(req, FACT)

    assert outcome.status is OutcomeStatus.DONE
    assert outcome.reference == "HTTP 200"
    assert outcome.detail == (
        "posted to Slack incoming webhook (http://127.0.0.1): HTTP 200 "
        "(params.channel ignored: the webhook decides the channel)")
    (got,) = slack.received
    assert (got.method, got.path) == ("POST", WEBHOOK_PATH)
    assert "authorization" not in got.headers
    assert got.headers["content-type"] == "application/json"
    (posted,) = slack.webhook_posts
    assert set(posted) == {"text", "blocks"}
    assert posted["text"] == "hello *world*"
    assert posted["blocks"][0]["text"]["text"] == "Heads up"
    assert posted["blocks"][3]["elements"][0]["text"].endswith(f"key `{req.idempotency_key}`")


def test_a_webhook_cannot_be_searched_so_a_repeat_posts_again_with_the_same_key(
    slack: FakeSlack, http: httpx.Client
) -> None:
    # Best effort by design: the pipeline's ledger prevents the repeat in normal operation;
    # only a crash between the POST and that record repeats it, and the key shows it.
    req = request({"text": "once"})
    outcomes = [webhook_connector(slack, http).perform(req, FACT) for _ in range(2)]

    assert [o.status for o in outcomes] == [OutcomeStatus.DONE, OutcomeStatus.DONE]
    footers = [p["blocks"][3]["elements"][0]["text"] for p in slack.webhook_posts]
    assert footers[0] == footers[1]
    assert req.idempotency_key in footers[0]


@pytest.mark.parametrize(("status", "body", "headers", "error", "retry_after"), [
    (400, b"invalid_payload", {}, PermanentActionError, None),
    (403, b"action_prohibited", {}, PermanentActionError, None),
    (404, b"channel_not_found", {}, PermanentActionError, None),
    (410, b"channel_is_archived", {}, PermanentActionError, None),
    (429, b"rate_limited", {"Retry-After": "3"}, TransientActionError, 3.0),
    (500, b"rollup_error", {}, TransientActionError, None),
])
def test_webhook_errors_follow_the_shared_split_and_hide_the_url(
    slack: FakeSlack, http: httpx.Client, status: int, body: bytes,
    headers: dict[str, str], error: type[Exception], retry_after: float | None,
) -> None:
    slack.then("webhook", status, body, **headers)
    with pytest.raises(error) as caught:
        webhook_connector(slack, http).perform(request(), FACT)

    assert str(caught.value) == (
        f"slack action admin-enrolled/notify: POST Slack incoming webhook (http://127.0.0.1): "
        f"HTTP {status}: {body.decode()}")
    assert "WebhookSecretPart" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert getattr(caught.value, "retry_after", None) == retry_after
    assert slack.webhook_posts == []


def test_a_webhook_that_is_down_is_transient_and_hides_the_url(http: httpx.Client) -> None:
    port = unused_port()
    (handler,) = build_connectors(
        {"slack": {"webhook_url": f"http://127.0.0.1:{port}{WEBHOOK_PATH}"}}, http, lambda: LATER)
    with pytest.raises(TransientActionError) as caught:
        handler.perform(request(), FACT)

    assert str(caught.value) == (
        "slack action admin-enrolled/notify: POST Slack incoming webhook (http://127.0.0.1): "
        "ConnectError")


# -- settings ------------------------------------------------------------------------------


def test_the_token_may_come_from_a_file(slack: FakeSlack, http: httpx.Client,
                                        tmp_path: Path) -> None:
    token_file = tmp_path / "slack-token"
    token_file.write_text(BOT_TOKEN + "\n", encoding="utf-8")
    outcome = connector(slack, http, bot_token=None, bot_token_file=str(token_file)).perform(
        request({"channel": SECOPS}), FACT)

    assert outcome.status is OutcomeStatus.DONE
    assert {got.headers["authorization"] for got in slack.received} == {f"Bearer {BOT_TOKEN}"}


@pytest.mark.parametrize(("values", "expected"), [
    ({}, "connectors.slack.bot_token: required (or bot_token_file; or webhook_url for an "
         "incoming webhook)"),
    ({"bot_token": BOT_TOKEN, "webhook_url": "https://hooks.slack.com/services/T/B/X"},
     "connectors.slack.bot_token and connectors.slack.webhook_url are both set; "
     "set one of them"),
    ({"bot_token": BOT_TOKEN, "bot_token_file": "token.txt"},
     "connectors.slack.bot_token and connectors.slack.bot_token_file are both set; "
     "set one of them"),
    ({"bot_token": "xoxb-has space"}, "connectors.slack.bot_token: must not contain whitespace"),
    ({"webhook_url": "http://hooks.slack.com/services/T/B/SECRETPART"},
     "connectors.slack.webhook_url: the URL must use https (http is accepted for a loopback "
     "address only)"),
    ({"webhook_url": "not a url at all SECRETPART"},
     "connectors.slack.webhook_url: the URL has no host"),
])
def test_invalid_settings_name_the_key(http: httpx.Client, values: dict[str, Any],
                                       expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_connectors({"slack": values}, http)

    assert str(caught.value) == expected
    assert "SECRETPART" not in str(caught.value)


@pytest.mark.parametrize(("values", "expected"), [
    ({"bot_token": BOT_TOKEN, "colour": "blue"},
     "connectors.slack.colour: Extra inputs are not permitted"),
    ({"bot_token": BOT_TOKEN, "base_url": "ftp://slack.example/api/"},
     "connectors.slack.base_url: Value error, 'ftp://slack.example/api/' must use https "
     "(http is accepted for a loopback address only)"),
    ({"bot_token": BOT_TOKEN, "dedup_history_limit": 0},
     "connectors.slack.dedup_history_limit: Input should be greater than or equal to 1"),
    ({"bot_token": BOT_TOKEN, "channel": "  "},
     "connectors.slack.channel: Value error, must not be empty"),
])
def test_invalid_values_are_reported_by_the_registry(
    http: httpx.Client, values: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        build_connectors({"slack": values}, http)

    assert str(caught.value) == "invalid connector settings:\n  " + expected
    assert BOT_TOKEN not in str(caught.value)


def test_an_unreadable_token_file_names_the_key(http: httpx.Client, tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as caught:
        build_connectors({"slack": {"bot_token_file": str(missing)}}, http)

    assert str(caught.value) == (
        f"connectors.slack.bot_token_file {missing}: cannot read: No such file or directory")
