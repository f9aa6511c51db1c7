"""End to end: the durable pipeline behind the receiver, with real processes.

Real ``factorflow serve`` and ``factorflow worker`` processes, the real CLI (``dlq``, ``replay``,
``audit verify``), real SQLite and PostgreSQL stores and DBOS system databases, and a real HTTP
receiver for the ``webhook`` action (:mod:`tests.acceptance.webhook_peer`). Processes are
stopped the hard way (SIGKILL) where the point is a crash. Every check is on state: the store's
tables, what the webhook peer received, and what the CLI printed; waiting is polling for that
state with a bounded deadline.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.acceptance.serverproc import (
    DEADLINE,
    SQLITE,
    Backend,
    Installation,
    ServerProcess,
    delivery_body,
    enrollment_event,
    enrollment_rules,
    wait_until,
    write_rules,
)
from tests.acceptance.webhook_peer import WebhookPeer

from factorflow.store.factory import open_store

pytestmark = pytest.mark.slow

HOOK_SECRET = "Bearer wf-hook-secret-5e1c0a9b"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"factorflow-workflow-tests-key-32b").decode()
OWN_SERVICE_ACCOUNT = "00uFactorflowSvc0001"
CAMPAIGN = "mfa-2026"
BASE_TIME = datetime(2026, 3, 15, 10, 0, tzinfo=UTC)

# Every enrollment: an audit row, a signed webhook, a campaign checkpoint (in this order);
# with ``suppress``, once per user and factor type in a day.
SUPPRESS = """\
    suppress:
      key: [user.id, factor.type]
      window_hours: 24
