"""The ``workers`` table and the judgement of dead workers, on SQLite and PostgreSQL.

:class:`WorkerRegistry` is exercised against real stores, several connections racing where it
matters. :class:`WorkerWatch` runs with a hand-driven clock and, in place of the workflow
engine's side of a takeover, a function that records which executor it was asked to take over
(the real one is exercised by the acceptance tests with real worker processes and DBOS).

The bound on takeovers of one workflow (:class:`TakeoverLedger`) is exercised on real stores
with an in-memory stand-in for the workflow engine, and once end to end: real DBOS processes
hand over a workflow whose step kills the process running it, until it is abandoned.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from dbos import DBOSClient

from factorflow.errors import ConfigError
from factorflow.okta.payloads import format_utc
from factorflow.settings import WorkflowSettings, load_settings
from factorflow.store.factory import open_store
from factorflow.store.sql import SqlEventStore
from factorflow.web.store_metrics import StoreCollector
from factorflow.workflows.recovery import (
    Abandoned,
    Handover,
    PendingWorkflow,
    TakeoverLedger,
    WorkerRegistry,
    WorkerWatch,
    hand_over,
)


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
        "application_version": "1",
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
                              dead_after_seconds=4.0, application_version="1")
    watch = WorkerWatch(stores[0], config, clock=clock, take_over=failing)
    watch.register()
    WorkerRegistry(stores[1], "victim", "1").register(LIVE_CLAIMS)
    for _ in range(6):
        tick(watch, clock)
    assert attempts == ["victim", "victim"]  # tried, released, tried again on the next look
    assert claimed_row(stores[0], "victim") == (None, False, None)
    assert stores[0].read("SELECT COUNT(*) FROM audit_log")[0][0] == 0


# -- the bound on takeovers of one workflow ---------------------------------------------------


@dataclass
class FakeEngine:
    """The workflow engine's side of a takeover, in memory: PENDING workflows per executor."""

    pending_by: dict[str, list[PendingWorkflow]] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    resumed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)

    def died(self, executor_id: str, run: int, workflow_id: str = "wf-1", *,
             version: str = "1", steps: int = 1) -> None:
        """``workflow_id`` was running on ``executor_id`` (dequeued at ``run``) when it died."""
        self.pending_by.setdefault(executor_id, []).append(PendingWorkflow(
            workflow_id, version, "factorflow-events", f"{executor_id}@{run}",
            f"event-{workflow_id}",
        ))
        self.steps[workflow_id] = steps

    def pending(self, executor_id: str) -> Sequence[PendingWorkflow]:
        return list(self.pending_by.get(executor_id, []))

    def completed_steps(self, workflow_id: str) -> int:
        return self.steps[workflow_id]

    def resume(self, workflow_id: str, queue_name: str | None) -> None:
        assert queue_name == "factorflow-events"
        self._leave(workflow_id)
        self.resumed.append(workflow_id)

    def cancel(self, workflow_id: str) -> None:
        self._leave(workflow_id)
        self.cancelled.append(workflow_id)

    def _leave(self, workflow_id: str) -> None:
        for workflows in self.pending_by.values():
            workflows[:] = [w for w in workflows if w.workflow_id != workflow_id]


def takeover_row(store: SqlEventStore, workflow_id: str) -> tuple[object, ...]:
    return tuple(store.read(
        "SELECT takeovers, steps, taken_from, taken_by, abandoned_at IS NOT NULL, reason, "
        "event_uuid FROM workflow_takeovers WHERE workflow_id = ?", (workflow_id,))[0])


REASON_4 = ("its worker died 4 times in a row while running it, without it completing a step "
            "(at most 3 takeovers): it may be what kills its workers")


def test_a_workflow_that_kills_every_worker_is_abandoned_after_the_limit(
    stores: list[SqlEventStore],
) -> None:
    engine = FakeEngine()
    ledgers = [TakeoverLedger(stores[i % 3], f"survivor-{i}", 3) for i in range(5)]
    engine.died("first", 1)
    # Three takeovers, each by a survivor that then dies running it, at the same step.
    for i, dead in enumerate(["first", "survivor-0", "survivor-1"]):
        handover = hand_over(dead, "1", ledgers[i], engine)
        assert handover == Handover(("wf-1",), 0)
        assert takeover_row(stores[0], "wf-1") == (
            i + 1, 1, f"{dead}@{i + 1}", f"survivor-{i}", False, None, "event-wf-1")
        engine.died(f"survivor-{i}", i + 2)
    assert engine.resumed == ["wf-1"] * 3

    handover = hand_over("survivor-2", "1", ledgers[3], engine)
    assert handover == Handover((), 0, (Abandoned("wf-1", "event-wf-1", 4, REASON_4),))
    assert engine.cancelled == ["wf-1"]
    assert engine.resumed == ["wf-1"] * 3  # not resumed a fourth time
    assert engine.pending("survivor-2") == []
    assert takeover_row(stores[1], "wf-1") == (
        4, 1, "survivor-2@4", "survivor-3", True, REASON_4, "event-wf-1")


