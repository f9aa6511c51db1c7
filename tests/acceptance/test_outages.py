"""Outages of a downstream system, with the real processes of a scaled-out deployment (one
receiver, two workers; see :mod:`tests.acceptance.fleet`).

The ``webhook`` action's target sits behind a TCP relay that the test switches off (connections
refused, open ones cut) and on again. Down for a while: every action completes once it is back,
none twice. Down for good: each webhook action ends as a dead letter with its reason, the
event's other actions are done, and nothing is silently dropped: every expected action is
either done or dead-lettered.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from tests.acceptance.fleet import (
    ACTION_IDS,
    FINISHED,
    WEBHOOK_SECRET,
    WORKER_CONCURRENCY,
    Backend,
    Fleet,
    OnOffProxy,
    assert_every_action_once,
    delivery,
    enrollment,
    wait_until,
)
from tests.acceptance.webhook_peer import WebhookPeer

pytestmark = pytest.mark.slow

PATH = "/hooks/factorflow"


@pytest.fixture
def peer() -> Iterator[WebhookPeer]:
    with WebhookPeer(WEBHOOK_SECRET) as running:
        yield running


@pytest.fixture
def proxy(peer: WebhookPeer) -> Iterator[OnOffProxy]:
    relay = OnOffProxy(httpx.URL(peer.url).port or 80)
    try:
        yield relay
    finally:
        relay.down()


def deploy(tmp_path: Path, peer: WebhookPeer, proxy: OnOffProxy, backend: Backend,
           env: dict[str, str] | None = None) -> Fleet:
    return Fleet(tmp_path, peer, backend, webhook_url=proxy.url(PATH), env=env)


def failed_attempts(fleet: Fleet) -> Counter[str]:
    """idempotency key -> failed attempts of the webhook action."""
    return Counter(key for (key,) in fleet.rows(
        "SELECT idempotency_key FROM action_attempts WHERE result <> 'ok' AND detail LIKE ?",
        ("rule enrolled action notify: %",),
    ))


def notify_keys(fleet: Fleet, uuids: list[str]) -> dict[str, str]:
    """event uuid -> idempotency key of its webhook action (once it has a result row)."""
    results = fleet.results()
    return {uuid: results[uuid]["notify"][1] for uuid in uuids if "notify" in results.get(uuid, {})}


# -- 1. down for a while, then back -----------------------------------------------------------


def test_webhook_target_down_for_a_while_then_back_every_action_done_once(
    tmp_path: Path, peer: WebhookPeer, proxy: OnOffProxy, backend: Backend
) -> None:
    fleet = deploy(tmp_path, peer, proxy, backend)
    try:
        receiver = fleet.receiver("receiver")
        fleet.worker("worker-1")
        fleet.worker("worker-2")
        proxy.up()
        before = [enrollment(n) for n in range(5)]
        receiver_ok(receiver.post(delivery(before).body), len(before))
        fleet.wait_done([e["uuid"] for e in before], "the actions before the outage")

        proxy.down()
        during = [enrollment(n) for n in range(5, 35)]
        receiver_ok(receiver.post(delivery(during).body), len(during))
        # Down until every worker's every slot is retrying a webhook that failed twice.
        busy = 2 * WORKER_CONCURRENCY
        wait_until(lambda: sum(1 for n in failed_attempts(fleet).values() if n >= 2) >= busy,
                   f"{busy} webhook actions to fail twice", on_timeout=fleet.logs)
        assert fleet.rows("SELECT COUNT(*) FROM dead_letters") == [(0,)]
        assert len(peer.snapshot()) == len(before)  # nothing got through meanwhile

        proxy.up()
        everything = before + during
        uuids = [e["uuid"] for e in everything]
        fleet.wait_done(uuids, "every action after the target came back")

        keys = notify_keys(fleet, uuids)
        failed = failed_attempts(fleet)
        assert sum(1 for key in keys.values() if failed[key] >= 2) >= busy
        for uuid, key in keys.items():
            attempts = fleet.rows("SELECT attempt, result, detail FROM action_attempts "
                                  "WHERE idempotency_key = ? ORDER BY attempt", (key,))
            *failures, last = attempts
            assert [a[0] for a in attempts] == list(range(1, len(attempts) + 1))
            assert last[1:] == ("ok", f"POST {proxy.url(PATH)}: HTTP 204")
            for _attempt, result, detail in failures:
                assert result == "transient"
                assert detail.startswith(
                    f"rule enrolled action notify: POST {proxy.url(PATH)}: "
                ), detail
            status, detail, count = fleet.rows(
                "SELECT status, detail, attempts FROM action_results WHERE idempotency_key = ?",
                (key,))[0]
            assert (status, count) == ("done", len(attempts)), uuid
            assert detail == f"POST {proxy.url(PATH)}: HTTP 204"
        # Requests cut off by the switch may have reached the peer; their effect counts once.
        assert_every_action_once(fleet, everything,
                                 duplicate_requests_at_most=2 * WORKER_CONCURRENCY)
    finally:
        fleet.close()


def receiver_ok(answer: httpx.Response, events: int) -> None:
    assert answer.status_code == 204, answer.text
    assert answer.headers["factorflow-result"] == f"new={events} duplicate=0 quarantined=0"


# -- 2. down for good -------------------------------------------------------------------------


def test_webhook_target_down_for_good_every_action_done_or_dead_lettered(
    tmp_path: Path, peer: WebhookPeer, proxy: OnOffProxy
) -> None:
    # Few, quick retries: the outage outlasts them.
    retry = {"default": {"max_attempts": 3, "initial_seconds": 0.05, "max_seconds": 0.1}}
    fleet = deploy(tmp_path, peer, proxy, Backend("sqlite", None, None),
                   env={"FACTORFLOW_PIPELINE__RETRY": orjson.dumps(retry).decode()})
    try:
        receiver = fleet.receiver("receiver")
        fleet.worker("worker-1")
        fleet.worker("worker-2")
        events = [enrollment(n) for n in range(20)]
        uuids = [e["uuid"] for e in events]
        receiver_ok(receiver.post(delivery(events).body), len(events))

        def settled() -> bool:
            results = fleet.results()
            return all(tuple(sorted(results.get(u, {}))) == ACTION_IDS
                       and results[u]["done"][0] in FINISHED for u in uuids)

        wait_until(settled, "every action to be done or dead-lettered", on_timeout=fleet.logs)

        # Every expected action is accounted for: done, or dead with a reason on file.
        results = fleet.results()
        assert Counter(status for u in uuids for status, _ in results[u].values()) == Counter(
            {"done": 2 * len(events), "dead": len(events)})
        reason = re.compile(
            r"gave up after 3 attempts: rule enrolled action notify: POST "
            + re.escape(proxy.url(PATH)) + r": ConnectError: .*[Cc]onnection refused.*"
        )
        letters = {row[1]: row for row in fleet.rows(
            "SELECT id, idempotency_key, event_uuid, action_id, kind, status, reason, attempts "
            "FROM dead_letters ORDER BY id")}
        assert set(letters) == {results[u]["notify"][1] for u in uuids}
        for uuid in uuids:
            key = results[uuid]["notify"][1]
            _id, _key, event_uuid, action, kind, status, why, attempts = letters[key]
            assert (event_uuid, action, kind, status, attempts) == (
                uuid, "notify", "webhook", "open", 3)
            assert reason.fullmatch(why), why
            assert fleet.rows("SELECT status, detail, attempts FROM action_results "
                              "WHERE idempotency_key = ?", (key,)) == [("dead", why, 3)]
            assert [r[0] for r in fleet.rows(
                "SELECT result FROM action_attempts WHERE idempotency_key = ? ORDER BY attempt",
                (key,))] == ["transient"] * 3
        assert peer.snapshot() == []
        assert fleet.rows("SELECT COUNT(*) FROM webhook_sends") == [(0,)]
        listed = fleet.cli("dlq", "list", "--limit", "100").stdout
        assert listed.count("open      webhook") == len(events)
        for letter_id, key, *_rest in letters.values():
            assert f"#{letter_id} " in listed and f"event={letters[key][2]}" in listed
        # The event's other actions went on after the dead letter: one of each per event.
        assert len(fleet.rows("SELECT 1 FROM audit_log WHERE kind = 'user.mfa.factor.activate'")
                   ) == len(events)
        assert len(fleet.rows("SELECT 1 FROM campaign_checkpoints")) == len(events)

        # The target is back; an operator retries one dead letter: sent once, resolved.
        proxy.up()
        letter_id, key = next((row[0], row[1]) for row in letters.values())
        retried = fleet.cli("dlq", "retry", str(letter_id), "--wait", "--by", "ops")
        assert retried.stdout.endswith(f"done: POST {proxy.url(PATH)}: HTTP 204\n")
        assert [r.webhook_id for r in peer.snapshot()] == [key]
        assert peer.effect_counts() == Counter({key: 1})
        assert fleet.rows("SELECT status FROM dead_letters WHERE id = ?", (letter_id,)) == [
            ("resolved",)]
    finally:
        fleet.close()
