"""Starting and stopping DBOS, and the relay that hands stored events to it.

The relay is what makes the hand-off crash-safe: events are committed by the receiver with
``dispatched_at`` unset; the relay enqueues a workflow whose id is the event uuid, and only then
marks the event dispatched. A crash in between re-enqueues the same id after the restart, and
DBOS returns the existing workflow instead of starting a second one.

Workflows wait on one queue partitioned by org (:data:`ORG_QUEUE`, the org is the partition
key): a worker runs at most ``workflows.org_concurrency`` workflows of one org at once, so an
org whose Okta API is rate-limited or whose connector hangs holds only its own share of the
worker's slots and the other orgs keep moving. The unpartitioned queue of earlier versions
(``process.QUEUE``), where it exists, is still served, for workflows enqueued before the
upgrade.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Protocol

from dbos import DBOS, DBOSConfig, SetEnqueueOptions, SetWorkflowID

from factorflow.pipeline.process import Pipeline
from factorflow.settings import Settings
from factorflow.store.pipeline_sql import SqlPipelineLedger
from factorflow.workflows import process
from factorflow.workflows.recovery import WorkerWatch
from factorflow.workflows.retry import RetryPolicies

log = logging.getLogger(__name__)

# Every workflow is enqueued here with its event's org as the partition key (DBOS requires a
# key on every enqueue of a partitioned queue: the relay, replays and dead-letter retries).
ORG_QUEUE = "factorflow-org-events"
# Workflow states as the engine names them, and as /metrics shows them (finished ones only if
# they ended without a result: successes are far too many to count at every scrape).
WORKFLOW_STATES = {
    "ENQUEUED": "enqueued", "PENDING": "running",
    "ERROR": "failed", "MAX_RECOVERY_ATTEMPTS_EXCEEDED": "failed", "CANCELLED": "cancelled",
}
UNPARTITIONED = "-"  # the org label of workflows on the old, unpartitioned queue
LEGACY_POLLING_SECONDS = 1.0


class Closeable(Protocol):
    def close(self) -> None: ...


class Poller(Protocol):
    """A background thread of the worker (the System Log reconciler), run with the relay."""

    def start(self) -> None: ...

    def stop(self, timeout_seconds: float = 10.0) -> None: ...


class WorkflowEngine:
    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        ledger: SqlPipelineLedger,
        retries: RetryPolicies,
        resources: Closeable | None = None,
    ) -> None:
        self.resources = resources
        self.settings = settings
        self.pipeline = pipeline
        self.ledger = ledger
        self.retries = retries
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._relay: threading.Thread | None = None
        self._launched = False
        self._relay_failing = False
        self.relayed = 0
        self.pollers: list[Poller] = []  # started and stopped with the relay
        self.watch: WorkerWatch | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, *, relay: bool = True) -> None:
        workflows = self.settings.workflows
        url = self.settings.workflow_db_url()
        prefer_wal(url)
        config: DBOSConfig = {
            "name": "factorflow",
            "system_database_url": url,
            # Pinned: DBOS recovers only workflows of the same version, and the default is a
            # hash of the code, which would strand in-flight work after any upgrade.
            "application_version": workflows.application_version,
            "executor_id": workflows.executor_id,
            "log_level": "WARNING",
            "max_executor_threads": max(8, workflows.worker_concurrency * 2),
        }
        # Before launching: the launch recovers this executor id's own workflows, which must
        # not race a survivor that is taking them over right now.
        self.watch = WorkerWatch(self.ledger.store, workflows)
        self.watch.register()
        process.install(self.pipeline, self.retries)
        DBOS(config=config)
        DBOS.launch()
        self._launched = True
        org_share = workflows.org_share(len(self.settings.org_list()))
        DBOS.register_queue(
            ORG_QUEUE,
            worker_concurrency=workflows.worker_concurrency,
            partition_worker_concurrency=org_share,
            polling_interval_sec=workflows.queue_polling_seconds,
        )
        if DBOS.retrieve_queue(process.QUEUE) is not None:
            # An earlier version's unpartitioned queue: still served (the engine serves every
            # queue in its database), for what was left on it; looked at once a second.
            DBOS.register_queue(
                process.QUEUE,
                worker_concurrency=workflows.worker_concurrency,
                polling_interval_sec=max(workflows.queue_polling_seconds, LEGACY_POLLING_SECONDS),
            )
        self.watch.start()  # heartbeat, and takeover of dead workers' workflows
        log.info("workflows.started", extra={"fields": {
            "executor_id": workflows.executor_id,
            "application_version": workflows.application_version,
            "worker_concurrency": workflows.worker_concurrency, "org_concurrency": org_share,
        }})
        if relay:
            self._stop.clear()
            self._relay = threading.Thread(target=self._relay_loop, name="factorflow-relay",
                                           daemon=True)
            self._relay.start()
            for poller in self.pollers:
                poller.start()

    def stop(self, timeout_seconds: int = 10) -> None:
        self._stop.set()
        self._wake.set()
        for poller in self.pollers:
            poller.stop(timeout_seconds)
        if self._relay is not None:
            self._relay.join(timeout=timeout_seconds)
            self._relay = None
        self._launched = False
        if self.watch is not None:
            self.watch.pause_takeovers()
        DBOS.destroy(workflow_completion_timeout_sec=timeout_seconds)
        if self.watch is not None:  # beating until the workflows in flight have finished
            self.watch.stop()
        if self.resources is not None:
            self.resources.close()
        log.info("workflows.stopped", extra={"fields": {"relayed": self.relayed}})

    def problem(self) -> str | None:
        if not self._launched:
            return "not started"
        if self._relay is not None and not self._relay.is_alive():
            return "relay stopped"
        if self._relay_failing:
            return "relay failing: the store or the workflow database is unavailable"
        return None

    def wake(self) -> None:
        """New events were committed: relay them now rather than at the next tick."""
        self._wake.set()

    # -- hand-off --------------------------------------------------------------------------

    def relay_once(self, limit: int = 500) -> int:
        pending = self.ledger.undispatched_with_org(limit)
        for uuid, org in pending:
            with SetWorkflowID(uuid), SetEnqueueOptions(queue_partition_key=org):
                DBOS.enqueue_workflow(ORG_QUEUE, process.process_event, uuid)
        uuids = [uuid for uuid, _org in pending]
        self.ledger.mark_dispatched(uuids)
        self.relayed += len(uuids)
        return len(uuids)

    def workflow_counts(self) -> list[tuple[str, str, int]]:
        """(org, state, count) of factorflow's workflows: those not finished (``enqueued``,
        ``running``) and those that ended without a result (``failed``,
        ``cancelled``; kept until the workflow database is pruned), read from the workflow
        database, across every worker. Empty before the engine has started."""
        if not self._launched:
            return []
        # DBOS has no counting API (listing would load every row): one GROUP BY on its
        # workflow table, through its own connection pool. Private names: pinned dbos < 4.
        from dbos._dbos import _get_dbos_instance
        from sqlalchemy import func, select

        system = _get_dbos_instance()._sys_db
        status = system.tables.workflow_status
        query = (
            select(status.c.queue_partition_key, status.c.status, func.count())
            .where(status.c.status.in_(list(WORKFLOW_STATES)))
            # factorflow's own workflows (a cancelled one no longer names its queue)
            .where(status.c.name.like("factorflow.%"))
            .group_by(status.c.queue_partition_key, status.c.status)
        )
        with system.engine.connect() as connection:
            rows = connection.execute(query).all()
        counts: dict[tuple[str, str], int] = {}
        for org, state, count in rows:
            key = (org or UNPARTITIONED, WORKFLOW_STATES[state])
            counts[key] = counts.get(key, 0) + int(count)
        return [(org, state, count) for (org, state), count in sorted(counts.items())]

    def _relay_loop(self) -> None:
        interval = self.settings.workflows.relay_interval_seconds
        while not self._stop.is_set():
            try:
                moved = self.relay_once()
                if self._relay_failing:
                    log.info("relay.recovered")
                self._relay_failing = False
            except Exception as exc:  # the store or DBOS is down: log, wait, try again
                if not self._relay_failing:  # the traceback once per outage, not every tick
                    log.exception("relay.failed")
                else:
                    log.debug("relay.still_failing", extra={"fields": {
                        "error": type(exc).__name__}})
                self._relay_failing = True
                moved = 0
            if moved == 0:
                self._wake.wait(interval)
                self._wake.clear()


def prefer_wal(url: str) -> None:
    """DBOS leaves a SQLite system database in rollback-journal mode; WAL was measured ~50 %
    faster for workflows, and the setting persists in the file."""
    if not url.startswith("sqlite:///"):
        return
    path = Path(url.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()