def test_progress_between_takeovers_starts_the_count_again(stores: list[SqlEventStore]) -> None:
    engine = FakeEngine()
    ledger = TakeoverLedger(stores[0], "survivor", 2)
    engine.died("w1", 1, steps=1)
    assert hand_over("w1", "1", ledger, engine).resumed == ("wf-1",)
    engine.died("w2", 2, steps=1)
    assert hand_over("w2", "1", ledger, engine).resumed == ("wf-1",)
    assert takeover_row(stores[1], "wf-1")[:2] == (2, 1)
    # It completed a step before its next worker died: not the same crash again.
    engine.died("w3", 3, steps=3)
    assert hand_over("w3", "1", ledger, engine).resumed == ("wf-1",)
    assert takeover_row(stores[1], "wf-1")[:2] == (1, 3)
    engine.died("w4", 4, steps=3)
    assert hand_over("w4", "1", ledger, engine).resumed == ("wf-1",)
    engine.died("w5", 5, steps=3)
    handover = hand_over("w5", "1", ledger, engine)
    assert [a.takeovers for a in handover.abandoned] == [3]
    assert engine.resumed == ["wf-1"] * 4
    assert engine.cancelled == ["wf-1"]


def test_a_redone_takeover_is_counted_once_and_other_versions_are_left(
    stores: list[SqlEventStore],
) -> None:
    ledger = TakeoverLedger(stores[0], "survivor", 1)
    # The first taker counted the takeover and died before it resumed anything.
    assert ledger.admit("wf-1", "event-wf-1", 2, "w1@7") is None
    engine = FakeEngine()
    engine.died("w1", 7, steps=2)
    engine.died("w1", 7, "wf-old", version="0")
    handover = hand_over("w1", "1", TakeoverLedger(stores[1], "other", 1), engine)
    assert handover == Handover(("wf-1",), 1)  # still the first takeover: within the limit
    assert takeover_row(stores[2], "wf-1")[:4] == (1, 2, "w1@7", "other")
    assert engine.pending("w1") == [engine.pending_by["w1"][0]]  # the old version's, untouched

    # Past the limit, a redone takeover finds it abandoned already and cancels it again.
    assert ledger.admit("wf-1", "event-wf-1", 2, "w2@8") is not None
    again = ledger.admit("wf-1", "event-wf-1", 2, "w2@8")
    assert again is not None and again.takeovers == 2
    assert takeover_row(stores[2], "wf-1")[:5] == (2, 2, "w2@8", "survivor", True)
    # Resumed by hand afterwards and its worker died: a new series.
    assert ledger.admit("wf-1", "event-wf-1", 2, "w3@9") is None
    assert takeover_row(stores[2], "wf-1")[:5] == (1, 2, "w3@9", "survivor", False)


