"""Metrics read from the store at scrape time: what is true across every process sharing the
database (several receivers and workers), not just this one."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from factorflow.errors import StoreUnavailable
from factorflow.okta.payloads import format_utc
from factorflow.store.sql import SqlEventStore

log = logging.getLogger(__name__)

# Okta's documented limits for event hooks: 400,000 events per org per 24 h, with a System Log
# warning at 280,000; past the cap, hooks are not triggered and the events are not replayed.
OKTA_DAILY_CAP = 400_000
OKTA_DAILY_WARNING = 280_000


class StoreCollector(Collector):
    def __init__(self, store: SqlEventStore) -> None:
        self._store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            yield from self._collect()
        except StoreUnavailable as exc:
            log.warning("metrics.store_unavailable", extra={"fields": {"error": str(exc)}})

    def _collect(self) -> Iterator[GaugeMetricFamily]:
        since = format_utc(datetime.now(UTC) - timedelta(hours=24))
        last_day = GaugeMetricFamily(
            "factorflow_events_last_24h",
            "Events received in the last 24 hours (Okta's cap: 400,000 per org, warning at "
            "280,000)", labels=["org"],
        )
        for org, count in self._store.read(
            "SELECT org, COUNT(*) FROM events WHERE received_at >= ? GROUP BY org", (since,)
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
        yield self._grouped(
            "factorflow_quarantined_events", "Events kept in the quarantine, by reason",
            ["reason"], "SELECT reason_code, COUNT(*) FROM quarantine GROUP BY reason_code",
        )

    def _scalar(self, sql: str) -> int:
        return int(self._store.read(sql)[0][0])

    def _grouped(self, name: str, documentation: str, labels: list[str],
                 sql: str) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, documentation, labels=labels)
        for *values, count in self._store.read(sql):
            family.add_metric([str(v) for v in values], count)
        return family
