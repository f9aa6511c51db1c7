"""``factorflow rules``: check a rules file, and try it on recorded events (shadow mode).

Nothing here sends, stores or changes anything: ``rules test`` prints what would happen.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from factorflow.errors import ConfigError, InvalidRules

if TYPE_CHECKING:
    from factorflow.domain.actions import Enrichment, RecentEvent
    from factorflow.domain.facts import Fact
    from factorflow.rules import Decision, RuleSet


@click.group("rules")
def rules() -> None:
    """Check rules files and try them on recorded events."""


@rules.command("check")
@click.argument("rules_file", type=click.Path(path_type=Path, dir_okay=False))
def rules_check(rules_file: Path) -> None:
    """Validate RULES_FILE; print every problem (file, rule, field) and exit 1 if any."""
    ruleset = _load(rules_file)
    enabled = sum(1 for rule in ruleset.rules if rule.enabled)
    defaults = ", ".join(f"{a.id} ({a.kind})" for a in ruleset.default_actions) or "none"
    lookback = (f"; looks back {ruleset.lookback_hours:g} h for recent factor events"
                if ruleset.lookback_hours else "")
    click.echo(f"{rules_file}: OK: {len(ruleset.rules)} rule(s), {enabled} enabled, "
               f"match: {ruleset.match.value}, when nothing matches: {defaults}{lookback}")


@rules.command("test")
@click.argument("rules_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--events", "events_file", required=True,
              type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Recorded Okta LogEvents: one JSON object per line, a JSON array, or an "
                   "event hook delivery.")
@click.option("--directory", "directory_file", default=None,
              type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="User directory for enrichment (YAML or CSV).")
@click.option("--org", default="default", show_default=True, help="Org name to give the facts.")
@click.option("--trace", is_flag=True, help="Also show every condition of every rule.")
@click.option("--json", "as_json", is_flag=True, help="One JSON decision per line.")
def rules_test(
    rules_file: Path,
    events_file: Path,
    directory_file: Path | None,
    org: str,
    trace: bool,
    as_json: bool,
) -> None:
    """Run RULES_FILE over recorded events and print what would happen (nothing is sent).

    "Recent factor events" are taken from the same file: the other events of the same user.
    """
    from factorflow.enrichment.directory import DirectoryEnrichment
    from factorflow.enrichment.port import EnrichmentSource, NoEnrichment
    from factorflow.okta.translate import to_fact
    from factorflow.rules import evaluate

    ruleset = _load(rules_file)
    source: EnrichmentSource = NoEnrichment()
    if directory_file is not None:
        try:
            source = DirectoryEnrichment.from_file(directory_file)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
    facts = [to_fact(event, org=org) for event in _read_events(events_file)]
    totals = {"events": 0, "matched": 0, "actions": 0, "failed": 0, "suppressions": 0}
    for fact in facts:
        enrichment = source.lookup(fact.user)
        decision = evaluate(ruleset, fact, enrichment, _recent_for(fact, facts))
        totals["events"] += 1
        totals["matched"] += bool(decision.matched_rules)
        totals["actions"] += len(decision.actions)
        totals["failed"] += len(decision.failed_actions)
        totals["suppressions"] += len(decision.suppressions)
        if as_json:
            _echo_json(fact, enrichment, decision)
        else:
            _echo_text(fact, enrichment, decision, trace)
    if not as_json:
        click.echo(
            f"{totals['events']} event(s): {totals['matched']} matched a rule; "
            f"{totals['actions']} action(s) would run, {totals['failed']} could not be rendered, "
            f"{totals['suppressions']} suppression key(s). Nothing was sent or stored."
        )


@rules.command("explain")
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              envvar="FACTORFLOW_CONFIG", default=None, help="TOML config file.")
@click.argument("uuid")
@click.option("--live", is_flag=True,
              help="Look the user up again instead of using the snapshot kept with the "
                   "last decision.")
def rules_explain(config_path: Path | None, uuid: str, live: bool) -> None:
    """Print a stored event's fact and the rule trace under the configured rules: which
    conditions held, which did not, and which actions would run. Nothing is sent."""
    from factorflow.bootstrap import build_enricher, load_configured_rules
    from factorflow.cli import _open, _settings
    from factorflow.errors import FactorflowError
    from factorflow.pipeline.process import enrichment_from_dict
    from factorflow.rules import evaluate
    from factorflow.store.pipeline_sql import SqlPipelineLedger

    settings = _settings(config_path)
    store = _open(config_path)
    try:
        ledger = SqlPipelineLedger(store)
        from factorflow.pipeline.process import EventMissing, Pipeline

        try:
            fact = Pipeline.fact_from(ledger, uuid)
            org = next((o for o in settings.org_list() if o.name == fact.org),
                       settings.org_list()[0])
            ruleset = load_configured_rules(org.rules_file, settings.connectors)
        except (FactorflowError, EventMissing) as exc:
            raise click.ClickException(str(exc)) from None
        decisions = [d for d in ledger.decisions_of(uuid) if d["status"] == "decided"]
        if decisions and not live:
            enrichment = enrichment_from_dict(decisions[-1]["enrichment"])
            origin = f"snapshot of decision {decisions[-1]['run_id']}"
        else:
            enrichment = build_enricher(org.directory_file).lookup(fact.user)
            origin = "looked up now"
        recent = []
        if fact.user is not None and fact.user.id and fact.published_at and ruleset.lookback_hours:
            from factorflow.pipeline.process import shift_hours

            recent = ledger.recent_events(
                fact.user.id, shift_hours(fact.published_at, -ruleset.lookback_hours),
                fact.published_at, exclude=uuid,
            )
        decision = evaluate(ruleset, fact, enrichment, recent)
    finally:
        store.close()
    click.echo(f"rules: {ruleset.source} (sha256 {ruleset.digest[:12]}); enrichment: {origin}")
    _echo_text(fact, enrichment, decision, trace=True)
    for stored in decisions:
        click.echo(f"stored decision {stored['run_id']} at {stored['decided_at']}: matched "
                   f"{', '.join(stored['decision'].get('matched_rules', [])) or 'nothing'}")


def _load(rules_file: Path) -> RuleSet:
    from factorflow.rules import load_rules

    try:
        return load_rules(rules_file)
    except InvalidRules as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        click.echo(f"{rules_file}: {len(exc.problems)} problem(s)", err=True)
        raise SystemExit(1) from None


def _read_events(path: Path) -> list[dict[str, Any]]:
    import orjson

    try:
        content = path.read_bytes()
    except OSError as exc:
        raise click.ClickException(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        whole = orjson.loads(content) if content.strip() else []
    except orjson.JSONDecodeError:
        whole = None  # not one JSON document: read it as one event per line
    if isinstance(whole, dict):
        data = whole.get("data")
        inner = data.get("events") if isinstance(data, dict) else None
        whole = inner if isinstance(inner, list) else [whole]
    if isinstance(whole, list):
        return [_event(item, path, f"item {index}") for index, item in enumerate(whole)]
    events = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise click.ClickException(f"{path}: line {number}: not valid JSON: {exc}") from None
        events.append(_event(item, path, f"line {number}"))
    return events


def _event(item: Any, path: Path, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise click.ClickException(f"{path}: {where}: expected a JSON object (an Okta LogEvent)")
    return item


def _recent_for(fact: Fact, facts: Sequence[Fact]) -> list[RecentEvent]:
    from factorflow.domain.actions import RecentEvent
    from factorflow.domain.facts import EventKind

    if fact.user is None:
        return []
    user = fact.user
    recent = []
    for other in facts:
        if other is fact or other.user is None or other.kind is EventKind.OTHER:
            continue
        same_id = user.id is not None and other.user.id == user.id
        same_login = (user.login is not None and other.user.login is not None
                      and other.user.login.casefold() == user.login.casefold())
        if (same_id or same_login) and other.published_at:
            recent.append(RecentEvent(other.uuid, str(other.kind), other.factor.type,
                                      other.published_at))
    return recent


def _echo_json(fact: Fact, enrichment: Enrichment, decision: Decision) -> None:
    import orjson

    record = {
        "uuid": fact.uuid,
        "event_type": fact.event_type,
        "published": fact.published,
        "user": fact.user.login if fact.user else None,
        "enrichment": {"source": enrichment.source, "found": enrichment.found},
        "decision": decision.to_dict(),
    }
    click.echo(orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS).decode())


def _echo_text(fact: Fact, enrichment: Enrichment, decision: Decision, trace: bool) -> None:
    user = (fact.user.login or fact.user.id) if fact.user else None
    known = "found" if enrichment.found else "not found"
    click.echo(f"{fact.uuid or '(no uuid)'}  {fact.published}  {fact.event_type}")
    click.echo(f"  user {user or '(none)'}, factor {fact.factor.type} ({fact.factor.strength}), "
               f"enrolled by {fact.enrolled_by}; {enrichment.source}: {known}")
    if decision.matched_rules:
        click.echo(f"  matched: {', '.join(decision.matched_rules)}")
    else:
        click.echo("  no rule matched: default actions")
    for action in decision.actions:
        click.echo(f"  action {action.rule_id}/{action.action_id} ({action.kind})  "
                   f"key {action.idempotency_key}")
        for name, value in action.params.items():
            click.echo(_param_lines(name, value, "      "))
    for failed in decision.failed_actions:
        click.echo(f"  FAILED {failed.rule_id}/{failed.action_id} ({failed.kind}): {failed.error}")
    for suppression in decision.suppressions:
        click.echo(f"  suppress {suppression.rule_id} for {suppression.window_hours:g} h: "
                   f"key {suppression.key}")
    if trace:
        for entry in decision.trace:
            click.echo(f"  rule {entry.rule_id}: {entry.status.value}")
            for condition in entry.conditions:
                mark = "yes" if condition.passed else "no "
                click.echo(f"    [{mark}] {condition.name}: {condition.detail}")
    click.echo("")


def _param_lines(name: str, value: Any, indent: str) -> str:
    import orjson

    if isinstance(value, str):
        text = value.rstrip("\n")
        if "\n" not in text:
            return f"{indent}{name}: {text}"
        body = "\n".join(f"{indent}  {line}" for line in text.splitlines())
        return f"{indent}{name}: |\n{body}"
    return f"{indent}{name}: {orjson.dumps(value).decode()}"
