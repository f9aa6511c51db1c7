"""Taking over the in-flight workflows of a dead worker.

DBOS recovers, when a process launches, only the PENDING workflows of that process's own
executor id and application version: what a crashed worker was running waits for a process
with the same executor id. When that never comes (the host is gone, the pod was rescheduled
under another name), the work would stay stuck. So each worker

* records a heartbeat in the store's ``workers`` table every ``heartbeat_seconds``;
* watches the other workers' rows: one whose ``beat`` has not changed for
  ``dead_after_seconds``, measured on this worker's own clock and only while its own heartbeats
  succeed (when the store is down nobody can beat, and nobody is judged), is dead;
* claims the dead worker's row with a conditional UPDATE (of several survivors, one wins),
  resumes the dead worker's PENDING workflows of this application version on their queue, and
  records the takeover: the log line ``workflows.recovered`` and an audit row.

A worker that starts under an executor id whose takeover is in progress waits for it to end,
so a takeover never hands out a workflow that its restarted owner is already running.

A workflow that kills every worker it runs on (a poison event, a step that exhausts memory)
would hop from survivor to survivor forever: ``DBOS.resume_workflow`` resets the engine's own
count of recovery attempts. So each takeover of a workflow is counted in the store
(``workflow_takeovers``); the count starts again whenever the workflow completed a step since
its last takeover. Past ``max_takeovers_per_workflow`` takeovers in a row the workflow is
cancelled instead of resumed and recorded as abandoned, with the reason: the log line
``workflows.abandoned`` and an audit row of that kind, for the workflow's event.

Delivery is at least once: a worker taken for dead while it was only cut off from the store
may finish the step it was in, and the survivor runs that step again. DBOS fences the old run
at its next checkpoint; the idempotency keys of the actions keep their effects single.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from dbos import DBOS

from factorflow.actions.audit import record_audit
from factorflow.errors import StoreUnavailable
from factorflow.okta.payloads import format_utc
from factorflow.settings import WorkflowSettings
from factorflow.store.sql import SqlEventStore

log = logging.getLogger(__name__)

AUDIT_KIND = "workflows.recovered"
ABANDONED_KIND = "workflows.abandoned"
_SELECT = (
    "SELECT executor_id, application_version, host, pid, started_at, heartbeat_at, beat, "
    "stopped_at, claimed_by, claimed_at, recovered_at, recovered_workflows FROM workers"
)
_LISTED_IDS = 50  # workflow ids named in an audit row; the count is always complete


@dataclass(frozen=True, slots=True)
class WorkerRow:
    executor_id: str
    application_version: str
    host: str
    pid: int
    started_at: str
    heartbeat_at: str
    beat: int
    stopped_at: str | None
    claimed_by: str | None
    claimed_at: str | None
    recovered_at: str | None
    recovered_workflows: int | None


@dataclass(frozen=True, slots=True)
class Abandoned:
    """A workflow that a takeover cancelled instead of resuming."""

    workflow_id: str
    event_uuid: str | None
    takeovers: int  # its workers died this many times in a row without it completing a step
    reason: str


@dataclass(frozen=True, slots=True)
class Handover:
    """What a takeover found under the dead worker's executor id."""

    resumed: tuple[str, ...]  # PENDING workflows of this version, now back on their queue
    other_versions: int  # PENDING workflows of another version: left for a worker of that one
    abandoned: tuple[Abandoned, ...] = ()  # cancelled: taken over too often without progress


def _now() -> str:
    return format_utc(datetime.now(UTC))


