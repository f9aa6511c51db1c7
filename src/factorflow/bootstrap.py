"""The one place that chooses concrete adapters and wires them together."""

from __future__ import annotations

from factorflow.secrets_source import HookCredentials, resolve_credentials
from factorflow.settings import Settings
from factorflow.store.factory import open_store
from factorflow.store.group_commit import GroupCommitter
from factorflow.store.sql import SqlEventStore
from factorflow.web.app import FactorflowApp
from factorflow.web.hooks import HookEndpoint
from factorflow.web.metrics import ReceiverMetrics


def build_app(settings: Settings, store: SqlEventStore | None = None) -> FactorflowApp:
    """Resolve credentials, open (and migrate) the store and assemble the ASGI app.

    Raises ConfigError before anything listens if the configuration cannot work.
    """
    credentials = resolve_credentials(settings)
    store = store or open_store(settings.store_url())
    committer = GroupCommitter(store, max_batch=settings.store.max_batch)
    metrics = ReceiverMetrics()
    endpoint = _hook_endpoint(settings, credentials, committer, metrics)
    return FactorflowApp(
        store=store, committer=committer, metrics=metrics, hooks={settings.hook.path: endpoint}
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
