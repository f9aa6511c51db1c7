"""The one place that chooses concrete adapters and wires them together."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from factorflow.okta.clients import OktaClients
from factorflow.secrets_source import resolve_credentials
from factorflow.settings import Settings
from factorflow.store.factory import open_store
from factorflow.store.group_commit import GroupCommitter
from factorflow.store.intake import Intake, ThreadIntake
from factorflow.store.sql import SqlEventStore
from factorflow.web.app import FactorflowApp
from factorflow.web.hooks import HookEndpoint
from factorflow.web.metrics import ReceiverMetrics
from factorflow.web.store_metrics import (
    OktaRateLimitCollector,
    StoreCollector,
    WorkflowStateCollector,
)


def build_app(
    settings: Settings, store: SqlEventStore | None = None, *, worker: bool = False
) -> FactorflowApp:
    """Resolve credentials, open (and migrate) the store and assemble the ASGI app, one hook
    endpoint per org; with ``worker`` the workflow worker runs in the same process (started
    with the app).

    Raises ConfigError / InvalidRules before anything listens if the configuration cannot work.
    """
    orgs = settings.org_list()
    credentials = {org.name: resolve_credentials(settings, org=org) for org in orgs}
    opened = store is None
    store = store or open_store(settings.store_url())
    from factorflow.web.ui.dashboard import build_ui

    try:
        # the dashboard; ConfigError before the engine
        ui_routes, ui_close = build_ui(settings, store)
    except BaseException:
        if opened:  # a refused configuration leaves no connection behind
            store.close()
        raise
    try:
        engine = build_engine(settings, store) if worker else None
    except BaseException:
        for close in ui_close:
            close()
        if opened:
            store.close()
        raise
    intake = build_intake(settings, store, engine.wake if engine is not None else None)
    metrics = ReceiverMetrics()
    register_store_metrics(metrics.registry, settings, store, engine)
    hooks = {
        org.hook.path: HookEndpoint(
            org=org.name, credentials=credentials[org.name], intake=intake,
            metrics=metrics, max_body_bytes=org.hook.max_body_bytes,
        )
        for org in orgs
    }
    return FactorflowApp(
        store=store, intake=intake, metrics=metrics, hooks=hooks, background=engine,
        extra_routes=ui_routes, on_close=ui_close, metrics_route=settings.metrics.on_main_port,
    )


def build_intake(
    settings: Settings, store: SqlEventStore, on_new_events: Callable[[], None] | None
) -> Intake:
    """Where hook bodies are parsed and committed (``[store] intake``)."""
    if settings.store.intake == "thread" or os.name != "posix":  # the child needs POSIX fds
        return ThreadIntake(GroupCommitter(
            store, max_batch=settings.store.max_batch, on_new_events=on_new_events,
        ))
    from factorflow.store.commit_process import ProcessIntake

    return ProcessIntake(
        store.url, max_batch=settings.store.max_batch, on_new_events=on_new_events,
        log_format=settings.log.format, log_level=settings.log.level,
    )


def register_store_metrics(
    registry: CollectorRegistry, settings: Settings, store: SqlEventStore, engine: Any = None
) -> CollectorRegistry:
    """The gauges read at scrape time: the store's (the same in every process) and, in a
    process with a workflow worker (``engine``), its Okta rate limits and the workflow
    states."""
    registry.register(StoreCollector(
        store, worker_dead_after_seconds=settings.workflows.dead_after_seconds
    ))
    if engine is not None:
        if isinstance(engine.resources, SharedClients):
            registry.register(OktaRateLimitCollector(engine.resources.okta))
        registry.register(WorkflowStateCollector(engine.workflow_counts))
    return registry


def build_pipeline(settings: Settings, store: SqlEventStore) -> tuple[Any, Any]:
    """The pipeline over ``store`` with the configured rules, directory, actions and
    connectors, and the HTTP client they share (to close). Raises ConfigError / InvalidRules
    before anything runs."""
    from factorflow.actions.registry import builtin_registry
    from factorflow.pipeline.deciding import RulesDecider
    from factorflow.pipeline.process import Pipeline
    from factorflow.pipeline.screening import ScreenPolicy
    from factorflow.store.pipeline_sql import SqlPipelineLedger

    options = settings.pipeline
    orgs = settings.org_list()
    deciders = {
        org.name: RulesDecider(load_configured_rules(org.rules_file, settings.connectors))
        for org in orgs
    }
    # One Okta client per org with [okta]: enrichment, okta_group and the System Log share it.
    okta = OktaClients.for_orgs(orgs)
    # One HTTP client (connection pool, timeouts, no redirects) for every outbound action.
    http = httpx.Client(timeout=httpx.Timeout(10.0, connect=5.0), follow_redirects=False,
                        headers={"user-agent": "factorflow"})
    try:
        enrichers = {org.name: build_enricher(org.directory_file, okta.get(org.name))
                     for org in orgs}
        registry = builtin_registry(
            store, webhook_secrets=settings.actions.webhook_secrets, http=http
        )
        if settings.connectors:
            from factorflow.connectors.registry import build_connectors

            for handler in build_connectors(settings.connectors, http):
                registry.add(handler)
        if okta:
            from factorflow.actions.okta_group import OktaGroupHandler

            registry.add(OktaGroupHandler(okta))
    except BaseException:
        http.close()
        okta.close()
        raise
    handlers = {kind: registry.handler(kind) for kind in registry.kinds()}
    ledger = SqlPipelineLedger(store)
    pipeline = Pipeline(
        events=ledger, facts=ledger, actions=ledger,
        policy=ScreenPolicy(
            event_types=frozenset(options.event_types),
            # factorflow's own service apps are its own actors, listed or not (loop guard)
            own_actors=frozenset(options.own_actor_ids) | {
                org.okta.client_id for org in orgs if org.okta and org.okta.client_id
            },
        ),
        decide=deciders[orgs[0].name], enricher=enrichers[orgs[0].name], handlers=handlers,
        deciders_by_org=deciders, enrichers_by_org=enrichers,
    )
    return pipeline, SharedClients(http, okta)


class SharedClients:
    """What the pipeline's adapters share, closed together: the actions' HTTP client and the
    Okta clients by org."""

    def __init__(self, http: httpx.Client, okta: OktaClients) -> None:
        self.http = http
        self.okta = okta

    def close(self) -> None:
        self.http.close()
        self.okta.close()


def build_pipeline_checks(settings: Settings) -> list[str]:
    """Load every org's rules and directory and every connector's settings, as the worker
    would at start; a line per thing checked. Raises ConfigError / InvalidRules."""
    from factorflow.actions.registry import BUILTIN_KINDS
    from factorflow.connectors.registry import build_connectors

    lines = []
    used: dict[str, set[str]] = {}
    with OktaClients.for_orgs(settings.org_list()) as okta:
        for org in settings.org_list():
            build_enricher(org.directory_file, okta.get(org.name))
            if org.okta is not None:
                lines.append(f"org {org.name}: okta {org.okta.org_url}: settings OK")
    for org in settings.org_list():
        ruleset = load_configured_rules(org.rules_file, settings.connectors)
        lines.append(f"org {org.name}: rules {ruleset.source}: {len(ruleset.rules)} rule(s)")
        for rule in ruleset.rules:
            for action in (*rule.actions, *ruleset.default_actions):
                used.setdefault(action.kind, set()).add(f"{org.name}/{rule.id}")
    with httpx.Client() as http:
        for handler in build_connectors(settings.connectors, http):
            lines.append(f"connector {handler.kind}: settings OK")
    available = set(BUILTIN_KINDS) | set(settings.connectors)
    if any(org.okta is not None for org in settings.org_list()):
        available.add("okta_group")
    missing = sorted(set(used) - available)
    for kind in missing:
        lines.append(
            f"WARNING: rules {', '.join(sorted(used[kind]))} use action kind {kind!r} but "
            f"[connectors.{kind}] is not configured: those actions will be dead-lettered"
        )
    return lines


def load_configured_rules(rules_file: Path | None, connectors: Iterable[str] = ()) -> Any:
    """The rules file, or (without one) rules that report every fact. ``connectors`` are the
    configured connector kinds: a third-party one becomes a kind the rules may name."""
    from factorflow.rules.action_kinds import BUILTIN_ACTION_KINDS, ActionKind, extend_kinds
    from factorflow.rules.loader import load_rules, parse_rules

    if rules_file is not None:
        extra = [ActionKind(kind, (), f"connector {kind}") for kind in connectors
                 if kind not in BUILTIN_ACTION_KINDS]
        return load_rules(rules_file, action_kinds=extend_kinds(extra))
    return parse_rules(
        "version: 1\nmatch: all\nrules: []\n", source="(no rules file: report only)"
    )


def build_enricher(directory_file: Path | None, okta: Any = None) -> Any:
    """The directory file, the org's Okta client (``okta.enrich``), both, or nothing."""
    from factorflow.enrichment.directory import DirectoryEnrichment
    from factorflow.enrichment.port import NoEnrichment

    directory = DirectoryEnrichment.from_file(directory_file) if directory_file else None
    if okta is not None and okta.settings.enrich:
        from factorflow.enrichment.okta import OktaEnrichment

        options = okta.settings
        return OktaEnrichment(
            okta, ttl_seconds=options.enrichment_ttl_seconds,
            cache_size=options.enrichment_cache_size, fallback=options.enrichment_fallback,
            directory=directory,
        )
    return directory if directory is not None else NoEnrichment()


