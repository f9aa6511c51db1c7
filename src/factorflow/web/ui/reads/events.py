"""The event list: newest first, filtered, a page at a time by keyset (``received_at``,
``seq``) - never OFFSET, never a total count.

Which table drives the query depends on the filters, so that an index serves both the filter
and the order: ``events`` (by ``received_at``) when only event columns are filtered, ``facts``
(by user / factor / enrolled_by / outcome, each ``(column, received_at)``) when a fact column
is. A rule filter goes through ``action_results``: a rare rule's events are looked up and
sorted (at most RULE_LOOKUP of them), a common one is checked event by event while scanning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from factorflow.actions.base import ActionStore
from factorflow.domain.factors import STRENGTH

PAGE_SIZE = 50
RULE_LOOKUP = 5000
_UUID = re.compile(r"^[0-9A-Za-z-]{8,64}$")

# What the filter form offers (free text is accepted too).
FACTOR_TYPES = (*sorted(STRENGTH), "unknown")
ENROLLED_BY = ("self", "admin", "api", "system", "unknown")
OUTCOMES = ("SUCCESS", "FAILURE", "SKIPPED", "ALLOW", "DENY", "CHALLENGE", "UNKNOWN")


@dataclass(frozen=True, slots=True)
class EventFilter:
    q: str | None = None  # an event uuid, or a user (Okta id or login)
    org: str | None = None
    since: str | None = None  # received at or after (store timestamp form)
    until: str | None = None  # received before
    factor: str | None = None  # normalised factor type
    enrolled_by: str | None = None
    rule: str | None = None
    outcome: str | None = None  # Okta's outcome.result, e.g. SUCCESS, FAILURE
    provenance: str | None = None  # hook, log (recovered from the System Log) or both

    def active(self) -> bool:
        return any(getattr(self, name) for name in self.__slots__)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a page starts or ends: the keyset of one row."""

    received_at: str
    seq: int

    def token(self) -> str:
        return f"{self.received_at}~{self.seq}"

    @classmethod
    def parse(cls, token: str | None) -> Position | None:
        if not token:
            return None
        received_at, _, seq = token.rpartition("~")
        if not received_at or not seq.isdigit() or len(received_at) > 40:
            return None
        return cls(received_at, int(seq))


@dataclass(frozen=True)
class EventRow:
    seq: int
    uuid: str
    event_type: str
    published: str
    received_at: str
    org: str
    provenance: str
    user: str | None
    factor_type: str | None
    strength: str | None
    enrolled_by: str | None
    outcome: str | None
    status: str | None  # the fact's status; None: not processed yet

    @property
    def position(self) -> Position:
        return Position(self.received_at, self.seq)


@dataclass(frozen=True)
class EventPage:
    rows: list[EventRow]
    older: Position | None  # the next page back in time, if there is one
    newer: Position | None  # the page before this one, if this is not the newest


_COLUMNS = (
    "e.seq, e.uuid, e.event_type, e.published, e.received_at, e.org, e.provenance, "
    "COALESCE(f.user_login, f.user_id), f.factor_type, f.strength, f.enrolled_by, f.outcome, "
    "f.status"
)


def list_events(
    store: ActionStore,
    flt: EventFilter,
    *,
    older_than: Position | None = None,
    newer_than: Position | None = None,
    limit: int = PAGE_SIZE,
) -> EventPage:
    """One page. ``older_than``: the page after a position (going back in time);
    ``newer_than``: the page before it; neither: the newest page."""
    flt = _interpret(flt)
    ascending = newer_than is not None and older_than is None
    rows = _query(store, flt, older_than, newer_than if ascending else None, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    if ascending:
        rows.reverse()
        older = rows[-1].position if rows else None
        newer = rows[0].position if more and rows else None
    else:
        older = rows[-1].position if more and rows else None
        newer = rows[0].position if older_than is not None and rows else None
    return EventPage(rows, older, newer)


def _interpret(flt: EventFilter) -> EventFilter:
    """``q`` is a uuid when an event has it; otherwise a user (kept in ``q``)."""
    if flt.q is not None:
        flt = replace(flt, q=flt.q.strip() or None)
    return flt


def _query(
    store: ActionStore, flt: EventFilter, older: Position | None, newer: Position | None,
    limit: int,
) -> list[EventRow]:
    where: list[str] = []
    params: list[Any] = []

    def add(condition: str, *values: Any) -> None:
        where.append(condition)
        params.extend(values)

    fact_driven = bool(flt.factor or flt.enrolled_by or flt.outcome)
    key = "f.received_at" if fact_driven else "e.received_at"
    if flt.q:
        if _UUID.match(flt.q) and store.read("SELECT 1 FROM events WHERE uuid = ?", (flt.q,)):
            add("e.uuid = ?", flt.q)
        else:
            fact_driven, key = True, "f.received_at"
            add("(f.user_id = ? OR lower(f.user_login) = ?)", flt.q, flt.q.lower())
    if flt.factor:
        add("f.factor_type = ?", flt.factor)
    if flt.enrolled_by:
        add("f.enrolled_by = ?", flt.enrolled_by)
    if flt.outcome:
        add("f.outcome = ?", flt.outcome)
    if flt.org:
        add("e.org = ?", flt.org)
    if flt.provenance == "log":  # rare: the literal lets the partial index events_dash_log serve
        add("e.provenance = 'log'")
    elif flt.provenance:  # hook, both: common, found scanning newest first
        add("e.provenance = ?", flt.provenance)
    if flt.since:
        add(f"{key} >= ?", flt.since)
    if flt.until:
        add(f"{key} < ?", flt.until)
    if flt.rule:
        if _rule_is_rare(store, flt.rule):
            add("e.uuid IN (SELECT event_uuid FROM action_results WHERE rule_id = ?)", flt.rule)
        else:
            add("EXISTS (SELECT 1 FROM action_results r WHERE r.event_uuid = e.uuid "
                "AND r.rule_id = ?)", flt.rule)
    order = "DESC"
    if older is not None:
        add(f"{key} <= ? AND ({key} < ? OR e.seq < ?)",
            older.received_at, older.received_at, older.seq)
    elif newer is not None:
        add(f"{key} >= ? AND ({key} > ? OR e.seq > ?)",
            newer.received_at, newer.received_at, newer.seq)
        order = "ASC"
    if fact_driven:
        source = "facts f JOIN events e ON e.uuid = f.uuid"
    else:
        source = "events e LEFT JOIN facts f ON f.uuid = e.uuid"
    sql = (f"SELECT {_COLUMNS} FROM {source} WHERE {' AND '.join(where) or '1 = 1'} "
           f"ORDER BY {key} {order}, e.seq {order} LIMIT ?")
    return [EventRow(*row) for row in store.read(sql, (*params, limit))]


def _rule_is_rare(store: ActionStore, rule: str) -> bool:
    rows = store.read(
        "SELECT COUNT(*) FROM (SELECT 1 FROM action_results WHERE rule_id = ? "
        f"LIMIT {RULE_LOOKUP + 1}) AS found",
        (rule,),
    )
    return int(rows[0][0]) <= RULE_LOOKUP
