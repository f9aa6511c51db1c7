"""Intake: how a hook request's body becomes stored events, behind one interface.

The hook endpoint checks the method, the credential, the content type and the size on the
event loop, reads the body, and hands it to an :class:`Intake`, which parses it, commits its
events durably together with other requests' (group commit) and answers with what was stored.
Two implementations:

- :class:`~factorflow.store.commit_process.ProcessIntake` (``[store] intake = "process"``, the
  default): parsing and the commit run in a child process. The event loop's thread then does
  little more than the HTTP work, and the commit's Python code never competes with it for the
  interpreter lock (decision 14 in docs/decisions.md).
- :class:`ThreadIntake` (``"thread"``): the body is parsed on the event loop and committed by
  the :class:`~factorflow.store.group_commit.GroupCommitter`'s writer thread, in this process.

Both answer the same way: a :class:`Stored` once the delivery's events are on disk;
:class:`~factorflow.errors.RejectedDelivery` (400) when the body is not an event hook delivery
(nothing stored); :class:`~factorflow.errors.StoreUnavailable` when the commit failed (the hook
answers 503 and Okta retries).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from factorflow.okta.payloads import format_utc, parse_delivery
from factorflow.store.base import DeliveryOutcome, Receipt
from factorflow.store.group_commit import GroupCommitter


class ReceiptClock:
    """The receipt time as stored (``format_utc``), formatted from a per-second prefix: this
    runs once per delivery and a full datetime round trip costs more than the rest of it."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, moment: float) -> str:
        """``moment`` (seconds since the epoch) as stored."""
        second = int(moment)
        if second != self._second:
            self._prefix = format_utc(datetime.fromtimestamp(second, UTC))[:19]
            self._second = second
        return f"{self._prefix}.{int((moment - second) * 1_000_000):06d}Z"


@dataclass(slots=True)
class Stored:
    """What one delivery left in the store, once it is durable."""

    delivery_id: str | None
    outcome: DeliveryOutcome


class Intake(Protocol):
    @property
    def committed(self) -> int:
        """Deliveries committed since start."""

    async def start(self) -> None: ...

    async def store(self, org: str, received: float, body: bytes) -> Stored:
        """Parse and durably store ``body``, received for ``org`` at ``received`` (epoch
        seconds)."""

    async def close(self) -> None: ...

    @property
    def healthy(self) -> bool: ...


class ThreadIntake:
    """Parse on the event loop, commit on the group committer's writer thread."""

    def __init__(self, committer: GroupCommitter) -> None:
        self._committer = committer
        self._clock = ReceiptClock()

    @property
    def committed(self) -> int:
        return self._committer.committed

    @property
    def healthy(self) -> bool:
        return True

    async def start(self) -> None:
        self._committer.start()

    async def store(self, org: str, received: float, body: bytes) -> Stored:
        delivery = parse_delivery(body)
        receipt = Receipt(
            delivery_id=delivery.delivery_id, hook_id=delivery.hook_id,
            received_at=self._clock.format(received), org=org, delivery=delivery,
        )
        return Stored(delivery.delivery_id, await self._committer.submit(receipt))

    async def close(self) -> None:
        await self._committer.close()
