"""Command-line groups for the built-in actions' records: ``audit``, ``register`` and
``campaigns``. ``factorflow.cli`` registers them on the main group."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import click

# The same option as factorflow.cli's CONFIG_OPTION. It is defined here rather than imported
# because factorflow.cli imports this module to register the groups.
CONFIG_OPTION = click.option(
    "--config", "config_path", type=click.Path(path_type=Path), envvar="FACTORFLOW_CONFIG",
    default=None, help="TOML config file (or FACTORFLOW_CONFIG). Without it: built-in defaults.",
)
OUTPUT_OPTION = click.option(
    "--output", "-o", "output", type=click.Path(path_type=Path, dir_okay=False), default=None,
    help="Write to this file instead of standard output.",
)


@contextlib.contextmanager
def _store(config_path: Path | None) -> Iterator[Any]:
    from factorflow.cli import _open
    from factorflow.errors import StoreUnavailable

    store = _open(config_path)
    try:
        yield store
    except StoreUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()


@contextlib.contextmanager
def _binary_output(path: Path | None) -> Iterator[BinaryIO]:
    if path is None:
        yield sys.stdout.buffer
        return
    with path.open("wb") as handle:
        yield handle


@contextlib.contextmanager
def _text_output(path: Path | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        return
    with path.open("w", encoding="utf-8", newline="") as handle:
        yield handle


@click.group()
def audit() -> None:
    """The hash-chained audit log."""


@audit.command("verify")
@CONFIG_OPTION
def audit_verify(config_path: Path | None) -> None:
    """Recompute the chain; exit 1 naming the first bad row if it is broken."""
    from factorflow.actions.audit import verify_audit

    with _store(config_path) as store:
        result = verify_audit(store)
    if not result.ok:
        raise click.ClickException(
            f"audit chain broken at row {result.first_bad_seq}: {result.reason} "
            f"({result.rows_checked} rows checked)"
        )
    click.echo(f"audit chain OK: {result.rows_checked} rows; head row {result.head_seq}, "
               f"hash {result.head_hash}")


@audit.command("export")
@CONFIG_OPTION
@OUTPUT_OPTION
def audit_export(config_path: Path | None, output: Path | None) -> None:
    """Every audit row as JSON lines (with its hashes, to verify elsewhere)."""
    from factorflow.actions.audit import export_audit_jsonl

    with _store(config_path) as store, _binary_output(output) as out:
        count = export_audit_jsonl(store, out)
    click.echo(f"exported {count} audit rows", err=True)


@click.group()
def register() -> None:
    """Access-review and exception registers."""


@register.command("export")
@CONFIG_OPTION
@OUTPUT_OPTION
@click.argument("name")
def register_export(config_path: Path | None, output: Path | None, name: str) -> None:
    """Register NAME as CSV."""
    from factorflow.actions.register import export_register_csv, registers

    with _store(config_path) as store:
        known = registers(store)
        if name not in known:
            listed = ", ".join(known) or "none yet"
            raise click.ClickException(f"register {name!r} has no entries (registers: {listed})")
        with _text_output(output) as out:
            count = export_register_csv(store, name, out)
    click.echo(f"exported {count} entries of register {name!r}", err=True)


@click.group()
def campaigns() -> None:
    """Migration campaigns: who has completed them."""


@campaigns.command("progress")
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="One JSON object per completed user.")
@click.argument("name")
def campaigns_progress(config_path: Path | None, as_json: bool, name: str) -> None:
    """The users who completed campaign NAME, oldest first."""
    import orjson

    from factorflow.actions.checkpoint import campaign_progress, campaigns

    with _store(config_path) as store:
        progress = campaign_progress(store, name)
        others = campaigns(store)
    if as_json:
        for done in progress.completed:
            click.echo(orjson.dumps({
                "campaign": done.campaign, "user_id": done.user_id,
                "user_login": done.user_login, "completed_at": done.completed_at,
                "event_uuid": done.event_uuid, "factor_type": done.factor_type,
                "factor_strength": done.factor_strength, "rule_id": done.rule_id,
            }).decode())
        return
    click.echo(f"campaign {name!r}: {progress.count} users completed")
    if not progress.completed and others:
        click.echo(f"(campaigns with progress: {', '.join(others)})")
    for done in progress.completed:
        click.echo(f"{done.completed_at}  {done.user_login or '-':<32} {done.user_id:<22} "
                   f"{done.factor_type:<20} {done.event_uuid}")
