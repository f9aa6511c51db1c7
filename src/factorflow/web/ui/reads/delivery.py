"""The delivery gap for the dashboard: the figures of :mod:`factorflow.store.delivery_gap` (the
same ones ``factorflow reconcile`` reports and the metrics endpoint exports) over the page's
period, with whether the System Log reconciler has polled any org yet."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from factorflow.store.delivery_gap import OrgGap
from factorflow.store.delivery_gap import delivery_gap as gap_figures
from factorflow.store.sql import SqlEventStore
from factorflow.web.ui.reads.window import Window


@dataclass(frozen=True)
class DeliveryGap:
    window: Window
    orgs: list[OrgGap]

    @property
    def reconciler_running(self) -> bool:
        """Some org's System Log has been polled."""
        return any(gap.polled_at for gap in self.orgs)


def delivery_gap(store: SqlEventStore, window: Window, orgs: list[str]) -> DeliveryGap:
    since = datetime.fromisoformat(window.since.replace("Z", "+00:00"))
    return DeliveryGap(window, gap_figures(store, since=since, orgs=orgs))
