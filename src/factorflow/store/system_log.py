"""The System Log reconciler's side of the event store: its cursor and lease per org
(``reconciler_state``), the pages it reads (recovered events and confirmations, see
:mod:`factorflow.store.log_copies` for how a System Log copy and a hook copy of one event meet),
and the confirmation of one event (``system_log_confirmations``).

A recovered event is inserted like a hook event (``dispatched_at`` unset), so the workflow relay
hands it to the pipeline exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from factorflow.okta.payloads import check_events, format_utc
from factorflow.store.log_copies import (
    BOTH,
    DELIVERY_FAILURE_TYPE,
    HOOK,
    LOG,
    Cursor,
    quarantine,
    store_copies,
)

if TYPE_CHECKING:
    from factorflow.store.sql import SqlEventStore


__all__ = ["BOTH", "DELIVERY_FAILURE_TYPE", "HOOK", "LOG", "Confirmation", "PageOutcome",
           "ReconcilerState", "SystemLogLedger"]

_STATE_COLUMNS = (
    "org, cursor_published, polled_at, next_url, filter, started_since, pages_read, "
    "events_read, events_recovered, events_confirmed, last_error, last_error_at, lease_owner, "
    "lease_until"
)


@dataclass(frozen=True, slots=True)
class ReconcilerState:
    org: str
    cursor_published: str | None
    polled_at: str | None
    next_url: str | None
    filter: str | None
    started_since: str | None
    pages_read: int
    events_read: int
    events_recovered: int
    events_confirmed: int
    last_error: str | None
    last_error_at: str | None
    lease_owner: str | None
    lease_until: str | None


@dataclass(frozen=True, slots=True)
class PageOutcome:
    """What one page of the System Log did to the store."""

    read: int = 0  # events on the page
    recovered: int = 0  # new: stored from the System Log (the hook had not delivered them)
    confirmed: int = 0  # already stored from the hook, now confirmed
    known: int = 0  # already confirmed or recovered before (a page read again)
    conflicts: int = 0  # another event under a stored uuid: quarantined
    quarantined: int = 0  # not storable (no uuid, bad published ...): quarantined
    delivery_failures: int = 0  # new event_hook.delivery events among the recovered


@dataclass(frozen=True, slots=True)
class Confirmation:
    event_uuid: str
    org: str | None
    confirmed_at: str | None
    recovered: bool
    hook_received_at: str | None
    hook_delay_seconds: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"confirmed": True, "confirmed_at": self.confirmed_at,
                "recovered": self.recovered, "hook_received_at": self.hook_received_at,
                "hook_delay_seconds": self.hook_delay_seconds}


def _now() -> datetime:
    return datetime.now(UTC)


class SystemLogLedger:
    def __init__(self, store: SqlEventStore, clock: Any = _now) -> None:
        self.store = store
        self._clock = clock

    # -- the poller's state ---------------------------------------------------------------

    def state(self, org: str) -> ReconcilerState | None:
        rows = self.store.read(
            f"SELECT {_STATE_COLUMNS} FROM reconciler_state WHERE org = ?", (org,)
        )
        return ReconcilerState(*rows[0]) if rows else None

    def states(self) -> list[ReconcilerState]:
        rows = self.store.read(f"SELECT {_STATE_COLUMNS} FROM reconciler_state ORDER BY org")
        return [ReconcilerState(*row) for row in rows]

    def take_lease(self, org: str, owner: str, seconds: float) -> bool:
        """Become the one poller of ``org`` for ``seconds`` (renewed by the holder); False if
        another owner holds an unexpired lease."""
        now = self._clock()
        until = format_utc(now + timedelta(seconds=seconds))
        with self.store.write() as cur:
            cur.execute(
                "INSERT INTO reconciler_state (org) VALUES (?) ON CONFLICT (org) DO NOTHING",
                (org,),
            )
            cur.execute(
                "UPDATE reconciler_state SET lease_owner = ?, lease_until = ? WHERE org = ? "
                "AND (lease_owner IS NULL OR lease_owner = ? OR lease_until IS NULL "
                "OR lease_until < ?)",
                (owner, until, org, owner, format_utc(now)),
            )
            return cur.rowcount == 1

    def release_lease(self, org: str, owner: str) -> None:
        with self.store.write() as cur:
            cur.execute(
                "UPDATE reconciler_state SET lease_owner = NULL, lease_until = NULL "
                "WHERE org = ? AND lease_owner = ?",
                (org, owner),
            )

    def record_error(self, org: str, error: str) -> None:
        with self.store.write() as cur:
            cur.execute(
                "INSERT INTO reconciler_state (org) VALUES (?) ON CONFLICT (org) DO NOTHING",
                (org,),
            )
            cur.execute(
                "UPDATE reconciler_state SET last_error = ?, last_error_at = ? WHERE org = ?",
                (error[:2000], format_utc(self._clock()), org),
            )

    def reset(self, org: str) -> None:
        """Forget the cursor: the next poll starts from the look-back again."""
        with self.store.write() as cur:
            cur.execute(
                "UPDATE reconciler_state SET next_url = NULL, filter = NULL, "
                "cursor_published = NULL WHERE org = ?",
                (org,),
            )

    # -- one page -------------------------------------------------------------------------

    def record_page(
        self, org: str, events: Sequence[Any], *, next_url: str | None, filter: str,
        since: str | None = None,
    ) -> PageOutcome:
        """Store one page of System Log events and move the cursor, in one transaction: after
        a crash either both happened or neither, and the page is read again."""
        received_at = format_utc(self._clock())
        good, broken = check_events(events)
        newest = max((e.published_at for e in good if e.published_at), default=None)
        with self.store.write() as cur:
            counts = store_copies(cur, org, good, received_at)
            for entry in broken:
                quarantine(cur, org, received_at, entry.uuid, entry.reason_code,
                           f"System Log: {entry.reason}", entry.raw)
            self._advance(cur, org, newest, received_at, next_url, filter, since,
                          len(events), counts["recovered"], counts["confirmed"])
        return PageOutcome(read=len(events), quarantined=len(broken), **counts)

    def _advance(
        self, cur: Cursor, org: str, newest: str | None, now: str, next_url: str | None,
        filter: str, since: str | None, read: int, recovered: int, confirmed: int,
    ) -> None:
        cur.execute(
            "INSERT INTO reconciler_state (org) VALUES (?) ON CONFLICT (org) DO NOTHING", (org,)
        )
        previous = cur.execute(
            "SELECT cursor_published FROM reconciler_state WHERE org = ?", (org,)
        ).fetchone()[0]
        cursor_published = max(_present(previous, newest), default=None)
        cur.execute(
            "UPDATE reconciler_state SET cursor_published = ?, polled_at = ?, next_url = ?, "
            "filter = ?, started_since = COALESCE(?, started_since), "
            "pages_read = pages_read + 1, events_read = events_read + ?, "
            "events_recovered = events_recovered + ?, events_confirmed = events_confirmed + ?, "
            "last_error = NULL WHERE org = ?",
            (cursor_published, now, next_url, filter, since, read, recovered, confirmed, org),
        )

    # -- reads ----------------------------------------------------------------------------

    def confirmation(self, uuid: str) -> Confirmation | None:
        rows = self.store.read(
            "SELECT event_uuid, org, confirmed_at, recovered, hook_received_at, "
            "hook_delay_seconds FROM system_log_confirmations WHERE event_uuid = ?",
            (uuid,),
        )
        if not rows:
            return None
        uuid_, org, confirmed_at, recovered, hook_at, delay = rows[0]
        return Confirmation(uuid_, org, confirmed_at, bool(recovered), hook_at,
                            float(delay) if delay is not None else None)


def _present(*values: str | None) -> list[str]:
    return [value for value in values if value is not None]
