"""Metrics read from the store at scrape time: what is true across every process sharing the
database (several receivers and workers), not just this one."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from factorflow.errors import StoreUnavailable
from factorflow.okta.payloads import format_utc
from factorflow.store.delivery_gap import delivery_gap
from factorflow.store.sql import SqlEventStore

log = logging.getLogger(__name__)

# Okta's documented limits for event hooks: 400,000 events per org per 24 h, with a System Log
# warning at 280,000; past the cap, hooks are not triggered and the events are not replayed.
OKTA_DAILY_CAP = 400_000
OKTA_DAILY_WARNING = 280_000


class StoreCollector(Collector):
    def __init__(self, store: SqlEventStore, *, worker_dead_after_seconds: float = 30.0) -> None:
        self._store = store
        self._dead_after = worker_dead_after_seconds

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            yield from self._collect()
        except StoreUnavailable as exc:
            log.warning("metrics.store_unavailable", extra={"fields": {"error": str(exc)}})

    def _collect(self) -> Iterator[GaugeMetricFamily]:
        since = format_utc(datetime.now(UTC) - timedelta(hours=24))
        # What the hook delivered: the events the System Log reconciler brought in (and the
        # failed-delivery records it reads) never came through the hook.
        last_day = GaugeMetricFamily(
            "factorflow_events_last_24h",
            "Events the hook delivered in the last 24 hours (Okta's cap: 400,000 per org, "
            "warning at 280,000)", labels=["org"],
        )
        for org, count in self._store.read(
            "SELECT org, COUNT(*) FROM events WHERE received_at >= ? "
            "AND provenance IN ('hook', 'both') GROUP BY org", (since,)
        ):
            last_day.add_metric([org], count)
        yield last_day
        cap = GaugeMetricFamily("factorflow_okta_daily_event_cap",
                                "Okta's event hook limit per org per 24 h", labels=["level"])
        cap.add_metric(["cap"], OKTA_DAILY_CAP)
        cap.add_metric(["warning"], OKTA_DAILY_WARNING)
        yield cap
        undispatched = GaugeMetricFamily(
            "factorflow_events_awaiting_workflow",
            "Stored events not yet handed to the workflow engine (relay lag)",
        )
        undispatched.add_metric([], self._scalar(
            "SELECT COUNT(*) FROM events WHERE dispatched_at IS NULL"
        ))
        yield undispatched
        yield self._grouped(
            "factorflow_facts", "Facts by pipeline status", ["status"],
            "SELECT status, COUNT(*) FROM facts GROUP BY status",
        )
        yield self._grouped(
            "factorflow_action_results", "Action outcomes by kind (connector) and status",
            ["kind", "status"],
            "SELECT kind, status, COUNT(*) FROM action_results GROUP BY kind, status",
        )
        yield self._grouped(
            "factorflow_dead_letters", "Dead letters by status", ["status"],
            "SELECT status, COUNT(*) FROM dead_letters GROUP BY status",
        )
        yield self._workers()
        yield self._grouped(
            "factorflow_quarantined_events", "Events kept in the quarantine, by reason",
            ["reason"], "SELECT reason_code, COUNT(*) FROM quarantine GROUP BY reason_code",
        )
        yield from self._delivery_gap()

    def _delivery_gap(self) -> Iterator[GaugeMetricFamily]:
        """The last 24 h of factorflow.store.delivery_gap, per org."""
        gaps = delivery_gap(self._store, hours=24.0)
        share = GaugeMetricFamily(
            "factorflow_hook_share_24h",
            "Share of the events stored in the last 24 h that the event hook delivered",
            labels=["org"])
        recovered = GaugeMetricFamily(
            "factorflow_events_recovered_24h",
            "Events of the last 24 h that the System Log reconciler stored before the hook did "
            "(never: the hook never delivered them)", labels=["org", "hook"])
        confirmed = GaugeMetricFamily(
            "factorflow_events_confirmed_24h",
            "Events of the last 24 h that the System Log also holds", labels=["org"])
        failures = GaugeMetricFamily(
            "factorflow_hook_delivery_failures_24h",
            "event_hook.delivery events (failed hook deliveries) read from the System Log in "
            "the last 24 h", labels=["org"])
        delay = GaugeMetricFamily(
            "factorflow_hook_delay_seconds",
            "Hook delay (received - published) of the last 24 h's events, by quantile",
            labels=["org", "quantile"])
        early = GaugeMetricFamily(
            "factorflow_events_early_24h",
            "Events of the last 24 h stored a second or more before Okta published them: the "
            "receiving host's clock is behind Okta's", labels=["org"])
        behind = GaugeMetricFamily(
            "factorflow_clock_behind_okta_seconds",
            "How far behind Okta's the receiving clock was at least, from the last 24 h's "
            "early events (0 without any)", labels=["org"])
        lag = GaugeMetricFamily(
            "factorflow_reconciler_lag_seconds",
            "Now minus the published time of the newest System Log event read", labels=["org"])
        for gap in gaps:
            if gap.hook_share is not None:
                share.add_metric([gap.org], gap.hook_share)
            recovered.add_metric([gap.org, "later"], gap.recovered - gap.recovered_never_hooked)
            recovered.add_metric([gap.org, "never"], gap.recovered_never_hooked)
            confirmed.add_metric([gap.org], gap.confirmed)
            failures.add_metric([gap.org], gap.delivery_failures)
            for p, value in gap.delay_percentiles.items():
                if value is not None:
                    delay.add_metric([gap.org, f"0.{p}"], value)
            early.add_metric([gap.org], gap.early_events)
            behind.add_metric([gap.org], gap.clock_behind_seconds or 0.0)
            if gap.lag_seconds is not None:
                lag.add_metric([gap.org], gap.lag_seconds)
        yield from (share, recovered, confirmed, failures, delay, early, behind, lag)

    def _workers(self) -> GaugeMetricFamily:
        """Workflow workers by state: ``alive`` (a recent heartbeat), ``dead`` (silent, its
        in-flight workflows not yet taken over: alert on this), ``taken_over`` (a survivor
        resumed its workflows), ``stopped`` (stopped gracefully, not yet looked at)."""
        family = GaugeMetricFamily(
            "factorflow_workers", "Workflow workers by state, from their heartbeats",
            labels=["state"],
        )
        cutoff = format_utc(datetime.now(UTC) - timedelta(seconds=self._dead_after))
        states = dict.fromkeys(("alive", "dead", "taken_over", "stopped"), 0)
        for heartbeat_at, stopped_at, recovered_at in self._store.read(
            "SELECT heartbeat_at, stopped_at, recovered_at FROM workers"
        ):
            if recovered_at is not None:
                states["taken_over"] += 1
            elif stopped_at is not None:
                states["stopped"] += 1
            else:
                states["alive" if heartbeat_at >= cutoff else "dead"] += 1
        for state, count in states.items():
            family.add_metric([state], count)
        return family

    def _scalar(self, sql: str) -> int:
        return int(self._store.read(sql)[0][0])

    def _grouped(self, name: str, documentation: str, labels: list[str],
                 sql: str) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, documentation, labels=labels)
        for *values, count in self._store.read(sql):
            family.add_metric([str(v) for v in values], count)
        return family


class OktaRateLimitCollector(Collector):
    """What Okta last said about each rate-limit bucket this process used, per org."""

    def __init__(self, clients: Mapping[str, Any]) -> None:
        self._clients = clients

    def collect(self) -> Iterator[GaugeMetricFamily]:
        remaining = GaugeMetricFamily(
            "factorflow_okta_rate_limit_remaining",
            "Requests left in the Okta rate-limit bucket (X-Rate-Limit-Remaining)",
            labels=["org", "bucket"],
        )
        limit = GaugeMetricFamily(
            "factorflow_okta_rate_limit_limit", "The Okta bucket's limit (X-Rate-Limit-Limit)",
            labels=["org", "bucket"],
        )
        for org in self._clients:
            for bucket, snapshot in self._clients[org].rate_limits().items():
                remaining.add_metric([org, bucket], snapshot.remaining)
                limit.add_metric([org, bucket], snapshot.limit)
        yield remaining
        yield limit


class WorkflowStateCollector(Collector):
    """factorflow's workflows by org and state, read from the workflow database at scrape
    time (every worker's, not only this process's): ``enqueued`` (waiting for a slot),
    ``running`` (in a worker, including those waiting to retry an action or an
    enrichment), ``failed`` and ``cancelled`` (ended without a result)."""

    def __init__(self, counts: Callable[[], Iterable[tuple[str, str, int]]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "factorflow_workflows", "Workflows by org and state, from the workflow database",
            labels=["org", "state"],
        )
        try:
            for org, state, count in self._counts():
                family.add_metric([org, state], count)
        except Exception as exc:  # the workflow database is unreachable: say so, keep the rest
            log.warning("metrics.workflows_unavailable",
                        extra={"fields": {"error": type(exc).__name__}})
        yield family
