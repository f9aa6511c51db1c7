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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from dbos import DBOS

from factorflow.actions.audit import record_audit
from factorflow.errors import StoreUnavailable
from factorflow.okta.payloads import format_utc
from factorflow.settings import WorkflowSettings
from factorflow.store.sql import SqlEventStore

log = logging.getLogger(__name__)

AUDIT_KIND = "workflows.recovered"
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
class Handover:
    """What a takeover found under the dead worker's executor id."""

    resumed: tuple[str, ...]  # PENDING workflows of this version, now back on their queue
    other_versions: int  # PENDING workflows of another version: left for a worker of that one


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


def hand_over(executor_id: str, application_version: str) -> Handover:
    """Put the PENDING workflows of ``executor_id`` back on their queues, for any live worker.

    ``DBOS.resume_workflow`` sets a workflow that is not finished to ENQUEUED on the given
    queue, whoever owned it; the queue's atomic ENQUEUED -> PENDING claim then admits exactly
    one runner, which resumes from the last checkpointed step. A worker dequeues only workflows
    of its own application version, so workflows of another version are left alone (and
    counted). ENQUEUED workflows need nothing: any worker dequeues them.
    """
    pending = DBOS.list_workflows(status="PENDING", executor_id=executor_id,
                                  load_input=False, load_output=False)
    resumed = []
    for workflow in pending:
        if workflow.app_version != application_version:
            continue
        DBOS.resume_workflow(workflow.workflow_id, queue_name=workflow.queue_name)
        resumed.append(workflow.workflow_id)
    return Handover(tuple(resumed), len(pending) - len(resumed))


class WorkerWatch:
    """This worker's heartbeat (one thread) and the watch over the other workers (another, so
    that a takeover waiting on the workflow database never delays a heartbeat)."""

    def __init__(self, store: SqlEventStore, settings: WorkflowSettings, *,
                 clock: Callable[[], float] = time.monotonic,
                 take_over: Callable[[str, str], Handover] = hand_over) -> None:
        self.registry = WorkerRegistry(store, settings.executor_id, settings.application_version)
        self.store = store
        self._hand_over = take_over  # the engine's side of a takeover
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
        fields = {
            "dead_executor_id": row.executor_id, "executor_id": me,
            "workflows": len(handover.resumed), "other_versions": handover.other_versions,
            "application_version": row.application_version, "host": row.host, "pid": row.pid,
            "last_heartbeat_at": row.heartbeat_at, "stopped": row.stopped_at is not None,
            "silent_seconds": round(silent_for, 1),
        }
        log.info(AUDIT_KIND, extra={"fields": fields})
        # Should the store fail here, the claim stays unfinished: once it is abandoned, a
        # worker claims the row again and finds nothing left under that executor id.
        self.registry.finish(row.executor_id, len(handover.resumed))
        if handover.resumed or handover.other_versions or row.stopped_at is None:
            # A crash is on record even when it left nothing; a clean stop only if it did.
            record_audit(
                self.store, AUDIT_KIND,
                f"worker {me} took over {len(handover.resumed)} workflow(s) of worker "
                f"{row.executor_id}, silent for {silent_for:.0f} s",
                {**fields, "workflow_ids": list(handover.resumed[:_LISTED_IDS])},
                f"worker:{me}",
            )

    def _claim_cutoff(self) -> str:
        """Claims made before this are abandoned (the claimant died during the takeover)."""
        return format_utc(datetime.now(UTC) - timedelta(seconds=self.dead_after_seconds))
