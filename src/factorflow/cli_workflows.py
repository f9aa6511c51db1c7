"""Commands for the durable side: the worker, dead letters and replay."""

from __future__ import annotations

import getpass
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import click

from factorflow.cli import CONFIG_OPTION, _open, _settings, start_metrics_server
from factorflow.errors import FactorflowError


@click.command("worker")
@CONFIG_OPTION
def worker(config_path: Path | None) -> None:
    """Run a workflow worker: relays stored events and carries out their workflows. No HTTP,
    except /metrics on [metrics] port when one is set.

    Give each worker of a deployment its own stable FACTORFLOW_WORKFLOWS__EXECUTOR_ID.
    """
    from prometheus_client import CollectorRegistry

    from factorflow.bootstrap import build_engine, register_store_metrics
    from factorflow.logs import configure_logging
    from factorflow.secrets_source import user_hash_key
    from factorflow.store.factory import open_store

    settings = _settings(config_path)
    configure_logging(settings.log.format, settings.log.level,
                      user_hash_key=user_hash_key(settings))
    try:
        store = open_store(settings.store_url())
    except FactorflowError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        engine = build_engine(settings, store)
    except FactorflowError as exc:  # bad rules, directory or connectors: nothing starts
        store.close()
        raise click.ClickException(str(exc)) from None
    stop = threading.Event()

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    registry = register_store_metrics(CollectorRegistry(), settings, store, engine)
    try:
        metrics_server = start_metrics_server(settings, registry)
    except click.ClickException:
        engine.resources.close()
        store.close()
        raise
    engine.start()
    click.echo(f"factorflow worker {settings.workflows.executor_id} running", err=True)
    stop.wait()
    if metrics_server is not None:
        metrics_server.stop()
    engine.stop(int(settings.server.graceful_timeout_seconds))
    store.close()


@click.group("dlq")
def dlq() -> None:
    """Dead letters: actions that failed for good, with the reason."""


@dlq.command("list")
@CONFIG_OPTION
@click.option("--status", type=click.Choice(["open", "retrying", "resolved", "discarded", "all"]),
              default="open", show_default=True)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
def dlq_list(config_path: Path | None, status: str, limit: int) -> None:
    from factorflow.store.pipeline_sql import SqlPipelineLedger

    store = _open(config_path)
    letters = SqlPipelineLedger(store).dead_letters(None if status == "all" else status, limit)
    store.close()
    if not letters:
        click.echo(f"no dead letters ({status})")
        return
    for letter in letters:
        click.echo(f"#{letter.id} {letter.created_at} {letter.status:<9} {letter.kind:<12} "
                   f"rule={letter.rule_id} action={letter.action_id} event={letter.event_uuid} "
                   f"attempts={letter.attempts}\n    {letter.reason}")


@dlq.command("retry")
@CONFIG_OPTION
@click.argument("dead_letter_id", type=int)
@click.option("--wait/--no-wait", default=False, help="Wait for a worker to finish it.")
@click.option("--by", default=None, help="Who asks (recorded); default: the OS user.")
def dlq_retry(config_path: Path | None, dead_letter_id: int, wait: bool, by: str | None) -> None:
    """Run a dead-lettered action again, with the same idempotency key."""
    client, store = _client(config_path)
    try:
        who = by or getpass.getuser()
        try:
            workflow_id = client.retry_dead_letter(dead_letter_id, who)
        except Exception as exc:  # the workflow engine's database; see _not_enqueued
            # Not enqueued: put the letter back so it can be retried again (as the dashboard
            # does), instead of leaving it "retrying" with no workflow to finish it.
            client.ledger.resolve_dead_letter(dead_letter_id, "open", who)
            raise click.ClickException(_not_enqueued(
                f"the retry of dead letter #{dead_letter_id}", exc,
                "the dead letter is open again")) from None
        if workflow_id is None:
            raise click.ClickException(f"dead letter #{dead_letter_id} is not open")
        _audit(store, "dead_letter.retry", f"dead letter #{dead_letter_id} retried", who)
        click.echo(f"retry enqueued as workflow {workflow_id}")
        if wait:
            click.echo(_describe(client.result(workflow_id)))
    finally:
        client.close()
        store.close()


