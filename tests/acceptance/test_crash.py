"""Crash tests of a scaled-out deployment: receivers (``serve --no-worker``) and workers
(``factorflow worker``, each under its own stable executor id) on one store and one workflow
database, SQLite files or PostgreSQL databases, under a stream of deliveries from a client that
sends again whatever was not acknowledged (as Okta does).

Processes are killed with SIGKILL at random points and restarted; one worker is killed for good
and the survivor takes over its workflows; PostgreSQL itself is restarted and stopped. In the
end every acknowledged event is stored once, and every action had its effect once: one audit
row per idempotency key, one campaign checkpoint per user, one webhook effect per webhook-id at
the peer, which may have seen a message again only if it was in flight when a process died or
the database went away. See :mod:`tests.acceptance.fleet` for the deployment and the checks.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from tests.acceptance.fleet import (
    DEAD_AFTER_SECONDS,
    DEADLINE,
    WEBHOOK_SECRET,
    WORKER_CONCURRENCY,
    Backend,
    Fleet,
    PostgresCluster,
    Sender,
    assert_acked_are_stored,
    assert_every_action_once,
    deliveries_of,
    delivery,
    enrollment,
    fresh_pg_database,
    wait_until,
)
from tests.acceptance.serverproc import WorkerProcess
from tests.acceptance.webhook_peer import WebhookPeer

pytestmark = pytest.mark.slow

STREAM_EVENTS = 200
EXTRA_EVENTS = 12
RUN_DRY_SECONDS = 20.0  # a worker idle this long while the stream lasts has run dry
STORE_UNAVAILABLE = {"error": "store_unavailable",
                     "message": "events could not be stored; retry later"}


@pytest.fixture
def peer() -> Iterator[WebhookPeer]:
    with WebhookPeer(WEBHOOK_SECRET) as running:
        yield running


@pytest.fixture
def fleet(tmp_path: Path, peer: WebhookPeer, backend: Backend) -> Iterator[Fleet]:
    deployment = Fleet(tmp_path, peer, backend)
    try:
        yield deployment
    finally:
        deployment.close()


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    """The local PostgreSQL server, running again after the test whatever happened."""
    server = PostgresCluster()
    server.ensure_running()
    try:
        yield server
    finally:
        server.ensure_running()


@pytest.fixture
def pg_fleet(tmp_path: Path, peer: WebhookPeer, cluster: PostgresCluster) -> Iterator[Fleet]:
    with fresh_pg_database() as store_url, fresh_pg_database() as system_url:
        deployment = Fleet(tmp_path, peer, Backend("postgres", store_url, system_url))
        try:
            yield deployment
        finally:
            deployment.close()
            cluster.ensure_running()  # before the databases are dropped


@pytest.fixture
def rng() -> random.Random:
    seed = int.from_bytes(os.urandom(4), "big")
    print(f"random seed: {seed}")  # shown with a failure, to replay the same kill points
    return random.Random(seed)


def metric_values(base_url: str, name: str) -> dict[str, float]:
    """label text -> value of one metric family in /metrics."""
    text = httpx.get(base_url + "/metrics", timeout=10.0).text
    values = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line[len(name):].rpartition(" ")
            values[labels] = float(value)
    return values


# -- 1. kill -9 of receivers and workers under a stream ---------------------------------------


def test_kill9_of_receivers_and_workers_mid_stream_acts_once(
    fleet: Fleet, rng: random.Random
) -> None:
    receivers = [fleet.receiver("receiver-a"), fleet.receiver("receiver-b")]
    workers = [fleet.worker("worker-1"), fleet.worker("worker-2")]
    events = [enrollment(n) for n in range(STREAM_EVENTS)]
    uuids = [e["uuid"] for e in events]
    sender = Sender(receivers, deliveries_of(events, rng, max_batch=4), connections=2,
                    pace=0.3, more_to_come=True).start()

    def more_work() -> None:
        """A few more events: a worker killed late in the stream whose workflow finished before
        the kill landed may otherwise find nothing left to run once it is back."""
        fresh = [enrollment(n) for n in range(len(events), len(events) + EXTRA_EVENTS)]
        events.extend(fresh)
        uuids.extend(e["uuid"] for e in fresh)
        for more in deliveries_of(fresh, rng, max_batch=4):
            sender.add(more)

    def running(worker: WorkerProcess) -> list[str]:
        """The workflows ``worker`` is running, waited for. The stream can run dry before a
        late incident (the other worker took what was left): then a few more events are sent
        every RUN_DRY_SECONDS until this worker runs one."""
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                return wait_until(lambda: fleet.in_flight(worker),
                                  f"{worker.executor_id} to be running a workflow",
                                  timeout=RUN_DRY_SECONDS)
            except AssertionError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{worker.executor_id} ran no workflow\n{fleet.logs()}") from None
                more_work()

    incidents = [("receiver", 0), ("receiver", 1), ("worker", 0), ("worker", 1)]
    rng.shuffle(incidents)
    marks = sorted(rng.sample(range(STREAM_EVENTS // 10, STREAM_EVENTS * 7 // 10),
                              len(incidents)))
    worker_kills, interrupted = 0, []
    for (kind, index), mark in zip(incidents, marks, strict=True):
        wait_until(lambda mark=mark: len(sender.acked()) >= mark,
                   f"{mark} acknowledged events", on_timeout=fleet.logs)
        if kind == "receiver":
            receiver = receivers[index]
            assert receiver.kill9() == -9
            # Whatever it acknowledged before it died is stored.
            assert_acked_are_stored(fleet, sender.acked())
            receiver.start()
        else:
            worker = workers[index]
            # A workflow seen running can finish before the kill lands (an event takes two
            # steps); what is still PENDING under the dead worker was interrupted. Kill again
            # (a bounded number of times) until one was.
            for attempt in range(5):
                if attempt:
                    more_work()
                running(worker)
                assert worker.kill9() == -9
                worker_kills += 1
                caught = fleet.in_flight(worker)
                worker.start()
                if caught:
                    interrupted += caught
                    break
        print(f"killed and restarted {kind} {index} at {mark} acknowledged events")

    sender.seal()
    sent = sender.join()
    assert sent.bad_answers == []
    assert set(sent.statuses) <= {204, 503}
    assert sorted(sent.acked) == sorted(uuids)  # each delivery acknowledged once in the end
    assert interrupted, "no worker was killed in the middle of a workflow"
    fleet.wait_done(uuids)
    assert_every_action_once(fleet, events,
                             duplicate_requests_at_most=worker_kills * WORKER_CONCURRENCY)
    for worker in workers:
        assert worker.terminate() == 0
    assert fleet.cli("audit", "verify").stdout.startswith("audit chain OK: ")


# -- 2. a worker killed for good: the survivor takes over ------------------------------------


def test_the_survivor_takes_over_the_workflows_of_a_worker_killed_for_good(
    fleet: Fleet, peer: WebhookPeer
) -> None:
    receiver = fleet.receiver("receiver")
    workers = {w.executor_id: w for w in (fleet.worker("worker-1"), fleet.worker("worker-2"))}
    events = [enrollment(n) for n in range(12)]
    uuids = [e["uuid"] for e in events]
    held = peer.hold_next()  # the first webhook request waits: its worker is inside that step

    answer = receiver.post(delivery(events).body)
    assert answer.status_code == 204
    assert answer.headers["factorflow-result"] == "new=12 duplicate=0 quarantined=0"
    assert held.arrived.wait(DEADLINE), fleet.logs()
    assert held.request is not None
    stuck = held.request.json()["data"]["uuid"]
    owner = fleet.workflows()[stuck].executor_id
    assert owner is not None
    dead = workers.pop(owner)
    (survivor,) = workers.values()

    assert dead.kill9() == -9
    held.release.set()  # the peer applies the message and answers a worker that is gone
    in_flight = sorted(wid for wid, w in fleet.workflows().items()
                       if w.status == "PENDING" and w.executor_id == dead.executor_id)
    assert stuck in in_flight

    fleet.wait_done(uuids, "the survivor to finish the dead worker's workflows")

    workflows = fleet.workflows()
    for workflow_id in in_flight:
        assert workflows[workflow_id].status == "SUCCESS"
        assert workflows[workflow_id].executor_id == survivor.executor_id
    (recovered,) = survivor.log_records("workflows.recovered")
    assert {key: recovered[key] for key in ("dead_executor_id", "executor_id", "workflows",
                                            "other_versions", "stopped", "pid")} == {
        "dead_executor_id": dead.executor_id, "executor_id": survivor.executor_id,
        "workflows": len(in_flight), "other_versions": 0, "stopped": False, "pid": dead.pid,
    }
    assert recovered["silent_seconds"] >= DEAD_AFTER_SECONDS
    assert dead.log_records("workflows.recovered") == []
    (audit,) = fleet.rows("SELECT summary, actor, details FROM audit_log WHERE kind = ?",
                          ("workflows.recovered",))
    assert audit[0].startswith(f"worker {survivor.executor_id} took over {len(in_flight)} "
                               f"workflow(s) of worker {dead.executor_id}, silent for ")
    assert audit[1] == f"worker:{survivor.executor_id}"
    assert sorted(orjson.loads(audit[2])["workflow_ids"]) == in_flight
    claimed_by, recovered_at, count, stopped_at = fleet.worker_rows()[dead.executor_id]
    assert (claimed_by, count, stopped_at) == (survivor.executor_id, len(in_flight), None)
    assert recovered_at is not None
    expected = {'{state="alive"}': 1.0, '{state="dead"}': 0.0, '{state="taken_over"}': 1.0,
                '{state="stopped"}': 0.0}
    wait_until(lambda: metric_values(receiver.base_url, "factorflow_workers") == expected,
               f"the metric to read {expected}",
               on_timeout=lambda: str(metric_values(receiver.base_url, "factorflow_workers")))

    # The held message was sent again by the survivor, under the same webhook-id; its effect
    # counts once. Only in-flight work of the dead worker could be repeated.
    assert peer.ids()[held.request.webhook_id] == 2
    assert_every_action_once(fleet, events, duplicate_requests_at_most=len(in_flight))

    # The dead executor id comes back: it registers afresh, and finds nothing left to run.
    requests = len(peer.snapshot())
    dead.start()
    assert fleet.worker_rows()[dead.executor_id][:3] == (None, None, None)
    wait_until(lambda: metric_values(receiver.base_url, "factorflow_workers")
               .get('{state="alive"}') == 2.0, "both workers alive")
    assert dead.terminate() == 0
    assert survivor.terminate() == 0
    assert len(peer.snapshot()) == requests
    assert fleet.worker_rows()[dead.executor_id][3] is not None  # stopped_at: a clean stop
    assert_every_action_once(fleet, events, duplicate_requests_at_most=len(in_flight))
    assert fleet.cli("audit", "verify").stdout.startswith("audit chain OK: ")


# -- 3. PostgreSQL restarted and stopped under a stream ---------------------------------------


@pytest.mark.postgres
def test_postgres_restart_and_outage_mid_stream_acts_once(
    pg_fleet: Fleet, cluster: PostgresCluster, rng: random.Random
) -> None:
    fleet = pg_fleet
    receivers = [fleet.receiver("receiver-a"), fleet.receiver("receiver-b")]
    workers = [fleet.worker("worker-1"), fleet.worker("worker-2")]
    events = [enrollment(n) for n in range(STREAM_EVENTS)]
    sender = Sender(receivers, deliveries_of(events, rng, max_batch=4), connections=2,
                    pace=0.3, more_to_come=True).start()

    wait_until(lambda: len(sender.acked()) >= STREAM_EVENTS // 4, "a quarter acknowledged",
               on_timeout=fleet.logs)
    cluster.restart()
    assert_acked_are_stored(fleet, sender.acked())

    wait_until(lambda: len(sender.acked()) >= STREAM_EVENTS // 2, "half acknowledged",
               on_timeout=fleet.logs)
    cluster.stop()
    probe_events = [enrollment(STREAM_EVENTS + n) for n in range(len(receivers))]
    try:
        for receiver, event in zip(receivers, probe_events, strict=True):
            refused = receiver.post(delivery([event]).body)
            assert (refused.status_code, refused.json()) == (503, STORE_UNAVAILABLE)
            assert refused.headers["retry-after"] == "1"
            assert httpx.get(receiver.base_url + "/readyz", timeout=10.0).status_code == 503
        # Down for longer than a worker may be silent: nobody can beat, so nobody is judged.
        time.sleep(2 * DEAD_AFTER_SECONDS)
    finally:
        cluster.start()
    stored = fleet.stored_counts()
    assert all(stored[event["uuid"]] == 0 for event in probe_events)  # never acknowledged
    assert_acked_are_stored(fleet, sender.acked())
    for event in probe_events:  # Okta sends them again
        sender.add(delivery([event]))
    sender.seal()

    sent = sender.join()
    assert sent.bad_answers == []
    assert set(sent.statuses) <= {204, 503}
    everything = events + probe_events
    uuids = [e["uuid"] for e in everything]
    assert sorted(sent.acked) == sorted(uuids)
    fleet.wait_done(uuids, "the workers to finish after the database came back")
    # The same worker processes resumed; none was taken for dead during the outage.
    assert all(worker.running for worker in workers)
    assert all(claimed_by is None for claimed_by, *_ in fleet.worker_rows().values())
    assert all(worker.log_records("workflows.recovered") == [] for worker in workers)
    assert_every_action_once(
        fleet, everything,
        duplicate_requests_at_most=2 * len(workers) * WORKER_CONCURRENCY,
    )
    for worker in workers:
        assert worker.terminate() == 0
    assert fleet.cli("audit", "verify").stdout.startswith("audit chain OK: ")
