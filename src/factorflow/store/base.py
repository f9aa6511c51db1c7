"""The store's port and the values it returns. No database driver is imported here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from factorflow.okta.payloads import ParsedDelivery

# Why a copy of an event went to the quarantine instead of the ledger.
UUID_CONFLICT = "uuid_conflict"


@dataclass(slots=True)  # not frozen: built per delivery on the hot path
class Receipt:
    """What one hook request brought in, as stored in its ledger row."""

    delivery_id: str | None
    hook_id: str | None
    received_at: str
    org: str
    delivery: ParsedDelivery


@dataclass(slots=True)  # not frozen: built per delivery on the hot path
class DeliveryOutcome:
    total: int
    new: int
    duplicate: int
    quarantined: int


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    uuid: str
    event_type: str
    published: str
    received_at: str
    delivery_id: str | None
    hook_id: str | None
    org: str
    provenance: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    id: int
    received_at: str
    delivery_id: str | None
    hook_id: str | None
    org: str
    uuid: str | None
    reason_code: str
    reason: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    id: int
    delivery_id: str | None
    hook_id: str | None
    org: str
    received_at: str
    events_total: int
    events_new: int
    events_duplicate: int
    events_quarantined: int


class EventStore(Protocol):
    """Writes are made from one writer thread; reads may come from anywhere."""

    def record(self, receipts: Sequence[Receipt]) -> list[DeliveryOutcome]:
        """Store every receipt in one transaction, durable when this returns.

        Each event is inserted once by uuid; a copy with the same content counts as a duplicate,
        a different event under a uuid already taken goes to the quarantine (``uuid_conflict``).
        Raises :class:`factorflow.errors.StoreUnavailable` if the commit failed.
        """
        ...

    def recent_events(self, limit: int = 50) -> list[StoredEvent]: ...

    def get_event(self, uuid: str) -> StoredEvent | None: ...

    def quarantine(self, limit: int = 50) -> list[QuarantineEntry]: ...

    def ledger(self, limit: int = 50) -> list[LedgerEntry]: ...

    def counts(self) -> dict[str, int]: ...

    def check_writable(self) -> None: ...

    def close(self) -> None: ...
