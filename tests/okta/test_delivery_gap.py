"""Delivery-gap figures (factorflow.store.delivery_gap) over a store that saw every mix of hook
and System Log copies, their Prometheus gauges on /metrics, and ``events show``'s System Log
confirmation."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from factorflow.bootstrap import build_app, build_pipeline
from factorflow.cli import main
from factorflow.okta.reconcile import Reconciler
from factorflow.store.delivery_gap import PERCENTILES, delivery_gap
from factorflow.store.factory import open_store
from factorflow.store.sql import SqlEventStore
from factorflow.store.system_log import SystemLogLedger
from tests.conftest import SECRET, make_settings
from tests.okta.support import MFA_TYPES, SimulatedOkta, delivery, delivery_failure, simulated_okta

HEADERS = {"Authorization": SECRET, "Content-Type": "application/json"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'factorflow.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def okta() -> Iterator[SimulatedOkta]:
    with simulated_okta(users=25, seed=21, enrollments=40, start=time.time()) as simulated:
        yield simulated


def nearest_rank(values: list[float], p: int) -> float:
    ordered = sorted(values)
    return ordered[max(math.ceil(len(ordered) * p / 100), 1) - 1]


@pytest.fixture
def mixed(okta: SimulatedOkta, store_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Events the hook delivered first (then confirmed), events recovered from the System Log
    whose hook copy came later, events only the System Log had, and one failed delivery."""
    events = okta.org.events(MFA_TYPES)
    hooked_first, late, never = events[:12], events[12:20], events[20:]
    assert never
    failure = delivery_failure(okta.org, never[:2])
    settings = make_settings(tmp_path, store={"url": store_url}, workflows={"enabled": False})
    store = open_store(store_url)
    with TestClient(build_app(settings, store)) as app:
        assert app.post("/hooks/okta", content=delivery(hooked_first), headers=HEADERS) \
            .status_code == 204
        run = Reconciler("default", okta.client(), SystemLogLedger(store, clock=okta.now),
                         event_types=MFA_TYPES, clock=okta.now).run()
        assert (run.confirmed, run.recovered) == (len(hooked_first),
                                                  len(late) + len(never) + 1)
        assert app.post("/hooks/okta", content=delivery(late), headers=HEADERS) \
            .status_code == 204
    pipeline, shared = build_pipeline(settings, store)
    try:
        for event in [*events, failure]:
            pipeline.prepare(event["uuid"])  # the facts (and their delays)
    finally:
        shared.close()
    yield {"settings": settings, "store": store, "events": events, "hooked_first": hooked_first,
           "late": late, "never": never, "failure": failure}
    store.close()


def test_the_figures_per_org(mixed: dict[str, Any], okta: SimulatedOkta) -> None:
    store: SqlEventStore = mixed["store"]
    events, hooked_first, late = mixed["events"], mixed["hooked_first"], mixed["late"]
    window = {"since": okta.now() - timedelta(hours=2), "until": okta.now() + timedelta(hours=2)}
    gaps = delivery_gap(store, orgs=["default", "quiet"], **window)
    assert [g.org for g in gaps] == ["default", "quiet"]
    gap, quiet = gaps
    assert (gap.events, gap.by_hook, gap.recovered, gap.recovered_never_hooked, gap.confirmed,
            gap.delivery_failures) == (
        len(events), len(hooked_first) + len(late), len(events) - len(hooked_first),
        len(mixed["never"]), len(events), 1)
    assert gap.hook_share == pytest.approx((len(hooked_first) + len(late)) / len(events))
    # The delays: facts of the hook-first events, and the late hook copies of recovered ones.
    delay_of = dict(store.read("SELECT uuid, delay_seconds FROM facts"))
    first = [delay_of[e["uuid"]] for e in hooked_first]
    later = [row[0] for row in store.read(
        "SELECT hook_delay_seconds FROM system_log_confirmations WHERE recovered = 1 "
        "AND hook_received_at IS NOT NULL")]
    assert len(first) == len(hooked_first) and len(later) == len(late)
    delays = [float(v) for v in first + later]
    assert all(d > 0 for d in delays)
    assert gap.delays == len(delays)
    # Percentiles come from buckets 2 ** (1/16) wide: the largest delay in the bucket of the
    # exact nearest-rank value.
    for p in PERCENTILES:
        exact = nearest_rank(delays, p)
        shown = gap.delay_percentiles[p]
        assert shown is not None and exact <= shown <= exact * 2 ** (1 / 16)
        assert shown in delays
    assert gap.max_delay == pytest.approx(max(delays))
    assert gap.cursor_published is not None and gap.polled_at is not None
    assert gap.last_error is None and gap.lag_seconds is not None
    assert (quiet.events, quiet.hook_share, quiet.delay_percentiles) == (0, None, {})
    # Outside the window: nothing.
    later_window = delivery_gap(store, since=okta.now() + timedelta(hours=3),
                                until=okta.now() + timedelta(hours=4))
    assert [(g.org, g.events, g.delays) for g in later_window] == [("default", 0, 0)]


def test_the_gauges_on_metrics(mixed: dict[str, Any]) -> None:
    store: SqlEventStore = mixed["store"]
    events, hooked_first, late = mixed["events"], mixed["hooked_first"], mixed["late"]
    with TestClient(build_app(mixed["settings"], store)) as app:
        text = app.get("/metrics").text
    share = (len(hooked_first) + len(late)) / len(events)
    lines = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
             for line in text.splitlines() if line and not line.startswith("#")}
    assert lines['factorflow_hook_share_24h{org="default"}'] == pytest.approx(share)
    assert lines['factorflow_events_recovered_24h{hook="never",org="default"}'] == len(
        mixed["never"])
    assert lines['factorflow_events_recovered_24h{hook="later",org="default"}'] == len(late)
    assert lines['factorflow_events_confirmed_24h{org="default"}'] == len(events)
    assert lines['factorflow_hook_delivery_failures_24h{org="default"}'] == 1
    for quantile in ("0.50", "0.90", "0.99"):
        assert lines[f'factorflow_hook_delay_seconds{{org="default",quantile="{quantile}"}}'] > 0
    assert 'factorflow_reconciler_lag_seconds{org="default"}' in lines


def test_events_show_prints_the_confirmation(mixed: dict[str, Any], tmp_path: Path) -> None:
    config = tmp_path / "factorflow.toml"
    url = mixed["settings"].store_url()
    config.write_text(f'data_dir = "{tmp_path}"\n[store]\nurl = "{url}"\n', encoding="utf-8")
    runner = CliRunner()
    shown = {}
    for name in ("hooked_first", "late", "never"):
        uuid = mixed[name][0]["uuid"]
        result = runner.invoke(main, ["events", "show", uuid, "--config", str(config)])
        assert result.exit_code == 0, result.output
        shown[name] = orjson.loads(result.output)
    assert shown["hooked_first"]["provenance"] == "both"
    assert shown["hooked_first"]["system_log"]["confirmed"] is True
    assert shown["hooked_first"]["system_log"]["recovered"] is False
    assert shown["late"]["provenance"] == "both"
    assert shown["late"]["system_log"]["recovered"] is True
    assert shown["late"]["system_log"]["hook_delay_seconds"] > 0
    assert shown["never"]["provenance"] == "log"
    assert shown["never"]["system_log"]["hook_received_at"] is None
    assert shown["never"]["fact"]["uuid"] == mixed["never"][0]["uuid"]
    assert [d["status"] for d in shown["never"]["decisions"]] == []  # prepared, not decided
