"""Asking the workers for work from any process (the CLI, the dashboard) without becoming a
worker: replays and dead-letter retries are enqueued, and whichever worker is running (or
starts next) carries them out. They go on the org-partitioned queue under their event's org,
like the relay's workflows, and take that org's share of the workers' slots."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from dbos import DBOSClient, EnqueueOptions

from factorflow.settings import Settings
from factorflow.store.pipeline_sql import SqlPipelineLedger
from factorflow.workflows.engine import ORG_QUEUE, UNPARTITIONED, prefer_wal


class WorkflowClient:
    def __init__(self, settings: Settings, ledger: SqlPipelineLedger) -> None:
        url = settings.workflow_db_url()
        prefer_wal(url)
        self._client = DBOSClient(system_database_url=url)
        self._version = settings.workflows.application_version
        self.ledger = ledger

    def _enqueue(self, workflow_name: str, workflow_id: str, event_uuid: str,
                 *args: Any) -> str:
        options: EnqueueOptions = {
            "queue_name": ORG_QUEUE,
            "queue_partition_key": self._org_of(event_uuid),
            "workflow_name": workflow_name,
            "workflow_id": workflow_id,
            # Workers only dequeue work of their own application version.
            "app_version": self._version,
        }
        self._client.enqueue(options, *args)
        return workflow_id

    def _org_of(self, event_uuid: str) -> str:
        rows = self.ledger.store.read("SELECT org FROM events WHERE uuid = ?", (event_uuid,))
        return str(rows[0][0]) if rows else UNPARTITIONED

    def replay(self, uuid: str) -> str:
        """Re-run the decision for a stored event; actions keep their idempotency keys, so
        what was already done is not done again. Returns the workflow id."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        return self._enqueue("factorflow.process_event", f"replay-{uuid}-{stamp}", uuid, uuid)

    def retry_dead_letter(self, dead_letter_id: int, by: str) -> str | None:
        """None if there is no such open dead letter."""
        letter = self.ledger.get_dead_letter(dead_letter_id)
        if letter is None or not self.ledger.resolve_dead_letter(dead_letter_id, "retrying", by):
            return None
        return self._enqueue(
            "factorflow.retry_dead_letter", f"dlq-{dead_letter_id}-{letter.retries + 1}",
            letter.event_uuid, dead_letter_id, letter.event_uuid, letter.request, by,
        )

    def result(self, workflow_id: str) -> Any:
        handle: Any = self._client.retrieve_workflow(workflow_id)
        return handle.get_result()

    def status(self, workflow_id: str) -> str | None:
        found = self._client.list_workflows(workflow_ids=[workflow_id], load_input=False,
                                            load_output=False)
        return str(found[0].status) if found else None

    def close(self) -> None:
        self._client.destroy()
