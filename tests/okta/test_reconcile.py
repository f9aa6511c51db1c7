"""System Log reconciliation against the Okta simulator, on SQLite and PostgreSQL.

Hook copies reach the store through the real receiver (the ASGI app under a test client); the
System Log is read from the simulator over HTTP. Every check is on the store's tables and on
the requests the simulator answered.
"""

from __future__ import annotations

import copy
import re
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from factorflow.bootstrap import build_app, build_pipeline
from factorflow.okta.payloads import format_utc, normalise_timestamp
from factorflow.okta.reconcile import (
    RESTART_OVERLAP,
    ReconcilePoller,
    Reconciler,
    log_event_types,
    log_filter,
)
from factorflow.store.delivery_gap import delivery_gap
from factorflow.store.factory import open_store
from factorflow.store.sql import SqlEventStore
from factorflow.store.system_log import SystemLogLedger
from tests.conftest import SECRET, make_settings
from tests.okta.support import (
    ACTIVATE,
    MFA_TYPES,
    SimulatedOkta,
    delivery,
    delivery_failure,
    simulated_okta,
)

LOGS = "/api/v1/logs"
ORG = "default"
HEADERS = {"Authorization": SECRET, "Content-Type": "application/json"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlEventStore]:
    url = (f"sqlite:///{tmp_path / 'factorflow.db'}" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    opened = open_store(url)
    yield opened
    opened.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqlEventStore]:
    opened = open_store(f"sqlite:///{tmp_path / 'factorflow.db'}")
    yield opened
    opened.close()


@pytest.fixture
def okta() -> Iterator[SimulatedOkta]:
    # Published a few minutes before the wall clock's now, as live events are.
    with simulated_okta(users=25, seed=8, enrollments=30, start=time.time()) as simulated:
        yield simulated


def reconciler(okta: SimulatedOkta, store: SqlEventStore, *, event_types: Any = MFA_TYPES,
               page_size: int = 1000, **client: Any) -> Reconciler:
    return Reconciler(ORG, okta.client(**client), SystemLogLedger(store, clock=okta.now),
                      event_types=event_types, page_size=page_size, clock=okta.now)


def subscribed(okta: SimulatedOkta, types: Any = MFA_TYPES) -> list[dict[str, Any]]:
    return okta.org.events(types)


def rows(store: SqlEventStore, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    return [tuple(row) for row in store.read(sql, params)]


def provenances(store: SqlEventStore) -> dict[str, str]:
    return dict(rows(store, "SELECT uuid, provenance FROM events"))


def post(app: TestClient, events: list[dict[str, Any]], *, quirks: bool = True) -> str:
    answer = app.post("/hooks/okta", content=delivery(events, quirks=quirks), headers=HEADERS)
    assert answer.status_code == 204, answer.text
    return answer.headers["factorflow-result"]


@pytest.fixture
def receiver(tmp_path: Path, store: SqlEventStore) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, workflows={"enabled": False})
    with TestClient(build_app(settings, store)) as client:
        yield client


# -- what is read -----------------------------------------------------------------------------


def test_the_filter_adds_delivery_failures_and_never_reads_group_membership() -> None:
    types = log_event_types([ACTIVATE, "group.user_membership.add",
                             "group.user_membership.remove", "user.session.start"])
    assert types == ["event_hook.delivery", ACTIVATE, "user.session.start"]
    assert log_filter([ACTIVATE]) == (
        'eventType eq "event_hook.delivery" or eventType eq "user.mfa.factor.activate"')


# -- paging, exactly once, the cursor -----------------------------------------------------------


