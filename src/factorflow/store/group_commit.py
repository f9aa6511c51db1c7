"""Group commit: one durable commit answers many concurrent deliveries.

Requests hand their receipt to one writer thread and wait. The writer takes everything that is
waiting (up to ``max_batch``), commits it in a single transaction, and hands the outcomes back
to the event loop, which wakes each request with its own. A request is acknowledged only after
the commit that holds its events returned, and the event loop never waits for an fsync.

The writer thread pulls work itself rather than being handed batches by a task on the event
loop: a commit then starts as soon as the first request is parsed, and the next requests are
parsed while it runs. (With the loop handing out batches, every request that arrived together
was parsed first and only then committed, and the loop sat idle during the commit.) The outcome
of one commit reaches the loop in one call, not one per request.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from factorflow.errors import StoreUnavailable
from factorflow.store.base import DeliveryOutcome, Receipt

log = logging.getLogger(__name__)


class RecordingStore(Protocol):
    def record(self, receipts: Sequence[Receipt]) -> list[DeliveryOutcome]: ...


@dataclass(slots=True)
class _Pending:
    receipt: Receipt
    done: asyncio.Future[DeliveryOutcome]


_STOP = None  # put on the writer's queue by close(): commit what is before it, then exit


class GroupCommitter:
    def __init__(
        self,
        store: RecordingStore,
        *,
        max_batch: int = 32,
        on_new_events: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._on_new_events = on_new_events
        self._max_batch = max_batch
        self._waiting: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._closing = False
        # Counted on the event loop when the outcomes are handed out.
        self.batches = 0
        self.committed = 0

    def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stopped = self._loop.create_future()
        self._closing = False
        self._thread = threading.Thread(
            target=self._run, name="factorflow-commit", daemon=True
        )
        self._thread.start()

    async def submit(self, receipt: Receipt) -> DeliveryOutcome:
        """Wait until ``receipt`` is durably stored; raise StoreUnavailable if it was not."""
        if self._closing or self._loop is None:
            raise StoreUnavailable("the receiver is shutting down")
        done: asyncio.Future[DeliveryOutcome] = self._loop.create_future()
        self._waiting.put(_Pending(receipt, done))
        return await done

    async def close(self) -> None:
        """Commit what is waiting, then stop the writer thread."""
        self._closing = True
        if self._thread is None or self._stopped is None:
            return
        self._waiting.put(_STOP)
        await self._stopped  # resolved after the last outcomes were handed out
        self._thread.join()
        self._thread = None
        self._loop = None

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._waiting.get()
            if first is _STOP:
                break
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    item = self._waiting.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            self._commit(batch)
        self._hand_back(self._finished)

    def _commit(self, batch: list[_Pending]) -> None:
        outcomes = record_each(self._store, [pending.receipt for pending in batch])
        if self._on_new_events is not None and any(
            isinstance(o, DeliveryOutcome) and o.new for o in outcomes
        ):
            self._on_new_events()
        self._hand_back(self._settle_all, batch, outcomes)

    # -- back on the event loop ----------------------------------------------------------

    def _settle_all(
        self,
        batch: list[_Pending],
        results: Sequence[DeliveryOutcome | BaseException],
    ) -> None:
        stored = sum(1 for result in results if isinstance(result, DeliveryOutcome))
        if stored:
            self.batches += 1
            self.committed += stored
        for pending, result in zip(batch, results, strict=True):
            if pending.done.done():  # the request was cancelled (client went away)
                continue
            if isinstance(result, BaseException):
                pending.done.set_exception(result)
            else:
                pending.done.set_result(result)

    def _finished(self) -> None:
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    def _hand_back(self, callback: Callable[..., None], *args: object) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            log.warning("store.commit_outcome_dropped", extra={"fields": {
                "reason": "event loop closed"}})


def record_each(
    store: RecordingStore, receipts: Sequence[Receipt]
) -> list[DeliveryOutcome | StoreUnavailable]:
    """Commit ``receipts`` in one transaction; if the store refuses it, commit them one by one
    so that one bad delivery does not fail its neighbours. Each receipt gets its outcome or
    the StoreUnavailable that its own commit raised. Any other error is a bug: logged, and
    every receipt of the batch gets a StoreUnavailable (so its request is answered 503
    instead of left hanging)."""
    try:
        return list(store.record(receipts))
    except StoreUnavailable as exc:
        if len(receipts) == 1:
            return [exc]
        log.warning("store.batch_failed", extra={"fields": {"batch": len(receipts)}})
        results: list[DeliveryOutcome | StoreUnavailable] = []
        for receipt in receipts:
            results.extend(record_each(store, [receipt]))
        return results
    except Exception:
        log.exception("store.commit_crashed", extra={"fields": {"batch": len(receipts)}})
        return [StoreUnavailable("internal error while committing")] * len(receipts)
