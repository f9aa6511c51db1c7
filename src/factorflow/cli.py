"""The command line: parse, call a use-case, print. Nothing heavy is imported at module level."""

from __future__ import annotations

import math
import signal
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Any

import click

from factorflow.errors import ConfigError, FactorflowError
from factorflow.settings import Settings, load_settings

CONFIG_OPTION = click.option(
    "--config", "config_path", type=click.Path(path_type=Path), envvar="FACTORFLOW_CONFIG",
    default=None, help="TOML config file (or FACTORFLOW_CONFIG). Without it: built-in defaults.",
)


def _settings(config_path: Path | None) -> Settings:
    try:
        return load_settings(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


class _Commands(click.Group):
    """The command groups live in their own modules, which import helpers from this one; they
    are attached on first use, so importing any of them first causes no import cycle."""

    _attached = False

    def _attach(self) -> None:
        if not self._attached:
            self._attached = True
            _register_commands(self)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._attach()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._attach()
        return super().list_commands(ctx)


@click.group(cls=_Commands)
@click.version_option(package_name="factorflow")
def main() -> None:
    """factorflow: Okta MFA enrollment events in, reliable downstream work out."""


@main.command()
@CONFIG_OPTION
@click.option("--host", default=None, help="Override server.host.")
@click.option("--port", type=int, default=None, help="Override server.port.")
@click.option("--worker/--no-worker", default=None,
              help="Run the workflow worker in this process (default: workflows.enabled).")
def serve(config_path: Path | None, host: str | None, port: int | None,
          worker: bool | None) -> None:
    """Run the receiver (hook endpoint, health and metrics) and, by default, a worker."""
    import uvicorn

    from factorflow.bootstrap import build_app
    from factorflow.logs import configure_logging
    from factorflow.secrets_source import user_hash_key

    settings = _settings(config_path)
    configure_logging(settings.log.format, settings.log.level,
                      user_hash_key=user_hash_key(settings))
    try:
        app = build_app(
            settings, worker=settings.workflows.enabled if worker is None else worker
        )
    except FactorflowError as exc:
        raise click.ClickException(str(exc)) from None
    server_host = host or settings.server.host
    server_port = port or settings.server.port
    for org in settings.org_list():
        note = ""
        if not (org.hook.secret or org.hook.secret_file):
            note = (f"; hook secret: generated, in {settings.data_dir / org.secret_file_name} "
                    "(owner-only)")
        click.echo(
            f"factorflow listening on http://{server_host}:{server_port}{org.hook.path} "
            f"for org {org.name} (store: {app.store.dialect}){note}",
            err=True,
        )
    config = uvicorn.Config(
        app, host=server_host, port=server_port, loop="auto", http="auto", lifespan="on",
        access_log=False, log_config=None, server_header=False,
        proxy_headers=True, forwarded_allow_ips=settings.server.forwarded_allow_ips,
        # uvicorn takes whole seconds; truncating 0.5 to 0 would cancel requests in flight.
        timeout_graceful_shutdown=math.ceil(settings.server.graceful_timeout_seconds),
    )
    metrics_server = start_metrics_server(settings, app.metrics.registry, server_host,
                                          server_port)
    if metrics_server is not None:
        app.on_stopping.append(metrics_server.stop)
    # uvicorn shuts down gracefully on SIGTERM or SIGINT (Ctrl-C) and then raises the signal
    # again, which would end the process as "killed by SIGTERM" (143), or as click's
    # "Aborted!" with exit code 1, after every request was answered and the store closed. A
    # completed graceful shutdown exits 0, so supervisors can tell it from a crash.
    signal.signal(signal.SIGTERM, _exit_after_graceful_shutdown)
    signal.signal(signal.SIGINT, _exit_after_graceful_shutdown)
    try:
        uvicorn.Server(config).run()
    finally:
        if metrics_server is not None:
            metrics_server.stop()


def start_metrics_server(settings: Settings, registry: Any, main_host: str | None = None,
                         main_port: int | None = None) -> Any:
    """With ``[metrics] port``: /metrics on that port, served from ``registry`` in a thread
    (None without it). A port that cannot be had is a ClickException naming it."""
    from factorflow.web.metrics_server import MetricsServer

    port = settings.metrics.port
    if port is None:
        return None
    host = settings.metrics_host()
    if port == main_port and host == main_host:
        raise click.ClickException(
            f"metrics.port {port} is the port the server listens on (--port): give the "
            "metrics a port of their own"
        )
    try:
        server = MetricsServer(registry, host, port).start()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"factorflow metrics on http://{host}:{server.port}/metrics", err=True)
    return server


