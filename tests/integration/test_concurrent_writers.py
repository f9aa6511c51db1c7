"""Several receivers writing to one store at once.

Each writer is its own store instance with its own connections, as separate receiver processes
have. They record the same events in different orders, in multi-delivery batches like the group
committer makes: every uuid must be stored exactly once, the ledger must account for each event
once as new, and no writer may fail (a deadlock between two writers would surface as
StoreUnavailable, i.e. a 503 to Okta).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import uuid as uuidlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.payloads.numbered import delivery_body, numbered_event
from tests.payloads.numbered import to_receipt as numbered_receipt

from factorflow.store.base import DeliveryOutcome, Receipt
from factorflow.store.factory import open_store
from factorflow.store.migrations import available, latest_version
from factorflow.store.sql import SqlEventStore

ORG = "example.okta.com"
SHARED = 150  # uuids every writer records
OWN = 20  # uuids only one writer records
EVENTS_PER_DELIVERY = 5
DELIVERIES_PER_BATCH = 4
_NAMESPACE = uuidlib.UUID("5f1d3c1e-0000-4000-8000-00000000f10f")


def event(number: int) -> dict[str, Any]:
    """Event ``number``: a published corpus event under its own uuid; same number, same bytes."""
    return numbered_event(_NAMESPACE, number)


def writer_plan(writer: int) -> list[list[bytes]]:
    """Batches of delivery bodies: the shared events in a writer-specific order, plus its own."""
    numbers = list(range(SHARED)) + [SHARED + writer * OWN + i for i in range(OWN)]
    random.Random(writer).shuffle(numbers)
    bodies = [
        delivery_body(f"w{writer}-d{start // EVENTS_PER_DELIVERY}",
                      [event(n) for n in numbers[start:start + EVENTS_PER_DELIVERY]],
                      "whoConcurrent0g3")
        for start in range(0, len(numbers), EVENTS_PER_DELIVERY)
    ]
    return [
        bodies[start:start + DELIVERIES_PER_BATCH]
        for start in range(0, len(bodies), DELIVERIES_PER_BATCH)
    ]


def to_receipt(body: bytes) -> Receipt:
    return numbered_receipt(body, ORG)


def expected_uuids(writers: int) -> set[str]:
    numbers = list(range(SHARED + writers * OWN))
    return {event(n)["uuid"] for n in numbers}


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'events.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


def run_threads(count: int, work: Any) -> list[Any]:
    """Run ``work(index)`` in ``count`` threads released together; results or exceptions."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = work(index)
        except BaseException as exc:  # handed back to the test
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def check_store(store: SqlEventStore, writers: int, outcomes: list[DeliveryOutcome]) -> None:
    uuids = expected_uuids(writers)
    submitted = writers * (SHARED + OWN)
    counts = store.counts()
    assert counts == {
        "events": len(uuids),
        "deliveries": writers * sum(len(batch) for batch in writer_plan(0)),
        "quarantined": 0,
    }
    stored = store.recent_events(limit=10 * submitted)
    assert sorted(e.uuid for e in stored) == sorted(uuids)
    ledger = store.ledger(limit=10 * submitted)
    assert sum(row.events_new for row in ledger) == len(uuids)
    assert sum(row.events_duplicate for row in ledger) == submitted - len(uuids)
    assert sum(row.events_quarantined for row in ledger) == 0
    assert sum(o.new for o in outcomes) == len(uuids)
    assert sum(o.duplicate for o in outcomes) == submitted - len(uuids)
    assert all(o.quarantined == 0 for o in outcomes)
    # Every stored event is byte for byte the one that was sent.
    by_uuid = {event(n)["uuid"]: event(n) for n in range(SHARED + writers * OWN)}
    for stored_event in stored:
        assert orjson.loads(stored_event.raw) == by_uuid[stored_event.uuid]


@pytest.mark.parametrize("writers", [2, 3])
def test_concurrent_writers_store_each_uuid_once(store_url: str, writers: int) -> None:
    open_store(store_url).close()  # the schema, as the first receiver would create it
    stores = [open_store(store_url) for _ in range(writers)]
    plans = [[[to_receipt(body) for body in batch] for batch in writer_plan(w)]
             for w in range(writers)]
    try:
        def work(index: int) -> list[DeliveryOutcome]:
            outcomes: list[DeliveryOutcome] = []
            for batch in plans[index]:
                outcomes.extend(stores[index].record(batch))
            return outcomes

        results = run_threads(writers, work)

        errors = [r for r in results if isinstance(r, BaseException)]
        assert errors == []
        check_store(stores[0], writers, [o for r in results for o in r])
    finally:
        for store in stores:
            store.close()


def test_concurrent_first_start_migrates_once(store_url: str) -> None:
    stores = [open_store(store_url, migrate=False) for _ in range(3)]
    try:
        results = run_threads(3, lambda index: stores[index].migrate())
        errors = [r for r in results if isinstance(r, BaseException)]
        assert errors == []
        latest = latest_version(stores[0].dialect)
        assert sorted(v for applied in results for v in applied) == [
            m.version for m in available(stores[0].dialect)
        ]
        for store in stores:
            assert store.schema_version() == latest
            assert store.counts() == {"events": 0, "deliveries": 0, "quarantined": 0}
    finally:
        for store in stores:
            store.close()


# A receiver process reduced to its store: it waits for "go" so that both processes write at
# the same time, records its batches and reports its outcomes as JSON.
_WRITER_PROCESS = """
import sys
from datetime import UTC, datetime

import orjson

from factorflow.okta.payloads import format_utc, parse_delivery
from factorflow.store.base import Receipt
from factorflow.store.factory import open_store

url, plan_path = sys.argv[1], sys.argv[2]
plan = orjson.loads(open(plan_path, "rb").read())
store = open_store(url)
print("ready", flush=True)
assert sys.stdin.readline().strip() == "go"
outcomes = []
for batch in plan:
    receipts = []
    for body in batch:
        delivery = parse_delivery(body.encode())
        receipts.append(Receipt(
            delivery_id=delivery.delivery_id, hook_id=delivery.hook_id,
            received_at=format_utc(datetime.now(UTC)), org=sys.argv[3], delivery=delivery,
        ))
    outcomes += [[o.total, o.new, o.duplicate, o.quarantined] for o in store.record(receipts)]
store.close()
print(orjson.dumps(outcomes).decode(), flush=True)
"""


def test_two_receiver_processes_on_postgres(pg_url: str, tmp_path: Path) -> None:
    open_store(pg_url).close()
    processes = []
    for writer in range(2):
        plan_path = tmp_path / f"plan-{writer}.json"
        plan_path.write_text(json.dumps(
            [[body.decode() for body in batch] for batch in writer_plan(writer)]
        ))
        processes.append(subprocess.Popen(
            [sys.executable, "-c", _WRITER_PROCESS, pg_url, str(plan_path), ORG],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    try:
        for process in processes:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line == "ready\n", process.stderr.read() if process.stderr else line
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=240) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    outcomes = []
    for process, (stdout, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
        outcomes += [DeliveryOutcome(*row) for row in json.loads(stdout)]
    store = open_store(pg_url)
    try:
        check_store(store, 2, outcomes)
    finally:
        store.close()