class WorkerRegistry:
    """This worker's row in ``workers``, and the claims on other workers' rows."""

    def __init__(self, store: SqlEventStore, executor_id: str, application_version: str,
                 *, clock: Callable[[], str] = _now) -> None:
        self.store = store
        self.executor_id = executor_id
        self.application_version = application_version
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started_at = ""
        self._now = clock

    def register(self, claim_cutoff: str) -> WorkerRow | None:
        """Write this worker's row afresh (clearing any finished takeover of it). None if
        done; else the row, claimed by a worker that is taking over this executor id's
        workflows right now (a claim older than ``claim_cutoff`` is abandoned and ignored)."""
        now = self._now()
        with self.store.write() as cur:
            cur.execute(
                "INSERT INTO workers (executor_id, application_version, host, pid, started_at, "
                "heartbeat_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (executor_id) DO NOTHING",
                (self.executor_id, self.application_version, self.host, self.pid, now, now),
            )
            cur.execute(
                "UPDATE workers SET application_version = ?, host = ?, pid = ?, started_at = ?, "
                "heartbeat_at = ?, beat = beat + 1, stopped_at = NULL, claimed_by = NULL, "
                "claimed_at = NULL, recovered_at = NULL, recovered_workflows = NULL "
                "WHERE executor_id = ? AND (claimed_by IS NULL OR recovered_at IS NOT NULL "
                "OR claimed_at < ?)",
                (self.application_version, self.host, self.pid, now, now, self.executor_id,
                 claim_cutoff),
            )
            if cur.rowcount == 1:
                self.started_at = now
                return None
        return self.row(self.executor_id)

    def beat(self) -> str | None:
        """One heartbeat. None if recorded; else why this worker's row is no longer its own."""
        with self.store.write() as cur:
            cur.execute(
                "UPDATE workers SET heartbeat_at = ?, beat = beat + 1 WHERE executor_id = ? "
                "AND host = ? AND pid = ? AND started_at = ? AND claimed_by IS NULL",
                (self._now(), self.executor_id, self.host, self.pid, self.started_at),
            )
            if cur.rowcount == 1:
                return None
        row = self.row(self.executor_id)
        if row is None:
            return "its row was deleted"
        if row.claimed_by is not None:
            return (f"worker {row.claimed_by} took it for dead at {row.claimed_at} and "
                    "took over its workflows")
        return (f"executor id {self.executor_id!r} was registered again by pid {row.pid} on "
                f"host {row.host}: two workers share one executor id")

    def mark_stopped(self) -> None:
        now = self._now()
        with self.store.write() as cur:
            cur.execute(
                "UPDATE workers SET stopped_at = ?, heartbeat_at = ? WHERE executor_id = ? "
                "AND host = ? AND pid = ? AND started_at = ?",
                (now, now, self.executor_id, self.host, self.pid, self.started_at),
            )

    def row(self, executor_id: str) -> WorkerRow | None:
        rows = self.store.read(_SELECT + " WHERE executor_id = ?",
                               (executor_id,))
        return WorkerRow(*rows[0]) if rows else None

    def workers(self) -> list[WorkerRow]:
        return [WorkerRow(*row) for row in
                self.store.read(_SELECT + " ORDER BY executor_id")]

    def claim(self, row: WorkerRow, claim_cutoff: str) -> bool:
        """Take the right to hand over ``row``'s workflows; False if its heartbeat moved since
        it was read, or another worker holds a live claim or finished the takeover."""
        with self.store.write() as cur:
            cur.execute(
                "UPDATE workers SET claimed_by = ?, claimed_at = ? WHERE executor_id = ? "
                "AND beat = ? AND recovered_at IS NULL AND (claimed_by IS NULL OR claimed_at < ?)",
                (self.executor_id, self._now(), row.executor_id, row.beat, claim_cutoff),
            )
            return cur.rowcount == 1

    def finish(self, executor_id: str, resumed: int) -> bool:
        with self.store.write() as cur:
            cur.execute(
                "UPDATE workers SET recovered_at = ?, recovered_workflows = ? "
                "WHERE executor_id = ? AND claimed_by = ?",
                (self._now(), resumed, executor_id, self.executor_id),
            )
            return cur.rowcount == 1

    def release(self, executor_id: str) -> None:
        with self.store.write() as cur:
            cur.execute(
                "UPDATE workers SET claimed_by = NULL, claimed_at = NULL "
                "WHERE executor_id = ? AND claimed_by = ? AND recovered_at IS NULL",
                (executor_id, self.executor_id),
            )