def _exit_after_graceful_shutdown(_signum: int, _frame: FrameType | None) -> None:
    sys.exit(0)


@main.group()
def config() -> None:
    """Inspect the configuration."""


@config.command("check")
@CONFIG_OPTION
def config_check(config_path: Path | None) -> None:
    """Validate the config file and environment; name any bad key and why."""
    from factorflow.secrets_source import resolve_credentials
    from factorflow.store.factory import open_store

    settings = _settings(config_path)
    for org in settings.org_list():
        hook = org.hook
        try:
            credentials = resolve_credentials(settings, generate=False, org=org)
            source = "generated file" if credentials.generated_at else "configured"
            click.echo(f"org {org.name}: hook {hook.path}, header {hook.auth_header!r}, "
                       f"{len(credentials.accepted)} accepted secret(s) ({source})")
        except ConfigError as exc:
            if "none was generated yet" not in str(exc):
                raise click.ClickException(f"org {org.name}: {exc}") from None
            click.echo(f"org {org.name}: hook {hook.path}, header {hook.auth_header!r}, "
                       "secret will be generated on first start")
    from factorflow.bootstrap import build_pipeline_checks

    try:
        for line in build_pipeline_checks(settings):
            click.echo(line)
    except FactorflowError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        store = open_store(settings.store_url(), migrate=False)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    store.close()
    click.echo(f"store: {store.dialect}")
    click.echo("configuration OK")


@main.group()
def events() -> None:
    """Look at stored events."""


@events.command("list")
@CONFIG_OPTION
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def events_list(config_path: Path | None, limit: int, as_json: bool) -> None:
    """Recent events: time, type, user, factor if known."""
    import orjson

    from factorflow.okta.translate import to_fact

    for row in _listed(config_path, lambda store: store.recent_events(limit),
                       "no events stored yet"):
        fact = to_fact(orjson.loads(row.raw), org=row.org, received_at=row.received_at)
        user, factor = fact.user_label, fact.factor.label
        if as_json:
            click.echo(orjson.dumps({
                "uuid": row.uuid, "published": row.published, "received_at": row.received_at,
                "event_type": row.event_type, "user": user, "factor": factor, "org": row.org,
            }).decode())
        else:
            click.echo(f"{row.published:<25} {row.event_type:<35} {user or '-':<32} "
                       f"{factor or '-'}")


@events.command("quarantine")
@CONFIG_OPTION
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--raw", is_flag=True, help="Also print each entry's raw JSON.")
def events_quarantine(config_path: Path | None, limit: int, raw: bool) -> None:
    """Events kept aside with the reason they could not be stored as events."""
    for row in _listed(config_path, lambda store: store.quarantine(limit),
                       "quarantine is empty"):
        click.echo(f"{row.received_at}  {row.reason_code:<16} uuid={row.uuid or '-'}  "
                   f"delivery={row.delivery_id or '-'}\n    {row.reason}")
        if raw:
            click.echo(f"    {row.raw.decode()}")


@events.command("show")
@CONFIG_OPTION
@click.argument("uuid")
def events_show(config_path: Path | None, uuid: str) -> None:
    """One stored event: raw JSON and provenance, whether (and when) the System Log confirmed
    it, its fact, every decision (with the rule trace and the enrichment snapshot), and every
    action with its attempts."""
    import orjson

    from factorflow.okta.translate import to_fact
    from factorflow.store.pipeline_sql import SqlPipelineLedger
    from factorflow.store.system_log import SystemLogLedger

    store = _open(config_path)
    try:
        row = store.get_event(uuid)
        if row is None:
            raise click.ClickException(f"no event with uuid {uuid}")
        ledger = SqlPipelineLedger(store)
        raw = orjson.loads(row.raw)
        confirmation = SystemLogLedger(store).confirmation(uuid)
        report = {
            "uuid": row.uuid, "event_type": row.event_type, "published": row.published,
            "received_at": row.received_at, "delivery_id": row.delivery_id,
            "hook_id": row.hook_id, "org": row.org, "provenance": row.provenance,
            "system_log": confirmation.to_dict() if confirmation else {"confirmed": False},
            "fact": to_fact(raw, org=row.org, received_at=row.received_at).to_dict(),
            "decisions": ledger.decisions_of(uuid),
            "actions": ledger.results_of_event(uuid),
            "attempts": ledger.attempts_of_event(uuid),
            "raw": raw,
        }
    finally:
        store.close()
    click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


