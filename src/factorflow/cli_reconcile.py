"""``factorflow reconcile``: read the System Log for events the hook did not deliver, and the
delivery-gap figures (``--report``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from factorflow.cli import CONFIG_OPTION, _open, _settings
from factorflow.errors import FactorflowError

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([mhd])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


@click.command("reconcile")
@CONFIG_OPTION
@click.option("--org", "org_names", multiple=True,
              help="Only this org (repeatable; default: every org with [okta]).")
@click.option("--since", default=None,
              help="Read from this time (ISO 8601, or 30m / 6h / 2d ago) instead of the stored "
                   "cursor; at most 90 days back.")
@click.option("--max-pages", type=click.IntRange(1, 1_000_000), default=None,
              help="Stop after this many pages (the cursor is kept: the next run goes on).")
@click.option("--reset", is_flag=True,
              help="Forget the stored cursor first: start from okta.reconcile_lookback_hours.")
@click.option("--report", is_flag=True,
              help="Print the delivery-gap figures instead of reading the System Log.")
@click.option("--hours", type=click.FloatRange(min=0, min_open=True), default=24.0,
              show_default=True, help="The report's window.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per org.")
def reconcile(
    config_path: Path | None, org_names: tuple[str, ...], since: str | None,
    max_pages: int | None, reset: bool, report: bool, hours: float, as_json: bool,
) -> None:
    """Read the System Log (GET /api/v1/logs) of each org with [okta] settings from where the
    last run stopped: events the hook never delivered are stored (provenance "log") and
    processed by the worker once; events already stored are confirmed (provenance "both").
    Exits 1 if a run stopped on an error (what was read before it is kept)."""
    import orjson

    settings = _settings(config_path)
    known = {org.name: org for org in settings.org_list()}
    unknown = sorted(set(org_names) - set(known))
    if unknown:
        raise click.ClickException(
            f"no org {', '.join(map(repr, unknown))} (configured: {', '.join(known)})"
        )
    chosen = [known[name] for name in org_names] if org_names else list(known.values())
    store = _open(config_path)
    try:
        if report:
            _report(store, [org.name for org in chosen], hours, as_json)
            return
        start = _since(since) if since else None
        with_okta = [org for org in chosen if org.okta is not None]
        if not with_okta:
            raise click.ClickException(
                "no org has Okta API settings ([okta] or [orgs.<name>.okta]); see docs/okta.md"
            )
        for org in chosen:
            if org.okta is None and org_names:
                raise click.ClickException(f"org {org.name} has no Okta API settings")
        failed = False
        for org in with_okta:
            run = _run(settings, store, org, start, max_pages, reset)
            failed = failed or run.error is not None
            click.echo(orjson.dumps(run.to_dict()).decode() if as_json else run.line())
    except FactorflowError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    if failed:
        raise SystemExit(1)


def _run(settings: Any, store: Any, org: Any, start: datetime | None, max_pages: int | None,
         reset: bool) -> Any:
    from factorflow.okta.api import OktaClient
    from factorflow.okta.reconcile import build_reconciler
    from factorflow.store.system_log import SystemLogLedger

    ledger = SystemLogLedger(store)
    if reset:
        ledger.reset(org.name)
    with OktaClient(org.okta) as client:
        return build_reconciler(settings, org, client, ledger).run(since=start,
                                                                   max_pages=max_pages)


def _since(text: str) -> datetime:
    now = datetime.now(UTC)
    match = _DURATION.match(text.strip())
    if match:
        moment = now - timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    else:
        try:
            moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise click.BadParameter(
                f"{text!r}: give an ISO 8601 time (2026-03-01T00:00:00Z) or 30m / 6h / 2d",
                param_hint="--since",
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    if moment < now - timedelta(days=90):
        raise click.BadParameter("Okta keeps the System Log for 90 days", param_hint="--since")
    return moment


def _report(store: Any, orgs: list[str], hours: float, as_json: bool) -> None:
    import orjson

    from factorflow.store.delivery_gap import PERCENTILES, delivery_gap

    for gap in delivery_gap(store, hours=hours, orgs=orgs):
        if as_json:
            click.echo(orjson.dumps({"hours": hours, **gap.to_dict()}).decode())
            continue
        share = f"{gap.hook_share:.1%}" if gap.hook_share is not None else "-"
        click.echo(f"org {gap.org} (last {hours:g} h)")
        click.echo(f"  events: {gap.events}  by hook: {gap.by_hook} ({share})  "
                   f"recovered from the System Log: {gap.recovered} "
                   f"(never by hook: {gap.recovered_never_hooked})  "
                   f"confirmed by the System Log: {gap.confirmed}")
        delays = "  ".join(
            f"p{p} {_seconds(gap.delay_percentiles.get(p))}" for p in PERCENTILES
        )
        click.echo(f"  hook delay: {delays}  max {_seconds(gap.max_delay)} "
                   f"({gap.delays} events)")
        if gap.early_events:
            click.echo(f"  clock: behind Okta's by at least {_seconds(gap.clock_behind_seconds)}"
                       f" ({gap.early_events} event(s) stored a second or more before Okta "
                       "published them); delays and audit times are off by as much: keep the "
                       "receiving host's clock in step (NTP)")
        click.echo(f"  failed hook deliveries (event_hook.delivery): {gap.delivery_failures}")
        click.echo(f"  reconciler: newest event read {gap.cursor_published or '-'}  "
                   f"last poll {gap.polled_at or '-'}  lag {_seconds(gap.lag_seconds)}"
                   + (f"  last error: {gap.last_error}" if gap.last_error else ""))


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"