class TakeoverLedger:
    """``workflow_takeovers``: how often each workflow was taken over in a row without
    completing a step, and the workflows abandoned for it."""

    def __init__(self, store: SqlEventStore, executor_id: str, limit: int,
                 *, clock: Callable[[], str] = _now) -> None:
        self.store = store
        self.executor_id = executor_id
        self.limit = limit
        self._now = clock

    def admit(self, workflow_id: str, event_uuid: str | None, steps: int,
              taken_from: str) -> Abandoned | None:
        """Count one takeover of ``workflow_id`` (``steps`` completed steps; ``taken_from``
        names the run that died). None: resume it. Else it passed the limit and is recorded
        as abandoned: cancel it."""
        with self.store.write() as cur:
            cur.execute(
                "SELECT takeovers, steps, taken_from, abandoned_at, reason "
                "FROM workflow_takeovers WHERE workflow_id = ?",
                (workflow_id,),
            )
            row = cur.fetchone()
            if row is not None and row[2] == taken_from:
                # This takeover again (the one who began it died): counted already.
                count = int(row[0])
                if row[3] is not None:
                    return Abandoned(workflow_id, event_uuid, count, str(row[4]))
            elif row is None or row[3] is not None or steps > int(row[1]):
                # Its first takeover, or it was resumed by hand after it was abandoned, or it
                # completed a step since its last takeover: a new series.
                count = 1
            else:
                count = int(row[0]) + 1
            abandoned = count > self.limit
            reason = (
                f"its worker died {count} times in a row while running it, without it "
                f"completing a step (at most {self.limit} takeovers): it may be what kills "
                "its workers" if abandoned else None
            )
            now = self._now()
            cur.execute(
                "INSERT INTO workflow_takeovers (workflow_id, event_uuid, takeovers, steps, "
                "taken_from, taken_by, updated_at, abandoned_at, reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (workflow_id) DO UPDATE SET "
                "event_uuid = excluded.event_uuid, takeovers = excluded.takeovers, "
                "steps = excluded.steps, taken_from = excluded.taken_from, "
                "taken_by = excluded.taken_by, updated_at = excluded.updated_at, "
                "abandoned_at = excluded.abandoned_at, reason = excluded.reason",
                (workflow_id, event_uuid, count, steps, taken_from, self.executor_id, now,
                 now if abandoned else None, reason),
            )
        return Abandoned(workflow_id, event_uuid, count, reason) if reason else None


@dataclass(frozen=True, slots=True)
class PendingWorkflow:
    """A PENDING workflow of a dead worker, as the takeover sees it."""

    workflow_id: str
    app_version: str | None
    queue_name: str | None
    taken_from: str  # the run that died: executor id and when it dequeued the workflow
    event_uuid: str | None


class WorkflowControl(Protocol):
    """The workflow engine's side of a takeover."""

    def pending(self, executor_id: str) -> Sequence[PendingWorkflow]: ...

    def completed_steps(self, workflow_id: str) -> int: ...

    def resume(self, workflow_id: str, queue_name: str | None) -> None: ...

    def cancel(self, workflow_id: str) -> None: ...


# The argument that names the event, per workflow (see workflows/process.py).
_EVENT_ARGUMENT = {"factorflow.process_event": 0, "factorflow.retry_dead_letter": 1}


def _event_uuid(name: str, inputs: Any) -> str | None:
    position = _EVENT_ARGUMENT.get(name)
    args = inputs.get("args") if isinstance(inputs, dict) else None
    if position is None or not isinstance(args, list | tuple) or len(args) <= position:
        return None
    value = args[position]
    return value if isinstance(value, str) else None


class DbosControl:
    """:class:`WorkflowControl` on the running DBOS instance."""

    def pending(self, executor_id: str) -> Sequence[PendingWorkflow]:
        return [
            PendingWorkflow(
                w.workflow_id, w.app_version, w.queue_name,
                f"{executor_id}@{w.dequeued_at or w.created_at}", _event_uuid(w.name, w.input),
            )
            for w in DBOS.list_workflows(status="PENDING", executor_id=executor_id,
                                         load_input=True, load_output=False)
        ]

    def completed_steps(self, workflow_id: str) -> int:
        return len(DBOS.list_workflow_steps(workflow_id, load_output=False))

    def resume(self, workflow_id: str, queue_name: str | None) -> None:
        DBOS.resume_workflow(workflow_id, queue_name=queue_name)

    def cancel(self, workflow_id: str) -> None:
        DBOS.cancel_workflow(workflow_id)


def hand_over(executor_id: str, application_version: str,
              ledger: TakeoverLedger | None = None,
              control: WorkflowControl | None = None) -> Handover:
    """Put the PENDING workflows of ``executor_id`` back on their queues, for any live worker.

    ``DBOS.resume_workflow`` sets a workflow that is not finished to ENQUEUED on the given
    queue, whoever owned it; the queue's atomic ENQUEUED -> PENDING claim then admits exactly
    one runner, which resumes from the last checkpointed step. A worker dequeues only workflows
    of its own application version, so workflows of another version are left alone (and
    counted). ENQUEUED workflows need nothing: any worker dequeues them. With a ``ledger``, a
    workflow taken over too often without progress is cancelled instead (see
    :class:`TakeoverLedger`).
    """
    engine = control or DbosControl()
    pending = engine.pending(executor_id)
    resumed, abandoned = [], []
    for workflow in pending:
        if workflow.app_version != application_version:
            continue
        if ledger is not None:
            verdict = ledger.admit(workflow.workflow_id, workflow.event_uuid,
                                   engine.completed_steps(workflow.workflow_id),
                                   workflow.taken_from)
            if verdict is not None:
                engine.cancel(workflow.workflow_id)
                abandoned.append(verdict)
                continue
        engine.resume(workflow.workflow_id, workflow.queue_name)
        resumed.append(workflow.workflow_id)
    return Handover(tuple(resumed), len(pending) - len(resumed) - len(abandoned),
                    tuple(abandoned))


