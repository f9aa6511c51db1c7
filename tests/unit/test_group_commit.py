"""The group committer: many deliveries, few durable commits, each answered after its commit."""

from __future__ import annotations

import asyncio
import threading
import uuid as uuidlib
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from tests.payloads.numbered import delivery_body, numbered_event, to_receipt

from factorflow.errors import StoreUnavailable
from factorflow.store.base import DeliveryOutcome, Receipt
from factorflow.store.group_commit import GroupCommitter
from factorflow.store.sqlite import SqliteEventStore

T = TypeVar("T")
ORG = "example.okta.com"
# Guards against a hang only: a caller left waiting fails the test instead of blocking it.
HANG_GUARD_SECONDS = 60
_NAMESPACE = uuidlib.UUID("0c3f6a52-0000-4000-8000-0000000c0771")


def event(number: int) -> dict[str, Any]:
    """A published corpus event under uuid ``number``; same number, same content."""
    return numbered_event(_NAMESPACE, number)


def receipt(delivery_id: str, *numbers: int) -> Receipt:
    body = delivery_body(delivery_id, [event(n) for n in numbers], "whoGroupCommit0g3")
    return to_receipt(body, ORG)


def run(main: Awaitable[T]) -> T:
    async def guarded() -> T:
        return await asyncio.wait_for(main, HANG_GUARD_SECONDS)

    return asyncio.run(guarded())


class DictStore:
    """A RecordingStore keeping events in a dict, with failures chosen by delivery id.

    A batch holding a delivery id from ``failing`` is refused as a whole with StoreUnavailable,
    one holding an id from ``crashing`` raises RuntimeError (a bug); in both cases nothing of
    the batch is kept, as with a rolled-back transaction. Every call's delivery ids are logged.
    """

    def __init__(self, failing: Sequence[str] = (), crashing: Sequence[str] = ()) -> None:
        self.failing = set(failing)
        self.crashing = set(crashing)
        self.events: dict[str, bytes] = {}
        self.ledger: list[str | None] = []
        self.calls: list[list[str | None]] = []
        self._lock = threading.Lock()

    def record(self, receipts: Sequence[Receipt]) -> list[DeliveryOutcome]:
        with self._lock:
            ids = [r.delivery_id for r in receipts]
            self.calls.append(ids)
            if self.crashing.intersection(ids):
                raise RuntimeError("bug while committing")
            refused = self.failing.intersection(ids)
            if refused:
                raise StoreUnavailable(f"cannot commit delivery {sorted(refused)}")
            staged = dict(self.events)
            outcomes = []
            for r in receipts:
                new = duplicate = conflict = 0
                for incoming in r.delivery.events:
                    if incoming.uuid not in staged:
                        staged[incoming.uuid] = incoming.raw
                        new += 1
                    elif staged[incoming.uuid] == incoming.raw:
                        duplicate += 1
                    else:
                        conflict += 1
                quarantined = len(r.delivery.quarantined) + conflict
                outcomes.append(DeliveryOutcome(
                    total=len(r.delivery.events) + len(r.delivery.quarantined),
                    new=new, duplicate=duplicate, quarantined=quarantined,
                ))
            self.events = staged
            self.ledger.extend(ids)
            return outcomes


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    path = tmp_path / "events.db"
    store = SqliteEventStore(path)
    store.migrate()
    store.close()
    return path


def test_concurrent_submissions_share_commits_and_are_answered_after_them(
    sqlite_path: Path,
) -> None:
    store = SqliteEventStore(sqlite_path)
    observer = SqliteEventStore(sqlite_path)  # another connection, as a reader would have
    # 20 events, each delivered twice (Okta's retry): 40 submissions.
    receipts = [receipt(f"d-{i}", i % 20) for i in range(40)]

    async def main() -> tuple[list[Any], int, int]:
        committer = GroupCommitter(store)
        committer.start()

        async def deliver(r: Receipt) -> tuple[DeliveryOutcome, Any]:
            outcome = await committer.submit(r)
            # Acknowledged means committed: another connection already sees the event.
            return outcome, observer.get_event(r.delivery.events[0].uuid)

        answers = await asyncio.gather(*(deliver(r) for r in receipts))
        await committer.close()
        return list(answers), committer.batches, committer.committed

    try:
        answers, batches, committed = run(main())
        assert committed == 40
        assert 1 <= batches < 40
        for i, (outcome, seen) in enumerate(answers):
            # The first copy of each event is new, its retry a duplicate.
            expected = (1, 0) if i < 20 else (0, 1)
            assert (outcome.total, outcome.new, outcome.duplicate, outcome.quarantined) == (
                1, *expected, 0,
            )
            assert seen is not None
            assert seen.uuid == event(i % 20)["uuid"]
            assert seen.delivery_id == f"d-{i % 20}"
        assert observer.counts() == {"events": 20, "deliveries": 40, "quarantined": 0}
        assert sorted(r.delivery_id or "" for r in observer.ledger(limit=100)) == sorted(
            f"d-{i}" for i in range(40)
        )
    finally:
        store.close()
        observer.close()


