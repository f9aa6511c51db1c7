"""Prometheus metrics of the receiver, in a registry of the app's own (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

# Buckets show the distance to Okta's 3 s delivery timeout.
ACK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0)


class ReceiverMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.deliveries = Counter(
            "factorflow_deliveries", "Hook deliveries acknowledged", ["org"],
            registry=self.registry,
        )
        self.events = Counter(
            "factorflow_events_received", "Events received by hook, by what became of them",
            ["org", "result"], registry=self.registry,
        )
        self.rejected = Counter(
            "factorflow_requests_rejected", "Hook requests refused, by reason",
            ["org", "reason"], registry=self.registry,
        )
        self.verifications = Counter(
            "factorflow_verifications", "One-time verification requests answered", ["org"],
            registry=self.registry,
        )
        self.ack_latency = Histogram(
            "factorflow_ack_latency_seconds",
            "Time from the request's arrival to its acknowledgement (Okta gives up at 3 s)",
            ["org"], buckets=ACK_BUCKETS, registry=self.registry,
        )
