"""Delivery-gap figures per org: how much arrived by the hook, how much the System Log had to
recover, and how late the hook was. For ``factorflow reconcile --report``, the metrics endpoint
and the dashboard.

The window is on ``events.received_at`` (when factorflow stored the event; for a recovered event,
when the reconciler read it). ``event_hook.delivery`` events (Okta's record of a failed
delivery) are counted apart, not as events.

* ``events``: events stored in the window;
* ``by_hook``: of those, how many the hook delivered (provenance ``hook`` or ``both``), and
  ``hook_share`` = by_hook / events;
* ``recovered``: stored from the System Log first (the hook had not delivered them when the log
  was read); ``recovered_never_hooked`` of those never came by hook at all (provenance ``log``);
* ``confirmed``: events the System Log also holds (a row in ``system_log_confirmations``);
* hook delay percentiles (nearest rank): for events the hook delivered first,
  ``facts.delay_seconds`` (received - published); for recovered events whose hook copy came
  later, ``system_log_confirmations.hook_delay_seconds``. Events not yet prepared by the worker
  have no fact and no delay yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from factorflow.okta.payloads import format_utc
from factorflow.store.system_log import DELIVERY_FAILURE_TYPE, SystemLogLedger, seconds_between

if TYPE_CHECKING:
    from factorflow.store.sql import SqlEventStore

PERCENTILES = (50, 90, 99)


@dataclass
class OrgGap:
    org: str
    events: int = 0
    by_hook: int = 0
    recovered: int = 0
    recovered_never_hooked: int = 0
    confirmed: int = 0
    delivery_failures: int = 0
    delays: int = 0  # events with a known hook delay
    delay_percentiles: dict[int, float | None] = field(default_factory=dict)
    max_delay: float | None = None
    cursor_published: str | None = None
    polled_at: str | None = None
    lag_seconds: float | None = None
    last_error: str | None = None

    @property
    def hook_share(self) -> float | None:
        return self.by_hook / self.events if self.events else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "org": self.org, "events": self.events, "by_hook": self.by_hook,
            "hook_share": self.hook_share, "recovered": self.recovered,
            "recovered_never_hooked": self.recovered_never_hooked, "confirmed": self.confirmed,
            "delivery_failures": self.delivery_failures, "delays": self.delays,
            "delay_seconds": {f"p{p}": v for p, v in self.delay_percentiles.items()},
            "max_delay_seconds": self.max_delay, "cursor_published": self.cursor_published,
            "polled_at": self.polled_at, "lag_seconds": self.lag_seconds,
            "last_error": self.last_error,
        }


def delivery_gap(
    store: SqlEventStore, *, since: datetime | None = None, until: datetime | None = None,
    hours: float = 24.0, orgs: list[str] | None = None, now: datetime | None = None,
) -> list[OrgGap]:
    """The figures of each org over [since, until) (default: the last ``hours``)."""
    moment = now or datetime.now(UTC)
    end = until or moment
    start = since or end - timedelta(hours=hours)
    span = (format_utc(start), format_utc(end))
    found: dict[str, OrgGap] = {name: OrgGap(name) for name in orgs or ()}

    def org(name: str) -> OrgGap:
        return found.setdefault(name, OrgGap(name))

    for name, events, by_hook, recovered, never, confirmed in store.read(
        "SELECT e.org, COUNT(*), "
        "SUM(CASE WHEN e.provenance IN ('hook', 'both') THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN c.recovered = 1 THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN e.provenance = 'log' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN c.event_uuid IS NOT NULL THEN 1 ELSE 0 END) "
        "FROM events e LEFT JOIN system_log_confirmations c ON c.event_uuid = e.uuid "
        "WHERE e.received_at >= ? AND e.received_at < ? AND e.event_type <> ? GROUP BY e.org",
        (*span, DELIVERY_FAILURE_TYPE),
    ):
        entry = org(name)
        entry.events, entry.by_hook, entry.recovered = int(events), int(by_hook), int(recovered)
        entry.recovered_never_hooked, entry.confirmed = int(never), int(confirmed)
    for name, count in store.read(
        "SELECT org, COUNT(*) FROM events WHERE received_at >= ? AND received_at < ? "
        "AND event_type = ? GROUP BY org",
        (*span, DELIVERY_FAILURE_TYPE),
    ):
        org(name).delivery_failures = int(count)
    _delays(store, span, org)
    for state in SystemLogLedger(store).states():
        entry = org(state.org)
        entry.cursor_published, entry.polled_at = state.cursor_published, state.polled_at
        entry.last_error = state.last_error
        lag = seconds_between(state.cursor_published, format_utc(moment))
        entry.lag_seconds = max(lag, 0.0) if lag is not None else None
    return sorted(found.values(), key=lambda gap: gap.org)


def _delays(store: SqlEventStore, span: tuple[str, str], org: Any) -> None:
    """Nearest-rank percentiles in one query (both dialects: the value of rank ``rn`` of ``n``
    is at or past percentile p when rn * 100 >= n * p)."""
    picks = ", ".join(f"MIN(CASE WHEN rn * 100 >= n * {p} THEN delay END)" for p in PERCENTILES)
    rows = store.read(
        f"SELECT org, MAX(n), {picks}, MAX(delay) FROM ("
        "SELECT org, delay, ROW_NUMBER() OVER (PARTITION BY org ORDER BY delay) AS rn, "
        "COUNT(*) OVER (PARTITION BY org) AS n FROM ("
        "SELECT e.org AS org, f.delay_seconds AS delay FROM events e "
        "JOIN facts f ON f.uuid = e.uuid "
        "LEFT JOIN system_log_confirmations c ON c.event_uuid = e.uuid "
        "WHERE e.received_at >= ? AND e.received_at < ? AND e.provenance IN ('hook', 'both') "
        "AND (c.recovered IS NULL OR c.recovered = 0) AND f.delay_seconds IS NOT NULL "
        "UNION ALL "
        "SELECT e.org AS org, c.hook_delay_seconds AS delay FROM events e "
        "JOIN system_log_confirmations c ON c.event_uuid = e.uuid "
        "WHERE e.received_at >= ? AND e.received_at < ? AND c.recovered = 1 "
        "AND c.hook_delay_seconds IS NOT NULL"
        ") AS delays) AS ranked GROUP BY org",
        (*span, *span),
    )
    for name, count, *values in rows:
        entry = org(name)
        entry.delays = int(count)
        entry.delay_percentiles = {
            p: float(v) if v is not None else None
            for p, v in zip(PERCENTILES, values[:-1], strict=True)
        }
        entry.max_delay = float(values[-1]) if values[-1] is not None else None
