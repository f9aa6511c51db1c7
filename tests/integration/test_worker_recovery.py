"""The ``workers`` table and the judgement of dead workers, on SQLite and PostgreSQL.

:class:`WorkerRegistry` is exercised against real stores, several connections racing where it
matters. :class:`WorkerWatch` runs with a hand-driven clock and, in place of the workflow
engine's side of a takeover, a function that records which executor it was asked to take over
(the real one is exercised by the acceptance tests with real worker processes and DBOS).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from factorflow.errors import ConfigError
from factorflow.okta.payloads import format_utc
from factorflow.settings import WorkflowSettings, load_settings
from factorflow.store.factory import open_store
from factorflow.store.sql import SqlEventStore
from factorflow.web.store_metrics import StoreCollector
from factorflow.workflows.recovery import Handover, WorkerRegistry, WorkerWatch


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'events.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def stores(store_url: str) -> Iterator[list[SqlEventStore]]:
    """Three stores on one database: three processes' connections."""
    opened = [open_store(store_url) for _ in range(3)]
    try:
        yield opened
    finally:
        for store in opened:
            store.close()


def ago(seconds: float) -> str:
    return format_utc(datetime.now(UTC) - timedelta(seconds=seconds))


LIVE_CLAIMS = ago(3600)  # a cutoff that abandons no claim made in the last hour
ANY_CLAIM = ago(-3600)  # a cutoff that abandons every claim


def claimed_row(store: SqlEventStore, executor_id: str) -> tuple[object, ...]:
    return tuple(store.read(
        "SELECT claimed_by, recovered_at IS NOT NULL, recovered_workflows FROM workers "
        "WHERE executor_id = ?", (executor_id,))[0])


# -- the registry ---------------------------------------------------------------------------


def test_register_then_beat(stores: list[SqlEventStore]) -> None:
    me = WorkerRegistry(stores[0], "worker-1", "7")
    assert me.register(LIVE_CLAIMS) is None
    row = me.row("worker-1")
    assert row is not None
    assert (row.application_version, row.host, row.pid, row.beat) == (
        "7", socket.gethostname(), os.getpid(), 1)
    assert (row.started_at, row.stopped_at, row.claimed_by, row.recovered_at) == (
        me.started_at, None, None, None)

    assert me.beat() is None
    assert me.beat() is None
    after = me.row("worker-1")
    assert after is not None
    assert after.beat == 3
    assert after.heartbeat_at >= row.heartbeat_at
    assert after.started_at == row.started_at

    me.mark_stopped()
    stopped = me.row("worker-1")
    assert stopped is not None and stopped.stopped_at is not None
    # A restart under the same id starts afresh.
    again = WorkerRegistry(stores[1], "worker-1", "8")
    assert again.register(LIVE_CLAIMS) is None
    row = again.row("worker-1")
    assert row is not None
    assert (row.application_version, row.stopped_at, row.beat) == ("8", None, 4)
    assert [w.executor_id for w in me.workers()] == ["worker-1"]


