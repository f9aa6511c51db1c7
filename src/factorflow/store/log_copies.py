"""How a System Log copy and a hook copy of one event meet in the store.

The two copies of one event are not byte-identical (a hook copy carries ``client.ipChain`` and
``insertionTimestamp``), so a copy from the other source is matched by the event's identity:
uuid, ``eventType`` and ``published``. The same event is a confirmation, never a
``uuid_conflict``; another event under a uuid already taken goes to the quarantine.

``events.provenance``: ``hook`` (only the hook has brought it so far), ``log`` (only the System
Log has it: recovered), ``both``. ``system_log_confirmations.recovered`` says whether the System
Log's copy came first.

:func:`store_copies` writes a page of System Log copies (inside the reconciler's transaction);
:func:`note_hook_copy` is called by the hook's batch commit for a hook copy of an event the
System Log brought or confirmed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, TypeVar

from factorflow.okta.payloads import IncomingEvent, seconds_between
from factorflow.store.base import UUID_CONFLICT

HOOK = "hook"
LOG = "log"
BOTH = "both"
# Okta writes this when a hook delivery failed ("triggered only when the delivery is
# unsuccessful"); the reconciler reads them besides the subscribed types.
DELIVERY_FAILURE_TYPE = "event_hook.delivery"
BATCH_ROWS = 100  # rows per multi-row statement (at most 7 parameters each: far below both limits)
T = TypeVar("T")


class Cursor(Protocol):
    """:class:`factorflow.store.sql.Cursor` (``?`` placeholders in both dialects)."""

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    @property
    def rowcount(self) -> int: ...


def store_copies(
    cur: Cursor, org: str, events: list[IncomingEvent], received_at: str,
) -> dict[str, int]:
    """Insert the events the store lacks and confirm the others, a batch of rows per
    statement. Rows go in uuid order, as the hook's batches do: two writers never wait on each
    other in a cycle. A second copy of a uuid on the same page is compared like any other."""
    counts = dict.fromkeys(("recovered", "confirmed", "known", "conflicts",
                            "delivery_failures"), 0)
    firsts: dict[str, IncomingEvent] = {}
    again: list[IncomingEvent] = []
    for event in sorted(events, key=lambda e: e.uuid):  # stable: copies keep the log's order
        if event.uuid in firsts:
            again.append(event)
        else:
            firsts[event.uuid] = event
    new: set[str] = set()
    for chunk in _chunks(list(firsts.values())):
        new.update(row[0] for row in cur.execute(
            "INSERT INTO events (uuid, event_type, published, published_at, received_at, "
            "delivery_id, hook_id, org, provenance, content_hash, raw) VALUES "
            + ", ".join(["(?, ?, ?, ?, ?, NULL, NULL, ?, 'log', '', ?)"] * len(chunk))
            + " ON CONFLICT (uuid) DO NOTHING RETURNING uuid",
            tuple(value for e in chunk for value in (
                e.uuid, e.event_type, e.published, e.published_at, received_at, org,
                e.raw.decode())),
        ).fetchall())
    recovered = [e for e in firsts.values() if e.uuid in new]
    for chunk in _chunks(recovered):
        cur.execute(
            "INSERT INTO system_log_confirmations (event_uuid, org, confirmed_at, recovered) "
            "VALUES " + ", ".join(["(?, ?, ?, 1)"] * len(chunk)),
            tuple(value for e in chunk for value in (e.uuid, org, received_at)),
        )
    counts["recovered"] = len(recovered)
    counts["delivery_failures"] = sum(e.event_type == DELIVERY_FAILURE_TYPE for e in recovered)
    known = [e for e in firsts.values() if e.uuid not in new] + again
    if known:
        _confirm(cur, org, known, received_at, counts)
    return counts


def _confirm(cur: Cursor, org: str, copies: list[IncomingEvent], received_at: str,
             counts: dict[str, int]) -> None:
    """Copies of stored events: the same event (uuid, type and published) is confirmed, and
    becomes ``both`` if the hook brought it; another event under the uuid is quarantined."""
    stored: dict[str, tuple[str, str, str | None, str]] = {}
    for chunk in _chunks(sorted({e.uuid for e in copies})):
        for uuid, *row in cur.execute(
            "SELECT uuid, provenance, event_type, published_at, org FROM events WHERE uuid IN ("
            + ", ".join("?" * len(chunk)) + ")", tuple(chunk),
        ).fetchall():
            stored[uuid] = (row[0], row[1], row[2], row[3])
    same: list[IncomingEvent] = []
    for event in copies:
        _, event_type, published_at, _ = stored[event.uuid]
        if (event_type, published_at) == (event.event_type, event.published_at):
            same.append(event)
            continue
        counts["conflicts"] += 1
        if not _quarantined(cur, event.uuid, event.raw):
            quarantine(
                cur, org, received_at, event.uuid, UUID_CONFLICT,
                f"System Log: uuid {event.uuid} is already stored as another event "
                f"({event_type} published {published_at}); the stored event is kept",
                event.raw,
            )
    uuids = sorted({e.uuid for e in same})
    confirmed: set[str] = set()
    for chunk in _chunks(uuids):
        confirmed.update(row[0] for row in cur.execute(
            "INSERT INTO system_log_confirmations (event_uuid, org, confirmed_at, recovered) "
            "VALUES " + ", ".join(["(?, ?, ?, 0)"] * len(chunk))
            + " ON CONFLICT (event_uuid) DO NOTHING RETURNING event_uuid",
            tuple(value for uuid in chunk for value in (uuid, stored[uuid][3], received_at)),
        ).fetchall())
    for chunk in _chunks([u for u in uuids if stored[u][0] == HOOK]):
        cur.execute(
            "UPDATE events SET provenance = 'both' WHERE provenance = 'hook' AND uuid IN ("
            + ", ".join("?" * len(chunk)) + ")", tuple(chunk),
        )
    for event in same:
        if event.uuid in confirmed:
            confirmed.discard(event.uuid)  # a second copy on the page is "known"
            counts["confirmed"] += 1
        else:
            counts["known"] += 1


def _chunks(items: Sequence[T], size: int = BATCH_ROWS) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _quarantined(cur: Cursor, uuid: str, raw: bytes) -> bool:
    found = cur.execute(
        "SELECT 1 FROM quarantine WHERE uuid = ? AND reason_code = ? AND delivery_id IS NULL "
        "AND raw = ?",
        (uuid, UUID_CONFLICT, raw.decode()),
    ).fetchone()
    return found is not None


def quarantine(cur: Cursor, org: str, received_at: str, uuid: str | None, code: str,
               reason: str, raw: bytes) -> None:
    """A System Log copy that cannot be stored as an event (no delivery, no hook id)."""
    cur.execute(
        "INSERT INTO quarantine (received_at, delivery_id, hook_id, org, uuid, reason_code, "
        "reason, raw) VALUES (?, NULL, NULL, ?, ?, ?, ?, ?)",
        (received_at, org, uuid, code, reason, raw.decode()),
    )


def note_hook_copy(
    cur: Cursor, event: IncomingEvent, received_at: str, *, provenance: str,
    stored_type: str, stored_published: str | None, same_content: bool,
) -> bool:
    """A hook copy of an event stored before with provenance ``log`` or ``both``: whether it is
    the same event (a duplicate, not a conflict). The first hook copy of a recovered event
    turns it into ``both`` and records how late the hook was. Called by the hook's batch
    commit, inside its transaction."""
    if not same_content:
        if (stored_type, stored_published) != (event.event_type, event.published_at):
            return False
        if provenance == BOTH and not _recovered(cur, event.uuid):
            return False  # the stored copy is a hook copy: hook copies must be identical
    if provenance == LOG:
        cur.execute(
            "UPDATE events SET provenance = 'both' WHERE uuid = ? AND provenance = 'log'",
            (event.uuid,),
        )
        cur.execute(
            "UPDATE system_log_confirmations SET hook_received_at = ?, hook_delay_seconds = ? "
            "WHERE event_uuid = ? AND hook_received_at IS NULL",
            (received_at, seconds_between(event.published_at, received_at), event.uuid),
        )
    return True


def _recovered(cur: Cursor, uuid: str) -> bool:
    row = cur.execute(
        "SELECT recovered FROM system_log_confirmations WHERE event_uuid = ?", (uuid,)
    ).fetchone()
    return row is not None and bool(row[0])