"""
ACTION_IDS = ("done", "log", "notify")  # sorted, as results are listed


# -- events ---------------------------------------------------------------------------------


def enrollment(
    user: int,
    *,
    minutes: float = 0,
    authenticator: str = "Okta Verify",
    method: str = "PUSH",
    actor: dict[str, Any] | None = None,
    outcome: str = "SUCCESS",
    event_type: str = "user.mfa.factor.activate",
) -> dict[str, Any]:
    """The bundled Identity Engine enrollment, for user number ``user``, under a fresh uuid."""
    return enrollment_event(
        f"00uUser{user:013d}", user, BASE_TIME + timedelta(minutes=minutes), actor=actor,
        event_type=event_type, outcome=outcome, factor=(authenticator, method),
    )


def user_id(event: dict[str, Any]) -> str:
    return str(event["target"][0]["id"])


# -- the deployment under test ----------------------------------------------------------------


class Deployment(Installation):
    """One factorflow installation: its settings (as FACTORFLOW_* variables), a receiver, any
    workers, the CLI, and a reader of its store."""

    def __init__(self, workdir: Path, peer: WebhookPeer, backend: Backend, *,
                 suppress: bool = False, serve_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        rules = write_rules(workdir, enrollment_rules(peer.url, CAMPAIGN,
                                                      SUPPRESS if suppress else ""))
        super().__init__(workdir, backend, secret=HOOK_SECRET, settings={
            "FACTORFLOW_PIPELINE__RULES_FILE": str(rules),
            "FACTORFLOW_PIPELINE__OWN_ACTOR_IDS": orjson.dumps([OWN_SERVICE_ACCOUNT]).decode(),
            # Tiny backoff: retries take milliseconds (a Retry-After still sets the minimum).
            "FACTORFLOW_PIPELINE__RETRY": orjson.dumps({"default": {
                "max_attempts": 5, "initial_seconds": 0.05, "max_seconds": 0.2, "multiplier": 2,
            }}).decode(),
            "FACTORFLOW_ACTIONS__WEBHOOK_SECRETS": orjson.dumps({"peer": WEBHOOK_SECRET}).decode(),
            "FACTORFLOW_WORKFLOWS__QUEUE_POLLING_SECONDS": "0.1",
            "FACTORFLOW_WORKFLOWS__RELAY_INTERVAL_SECONDS": "0.2",
            "FACTORFLOW_SERVER__GRACEFUL_TIMEOUT_SECONDS": "20",
            **(env or {}),
        })
        self.peer = peer
        self.server = self.add_server("server", serve_args)

    def serve(self) -> ServerProcess:
        return self.server.start()

    # -- talking to the receiver -------------------------------------------------------------

    def deliver(self, events: list[dict[str, Any]]) -> None:
        answer = self.server.post(delivery_body(events))
        assert answer.status_code == 204, answer.text
        assert answer.headers["factorflow-result"] == f"new={len(events)} duplicate=0 quarantined=0"

    # -- reading the store -------------------------------------------------------------------

    def results(self, uuid: str) -> dict[str, tuple[Any, ...]]:
        """action id -> (status, detail, attempts, idempotency key, kind) for one event."""
        rows = self.rows(
            "SELECT action_id, status, detail, attempts, idempotency_key, kind "
            "FROM action_results WHERE event_uuid = ? ORDER BY action_id", (uuid,),
        )
        return {row[0]: row[1:] for row in rows}

    def statuses(self, uuid: str) -> dict[str, str]:
        return {action: row[0] for action, row in self.results(uuid).items()}

    def key(self, uuid: str, action_id: str) -> str:
        return str(self.results(uuid)[action_id][3])

    def fact(self, uuid: str) -> tuple[str, str | None] | None:
        rows = self.rows("SELECT status, status_reason FROM facts WHERE uuid = ?", (uuid,))
        return (rows[0][0], rows[0][1]) if rows else None

    def decisions(self, uuid: str) -> list[tuple[Any, ...]]:
        return self.rows(
            "SELECT run_id, status, reason, decision FROM decisions WHERE event_uuid = ? "
            "ORDER BY id", (uuid,),
        )

    def attempts(self, key: str) -> list[tuple[Any, ...]]:
        return self.rows(
            "SELECT attempt, result, detail FROM action_attempts WHERE idempotency_key = ? "
            "ORDER BY id", (key,),
        )

    def audit_rows(self) -> list[tuple[Any, ...]]:
        return self.rows("SELECT seq, kind, summary, actor, event_uuid, idempotency_key, hash "
                         "FROM audit_log ORDER BY seq")

    def checkpoints(self) -> list[tuple[Any, ...]]:
        return self.rows("SELECT campaign, user_id, event_uuid, idempotency_key, recorded_at "
                         "FROM campaign_checkpoints ORDER BY user_id")

    def dead_letters(self) -> list[tuple[Any, ...]]:
        return self.rows("SELECT id, event_uuid, action_id, status, reason, attempts, retries, "
                         "resolved_by FROM dead_letters ORDER BY id")

    def wait_done(self, uuids: list[str], what: str = "every action to be done") -> None:
        """Until each event has all three actions finished (done, already done, suppressed)."""
        def finished() -> bool:
            for uuid in uuids:
                statuses = self.statuses(uuid)
                if sorted(statuses) != list(ACTION_IDS) or not set(statuses.values()) <= {
                    "done", "already_done", "suppressed"
                }:
                    return False
            return True

        wait_until(finished, what, on_timeout=self.logs)

    def assert_audit_chain_ok(self) -> None:
        verified = self.cli("audit", "verify")
        rows = len(self.audit_rows())
        assert verified.stdout.startswith(f"audit chain OK: {rows} rows; head row {rows}, hash ")


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def peer() -> Iterator[WebhookPeer]:
    with WebhookPeer(WEBHOOK_SECRET) as running:
        yield running


@pytest.fixture
def deploy(tmp_path: Path, peer: WebhookPeer) -> Iterator[Callable[..., Deployment]]:
    made: list[Deployment] = []

    def _deploy(backend: Backend | None = None, **options: Any) -> Deployment:
        deployment = Deployment(tmp_path, peer, backend or SQLITE, **options)
        made.append(deployment)
        return deployment

    yield _deploy
    for deployment in made:
        deployment.close()


def assert_webhooks_once(dep: Deployment, uuids: list[str]) -> None:
    """Each event's webhook reached the peer, signed, with the event's fact, under its
    idempotency key, and had its effect exactly once."""
    keys = {dep.key(uuid, "notify"): uuid for uuid in uuids}
    received = dep.peer.snapshot()
    assert {r.webhook_id for r in received} == set(keys)
    assert all(r.signature_valid for r in received)
    assert dep.peer.effect_counts() == Counter(dict.fromkeys(keys, 1))
    for request in received:
        body = request.json()
        assert request.path == "/hooks/factorflow"
        assert request.headers["content-type"] == "application/json"
        assert body["type"] == "mfa.enrolled"
        assert (body["rule_id"], body["action_id"]) == ("enrolled", "notify")
        assert body["data"]["uuid"] == keys[request.webhook_id]
        assert body["data"]["kind"] == "enrollment"


# -- 1. happy path ----------------------------------------------------------------------------


def test_every_action_of_an_enrollment_is_done_exactly_once(
    deploy: Callable[..., Deployment], peer: WebhookPeer
) -> None:
    dep = deploy()
    dep.serve()
    events = [enrollment(user=n, minutes=n) for n in range(3)]
    uuids = [e["uuid"] for e in events]

    dep.deliver(events)
    dep.wait_done(uuids)

    for event in events:
        uuid = event["uuid"]
        results = dep.results(uuid)
        assert {a: (r[0], r[2], r[4]) for a, r in results.items()} == {
            "log": ("done", 1, "audit"), "notify": ("done", 1, "webhook"),
            "done": ("done", 1, "checkpoint"),
        }
        assert results["notify"][1] == f"POST {peer.url}: HTTP 204"
        for _action, row in results.items():
            assert dep.attempts(row[3]) == [(1, "ok", row[1])]
        assert dep.fact(uuid) == ("decided", None)
        ((run_id, status, reason, record),) = dep.decisions(uuid)
        assert (run_id, status, reason) == (uuid, "decided", None)
        assert orjson.loads(record)["suppressed"] == {}
    assert_webhooks_once(dep, uuids)
    assert len(peer.snapshot()) == 3  # one request per (event, webhook action)

    audit = dep.audit_rows()
    assert [row[0] for row in audit] == [1, 2, 3]
    assert sorted((row[1], row[3], row[4], row[5]) for row in audit) == sorted(
        ("user.mfa.factor.activate", "rule:enrolled", u, dep.key(u, "log")) for u in uuids
    )
    dep.assert_audit_chain_ok()
    assert [(c[0], c[1], c[2], c[3]) for c in dep.checkpoints()] == sorted(
        (CAMPAIGN, user_id(e), e["uuid"], dep.key(e["uuid"], "done")) for e in events
    )
    assert dep.rows("SELECT COUNT(*) FROM events WHERE dispatched_at IS NULL") == [(0,)]
    assert dep.dead_letters() == []
    # One workflow per event, its id the event uuid, on the queue partitioned by org.
    workflows = dep.workflows()
    assert sorted(workflows) == sorted(uuids)
    assert {(w.name, w.status, w.queue_name, w.queue_partition_key)
            for w in workflows.values()} == {
        ("factorflow.process_event", "SUCCESS", "factorflow-org-events", "default")
    }
    assert dep.server.terminate() == 0
    assert WEBHOOK_SECRET.removeprefix("whsec_") not in dep.server.log_text()


# -- 2. kill -9 in the middle of a workflow ----------------------------------------------------


def test_kill9_mid_workflow_resumes_after_restart_and_acts_once(
    backend: Backend, deploy: Callable[..., Deployment], peer: WebhookPeer
) -> None:
    dep = deploy(backend)
    server = dep.serve()
    events = [enrollment(user=n, minutes=n) for n in range(4)]
    uuids = [e["uuid"] for e in events]
    held = peer.hold_next()  # the first webhook request waits: the worker is inside that step

    dep.deliver(events)
    assert held.arrived.wait(DEADLINE), dep.logs()
    assert server.kill9() == -9
    held.release.set()  # the peer applies it and answers a worker that is gone

    first = held.request
    assert first is not None
    stuck = first.json()["data"]["uuid"]
    # Mid-workflow indeed: the audit row came before the webhook, the checkpoint not yet.
    assert dep.statuses(stuck) == {"log": "done"}
    assert not any(c[2] == stuck for c in dep.checkpoints())

    server.start()
    dep.wait_done(uuids, "the interrupted workflows to finish after the restart")

    assert dep.statuses(stuck) == {"done": "done", "log": "done", "notify": "done"}
    for uuid in uuids:
        # The other workflows were cut at random points. One whose effect was committed but
        # not yet recorded as its result finds the effect there when resumed: already_done.
        assert set(dep.statuses(uuid).values()) <= {"done", "already_done"}
        ((run_id, status, _reason, _record),) = dep.decisions(uuid)
        assert (run_id, status) == (uuid, "decided")
    # The interrupted request was sent again with the same webhook-id: delivered at least once,
    # its effect counted once per idempotency key.
    requests = peer.ids()
    assert requests[first.webhook_id] >= 2
    assert all(count >= 1 for count in requests.values())
    assert_webhooks_once(dep, uuids)
    audit_keys = [row[5] for row in dep.audit_rows()]
    assert sorted(audit_keys) == sorted(dep.key(u, "log") for u in uuids)
    dep.assert_audit_chain_ok()
    assert sorted(c[2] for c in dep.checkpoints()) == sorted(uuids)
    assert dep.dead_letters() == []
    # The engine resumed the interrupted workflow (recovered, not started anew).
    workflows = dep.workflows()
    assert sorted(workflows) == sorted(uuids)
    assert all(w.status == "SUCCESS" for w in workflows.values())
    assert (workflows[stuck].recovery_attempts or 0) >= 2
    assert server.terminate() == 0


# -- 3. transient failures are retried --------------------------------------------------------


def test_transient_failures_are_retried_until_the_webhook_succeeds(
    deploy: Callable[..., Deployment], peer: WebhookPeer
) -> None:
    dep = deploy()
    dep.serve()
    peer.then(500, body=b"upstream busy").then(429, retry_after="1")  # then the standing 204
    event = enrollment(user=1)
    uuid = event["uuid"]

    dep.deliver([event])
    dep.wait_done([uuid])

    key = dep.key(uuid, "notify")
    status, detail, attempts, _key, _kind = dep.results(uuid)["notify"]
    assert (status, detail, attempts) == ("done", f"POST {peer.url}: HTTP 204", 3)
    assert dep.attempts(key) == [
        (1, "transient", f"rule enrolled action notify: POST {peer.url}: HTTP 500: upstream busy"),
        (2, "transient", f"rule enrolled action notify: POST {peer.url}: HTTP 429"),
        (3, "ok", f"POST {peer.url}: HTTP 204"),
    ]
    received = peer.snapshot()
    assert [(r.webhook_id, r.status) for r in received] == [(key, 500), (key, 429), (key, 204)]
    assert all(r.signature_valid for r in received)
    assert len({r.body for r in received}) == 1  # the same message each time
    assert peer.effect_counts() == Counter({key: 1})
    assert dep.dead_letters() == []
    assert dep.cli("dlq", "list").stdout == "no dead letters (open)\n"
    assert dep.statuses(uuid) == {"done": "done", "log": "done", "notify": "done"}


# -- 4. permanent failures are dead-lettered, retried by hand or discarded ---------------------


def test_permanent_failure_dead_letter_retry_and_discard(
    deploy: Callable[..., Deployment], peer: WebhookPeer
) -> None:
    dep = deploy()
    dep.serve()
    peer.answer(400, body=b'{"error": "unknown recipient"}')
    events = [enrollment(user=n, minutes=n) for n in (1, 2)]
    first, second = (e["uuid"] for e in events)

    dep.deliver(events)
    letters = wait_until(lambda: len(dep.dead_letters()) == 2 and dep.dead_letters(),
                         "two dead letters", on_timeout=dep.logs)

    by_event = {row[1]: row for row in letters}
    reason = (f'rule enrolled action notify: POST {peer.url}: HTTP 400: '
              f'{{"error": "unknown recipient"}}')
    for uuid in (first, second):
        letter_id, _uuid, action, status, why, attempts, retries, _by = by_event[uuid]
        assert (action, status, why, attempts, retries) == ("notify", "open", reason, 1, 0)
        key = dep.key(uuid, "notify")
        assert dep.results(uuid)["notify"][:3] == ("dead", reason, 1)
        assert dep.attempts(key) == [(1, "permanent", reason)]  # a 400 is not retried
        # The dead letter is written before the workflow's last action runs: wait for it.
        wait_until(lambda u=uuid: len(dep.statuses(u)) == 3, "all three actions recorded",
                   on_timeout=dep.logs)
        assert dep.statuses(uuid) == {"done": "done", "log": "done", "notify": "dead"}
    retry_id, discard_id = by_event[first][0], by_event[second][0]

    listed = dep.cli("dlq", "list").stdout
    for uuid in (first, second):
        letter_id = by_event[uuid][0]
        assert (f"#{letter_id} " in listed and f"rule=enrolled action=notify event={uuid} "
                f"attempts=1\n    {reason}\n" in listed), listed
    assert listed.count("open      webhook") == 2

    # The peer is fixed; the operator retries the first one and waits for it.
    peer.answer(204)
    retried = dep.cli("dlq", "retry", str(retry_id), "--wait", "--by", "alice")
    assert retried.stdout == (f"retry enqueued as workflow dlq-{retry_id}-1\n"
                              f"done: POST {peer.url}: HTTP 204\n")
    first_key = dep.key(first, "notify")
    assert dep.results(first)["notify"][:3] == ("done", f"POST {peer.url}: HTTP 204", 1)
    assert [r.status for r in peer.snapshot() if r.webhook_id == first_key] == [400, 204]
    assert peer.effect_counts() == Counter({first_key: 1})
    letter = {row[0]: row for row in dep.dead_letters()}[retry_id]
    assert (letter[3], letter[6], letter[7]) == ("resolved", 1, "alice")

    # A second retry of the same dead letter is refused, and changes nothing.
    requests_before = len(peer.snapshot())
    again = dep.cli("dlq", "retry", str(retry_id), "--wait", "--by", "alice", ok=False)
    assert again.returncode == 1
    assert again.stderr == f"Error: dead letter #{retry_id} is not open\n"
    assert {row[0]: row for row in dep.dead_letters()}[retry_id] == letter
    unknown = dep.cli("dlq", "retry", "999999", "--by", "alice", ok=False)
    assert (unknown.returncode, unknown.stderr) == (1, "Error: dead letter #999999 is not open\n")

    # The other one is discarded; who did it is on record.
    discarded = dep.cli("dlq", "discard", str(discard_id), "--by", "bob", "--yes")
    assert discarded.stdout == f"dead letter #{discard_id} discarded\n"
    letter2 = {row[0]: row for row in dep.dead_letters()}[discard_id]
    assert (letter2[3], letter2[7]) == ("discarded", "bob")
    assert dep.results(second)["notify"][0] == "dead"
    refused = dep.cli("dlq", "retry", str(discard_id), "--by", "alice", ok=False)
    assert refused.stderr == f"Error: dead letter #{discard_id} is not open\n"

    operator_rows = [(row[1], row[2], row[3]) for row in dep.audit_rows()
                     if row[1].startswith("dead_letter.")]
    assert operator_rows == [
        ("dead_letter.retry", f"dead letter #{retry_id} retried", "alice"),
        ("dead_letter.discard", f"dead letter #{discard_id} discarded", "bob"),
    ]
    dep.assert_audit_chain_ok()
    assert dep.cli("dlq", "list").stdout == "no dead letters (open)\n"
    everything = dep.cli("dlq", "list", "--status", "all").stdout
    assert "resolved  webhook" in everything and "discarded webhook" in everything
    assert len(peer.snapshot()) == requests_before  # nothing was sent for the refusals


# -- 5. replaying the whole store -------------------------------------------------------------


def test_replay_of_the_whole_store_has_no_new_side_effects(
    backend: Backend, deploy: Callable[..., Deployment], peer: WebhookPeer
) -> None:
    dep = deploy(backend)
    dep.serve()
    events = [enrollment(user=n, minutes=n) for n in range(3)]
    uuids = [e["uuid"] for e in events]
    dep.deliver(events)
    dep.wait_done(uuids)

    before = {
        "requests": len(peer.snapshot()), "audit": dep.audit_rows(),
        "checkpoints": dep.checkpoints(),
        "results": {u: dep.results(u) for u in uuids},
        "sends": dep.rows("SELECT * FROM webhook_sends ORDER BY idempotency_key"),
    }
    assert before["requests"] == 3

    for run in (1, 2):
        replayed = dep.cli("replay", "--since", "2000-01-01T00:00:00Z", "--wait")
        lines = replayed.stdout.splitlines()
        assert lines[0] == "3 replay(s) enqueued"
        assert sorted(line.split(": ", 1)[0].rsplit("-", 1)[0] for line in lines[1:]) == sorted(
            f"replay-{u}" for u in uuids
        )
        for line in lines[1:]:
            assert line.split(": ", 1)[1] == (
                "done (enrolled/log: already_done; enrolled/notify: already_done; "
                "enrolled/done: already_done)"
            )

        assert len(peer.snapshot()) == before["requests"]
        assert dep.audit_rows() == before["audit"]
        assert dep.checkpoints() == before["checkpoints"]
        assert {u: dep.results(u) for u in uuids} == before["results"]
        assert dep.rows("SELECT * FROM webhook_sends ORDER BY idempotency_key") == before["sends"]
        for uuid in uuids:
            decisions = dep.decisions(uuid)
            assert len(decisions) == 1 + run  # the first run, and one row per replay run
            assert decisions[0][0] == uuid
            assert all(d[0].startswith(f"replay-{uuid}-") and d[1] == "decided"
                       for d in decisions[1:])
    assert peer.effect_counts() == Counter(dict.fromkeys(
        (dep.key(u, "notify") for u in uuids), 1))
    dep.assert_audit_chain_ok()


# -- 6. what is filtered out, and why ---------------------------------------------------------


def test_filtered_events_record_their_reason_and_only_one_twin_acts(
    deploy: Callable[..., Deployment], peer: WebhookPeer
) -> None:
    dep = deploy()
    dep.serve()
    own_actor = {"id": OWN_SERVICE_ACCOUNT, "type": "User",
                 "alternateId": "factorflow-svc@example.com", "displayName": "factorflow",
                 "detailEntry": None}
    control = enrollment(user=1)
    failed = enrollment(user=2, outcome="FAILURE")
    unsubscribed = enrollment(user=3, event_type="user.session.start")
    looped = enrollment(user=4, actor=own_actor)
    sms = enrollment(user=5, minutes=7, authenticator="Phone", method="SMS")
    voice = enrollment(user=5, minutes=7, authenticator="Phone", method="VOICE")
    events = [control, failed, unsubscribed, looped, sms, voice]

    dep.deliver(events)

    def settled() -> bool:
        facts = [dep.fact(e["uuid"]) for e in events]
        return all(f is not None and f[0] in ("filtered", "decided") for f in facts)

    wait_until(settled, "every fact to be screened or decided", on_timeout=dep.logs)
    twins = {sms["uuid"], voice["uuid"]}
    acting = {e["uuid"] for e in events if dep.fact(e["uuid"]) == ("decided", None)}
    (winner,) = acting & twins
    (loser,) = twins - acting
    assert acting == {control["uuid"], winner}
    dep.wait_done(sorted(acting))

    expected = {
        failed["uuid"]: "outcome is FAILURE, not SUCCESS",
        unsubscribed["uuid"]: "event type user.session.start is not subscribed",
        looped["uuid"]: "caused by factorflow's own service account (loop guard)",
        loser: f"twin of {winner}: one phone enrollment reported as SMS and voice",
    }
    for uuid, reason in expected.items():
        assert dep.fact(uuid) == ("filtered", reason)
        ((run_id, status, why, record),) = dep.decisions(uuid)
        assert (run_id, status, why) == ("screen", "filtered", reason)
        assert orjson.loads(record) == {"filtered": reason}
        assert dep.results(uuid) == {}

    for uuid in acting:
        assert dep.statuses(uuid) == {"done": "done", "log": "done", "notify": "done"}
    assert_webhooks_once(dep, sorted(acting))
    assert sorted(row[4] for row in dep.audit_rows()) == sorted(acting)
    assert sorted(c[2] for c in dep.checkpoints()) == sorted(acting)
    assert dep.rows("SELECT COUNT(*) FROM action_results") == [(6,)]


# -- 7. suppression windows -------------------------------------------------------------------


def test_second_enrollment_of_the_same_factor_within_the_window_is_suppressed(
    deploy: Callable[..., Deployment], peer: WebhookPeer
) -> None:
    dep = deploy(suppress=True)
    dep.serve()
    first = enrollment(user=7, minutes=0)
    again = enrollment(user=7, minutes=60)  # same user and factor, an hour later
    other_factor = enrollment(user=7, minutes=90, authenticator="Security Key or Biometric",
                              method="WEBAUTHN")

    dep.deliver([first])
    dep.wait_done([first["uuid"]])
    dep.deliver([again])
    dep.wait_done([again["uuid"]])
    dep.deliver([other_factor])
    dep.wait_done([other_factor["uuid"]])

    assert dep.statuses(first["uuid"]) == {"done": "done", "log": "done", "notify": "done"}
    reason = f"suppressed: rule enrolled already acted for {first['uuid']} in its window"
    results = dep.results(again["uuid"])
    assert {action: row[:3] for action, row in results.items()} == {
        action: ("suppressed", reason, 0) for action in ACTION_IDS
    }
    assert all(dep.attempts(row[3]) == [] for row in results.values())
    ((_run, status, _why, record),) = dep.decisions(again["uuid"])
    assert status == "decided"
    assert orjson.loads(record)["suppressed"] == {"enrolled": first["uuid"]}
    assert dep.fact(again["uuid"]) == ("decided", None)

    # Another factor type is another suppression key: it acts (the user's campaign
    # checkpoint was already recorded by the first enrollment).
    assert dep.statuses(other_factor["uuid"]) == {
        "done": "already_done", "log": "done", "notify": "done"
    }
    acted = [first["uuid"], other_factor["uuid"]]
    assert_webhooks_once(dep, acted)
    assert sorted(row[4] for row in dep.audit_rows()) == sorted(acted)
    assert [c[2] for c in dep.checkpoints()] == [first["uuid"]]

    # A replay of the window's holder is not suppressed by itself; the suppressed one stays so.
    replayed = dep.cli("replay", "--uuid", first["uuid"], "--uuid", again["uuid"], "--wait")
    lines = replayed.stdout.splitlines()
    assert lines[0] == "2 replay(s) enqueued"
    assert lines[1].endswith(": done (enrolled/log: already_done; enrolled/notify: "
                             "already_done; enrolled/done: already_done)")
    assert lines[2].endswith(": done (no actions)")
    assert orjson.loads(dep.decisions(first["uuid"])[-1][3])["suppressed"] == {}
    assert orjson.loads(dep.decisions(again["uuid"])[-1][3])["suppressed"] == {
        "enrolled": first["uuid"]
    }
    assert {a: r[:3] for a, r in dep.results(again["uuid"]).items()} == {
        action: ("suppressed", reason, 0) for action in ACTION_IDS
    }
    assert len(peer.snapshot()) == 2


# -- 8. a crash between the receiver's commit and the hand-off --------------------------------


def test_event_committed_before_a_crash_is_handed_off_after_the_restart(
    deploy: Callable[..., Deployment], peer: WebhookPeer
) -> None:
    # The receiver runs without the worker (so without the relay); a slow relay elsewhere.
    dep = deploy(serve_args=("--no-worker",),
                 env={"FACTORFLOW_WORKFLOWS__RELAY_INTERVAL_SECONDS": "60"})
    server = dep.serve()
    events = [enrollment(user=n, minutes=n) for n in range(3)]
    uuids = [e["uuid"] for e in events]

    dep.deliver(events)  # acknowledged: committed
    assert server.kill9() == -9  # before anything handed the events on
    assert sorted(r[0] for r in dep.rows(
        "SELECT uuid FROM events WHERE dispatched_at IS NULL")) == sorted(uuids)
    assert dep.rows("SELECT COUNT(*) FROM facts") == [(0,)]

    worker = dep.worker()
    dep.wait_done(uuids, "the worker to pick up the events left by the crash")
    assert dep.rows("SELECT COUNT(*) FROM events WHERE dispatched_at IS NULL") == [(0,)]
    for uuid in uuids:
        assert len(dep.decisions(uuid)) == 1
    assert_webhooks_once(dep, uuids)
    assert len(peer.snapshot()) == 3
    assert worker.terminate() == 0

    # A crash after the workflows were enqueued but before the events were marked dispatched
    # leaves this state: the relay hands them on again, under the same workflow ids, and the
    # engine answers with the existing workflows instead of running them a second time.
    facts = dep.rows("SELECT uuid, status, updated_at FROM facts ORDER BY uuid")
    store = open_store(dep.server.store_url, migrate=False)
    with store.write() as cur:
        cur.execute("UPDATE events SET dispatched_at = NULL")
    store.close()
    worker = dep.worker()
    wait_until(lambda: dep.rows("SELECT COUNT(*) FROM events WHERE dispatched_at IS NULL")
               == [(0,)], "the relay to hand the events on again", on_timeout=dep.logs)
    assert worker.terminate() == 0  # a graceful stop lets any started workflow finish
    for uuid in uuids:
        assert len(dep.decisions(uuid)) == 1
        assert dep.statuses(uuid) == {"done": "done", "log": "done", "notify": "done"}
    assert len(peer.snapshot()) == 3
    assert len(dep.audit_rows()) == 3
    assert len(dep.checkpoints()) == 3
    assert dep.rows("SELECT uuid, status, updated_at FROM facts ORDER BY uuid") == facts
    workflows = dep.workflows()
    assert sorted(workflows) == sorted(uuids)  # no second workflow for any event
    assert all(w.status == "SUCCESS" for w in workflows.values())
    assert "relay.failed" not in dep.logs()


