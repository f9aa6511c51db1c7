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
* hook delay percentiles (nearest rank): for events the hook delivered first, received -
  published (the fact's ``delay_seconds``, known as soon as the event is stored); for
  recovered events whose hook copy came later, ``system_log_confirmations.hook_delay_seconds``.
  The delays are kept as a histogram of buckets about 4.4 % wide: a percentile is the largest
  delay in the bucket its rank falls in (never below the exact value, at most a bucket above;
  see :mod:`factorflow.store.delivery_rollup`). ``max_delay`` is exact.
* ``early_events``: events stored at least a second before Okta published them, which only a
  clock behind Okta's produces (Okta publishes an event before it delivers it), and
  ``clock_behind_seconds``: how far behind that clock is at least (the earliest such delay,
  within 4.4 %). Hook delays, audit times and the roll-up's 5-minute settle all assume clocks
  kept in step (NTP); this is how a host that is not shows.

The figures come from hourly and daily roll-ups, brought up to date by each call (see
:mod:`factorflow.store.delivery_rollup`): a period costs a few hundred small rows, whatever
the number of events in it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from factorflow.okta.payloads import format_utc, seconds_between
from factorflow.store import delivery_rollup
from factorflow.store.system_log import SystemLogLedger

if TYPE_CHECKING:
    from factorflow.store.sql import SqlEventStore

log = logging.getLogger(__name__)

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
    early_events: int = 0  # stored at least EARLY_SECONDS before Okta published them
    clock_behind_seconds: float | None = None  # at least; None without early events
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
            "max_delay_seconds": self.max_delay, "early_events": self.early_events,
            "clock_behind_seconds": self.clock_behind_seconds,
            "cursor_published": self.cursor_published,
            "polled_at": self.polled_at, "lag_seconds": self.lag_seconds,
            "last_error": self.last_error,
        }


def delivery_gap(
    store: SqlEventStore, *, since: datetime | None = None, until: datetime | None = None,
    hours: float = 24.0, orgs: list[str] | None = None, now: datetime | None = None,
    rolled: bool = True,
) -> list[OrgGap]:
    """The figures of each org over [since, until) (default: the last ``hours``).
    ``rolled=False`` reads every event of the window instead of the roll-ups (the reference
    they are checked against)."""
    moment = now or datetime.now(UTC)
    end = until or moment
    start = since or end - timedelta(hours=hours)
    found: dict[str, OrgGap] = {name: OrgGap(name) for name in orgs or ()}

    def org(name: str) -> OrgGap:
        return found.setdefault(name, OrgGap(name))

    if rolled:
        _refresh(store, start)
    for name, tally in delivery_rollup.tallies(store, start, end, rolled=rolled).items():
        entry = org(name)
        entry.events, entry.by_hook, entry.recovered = tally.events, tally.by_hook, \
            tally.recovered
        entry.recovered_never_hooked, entry.confirmed = tally.never_hooked, tally.confirmed
        entry.delivery_failures = tally.failures
        entry.delays = tally.delays
        if entry.delays:
            entry.delay_percentiles = {p: tally.percentile(p) for p in PERCENTILES}
            entry.max_delay = tally.max_delay
            entry.early_events, entry.clock_behind_seconds = tally.early()
    for state in SystemLogLedger(store).states():
        entry = org(state.org)
        entry.cursor_published, entry.polled_at = state.cursor_published, state.polled_at
        entry.last_error = state.last_error
        lag = seconds_between(state.cursor_published, format_utc(moment))
        entry.lag_seconds = max(lag, 0.0) if lag is not None else None
    return sorted(found.values(), key=lambda gap: gap.org)


def _refresh(store: SqlEventStore, start: datetime) -> None:
    """Bring the roll-ups up to date; if that fails (a read-only database user, a busy
    database), the figures are still right, computed from more events."""
    try:
        delivery_rollup.refresh(store, back_to=start)
    except Exception as exc:
        log.warning("delivery_gap.rollup_failed", extra={"fields": {
            "error": type(exc).__name__}})