def test_pages_are_followed_to_an_empty_page_and_each_event_stored_once(
    okta: SimulatedOkta, store: SqlEventStore,
) -> None:
    expected = {e["uuid"] for e in subscribed(okta)}
    assert len(expected) > 14
    run = reconciler(okta, store, page_size=7).run()
    assert run.error is None
    assert (run.read, run.recovered, run.confirmed) == (len(expected), len(expected), 0)
    assert run.pages == -(-len(expected) // 7) + 1  # the pages with events, then an empty one
    assert len(okta.requests(LOGS)) == run.pages
    assert provenances(store) == dict.fromkeys(expected, "log")
    confirmed = rows(store, "SELECT event_uuid, org, recovered FROM system_log_confirmations")
    assert sorted(confirmed) == sorted((u, ORG, 1) for u in expected)
    # Stored like hook events: the relay hands each to the workflow engine once.
    assert rows(store, "SELECT COUNT(*) FROM events WHERE dispatched_at IS NULL") == [
        (len(expected),)]
    stored = store.get_event(next(iter(expected)))
    assert stored is not None and stored.delivery_id is None
    assert orjson.loads(stored.raw) == next(
        e for e in okta.org.events() if e["uuid"] == stored.uuid)
    # Reading the same events again (from a time, not the cursor) changes nothing.
    again = reconciler(okta, store).run(since=okta.now() - timedelta(hours=2))
    assert (again.started_from, again.read, again.recovered, again.known) == (
        "since", len(expected), 0, len(expected))
    assert provenances(store) == dict.fromkeys(expected, "log")
    assert rows(store, "SELECT COUNT(*) FROM quarantine") == [(0,)]


def test_the_cursor_is_kept_across_runs(okta: SimulatedOkta, store: SqlEventStore) -> None:
    first = reconciler(okta, store, page_size=10).run()
    state = SystemLogLedger(store).state(ORG)
    assert state is not None and state.next_url and "after=" in state.next_url
    assert state.filter == log_filter(MFA_TYPES)
    newest = max(normalise_timestamp(e["published"]) or "" for e in subscribed(okta))
    assert state.cursor_published == newest
    assert state.polled_at == format_utc(okta.now())
    assert (state.events_read, state.events_recovered, state.pages_read) == (
        first.read, first.recovered, first.pages)
    assert state.started_since == format_utc(okta.now() - timedelta(hours=24))
    okta.clock.advance(600)
    added = {e["uuid"] for e in okta.org.generate_enrollments(8, seed=99)
             if e["eventType"] in MFA_TYPES}
    okta.sim.reset_stats()
    second = reconciler(okta, store, page_size=10).run()  # a new process: only the store
    assert second.started_from == "cursor" and second.since is None
    assert (second.read, second.recovered) == (len(added), len(added))
    assert {u for u, p in provenances(store).items()} >= added
    after = SystemLogLedger(store).state(ORG)
    assert after is not None and after.next_url != state.next_url
    assert after.events_read == first.read + second.read
    assert after.started_since == state.started_since
    assert len(okta.requests(LOGS)) == second.pages


def test_the_first_run_reads_the_lookback_only(okta: SimulatedOkta,
                                               sqlite_store: SqlEventStore) -> None:
    old = {e["uuid"] for e in subscribed(okta)}
    okta.clock.advance(30 * 3600)
    recent = {e["uuid"] for e in okta.org.generate_enrollments(6, seed=5)
              if e["eventType"] in MFA_TYPES}
    ledger = SystemLogLedger(sqlite_store, clock=okta.now)
    run = Reconciler(ORG, okta.client(), ledger, event_types=MFA_TYPES, lookback_hours=24,
                     clock=okta.now).run()
    assert run.started_from == "lookback"
    assert run.since == format_utc(okta.now() - timedelta(hours=24))
    assert set(provenances(sqlite_store)) == recent
    assert not old & set(provenances(sqlite_store))


# -- hook and System Log copies of one event ----------------------------------------------------


def test_hook_then_log_confirms_the_stored_event_without_quarantine(
    okta: SimulatedOkta, store: SqlEventStore, receiver: TestClient,
) -> None:
    events = subscribed(okta)
    assert post(receiver, events) == f"new={len(events)} duplicate=0 quarantined=0"
    run = reconciler(okta, store).run()
    assert (run.read, run.recovered, run.confirmed, run.conflicts) == (
        len(events), 0, len(events), 0)
    assert provenances(store) == {e["uuid"]: "both" for e in events}
    confirmations = rows(store, "SELECT event_uuid, recovered, confirmed_at, hook_received_at "
                                "FROM system_log_confirmations")
    assert sorted(confirmations) == sorted(
        (e["uuid"], 0, format_utc(okta.now()), None) for e in events)
    assert rows(store, "SELECT COUNT(*) FROM quarantine") == [(0,)]
    stored = store.get_event(events[0]["uuid"])
    assert stored is not None and "insertionTimestamp" in orjson.loads(stored.raw)  # the hook's
    # A later hook redelivery of the same copy is still a plain duplicate.
    assert post(receiver, events[:3]) == "new=0 duplicate=3 quarantined=0"
    again = reconciler(okta, store).run(since=okta.now() - timedelta(hours=2))
    assert (again.confirmed, again.known) == (0, len(events))
    assert rows(store, "SELECT COUNT(*) FROM events") == [(len(events),)]


def test_log_then_hook_is_both_too_and_records_how_late_the_hook_was(
    okta: SimulatedOkta, store: SqlEventStore, receiver: TestClient,
) -> None:
    events = subscribed(okta)
    assert reconciler(okta, store).run().recovered == len(events)
    half = events[: len(events) // 2]
    assert post(receiver, half) == f"new=0 duplicate={len(half)} quarantined=0"
    assert post(receiver, half[:2]) == "new=0 duplicate=2 quarantined=0"  # a redelivery
    found = provenances(store)
    assert {u for u, p in found.items() if p == "both"} == {e["uuid"] for e in half}
    assert {u for u, p in found.items() if p == "log"} == {e["uuid"] for e in events[len(half):]}
    assert rows(store, "SELECT COUNT(*) FROM quarantine") == [(0,)]
    late = {row[0]: row[1:] for row in rows(
        store, "SELECT event_uuid, recovered, hook_received_at, hook_delay_seconds "
               "FROM system_log_confirmations")}
    for event in half:
        recovered, hook_at, delay = late[event["uuid"]]
        published = normalise_timestamp(event["published"])
        assert recovered == 1 and hook_at is not None and published is not None
        moment = (float(delay), hook_at)
        assert moment[0] > 0  # published before the hook copy came in
        assert abs(_seconds(published, hook_at) - moment[0]) < 0.001
    for event in events[len(half):]:
        assert late[event["uuid"]][1:] == (None, None)
    stored = store.get_event(half[0]["uuid"])
    assert stored is not None and "insertionTimestamp" not in orjson.loads(stored.raw)
    # The ledger of hook deliveries shows them as duplicates.
    assert rows(store, "SELECT events_new, events_duplicate FROM deliveries ORDER BY id") == [
        (0, len(half)), (0, 2)]


def test_a_hook_copy_identical_to_the_log_copy_also_makes_both(
    okta: SimulatedOkta, store: SqlEventStore, receiver: TestClient,
) -> None:
    events = subscribed(okta)[:4]
    reconciler(okta, store).run()
    assert post(receiver, events, quirks=False) == "new=0 duplicate=4 quarantined=0"
    assert {provenances(store)[e["uuid"]] for e in events} == {"both"}


def test_another_event_under_a_stored_uuid_is_quarantined_once(
    okta: SimulatedOkta, store: SqlEventStore, receiver: TestClient,
) -> None:
    events = subscribed(okta)
    post(receiver, events[:1])
    impostor = copy.deepcopy(events[0])
    impostor["eventType"] = "user.mfa.factor.deactivate"
    impostor["published"] = events[-1]["published"]
    broken = {"eventType": ACTIVATE, "published": events[1]["published"]}  # no uuid
    okta.org.log.append([impostor, broken])
    since = okta.now() - timedelta(hours=2)
    run = reconciler(okta, store).run(since=since)
    assert (run.conflicts, run.quarantined) == (1, 1)
    assert (run.confirmed, run.recovered) == (1, len(events) - 1)
    quarantined = rows(store, "SELECT uuid, reason_code, reason FROM quarantine ORDER BY id")
    assert [(q[0], q[1]) for q in quarantined] == [
        (events[0]["uuid"], "uuid_conflict"), (None, "missing_uuid")]
    assert quarantined[0][2].startswith(f"System Log: uuid {events[0]['uuid']} is already "
                                        f"stored as another event ({ACTIVATE} published")
    assert re.fullmatch(r"System Log: events\[\d+\]: event has no uuid", quarantined[1][2])
    stored = store.get_event(events[0]["uuid"])
    assert stored is not None and stored.event_type == ACTIVATE and stored.provenance == "both"
    # Read again: the same conflict is not quarantined twice.
    assert reconciler(okta, store).run(since=since).conflicts == 1
    assert rows(store, "SELECT COUNT(*) FROM quarantine WHERE reason_code = 'uuid_conflict'") \
        == [(1,)]


# -- failed deliveries and the loop guard --------------------------------------------------------


def test_failed_deliveries_are_stored_screened_out_and_counted(
    okta: SimulatedOkta, sqlite_store: SqlEventStore, tmp_path: Path,
) -> None:
    events = subscribed(okta)
    failure = delivery_failure(okta.org, events[:3])
    group = okta.org.group_named("Contractors")
    user = next(u for u in okta.active_users() if group.id not in u.group_ids)
    okta.client().add_user_to_group(group.id, user.id)  # writes group.user_membership.add
    assert okta.org.events(["group.user_membership.add"])
    types = (*MFA_TYPES, "group.user_membership.add", "group.user_membership.remove")
    run = reconciler(okta, sqlite_store, event_types=types).run()
    assert (run.recovered, run.delivery_failures) == (len(events) + 1, 1)
    stored = rows(sqlite_store, "SELECT event_type, provenance FROM events")
    assert ("event_hook.delivery", "log") in stored
    assert not [t for t, _ in stored if t.startswith("group.")]
    settings = make_settings(tmp_path, pipeline={"event_types": list(types)})
    pipeline, shared = build_pipeline(settings, sqlite_store)
    try:
        prepared = pipeline.prepare(failure["uuid"])
    finally:
        shared.close()
    assert prepared == {"status": "filtered",
                        "reason": "event type event_hook.delivery is not subscribed"}
    gap = delivery_gap(sqlite_store, since=okta.now() - timedelta(minutes=1),
                       until=okta.now() + timedelta(minutes=1))
    assert [(g.org, g.events, g.recovered, g.delivery_failures) for g in gap] == [
        (ORG, len(events), len(events), 1)]


# -- errors, restarts, rate limits ------------------------------------------------------------


def test_an_okta_error_ends_a_run_and_the_next_one_resumes(
    okta: SimulatedOkta, store: SqlEventStore,
) -> None:
    expected = {e["uuid"] for e in subscribed(okta)}
    first = reconciler(okta, store, page_size=5).run(max_pages=2)
    assert (first.pages, first.read, first.error) == (2, 10, None)
    okta.sim.inject_failures(LOGS, [503])
    failed = reconciler(okta, store, page_size=5).run()
    assert failed.pages == 0 and failed.error is not None and "503" in failed.error
    state = SystemLogLedger(store).state(ORG)
    assert state is not None and state.last_error == failed.error
    assert state.last_error_at == format_utc(okta.now())
    assert len(provenances(store)) == 10  # what the first run stored is kept
    resumed = reconciler(okta, store, page_size=5).run()
    assert resumed.started_from == "cursor" and resumed.error is None
    assert resumed.read == len(expected) - 10
    assert set(provenances(store)) == expected
    state = SystemLogLedger(store).state(ORG)
    assert state is not None and state.last_error is None


def test_a_rate_limited_log_is_waited_out(okta: SimulatedOkta,
                                          sqlite_store: SqlEventStore) -> None:
    okta.sim.set_rate_limit(LOGS, 2)
    run = reconciler(okta, sqlite_store, page_size=5, max_wait_seconds=300).run()
    assert run.error is None
    assert set(provenances(sqlite_store)) == {e["uuid"] for e in subscribed(okta)}
    assert okta.clock.sleeps and all(s > 0 for s in okta.clock.sleeps)
    assert 200 in okta.sim.statuses(LOGS)


def test_a_refused_cursor_restarts_shortly_before_the_newest_event(
    okta: SimulatedOkta, sqlite_store: SqlEventStore,
) -> None:
    expected = {e["uuid"] for e in subscribed(okta)}
    reconciler(okta, sqlite_store).run()
    state = SystemLogLedger(sqlite_store).state(ORG)
    assert state is not None and state.cursor_published is not None
    okta.sim.inject_failures(LOGS, [400])
    run = reconciler(okta, sqlite_store).run()
    assert run.started_from == "restart" and run.error is None
    restart = _parse(state.cursor_published) - RESTART_OVERLAP
    assert run.since == format_utc(restart)
    assert run.recovered == 0 and run.known > 0
    assert set(provenances(sqlite_store)) == expected
    assert okta.sim.statuses(LOGS)[-3:] == [400, 200, 200]


def test_new_event_types_are_read_from_the_lookback(
    okta: SimulatedOkta, sqlite_store: SqlEventStore,
) -> None:
    activations = {e["uuid"] for e in subscribed(okta, [ACTIVATE])}
    more = [ACTIVATE, "user.session.start"]
    others = {e["uuid"] for e in subscribed(okta, more)} - activations
    assert others
    assert reconciler(okta, sqlite_store, event_types=[ACTIVATE]).run().recovered == len(
        activations)
    run = reconciler(okta, sqlite_store, event_types=more).run()
    assert run.started_from == "lookback"
    assert (run.recovered, run.known) == (len(others), len(activations))


# -- the background poller -------------------------------------------------------------------------


def test_one_poller_at_a_time_holds_an_org(okta: SimulatedOkta,
                                           sqlite_store: SqlEventStore) -> None:
    ledger = SystemLogLedger(sqlite_store, clock=okta.now)
    assert ledger.take_lease(ORG, "worker-a", 60)
    assert ledger.take_lease(ORG, "worker-a", 60)  # renewed by its holder
    assert not ledger.take_lease(ORG, "worker-b", 60)
    okta.clock.advance(61)
    assert ledger.take_lease(ORG, "worker-b", 60)  # expired: taken over
    ledger.release_lease(ORG, "worker-a")  # not the holder any more: no effect
    state = ledger.state(ORG)
    assert state is not None and state.lease_owner == "worker-b"
    ledger.release_lease(ORG, "worker-b")
    assert ledger.take_lease(ORG, "worker-a", 60)


def test_the_poller_reads_in_the_background_and_wakes_the_relay(
    okta: SimulatedOkta, sqlite_store: SqlEventStore,
) -> None:
    expected = {e["uuid"] for e in subscribed(okta)}
    woken = threading.Event()
    ledger = SystemLogLedger(sqlite_store)
    worker = Reconciler(ORG, okta.client(), ledger, event_types=MFA_TYPES, clock=okta.now,
                        on_new_events=woken.set)
    assert ledger.take_lease(ORG, "other-worker", 3600)  # another worker process reads it
    poller = ReconcilePoller([worker], ledger, interval_seconds=0.05, owner="this-worker")
    assert poller.poll_once() == []  # another worker holds the org: nothing read
    assert provenances(sqlite_store) == {}
    ledger.release_lease(ORG, "other-worker")
    poller.start()
    try:
        deadline = time.monotonic() + 30
        while set(provenances(sqlite_store)) != expected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(provenances(sqlite_store)) == expected
        assert woken.wait(5)
        state = ledger.state(ORG)
        assert state is not None and state.lease_owner == "this-worker"
    finally:
        poller.stop()
    state = ledger.state(ORG)
    assert state is not None and state.lease_owner is None


def _parse(stamp: str) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _seconds(start: str, end: str) -> float:
    return (_parse(end) - _parse(start)).total_seconds()