@main.group()
def deliveries() -> None:
    """Look at the delivery ledger."""


@deliveries.command("list")
@CONFIG_OPTION
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
def deliveries_list(config_path: Path | None, limit: int) -> None:
    """One row per hook request: its eventId and how many events were new or duplicates."""
    for row in _listed(config_path, lambda store: store.ledger(limit), "no deliveries yet"):
        click.echo(f"{row.received_at}  {row.delivery_id or '-':<38} total={row.events_total} "
                   f"new={row.events_new} duplicate={row.events_duplicate} "
                   f"quarantined={row.events_quarantined}")


@main.command("send-test")
@CONFIG_OPTION
@click.argument("url")
@click.option("--keep-ids", is_flag=True,
              help="Send the sample with its own ids (a second run shows de-duplication).")
@click.option("--org", default=None, help="Use this org's credential (default: the first).")
def send_test(config_path: Path | None, url: str, keep_ids: bool, org: str | None) -> None:
    """Verify URL like Okta does, then post a sample MFA enrollment delivery to it."""
    from factorflow.okta.sender import SendFailed, send_sample

    settings = _settings(config_path)
    from factorflow.secrets_source import resolve_credentials

    orgs = {o.name: o for o in settings.org_list()}
    if org is not None and org not in orgs:
        raise click.ClickException(f"no org {org!r} (configured: {', '.join(orgs)})")
    try:
        credentials = resolve_credentials(
            settings, generate=False, org=orgs[org] if org else None
        )
    except ConfigError as exc:
        raise click.ClickException(f"{exc} (start `factorflow serve` once first)") from None
    sample = resources.files("factorflow").joinpath("examples/delivery-mfa-activate.json")
    try:
        for line in send_sample(url, credentials, sample.read_bytes(), fresh_ids=not keep_ids):
            click.echo(line)
    except SendFailed as exc:
        raise click.ClickException(str(exc)) from None


@main.command("facts")
@click.argument("export", type=click.File("rb"))
@click.option("--org", default="default", show_default=True, help="Org name to file them under.")
def facts(export: Any, org: str) -> None:
    """Print the normalised fact of each event in a System Log export (a JSON array or one
    event per line), one JSON object per line. Field names: docs/facts.md."""
    import orjson

    from factorflow.okta.translate import to_fact

    for event in _read_export(export.read()):
        if not isinstance(event, dict):
            click.echo(orjson.dumps({"error": "not an event object"}).decode())
            continue
        click.echo(orjson.dumps(to_fact(event, org=org).to_dict()).decode())


def _read_export(data: bytes) -> list[Any]:
    """A JSON array, a single object, or NDJSON; a bad line is reported, not fatal."""
    import orjson

    stripped = data.strip()
    if stripped.startswith(b"["):
        try:
            loaded = orjson.loads(stripped)
        except orjson.JSONDecodeError as exc:
            raise click.ClickException(f"export is not valid JSON: {exc}") from None
        return list(loaded)
    events: list[Any] = []
    for number, line in enumerate(stripped.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            events.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            click.echo(f"line {number}: not valid JSON: {exc}", err=True)
    return events


def _open(config_path: Path | None) -> Any:
    from factorflow.store.factory import open_store

    settings = _settings(config_path)
    try:
        return open_store(settings.store_url())
    except FactorflowError as exc:
        raise click.ClickException(str(exc)) from None


def _listed(config_path: Path | None, read: Callable[[Any], list[Any]], empty: str) -> list[Any]:
    """What ``read`` finds in the configured store (opened for it, closed after); when that is
    nothing, says ``empty``."""
    store = _open(config_path)
    try:
        rows = read(store)
    finally:
        store.close()
    if not rows:
        click.echo(empty)
    return rows


def _register_commands(group: click.Group) -> None:
    from factorflow import (
        cli_actions,
        cli_okta,
        cli_reconcile,
        cli_report,
        cli_rules,
        cli_workflows,
    )

    for command in (
        cli_rules.rules, cli_actions.audit, cli_actions.register, cli_actions.campaigns,
        cli_workflows.worker, cli_workflows.dlq, cli_workflows.replay, cli_okta.simulate,
        cli_reconcile.reconcile, cli_report.report,
    ):
        group.add_command(command)


if __name__ == "__main__":  # pragma: no cover
    # Run as ``python -m factorflow.cli``: the command modules import ``factorflow.cli``, which
    # is not this ``__main__`` module, so use that module's group.
    from factorflow.cli import main as _main

    sys.exit(_main())
