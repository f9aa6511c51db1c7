"""The ASGI application: hook paths go straight to their endpoint (the hot path skips routing);
everything else goes to a Starlette app (health, metrics, and later the dashboard)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from factorflow.errors import StoreUnavailable
from factorflow.store.intake import Intake
from factorflow.store.migrations import latest_version
from factorflow.store.sql import SqlEventStore
from factorflow.web.hooks import HookEndpoint, Receive, Scope, Send
from factorflow.web.metrics import ReceiverMetrics
from factorflow.web.openapi import openapi_document

log = logging.getLogger(__name__)


class BackgroundService(Protocol):
    """Something that runs beside the receiver in the same process (the workflow worker)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def problem(self) -> str | None:
        """None while it works; otherwise what is wrong (for /readyz)."""
        ...


class FactorflowApp:
    def __init__(
        self,
        *,
        store: SqlEventStore,
        intake: Intake,
        metrics: ReceiverMetrics,
        hooks: dict[str, HookEndpoint],
        background: BackgroundService | None = None,
        extra_routes: Sequence[BaseRoute] = (),
        on_close: Sequence[Callable[[], None]] = (),
        metrics_route: bool = True,
    ) -> None:
        self.store = store
        self._on_close = tuple(on_close)
        # Run first when the server stops, before the store closes (a metrics port's server).
        self.on_stopping: list[Callable[[], None]] = []
        self.background = background
        self.intake = intake
        self.metrics = metrics
        self.hooks = hooks
        self.ready = False
        self._rest = Starlette(
            routes=[
                Route("/healthz", self._healthz),
                Route("/readyz", self._readyz),
                # /metrics here unless [metrics] on_main_port = false (then only on its port)
                *([Route("/metrics", self._metrics)] if metrics_route else []),
                Route("/openapi.json", self._openapi),
                *extra_routes,  # the dashboard (/ui)
            ],
            lifespan=self._lifespan,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self.hooks.get(scope["path"].rstrip("/") or "/")
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await self._rest(scope, receive, send)

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        await self.intake.start()
        if self.background is not None:
            await anyio.to_thread.run_sync(self.background.start)
        self.ready = True
        log.info("receiver.started", extra={"fields": {"hook_paths": sorted(self.hooks)}})
        try:
            yield
        finally:
            self.ready = False
            for stop in self.on_stopping:
                stop()
            # The server has stopped taking requests; commit what is queued, then close.
            await self.intake.close()
            if self.background is not None:
                await anyio.to_thread.run_sync(self.background.stop)
            self.store.close()
            for close in self._on_close:  # the dashboard's own connection
                close()
            log.info("receiver.stopped", extra={"fields": {"committed": self.intake.committed}})

    async def _healthz(self, _request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def _readyz(self, _request: Request) -> Response:
        checks: dict[str, str] = {"receiver": "ok" if self.ready else "stopped"}
        if self.ready and not self.intake.healthy:
            checks["receiver"] = "the commit process is restarting"
        if self.background is not None:
            checks["workflows"] = self.background.problem() or "ok"
        try:
            self.store.check_writable()
            current = self.store.schema_version()
            expected = latest_version(self.store.dialect)
            checks["store"] = "ok"
            checks["migrations"] = "ok" if current == expected else f"at {current}, need {expected}"
        except StoreUnavailable as exc:
            checks["store"] = str(exc)
        ok = all(value == "ok" for value in checks.values())
        return JSONResponse({"status": "ready" if ok else "not_ready", "checks": checks},
                            status_code=200 if ok else 503)

    async def _openapi(self, _request: Request) -> Response:
        return JSONResponse(openapi_document(
            {path: (hook.org, hook.header_name) for path, hook in self.hooks.items()}
        ))

    async def _metrics(self, _request: Request) -> Response:
        # The store's gauges are read at scrape time: in a thread, never on the event loop
        # that acknowledges Okta's deliveries.
        body = await anyio.to_thread.run_sync(generate_latest, self.metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)
