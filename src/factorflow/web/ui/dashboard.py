"""The dashboard under ``/ui``: one Starlette app mounted beside the hook endpoint, sharing the
process's store."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from factorflow.errors import StoreUnavailable
from factorflow.settings import Settings
from factorflow.store.sql import SqlEventStore
from factorflow.web.ui.credentials import oidc_configured, resolve_ui_credentials
from factorflow.web.ui.guard import Cookies, Guard, SecurityHeaders
from factorflow.web.ui.reads.campaigns import DirectoryFiles
from factorflow.web.ui.reads.window import FigureCache
from factorflow.web.ui.rendering import PREFIX, Templates
from factorflow.web.ui.sessions import Session, Signer
from factorflow.web.ui.signin import IdentityProvider, SignInThrottle

log = logging.getLogger(__name__)
T = TypeVar("T")
AUDIT_CHECK_SECONDS = 300.0


class Dashboard:
    """Everything the pages share. Raises ConfigError (from the credentials) before anything
    listens if the UI settings cannot work."""

    def __init__(self, settings: Settings, store: SqlEventStore, *,
                 provider: IdentityProvider | None = None) -> None:
        self.settings = settings
        self.store = store  # for the few writes: retry, discard and their audit rows
        self.reads = reader_for(store)
        self.credentials = resolve_ui_credentials(settings)
        self.signer = Signer(self.credentials.session_secret)
        self.cookies = Cookies(secure=settings.ui.cookie_secure)
        self.guard = Guard(self.signer, self.cookies, settings.ui.public_url)
        if provider is None and oidc_configured(settings):
            from factorflow.web.ui.oidc import OidcProvider

            provider = OidcProvider(settings.ui.oidc, self.credentials.oidc_client_secret)
        self.provider = provider
        self.templates = Templates()
        self.figures = FigureCache(settings.ui.cache_seconds)
        self.audit_checks = FigureCache(AUDIT_CHECK_SECONDS)
        self.throttle = SignInThrottle()
        self.directories = DirectoryFiles()
        self.orgs = [org.name for org in settings.org_list()]
        self.app = Starlette(
            routes=self._routes(),
            middleware=[Middleware(SecurityHeaders)],
            exception_handlers={StoreUnavailable: self._store_unavailable},
        )

    def close(self) -> None:
        if self.reads is not self.store:
            self.reads.close()

    def routes(self) -> list[BaseRoute]:
        """What the receiver mounts: ``/ui`` and a redirect from ``/`` to it."""
        async def home(_request: Request) -> Response:
            return RedirectResponse(f"{PREFIX}/", status_code=307)

        return [Mount(PREFIX, app=self.app), Route("/", home)]

    def _routes(self) -> list[BaseRoute]:
        from factorflow.web.ui import (
            pages_auth,
            pages_dead_letters,
            pages_events,
            pages_reports,
        )

        return [
            *pages_auth.routes(self),
            *pages_reports.routes(self),
            *pages_events.routes(self),
            *pages_dead_letters.routes(self),
            Mount("/static", app=StaticFiles(packages=[("factorflow.web.ui", "static")]),
                  name="static"),
        ]

    # -- helpers for the pages ---------------------------------------------------------------

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """Run blocking work (store reads, HTTP to the provider) off the event loop."""
        return await anyio.to_thread.run_sync(functools.partial(function, *args))

    def render(self, request: Request, name: str, session: Session | None,
               status_code: int = 200, **context: Any) -> Response:
        base = {
            "request": request, "session": session, "orgs": self.orgs,
            "path": request.url.path, "params": dict(request.query_params),
        }
        return self.templates.render(name, {**base, **context}, status_code)

    async def _store_unavailable(self, request: Request, exc: Exception) -> Response:
        log.warning("ui.store_unavailable", extra={"fields": {"error": str(exc)}})
        return PlainTextResponse(f"503 Service Unavailable: the store is unavailable ({exc})",
                                 status_code=503)


def build_ui(
    settings: Settings, store: SqlEventStore
) -> tuple[list[BaseRoute], list[Callable[[], None]]]:
    """The dashboard's routes for the receiver and what to close when it stops (nothing if
    ``ui.enabled`` is false)."""
    if not settings.ui.enabled:
        return [], []
    dashboard = Dashboard(settings, store)
    return dashboard.routes(), [dashboard.close]


def reader_for(store: SqlEventStore) -> SqlEventStore:
    """A second connection to the store's database, for the pages' reads: a long figure query
    then never holds the read lock that the in-process worker's reads share."""
    from factorflow.store.postgres import PostgresEventStore
    from factorflow.store.sqlite import SqliteEventStore

    if isinstance(store, SqliteEventStore):
        return SqliteEventStore(store.path)
    if isinstance(store, PostgresEventStore):
        return PostgresEventStore(store.url)
    return store