def test_an_abandoned_workflow_is_logged_and_audited_once(
    stores: list[SqlEventStore], caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    gone = Abandoned("wf-9", "event-9", 4, REASON_4)

    def take_over(_executor_id: str, _version: str) -> Handover:
        return Handover(("wf-8",), 0, (gone,))

    config = WorkflowSettings(executor_id="survivor", heartbeat_seconds=1.0,
                              dead_after_seconds=4.0, application_version="1")
    watch = WorkerWatch(stores[0], config, clock=clock, take_over=take_over)
    watch.register()
    victim = WorkerRegistry(stores[1], "victim", "1")
    victim.register(LIVE_CLAIMS)
    with caplog.at_level(logging.INFO, logger="factorflow.workflows.recovery"):
        for _ in range(6):
            tick(watch, clock)
    records = [r for r in caplog.records if r.getMessage() == "workflows.abandoned"]
    assert [r.levelno for r in records] == [logging.ERROR]
    assert records[0].fields == {  # type: ignore[attr-defined]
        "workflow_id": "wf-9", "event_uuid": "event-9", "takeovers": 4,
        "dead_executor_id": "victim", "executor_id": "survivor", "reason": REASON_4,
    }
    rows = stores[2].read(
        "SELECT kind, summary, actor, event_uuid, details FROM audit_log ORDER BY seq")
    assert [row[0] for row in rows] == ["workflows.abandoned", "workflows.recovered"]
    _, summary, actor, event_uuid, details = rows[0]
    assert summary == f"workflow wf-9 abandoned by worker survivor: {REASON_4}"
    assert (actor, event_uuid) == ("worker:survivor", "event-9")
    assert orjson.loads(details)["takeovers"] == 4
    assert orjson.loads(rows[1][4])["abandoned"] == 1

    # The same takeover redone (its first taker died before finishing): audited once.
    victim_row = victim.row("victim")
    assert victim_row is not None
    watch._abandoned(gone, victim_row)
    assert stores[2].read("SELECT COUNT(*) FROM audit_log WHERE kind = 'workflows.abandoned'"
                          )[0][0] == 1


# A worker process for the end-to-end test: real DBOS on the given system database. "start"
# enqueues the workflow and runs it; "take-over" hands over the dead executor's workflows (and
# runs whatever it resumed). The workflow's second step kills the process running it. It is
# registered under the name of factorflow's event workflow, so the takeover reads its event.
POISON_WORKER = r"""
import json, os, signal, sys, time
from dbos import DBOS, SetWorkflowID
from factorflow.store.factory import open_store
from factorflow.workflows.recovery import TakeoverLedger, hand_over

role, executor_id, system_url, store_url = sys.argv[1:5]

@DBOS.step(name="test.fine")
def fine(value):
    return value

@DBOS.step(name="test.deadly")
def deadly(value):
    os.kill(os.getpid(), signal.SIGKILL)

@DBOS.workflow(name="factorflow.process_event")
def poisoned(uuid):
    fine(uuid)
    deadly(uuid)
    return "survived"

DBOS(config={"name": "factorflow-test", "system_database_url": system_url,
             "application_version": "1", "executor_id": executor_id,
             "log_level": "WARNING"})
DBOS.launch()
DBOS.register_queue("poison-test", worker_concurrency=1, polling_interval_sec=0.1)
if role == "start":
    with SetWorkflowID("wf-poison"):
        DBOS.enqueue_workflow("poison-test", poisoned, "event-poison")
else:
    store = open_store(store_url)
    handover = hand_over(sys.argv[5], "1", TakeoverLedger(store, executor_id, 3))
    print("HANDOVER " + json.dumps({
        "resumed": list(handover.resumed), "other_versions": handover.other_versions,
        "abandoned": [[a.workflow_id, a.event_uuid, a.takeovers] for a in handover.abandoned],
    }), flush=True)
    if not handover.resumed:
        DBOS.destroy(workflow_completion_timeout_sec=5)
        sys.exit(0)
time.sleep(120)
sys.exit(3)  # still alive: the workflow did not run here
"""


def run_poison_worker(workdir: Path, system_url: str, store_url: str, role: str,
                      executor_id: str, dead: str = "") -> tuple[int, dict[str, object] | None]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACTORFLOW_")}
    done = subprocess.run(
        [sys.executable, "-c", POISON_WORKER, role, executor_id, system_url, store_url, dead],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("HANDOVER ")]
    result = json.loads(lines[0].removeprefix("HANDOVER ")) if lines else None
    assert done.returncode in (0, -signal.SIGKILL), (done.returncode, done.stderr[-2000:])
    return done.returncode, result


@pytest.mark.slow
def test_real_workers_stop_resuming_a_workflow_that_kills_them(
    store_url: str, tmp_path: Path,
) -> None:
    system_url = (f"sqlite:///{tmp_path / 'dbos.sqlite'}" if store_url.startswith("sqlite")
                  else store_url)
    code, _ = run_poison_worker(tmp_path, system_url, store_url, "start", "victim")
    assert code == -signal.SIGKILL  # it ran the workflow and died of it
    dead = "victim"
    for i in range(1, 4):
        code, handover = run_poison_worker(tmp_path, system_url, store_url, "take-over",
                                           f"survivor-{i}", dead)
        assert handover == {"resumed": ["wf-poison"], "other_versions": 0, "abandoned": []}
        assert code == -signal.SIGKILL  # resumed it, ran it, and died of it too
        dead = f"survivor-{i}"
    code, handover = run_poison_worker(tmp_path, system_url, store_url, "take-over",
                                       "survivor-4", dead)
    assert code == 0
    assert handover == {"resumed": [], "other_versions": 0,
                        "abandoned": [["wf-poison", "event-poison", 4]]}

    client = DBOSClient(system_database_url=system_url)
    try:
        (status,) = client.list_workflows(workflow_ids=["wf-poison"], load_input=False)
        steps = client.list_workflow_steps("wf-poison")
    finally:
        client.destroy()
    assert (status.status, status.executor_id) == ("CANCELLED", "survivor-3")
    assert [step["function_name"] for step in steps] == ["test.fine"]
    store = open_store(store_url)
    try:
        row = takeover_row(store, "wf-poison")
    finally:
        store.close()
    assert row[:2] == (4, 1)
    assert str(row[2]).startswith("survivor-3@")
    assert row[3:] == ("survivor-4", True, REASON_4, "event-poison")


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


def test_the_takeover_limit_is_configured_and_checked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setenv("FACTORFLOW_WORKFLOWS__MAX_TAKEOVERS_PER_WORKFLOW", "0")
    with pytest.raises(ConfigError) as refused:
        load_settings(None)
    assert str(refused.value) == (
        "invalid configuration:\n  workflows.max_takeovers_per_workflow: Input should be "
        "greater than or equal to 1 (from environment variable "
        "FACTORFLOW_WORKFLOWS__MAX_TAKEOVERS_PER_WORKFLOW)"
    )

    assert WorkflowSettings().max_takeovers_per_workflow == 3
    monkeypatch.setenv("FACTORFLOW_WORKFLOWS__MAX_TAKEOVERS_PER_WORKFLOW", "5")
    workflows = load_settings(None).workflows
    store = open_store(f"sqlite:///{tmp_path / 'events.db'}")
    try:
        watch = WorkerWatch(store, workflows)  # the takeover the engine uses: bounded at 5
        assert (watch.ledger.limit, watch.ledger.executor_id) == (5, workflows.executor_id)
    finally:
        store.close()
