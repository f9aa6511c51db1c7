"""``factorflow report``: the dashboard's figures (overview, delivery gap, campaigns) as a
table, CSV or JSON, for people and scripts."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import click

from factorflow.cli import CONFIG_OPTION, _open, _settings
from factorflow.errors import StoreUnavailable
from factorflow.web.ui.reads.window import DEFAULT_DAYS, WINDOW_DAYS

SECTIONS = ("overview", "delivery", "campaigns")


@click.command("report")
@CONFIG_OPTION
@click.option("--days", type=click.Choice([str(d) for d in WINDOW_DAYS]),
              default=str(DEFAULT_DAYS), show_default=True,
              help="The period: events published in the last N days (UTC, today included).")
@click.option("--org", default=None, help="Only this org (overview; default: every org).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True, help="csv: one row per figure (section,name,key,value).")
@click.option("--section", "sections", type=click.Choice(SECTIONS), multiple=True,
              help="Only these sections (repeatable; default: all).")
def report(config_path: Path | None, days: str, org: str | None, fmt: str,
           sections: tuple[str, ...]) -> None:
    """The dashboard's figures: enrollments per day, by strength, by who enrolled and by
    factor; work waiting and failed; the delivery gap per org; campaign progress."""
    settings = _settings(config_path)
    orgs = [o.name for o in settings.org_list()]
    if org is not None and org not in orgs:
        raise click.ClickException(f"no org {org!r} (configured: {', '.join(orgs)})")
    store = _open(config_path)
    try:
        figures = report_figures(store, settings, int(days), org, sections or SECTIONS)
    except StoreUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    if fmt == "json":
        import orjson

        click.echo(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    elif fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(("section", "name", "key", "value"))
        writer.writerows(figure_rows(figures))
    else:
        click.echo(render_table(figures))


def report_figures(store: Any, settings: Any, days: int, org: str | None,
                   sections: tuple[str, ...]) -> dict[str, Any]:
    """The figures as plain data (what ``--format json`` prints)."""
    from factorflow.web.ui.reads.campaigns import DirectoryFiles, campaign_view
    from factorflow.web.ui.reads.delivery import delivery_gap
    from factorflow.web.ui.reads.overview import overview
    from factorflow.web.ui.reads.window import Window

    window = Window.last(days)
    out: dict[str, Any] = {"window": {"days": days, "since": window.since,
                                      "until": window.until}, "org": org}
    if "overview" in sections:
        o = overview(store, window, org)
        out["overview"] = {
            "enrollments": o.enrollments,
            "per_day": dict(o.per_day),
            "by_strength": dict(o.by_strength),
            "by_enrolled_by": dict(o.by_enrolled_by),
            "top_factors": dict(o.top_factors),
            "waiting_events": str(o.waiting_events),
            "pending_facts": str(o.pending_facts),
            "retrying_actions": len(o.retrying),
            "dead_letters_open": str(o.dead_letters["open"]),
            "dead_letters_retrying": str(o.dead_letters["retrying"]),
            "recent_admin_enrollments": o.recent_admin,
        }
    if "delivery" in sections:
        gap = delivery_gap(store, window, [o.name for o in settings.org_list()])
        out["delivery"] = {entry.org: entry.to_dict() for entry in gap.orgs}
    if "campaigns" in sections:
        directories = DirectoryFiles()
        campaigns: dict[str, Any] = {}
        for name in sorted(settings.campaigns):
            view = campaign_view(store, settings, name, directories)
            campaigns[name] = {
                "org": view.org, "population_group": view.settings.population_group,
                "population": view.population, "completed": view.completed,
                "pending": len(view.pending), "percent": view.percent,
                "completed_outside_population": len(view.outside),
                "deadline": view.settings.deadline.isoformat() if view.settings.deadline
                else None,
                "problem": view.problem,
            }
        out["campaigns"] = campaigns
    return out


def figure_rows(figures: dict[str, Any]) -> list[tuple[str, str, str, Any]]:
    """(section, name, key, value) rows: nested values flattened one level deep."""
    rows: list[tuple[str, str, str, Any]] = []
    for section in SECTIONS:
        data = figures.get(section)
        if data is None:
            continue
        for name, value in data.items():
            if name == "recent_admin_enrollments":
                for item in value:
                    rows.append((section, name, item["uuid"], item["user"]))
            elif isinstance(value, dict):
                for key, inner in value.items():
                    if isinstance(inner, dict):
                        for sub, leaf in inner.items():
                            rows.append((section, name, f"{key}.{sub}", _cell(leaf)))
                    else:
                        rows.append((section, name, str(key), _cell(inner)))
            else:
                rows.append((section, name, "", _cell(value)))
    return rows


def _cell(value: Any) -> Any:
    return "" if value is None else value


def render_table(figures: dict[str, Any]) -> str:
    window = figures["window"]
    lines = [f"period: last {window['days']} days ({window['since'][:10]} to now, UTC)"
             + (f", org {figures['org']}" if figures.get("org") else "")]
    overview = figures.get("overview")
    if overview is not None:
        lines += ["", f"enrollments: {overview['enrollments']}", "", "per day:"]
        lines += [f"  {day}  {count:>8}" for day, count in overview["per_day"].items()]
        for title, key in (("by strength", "by_strength"), ("by who enrolled", "by_enrolled_by"),
                           ("top factors", "top_factors")):
            lines += ["", f"{title}:"]
            lines += [f"  {name:<24}{count:>8}" for name, count in overview[key].items()]
        lines += [
            "", "work:",
            f"  events waiting for a worker   {overview['waiting_events']:>8}",
            f"  events being decided          {overview['pending_facts']:>8}",
            f"  actions being retried         {overview['retrying_actions']:>8}",
            f"  open dead letters             {overview['dead_letters_open']:>8}",
            f"  dead letters being retried    {overview['dead_letters_retrying']:>8}",
        ]
    delivery = figures.get("delivery")
    if delivery is not None:
        lines += ["", "delivery gap (org, events, by hook, hook share, recovered, confirmed, "
                  "hook delay p50/p90/p99/max):"]
        for org, d in delivery.items():
            share = f"{100 * d['hook_share']:.1f}%" if d["hook_share"] is not None else "-"
            delays = "/".join(_secs(v) for v in (
                *d["delay_seconds"].values(), d["max_delay_seconds"]))
            lines.append(f"  {org:<16}{d['events']:>8}{d['by_hook']:>8}{share:>9}"
                         f"{d['recovered']:>8}{d['confirmed']:>8}  {delays}")
            if d["early_events"]:
                lines.append(f"  {'':<16}clock behind Okta's by at least "
                             f"{_secs(d['clock_behind_seconds'])} ({d['early_events']} event(s) "
                             "stored a second or more before Okta published them)")
    campaigns = figures.get("campaigns")
    if campaigns is not None:
        lines += ["", "campaigns (name, completed / population, percent, pending):"]
        if not campaigns:
            lines.append("  none configured")
        for name, c in campaigns.items():
            percent = f"{c['percent']:.1f}%" if c["percent"] is not None else "-"
            lines.append(f"  {name:<24}{c['completed']:>6} / {c['population']:<6}{percent:>8}"
                         f"{c['pending']:>8}" + (f"  ({c['problem']})" if c["problem"] else ""))
    return "\n".join(lines)


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"