class WorkerWatch:
    """This worker's heartbeat (one thread) and the watch over the other workers (another, so
    that a takeover waiting on the workflow database never delays a heartbeat)."""

    def __init__(self, store: SqlEventStore, settings: WorkflowSettings, *,
                 clock: Callable[[], float] = time.monotonic,
                 take_over: Callable[[str, str], Handover] | None = None) -> None:
        self.registry = WorkerRegistry(store, settings.executor_id, settings.application_version)
        self.store = store
        self.ledger = TakeoverLedger(store, settings.executor_id,
                                     settings.max_takeovers_per_workflow)
        # The engine's side of a takeover.
        self._hand_over = take_over or (
            lambda executor_id, version: hand_over(executor_id, version, self.ledger)
        )
        self.heartbeat_seconds = settings.heartbeat_seconds
        self.dead_after_seconds = settings.dead_after_seconds
        # Heartbeats further apart than this (the process or the machine was paused, or the
        # store was unreachable) say nothing about the others: their clocks start again.
        self._regular_gap = settings.heartbeat_seconds + settings.dead_after_seconds / 2
        self._take_over = settings.take_over_dead_workers
        self._clock = clock
        self._lock = threading.Lock()
        self._last_beat: float | None = None  # when this worker's last heartbeat was recorded
        self._epoch = 0  # grows whenever this worker's own heartbeats were interrupted
        self._beating = True
        # executor id -> (its beat, when first seen with it, the epoch it was seen in)
        self._seen: dict[str, tuple[int, float, int]] = {}
        self._stop = threading.Event()
        self._sweep_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.recovered = 0  # workflows this worker took over

    # -- lifecycle -------------------------------------------------------------------------

    def register(self) -> None:
        """Before the engine launches: record this worker, waiting while another worker is
        taking over the workflows of this executor id (bounded by ``dead_after_seconds``,
        after which an unfinished claim is abandoned)."""
        announced = False
        while not self._stop.is_set():
            try:
                claimed = self.registry.register(self._claim_cutoff())
            except StoreUnavailable as exc:
                log.warning("workers.register_failed", extra={"fields": {"error": str(exc)}})
            else:
                if claimed is None:
                    self._last_beat = self._clock()
                    return
                if not announced:
                    log.info("workers.waiting_for_takeover", extra={"fields": {
                        "executor_id": self.registry.executor_id,
                        "claimed_by": claimed.claimed_by,
                    }})
                    announced = True
            self._stop.wait(min(self.heartbeat_seconds, 1.0))

    def start(self) -> None:
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._every_heartbeat, args=(self.beat,),
                             name="factorflow-heartbeat", daemon=True),
            threading.Thread(target=self._every_heartbeat, args=(self.sweep,),
                             name="factorflow-takeover", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def pause_takeovers(self) -> None:
        """No more takeovers (the engine is stopping); the heartbeat goes on until ``stop``, so
        the workflows this worker is finishing are not taken over meanwhile."""
        with self._sweep_lock:
            self._take_over = False

    def stop(self) -> None:
        self.pause_takeovers()
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads = []
        try:
            self.registry.mark_stopped()
        except StoreUnavailable:
            log.warning("workers.stop_not_recorded")

    def _every_heartbeat(self, work: Callable[[], None]) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                work()
            except StoreUnavailable:  # logged by the heartbeat; judge nobody meanwhile
                self._interrupted()
            except Exception:  # a bug here must not end the thread
                log.exception("workers.failed")
                self._interrupted()

    # -- this worker's heartbeat -----------------------------------------------------------

    def beat(self) -> None:
        now = self._clock()
        try:
            lost = self.registry.beat()
        except StoreUnavailable as exc:
            self._interrupted()
            if self._beating:
                log.warning("workers.heartbeat_failed", extra={"fields": {"error": str(exc)}})
            self._beating = False
            return
        if not self._beating:
            log.info("workers.heartbeat_resumed")
            self._beating = True
        if lost is not None:
            log.warning("workers.heartbeat_lost", extra={"fields": {
                "executor_id": self.registry.executor_id, "reason": lost,
            }})
            self._interrupted()
            self.registry.register(self._claim_cutoff())  # one try; the next beat retries
            return
        with self._lock:
            if self._last_beat is None or now - self._last_beat > self._regular_gap:
                self._epoch += 1
            self._last_beat = now

    def _interrupted(self) -> None:
        with self._lock:
            self._epoch += 1
            self._last_beat = None

    # -- the watch over the others ---------------------------------------------------------

    def sweep(self) -> None:
        """Look at the other workers once; take over any that has been silent too long."""
        with self._sweep_lock:
            if not self._take_over:
                return
            now = self._clock()
            with self._lock:
                epoch, last_beat = self._epoch, self._last_beat
            if last_beat is None or now - last_beat > self._regular_gap:
                return  # this worker cannot write to the store either: judge nobody
            present = set()
            for row in self.registry.workers():
                if row.executor_id == self.registry.executor_id:
                    continue
                present.add(row.executor_id)
                if (row.recovered_at is not None
                        or row.application_version != self.registry.application_version):
                    self._seen.pop(row.executor_id, None)
                    continue
                seen = self._seen.get(row.executor_id)
                if seen is None or seen[0] != row.beat or seen[2] != epoch:
                    self._seen[row.executor_id] = (row.beat, now, epoch)
                elif now - seen[1] >= self.dead_after_seconds:
                    self._take_over_from(row, silent_for=now - seen[1])
            for gone in set(self._seen) - present:
                del self._seen[gone]

    def _take_over_from(self, row: WorkerRow, silent_for: float) -> None:
        if not self.registry.claim(row, self._claim_cutoff()):
            return
        me = self.registry.executor_id
        try:
            handover = self._hand_over(row.executor_id, self.registry.application_version)
        except Exception:
            log.exception("workflows.recovery_failed", extra={"fields": {
                "dead_executor_id": row.executor_id, "executor_id": me,
            }})
            self.registry.release(row.executor_id)
            return
        self._seen.pop(row.executor_id, None)
        self.recovered += len(handover.resumed)
        for gone in handover.abandoned:
            self._abandoned(gone, row)
        fields = {
            "dead_executor_id": row.executor_id, "executor_id": me,
            "workflows": len(handover.resumed), "other_versions": handover.other_versions,
            "abandoned": len(handover.abandoned),
            "application_version": row.application_version, "host": row.host, "pid": row.pid,
            "last_heartbeat_at": row.heartbeat_at, "stopped": row.stopped_at is not None,
            "silent_seconds": round(silent_for, 1),
        }
        log.info(AUDIT_KIND, extra={"fields": fields})
        # Should the store fail here, the claim stays unfinished: once it is abandoned, a
        # worker claims the row again and finds nothing left under that executor id.
        self.registry.finish(row.executor_id, len(handover.resumed))
        if (handover.resumed or handover.other_versions or handover.abandoned
                or row.stopped_at is None):
            # A crash is on record even when it left nothing; a clean stop only if it did.
            record_audit(
                self.store, AUDIT_KIND,
                f"worker {me} took over {len(handover.resumed)} workflow(s) of worker "
                f"{row.executor_id}, silent for {silent_for:.0f} s",
                {**fields, "workflow_ids": list(handover.resumed[:_LISTED_IDS])},
                f"worker:{me}",
            )

    def _abandoned(self, gone: Abandoned, row: WorkerRow) -> None:
        me = self.registry.executor_id
        fields = {
            "workflow_id": gone.workflow_id, "event_uuid": gone.event_uuid,
            "takeovers": gone.takeovers, "dead_executor_id": row.executor_id,
            "executor_id": me, "reason": gone.reason,
        }
        log.error(ABANDONED_KIND, extra={"fields": fields})
        # Once per abandonment, should the takeover be redone after a crash of its taker.
        record_audit(
            self.store, ABANDONED_KIND,
            f"workflow {gone.workflow_id} abandoned by worker {me}: {gone.reason}",
            fields, f"worker:{me}", event_uuid=gone.event_uuid,
            idempotency_key=f"{ABANDONED_KIND}:{gone.workflow_id}:{row.executor_id}:"
                            f"{row.started_at}",
        )

    def _claim_cutoff(self) -> str:
        """Claims made before this are abandoned (the claimant died during the takeover)."""
        return format_utc(datetime.now(UTC) - timedelta(seconds=self.dead_after_seconds))