def test_one_claimant_wins_and_only_on_the_beat_it_saw(stores: list[SqlEventStore]) -> None:
    dead = WorkerRegistry(stores[0], "worker-1", "1")
    first = WorkerRegistry(stores[1], "worker-2", "1")
    second = WorkerRegistry(stores[2], "worker-3", "1")
    dead.register(LIVE_CLAIMS)
    seen = first.row("worker-1")
    assert seen is not None

    assert dead.beat() is None  # it beat after it was looked at: not dead after all
    assert not first.claim(seen, LIVE_CLAIMS)
    assert claimed_row(stores[0], "worker-1") == (None, False, None)

    seen = first.row("worker-1")
    assert seen is not None
    barrier = threading.Barrier(2)
    won: dict[str, bool] = {}

    def claim(registry: WorkerRegistry) -> None:
        barrier.wait()
        won[registry.executor_id] = registry.claim(seen, LIVE_CLAIMS)

    threads = [threading.Thread(target=claim, args=(r,)) for r in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(won.values()) == [False, True]
    winner, loser = (first, second) if won["worker-2"] else (second, first)

    assert not loser.finish("worker-1", 5)
    assert winner.finish("worker-1", 3)
    assert claimed_row(stores[0], "worker-1") == (winner.executor_id, True, 3)
    reason = dead.beat()
    assert reason is not None
    assert reason.startswith(f"worker {winner.executor_id} took it for dead at ")
    assert reason.endswith(" and took over its workflows")
    # A finished takeover is not claimed again, even with every claim counted as abandoned.
    final = loser.row("worker-1")
    assert final is not None
    assert not loser.claim(final, ANY_CLAIM)
    assert claimed_row(stores[0], "worker-1") == (winner.executor_id, True, 3)


def test_a_restart_waits_for_a_takeover_in_progress(stores: list[SqlEventStore]) -> None:
    WorkerRegistry(stores[0], "worker-1", "1").register(LIVE_CLAIMS)
    survivor = WorkerRegistry(stores[1], "worker-2", "1")
    seen = survivor.row("worker-1")
    assert seen is not None
    assert survivor.claim(seen, LIVE_CLAIMS)

    restarted = WorkerRegistry(stores[2], "worker-1", "1")
    waiting = restarted.register(LIVE_CLAIMS)
    assert waiting is not None and waiting.claimed_by == "worker-2"
    assert claimed_row(stores[0], "worker-1") == ("worker-2", False, None)

    assert survivor.finish("worker-1", 2)
    assert restarted.register(LIVE_CLAIMS) is None  # the takeover ended: start afresh
    assert claimed_row(stores[0], "worker-1") == (None, False, None)
    assert restarted.beat() is None


def test_an_abandoned_claim_neither_blocks_a_restart_nor_a_new_claim(
    stores: list[SqlEventStore],
) -> None:
    WorkerRegistry(stores[0], "worker-1", "1").register(LIVE_CLAIMS)
    crashed = WorkerRegistry(stores[1], "worker-2", "1")
    seen = crashed.row("worker-1")
    assert seen is not None
    assert crashed.claim(seen, LIVE_CLAIMS)

    other = WorkerRegistry(stores[2], "worker-3", "1")
    assert not other.claim(seen, LIVE_CLAIMS)  # a live claim holds
    assert other.claim(seen, ANY_CLAIM)  # an abandoned one does not
    assert claimed_row(stores[0], "worker-1") == ("worker-3", False, None)
    assert not crashed.finish("worker-1", 1)  # its claim was taken from it

    restarted = WorkerRegistry(stores[0], "worker-1", "1")
    assert restarted.register(ANY_CLAIM) is None
    assert not other.finish("worker-1", 1)
    other.release("worker-1")  # nothing left to release: the restart cleared the claim
    assert claimed_row(stores[0], "worker-1") == (None, False, None)


def test_two_processes_under_one_executor_id_are_told(stores: list[SqlEventStore]) -> None:
    first = WorkerRegistry(stores[0], "worker-1", "1", clock=lambda: "2026-01-01T00:00:00.000001Z")
    second = WorkerRegistry(stores[1], "worker-1", "1",
                            clock=lambda: "2026-01-01T00:00:00.000002Z")
    first.register(LIVE_CLAIMS)
    second.register(LIVE_CLAIMS)
    assert second.beat() is None
    assert first.beat() == (
        f"executor id 'worker-1' was registered again by pid {os.getpid()} on host "
        f"{socket.gethostname()}: two workers share one executor id"
    )
    with stores[0].write() as cur:
        cur.execute("DELETE FROM workers")
    assert second.beat() == "its row was deleted"


# -- the judgement --------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """The engine's side of a takeover: records whom it took over, resumes nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, executor_id: str, application_version: str) -> Handover:
        self.calls.append((executor_id, application_version))
        return Handover(("wf-a", "wf-b"), 1)


def watch_for(store: SqlEventStore, clock: Clock, recorder: Recorder,
              **settings: object) -> WorkerWatch:
    config = WorkflowSettings.model_validate({
        "executor_id": "survivor", "heartbeat_seconds": 1.0, "dead_after_seconds": 4.0,
        **settings,
    })
    watch = WorkerWatch(store, config, clock=clock, take_over=recorder)
    watch.register()
    return watch


def tick(watch: WorkerWatch, clock: Clock, *others: WorkerRegistry, seconds: float = 1.0) -> None:
    clock.now += seconds
    for other in others:
        assert other.beat() is None
    watch.beat()
    watch.sweep()


def test_a_worker_silent_for_dead_after_seconds_is_taken_over_once(
    stores: list[SqlEventStore],
) -> None:
    clock, recorder = Clock(), Recorder()
    watch = watch_for(stores[0], clock, recorder)
    victim = WorkerRegistry(stores[1], "victim", "1")
    victim.register(LIVE_CLAIMS)
    for _ in range(6):  # beating: never judged
        tick(watch, clock, victim)
    for _ in range(3):  # silent for 3 s
        tick(watch, clock)
    assert recorder.calls == []

    tick(watch, clock)  # silent for 4 s
    assert recorder.calls == [("victim", "1")]
    assert claimed_row(stores[2], "victim") == ("survivor", True, 2)
    assert watch.recovered == 2
    ((summary, actor, details),) = stores[2].read(
        "SELECT summary, actor, details FROM audit_log WHERE kind = 'workflows.recovered'")
    assert summary == "worker survivor took over 2 workflow(s) of worker victim, silent for 4 s"
    assert actor == "worker:survivor"
    recorded = orjson.loads(details)
    assert {k: recorded[k] for k in ("dead_executor_id", "executor_id", "workflows",
                                     "other_versions", "stopped", "workflow_ids")} == {
        "dead_executor_id": "victim", "executor_id": "survivor", "workflows": 2,
        "other_versions": 1, "stopped": False, "workflow_ids": ["wf-a", "wf-b"],
    }

    for _ in range(10):
        tick(watch, clock)
    assert recorder.calls == [("victim", "1")]  # once


def test_a_pause_of_the_watcher_itself_restarts_the_clocks(
    stores: list[SqlEventStore],
) -> None:
    clock, recorder = Clock(), Recorder()
    watch = watch_for(stores[0], clock, recorder)
    victim = WorkerRegistry(stores[1], "victim", "1")
    victim.register(LIVE_CLAIMS)
    tick(watch, clock, victim)
    tick(watch, clock)  # the victim's beat is seen, then nothing more from it

    # The watcher's own heartbeats stop for 20 s (the process was paused): the others may have
    # been paused as well, so how long they were silent meanwhile is not known.
    tick(watch, clock, seconds=20.0)
    for _ in range(3):
        tick(watch, clock)
    assert recorder.calls == []
    tick(watch, clock)
    assert recorder.calls == [("victim", "1")]


def test_other_versions_and_a_disabled_takeover_are_left_alone(
    stores: list[SqlEventStore],
) -> None:
    clock, recorder = Clock(), Recorder()
    watch = watch_for(stores[0], clock, recorder)
    WorkerRegistry(stores[1], "old-version", "0").register(LIVE_CLAIMS)
    passive = watch_for(stores[2], clock, recorder, executor_id="passive",
                        take_over_dead_workers=False)
    WorkerRegistry(stores[1], "victim", "1").register(LIVE_CLAIMS)
    for _ in range(8):
        tick(passive, clock)
        watch.beat()
        watch.sweep()
    # Only the silent worker of this version; the passive watcher took nobody over (it kept
    # beating, so nobody took it over either).
    assert recorder.calls == [("victim", "1")]
    assert claimed_row(stores[0], "old-version") == (None, False, None)
    assert claimed_row(stores[0], "passive") == (None, False, None)


def test_a_failed_takeover_releases_the_claim(stores: list[SqlEventStore]) -> None:
    clock = Clock()
    attempts: list[str] = []

    def failing(executor_id: str, _version: str) -> Handover:
        attempts.append(executor_id)
        raise RuntimeError("the workflow database is unavailable")

    config = WorkflowSettings(executor_id="survivor", heartbeat_seconds=1.0,
                              dead_after_seconds=4.0)
    watch = WorkerWatch(stores[0], config, clock=clock, take_over=failing)
    watch.register()
    WorkerRegistry(stores[1], "victim", "1").register(LIVE_CLAIMS)
    for _ in range(6):
        tick(watch, clock)
    assert attempts == ["victim", "victim"]  # tried, released, tried again on the next look
    assert claimed_row(stores[0], "victim") == (None, False, None)
    assert stores[0].read("SELECT COUNT(*) FROM audit_log")[0][0] == 0


# -- the metric -----------------------------------------------------------------------------


def test_workers_metric_counts_each_state(stores: list[SqlEventStore]) -> None:
    long_ago = "2026-01-01T00:00:00.000000Z"
    WorkerRegistry(stores[0], "alive", "1").register(LIVE_CLAIMS)
    WorkerRegistry(stores[0], "dead", "1", clock=lambda: long_ago).register(LIVE_CLAIMS)
    stopped = WorkerRegistry(stores[0], "stopped", "1", clock=lambda: long_ago)
    stopped.register(LIVE_CLAIMS)
    stopped.mark_stopped()
    WorkerRegistry(stores[0], "taken", "1", clock=lambda: long_ago).register(LIVE_CLAIMS)
    survivor = WorkerRegistry(stores[1], "alive", "1")
    seen = survivor.row("taken")
    assert seen is not None
    assert survivor.claim(seen, LIVE_CLAIMS)
    assert survivor.finish("taken", 0)

    families = {f.name: f for f in StoreCollector(stores[2], worker_dead_after_seconds=30.0)
                .collect()}
    samples = {s.labels["state"]: s.value for s in families["factorflow_workers"].samples}
    assert samples == {"alive": 1, "dead": 1, "stopped": 1, "taken_over": 1}


# -- the settings ---------------------------------------------------------------------------


def test_dead_after_must_span_two_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACTORFLOW_WORKFLOWS__HEARTBEAT_SECONDS", "5")
    monkeypatch.setenv("FACTORFLOW_WORKFLOWS__DEAD_AFTER_SECONDS", "9")
    with pytest.raises(ConfigError) as refused:
        load_settings(None)
    assert str(refused.value).startswith("invalid configuration:\n  workflows: ")
    assert ("dead_after_seconds must be at least twice heartbeat_seconds, or a worker that "
            "misses one heartbeat is taken for dead") in str(refused.value)

    monkeypatch.setenv("FACTORFLOW_WORKFLOWS__DEAD_AFTER_SECONDS", "10")
    workflows = load_settings(None).workflows
    assert (workflows.heartbeat_seconds, workflows.dead_after_seconds,
            workflows.take_over_dead_workers) == (5.0, 10.0, True)
