"""Prometheus metrics of the receiver, in a registry of the app's own (no global state).

The three series that move on every delivery (deliveries, events by result, ack latency) are
plain counters read by a collector at scrape time: prometheus_client's own Counter and
Histogram take a lock on every update, which showed up in the hook's profile. They are only
updated on the event loop's thread, so no lock is needed. Rare series (rejections,
verifications) use prometheus_client's classes.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# Buckets show the distance to Okta's 3 s delivery timeout.
ACK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0)
EVENT_RESULTS = ("new", "duplicate", "quarantined")


class OrgCounters:
    """One org's hot-path counts. Updated from the event loop's thread only."""

    __slots__ = ("deliveries", "events", "latency_buckets", "latency_sum")

    def __init__(self) -> None:
        self.deliveries = 0
        self.events = dict.fromkeys(EVENT_RESULTS, 0)
        # latency_buckets[i] counts observations in (ACK_BUCKETS[i-1], ACK_BUCKETS[i]]; the
        # last slot is +Inf. Made cumulative when scraped.
        self.latency_buckets = [0] * (len(ACK_BUCKETS) + 1)
        self.latency_sum = 0.0

    def acknowledged(self, new: int, duplicate: int, quarantined: int, seconds: float) -> None:
        self.deliveries += 1
        events = self.events
        if new:
            events["new"] += new
        if duplicate:
            events["duplicate"] += duplicate
        if quarantined:
            events["quarantined"] += quarantined
        self.latency_buckets[bisect_left(ACK_BUCKETS, seconds)] += 1
        self.latency_sum += seconds


class _HotCollector(Collector):
    def __init__(self, orgs: dict[str, OrgCounters]) -> None:
        self._orgs = orgs

    def collect(self) -> Iterator[Metric]:
        deliveries = CounterMetricFamily(
            "factorflow_deliveries", "Hook deliveries acknowledged", labels=["org"]
        )
        events = CounterMetricFamily(
            "factorflow_events_received", "Events received by hook, by what became of them",
            labels=["org", "result"],
        )
        latency = HistogramMetricFamily(
            "factorflow_ack_latency_seconds",
            "Time from the request's arrival to its acknowledgement (Okta gives up at 3 s)",
            labels=["org"],
        )
        for org, counts in sorted(self._orgs.items()):
            deliveries.add_metric([org], counts.deliveries)
            for result in EVENT_RESULTS:
                events.add_metric([org, result], counts.events[result])
            cumulative = 0
            buckets = []
            for bound, count in zip(
                (*(str(b) for b in ACK_BUCKETS), "+Inf"), counts.latency_buckets, strict=True
            ):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric([org], buckets, counts.latency_sum)
        yield deliveries
        yield events
        yield latency


class ReceiverMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._orgs: dict[str, OrgCounters] = {}
        self.registry.register(_HotCollector(self._orgs))
        self.rejected = Counter(
            "factorflow_requests_rejected", "Hook requests refused, by reason",
            ["org", "reason"], registry=self.registry,
        )
        self.verifications = Counter(
            "factorflow_verifications", "One-time verification requests answered", ["org"],
            registry=self.registry,
        )

    def org(self, name: str) -> OrgCounters:
        """The hot-path counters of org ``name`` (created, and exported, on first use)."""
        counts = self._orgs.get(name)
        if counts is None:
            counts = self._orgs[name] = OrgCounters()
        return counts