def test_max_batch_is_respected(sqlite_path: Path) -> None:
    doubles = DictStore()
    real = SqliteEventStore(sqlite_path)

    async def main(target: Any) -> GroupCommitter:
        committer = GroupCommitter(target, max_batch=4)
        committer.start()
        outcomes = await asyncio.gather(
            *(committer.submit(receipt(f"d-{i}", i)) for i in range(10))
        )
        assert [o.new for o in outcomes] == [1] * 10
        await committer.close()
        return committer

    try:
        counted = run(main(doubles))
        assert len(doubles.calls) >= 3
        assert all(1 <= len(call) <= 4 for call in doubles.calls)
        assert sum(len(call) for call in doubles.calls) == 10
        assert [i for call in doubles.calls for i in call] == [f"d-{i}" for i in range(10)]
        assert (counted.batches, counted.committed) == (len(doubles.calls), 10)

        on_sqlite = run(main(real))
        assert on_sqlite.committed == 10
        assert on_sqlite.batches >= 3  # 10 deliveries, at most 4 per commit
        assert real.counts() == {"events": 10, "deliveries": 10, "quarantined": 0}
    finally:
        real.close()


@pytest.mark.parametrize("failing", [["d-3"], ["d-1", "d-4"]], ids=["one", "two"])
def test_a_failing_delivery_fails_alone(failing: list[str]) -> None:
    store = DictStore(failing=failing)
    receipts = [receipt(f"d-{i}", 2 * i, 2 * i + 1) for i in range(6)]

    async def main() -> tuple[list[Any], GroupCommitter]:
        committer = GroupCommitter(store)
        committer.start()
        results = await asyncio.gather(
            *(committer.submit(r) for r in receipts), return_exceptions=True
        )
        await committer.close()
        return list(results), committer

    results, committer = run(main())

    # The failing delivery shared a batch with neighbours: the fallback was exercised.
    assert any(len(call) > 1 and set(failing) <= set(call) for call in store.calls)
    for r, result in zip(receipts, results, strict=True):
        if r.delivery_id in failing:
            assert isinstance(result, StoreUnavailable)
            assert "cannot commit delivery" in str(result)
        else:
            assert isinstance(result, DeliveryOutcome)
            assert (result.total, result.new, result.duplicate) == (2, 2, 0)
    kept = [f"d-{i}" for i in range(6) if f"d-{i}" not in failing]
    assert sorted(store.ledger, key=str) == kept
    assert set(store.events) == {
        e.uuid for r in receipts if r.delivery_id in kept for e in r.delivery.events
    }
    assert committer.committed == len(kept)


def test_an_unexpected_error_answers_the_waiting_callers() -> None:
    store = DictStore(crashing=["d-2"])
    receipts = [receipt(f"d-{i}", i) for i in range(4)]

    async def main() -> tuple[list[Any], Any]:
        committer = GroupCommitter(store)
        committer.start()
        results = await asyncio.gather(
            *(committer.submit(r) for r in receipts), return_exceptions=True
        )
        # The writer survived: a later delivery is still committed.
        later = await committer.submit(receipt("d-later", 99))
        await committer.close()
        return list(results), later

    results, later = run(main())

    crashed = next(call for call in store.calls if "d-2" in call)
    for r, result in zip(receipts, results, strict=True):
        if r.delivery_id in crashed:
            assert isinstance(result, StoreUnavailable)
            assert str(result) == "internal error while committing"
        else:
            assert isinstance(result, DeliveryOutcome) and result.new == 1
    assert "d-2" not in store.ledger
    assert (later.total, later.new) == (1, 1)
    assert store.ledger[-1] == "d-later"
    assert event(99)["uuid"] in store.events
    assert event(2)["uuid"] not in store.events


def test_close_commits_what_is_already_queued(sqlite_path: Path) -> None:
    store = SqliteEventStore(sqlite_path)

    async def main() -> tuple[list[DeliveryOutcome], GroupCommitter]:
        committer = GroupCommitter(store, max_batch=8)
        committer.start()
        tasks = [asyncio.create_task(committer.submit(receipt(f"d-{i}", i))) for i in range(20)]
        await asyncio.sleep(0)  # every submission is queued, none is committed yet
        assert not any(task.done() for task in tasks)
        assert committer.committed == 0
        await committer.close()
        assert all(task.done() for task in tasks)
        return [task.result() for task in tasks], committer

    try:
        outcomes, committer = run(main())
        assert [(o.new, o.duplicate) for o in outcomes] == [(1, 0)] * 20
        assert committer.committed == 20
        assert committer.batches >= 3  # 20 deliveries, at most 8 per commit
        assert store.counts() == {"events": 20, "deliveries": 20, "quarantined": 0}
    finally:
        store.close()


def test_submit_after_close_is_refused(sqlite_path: Path) -> None:
    store = SqliteEventStore(sqlite_path)

    async def main() -> None:
        committer = GroupCommitter(store)
        with pytest.raises(StoreUnavailable, match="shutting down"):
            await committer.submit(receipt("d-early", 1))  # not started yet
        committer.start()
        outcome = await committer.submit(receipt("d-1", 1))
        assert outcome.new == 1
        await committer.close()
        with pytest.raises(StoreUnavailable, match="shutting down"):
            await committer.submit(receipt("d-late", 2))

    try:
        run(main())
        assert store.counts() == {"events": 1, "deliveries": 1, "quarantined": 0}
        assert [r.delivery_id for r in store.ledger()] == ["d-1"]
        assert store.get_event(event(2)["uuid"]) is None
    finally:
        store.close()