@dlq.command("discard")
@CONFIG_OPTION
@click.argument("dead_letter_id", type=int)
@click.option("--by", default=None, help="Who decides (recorded); default: the OS user.")
@click.confirmation_option(prompt="Discard this dead letter? The action will not be retried.")
def dlq_discard(config_path: Path | None, dead_letter_id: int, by: str | None) -> None:
    from factorflow.store.pipeline_sql import SqlPipelineLedger

    store = _open(config_path)
    try:
        who = by or getpass.getuser()
        if not SqlPipelineLedger(store).resolve_dead_letter(dead_letter_id, "discarded", who):
            raise click.ClickException(f"dead letter #{dead_letter_id} is not open")
        _audit(store, "dead_letter.discard", f"dead letter #{dead_letter_id} discarded", who)
        click.echo(f"dead letter #{dead_letter_id} discarded")
    finally:
        store.close()


@click.command("replay")
@CONFIG_OPTION
@click.option("--uuid", "uuids", multiple=True, help="An event uuid (repeatable).")
@click.option("--since", default=None, help="Received at or after (ISO 8601, UTC).")
@click.option("--until", default=None, help="Received before (ISO 8601, UTC).")
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=10_000, show_default=True)
@click.option("--wait/--no-wait", default=False, help="Wait for the workers to finish.")
def replay(config_path: Path | None, uuids: tuple[str, ...], since: str | None,
           until: str | None, limit: int, wait: bool) -> None:
    """Re-run decisions for stored events. Actions keep their idempotency keys, so nothing
    that was already done is done again; only what the current rules add is new."""
    from factorflow.okta.payloads import normalise_timestamp

    if not uuids and since is None and until is None:
        raise click.UsageError("give --uuid, or a time range with --since/--until")
    bounds = []
    for name, value in (("--since", since), ("--until", until)):
        normalised = normalise_timestamp(value) if value else None
        if value and normalised is None:
            raise click.BadParameter(f"{value!r} is not an ISO 8601 time with a zone",
                                     param_hint=name)
        bounds.append(normalised)
    client, store = _client(config_path)
    try:
        targets = list(uuids) or client.ledger.uuids_between(bounds[0], bounds[1], limit)
        missing = [u for u in targets if store.get_event(u) is None]
        if missing:
            raise click.ClickException(f"not stored: {', '.join(missing[:5])}")
        workflow_ids = []
        for uuid in targets:
            try:
                workflow_ids.append(client.replay(uuid))
            except Exception as exc:  # the workflow engine's database; see _not_enqueued
                raise click.ClickException(_not_enqueued(
                    f"the replay of {uuid}", exc,
                    f"{len(workflow_ids)} of {len(targets)} replay(s) were enqueued")) from None
        click.echo(f"{len(workflow_ids)} replay(s) enqueued")
        if wait:
            for workflow_id in workflow_ids:
                click.echo(f"{workflow_id}: {_describe(client.result(workflow_id))}")
    finally:
        client.close()
        store.close()


def _client(config_path: Path | None) -> tuple[Any, Any]:
    from factorflow.store.pipeline_sql import SqlPipelineLedger
    from factorflow.workflows.client import WorkflowClient

    settings = _settings(config_path)
    store = _open(config_path)
    return WorkflowClient(settings, SqlPipelineLedger(store)), store


def _not_enqueued(what: str, exc: Exception, outcome: str) -> str:
    """The message for work the workflow engine did not take. Only the error's type is
    shown: a database driver's message may carry the connection URL."""
    return (f"{what} could not be handed to the workflow engine ({type(exc).__name__}); "
            f"{outcome}. Is the workflow database reachable, and has a worker started once?")


def _audit(store: Any, kind: str, summary: str, who: str) -> None:
    from factorflow.actions.audit import record_audit

    record_audit(store, kind, summary, {}, who)


def _describe(result: Any) -> str:
    if not isinstance(result, dict):
        return str(result)
    if "actions" in result:
        parts = [f"{a.get('rule_id')}/{a.get('action_id')}: {a.get('status')}"
                 for a in result["actions"]]
        return f"{result.get('status')} ({'; '.join(parts) or 'no actions'})"
    return f"{result.get('status')}: {result.get('detail') or result.get('reason') or ''}"
