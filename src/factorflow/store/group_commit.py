"""Group commit: one durable commit answers many concurrent deliveries.

Requests put their receipt on a queue and wait; one writer task takes everything queued (up to
``max_batch``), commits it in a single transaction on a dedicated thread, so the event loop is
never blocked by the fsync, and then wakes each request with its own outcome. A request is
acknowledged only after the commit that holds its events returned.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
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


class GroupCommitter:
    def __init__(
        self,
        store: RecordingStore,
        *,
        max_batch: int = 256,
        on_new_events: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._on_new_events = on_new_events
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="factorflow-commit")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.batches = 0
        self.committed = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="group-commit")

    async def submit(self, receipt: Receipt) -> DeliveryOutcome:
        """Wait until ``receipt`` is durably stored; raise StoreUnavailable if it was not."""
        if self._closing or self._task is None:
            raise StoreUnavailable("the receiver is shutting down")
        done: asyncio.Future[DeliveryOutcome] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(receipt, done))
        return await done

    async def close(self) -> None:
        """Commit what is queued, then stop the writer and its thread."""
        self._closing = True
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task
            self._task = None
        self._thread.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self._max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            await self._commit(loop, batch)

    async def _commit(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        receipts = [pending.receipt for pending in batch]
        try:
            outcomes = await loop.run_in_executor(self._thread, self._store.record, receipts)
        except StoreUnavailable as exc:
            if len(batch) == 1:
                _settle(batch[0], exc)
                return
            # One bad delivery must not fail its neighbours: commit them one by one.
            log.warning("store.batch_failed", extra={"fields": {"batch": len(batch)}})
            for pending in batch:
                await self._commit(loop, [pending])
            return
        except Exception:  # a bug must answer these requests with 503, not leave them hanging
            log.exception("store.commit_crashed", extra={"fields": {"batch": len(batch)}})
            for pending in batch:
                _settle(pending, StoreUnavailable("internal error while committing"))
            return
        self.batches += 1
        self.committed += len(batch)
        for pending, outcome in zip(batch, outcomes, strict=True):
            _settle(pending, outcome)
        if self._on_new_events is not None and any(outcome.new for outcome in outcomes):
            self._on_new_events()


def _settle(pending: _Pending, result: DeliveryOutcome | BaseException) -> None:
    if pending.done.done():  # the request was cancelled (client went away): nothing to tell
        return
    if isinstance(result, BaseException):
        pending.done.set_exception(result)
    else:
        pending.done.set_result(result)
