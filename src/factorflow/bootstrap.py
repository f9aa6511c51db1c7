"""The one place that chooses concrete adapters and wires them together."""

from __future__ import annotations

from typing import Any

import httpx

from factorflow.secrets_source import HookCredentials, resolve_credentials
from factorflow.settings import Settings
from factorflow.store.factory import open_store
from factorflow.store.group_commit import GroupCommitter
from factorflow.store.sql import SqlEventStore
from factorflow.web.app import FactorflowApp
from factorflow.web.hooks import HookEndpoint
from factorflow.web.metrics import ReceiverMetrics
from factorflow.web.store_metrics import StoreCollector


def build_app(
    settings: Settings, store: SqlEventStore | None = None, *, worker: bool = False
) -> FactorflowApp:
    """Resolve credentials, open (and migrate) the store and assemble the ASGI app; with
    ``worker`` the workflow worker runs in the same process (started with the app).

    Raises ConfigError / InvalidRules before anything listens if the configuration cannot work.
    """
    credentials = resolve_credentials(settings)
    store = store or open_store(settings.store_url())
    engine = build_engine(settings, store) if worker else None
    committer = GroupCommitter(
        store, max_batch=settings.store.max_batch,
        on_new_events=engine.wake if engine is not None else None,
    )
    metrics = ReceiverMetrics()
    metrics.registry.register(StoreCollector(store))
    endpoint = _hook_endpoint(settings, credentials, committer, metrics)
    return FactorflowApp(
        store=store, committer=committer, metrics=metrics, hooks={settings.hook.path: endpoint},
        background=engine,
    )


def _hook_endpoint(
    settings: Settings,
    credentials: HookCredentials,
    committer: GroupCommitter,
    metrics: ReceiverMetrics,
) -> HookEndpoint:
    return HookEndpoint(
        org=settings.hook.org,
        credentials=credentials,
        committer=committer,
        metrics=metrics,
        max_body_bytes=settings.hook.max_body_bytes,
    )


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
    ruleset = load_configured_rules(settings)
    enricher = build_enricher(settings)
    # One HTTP client (connection pool, timeouts, no redirects) for every outbound action.
    http = httpx.Client(timeout=httpx.Timeout(10.0, connect=5.0), follow_redirects=False,
                        headers={"user-agent": "factorflow"})
    try:
        registry = builtin_registry(
            store, webhook_secrets=settings.actions.webhook_secrets, http=http
        )
        if settings.connectors:
            from factorflow.connectors.registry import build_connectors

            for handler in build_connectors(settings.connectors, http):
                registry.add(handler)
    except BaseException:
        http.close()
        raise
    handlers = {kind: registry.handler(kind) for kind in registry.kinds()}
    ledger = SqlPipelineLedger(store)
    pipeline = Pipeline(
        events=ledger, facts=ledger, actions=ledger,
        policy=ScreenPolicy(
            event_types=frozenset(options.event_types),
            own_actors=frozenset(options.own_actor_ids),
        ),
        decide=RulesDecider(ruleset), enricher=enricher, handlers=handlers,
    )
    return pipeline, http


def load_configured_rules(settings: Settings) -> Any:
    """The configured rules file, or (without one) rules that report every fact."""
    from factorflow.rules.loader import load_rules, parse_rules

    if settings.pipeline.rules_file:
        return load_rules(settings.pipeline.rules_file)
    return parse_rules(
        "version: 1\nmatch: all\nrules: []\n", source="(no rules file: report only)"
    )


def build_enricher(settings: Settings) -> Any:
    from factorflow.enrichment.directory import DirectoryEnrichment
    from factorflow.enrichment.port import NoEnrichment

    if settings.pipeline.directory_file:
        return DirectoryEnrichment.from_file(settings.pipeline.directory_file)
    return NoEnrichment()


def build_engine(settings: Settings, store: SqlEventStore) -> Any:
    """The workflow engine (not started) for ``store``."""
    from factorflow.store.pipeline_sql import SqlPipelineLedger
    from factorflow.workflows.engine import WorkflowEngine
    from factorflow.workflows.retry import RetryPolicies, RetryPolicy

    pipeline, http = build_pipeline(settings, store)
    policies = {
        kind: RetryPolicy(**policy.model_dump())
        for kind, policy in settings.pipeline.retry.items()
    }
    retries = RetryPolicies(policies, default=policies.pop("default", RetryPolicy()))
    return WorkflowEngine(settings, pipeline, SqlPipelineLedger(store), retries, http)
