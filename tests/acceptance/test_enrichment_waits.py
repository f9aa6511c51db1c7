"""An event whose enrichment fails at first, end to end: a real ``factorflow serve`` process
(worker in-process) looks users up in the simulated Okta API, which answers 503 a given number
of times. The event workflow's first step does prepare, enrich and decide at once; when the
lookup fails there, nothing is decided, and the workflow falls back to retrying the lookup in
steps of its own (with durable sleeps in between) before deciding on what Okta answered.
Checked on state: the store's tables, the requests the simulator answered, and the steps and
result DBOS recorded for the workflow.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from dbos import DBOSClient
from tests.acceptance.serverproc import ServerProcess, okta_audit_settings, wait_until
from tests.okta.support import ACTIVATE, TOKEN, SimulatedOkta, delivery, simulated_okta

from factorflow.store.factory import open_store
from factorflow.store.sql import SqlEventStore

pytestmark = pytest.mark.slow

HOOK_SECRET = "Bearer enrichment-waits-secret-7d21"
USER = "/api/v1/users/{id}"
ATTEMPTS = 3  # the enrichment retry policy's max_attempts in these tests


@pytest.fixture
def okta() -> Iterator[SimulatedOkta]:
    with simulated_okta(users=10, seed=11, enrollments=10, start=time.time()) as simulated:
        yield simulated


def serve(tmp_path: Path, okta: SimulatedOkta) -> ServerProcess:
    retry = {"enrichment": {"max_attempts": ATTEMPTS, "initial_seconds": 0.2,
                            "multiplier": 1.0}}
    env = {
        **okta_audit_settings(tmp_path, org_url=okta.base_url, api_token=TOKEN,
                              reconcile_interval=0),
        "FACTORFLOW_PIPELINE__RETRY": orjson.dumps(retry).decode(),
    }
    return ServerProcess(tmp_path, secret=HOOK_SECRET, env=env)


def one_event(okta: SimulatedOkta) -> dict[str, Any]:
    return next(e for e in okta.org.events([ACTIVATE])
                if okta.org.users[e["target"][0]["id"]].status == "ACTIVE")


class Workflows:
    """The engine's record of one server's workflows (its SQLite system database)."""

    def __init__(self, server: ServerProcess) -> None:
        self.client = DBOSClient(system_database_url=f"sqlite:///{server.data_dir}/dbos.sqlite")

    def finished(self, workflow_id: str) -> Any:
        found = self.client.list_workflows(workflow_ids=[workflow_id])
        if found and found[0].status == "SUCCESS":
            return found[0].output
        return None

    def steps(self, workflow_id: str) -> list[str]:
        return [step["function_name"] for step in self.client.list_workflow_steps(workflow_id)]

    def close(self) -> None:
        self.client.destroy()


def table(store: SqlEventStore, sql: str, uuid: str) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in store.read(sql, (uuid,))]


@contextlib.contextmanager
def delivered(tmp_path: Path, okta: SimulatedOkta,
              event: dict[str, Any]) -> Iterator[tuple[ServerProcess, Workflows, SqlEventStore]]:
    """A server that took ``event`` (acknowledged), its workflows and its store; the server is
    stopped gracefully afterwards, and must exit cleanly."""
    with serve(tmp_path, okta) as server:
        server.start()
        assert server.post(delivery([event])).status_code == 204
        workflows = Workflows(server)
        store = open_store(server.store_url)
        try:
            yield server, workflows, store
        finally:
            workflows.close()
            store.close()
        assert server.terminate() == 0


def test_enrichment_that_fails_twice_is_retried_then_decided(
    okta: SimulatedOkta, tmp_path: Path
) -> None:
    event = one_event(okta)
    uuid = event["uuid"]
    okta.sim.inject_failures(USER, [503, 503])
    with delivered(tmp_path, okta, event) as (server, workflows, store):
        result = wait_until(lambda: workflows.finished(uuid), "the workflow to finish",
                            server.log_tail)
        steps = workflows.steps(uuid)
        assert result["status"] == "done"
        assert [(a["rule_id"], a["action_id"], a["status"], a["attempts"])
                for a in result["actions"]] == [("defaults", "audit", "done", 1)]
        # Two failed lookups (the first inside evaluate), each followed by a durable
        # sleep; the third answered, and only then was anything decided.
        assert okta.sim.statuses(USER) == [503, 503, 200]
        assert steps == [
            "factorflow.evaluate", "DBOS.sleep", "factorflow.enrich", "DBOS.sleep",
            "factorflow.enrich", "factorflow.decide", "factorflow.act_in_order",
        ]
        decisions = table(store, "SELECT run_id, status, enrichment FROM decisions "
                                 "WHERE event_uuid = ?", uuid)
        assert [(run_id, status) for run_id, status, _ in decisions] == [(uuid, "decided")]
        snapshot = orjson.loads(decisions[0][2])
        assert (snapshot["source"], snapshot["found"]) == ("okta", True)
        assert table(store, "SELECT status FROM facts WHERE uuid = ?", uuid) == [
            ("decided",)]
        assert table(store, "SELECT kind, status, attempts FROM action_results "
                            "WHERE event_uuid = ?", uuid) == [("audit", "done", 1)]
        assert table(store, "SELECT COUNT(*) FROM audit_log WHERE event_uuid = ?",
                     uuid) == [(1,)]
    assert TOKEN not in server.log_text()


def test_enrichment_that_keeps_failing_decides_nothing(
    okta: SimulatedOkta, tmp_path: Path
) -> None:
    event = one_event(okta)
    uuid = event["uuid"]
    okta.sim.inject_failures(USER, [503] * ATTEMPTS)
    with delivered(tmp_path, okta, event) as (server, workflows, store):
        result = wait_until(lambda: workflows.finished(uuid), "the workflow to finish",
                            server.log_tail)
        assert result == {"status": "enrichment_failed",
                          "reason": "enrichment kept failing"}
        assert okta.sim.statuses(USER) == [503] * ATTEMPTS
        assert workflows.steps(uuid) == [
            "factorflow.evaluate", "DBOS.sleep", "factorflow.enrich", "DBOS.sleep",
            "factorflow.enrich",
        ]
        # Never decided on missing data: the fact waits, nothing was decided or done.
        assert table(store, "SELECT status, status_reason FROM facts WHERE uuid = ?",
                     uuid) == [("pending", None)]
        assert table(store, "SELECT run_id FROM decisions WHERE event_uuid = ?", uuid) == []
        assert table(store, "SELECT kind FROM action_results WHERE event_uuid = ?",
                     uuid) == []
        assert table(store, "SELECT seq FROM audit_log WHERE event_uuid = ?", uuid) == []