def build_engine(settings: Settings, store: SqlEventStore) -> Any:
    """The workflow engine (not started) for ``store``."""
    from factorflow.store.pipeline_sql import SqlPipelineLedger
    from factorflow.workflows.engine import WorkflowEngine
    from factorflow.workflows.retry import RetryPolicies, RetryPolicy

    pipeline, clients = build_pipeline(settings, store)
    policies = {
        kind: RetryPolicy(**policy.model_dump())
        for kind, policy in settings.pipeline.retry.items()
    }
    retries = RetryPolicies(policies, default=policies.pop("default", RetryPolicy()))
    engine = WorkflowEngine(settings, pipeline, SqlPipelineLedger(store), retries, clients)
    engine.pollers.extend(build_reconcile_pollers(settings, store, clients.okta, engine.wake))
    return engine


def build_reconcile_pollers(
    settings: Settings, store: SqlEventStore, okta: OktaClients, wake: Any = None
) -> list[Any]:
    """A System Log poller per org with [okta] and ``reconcile_interval_seconds`` > 0."""
    from factorflow.okta.reconcile import ReconcilePoller, build_reconciler
    from factorflow.store.system_log import SystemLogLedger

    ledger = SystemLogLedger(store)
    pollers = []
    for org in settings.org_list():
        if org.okta is None or org.okta.reconcile_interval_seconds <= 0:
            continue
        reconciler = build_reconciler(settings, org, okta[org.name], ledger, on_new_events=wake)
        pollers.append(ReconcilePoller(
            [reconciler], ledger, interval_seconds=org.okta.reconcile_interval_seconds,
            owner=f"{settings.workflows.executor_id}@{ReconcilePoller.default_owner()}",
        ))
    return pollers
