"""The outage scenario, end to end: Okta's hook sender (the simulator's) delivers to a real
``factorflow serve`` process (worker in-process, enrichment from the simulated Okta API),
dropping a share of the deliveries and sending others twice and out of order; then the System
Log is reconciled (by ``factorflow reconcile``, or by the worker's own poller). Afterwards every
event is stored exactly once and every action happened exactly once: one audit row per event.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from tests.acceptance.serverproc import ServerProcess, okta_audit_settings, wait_until
from tests.okta.support import MFA_TYPES, TOKEN, SimulatedOkta, simulated_okta

from factorflow.cli_reconcile import reconcile
from factorflow.okta.simulator import HookSender, SendOptions
from factorflow.store.factory import open_store
from factorflow.store.sql import SqlEventStore

pytestmark = pytest.mark.slow

HOOK_SECRET = "Bearer outage-hook-secret-2b7f"
DEADLINE = 120.0


@pytest.fixture
def okta() -> Iterator[SimulatedOkta]:
    # Classic engine: no SMS/voice twins, so every event is decided on its own.
    with simulated_okta(users=40, seed=17, enrollments=70, start=time.time()) as simulated:
        yield simulated


def serve(tmp_path: Path, okta: SimulatedOkta, store_url: str | None,
          interval: float) -> ServerProcess:
    """A receiver with its worker whose rules never match: every event gets the default
    action, one audit row."""
    env = okta_audit_settings(tmp_path, org_url=okta.base_url, api_token=TOKEN,
                              reconcile_interval=interval)
    return ServerProcess(tmp_path, secret=HOOK_SECRET, store_url=store_url, env=env)


def deliver_with_losses(server: ServerProcess, okta: SimulatedOkta) -> tuple[Any, set[str]]:
    events = okta.org.events(MFA_TYPES)
    summary = HookSender(server.hook_url, secret=HOOK_SECRET).send(
        events, SendOptions(batch_size=4, drop=0.3, duplicate=0.3, reorder=True, seed=4))
    assert summary.failed == 0
    assert summary.dropped > 0 and summary.duplicated > 0
    counts = summary.receiver_counts()
    assert counts["quarantined"] == 0 and counts["duplicate"] > 0
    return summary, {e["uuid"] for e in events}


def state(store: SqlEventStore) -> dict[str, Any]:
    return {
        "events": store.read("SELECT uuid, provenance FROM events"),
        "audit": store.read("SELECT event_uuid FROM audit_log"),
        "results": store.read("SELECT event_uuid, kind, status FROM action_results"),
        "facts": store.read("SELECT uuid, status FROM facts"),
        "decisions": store.read("SELECT event_uuid, enrichment FROM decisions"),
        "quarantine": store.read("SELECT uuid, reason_code FROM quarantine"),
    }


def check_exactly_once(store: SqlEventStore, expected: set[str], dropped: set[str],
                       server: ServerProcess) -> None:
    def all_done() -> bool:
        rows = store.read("SELECT COUNT(*) FROM action_results WHERE status = 'done'")
        return int(rows[0][0]) >= len(expected)

    wait_until(all_done, "every event's audit action", server.log_tail, timeout=DEADLINE)
    time.sleep(1.0)  # anything extra (a second run of an event) would show up by now
    found = state(store)
    uuids = [row[0] for row in found["events"]]
    assert sorted(uuids) == sorted(expected)  # each stored once, none missing
    provenance = dict(found["events"])
    assert {u for u in expected if provenance[u] == "log"} == dropped
    assert {provenance[u] for u in expected - dropped} <= {"hook", "both"}
    assert found["quarantine"] == []
    assert Counter(row[0] for row in found["audit"]) == dict.fromkeys(expected, 1)
    assert sorted((r[0], r[1], r[2]) for r in found["results"]) == sorted(
        (u, "audit", "done") for u in expected)
    assert sorted(tuple(r) for r in found["facts"]) == sorted((u, "decided") for u in expected)
    assert len(found["decisions"]) == len(expected)
    sources = {orjson.loads(row[1])["source"] for row in found["decisions"]}
    assert sources == {"okta"}
    assert TOKEN not in server.log_text() and HOOK_SECRET not in server.log_text()


def test_reconcile_repairs_an_outage_sqlite(okta: SimulatedOkta, tmp_path: Path) -> None:
    with serve(tmp_path, okta, None, interval=0) as server:
        server.start()
        summary, expected = deliver_with_losses(server, okta)
        dropped = set(summary.dropped_uuids)
        config = tmp_path / "reconcile.toml"
        config.write_text(
            f'data_dir = "{server.data_dir}"\n[okta]\norg_url = "{okta.base_url}"\n'
            f'api_token = "{TOKEN}"\n', encoding="utf-8")
        result = CliRunner().invoke(reconcile, ["--config", str(config), "--json"])
        assert result.exit_code == 0, result.output
        run = orjson.loads(result.output)
        assert (run["recovered"], run["read"]) == (len(dropped), len(expected))
        assert run["confirmed"] == len(expected - dropped)
        store = open_store(server.store_url)
        try:
            check_exactly_once(store, expected, dropped, server)
            # Reconciling again changes nothing.
            again = orjson.loads(CliRunner().invoke(
                reconcile, ["--config", str(config), "--json", "--since", "2h"]).output)
            assert (again["recovered"], again["known"]) == (0, len(expected))
            assert len(store.read("SELECT event_uuid FROM audit_log")) == len(expected)
        finally:
            store.close()


@pytest.mark.postgres
def test_the_workers_poller_repairs_an_outage_postgres(okta: SimulatedOkta, tmp_path: Path,
                                                       pg_url: str) -> None:
    with serve(tmp_path, okta, pg_url, interval=1.0) as server:
        server.start()
        summary, expected = deliver_with_losses(server, okta)
        store = open_store(pg_url)
        try:
            check_exactly_once(store, expected, set(summary.dropped_uuids), server)
            rows = store.read("SELECT org, events_recovered, lease_owner, last_error "
                              "FROM reconciler_state")
            assert len(rows) == 1
            org, recovered, owner, error = rows[0]
            assert (org, error) == ("default", None)
            assert recovered >= len(summary.dropped_uuids)  # events the hook was yet to bring
            assert owner is not None and owner.startswith("local@")
        finally:
            store.close()
